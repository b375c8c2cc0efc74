"""Model-call limits across workers: requests per minute (Temporal's task-queue rate limit) and
tokens per minute (the token budget shared through a SQLite file), measured at the model.

worker.py runs as several processes on one task queue against a private dev server; the scripted
model server in this process answers at once and logs every request with the usage it reported.
Two batches run one after the other: small tasks, so that the request limit binds, then bigger
tasks (~--task-tokens each), so that the token limit binds. From the model's log: the busiest
sliding 60 s window of requests and of tokens, per phase and over the whole run. It passes when no
window is over a limit and each phase's binding limit is used to at least 90 %.

    python bench/ratelimit.py [--rpm 120] [--tpm 20000] [--seconds 75] [--workers 2] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ROOT, append_result, bench_server, command_line, parse_pairs

from taskpool.client.batches import start_batch
from taskpool.domain import agents
from taskpool.domain.batch import AgentSettings, BatchOptions
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.temporal_connection import connect
from taskpool.testing.scripted import RequestRecord, ScriptedModelServer, default_responder
from taskpool.testing.scripted.wire import estimate_usage

WINDOW_SECONDS = 60.0
MODEL = "scripted-model"
# Below this share of a binding limit the run counts as under-using it.
MIN_UTILISATION = 0.9
_FILLER = "The committee reviewed the quarterly figures and agreed on next steps. "


@dataclass(frozen=True)
class Phase:
    name: str
    tasks: list[TaskSpec]
    binds: str  # "rpm" or "tpm": the limit this phase is sized to hit
    started: float = 0.0
    finished: float = 0.0


@dataclass(frozen=True)
class Peaks:
    requests: int
    tokens: int
    count: int
    mean_tokens: float
    seconds: float


def reported_tokens(spec: TaskSpec) -> int:
    """The usage the scripted server will report for this task's one call."""
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in agents.first_messages(spec)],
        "tools": [
            {"type": "function", "function": {"name": t.name}} for t in agents.LIFECYCLE_TOOLS
        ],
    }
    prompt, completion = estimate_usage(body, default_responder(body, f"batch/{spec.id}"))
    return prompt + completion


