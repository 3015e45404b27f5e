"""Claiming tasks on the watermark topic (watermarks/ownership.py): a new incarnation is
announced before its transactional ids are opened, and an opening checks that no later
announcement came while it fenced, since a process paused mid-opening (a zombie) would
otherwise reopen its fenced id on waking and could write again."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import WorkerConfig
from ..errors import BrokerError, FencedError
from ..watermarks.control import task_producer_id
from ..watermarks.ownership import announcement, still_owner
from ..watermarks.transport import WatermarkPublisher
from ..watermarks.upstream import WatermarkTable
from .task import Task


class TaskClaims:
    def __init__(
        self,
        computation: str,
        streams_out: list[str],
        cfg: WorkerConfig,
        table: WatermarkTable,
        publisher: WatermarkPublisher,
        catch_up: Callable[[], None],
    ):
        self.computation = computation
        self.streams_out = streams_out  # the streams its tasks write: what they announce
        self.cfg = cfg
        self.table = table
        self.publisher = publisher
        self.catch_up = catch_up  # reads the watermark topic to its end

    def announce(self, p: int) -> tuple[int, str]:
        """Claim the next incarnation of task ``p`` on the watermark topic, before using it.

        From the announcement on, every reader drops what earlier openings publish (a
        zombie's watermarks). Reading the topic back up to it takes in whatever the old
        owner published before it, so this one resumes at or above that (ownership.py)."""
        pid = task_producer_id(self.computation, p)
        control = announcement(self.table, pid, self.streams_out, int(time.time() * 1000))
        self.publisher.publish(control)
        if self.publisher.flush(
            self.cfg.startup_timeout_s
        ):  # the fencing below relies on it being there
            raise BrokerError(
                f"task {pid}: could not announce incarnation {control.incarnation} on the watermark "
                f"topic within startup_timeout_s={self.cfg.startup_timeout_s:g}"
            )
        self.catch_up()
        owner = self.table.owner(pid)
        if owner is not None and owner[0] > control.incarnation:
            # Ours was written after a newer one (we read the topic before it came): on the
            # compacted topic ours would replace it, so write the owner's claim again.
            self.publisher.publish(self.table.announcements[pid])
            self.publisher.flush(self.cfg.startup_timeout_s)
            raise FencedError(
                f"task {pid}: incarnation {owner[0]} took it over while this process was announcing "
                f"incarnation {control.incarnation}"
            )
        return control.incarnation, control.owner

    def check_still_owner(self, task: Task, read: bool = True) -> None:
        """Fencing by transactional id holds only if this process opened its id before the
        next owner fenced it: a process paused while opening (a zombie) would reopen it on
        waking and could write again. The next owner announces itself before fencing, so
        if no later announcement is on the topic now, this one's id is the live one.
        ``read=False``: the caller has just read the topic to its end."""
        if read:
            self.catch_up()
        pid = task_producer_id(self.computation, task.partition)
        if not still_owner(self.table, pid, task.incarnation, task.owner):
            newer = self.table.owner(pid)
            raise FencedError(
                f"task {task.name} was fenced: incarnation {newer[0] if newer else '?'} took it over "
                f"while this process was opening incarnation {task.incarnation}"
            )
