"""Reading a finished batch's histories: every batch run (following continue-as-new) and every
task child, for their sizes against the targets, how each outcome reached the batch, and where a
task's time went."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import MB, progress
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent, WorkflowExecutionSignaledEventAttributes
from temporalio.client import Client

from taskpool.domain import names

# Targets from the issue.
TARGET_EVENTS = 10_240
TARGET_PAYLOAD = 1 * MB
# Reading 10,000 child histories one by one takes long; more at once would crowd the server.
HISTORY_FETCHES_AT_ONCE = 20
# How often reading the children's histories notes its progress, in seconds.
PROGRESS_NOTE_EVERY = 5.0


@dataclass(frozen=True)
class HistorySize:
    label: str
    """"batch run <n>" or the task child's workflow id."""
    workflow_id: str
    run_id: str
    events: int
    largest_event_bytes: int
    largest_event_type: str
    largest_payload_bytes: int

    @property
    def within_targets(self) -> bool:
        return self.events < TARGET_EVENTS and self.largest_payload_bytes < TARGET_PAYLOAD


def size_summary(histories: Sequence[HistorySize]) -> dict[str, Any]:
    """The largest figures over some histories, each with the history it came from."""
    if not histories:
        return {"histories": 0, "within_targets": True}
    most = max(histories, key=lambda h: h.events)
    payload = max(histories, key=lambda h: h.largest_payload_bytes)
    event = max(histories, key=lambda h: h.largest_event_bytes)
    return {
        "histories": len(histories),
        "events_max": most.events,
        "events_max_in": most.label,
        "events_mean": sum(h.events for h in histories) / len(histories),
        "largest_payload_bytes": payload.largest_payload_bytes,
        "largest_payload_in": payload.label,
        "largest_event_bytes": event.largest_event_bytes,
        "largest_event_type": event.largest_event_type,
        "largest_event_in": event.label,
        "over_target": sum(not h.within_targets for h in histories),
        "within_targets": all(h.within_targets for h in histories),
    }


# How a task's outcome reached the batch (workflows/batch.py): the completion of the child the
# run awaits, or, for a child handed over before continue-as-new, its task_finished signal.
BY_COMPLETION = "child completion"
BY_SIGNAL = "task_finished signal"
NOT_REPORTED = "no report seen"


@dataclass
class HistoryReport:
    batch_runs: list[HistorySize]
    children: list[HistorySize]
    batch_event_types: dict[str, int]
    child_event_types: dict[str, int]
    workflow_task_problems: dict[str, int]
    """Failed and timed-out workflow tasks by workflow kind and cause: each one is a retry."""
    reports: dict[str, int]
    """Tasks by the way their outcome reached the batch."""
    handed_over: int
    """Children that confirmed a hand-over (reported to a later run by signal)."""
    reports_per_run: list[int]
    """Reports each batch run took, in the order of batch_runs."""
    phases_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def all(self) -> list[HistorySize]:
        return [*self.batch_runs, *self.children]

    def within_targets(self) -> bool:
        return all(h.within_targets for h in self.all)

    def summary(self) -> dict[str, Any]:
        tasks = len(self.children) or 1
        return {
            "batch_runs": size_summary(self.batch_runs),
            "children": size_summary(self.children),
            "batch_events_per_task": sum(h.events for h in self.batch_runs) / tasks,
            "reports": self.reports,
            "handed_over": self.handed_over,
            "within_targets": self.within_targets(),
        }


def event_name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()


def event_seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


def payload_sizes(message: Message) -> list[int]:
    """Serialized size of every Payload anywhere inside a protobuf message."""
    if message.DESCRIPTOR.full_name == "temporal.api.common.v1.Payload":
        return [message.ByteSize()]
    sizes: list[int] = []
    for descriptor, value in message.ListFields():
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        kind = descriptor.message_type
        if kind is not None and kind.GetOptions().map_entry:
            value_field = kind.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    sizes += payload_sizes(item)
        elif descriptor.is_repeated:
            for item in value:
                sizes += payload_sizes(item)
        else:
            sizes += payload_sizes(value)
    return sizes


def history_size(
    label: str, workflow_id: str, run_id: str, events: Sequence[HistoryEvent]
) -> HistorySize:
    largest = max(events, key=lambda e: e.ByteSize())
    return HistorySize(
        label=label,
        workflow_id=workflow_id,
        run_id=run_id,
        events=len(events),
        largest_event_bytes=largest.ByteSize(),
        largest_event_type=event_name(largest),
        largest_payload_bytes=max((s for e in events for s in payload_sizes(e)), default=0),
    )


def workflow_task_problems(kind: str, events: Sequence[HistoryEvent]) -> Counter[str]:
    problems: Counter[str] = Counter()
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            cause = event.workflow_task_failed_event_attributes.cause
            problems[f"{kind} failed: {WorkflowTaskFailedCause.Name(cause)}"] += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            timeout = event.workflow_task_timed_out_event_attributes.timeout_type
            problems[f"{kind} timed out: {TimeoutType.Name(timeout)}"] += 1
    return problems


