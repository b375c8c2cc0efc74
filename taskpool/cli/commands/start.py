"""`start`: a batch from a task file, followed to its end with --wait."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

from taskpool.cli import options, render
from taskpool.cli.command import Args, Command
from taskpool.cli.context import Context
from taskpool.cli.errors import OK, USAGE, CliError
from taskpool.cli.following import SilentView, follow_and_report, progress_view
from taskpool.cli.task_files import load, note_a_large_file
from taskpool.client.batches import BatchTooLargeError, prepare_batch
from taskpool.client.starting import (
    StartedBatch,
    check_batch_id,
    default_batch_id,
    start_batch_once,
    with_default_priority,
)
from taskpool.domain.batch import AgentSettings, BatchOptions
from taskpool.domain.tasks import Priority

# Starting a large batch takes a while (reading and checking the file, packing the state,
# writing the definitions); past this many tasks the starter says how far it is, on stderr.
WRITE_PROGRESS_FROM = 50_000
WRITE_PROGRESS_STEPS = 10


class StartArgs(Args):
    source: Path
    batch_id: str | None
    concurrency: int | None
    kind: str | None
    priority: Priority | None
    model: str | None
    model_calls: Literal["activity", "local"]
    review: bool
    task_queue: str | None
    store: str | None
    wait: bool
    as_json: bool
    interval: float

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("source", type=Path, metavar="FILE|DIR", help="the tasks to run")
        parser.add_argument(
            "--batch-id",
            metavar="ID",
            help="the batch's id (default: <file name>-<random>); a start again under the same "
            "id with the same tasks and options finds the batch (and with --wait follows it)",
        )
        parser.add_argument(
            "--concurrency",
            type=options.concurrency,
            metavar="N",
            help="tasks running at once, 1-1000 (default 10); change later with `concurrency`",
        )
        parser.add_argument("--kind", metavar="K", help="kind of tasks that do not name one")
        parser.add_argument(
            "--priority",
            type=options.priority,
            metavar="P",
            help="priority of tasks that do not set one: low, normal, high, urgent, critical",
        )
        parser.add_argument("--model", metavar="M", help="model name for this batch's LLM calls")
        parser.add_argument(
            "--model-calls",
            choices=("activity", "local"),
            default="activity",
            help="run each model call as an activity (default) or as a local activity inside "
            "the task's workflow task: fewer server round trips, for model calls of a few "
            "seconds; not with TASKPOOL_RPM (see docs/design.md, One way per turn)",
        )
        parser.add_argument(
            "--review",
            action="store_true",
            help="hold every result for review: a task its agent completes waits in `review` "
            "until `approve` completes it or `reject` runs it again with your feedback",
        )
        parser.add_argument(
            "--task-queue",
            metavar="Q",
            help="the workers' task queue (default: TASKPOOL_TASK_QUEUE)",
        )
        options.store_option(parser, "the workers' task store, where the definitions go")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="follow the batch until it ends (live on a terminal); exit 1 if any task failed",
        )
        options.json_option(
            parser, "print the started batch (and with --wait its result) as JSON lines"
        )
        options.interval_option(parser)


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


async def start(ctx: Context, args: StartArgs) -> int:
    # Everything that needs no server is checked before connecting anywhere.
    source = args.source
    note_a_large_file(ctx, source)
    specs = load(source, default_kind=args.kind)
    if len(specs) >= WRITE_PROGRESS_FROM:
        ctx.note(f"checked {len(specs):,} tasks in {source}; packing the batch's state")
    if args.priority is not None:
        specs = with_default_priority(specs, args.priority)
    batch_id = args.batch_id if args.batch_id is not None else default_batch_id(source)
    check_batch_id(batch_id)
    agent = AgentSettings(model=args.model, model_calls=args.model_calls, review=args.review)
    batch_options = BatchOptions(agent=agent)
    if args.concurrency is not None:
        batch_options.concurrency = args.concurrency
    task_queue = args.task_queue or ctx.settings().task_queue
    try:
        prepared = prepare_batch(specs, batch_options)
    except BatchTooLargeError as err:
        raise CliError(f"{source}: {err}", USAGE) from None
    client = await ctx.client()
    # The flags that filled in what tasks left out are options of the batch too: a second start
    # with another --kind is another batch.
    defaults = {"kind": args.kind, "priority": args.priority}
    started = await start_batch_once(
        client,
        batch_id,
        prepared,
        task_queue=task_queue,
        store_url=ctx.store_url(args.store),
        defaults={name: value for name, value in defaults.items() if value is not None},
        on_progress=WriteProgress(ctx, len(specs)),
    )
    if args.as_json:
        line = {
            "batch_id": batch_id,
            "total": started.total,
            "task_queue": task_queue,
            "existing": started.how == "existing",
            "workflow_status": started.info.ended_as,
        }
        ctx.json_line(json.dumps(line))
    else:
        ctx.say(_started_line(started))
        if not args.wait and started.info.closed:
            ctx.say(f"  results:    {render.command('results', batch_id)}")
        elif not args.wait:
            ctx.say(*_next_steps(batch_id))
            if args.review:
                ctx.say(*render.review_steps(batch_id))
    if not args.wait:
        return OK
    # With --json the result line is all a script wants; progress would only be in its way.
    view = SilentView() if args.as_json else progress_view(ctx, json_lines=False)
    return await follow_and_report(
        ctx,
        client,
        started.info,
        view,
        interval=args.interval,
        ending="json" if args.as_json else "summary",
    )


def _started_line(started: StartedBatch) -> str:
    tasks = f"{render.tasks(started.total)} on task queue {started.task_queue!r}"
    batch_id = started.batch_id
    if started.how == "existing":
        same = f"with the same {render.tasks(started.total)} and options; nothing was changed"
        if started.info.closed:
            return f"batch {batch_id} has already finished ({started.info.ended_as}), {same}"
        return f"batch {batch_id} already exists ({started.info.ended_as}), {same}"
    if started.how == "unstarted":
        return (
            f"started batch {batch_id}: {tasks} (an earlier start wrote its definitions and "
            "did not start it)"
        )
    if started.how == "replaced":
        return (
            f"started batch {batch_id}: {tasks}, replacing the definitions an earlier start "
            f"wrote and never started (other {started.replaced})"
        )
    return f"started batch {batch_id}: {tasks}"


def _next_steps(batch_id: str) -> list[str]:
    return [
        f"  follow it:  {render.command('watch', batch_id)}",
        f"  status:     {render.command('status', batch_id)}",
        f"  pause:      {render.command('pause', batch_id)}",
        f"  results:    {render.command('results', batch_id)}",
    ]


START = Command(
    "start",
    "Start a batch from a task file or directory.",
    StartArgs,
    start,
    details="FILE|DIR is a JSON Lines file (one task per line: id, input, and optionally label, "
    "kind,\npriority, depends_on, scheduled_for, metadata), a CSV file with those columns, or a\n"
    "directory of .txt/.md files (one task per file). Every line is checked first: nothing\n"
    "starts if any line is wrong. Starting again under the same --batch-id is safe: the same\n"
    "tasks and options find the batch (exit 0), other ones are refused (exit 2).",
)
