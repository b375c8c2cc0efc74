"""What each starter.py command does. Each returns its exit code or raises CliError."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, RenderableType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    TimeoutError,
    WorkflowAlreadyStartedError,
)
from temporalio.service import RPCError, RPCStatusCode

from taskpool.cli import render
from taskpool.cli.errors import (
    FAILED,
    OK,
    QUERY_ERRORS,
    UPDATE_ERRORS,
    USAGE,
    BatchInfo,
    CliError,
    connect_client,
    find_batch,
    finished_problem,
    query_problem,
    rpc_problem,
    signal_problem,
    update_problem,
)
from taskpool.cli.watch import JsonLinesView, LiveView, PlainLinesView, SilentView, View, follow
from taskpool.client import batches
from taskpool.client.export import result_row, task_row, write_jsonl
from taskpool.client.inputs import InputError, load_tasks
from taskpool.domain import agents
from taskpool.domain.batch import (
    AgentSettings,
    BatchOptions,
    BatchResult,
    BatchState,
    BatchStatus,
    TaskView,
)
from taskpool.domain.records import TaskRecord, TaskRecordUpdate
from taskpool.domain.requests import FEEDBACK_LIMIT, ReviewDecision
from taskpool.domain.tasks import EventType, Priority, TaskEvent, TaskInput, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings, SettingsError
from taskpool.infra.store import (
    TaskStore,
    display_url,
    is_postgres,
    opened_store,
    sqlite_path,
    store_errors,
)
from taskpool.infra.store.common import UnknownTaskError

FAILURES_SHOWN = 10
# Wide enough for a results table when the output is a file or a pipe, not a terminal.
PIPE_WIDTH = 160
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Context:
    """What a command works with: its output streams and, on demand, a client and settings."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    # The batch being followed, so an interrupted command can say it keeps running.
    following: str | None = None
    _client: Client | None = None

    @property
    def interactive(self) -> bool:
        return self.stdout.isatty()

    async def client(self) -> Client:
        if self._client is None:
            self._client = await connect_client()
        return self._client

    def settings(self) -> Settings:
        try:
            return Settings.from_env()
        except SettingsError as err:
            raise CliError(str(err), USAGE) from None

    def say(self, *lines: str) -> None:
        for line in lines:
            self.stdout.write(line + "\n")
        self.stdout.flush()

    def note(self, line: str) -> None:
        """Progress on long work: on stderr, so that stdout stays what a script reads."""
        self.stderr.write(line + "\n")
        self.stderr.flush()

    def show(self, renderable: RenderableType) -> None:
        console = Console(
            file=self.stdout, width=None if self.interactive else PIPE_WIDTH, highlight=False
        )
        console.print(renderable)

    def json_line(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()


Command = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]


# --- start ----------------------------------------------------------------------------------------

# Starting a large batch takes a while (for a million tasks here: 17 s to read and check the file,
# 8 s to pack the state, 22 s to write the definitions to SQLite); past this many tasks the
# starter says how far it is, on stderr.
WRITE_PROGRESS_FROM = 50_000
READ_NOTE_FROM_BYTES = 10_000_000
WRITE_PROGRESS_STEPS = 10


class WriteProgress:
    """Says on stderr, in tenths, how many definitions of a large batch are in the store."""

    def __init__(self, ctx: Context, total: int) -> None:
        self._ctx = ctx
        self._total = total
        self._next = total // WRITE_PROGRESS_STEPS

    def __call__(self, written: int) -> None:
        if self._total < WRITE_PROGRESS_FROM or written < self._next:
            return
        self._next = written + self._total // WRITE_PROGRESS_STEPS
        self._ctx.note(f"writing task definitions to the store: {written:,}/{self._total:,}")


