"""CPU and memory of a taskpool run: the dev server, the worker process, this process and the rest
of the machine, and the worker's resident memory sampled while the batch runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from _common import machine_busy_seconds, process_cpu_seconds, self_cpu_seconds

RSS_SAMPLE_EVERY = 0.2


@dataclass(frozen=True)
class CpuSplit:
    wall_s: float
    server_s: float
    worker_s: float
    bench_s: float
    """This process: the scripted model server and the client waiting for the result."""
    other_s: float

    def per_task_ms(self, tasks: int) -> dict[str, float]:
        return {
            "server": 1000 * self.server_s / tasks,
            "worker": 1000 * self.worker_s / tasks,
            "bench": 1000 * self.bench_s / tasks,
        }

    def utilisation(self) -> dict[str, float]:
        """Share of one core each used, and of the whole machine all together."""
        cores = os.cpu_count() or 1
        busy = self.server_s + self.worker_s + self.bench_s + self.other_s
        return {
            "server": self.server_s / self.wall_s,
            "worker": self.worker_s / self.wall_s,
            "bench": self.bench_s / self.wall_s,
            "other": self.other_s / self.wall_s,
            "machine": busy / (self.wall_s * cores),
        }


class CpuMeter:
    """CPU of the dev server, the worker process, this process and everything else."""

    def __init__(self, server_pid: int, worker_pid: int) -> None:
        self._pids = (server_pid, worker_pid)
        self._start = (0.0, 0.0, 0.0, 0.0, 0.0)

    def _read(self) -> tuple[float, float, float, float, float]:
        server, worker = (process_cpu_seconds(pid) for pid in self._pids)
        return (time.perf_counter(), server, worker, self_cpu_seconds(), machine_busy_seconds())

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> CpuSplit:
        wall, server, worker, own, machine = (
            end - begin for end, begin in zip(self._read(), self._start, strict=True)
        )
        return CpuSplit(
            wall_s=wall,
            server_s=server,
            worker_s=worker,
            bench_s=own,
            other_s=max(0.0, machine - server - worker - own),
        )


def status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, such as VmRSS (now) or VmHWM (peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(f"/proc/{pid}/status has no {key}")


class RssSampler:
    """Samples a process's resident memory until stopped; the kernel's own peak is read last."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples_kb: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.samples_kb.append(status_kb(self.pid, "VmRSS"))
            await asyncio.sleep(RSS_SAMPLE_EVERY)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> tuple[float, float, float]:
        """(RSS when sampling started, largest sampled RSS, kernel peak VmHWM), in MB."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sampled_kb = max(self.samples_kb, default=0)
        # The kernel syncs its per-thread RSS counters lazily, so a sample can top VmHWM a little.
        peak_kb = max(status_kb(self.pid, "VmHWM"), sampled_kb)
        first = self.samples_kb[0] if self.samples_kb else 0
        return first / 1024, sampled_kb / 1024, peak_kb / 1024
