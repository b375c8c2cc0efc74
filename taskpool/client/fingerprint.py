"""What identifies a batch a starter wrote: a fingerprint of its tasks and options, and, when a
second start under the same id brings something else, a sentence naming the first difference.

The fingerprint is SHA-256 over the canonical JSON of the options (sorted keys), then a digest
per group of GROUP_SIZE tasks in order, each over the canonical JSON of the group's definitions:
id, input, label, kind, priority, depends_on, scheduled_for and metadata, keys sorted, so a task
file whose JSON objects list their keys in another order is the same batch. Hashing goes one group
at a time: a million tasks take a second or two and never a second copy of the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import JsonValue

from taskpool.domain.batch import BatchOptions
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.store import TaskStore
from taskpool.infra.store.batch_records import BatchRecord

GROUP_SIZE = 1000

_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class BatchIdentity:
    """A batch as a start defines it, ready to be recorded with its definitions."""

    fingerprint: str
    options: dict[str, JsonValue]
    task_count: int
    task_groups: list[str]

    def record(self, batch_id: str, at: datetime | None = None) -> BatchRecord:
        return BatchRecord(
            batch_id=batch_id,
            fingerprint=self.fingerprint,
            options=self.options,
            task_count=self.task_count,
            task_groups=self.task_groups,
            created_at=at or datetime.now(UTC),
        )


def identify(
    tasks: Sequence[TaskSpec],
    options: BatchOptions,
    *,
    task_queue: str,
    defaults: Mapping[str, JsonValue] | None = None,
) -> BatchIdentity:
    """The identity of a batch of `tasks` started with `options` on `task_queue`. `defaults` are
    what a starter filled in for tasks that did not say (the command line's --kind, --priority):
    they are options too, so changing one is named as an option."""
    described = describe_options(options, task_queue=task_queue, defaults=defaults)
    whole = hashlib.sha256(_CANONICAL.encode(described).encode())
    groups: list[str] = []
    for start in range(0, len(tasks), GROUP_SIZE):
        group = tasks[start : start + GROUP_SIZE]
        digest = hashlib.sha256(
            _CANONICAL.encode([_definition(spec) for spec in group]).encode()
        ).hexdigest()[:32]
        groups.append(digest)
        whole.update(digest.encode())
    return BatchIdentity(whole.hexdigest(), described, len(tasks), groups)


def describe_options(
    options: BatchOptions, *, task_queue: str, defaults: Mapping[str, JsonValue] | None = None
) -> dict[str, JsonValue]:
    """The options that shape a batch, one flat name to value each, as messages name them."""
    dumped = options.model_dump(mode="json")
    agent = dumped.pop("agent")
    return {**dumped, **agent, "task_queue": task_queue, **(defaults or {})}


def _definition(spec: TaskSpec) -> list[JsonValue]:
    scheduled = None if spec.scheduled_for is None else spec.scheduled_for.isoformat()
    return [
        spec.id,
        spec.input,
        spec.label,
        spec.kind,
        spec.priority.value,
        list(spec.depends_on),
        scheduled,
        spec.metadata,
    ]


# --- Naming a difference ---------------------------------------------------------------------


def options_difference(there: Mapping[str, JsonValue], here: Mapping[str, JsonValue]) -> str | None:
    """`concurrency 8 there, 4 here` for each option that differs; None when none does."""
    names = [*there, *(name for name in here if name not in there)]
    differences = [
        f"{name.replace('_', ' ')} {_shown(there.get(name))} there, {_shown(here.get(name))} here"
        for name in names
        if there.get(name) != here.get(name)
    ]
    return "; ".join(differences) or None


def _shown(value: JsonValue) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return repr(value) if not value or " " in value else value
    return json.dumps(value)


async def tasks_difference(
    store: TaskStore, stored: BatchRecord, ours: BatchIdentity, tasks: Sequence[TaskSpec]
) -> str:
    """`12 tasks there, 13 here; first difference: task doc-3 (input)`: found through the first
    group whose digest differs, whose tasks are looked up one by one (at most GROUP_SIZE reads).
    The store keeps each task's input, label, kind, priority and metadata; a difference in
    neither (dependencies, a schedule, the order) is named as such."""
    count = f"{stored.task_count} tasks there, {len(tasks)} here"
    if stored.task_count == len(tasks):
        count = f"{len(tasks)} tasks both"
    pairs = zip(stored.task_groups, ours.task_groups, strict=False)
    first = next(
        (index for index, (there, here) in enumerate(pairs) if there != here),
        min(len(stored.task_groups), len(ours.task_groups)),
    )
    group = tasks[first * GROUP_SIZE : (first + 1) * GROUP_SIZE]
    for spec in group:
        where = await _stored_difference(store, stored.batch_id, spec)
        if where is not None:
            return f"{count}; first difference: task {spec.id} ({where})"
    if not group:
        last = f" after task {tasks[-1].id}" if tasks else ""
        return f"{count}; first difference: tasks there{last} that are not here"
    return (
        f"{count}; first difference: among tasks {group[0].id} to {group[-1].id} "
        "(their order, depends_on or scheduled_for)"
    )


async def _stored_difference(store: TaskStore, batch_id: str, spec: TaskSpec) -> str | None:
    record = await store.get_task(batch_id, spec.id)
    if record is None:
        return "not there"
    fields = {
        "input": (record.input, spec.input),
        "label": (record.label, spec.display_label),
        "kind": (record.kind, spec.kind),
        "priority": (record.priority, spec.priority),
        "metadata": (record.metadata, spec.metadata),
    }
    differing = [name for name, (there, here) in fields.items() if there != here]
    return ", ".join(differing) or None