async def start(ctx: Context, args: argparse.Namespace) -> int:
    source = Path(args.source)
    _note_a_large_file(ctx, source)
    specs = _load(source, default_kind=args.kind)
    if len(specs) >= WRITE_PROGRESS_FROM:
        ctx.note(f"checked {len(specs):,} tasks in {source}; packing the batch's state")
    if args.priority is not None:
        specs = with_default_priority(specs, args.priority)
    batch_id = args.batch_id if args.batch_id is not None else default_batch_id(source)
    _check_batch_id(batch_id)
    agent = AgentSettings(model=args.model, model_calls=args.model_calls, review=args.review)
    options = BatchOptions(agent=agent)
    if args.concurrency is not None:
        options.concurrency = args.concurrency
    task_queue = args.task_queue or ctx.settings().task_queue
    try:
        prepared = batches.prepare_batch(specs, options)
    except batches.BatchTooLargeError as err:
        raise CliError(f"{source}: {err}", USAGE) from None
    client = await ctx.client()
    await _refuse_existing_batch(client, batch_id)
    async with _task_store(args.store or ctx.settings().store_url, "write to") as store:
        try:
            await batches.start_prepared(
                client,
                batch_id,
                prepared,
                task_queue=task_queue,
                store=store,
                # A reused id would share child workflow ids and store records with the old batch.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                on_progress=WriteProgress(ctx, len(specs)),
            )
        except WorkflowAlreadyStartedError:
            raise _batch_exists(batch_id) from None
        except RPCError as err:
            raise CliError(f"Temporal did not start batch {batch_id}: {err.message}") from None
    if args.json:
        started = {"batch_id": batch_id, "total": len(specs), "task_queue": task_queue}
        ctx.json_line(json.dumps(started))
    else:
        ctx.say(
            f"started batch {batch_id}: {render.tasks(len(specs))} on task queue {task_queue!r}"
        )
        if not args.wait:
            ctx.say(*_next_steps(batch_id))
            if args.review:
                ctx.say(*render.review_steps(batch_id))
    if not args.wait:
        return OK
    info = BatchInfo(batch_id, task_queue, WorkflowExecutionStatus.RUNNING)
    # With --json the result line is all a script wants; progress would only be in its way.
    view = SilentView() if args.json else _progress_view(ctx, json_lines=False)
    return await _follow_and_report(ctx, client, info, view, args, result_json=args.json)


def default_batch_id(source: Path) -> str:
    """`<file or directory name>-<6 hex digits>`, readable in the UI and unlikely to collide."""
    stem = _UNSAFE_ID_CHARS.sub("-", source.resolve().stem).strip("-.")[:60] or "batch"
    return f"{stem}-{secrets.token_hex(3)}"


def with_default_priority(specs: Sequence[TaskSpec], priority: Priority) -> list[TaskSpec]:
    """Tasks whose file line set no priority get `priority`; the others keep their own."""
    return [
        spec
        if "priority" in spec.model_fields_set
        else spec.model_copy(update={"priority": priority})
        for spec in specs
    ]


def _check_batch_id(batch_id: str) -> None:
    if not batch_id or batch_id != batch_id.strip() or any(ch.isspace() for ch in batch_id):
        raise CliError(f"bad batch id {batch_id!r}: it must be non-empty, without spaces", USAGE)
    if len(batch_id) > 200:
        raise CliError("bad batch id: at most 200 characters", USAGE)


def _note_a_large_file(ctx: Context, source: Path) -> None:
    if source.is_file() and (size := source.stat().st_size) >= READ_NOTE_FROM_BYTES:
        ctx.note(f"reading and checking {source} ({size / 1e6:.0f} MB)")


def _load(
    source: Path,
    *,
    default_kind: str | None,
    existing: Sequence[str] = (),
    check_dependencies: bool = True,
) -> list[TaskSpec]:
    try:
        return load_tasks(
            source,
            default_kind=default_kind,
            known_kinds=agents.KINDS,
            existing_ids=existing,
            check_dependencies=check_dependencies,
        )
    except InputError as err:
        raise CliError(f"{err}\nnothing was started or changed", USAGE) from None


