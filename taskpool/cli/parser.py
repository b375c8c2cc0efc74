"""starter.py's command line: every command, option and help text in one place."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from taskpool.cli.demo import add_demo_parser
from taskpool.domain.batch import BatchState
from taskpool.domain.tasks import Priority, TaskStatus

E = TypeVar("E", bound=StrEnum)

PROG = "starter.py"

DESCRIPTION = """\
Start and drive taskpool batches: large sets of LLM tasks that run as durable Temporal workflows.
A worker (python worker.py) must be running on the same task queue to execute them."""

EPILOG = """\
exit codes:
  0  success (with --wait, watch: every task completed)
  1  the operation failed, or the batch ended with failed or cancelled tasks
  2  usage or input error: bad arguments or task file, unknown batch, a request the batch refused

environment:
  TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, ...  where Temporal is (SDK env config)
  TASKPOOL_TASK_QUEUE  the workers' task queue (default: taskpool)
  TASKPOOL_STORE       the workers' task store: `start` writes the definitions there, `results`
                       reads from it (default: data/taskpool.db)"""


def _store_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--store", metavar="URL", help=f"{what} (default: TASKPOOL_STORE or data/taskpool.db)"
    )


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _seconds_up_to(most: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not 0.1 <= value <= most:
            raise argparse.ArgumentTypeError(f"give between 0.1 and {most:g} seconds")
        return value

    return parse


_seconds = _seconds_up_to(3600)


def _one_of(kind: type[E]) -> Callable[[str], E]:
    """An argument type taking one of `kind`'s values, in any case."""

    def parse(text: str) -> E:
        try:
            return kind(text.strip().lower())
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {choices}") from None

    return parse


_priority = _one_of(Priority)
_task_status = _one_of(TaskStatus)
_batch_state = _one_of(BatchState)