def child_times(events: Sequence[HistoryEvent]) -> dict[str, float]:
    """When each kind of event first happened in a child's history; a signal the child sends is
    told apart by its name ("signal_external_workflow_execution_initiated:task_finished")."""
    times: dict[str, float] = {}
    for event in events:
        name = event_name(event)
        if event.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            signal_name = event.signal_external_workflow_execution_initiated_event_attributes
            name = f"{name}:{signal_name.signal_name}"
        times.setdefault(f"child:{name}", event_seconds(event))
    return times


@dataclass
class BatchTimes:
    """When the batch did things for each task child, by child workflow id, over all its runs."""

    initiated: dict[str, float] = field(default_factory=dict)
    recorded_started: dict[str, float] = field(default_factory=dict)
    report_received: dict[str, float] = field(default_factory=dict)
    report_channel: dict[str, str] = field(default_factory=dict)
    handover_asked: dict[str, float] = field(default_factory=dict)
    handover_confirmed: dict[str, float] = field(default_factory=dict)
    refill_gaps: list[float] = field(default_factory=list)
    handovers_s: list[float] = field(default_factory=list)
    """For each run that continued as new: its first hand-over request -> the continue-as-new."""

    def report(self, child_id: str, at: float, channel: str) -> bool:
        """Note a task's report; False when the batch had it already."""
        if child_id in self.report_received:
            return False
        self.report_received[child_id] = at
        self.report_channel[child_id] = channel
        return True


def signalled_child_id(
    batch_id: str, signaled: WorkflowExecutionSignaledEventAttributes
) -> str | None:
    """The child a task_finished (TaskOutcome) or task_handed_over (TaskRef) signal came from."""
    if not signaled.input.payloads:
        return None
    ref = json.loads(signaled.input.payloads[0].data)
    return names.task_workflow_id(batch_id, ref["task_id"], ref["attempt"])


def read_batch_run(batch_id: str, events: Sequence[HistoryEvent], into: BatchTimes) -> int:
    """Notes what the batch did for each child in one run; returns how many reports it took."""
    reports = 0
    reports_waiting: list[float] = []
    first_handover: float | None = None
    for event in events:
        at = event_seconds(event)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            attributes = event.start_child_workflow_execution_initiated_event_attributes
            into.initiated[attributes.workflow_id] = at
            into.refill_gaps += [at - received for received in reports_waiting]
            reports_waiting = []
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            into.recorded_started[child.workflow_id] = at
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            child = event.child_workflow_execution_completed_event_attributes.workflow_execution
            if into.report(child.workflow_id, at, BY_COMPLETION):
                reports += 1
                reports_waiting.append(at)
        elif kind == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            # The bench never pauses, so every `control` signal to a child is a hand-over.
            sent = event.signal_external_workflow_execution_initiated_event_attributes
            if sent.signal_name == names.CONTROL:
                into.handover_asked.setdefault(sent.workflow_execution.workflow_id, at)
                first_handover = at if first_handover is None else first_handover
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = event.workflow_execution_signaled_event_attributes
            child_id = signalled_child_id(batch_id, signaled)
            if child_id is None:
                continue
            if signaled.signal_name == names.TASK_FINISHED:
                if into.report(child_id, at, BY_SIGNAL):
                    reports += 1
                    reports_waiting.append(at)
            elif signaled.signal_name == names.TASK_HANDED_OVER:
                into.handover_confirmed.setdefault(child_id, at)
        elif (
            kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            and first_handover is not None
        ):
            into.handovers_s.append(at - first_handover)
    return reports


@dataclass(frozen=True)
class Span:
    """A stretch of a task's life: from `begin` to `end`, each "child:<event>" (the first such
    event in the child's history) or "batch:<name>" (a BatchTimes field for that child). With a
    `channel`, only tasks whose outcome reached the batch that way count."""

    label: str
    begin: str
    end: str
    channel: str | None = None


