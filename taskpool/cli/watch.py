"""Following a batch until it ends: a polling loop and the views that show what it sees.

The loop waits on the batch's result (which follows continue-as-new) and, meanwhile, takes a
snapshot every interval. Views decide how to show one: a live rich panel on a terminal, one JSON
line per interval for scripts, or a plain line whenever something changed for logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Protocol, TextIO

from rich.console import Console
from rich.live import Live
from temporalio.client import Client

from taskpool.cli import render
from taskpool.cli.errors import BatchInfo
from taskpool.cli.snapshot import RateMeter, Snapshot, take_snapshot
from taskpool.client.batches import batch_handle
from taskpool.domain.batch import BatchResult

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
    """One BatchStatus JSON object per look, for scripts; problems go to stderr."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self._out = out
        self._err = err
        self._last_problem: str | None = None

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.status is not None:
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
            key = (status.state, tuple(sorted(status.counts.items())), status.in_flight)
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
    client: Client, info: BatchInfo, view: View, *, interval: float, with_running: bool
) -> BatchResult:
    """Show the batch through `view` until it ends; its result, or the SDK's
    WorkflowFailureError when it ended without one (terminated, cancelled from the UI)."""
    outcome = asyncio.create_task(batch_handle(client, info.batch_id).result())
    meter = RateMeter()
    try:
        while True:
            ended = outcome.done()
            view.show(
                await take_snapshot(client, info, meter, with_running=with_running and not ended)
            )
            if ended:
                return outcome.result()
            await asyncio.wait({outcome}, timeout=interval)
    finally:
        if not outcome.done():
            outcome.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await outcome
        view.close()