def _next_steps(batch_id: str) -> list[str]:
    return [
        f"  follow it:  {render.command('watch', batch_id)}",
        f"  status:     {render.command('status', batch_id)}",
        f"  pause:      {render.command('pause', batch_id)}",
        f"  results:    {render.command('results', batch_id)}",
    ]


# --- following ------------------------------------------------------------------------------------


async def watch(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.client()
    info = await find_batch(client, args.batch)
    view = _progress_view(ctx, json_lines=args.json)
    return await _follow_and_report(ctx, client, info, view, args, result_json=False)


def _progress_view(ctx: Context, *, json_lines: bool) -> View:
    if json_lines:
        return JsonLinesView(ctx.stdout, ctx.stderr)
    if ctx.interactive:
        return LiveView(Console(file=ctx.stdout))
    return PlainLinesView(ctx.stdout, ctx.stderr)


async def _follow_and_report(
    ctx: Context,
    client: Client,
    info: BatchInfo,
    view: View,
    args: argparse.Namespace,
    *,
    result_json: bool,
) -> int:
    ctx.following = info.batch_id
    try:
        result = await follow(
            client, info, view, interval=args.interval, with_running=isinstance(view, LiveView)
        )
    except WorkflowFailureError as err:
        raise CliError(f"batch {info.batch_id} {_ended_without_result(err)}") from None
    except RPCError as err:
        raise rpc_problem(err, info.batch_id, client) from None
    if result_json:
        ctx.json_line(result.model_dump_json())
    elif not args.json:
        failures = await _failed_tasks(client, info.batch_id, result)
        ctx.say(*render.outcome_lines(result, failures))
    return outcome_code(result)


def outcome_code(result: BatchResult) -> int:
    """0 only when every task completed."""
    unfinished = result.total - result.counts.get(TaskStatus.COMPLETED.value, 0)
    return OK if result.state is BatchState.COMPLETED and unfinished == 0 else FAILED


def _ended_without_result(err: WorkflowFailureError) -> str:
    cause = err.cause
    if isinstance(cause, CancelledError):
        return "was cancelled through Temporal (Request Cancellation)"
    if isinstance(cause, TerminatedError):
        return f"was terminated: {cause.message}" if cause.message else "was terminated"
    if isinstance(cause, TimeoutError):
        return "timed out"
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
    return f"failed: {message}"


async def _failed_tasks(client: Client, batch_id: str, result: BatchResult) -> list[TaskView]:
    """A few failed tasks to name in the summary; the summary goes without them if the batch
    cannot answer (no worker)."""
    if not result.counts.get(TaskStatus.FAILED.value):
        return []
    try:
        page = await batches.task_page(
            client, batch_id, status=TaskStatus.FAILED, limit=FAILURES_SHOWN
        )
    except QUERY_ERRORS:
        return []
    return page.items


# --- reading --------------------------------------------------------------------------------------


async def status(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.client()
    info = await find_batch(client, args.batch)
    answer = await _query_status(client, info)
    if args.json:
        ctx.json_line(answer.model_dump_json())
    else:
        ctx.say(*render.status_lines(answer, datetime.now(UTC)))
    return OK


async def _query_status(client: Client, info: BatchInfo) -> BatchStatus:
    try:
        return await batches.query_status(client, info.batch_id)
    except QUERY_ERRORS as err:
        raise query_problem(err, info, client) from None


async def tasks(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.client()
    info = await find_batch(client, args.batch)
    views = await _with_store_details(
        info.batch_id,
        await _all_tasks(client, info, args.status),
        args.store or ctx.settings().store_url,
    )
    if args.json:
        for view in views:
            ctx.json_line(view.model_dump_json())
    elif not views:
        which = f"{args.status.value} tasks" if args.status else "tasks"
        ctx.say(f"batch {info.batch_id} has no {which}")
    else:
        ctx.show(render.tasks_table(views))
    return OK


async def list_batches(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.client()
    try:
        listed = await batches.list_batches(client, state=args.state, limit=args.limit)
    except RPCError as err:
        raise CliError(f"Temporal could not list batches: {err.message}") from None
    if args.json:
        for batch in listed:
            ctx.json_line(json.dumps(render.listing_row(batch)))
    elif not listed:
        ctx.say(f"no {args.state.value} batches" if args.state else "no batches")
    else:
        ctx.show(render.batches_table(listed))
    return OK


async def task(ctx: Context, args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise CliError("--timeout goes with --wait", USAGE)
    url = _existing_store(args.store or ctx.settings().store_url)
    async with _task_store(url, "read") as store:
        if args.wait:
            await _until_it_has_an_outcome(ctx, store, url, args)
        record = await _stored_task(store, url, args.batch, args.task_id, with_events=True)
    if args.json:
        ctx.json_line(record.model_dump_json())
    else:
        ctx.say(*render.task_lines(record))
        ctx.say("events:")
        ctx.show(render.events_table(record.events))
    if args.wait and record.status is not TaskStatus.COMPLETED:
        return FAILED
    return OK


async def _stored_task(
    store: TaskStore, url: str, batch_id: str, task_id: str, *, with_events: bool
) -> TaskRecord:
    record = await store.get_task(batch_id, task_id, with_events=with_events)
    if record is None:
        raise CliError(
            f"the task store at {display_url(url)} has no task {task_id!r} of batch {batch_id}",
            USAGE,
        )
    return record


async def _until_it_has_an_outcome(
    ctx: Context, store: TaskStore, url: str, args: argparse.Namespace
) -> None:
    """Return once the task has an outcome, looking at its record (without its events, which
    only the final answer shows) every --interval."""
    started = time.monotonic()
    last_status = None
    while True:
        record = await _stored_task(store, url, args.batch, args.task_id, with_events=False)
        if record.status.ends_attempt:
            return
        if record.status is not last_status:
            ctx.note(f"task {record.task_id} is {record.status.value}; waiting")
            last_status = record.status
        if args.timeout is not None and time.monotonic() - started >= args.timeout:
            raise CliError(
                f"task {record.task_id} of batch {record.batch_id} is still "
                f"{record.status.value} after {args.timeout:g} s"
            )
        await asyncio.sleep(args.interval)


async def comment(ctx: Context, args: argparse.Namespace) -> int:
    text = args.text.strip()
    if not text:
        raise CliError("the comment is empty", USAGE)
    url = _existing_store(args.store or ctx.settings().store_url)
    event = TaskEvent(
        key=f"comment:{uuid.uuid4().hex}",
        type=EventType.COMMENT,
        at=datetime.now(UTC),
        message=text,
    )
    update = TaskRecordUpdate(batch_id=args.batch, task_id=args.task_id, events=[event])
    async with _task_store(url, "write to") as store:
        try:
            await store.apply([update])
        except UnknownTaskError:
            raise CliError(
                f"the task store at {display_url(url)} has no task {args.task_id!r} of batch "
                f"{args.batch}",
                USAGE,
            ) from None
    ctx.say(f"comment added to task {args.task_id} of batch {args.batch}")
    return OK


async def _with_store_details(batch_id: str, views: list[TaskView], url: str) -> list[TaskView]:
    """The batch keeps what scheduling needs; the store adds label, kind, tokens and times."""
    if not views or not _store_exists(url):
        return views
    async with _task_store(url, "read") as store:
        records = {r.task_id: r for r in await store.list_tasks(batch_id)}
    return [_with_record(view, records.get(view.id)) for view in views]


def _with_record(view: TaskView, record: TaskRecord | None) -> TaskView:
    if record is None:
        return view
    return view.model_copy(
        update={
            "label": record.label,
            "kind": record.kind,
            "usage": record.usage,
            "llm_calls": record.llm_calls,
            "started_at": view.started_at or record.started_at,
            "completed_at": record.completed_at,
        }
    )


async def _all_tasks(client: Client, info: BatchInfo, status: TaskStatus | None) -> list[TaskView]:
    try:
        return [view async for view in batches.iter_tasks(client, info.batch_id, status=status)]
    except QUERY_ERRORS as err:
        raise query_problem(err, info, client) from None


async def results(ctx: Context, args: argparse.Namespace) -> int:
    url = _existing_store(args.store or ctx.settings().store_url)
    async with _task_store(url, "read") as store:
        records = await store.list_tasks(args.batch, status=args.status)
        # No tasks in one state is an answer; no tasks at all is a batch the store does not know.
        known = bool(records) or (args.status is not None and await store.has_batch(args.batch))
    if not known:
        raise CliError(
            f"the task store at {display_url(url)} has no tasks of batch {args.batch}", USAGE
        )
    row = task_row if args.as_tasks else result_row
    if args.out:
        count = _write_results(records, Path(args.out), row)
        counts = Counter(record.status.value for record in records)
        ctx.say(f"wrote {render.tasks(count)} of batch {args.batch} to {args.out}")
        ctx.say(f"  {render.counts_line(counts)}")
    elif args.json or args.as_tasks:
        write_jsonl(records, ctx.stdout, row)
        ctx.stdout.flush()
    else:
        ctx.show(render.results_table(records))
    return OK


async def _refuse_existing_batch(client: Client, batch_id: str) -> None:
    """Checked before the definitions go to the store, so a clash cannot mix them into the
    existing batch's records. (Start still refuses a duplicate id should one appear meanwhile.)"""
    try:
        await client.get_workflow_handle(batch_id).describe()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return
        raise CliError(f"Temporal did not answer about batch {batch_id}: {err.message}") from None
    raise _batch_exists(batch_id)


def _batch_exists(batch_id: str) -> CliError:
    return CliError(f"a batch named {batch_id} already exists; choose another --batch-id", USAGE)


@asynccontextmanager
async def _task_store(url: str, doing: str) -> AsyncIterator[TaskStore]:
    """The store at `url`, closed afterwards; a database that cannot be reached or written is
    a one-line error naming it (without its password)."""
    try:
        async with opened_store(url) as store:
            yield store
    except store_errors() as err:
        raise CliError(f"cannot {doing} the task store at {display_url(url)}: {err}") from None


def _existing_store(url: str) -> str:
    if not _store_exists(url):
        # Opening a missing SQLite file would create an empty store and report no tasks.
        path = sqlite_path(url)
        raise CliError(f"no task store at {path}: set TASKPOOL_STORE or --store", USAGE)
    return url


def _store_exists(url: str) -> bool:
    return is_postgres(url) or sqlite_path(url).is_file()


def _write_results(
    records: Sequence[TaskRecord], path: Path, row: Callable[[TaskRecord], dict[str, Any]]
) -> int:
    try:
        with path.open("w", encoding="utf-8") as out:
            return write_jsonl(records, out, row)
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror or err}", USAGE) from None


# --- changing a running batch ---------------------------------------------------------------------


async def _running_batch(ctx: Context, batch_id: str, consequence: str) -> tuple[Client, BatchInfo]:
    client = await ctx.client()
    info = await find_batch(client, batch_id)
    if info.closed:
        raise finished_problem(info, consequence)
    return client, info


async def pause(ctx: Context, args: argparse.Namespace) -> int:
    consequence = "there is nothing left to pause"
    client, info = await _running_batch(ctx, args.batch, consequence)
    try:
        await batches.pause_batch(client, info.batch_id, args.reason)
    except RPCError as err:
        raise signal_problem(err, info, client, consequence) from None
    ctx.say(
        f"pausing batch {info.batch_id}: no new task or model call starts; calls already running "
        "finish (with local model turns, running tasks finish)",
        f"  resume:  {render.command('resume', info.batch_id)}",
    )
    return OK


async def resume(ctx: Context, args: argparse.Namespace) -> int:
    consequence = "there is nothing left to resume"
    client, info = await _running_batch(ctx, args.batch, consequence)
    try:
        await batches.resume_batch(client, info.batch_id)
    except RPCError as err:
        raise signal_problem(err, info, client, consequence) from None
    ctx.say(f"resuming batch {info.batch_id}")
    return OK


async def cancel(ctx: Context, args: argparse.Namespace) -> int:
    consequence = "there is nothing left to cancel"
    client, info = await _running_batch(ctx, args.batch, consequence)
    if args.task_ids:
        try:
            answer = await batches.cancel_tasks(client, info.batch_id, args.task_ids, args.reason)
        except UPDATE_ERRORS as err:
            raise update_problem(err, info, client, consequence) from None
        ctx.say(
            f"cancelled {render.tasks(len(args.task_ids))} of batch {info.batch_id} "
            f"({_some_ids(args.task_ids)}); the batch goes on",
            f"  now: {render.counts_line(answer.counts)}",
        )
        return OK
    try:
        await batches.cancel_batch(client, info.batch_id, args.reason)
    except RPCError as err:
        raise signal_problem(err, info, client, consequence) from None
    ctx.say(
        f"cancelling batch {info.batch_id}: waiting tasks are cancelled, running ones stopped",
        f"  follow it:  {render.command('watch', info.batch_id)}",
    )
    return OK


async def add(ctx: Context, args: argparse.Namespace) -> int:
    consequence = "a finished batch takes no new tasks: start a new batch with them"
    client, info = await _running_batch(ctx, args.batch, consequence)
    existing = [view.id for view in await _all_tasks(client, info, None)]
    specs = _load(Path(args.source), default_kind=args.kind, existing=existing)
    try:
        answer = await batches.add_tasks(client, info.batch_id, specs)
    except UPDATE_ERRORS as err:
        raise update_problem(err, info, client, consequence) from None
    ctx.say(
        f"added {render.tasks(len(specs))} to batch {info.batch_id}; "
        f"it now has {render.tasks(answer.total)}"
    )
    return OK


async def retry(ctx: Context, args: argparse.Namespace) -> int:
    export = render.command(
        "results", args.batch, "--status", "failed", "--as-tasks", "--out", "failed.jsonl"
    )
    consequence = (
        "a finished batch cannot retry its tasks; run the failed ones in a new batch: "
        f"{export}, then {render.command('start', 'failed.jsonl')}"
    )
    # A bad input file is reported before anything is contacted.
    inputs = _retry_inputs(args)
    client, info = await _running_batch(ctx, args.batch, consequence)
    if args.failed:
        task_ids = [view.id for view in await _all_tasks(client, info, TaskStatus.FAILED)]
    elif args.inputs_file is not None:
        task_ids = list(inputs)
    else:
        task_ids = list(dict.fromkeys(args.task_ids))
    try:
        answer = await batches.retry_tasks(
            client, info.batch_id, task_ids=task_ids, all_failed=args.failed, inputs=inputs
        )
    except UPDATE_ERRORS as err:
        raise update_problem(err, info, client, consequence) from None
    shown = _some_ids(task_ids)
    with_inputs = f" ({len(inputs)} with a new input)" if inputs else ""
    ctx.say(
        f"retrying {render.tasks(len(task_ids))} of batch {info.batch_id}{with_inputs}: {shown}",
        f"  now: {render.counts_line(answer.counts)}",
    )
    return OK


def _some_ids(task_ids: Sequence[str]) -> str:
    """The first few ids, for a line that says what a command did."""
    more = " ..." if len(task_ids) > FAILURES_SHOWN else ""
    return ", ".join(task_ids[:FAILURES_SHOWN]) + more


def _retry_inputs(args: argparse.Namespace) -> dict[str, TaskInput]:
    """The new inputs a retry gives, by task id."""
    one_input = args.input is not None or args.input_file is not None
    named = list(dict.fromkeys(args.task_ids or ()))
    if one_input and len(named) != 1:
        raise CliError(
            "--input and --input-file give one task's new input: name that one task with --task",
            USAGE,
        )
    if args.inputs_file is not None:
        # The file may be the batch's own task file with inputs edited: its dependencies are the
        # batch's business, not this request's.
        specs = _load(Path(args.inputs_file), default_kind=None, check_dependencies=False)
        return {spec.id: spec.input for spec in specs}
    if args.input_file is not None:
        return {named[0]: _read_input_file(Path(args.input_file))}
    if args.input is not None:
        return {named[0]: args.input}
    return {}


def _read_input_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CliError(f"cannot read {path}: {reason}; nothing was changed", USAGE) from None


async def approve(ctx: Context, args: argparse.Namespace) -> int:
    return await _review(ctx, args, "approve", args.note)


async def reject(ctx: Context, args: argparse.Namespace) -> int:
    if args.feedback_file is not None:
        feedback = _read_input_file(Path(args.feedback_file))
    else:
        feedback = args.feedback
    return await _review(ctx, args, "reject", feedback)


async def _review(
    ctx: Context, args: argparse.Namespace, decision: ReviewDecision, feedback: str | None
) -> int:
    feedback = feedback.strip() if feedback is not None else None
    if decision == "reject" and not feedback:
        raise CliError("the feedback is empty: say what the next attempt should change", USAGE)
    if feedback is not None and len(feedback) > FEEDBACK_LIMIT:
        raise CliError(
            f"the feedback is {len(feedback):,} characters; at most {FEEDBACK_LIMIT:,} go with "
            "a task (put long guidance in the task's input: see `retry --input`)",
            USAGE,
        )
    consequence = "a finished batch has no results waiting in review"
    client, info = await _running_batch(ctx, args.batch, consequence)
    if args.all:
        task_ids = [view.id for view in await _all_tasks(client, info, TaskStatus.REVIEW)]
        if not task_ids:
            raise CliError(f"no task of batch {info.batch_id} is waiting in review", USAGE)
    else:
        task_ids = list(dict.fromkeys(args.task_ids))
    try:
        answer = await batches.review_tasks(
            client, info.batch_id, decision, task_ids=task_ids, feedback=feedback or None
        )
    except UPDATE_ERRORS as err:
        raise update_problem(err, info, client, consequence) from None
    shown = _some_ids(task_ids)
    which = f"{render.tasks(len(task_ids))} of batch {info.batch_id}"
    done = (
        f"approved {which}" if decision == "approve" else f"sent {which} back for another attempt"
    )
    ctx.say(f"{done}: {shown}", f"  now: {render.counts_line(answer.counts)}")
    return OK


async def concurrency(ctx: Context, args: argparse.Namespace) -> int:
    consequence = "its concurrency no longer matters"
    client, info = await _running_batch(ctx, args.batch, consequence)
    try:
        answer = await batches.set_concurrency(client, info.batch_id, args.concurrency)
    except UPDATE_ERRORS as err:
        raise update_problem(err, info, client, consequence) from None
    ctx.say(
        f"batch {info.batch_id} now runs up to {answer.concurrency} tasks at once "
        f"({answer.in_flight} running now)"
    )
    return OK


COMMANDS: dict[str, Command] = {
    "start": start,
    "status": status,
    "watch": watch,
    "tasks": tasks,
    "task": task,
    "comment": comment,
    "batches": list_batches,
    "results": results,
    "pause": pause,
    "resume": resume,
    "cancel": cancel,
    "add": add,
    "retry": retry,
    "approve": approve,
    "reject": reject,
    "concurrency": concurrency,
}