_FINISHED_SENT = f"child:signal_external_workflow_execution_initiated:{names.TASK_FINISHED}"
TASK_SPANS = (
    Span(
        "batch asks for a child -> the child's run begins",
        "batch:initiated",
        "child:workflow_execution_started",
    ),
    Span(
        "child begins -> its first workflow task starts",
        "child:workflow_execution_started",
        "child:workflow_task_started",
    ),
    Span(
        "first workflow task -> LLM activity scheduled",
        "child:workflow_task_started",
        "child:activity_task_scheduled",
    ),
    Span(
        "LLM activity waits in the queue",
        "child:activity_task_scheduled",
        "child:activity_task_started",
    ),
    Span(
        "LLM activity runs (model call)",
        "child:activity_task_started",
        "child:activity_task_completed",
    ),
    Span(
        "LLM reply -> child completes (its last workflow task)",
        "child:activity_task_completed",
        "child:workflow_execution_completed",
        BY_COMPLETION,
    ),
    Span(
        "child completes -> the batch has it",
        "child:workflow_execution_completed",
        "batch:report_received",
        BY_COMPLETION,
    ),
    Span(
        "handed over: batch asks -> the child confirms",
        "batch:handover_asked",
        "batch:handover_confirmed",
    ),
    Span(
        "handed over: LLM reply -> task_finished signal sent (its last workflow task)",
        "child:activity_task_completed",
        _FINISHED_SENT,
        BY_SIGNAL,
    ),
    Span(
        "handed over: signal sent -> the batch has it",
        _FINISHED_SENT,
        "batch:report_received",
        BY_SIGNAL,
    ),
    Span(
        "child begins -> child closed",
        "child:workflow_execution_started",
        "child:workflow_execution_completed",
    ),
    Span(
        "batch asks for a child -> the batch records it started",
        "batch:initiated",
        "batch:recorded_started",
    ),
)
OWN_RUN_SPAN = "child begins -> child closed"
REFILL_SPAN = "batch has a report -> its next child start (slot refilled)"
HANDOVER_SPAN = "per run: first hand-over request -> continued as new"
_BATCH_FIELDS = (
    "initiated",
    "recorded_started",
    "report_received",
    "handover_asked",
    "handover_confirmed",
)


def child_spans(
    child_id: str, events: Sequence[HistoryEvent], batch: BatchTimes
) -> list[tuple[str, float]]:
    times = child_times(events)
    for name in _BATCH_FIELDS:
        by_child: dict[str, float] = getattr(batch, name)
        if child_id in by_child:
            times[f"batch:{name}"] = by_child[child_id]
    channel = batch.report_channel.get(child_id)
    return [
        (span.label, times[span.end] - times[span.begin])
        for span in TASK_SPANS
        if span.channel in (None, channel) and span.begin in times and span.end in times
    ]


async def analyse_histories(
    client: Client, batch_id: str, first_run_id: str | None, task_ids: Sequence[str]
) -> HistoryReport:
    """Every run of the batch (following continue-as-new) and every task child's history."""
    batch_runs: list[HistorySize] = []
    batch_types: Counter[str] = Counter()
    batch_times = BatchTimes()
    reports_per_run: list[int] = []
    problems: Counter[str] = Counter()
    run_id = first_run_id
    while run_id:
        history = await client.get_workflow_handle(batch_id, run_id=run_id).fetch_history()
        events = list(history.events)
        label = f"batch run {len(batch_runs) + 1}"
        batch_runs.append(history_size(label, batch_id, run_id, events))
        batch_types.update(event_name(e) for e in events)
        reports_per_run.append(read_batch_run(batch_id, events, batch_times))
        problems += workflow_task_problems("batch", events)
        last = events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else None
        )
    progress(
        f"histories: {len(batch_runs)} batch run(s) read; reading {len(task_ids)} task "
        f"children, {HISTORY_FETCHES_AT_ONCE} at once"
    )

    child_types: Counter[str] = Counter()
    children: list[HistorySize] = []
    spans: dict[str, list[float]] = {span.label: [] for span in TASK_SPANS}
    waiting = iter(task_ids)
    began = last_note = time.monotonic()

    async def reader() -> None:
        nonlocal last_note
        # The readers share one iterator, so at most HISTORY_FETCHES_AT_ONCE reads are in flight.
        for task_id in waiting:
            workflow_id = names.task_workflow_id(batch_id, task_id, 1)
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            events = list(history.events)
            # Only figures are kept: 10,000 histories' events would take a lot of memory.
            children.append(history_size(workflow_id, workflow_id, history.run_id, events))
            child_types.update(event_name(e) for e in events)
            problems.update(workflow_task_problems("child", events))
            for label, seconds in child_spans(workflow_id, events, batch_times):
                spans[label].append(seconds)
            now = time.monotonic()
            if now - last_note >= PROGRESS_NOTE_EVERY or len(children) == len(task_ids):
                last_note = now
                progress(
                    f"histories: {len(children)}/{len(task_ids)} task children read "
                    f"({now - began:.0f} s)"
                )

    await asyncio.gather(*(reader() for _ in range(min(HISTORY_FETCHES_AT_ONCE, len(task_ids)))))
    children.sort(key=lambda h: h.workflow_id)
    reports = Counter(batch_times.report_channel.values())
    missing = sum(h.workflow_id not in batch_times.report_received for h in children)
    if missing:
        reports[NOT_REPORTED] = missing
    spans[REFILL_SPAN] = batch_times.refill_gaps
    spans[HANDOVER_SPAN] = batch_times.handovers_s
    return HistoryReport(
        batch_runs=batch_runs,
        children=children,
        batch_event_types=dict(batch_types.most_common()),
        child_event_types=dict(child_types.most_common()),
        workflow_task_problems=dict(problems.most_common()),
        reports=dict(reports.most_common()),
        handed_over=len(batch_times.handover_confirmed),
        reports_per_run=reports_per_run,
        phases_s=spans,
    )
