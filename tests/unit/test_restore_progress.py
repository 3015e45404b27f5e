"""A long restore says how far it got (offsets done of how many, rate, time left), every
PROGRESS_EVERY_S, besides the progress the metrics read. The changelog here is an
in-memory stand-in for the consumer restore reads with: this checks the counting only
(tests/integration covers restores from a real broker)."""

from __future__ import annotations

import logging

from confluent_kafka import TopicPartition

from kwheel.state import layout, restore
from kwheel.state.store import TaskStore


class _Message:
    def __init__(self, offset: int):
        self._offset = offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return layout.state_key(f"k{self._offset}")

    def value(self) -> bytes:
        return layout.encode_state({"n": self._offset})

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return "p.c.changelog"

    def partition(self) -> int:
        return 0


class _Changelog:
    """Serves offsets 0..END-1 in chunks of CHUNK."""

    END = 50
    CHUNK = 10

    def __init__(self, conf: object):
        self.next = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, self.END

    def assign(self, tps: list[TopicPartition]) -> None:
        self.next = tps[0].offset

    def consume(self, n: int, timeout: float) -> list[_Message]:
        out = [_Message(o) for o in range(self.next, min(self.END, self.next + self.CHUNK))]
        self.next += len(out)
        return out

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tps[0].topic, tps[0].partition, self.next)]

    def unassign(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_restore_logs_its_progress_and_reports_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(restore, "PROGRESS_EVERY_S", 0.0)
    seen: list[tuple[int, int]] = []
    store = TaskStore(tmp_path / "c-0")
    try:
        with caplog.at_level(logging.INFO, logger="kwheel.restore"):
            steps = restore.ChangelogRestore(
                store,
                _Changelog(None),
                "p.c.changelog",
                0,
                progress=lambda a, t: seen.append((a, t)),
            )
            steps.begin()
            while not steps.step(1.0):
                pass
            n = steps.applied
        assert n == 50 and store.applied_offset == 49
    finally:
        store.close()
    assert seen == [(0, 50), (10, 50), (20, 50), (30, 50), (40, 50), (50, 50)]
    lines = [r.getMessage() for r in caplog.records if "offsets (" in r.getMessage()]
    assert [line.split(": ", 1)[1].split(",")[0] for line in lines] == [
        "10 of 50 offsets (20%)",
        "20 of 50 offsets (40%)",
        "30 of 50 offsets (60%)",
        "40 of 50 offsets (80%)",
    ]
    assert all("/s" in line and "left" in line for line in lines)