concurrency_value = _int_between(1, 1000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=f"{summary}\n\n{details}" if details else summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name not in ("start", "demo", "batches"):
            sub.add_argument("batch", metavar="BATCH", help="the batch id")
        return sub

    start = command(
        "start",
        "Start a batch from a task file or directory.",
        "FILE|DIR is a JSON Lines file (one task per line: id, input, and optionally label, kind,\n"
        "priority, depends_on, scheduled_for, metadata), a CSV file with those columns, or a\n"
        "directory of .txt/.md files (one task per file). Every line is checked first: nothing\n"
        "starts if any line is wrong.",
    )
    start.add_argument("source", metavar="FILE|DIR", help="the tasks to run")
    start.add_argument(
        "--batch-id", metavar="ID", help="the batch's id (default: <file name>-<random>)"
    )
    start.add_argument(
        "--concurrency",
        type=concurrency_value,
        metavar="N",
        help="tasks running at once, 1-1000 (default 10); change later with `concurrency`",
    )
    start.add_argument("--kind", metavar="K", help="kind of tasks that do not name one")
    start.add_argument(
        "--priority",
        type=_priority,
        metavar="P",
        help="priority of tasks that do not set one: low, normal, high, urgent, critical",
    )
    start.add_argument("--model", metavar="M", help="model name for this batch's LLM calls")
    start.add_argument(
        "--model-calls",
        choices=("activity", "local"),
        default="activity",
        help="run each model call as an activity (default) or as a local activity inside the "
        "task's workflow task: fewer server round trips, for model calls of a few seconds; not "
        "with TASKPOOL_RPM (see README, Local model turns)",
    )
    start.add_argument(
        "--review",
        action="store_true",
        help="hold every result for review: a task its agent completes waits in `review` until "
        "`approve` completes it or `reject` runs it again with your feedback",
    )
    start.add_argument(
        "--task-queue", metavar="Q", help="the workers' task queue (default: TASKPOOL_TASK_QUEUE)"
    )
    _store_option(start, "the workers' task store, where the definitions go")
    start.add_argument(
        "--wait",
        action="store_true",
        help="follow the batch until it ends (live on a terminal); exit 1 if any task failed",
    )
    _json_option(start, "print the started batch (and with --wait its result) as JSON lines")
    _interval_option(start)

    status = command(
        "status",
        "Show a batch's state, counts per task state, progress, tokens and recent errors.",
    )
    _json_option(status, "print the status as one JSON object")

    watch = command(
        "watch",
        "Follow a batch live until it ends.",
        "On a terminal: counts, a progress bar with throughput and ETA, running tasks with their\n"
        "current step and recent failures. Otherwise a line whenever something changes.\n"
        "Exits like `start --wait`: 1 if any task failed or was cancelled.",
    )
    _json_option(watch, "print one status JSON object per interval, for scripts")
    _interval_option(watch)

    tasks = command("tasks", "List a batch's tasks with their status and errors.")
    tasks.add_argument(
        "--status", type=_task_status, metavar="S", help="only tasks in this state (e.g. failed)"
    )
    _json_option(tasks, "print one JSON object per task")
    _store_option(tasks, "where labels, kinds, tokens and times come from (skipped if missing)")

    batches = command(
        "batches",
        "List batches, newest first, with their state and progress.",
        "From Temporal's visibility store, which follows a batch's changes a moment late.",
    )
    batches.add_argument(
        "--state",
        type=_batch_state,
        metavar="S",
        help="only batches in this state: running, paused, awaiting_review, completed, "
        "cancelled, failed",
    )
    batches.add_argument(
        "--limit", type=_int_between(1, 10_000), default=50, metavar="N", help="at most N (50)"
    )
    _json_option(batches, "print one JSON object per batch")

    task = command(
        "task",
        "Show one task from the task store: its definition, outcome and event history.",
        "Needs no Temporal server.",
    )
    task.add_argument("task_id", metavar="TASK", help="the task's id")
    _json_option(task, "print the task's record, events included, as one JSON object")
    _store_option(task, "the task store")
    task.add_argument(
        "--wait",
        action="store_true",
        help="first wait until the task has an outcome (completed, failed, cancelled, or a "
        "result in review); exit 1 unless it completed",
    )
    task.add_argument(
        "--timeout",
        type=_seconds_up_to(7 * 24 * 3600),
        metavar="S",
        help="with --wait: give up after S seconds (exit 1); default: wait as long as it takes",
    )
    _interval_option(task)

    comment = command(
        "comment",
        "Add a comment to a task's event history in the task store.",
        "For people reading the task later (`task BATCH ID` shows it). Needs no Temporal server.",
    )
    comment.add_argument("task_id", metavar="TASK", help="the task's id")
    comment.add_argument("text", metavar="TEXT", help="the comment")
    _store_option(comment, "the task store")

    pause = command(
        "pause",
        "Pause a batch: no new task or LLM call starts; calls already running finish.",
    )
    pause.add_argument("--reason", metavar="R", help="why, shown in status and the Temporal UI")
    command("resume", "Resume a paused batch.")
    cancel = command(
        "cancel",
        "Cancel a batch, or only some of its tasks with --task.",
        "Without --task the whole batch ends: waiting tasks are cancelled, running ones are\n"
        "stopped. Cancelling is final.",
    )
    cancel.add_argument("--reason", metavar="R", help="why, recorded with each cancelled task")
    _task_ids_option(cancel, "cancel only these tasks; the batch goes on")

    add = command(
        "add",
        "Add tasks from a file to a running batch.",
        "The file has the same formats as for `start`; new ids must be new to the batch, and new\n"
        "tasks may depend on tasks already in it.",
    )
    add.add_argument("source", metavar="FILE|DIR", help="the tasks to add")
    add.add_argument("--kind", metavar="K", help="kind of tasks that do not name one")

    retry = command(
        "retry",
        "Run failed tasks of a running batch again.",
        "A retried task keeps its kind, priority and dependencies; with --input, --input-file or\n"
        "--inputs it runs with a new input, which replaces the one in the task store.\n"
        "A batch that has finished takes no more retries: retry while it runs, or run its failed\n"
        "tasks in a new batch (`results BATCH --status failed --as-tasks` writes them as a task\n"
        "file).",
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="retry every failed task")
    _task_ids_option(which, "retry these failed tasks")
    which.add_argument(
        "--inputs",
        dest="inputs_file",
        metavar="FILE|DIR",
        help="retry the tasks in this task file (formats as for start), each with the input it "
        "gives; its other fields are not used",
    )
    new_input = retry.add_mutually_exclusive_group()
    new_input.add_argument(
        "--input", metavar="TEXT", help="with one --task: run it again with this input"
    )
    new_input.add_argument(
        "--input-file",
        metavar="PATH",
        help="with one --task: run it again with this file's text as its input",
    )

    approve = command(
        "approve",
        "Approve results waiting in review: their tasks complete.",
        "For batches started with --review. See the results waiting with\n"
        "  results BATCH --status review",
    )
    _review_targets(approve, "approve")
    approve.add_argument("--note", metavar="TEXT", help="a note kept in each task's events")
    reject = command(
        "reject",
        "Send results waiting in review back: each task runs again with your feedback.",
        "The next attempt's model is shown the task, the result it is to revise and the\n"
        "feedback; its new result waits in review again.",
    )
    _review_targets(reject, "send back")
    feedback = reject.add_mutually_exclusive_group(required=True)
    feedback.add_argument("--feedback", metavar="TEXT", help="what to change")
    feedback.add_argument(
        "--feedback-file", metavar="PATH", help="what to change, as this file's text"
    )

    concurrency = command("concurrency", "Change how many tasks of a batch run at once.")
    concurrency.add_argument("concurrency", type=concurrency_value, metavar="N", help="1-1000")

    results = command(
        "results",
        "Show or export a batch's results from the task store.",
        "One row per task: id, status, result or error, attempts, tokens, duration. With --out\n"
        "or --json: JSON Lines with id, label, kind, status, result, error, attempt, retry_count,\n"
        "tokens {prompt, completion, total}, llm_calls, created_at, started_at, completed_at,\n"
        "duration_seconds and metadata. With --as-tasks: the tasks themselves as a task file\n"
        "(id, input, label, kind, priority, metadata), which `start` takes: run a finished\n"
        "batch's failed tasks again with\n"
        "  results BATCH --status failed --as-tasks --out failed.jsonl\n"
        "  start failed.jsonl\n"
        "Needs no Temporal server.",
    )
    output = results.add_mutually_exclusive_group()
    output.add_argument("--out", metavar="FILE", help="write JSON Lines to FILE")
    output.add_argument("--json", action="store_true", help="write JSON Lines to stdout")
    results.add_argument(
        "--status", type=_task_status, metavar="S", help="only tasks in this state (e.g. failed)"
    )
    results.add_argument(
        "--as-tasks",
        action="store_true",
        help="write the tasks as a task file (to stdout without --out); dependencies are left out",
    )
    _store_option(results, "the task store")
    add_demo_parser(commands)
    return parser


def _task_ids_option(
    parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, text: str
) -> None:
    """`--task ID ...`, which may be given more than once."""
    parser.add_argument(
        "--task", dest="task_ids", metavar="ID", nargs="+", action="extend", help=text
    )


def _review_targets(parser: argparse.ArgumentParser, verb: str) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    _task_ids_option(which, f"{verb} these tasks' results")
    which.add_argument("--all", action="store_true", help=f"{verb} every result in review")


def _json_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _interval_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds between looks at the batch (default 1)",
    )
