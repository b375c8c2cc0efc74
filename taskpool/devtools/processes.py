"""Processes the development tools start: `async with` for what starts and stops (the dev server,
the worker, the local and the scripted model), and a child process group tied to its parent's
life."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from types import TracebackType
from typing import IO, Self


class Startable(ABC):
    """Started on entering `async with`, stopped on leaving it, whether or not the body raised."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def spawn_in_group(
    argv: list[str], log: IO[bytes], *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, tied to this process's life where possible.

    On Linux `setpriv --pdeathsig TERM` (util-linux) makes the kernel send SIGTERM to the process
    when its parent dies without stopping it (SIGKILL, crash), which atexit cannot cover. setpriv
    execs the program in place, so the pid stays the program's. The signal follows the *thread* that
    spawned it, so this runs on the caller's thread (the event loop's), not in an executor.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
    # The argument vector is built here from typed options, and no shell is involved.
    return subprocess.Popen(  # noqa: S603
        [*prefix, *argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )


def terminate_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; blocking, for a thread."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    else:
        # The leader is gone; anything it left in its group must go too.
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group id is the leader's pid (start_new_session), valid even after the leader exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
