"""The ceiling: how many minimal child workflows per second the dev server sustains here.

A parent starts N children with at most W in flight, topping the window up as children finish
(several starts per workflow task); each child runs one no-op activity. One in-process worker, a
private dev server on a fresh SQLite file. Reports tasks/s and CPU seconds per task of the server
and of this (worker) process. Any taskpool bench should be compared against this number.

    python bench/ceiling.py --tasks 500 --window 50 [--server durable] [--pragma K=V ...] [--json]

--server picks the dev server's configuration (bench/_common.py SERVER_CONFIGS): untuned, the
CLI's defaults, or durable, what `taskpool demo` runs; --pragma and --dynamic-config add to it.

--gated is an experiment on utilisation with a model latency (--activity-seconds): each of the W
slots starts its next child while the current one runs, held at a gate that the running child
opens by signal as its activity ends, so a slot's next activity need not wait for a child start.
It keeps 2 W children open and costs a signal per task (bench/NOTES-throughput.md, item 20).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.service import GrpcCompression
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker

# The sandbox re-imports this file for every workflow run; the helpers are worker-side only.
with workflow.unsafe.imports_passed_through():
    from _common import (
        SERVER_CONFIGS,
        CpuMeter,
        append_result,
        bench_server,
        command_line,
        compile_workflow_modules,
        db_bytes,
        parse_pairs,
        server_config,
    )


@dataclass
class CeilingInput:
    tasks: int
    window: int
    activity_seconds: float = 0.0
    gated: bool = False


@dataclass
class ChildInput:
    activity_seconds: float
    # A gated child waits for its predecessor's signal before its activity.
    gated: bool = False
    # The gated child this one opens when its activity ends.
    successor: str | None = None


@activity.defn
async def noop(seconds: float) -> None:
    # A stand-in for a model call of this latency (0: the bare ceiling).
    if seconds:
        await asyncio.sleep(seconds)


@workflow.defn
class CeilingChild:
    def __init__(self) -> None:
        self._open = False

    @workflow.signal
    def open_gate(self) -> None:
        self._open = True

    @workflow.run
    async def run(self, params: ChildInput) -> None:
        if params.gated:
            await workflow.wait_condition(lambda: self._open)
        seconds = params.activity_seconds
        await workflow.execute_activity(
            noop, seconds, start_to_close_timeout=timedelta(seconds=60 + seconds)
        )
        if params.successor is not None:
            # The parent starts the successor while this child runs, a whole activity earlier.
            await workflow.get_external_workflow_handle(params.successor).signal(
                CeilingChild.open_gate
            )


@workflow.defn
class CeilingParent:
    @workflow.run
    async def run(self, params: CeilingInput) -> int:
        if params.gated:
            return await self._gated_slots(params)
        prefix = workflow.info().workflow_id
        in_flight: list[asyncio.Task[None]] = []
        started = finished = 0
        while finished < params.tasks:
            while started < params.tasks and len(in_flight) < params.window:
                child = workflow.execute_child_workflow(
                    CeilingChild.run,
                    ChildInput(params.activity_seconds),
                    id=f"{prefix}/{started}",
                )
                in_flight.append(asyncio.create_task(child))
                started += 1
            done, in_flight = await workflow.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            finished += len(done)
        return finished

    async def _gated_slots(self, params: CeilingInput) -> int:
        prefix = workflow.info().workflow_id
        window = min(params.window, params.tasks)

        async def run_slot(slot: int) -> int:
            count = params.tasks // window + (slot < params.tasks % window)
            ids = [f"{prefix}/{slot}/{i}" for i in range(count)]
            running = None
            for i, child_id in enumerate(ids):
                child = await workflow.start_child_workflow(
                    CeilingChild.run,
                    ChildInput(
                        params.activity_seconds,
                        gated=i > 0,
                        successor=ids[i + 1] if i + 1 < count else None,
                    ),
                    id=child_id,
                )
                if running is not None:
                    await running
                running = child
            if running is not None:
                await running
            return count

        return sum(await asyncio.gather(*(run_slot(slot) for slot in range(window))))


def worker_options(args: argparse.Namespace) -> dict[str, Any]:
    """Worker settings that differ from the SDK's defaults, from the command line."""
    options: dict[str, Any] = {}
    if args.unsandboxed:
        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    if args.wf_pollers:
        options["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(args.wf_pollers)
    if args.act_pollers:
        options["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(args.act_pollers)
    if args.sticky_ratio is not None:
        options["nonsticky_to_sticky_poll_ratio"] = args.sticky_ratio
    return options


async def run_batch(client: Client, params: CeilingInput, args: argparse.Namespace) -> None:
    task_queue = f"ceiling-{uuid.uuid4()}"
    parents = args.parents
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[CeilingParent, CeilingChild],
        activities=[noop],
        **worker_options(args),
    ):
        # Several parents share the batch and the window, so no single workflow's lock serialises
        # every child's start and completion.
        shares = [
            CeilingInput(
                tasks=params.tasks // parents + (i < params.tasks % parents),
                window=max(1, params.window // parents),
                activity_seconds=params.activity_seconds,
                gated=params.gated,
            )
            for i in range(parents)
        ]
        results = await asyncio.gather(
            *(
                client.execute_workflow(
                    CeilingParent.run, share, id=f"{task_queue}/parent-{i}", task_queue=task_queue
                )
                for i, share in enumerate(shares)
                if share.tasks
            )
        )
    if sum(results) != params.tasks:
        raise RuntimeError(f"parents reported {sum(results)} children, expected {params.tasks}")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = server_config(
        args.server,
        sqlite_pragmas=parse_pairs(args.pragma, "--pragma"),
        dynamic_config=parse_pairs(args.dynamic_config, "--dynamic-config"),
    )
    params = CeilingInput(
        tasks=args.tasks,
        window=args.window,
        activity_seconds=args.activity_seconds,
        gated=args.gated,
    )
    async with bench_server(config=config, in_memory=args.in_memory) as server:
        compression = GrpcCompression.NONE if args.no_compression else GrpcCompression.GZIP
        client = await Client.connect(server.address, grpc_compression=compression)
        meter = CpuMeter(server.pid)
        meter.start()
        await run_batch(client, params, args)
        usage = meter.stop()
        size = db_bytes(server)
    return {
        "tasks": args.tasks,
        "window": args.window,
        "activity_seconds": args.activity_seconds,
        "gated": args.gated,
        "parents": args.parents,
        "server": config.name,
        "pragmas": dict(config.sqlite_pragmas),
        "dynamic_config": dict(config.dynamic_config),
        "in_memory": args.in_memory,
        "sandbox": not args.unsandboxed,
        "grpc_compression": not args.no_compression,
        "wf_pollers": args.wf_pollers or "sdk default",
        "act_pollers": args.act_pollers or "sdk default",
        "sticky_ratio": args.sticky_ratio if args.sticky_ratio is not None else "sdk default",
        "wall_s": usage.wall_s,
        "server_cpu_s": usage.server_cpu_s,
        "worker_cpu_s": usage.worker_cpu_s,
        "other_cpu_s": usage.other_cpu_s,
        **usage.per_task(args.tasks),
        "db_bytes": size,
        "command": command_line(),
    }


def summary(r: dict[str, Any]) -> str:
    settings = [f"{k}={v}" for k, v in {**r["pragmas"], **r["dynamic_config"]}.items()]
    if r["in_memory"]:
        settings.insert(0, "in-memory")
    if r["wf_pollers"] != "sdk default" or r["act_pollers"] != "sdk default":
        settings.append(f"pollers={r['wf_pollers']}/{r['act_pollers']}")
    pattern = "gated slots" if r["gated"] else "ceiling"
    utilisation = ""
    if r["activity_seconds"]:
        ideal = r["window"] / r["activity_seconds"]
        utilisation = f" ({r['tasks_per_s'] / ideal:.1%} of W / L = {ideal:g})"
    return (
        f"{pattern}: {r['tasks']} tasks, window {r['window']}: {r['wall_s']:.1f} s, "
        f"{r['tasks_per_s']:.2f} tasks/s{utilisation}; "
        f"server {r['server_cpu_s_per_task'] * 1000:.1f} ms CPU/task "
        f"({r['server_cpu_util']:.0%} of a core); worker "
        f"{r['worker_cpu_s_per_task'] * 1000:.1f} ms CPU/task ({r['worker_cpu_util']:.0%}); "
        f"others {r['other_cpu_util']:.0%}; "
        f"db {r['db_bytes'] / 1e6:.1f} MB; server {r['server']}: "
        f"{' '.join(settings) or 'defaults'}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=500, help="child workflows (default 500)")
    parser.add_argument("--window", type=int, default=50, help="children in flight (default 50)")
    parser.add_argument(
        "--activity-seconds",
        type=float,
        default=0.0,
        help="each child's activity sleeps this long, like a model call (default 0)",
    )
    parser.add_argument(
        "--server",
        choices=sorted(SERVER_CONFIGS),
        default="untuned",
        help="dev server configuration (untuned: the CLI's defaults; durable: the demo's)",
    )
    parser.add_argument(
        "--pragma", action="append", default=[], metavar="K=V", help="SQLite pragma for the server"
    )
    parser.add_argument(
        "--dynamic-config",
        action="append",
        default=[],
        metavar="K=V",
        help="server dynamic config value (V is JSON)",
    )
    parser.add_argument(
        "--in-memory", action="store_true", help="in-memory database (no file) for reference"
    )
    parser.add_argument(
        "--gated",
        action="store_true",
        help="experiment: pre-start each slot's next child behind a gate its predecessor opens "
        "by signal (2 W children open; see the module's docstring)",
    )
    parser.add_argument("--unsandboxed", action="store_true", help="run workflows unsandboxed")
    parser.add_argument(
        "--no-compression", action="store_true", help="no gRPC gzip between worker and server"
    )
    parser.add_argument(
        "--parents", type=int, default=1, help="split the batch over this many parents"
    )
    parser.add_argument("--wf-pollers", type=int, default=0, help="workflow task pollers")
    parser.add_argument("--act-pollers", type=int, default=0, help="activity task pollers")
    parser.add_argument("--sticky-ratio", type=float, default=None, help="non-sticky:sticky polls")
    parser.add_argument("--json", action="store_true", help="print a JSON object, too")
    parser.add_argument(
        "--record", action="store_true", help="append the result to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    # Over a few hundred commands in one workflow task risks a stuck workflow (DESIGN.md, 3.).
    if args.tasks < 1 or not 1 <= args.window <= 500 or args.parents < 1:
        parser.error("--tasks and --parents must be >= 1 and --window within 1..500")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    compile_workflow_modules()
    result = asyncio.run(measure(args))
    print(summary(result))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    if args.record:
        body = f"{summary(result)}\n\n```json\n{json.dumps(result, indent=2, sort_keys=True)}\n```"
        title = "ceiling, gated slots" if args.gated else "ceiling"
        append_result(title, body, command=result["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
