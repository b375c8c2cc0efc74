"""`starter.py demo`: the main job on the embedded default, from nothing to results."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Literal

from taskpool.cli import render
from taskpool.cli.command import Args, Command
from taskpool.cli.context import Context
from taskpool.cli.errors import OK
from taskpool.cli.following import follow_and_report, progress_view
from taskpool.cli.task_files import load
from taskpool.client.batches import start_batch
from taskpool.client.reading import find_batch
from taskpool.devtools.demo import SAMPLE_BATCH, embedded_environment
from taskpool.domain.batch import BatchOptions
from taskpool.domain.tasks import TaskStatus
from taskpool.infra.store import opened_store


class DemoArgs(Args):
    model: Literal["auto", "local", "scripted", "configured"]
    tasks: str | None
    batch_id: str | None
    concurrency: int
    interval: float

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model",
            choices=["auto", "local", "scripted", "configured"],
            default="auto",
            help="auto (default): the configured provider if OPENAI_API_KEY or OPENAI_BASE_URL "
            "is set, else the local model; scripted: canned replies, for a quick look",
        )
        parser.add_argument(
            "--tasks",
            metavar="FILE|DIR",
            help=f"tasks to run (default: {SAMPLE_BATCH.name})",
        )
        parser.add_argument(
            "--batch-id", metavar="ID", help="the batch's id (default: demo-<random>)"
        )
        parser.add_argument(
            "--concurrency", type=int, default=2, metavar="N", help="tasks at once (default 2)"
        )
        parser.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)


async def demo(ctx: Context, args: DemoArgs) -> int:
    source = Path(args.tasks) if args.tasks else SAMPLE_BATCH
    specs = load(source, default_kind=None)
    async with embedded_environment(model=args.model, say=ctx.say) as env:
        batch_id = args.batch_id or render_batch_id()
        await start_batch(
            env.client,
            batch_id,
            specs,
            task_queue=env.settings.task_queue,
            store=env.settings.store_url,
            options=BatchOptions(concurrency=args.concurrency),
        )
        page = _batch_page(env.ui_url, batch_id)
        count = render.tasks(len(specs))
        ctx.say(f"Batch {batch_id}: {count} from {source}, {args.concurrency} at once")
        if page:
            ctx.say(f"  follow it in the Temporal UI: {page}")
        info = await find_batch(env.client, batch_id)
        # The demo's job is to show a batch run to its end; a task the model got wrong is part
        # of what it shows (and is in the table), not a failure of the demo.
        view = progress_view(ctx, json_lines=False)
        await follow_and_report(
            ctx, env.client, info, view, interval=args.interval, ending="summary"
        )
        async with opened_store(env.settings.store_url) as store:
            records = await store.list_tasks(batch_id)
        ctx.show(render.results_table(records))
        ctx.say(env.model_note)
        ctx.say(f"Results are in {env.settings.store_url}; export them with:")
        ctx.say(
            "  "
            + render.command(
                "results",
                batch_id,
                "--store",
                env.settings.store_url,
                "--out",
                f"{batch_id}.jsonl",
            )
        )
        failed = sum(1 for record in records if record.status is TaskStatus.FAILED)
        if failed:
            url = env.settings.store_url
            export = ("--status", "failed", "--as-tasks", "--out", "failed.jsonl")
            which = "the failed task" if failed == 1 else f"the {failed} failed tasks"
            ctx.say(f"Run {which} again with:")
            ctx.say("  " + render.command("results", batch_id, "--store", url, *export))
            ctx.say("  " + render.command("demo", "--tasks", "failed.jsonl"))
        if page:
            ctx.say(f"The batch in the Temporal UI: {page}")
            if env.started_server:
                ctx.say("  (the UI stops with the demo; run the demo again to browse past batches)")
    return OK


def render_batch_id() -> str:
    return f"demo-{uuid.uuid4().hex[:6]}"


def _batch_page(ui_url: str | None, batch_id: str) -> str | None:
    return f"{ui_url.rstrip('/')}/namespaces/default/workflows/{batch_id}" if ui_url else None


DEMO = Command(
    "demo",
    "Run a sample batch on the embedded default (dev server, local model, worker).",
    DemoArgs,
    demo,
    description=(
        "Run a sample batch end to end on this machine: uses the Temporal server at\n"
        "TEMPORAL_ADDRESS or starts a dev server (state in ./data/, Web UI included), starts\n"
        "the model (OpenAI or OPENAI_BASE_URL when configured, else a tiny local model),\n"
        "starts a worker, runs the batch with live progress, prints the results and the UI\n"
        "link, and stops everything it started."
    ),
)
