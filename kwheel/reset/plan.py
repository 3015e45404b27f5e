"""What resetting computations of a pipeline deletes, worked out from the graph alone.

A reset makes computations process their inputs again from the start, from empty state.
Computations written to by the ones reset are reset with them, or their results would
count the replayed outputs twice; the plan refuses otherwise, naming what to add. Per
input topic of a computation reset:

- written from outside (a source stream) or by a computation not reset: read again from
  the earliest retained offset (the group's committed offsets are deleted);
- written by a computation reset with it: skipped to its end, since that computation
  writes everything again (as Kafka Streams' reset tool does with intermediate topics);
- a repartition topic (an input re-keyed with ``key_by``): emptied, since its writers
  (a re-keying stage, or the computations writing the stream) are reset with it. A
  repartition topic whose writers are not reset cannot be read again from the start:
  what was processed is deleted already (docs/operations.md#repartition-topics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..pipeline import Pipeline


@dataclass
class ResetPlan:
    pipeline: str
    computations: list[str]  # in the pipeline's order, re-keying stages included
    groups: dict[str, str] = field(default_factory=dict)  # computation -> consumer group
    changelogs: dict[str, int] = field(default_factory=dict)  # topic -> partitions
    from_start: dict[str, list[str]] = field(default_factory=dict)  # group -> topics
    to_end: dict[str, list[str]] = field(default_factory=dict)  # group -> topics skipped
    emptied: list[str] = field(default_factory=list)  # repartition topics
    tasks: dict[str, int] = field(default_factory=dict)  # computation -> partitions
    stores: list[Path] = field(default_factory=list)  # local state directories

    def describe(self) -> list[str]:
        """What executing the plan deletes, one line each."""
        lines = [f"reset of pipeline {self.pipeline!r}: {', '.join(self.computations)}"]
        for group in self.groups.values():
            lines.append(f"  consumer group {group}: committed offsets deleted")
            if group in self.from_start:
                lines.append(f"    reads again from the start: {', '.join(self.from_start[group])}")
            if group in self.to_end:
                lines.append(
                    f"    skips to the end (written again): {', '.join(self.to_end[group])}"
                )
        lines += [
            f"  changelog topic {t}: deleted and created again, empty" for t in self.changelogs
        ]
        lines += [f"  repartition topic {t}: records deleted" for t in self.emptied]
        n = sum(self.tasks.values())
        lines.append(f"  published watermarks of {n} tasks: forgotten")
        lines += [f"  local state stores: {d} (on this machine)" for d in self.stores]
        return lines


def writers(pipeline: Pipeline, stream: str) -> set[str]:
    """The computations that write ``stream`` (as an output or their dead-letter stream)."""
    return {
        c.name
        for c in pipeline.computations.values()
        if stream in c.outputs or c.dead_letter == stream
    }


def plan_reset(pipeline: Pipeline, names: list[str], state_dir: Path) -> ResetPlan:
    """The plan to reset ``names`` (every computation when empty) with their re-keying
    stages; a ConfigError naming the first reason it cannot be done alone."""
    pipeline.validate()
    comps = pipeline.computations
    for n in names:
        if n not in comps:
            raise ConfigError(
                f"unknown computation {n!r} in pipeline {pipeline.name!r} (known: {', '.join(comps)})"
            )
    chosen = set(names or comps)
    chosen |= {c.name for c in comps.values() if c.feeds in chosen}
    scope = [n for n in comps if n in chosen]
    for reader in comps.values():
        for i in reader.inputs:
            stream = pipeline.feed_stream(reader.name, i)
            w = writers(pipeline, stream)
            reset_writers = sorted(w & chosen)
            if reader.name not in chosen and reset_writers:
                raise ConfigError(
                    f"computation {reset_writers[0]!r} writes stream {stream!r}, which computation "
                    f"{reader.name!r} reads: reset {reader.name!r} with it, or it would process "
                    f"those records twice"
                )
            if reader.name not in chosen:
                continue
            others = sorted(w - chosen) + (
                ["producers outside the pipeline"] if pipeline.streams[stream].source else []
            )
            if reset_writers and others:
                raise ConfigError(
                    f"stream {stream!r}, which computation {reader.name!r} reads, is written by "
                    f"{reset_writers[0]!r} (reset) and by {others[0]!r} (not reset): reset "
                    f"every writer of it or none"
                )
            if i.key_by is not None and not reset_writers:
                raise ConfigError(
                    f"computation {reader.name!r} reads stream {stream!r} re-keyed through a repartition "
                    f"topic whose processed records are deleted: reset {sorted(w)[0]!r}, which writes "
                    f"it, too"
                )
    plan = ResetPlan(pipeline.name, scope)
    for name in scope:
        group = pipeline.group_id(name)
        plan.groups[name] = group
        plan.changelogs[pipeline.changelog_topic(name)] = comps[name].partitions
        plan.tasks[name] = comps[name].partitions
        plan.stores.append(state_dir / pipeline.name / name)
        for i, ti in zip(comps[name].inputs, pipeline.task_inputs(name), strict=True):
            if ti.repartitioned:
                plan.emptied.append(ti.topic)
            elif writers(pipeline, pipeline.feed_stream(name, i)) & chosen:
                plan.to_end.setdefault(group, []).append(ti.topic)
            else:
                plan.from_start.setdefault(group, []).append(ti.topic)
    return plan
