"""taskpool itself against the server's ceiling: throughput, utilisation, memory and history size.

Every taskpool run is the real thing: a private dev server on a fresh SQLite file, `python
worker.py` as its own process, the scripted model server in this process, and a batch of simple
summarise tasks started as starter.py starts one. Parts, each runnable alone:

    python bench/throughput.py ceiling-vs-taskpool [--tasks 500] [--window 50] [--pairs 3]
            [--ceiling-server untuned]
        the ceiling (bench/ceiling.py) and a taskpool batch with the same N and W, model latency 0,
        in one invocation so the ratio holds on a noisy machine (--pairs rounds of both, the
        verdict on the median ratio); plus LLM calls and tokens per
        task, events per workflow and where each task's time goes. With --ceiling-server other
        than --server the ceiling is measured on both, giving taskpool / ceiling on the same
        server and taskpool / the ceiling on the other (the issue: durable taskpool >= 1.5x the
        untuned ceiling)
    python bench/throughput.py utilisation [--windows 10 100] [--latency 1]
        measured tasks/s against the ideal W / L
    python bench/throughput.py rss [--window 100] [--latency 1]
        the worker process's peak resident memory
    python bench/throughput.py history [--history-tasks 10000]
        runs the batch to completion, then reads every batch run's and every task child's history:
        events per history and the largest payload and event against the targets; a 10,000-task
        batch takes a long while here (the run, then reading 10,000 histories)
    python bench/throughput.py all

Every part takes --server {untuned,durable}: the configuration of each dev server it starts
(bench/_common.py SERVER_CONFIGS; untuned is the CLI's defaults, durable what `taskpool demo`
runs). Results are printed and appended to bench/RESULTS.md with the command (--no-record skips
that); progress goes to stderr.

This file is the command line; the work is in bench/batch_run.py (one taskpool batch, measured),
bench/histories.py (reading its histories), bench/meters.py (CPU and memory), bench/report.py
(tables) and bench/parts.py (the parts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Sequence

from _common import (
    SERVER_CONFIGS,
    append_result,
    command_line,
    compile_workflow_modules,
    parse_pairs,
)
from batch_run import Common
from parts import HISTORY_TARGET_TASKS, ceiling_vs_taskpool, history, utilisation, worker_rss
from report import Section

# The server starts children at a few per second here, so with a 1 s model only a handful of a
# window of 100 is ever in flight; a slow model lets the whole window fill.
RSS_LATENCY = 20.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        choices=sorted(SERVER_CONFIGS),
        default="untuned",
        help="dev server configuration for every server started (untuned: the CLI's defaults; "
        "durable: what `taskpool demo` runs)",
    )
    common.add_argument(
        "--pragma",
        action="append",
        default=[],
        metavar="K=V",
        help="SQLite pragma on top of --server's (all servers)",
    )
    common.add_argument(
        "--input-chars", type=int, default=300, help="characters of input per task (300)"
    )
    common.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for worker.py, e.g. TASKPOOL_WORKFLOW_SANDBOX=off",
    )
    common.add_argument(
        "--model-calls",
        choices=("activity", "local"),
        default="activity",
        help="how taskpool's batches run model turns (BatchOptions' agent.model_calls)",
    )
    common.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    common.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parts = parser.add_subparsers(dest="part", required=True)

    compare = parts.add_parser("ceiling-vs-taskpool", parents=[common])
    compare.add_argument("--tasks", type=int, default=500, help="tasks (500)")
    compare.add_argument("--window", type=int, default=50, help="in flight (50)")
    compare.add_argument(
        "--ceiling-server",
        choices=sorted(SERVER_CONFIGS),
        help="also measure the ceiling on this configuration (default: --server's only)",
    )
    compare.add_argument(
        "--pairs", type=int, default=3, help="rounds of ceiling then taskpool; median ratio (3)"
    )

    util = parts.add_parser("utilisation", parents=[common])
    util.add_argument("--windows", type=int, nargs="+", default=[10, 100], help="W (10 100)")
    util.add_argument("--latency", type=float, default=1.0, help="model latency, s (1)")
    util.add_argument("--rounds", type=int, default=20, help="tasks = rounds x W ... (20)")
    util.add_argument("--max-tasks", type=int, default=500, help="... at most this (500)")
    util.add_argument("--ceiling-rate", type=float, help="known ceiling, tasks/s (else measured)")

    rss = parts.add_parser("rss", parents=[common])
    rss.add_argument("--tasks", type=int, default=300, help="tasks (300)")
    rss.add_argument("--window", type=int, default=100, help="in flight (100)")
    rss.add_argument(
        "--latency",
        type=float,
        default=RSS_LATENCY,
        help=f"model latency, s ({RSS_LATENCY:g}: long enough for W calls at once)",
    )

    hist = parts.add_parser("history", parents=[common])
    hist.add_argument(
        "--history-tasks", type=int, default=HISTORY_TARGET_TASKS, help="tasks (10000)"
    )
    hist.add_argument("--window", type=int, default=50, help="in flight (50)")
    hist.add_argument(
        "--probe-tasks",
        type=int,
        default=HISTORY_TARGET_TASKS,
        help="also try to start this many tasks without running them; 0 skips (10000)",
    )
    hist.add_argument(
        "--continue-as-new-after",
        type=int,
        help="reports per batch run (default: BatchOptions'); low values exercise the hand-over",
    )

    every = parts.add_parser("all", parents=[common])
    every.add_argument("--tasks", type=int, default=500, help="ceiling-vs-taskpool tasks (500)")
    every.add_argument("--window", type=int, default=50, help="ceiling-vs-taskpool W (50)")
    every.add_argument(
        "--ceiling-server",
        choices=sorted(SERVER_CONFIGS),
        help="ceiling-vs-taskpool: also measure the ceiling on this configuration",
    )
    every.add_argument(
        "--pairs", type=int, default=3, help="ceiling-vs-taskpool rounds; median ratio (3)"
    )
    every.add_argument(
        "--history-tasks", type=int, default=HISTORY_TARGET_TASKS, help="history tasks (10000)"
    )
    args = parser.parse_args(argv)
    for name in ("tasks", "history_tasks", "input_chars", "pairs"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if (getattr(args, "continue_as_new_after", None) or 1) < 1:
        parser.error("--continue-as-new-after must be >= 1")
    # The batch workflow's own bound (BatchOptions.concurrency).
    for window in [getattr(args, "window", 1), *getattr(args, "windows", [])]:
        if not 1 <= window <= 1000:
            parser.error("windows must be within 1..1000")
    return args


async def run_parts(args: argparse.Namespace, common: Common) -> list[Section]:
    if args.part == "ceiling-vs-taskpool":
        return [
            await ceiling_vs_taskpool(
                args.tasks, args.window, common, args.ceiling_server, args.pairs
            )
        ]
    if args.part == "utilisation":
        return [
            await utilisation(
                args.windows, args.latency, args.rounds, args.max_tasks, args.ceiling_rate, common
            )
        ]
    if args.part == "rss":
        return [await worker_rss(args.tasks, args.window, args.latency, common)]
    if args.part == "history":
        return [
            await history(
                args.history_tasks,
                args.window,
                args.probe_tasks,
                common,
                args.continue_as_new_after,
            )
        ]
    compared = await ceiling_vs_taskpool(
        args.tasks, args.window, common, args.ceiling_server, args.pairs
    )
    ceiling_rate = statistics.median(
        float(pair["ceiling"]["tasks_per_s"]) for pair in compared.data["pairs"]
    )
    return [
        compared,
        await utilisation([10, 100], 1.0, 20, 500, ceiling_rate, common),
        await worker_rss(300, 100, RSS_LATENCY, common),
        await history(args.history_tasks, 50, HISTORY_TARGET_TASKS, common),
    ]


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    compile_workflow_modules()
    pragmas = parse_pairs(args.pragma, "--pragma")
    common = Common(
        server_name=args.server,
        pragmas=pragmas,
        input_chars=args.input_chars,
        worker_env=parse_pairs(args.worker_env, "--worker-env"),
        model_calls=args.model_calls,
    )
    command = command_line()
    for section in asyncio.run(run_parts(args, common)):
        print(f"## {section.title}\n\n{section.body}\n")
        if args.json:
            print(json.dumps(section.data, indent=2, sort_keys=True, default=str))
        if not args.no_record:
            append_result(section.title, section.body, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
