"""Following a batch until it ends (`watch`, `start --wait`, the demo): a polling loop, the views
that show what it sees, and the summary and exit code at the end.

The loop waits on the batch's result (which follows continue-as-new) and, meanwhile, takes a
snapshot every interval. Views decide how to show one: a live rich panel on a terminal, one JSON
line per interval for scripts, or a plain line whenever something changed for logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Literal, Protocol, TextIO

from rich.console import Console
from rich.live import Live
from temporalio.client import Client

from taskpool.cli import render
from taskpool.cli.context import Context
from taskpool.cli.errors import FAILED, OK
from taskpool.client.errors import ClientError
from taskpool.client.info import BatchInfo
from taskpool.client.reading import read_tasks, wait_for_result
from taskpool.client.snapshot import RateMeter, Snapshot, take_snapshot
from taskpool.domain.batch import BatchResult, BatchState, TaskView
from taskpool.domain.tasks import TaskStatus

FAILURES_SHOWN = 10

# --- views ----------------------------------------------------------------------------------------


class View(Protocol):
    def show(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


class LiveView:
    """A panel redrawn in place on a terminal; the last frame stays on screen."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._live.start()

    def show(self, snapshot: Snapshot) -> None:
        self._live.update(render.live_frame(snapshot), refresh=True)

    def close(self) -> None:
        self._live.stop()


class JsonLinesView:
    """One status JSON object per look (as `status --json` prints it), for scripts; problems go
    to stderr."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self._out = out
        self._err = err
        self._last_problem: str | None = None

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.answer is not None:
            self._out.write(snapshot.answer.json_line() + "\n")
            self._out.flush()
        elif snapshot.status is not None:
            self._out.write(snapshot.status.model_dump_json() + "\n")
            self._out.flush()
        elif snapshot.problem != self._last_problem:
            self._err.write(f"warning: {snapshot.problem}\n")
            self._err.flush()
        self._last_problem = snapshot.problem

    def close(self) -> None:
        self._out.flush()


class PlainLinesView:
    """A timestamped line whenever the batch's state, counts or load change: for logs and
    terminals that do not redraw."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self._out = out
        self._err = err
        self._last: object = None

    def show(self, snapshot: Snapshot) -> None:
        status = snapshot.status
        if status is None:
            key: object = snapshot.problem
            if key != self._last:
                self._err.write(f"warning: {snapshot.problem}\n")
                self._err.flush()
        else:
            # Not the age of a status no worker gave, which changes at every look.
            key = (
                status.state,
                tuple(sorted(status.counts.items())),
                status.in_flight,
                snapshot.live,
            )
            if key != self._last:
                self._out.write(render.plain_line(snapshot) + "\n")
                self._out.flush()
        self._last = key

    def close(self) -> None:
        self._out.flush()


class SilentView:
    def show(self, snapshot: Snapshot) -> None:
        pass

    def close(self) -> None:
        pass


async def follow(
    client: Client,
    info: BatchInfo,
    view: View,
    *,
    interval: float,
    with_running: bool,
    store_url: str | None = None,
) -> BatchResult:
    """Show the batch through `view` until it ends; its result, or BatchEndedError when it ended
    without one (terminated, cancelled from the UI). While no worker answers, the counts come
    from the task store at `store_url` (when given) or as the batch last published them."""
    outcome = asyncio.create_task(wait_for_result(client, info))
    meter = RateMeter()
    try:
        while True:
            ended = outcome.done()
            snapshot = await take_snapshot(
                client,
                info,
                meter,
                with_running=with_running and not ended,
                store_url=store_url,
            )
            view.show(snapshot)
            if ended:
                return outcome.result()
            await asyncio.wait({outcome}, timeout=interval)
    finally:
        if not outcome.done():
            outcome.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await outcome
        view.close()


# --- the end --------------------------------------------------------------------------------------


def progress_view(ctx: Context, *, json_lines: bool) -> View:
    if json_lines:
        return JsonLinesView(ctx.stdout, ctx.stderr)
    if ctx.interactive:
        return LiveView(Console(file=ctx.stdout))
    return PlainLinesView(ctx.stdout, ctx.stderr)


# What is said when the batch has ended: its result as JSON, a summary for people, or nothing
# (the JSON lines of `watch --json` were the answer).
Ending = Literal["json", "summary", "nothing"]


async def follow_and_report(
    ctx: Context,
    client: Client,
    info: BatchInfo,
    view: View,
    *,
    interval: float,
    ending: Ending,
    store_url: str | None = None,
) -> int:
    """Follow the batch until it ends and say how it ended; the exit code of its outcome."""
    ctx.following = info.batch_id
    result = await follow(
        client,
        info,
        view,
        interval=interval,
        with_running=isinstance(view, LiveView),
        store_url=store_url,
    )
    if ending == "json":
        ctx.json_line(result.model_dump_json())
    elif ending == "summary":
        failures = await _failed_tasks(client, info, result)
        ctx.say(*render.outcome_lines(result, failures))
    return outcome_code(result)


def outcome_code(result: BatchResult) -> int:
    """0 only when every task completed."""
    unfinished = result.total - result.counts.get(TaskStatus.COMPLETED.value, 0)
    return OK if result.state is BatchState.COMPLETED and unfinished == 0 else FAILED


async def _failed_tasks(client: Client, info: BatchInfo, result: BatchResult) -> list[TaskView]:
    """A few failed tasks to name in the summary; the summary goes without them if the batch
    cannot answer (no worker)."""
    if not result.counts.get(TaskStatus.FAILED.value):
        return []
    try:
        return await read_tasks(client, info, TaskStatus.FAILED, limit=FAILURES_SHOWN)
    except ClientError:
        return []
