"""Which process owns a task's watermark: announcements, incarnations, owner tokens.

Control records travel outside transactions, so Kafka's fencing does not silence a zombie's
watermarks; the watermark topic itself says who owns a task. Opening a task:

1. ``announcement``: claim the next incarnation with a token of this opening's own, and
   publish it (before fencing, so a zombie still opening finds it, see runner.py);
2. after fencing and before restoring, ``still_owner``: no later announcement was read;
3. each watermark goes out through ``owner_control``, which says nothing once another
   opening announced itself, and never less than the task published before.

An announcement carries no watermark and no positions: it covers nothing the new owner has
written. Readers (``WatermarkTable``) keep only the controls of the latest announcement.
Announcements have keys of their own on the compacted topic, so a zombie's control never
replaces one; an opening whose announcement landed after a newer one writes that one
again (runner.py), so compaction keeps the owner's claim.
"""

from __future__ import annotations

import uuid

from . import MIN_WATERMARK
from .control import TASK, Control
from .upstream import WatermarkTable


def announcement(table: WatermarkTable, pid: str, streams: list[str], wall_ms: int) -> Control:
    """The control claiming task ``pid`` for a new opening: the next incarnation, a fresh token."""
    return Control(
        pid,
        TASK,
        list(streams),
        MIN_WATERMARK,
        [],
        wall_ms,
        incarnation=table.incarnation(pid) + 1,
        announce=True,
        owner=uuid.uuid4().hex[:16],
    )


def still_owner(table: WatermarkTable, pid: str, incarnation: int, token: str) -> bool:
    """True while the opening (incarnation, token) is the task's latest announced owner."""
    return table.owner(pid) == (incarnation, token)


def owner_control(
    table: WatermarkTable,
    pid: str,
    incarnation: int,
    token: str,
    streams: list[str],
    watermark: int,
    positions: list[tuple[str, int, int]],
    wall_ms: int,
    input_watermark: int = MIN_WATERMARK,
    stats: dict[str, int] | None = None,
) -> Control | None:
    """The task's next watermark control, or None if this opening no longer owns the task
    (readers would drop it). The watermark is lifted to what the task published before:
    ``positions`` are read after those controls were published, so a reader past them is
    past theirs and could use that watermark already."""
    if not still_owner(table, pid, incarnation, token):
        return None
    return Control(
        pid,
        TASK,
        list(streams),
        max(watermark, table.published(pid)),
        positions,
        wall_ms,
        input_watermark,
        stats=stats or {},
        incarnation=incarnation,
        owner=token,
    )
