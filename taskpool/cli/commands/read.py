"""Reading a batch through Temporal: `status`, `watch`, `tasks`, and `batches` (the listing)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from taskpool.cli import options, render
from taskpool.cli.command import Args, BatchArgs, Command
from taskpool.cli.context import Context
from taskpool.cli.errors import OK
from taskpool.cli.following import Ending, follow_and_report, progress_view
from taskpool.client.listing import list_batches
from taskpool.client.reading import find_batch, read_tasks_with_details, status_answer
from taskpool.domain.batch import BatchState
from taskpool.domain.tasks import TaskStatus

STORE_HELP = "the task store whose counts show when no worker answers"


class StatusArgs(BatchArgs):
    as_json: bool
    store: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        options.json_option(parser, "print the status as one JSON object")
        options.store_option(parser, STORE_HELP)


async def status(ctx: Context, args: StatusArgs) -> int:
    client = await ctx.client()
    info = await find_batch(client, args.batch)
    answer = await status_answer(client, info, ctx.store_url(args.store))
    if args.as_json:
        ctx.json_line(answer.json_line())
    else:
        ctx.say(*render.answer_lines(answer, datetime.now(UTC)))
    return OK


class WatchArgs(BatchArgs):
    as_json: bool
    interval: float
    store: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        options.json_option(parser, "print one status JSON object per interval, for scripts")
        options.interval_option(parser)
        options.store_option(parser, STORE_HELP)


async def watch(ctx: Context, args: WatchArgs) -> int:
    client = await ctx.client()
    info = await find_batch(client, args.batch)
    view = progress_view(ctx, json_lines=args.as_json)
    ending: Ending = "nothing" if args.as_json else "summary"
    return await follow_and_report(
        ctx,
        client,
        info,
        view,
        interval=args.interval,
        ending=ending,
        store_url=ctx.store_url(args.store),
    )


class TasksArgs(BatchArgs):
    status: TaskStatus | None
    as_json: bool
    store: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--status",
            type=options.task_status,
            metavar="S",
            help="only tasks in this state (e.g. failed)",
        )
        options.json_option(parser, "print one JSON object per task")
        options.store_option(
            parser, "where labels, kinds, tokens and times come from (skipped if missing)"
        )


async def tasks(ctx: Context, args: TasksArgs) -> int:
    client = await ctx.client()
    info = await find_batch(client, args.batch)
    views = await read_tasks_with_details(client, info, ctx.store_url(args.store), args.status)
    if args.as_json:
        for view in views:
            ctx.json_line(view.model_dump_json())
    elif not views:
        which = f"{args.status.value} tasks" if args.status else "tasks"
        ctx.say(f"batch {info.batch_id} has no {which}")
    else:
        ctx.show(render.tasks_table(views))
    return OK


class BatchesArgs(Args):
    state: BatchState | None
    limit: int
    as_json: bool

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--state",
            type=options.batch_state,
            metavar="S",
            help="only batches in this state: running, paused, awaiting_review, completed, "
            "cancelled, failed",
        )
        parser.add_argument(
            "--limit",
            type=options.int_between(1, 10_000),
            default=50,
            metavar="N",
            help="at most N (50)",
        )
        options.json_option(parser, "print one JSON object per batch")


async def batches(ctx: Context, args: BatchesArgs) -> int:
    listed = await list_batches(await ctx.client(), state=args.state, limit=args.limit)
    if args.as_json:
        for batch in listed:
            ctx.json_line(json.dumps(render.listing_row(batch)))
    elif not listed:
        ctx.say(f"no {args.state.value} batches" if args.state else "no batches")
    else:
        ctx.show(render.batches_table(listed))
    return OK


STATUS = Command(
    "status",
    "Show a batch's state, counts per task state, progress, tokens and recent errors.",
    StatusArgs,
    status,
    details="When no worker answers within 1 s: what the batch last published, with its\n"
    "counts from the task store, and how old it is (`live: false` and `as_of` in --json).",
)
WATCH = Command(
    "watch",
    "Follow a batch live until it ends.",
    WatchArgs,
    watch,
    details="On a terminal: counts, a progress bar with throughput and ETA, running tasks with "
    "their\ncurrent step and recent failures. Otherwise a line whenever something changes.\n"
    "Exits like `start --wait`: 1 if any task failed or was cancelled.",
)
TASKS = Command("tasks", "List a batch's tasks with their status and errors.", TasksArgs, tasks)
BATCHES = Command(
    "batches",
    "List batches, newest first, with their state and progress.",
    BatchesArgs,
    batches,
    details="From Temporal's visibility store, which follows a batch's changes a moment late.",
)
