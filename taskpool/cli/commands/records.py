"""The task store's side of a batch, which needs no Temporal server: `task`, `comment` and
`results`."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from taskpool.cli import options, render
from taskpool.cli.command import BatchArgs, Command
from taskpool.cli.context import Context
from taskpool.cli.errors import FAILED, OK, USAGE, CliError
from taskpool.client.export import export_jsonl, result_row, task_row, write_jsonl
from taskpool.client.records import OutcomeWait, add_comment, stored_results, task_record
from taskpool.domain.records import TaskRecord
from taskpool.domain.tasks import TaskStatus


class TaskArgs(BatchArgs):
    task_id: str
    as_json: bool
    store: str | None
    wait: bool
    timeout: float | None
    interval: float

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("task_id", metavar="TASK", help="the task's id")
        options.json_option(parser, "print the task's record, events included, as one JSON object")
        options.store_option(parser, "the task store")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="first wait until the task has an outcome (completed, failed, cancelled, or a "
            "result in review); exit 1 unless it completed",
        )
        parser.add_argument(
            "--timeout",
            type=options.seconds_up_to(7 * 24 * 3600),
            metavar="S",
            help="with --wait: give up after S seconds (exit 1); default: wait as long as it takes",
        )
        options.interval_option(parser)


async def task(ctx: Context, args: TaskArgs) -> int:
    if args.timeout is not None and not args.wait:
        raise CliError("--timeout goes with --wait", USAGE)

    def waiting(record: TaskRecord) -> None:
        ctx.note(f"task {record.task_id} is {record.status.value}; waiting")

    wait = OutcomeWait(args.interval, args.timeout, waiting) if args.wait else None
    record = await task_record(ctx.store_url(args.store), args.batch, args.task_id, wait=wait)
    if args.as_json:
        ctx.json_line(record.model_dump_json())
    else:
        ctx.say(*render.task_lines(record))
        ctx.say("events:")
        ctx.show(render.events_table(record.events))
    if args.wait and record.status is not TaskStatus.COMPLETED:
        return FAILED
    return OK


class CommentArgs(BatchArgs):
    task_id: str
    text: str
    store: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("task_id", metavar="TASK", help="the task's id")
        parser.add_argument("text", metavar="TEXT", help="the comment")
        options.store_option(parser, "the task store")


async def comment(ctx: Context, args: CommentArgs) -> int:
    if not args.text.strip():
        # Said before the settings are read: the comment is wrong whatever the store.
        raise CliError("the comment is empty", USAGE)
    await add_comment(ctx.store_url(args.store), args.batch, args.task_id, args.text)
    ctx.say(f"comment added to task {args.task_id} of batch {args.batch}")
    return OK


class ResultsArgs(BatchArgs):
    out: str | None
    as_json: bool
    status: TaskStatus | None
    as_tasks: bool
    store: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        output = parser.add_mutually_exclusive_group()
        output.add_argument("--out", metavar="FILE", help="write JSON Lines to FILE")
        output.add_argument(
            "--json", dest="as_json", action="store_true", help="write JSON Lines to stdout"
        )
        parser.add_argument(
            "--status",
            type=options.task_status,
            metavar="S",
            help="only tasks in this state (e.g. failed)",
        )
        parser.add_argument(
            "--as-tasks",
            action="store_true",
            help="write the tasks as a task file (to stdout without --out); dependencies are "
            "left out",
        )
        options.store_option(parser, "the task store")


async def results(ctx: Context, args: ResultsArgs) -> int:
    records = await stored_results(ctx.store_url(args.store), args.batch, args.status)
    row = task_row if args.as_tasks else result_row
    if args.out:
        count = export_jsonl(records, Path(args.out), row)
        counts = Counter(record.status.value for record in records)
        ctx.say(f"wrote {render.tasks(count)} of batch {args.batch} to {args.out}")
        ctx.say(f"  {render.counts_line(counts)}")
    elif args.as_json or args.as_tasks:
        write_jsonl(records, ctx.stdout, row)
        ctx.stdout.flush()
    else:
        ctx.show(render.results_table(records))
    return OK


TASK = Command(
    "task",
    "Show one task from the task store: its definition, outcome and event history.",
    TaskArgs,
    task,
    details="Needs no Temporal server.",
)
COMMENT = Command(
    "comment",
    "Add a comment to a task's event history in the task store.",
    CommentArgs,
    comment,
    details="For people reading the task later (`task BATCH ID` shows it). Needs no Temporal "
    "server.",
)
RESULTS = Command(
    "results",
    "Show or export a batch's results from the task store.",
    ResultsArgs,
    results,
    details="One row per task: id, status, result or error, attempts, tokens, duration. With "
    "--out\nor --json: JSON Lines with id, label, kind, status, result, error, attempt, "
    "retry_count,\ntokens {prompt, completion, total}, llm_calls, created_at, started_at, "
    "completed_at,\nduration_seconds and metadata. With --as-tasks: the tasks themselves as a "
    "task file\n(id, input, label, kind, priority, metadata), which `start` takes: run a "
    "finished\nbatch's failed tasks again with\n"
    "  results BATCH --status failed --as-tasks --out failed.jsonl\n"
    "  start failed.jsonl\n"
    "Needs no Temporal server.",
)