def sized_task(task_id: str, target_tokens: int) -> TaskSpec:
    """A task whose call reports about `target_tokens`: the padding is found, not guessed."""
    text = "Short note."
    spec = TaskSpec(id=task_id, input=text)
    while reported_tokens(spec) < target_tokens:
        missing = target_tokens - reported_tokens(spec)
        text += (_FILLER * (missing * 4 // len(_FILLER) + 1))[: max(missing * 4, 1)]
        spec = TaskSpec(id=task_id, input=text)
    return spec


def busiest_window(records: Sequence[RequestRecord]) -> tuple[int, int]:
    """Most requests and most reported tokens in any [t, t + 60 s) window of arrival times."""
    events = sorted((r.received_at, sum(r.usage) if r.usage else 0) for r in records)
    most_requests = most_tokens = 0
    end = tokens = 0
    for start, (at, _) in enumerate(events):
        while end < len(events) and events[end][0] < at + WINDOW_SECONDS:
            tokens += events[end][1]
            end += 1
        most_requests = max(most_requests, end - start)
        most_tokens = max(most_tokens, tokens)
        tokens -= events[start][1]
    return most_requests, most_tokens


def peaks(records: Sequence[RequestRecord]) -> Peaks:
    requests, tokens = busiest_window(records)
    used = [sum(r.usage) for r in records if r.usage]
    times = [r.received_at for r in records]
    return Peaks(
        requests=requests,
        tokens=tokens,
        count=len(records),
        mean_tokens=sum(used) / len(used) if used else 0.0,
        seconds=max(times) - min(times) if times else 0.0,
    )


def spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        # Its own process group, so that stopping it takes along whatever it started.
        return subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def phases(args: argparse.Namespace) -> list[Phase]:
    small = sized_task("size-probe", 0)
    small_tokens = reported_tokens(small)
    rpm_tasks = math.ceil(args.rpm / 60 * args.seconds)
    big = sized_task("size-probe", args.task_tokens)
    tpm_rate = min(args.rpm, args.tpm / reported_tokens(big))
    tpm_tasks = math.ceil(tpm_rate / 60 * args.seconds)
    # Calls in flight hold their estimate (prompt, tools and a reply allowance) until they settle,
    # so the token limit needs some headroom over what the small calls really use.
    if args.rpm * small_tokens > args.tpm * 0.95:
        raise SystemExit(
            f"small tasks report {small_tokens} tokens: at {args.rpm:g} RPM the token limit "
            f"would bind too; raise --tpm above {args.rpm * small_tokens / 0.95:.0f}"
        )
    if tpm_rate >= args.rpm:
        raise SystemExit("--task-tokens too small for the token limit to bind before the RPM")
    both = [
        Phase(
            "requests bind",
            [TaskSpec(id=f"r{i:04d}", input=f"Short note {i}.") for i in range(rpm_tasks)],
            "rpm",
        ),
        Phase(
            "tokens bind",
            [sized_task(f"t{i:04d}", args.task_tokens) for i in range(tpm_tasks)],
            "tpm",
        ),
    ]
    return [phase for phase in both if args.only in (None, phase.binds)]


async def run_phases(
    args: argparse.Namespace, address: str, queue: str, store_url: str, planned: list[Phase]
) -> list[Phase]:
    client = await connect({"TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default"})
    done: list[Phase] = []
    options = BatchOptions(
        concurrency=args.concurrency, agent=AgentSettings(model=MODEL, llm_timeout_seconds=30)
    )
    for phase in planned:
        started = time.monotonic()
        handle = await start_batch(
            client,
            f"ratelimit-{uuid.uuid4().hex[:8]}",
            phase.tasks,
            task_queue=queue,
            store=store_url,
            options=options,
        )
        result = await handle.result()
        if result.counts.get("completed") != len(phase.tasks):
            raise RuntimeError(f"{phase.name}: not every task completed: {result.counts}")
        done.append(
            Phase(phase.name, phase.tasks, phase.binds, started=started, finished=time.monotonic())
        )
        print(f"{phase.name}: {len(phase.tasks)} tasks in {done[-1].finished - started:.0f} s")
    return done


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    planned = phases(args)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the workers and the server stop too.
    this = asyncio.current_task()
    if this is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    queue = f"ratelimit-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="taskpool-ratelimit-") as tmp:
        dynamic = parse_pairs(args.dynamic_config, "--dynamic-config")
        async with (
            bench_server(dynamic_config=dynamic) as server,
            ScriptedModelServer(latency=args.latency) as model,
        ):
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "TASKPOOL_"))
            }
            env.update(
                TEMPORAL_ADDRESS=server.address,
                TEMPORAL_NAMESPACE="default",
                TASKPOOL_TASK_QUEUE=queue,
                TASKPOOL_MODEL=MODEL,
                TASKPOOL_STORE=str(Path(tmp) / "tasks.db"),
                TASKPOOL_TOKEN_BUDGET_DB=str(Path(tmp) / "token-budget.db"),
                TASKPOOL_RPM=f"{args.rpm:g}",
                TASKPOOL_TPM=str(args.tpm),
                TASKPOOL_LOG_FORMAT="json",
                OPENAI_BASE_URL=model.base_url,
                OPENAI_API_KEY="bench",
            )
            logs = [Path(tmp) / f"worker-{n}.log" for n in range(args.workers)]
            workers = [spawn_worker(env, log) for log in logs]
            try:
                # A stuck batch (a broken worker retries its workflow tasks forever) fails the
                # run instead of hanging it.
                async with asyncio.timeout(len(planned) * args.seconds * 2.5 + 60):
                    done = await run_phases(
                        args, server.address, queue, env["TASKPOOL_STORE"], planned
                    )
            except TimeoutError:
                tails = "\n".join(f"{log}:\n{log.read_text()[-1500:]}" for log in logs)
                raise RuntimeError(
                    f"the batches did not finish in time; worker logs:\n{tails}"
                ) from None
            finally:
                for proc in workers:
                    stop_worker(proc)
            calls_per_worker = [log.read_text().count('"llm turn done"') for log in logs]
            records = list(model.requests)
    if args.dump:
        with args.dump.open("w") as out:
            for r in records:
                out.write(json.dumps({"at": r.received_at, "tokens": sum(r.usage or ())}) + "\n")
    return report(args, done, records, calls_per_worker)


