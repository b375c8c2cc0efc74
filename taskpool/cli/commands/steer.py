"""Steering a running batch: `pause`, `resume`, `cancel`, `concurrency`, `add`, `retry`, and the
review decisions `approve` and `reject`.

Each says what a batch having finished means for it (its consequence), and what it changed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from taskpool.cli import options, render
from taskpool.cli.command import BatchArgs, Command
from taskpool.cli.context import Context
from taskpool.cli.errors import OK, USAGE, CliError, finished_means
from taskpool.cli.task_files import load
from taskpool.client.steering import RunningBatch, check_feedback
from taskpool.domain.requests import ReviewDecision
from taskpool.domain.tasks import TaskInput

IDS_SHOWN = 10


def _some_ids(task_ids: Sequence[str]) -> str:
    """The first few ids, for a line that says what a command did."""
    more = " ..." if len(task_ids) > IDS_SHOWN else ""
    return ", ".join(task_ids[:IDS_SHOWN]) + more


async def _running(ctx: Context, batch_id: str) -> RunningBatch:
    return await RunningBatch.find(await ctx.client(), batch_id)


class PauseArgs(BatchArgs):
    reason: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--reason", metavar="R", help="why, shown in status and the Temporal UI"
        )


async def pause(ctx: Context, args: PauseArgs) -> int:
    with finished_means("there is nothing left to pause"):
        batch = await _running(ctx, args.batch)
        await batch.pause(args.reason)
    ctx.say(
        f"pausing batch {batch.batch_id}: no new task or model call starts; calls already running "
        "finish (with local model turns, running tasks finish)",
        f"  resume:  {render.command('resume', batch.batch_id)}",
    )
    return OK


async def resume(ctx: Context, args: BatchArgs) -> int:
    with finished_means("there is nothing left to resume"):
        batch = await _running(ctx, args.batch)
        await batch.resume()
    ctx.say(f"resuming batch {batch.batch_id}")
    return OK


class CancelArgs(BatchArgs):
    reason: str | None
    task_ids: list[str] | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reason", metavar="R", help="why, recorded with each cancelled task")
        options.task_ids_option(parser, "cancel only these tasks; the batch goes on")


async def cancel(ctx: Context, args: CancelArgs) -> int:
    with finished_means("there is nothing left to cancel"):
        batch = await _running(ctx, args.batch)
        if args.task_ids:
            changed = await batch.cancel_tasks(args.task_ids, args.reason)
            ctx.say(
                f"cancelled {render.tasks(len(changed.task_ids))} of batch {batch.batch_id} "
                f"({_some_ids(changed.task_ids)}); the batch goes on",
                f"  now: {render.counts_line(changed.status.counts)}",
            )
            return OK
        await batch.cancel(args.reason)
    ctx.say(
        f"cancelling batch {batch.batch_id}: waiting tasks are cancelled, running ones stopped",
        f"  follow it:  {render.command('watch', batch.batch_id)}",
    )
    return OK


class ConcurrencyArgs(BatchArgs):
    concurrency: int

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("concurrency", type=options.concurrency, metavar="N", help="1-1000")


async def concurrency(ctx: Context, args: ConcurrencyArgs) -> int:
    with finished_means("its concurrency no longer matters"):
        batch = await _running(ctx, args.batch)
        answer = await batch.set_concurrency(args.concurrency)
    ctx.say(
        f"batch {batch.batch_id} now runs up to {answer.concurrency} tasks at once "
        f"({answer.in_flight} running now)"
    )
    return OK


class AddArgs(BatchArgs):
    source: Path
    kind: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("source", type=Path, metavar="FILE|DIR", help="the tasks to add")
        parser.add_argument("--kind", metavar="K", help="kind of tasks that do not name one")


async def add(ctx: Context, args: AddArgs) -> int:
    with finished_means("a finished batch takes no new tasks: start a new batch with them"):
        batch = await _running(ctx, args.batch)
        specs = load(args.source, default_kind=args.kind, existing=await batch.task_ids())
        answer = await batch.add(specs)
    ctx.say(
        f"added {render.tasks(len(specs))} to batch {batch.batch_id}; "
        f"it now has {render.tasks(answer.total)}"
    )
    return OK


class RetryArgs(BatchArgs):
    failed: bool
    task_ids: list[str] | None
    inputs_file: Path | None
    input: str | None
    input_file: Path | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--failed", action="store_true", help="retry every failed task")
        options.task_ids_option(which, "retry these failed tasks")
        which.add_argument(
            "--inputs",
            dest="inputs_file",
            type=Path,
            metavar="FILE|DIR",
            help="retry the tasks in this task file (formats as for start), each with the input "
            "it gives; its other fields are not used",
        )
        new_input = parser.add_mutually_exclusive_group()
        new_input.add_argument(
            "--input", metavar="TEXT", help="with one --task: run it again with this input"
        )
        new_input.add_argument(
            "--input-file",
            type=Path,
            metavar="PATH",
            help="with one --task: run it again with this file's text as its input",
        )

    def new_inputs(self) -> dict[str, TaskInput]:
        """The new inputs the retry gives, by task id; files are read here, before anything is
        contacted."""
        one_input = self.input is not None or self.input_file is not None
        named = list(dict.fromkeys(self.task_ids or ()))
        if one_input and len(named) != 1:
            raise CliError(
                "--input and --input-file give one task's new input: name that one task with "
                "--task",
                USAGE,
            )
        if self.inputs_file is not None:
            # The file may be the batch's own task file with inputs edited: its dependencies are
            # the batch's business, not this request's.
            specs = load(self.inputs_file, default_kind=None, check_dependencies=False)
            return {spec.id: spec.input for spec in specs}
        if self.input_file is not None:
            return {named[0]: _read_text(self.input_file)}
        if self.input is not None:
            return {named[0]: self.input}
        return {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CliError(f"cannot read {path}: {reason}; nothing was changed", USAGE) from None


async def retry(ctx: Context, args: RetryArgs) -> int:
    export = render.command(
        "results", args.batch, "--status", "failed", "--as-tasks", "--out", "failed.jsonl"
    )
    consequence = (
        "a finished batch cannot retry its tasks; run the failed ones in a new batch: "
        f"{export}, then {render.command('start', 'failed.jsonl')}"
    )
    inputs = args.new_inputs()
    with finished_means(consequence):
        batch = await _running(ctx, args.batch)
        changed = await batch.retry(
            task_ids=args.task_ids or (), all_failed=args.failed, inputs=inputs
        )
    with_inputs = f" ({len(inputs)} with a new input)" if inputs else ""
    ctx.say(
        f"retrying {render.tasks(len(changed.task_ids))} of batch {batch.batch_id}{with_inputs}: "
        f"{_some_ids(changed.task_ids)}",
        f"  now: {render.counts_line(changed.status.counts)}",
    )
    return OK


class ApproveArgs(BatchArgs):
    task_ids: list[str] | None
    all: bool
    note: str | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        _review_targets(parser, "approve")
        parser.add_argument("--note", metavar="TEXT", help="a note kept in each task's events")


class RejectArgs(BatchArgs):
    task_ids: list[str] | None
    all: bool
    feedback: str | None
    feedback_file: Path | None

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        _review_targets(parser, "send back")
        feedback = parser.add_mutually_exclusive_group(required=True)
        feedback.add_argument("--feedback", metavar="TEXT", help="what to change")
        feedback.add_argument(
            "--feedback-file", type=Path, metavar="PATH", help="what to change, as this file's text"
        )


def _review_targets(parser: argparse.ArgumentParser, verb: str) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    options.task_ids_option(which, f"{verb} these tasks' results")
    which.add_argument("--all", action="store_true", help=f"{verb} every result in review")


async def approve(ctx: Context, args: ApproveArgs) -> int:
    return await _review(ctx, args.batch, "approve", args.task_ids, args.all, args.note)


async def reject(ctx: Context, args: RejectArgs) -> int:
    if args.feedback_file is not None:
        feedback: str | None = _read_text(args.feedback_file)
    else:
        feedback = args.feedback
    return await _review(ctx, args.batch, "reject", args.task_ids, args.all, feedback)


async def _review(
    ctx: Context,
    batch_id: str,
    decision: ReviewDecision,
    task_ids: Sequence[str] | None,
    all_in_review: bool,
    feedback: str | None,
) -> int:
    feedback = check_feedback(decision, feedback)
    with finished_means("a finished batch has no results waiting in review"):
        batch = await _running(ctx, batch_id)
        changed = await batch.review(
            decision, task_ids=task_ids or (), all_in_review=all_in_review, feedback=feedback
        )
    which = f"{render.tasks(len(changed.task_ids))} of batch {batch.batch_id}"
    done = (
        f"approved {which}" if decision == "approve" else f"sent {which} back for another attempt"
    )
    ctx.say(
        f"{done}: {_some_ids(changed.task_ids)}",
        f"  now: {render.counts_line(changed.status.counts)}",
    )
    return OK


PAUSE = Command(
    "pause",
    "Pause a batch: no new task or LLM call starts; calls already running finish.",
    PauseArgs,
    pause,
)
RESUME = Command("resume", "Resume a paused batch.", BatchArgs, resume)
CANCEL = Command(
    "cancel",
    "Cancel a batch, or only some of its tasks with --task.",
    CancelArgs,
    cancel,
    details="Without --task the whole batch ends: waiting tasks are cancelled, running ones are\n"
    "stopped. Cancelling is final.",
)
ADD = Command(
    "add",
    "Add tasks from a file to a running batch.",
    AddArgs,
    add,
    details="The file has the same formats as for `start`; new ids must be new to the batch, and "
    "new\ntasks may depend on tasks already in it.",
)
RETRY = Command(
    "retry",
    "Run failed tasks of a running batch again.",
    RetryArgs,
    retry,
    details="A retried task keeps its kind, priority and dependencies; with --input, --input-file "
    "or\n--inputs it runs with a new input, which replaces the one in the task store.\n"
    "A batch that has finished takes no more retries: retry while it runs, or run its failed\n"
    "tasks in a new batch (`results BATCH --status failed --as-tasks` writes them as a task\n"
    "file).",
)
APPROVE = Command(
    "approve",
    "Approve results waiting in review: their tasks complete.",
    ApproveArgs,
    approve,
    details="For batches started with --review. See the results waiting with\n"
    "  results BATCH --status review",
)
REJECT = Command(
    "reject",
    "Send results waiting in review back: each task runs again with your feedback.",
    RejectArgs,
    reject,
    details="The next attempt's model is shown the task, the result it is to revise and the\n"
    "feedback; its new result waits in review again.",
)
CONCURRENCY = Command(
    "concurrency",
    "Change how many tasks of a batch run at once.",
    ConcurrencyArgs,
    concurrency,
)