def report(
    args: argparse.Namespace,
    done: list[Phase],
    records: list[RequestRecord],
    calls_per_worker: list[int],
) -> dict[str, Any]:
    rows = []
    ok = True
    for phase in done:
        inside = [r for r in records if phase.started <= r.received_at <= phase.finished]
        p = peaks(inside)
        used = p.requests / args.rpm if phase.binds == "rpm" else p.tokens / args.tpm
        passed = p.requests <= args.rpm and p.tokens <= args.tpm and used >= MIN_UTILISATION
        ok = ok and passed
        rows.append(
            {"phase": phase.name, "binds": phase.binds, "peaks": p, "used": used, "ok": passed}
        )
    whole = peaks(records)
    ok = ok and whole.requests <= args.rpm and whole.tokens <= args.tpm
    errors = sum(1 for r in records if r.status != 200)
    return {
        "rows": rows,
        "whole": whole,
        "ok": ok and errors == 0,
        "errors": errors,
        "calls_per_worker": calls_per_worker,
        "command": command_line(),
    }


def table(args: argparse.Namespace, result: dict[str, Any]) -> str:
    lines = [
        f"Limits: {args.rpm:g} requests/min, {args.tpm} tokens/min; {args.workers} worker "
        f"processes on one queue, batch concurrency {args.concurrency}, model latency "
        f"{args.latency:g} s. Peaks are the busiest sliding 60 s window of arrivals at the model, "
        "tokens as the model reported them.",
        "",
        "| phase | requests | tokens/request | s | peak requests/60 s | peak tokens/60 s | binding "
        "limit used | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in [*result["rows"], {"phase": "whole run", "peaks": result["whole"]}]:
        p: Peaks = row["peaks"]
        used = f"{row['used']:.1%} ({row['binds'].upper()})" if "used" in row else "-"
        ok = (
            ("yes" if row["ok"] else "NO")
            if "ok" in row
            else ("yes" if p.requests <= args.rpm and p.tokens <= args.tpm else "NO")
        )
        lines.append(
            f"| {row['phase']} | {p.count} | {p.mean_tokens:.0f} | {p.seconds:.0f} | "
            f"{p.requests} ({p.requests / args.rpm:.1%}) | {p.tokens} ({p.tokens / args.tpm:.1%}) "
            f"| {used} | {ok} |"
        )
    lines += [
        "",
        f"Model calls per worker process: {', '.join(map(str, result['calls_per_worker']))}; "
        f"error replies: {result['errors']}. Verdict: {'PASS' if result['ok'] else 'FAIL'}.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rpm", type=float, default=120, help="requests per minute (120)")
    parser.add_argument("--tpm", type=int, default=20000, help="tokens per minute (20000)")
    parser.add_argument("--seconds", type=float, default=75, help="length of each phase (75)")
    parser.add_argument(
        "--task-tokens", type=int, default=200, help="tokens per call in the token phase (200)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--concurrency", type=int, default=20, help="batch concurrency (20)")
    parser.add_argument("--latency", type=float, default=0.0, help="model reply delay, s (0)")
    parser.add_argument(
        "--only", choices=["rpm", "tpm"], help="run only the phase where this limit binds"
    )
    parser.add_argument(
        "--dynamic-config",
        action="append",
        default=[],
        metavar="K=V",
        help="server dynamic config value (V is JSON)",
    )
    parser.add_argument("--dump", type=Path, help="write each request's arrival and tokens here")
    parser.add_argument(
        "--record", action="store_true", help="append the result to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.seconds <= WINDOW_SECONDS:
        parser.error("--seconds must exceed 60, or no full window falls inside a phase")
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be >= 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    result = asyncio.run(measure(args))
    text = table(args, result)
    print(text)
    if args.record:
        append_result("ratelimit: RPM and TPM across workers", text, command=result["command"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
