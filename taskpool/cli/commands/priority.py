"""`priority`: give tasks of a running batch that have not started another priority."""

from __future__ import annotations

import argparse

from taskpool.cli import options, render
from taskpool.cli.command import BatchArgs, Command
from taskpool.cli.context import Context
from taskpool.cli.errors import OK, finished_means
from taskpool.client.steering import RunningBatch
from taskpool.domain.tasks import Priority

IDS_SHOWN = 10


class PriorityArgs(BatchArgs):
    task_ids: list[str]
    priority: Priority

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--task",
            dest="task_ids",
            metavar="ID",
            nargs="+",
            action="extend",
            required=True,
            help="the tasks whose priority changes (queued, blocked or scheduled)",
        )
        parser.add_argument(
            "--priority",
            type=options.priority,
            required=True,
            metavar="P",
            help=f"the new priority: {', '.join(p.value for p in Priority)}",
        )


async def priority(ctx: Context, args: PriorityArgs) -> int:
    with finished_means("none of its tasks waits to run"):
        batch = await RunningBatch.find(await ctx.client(), args.batch)
        changed = await batch.set_priority(args.task_ids, args.priority)
    shown = ", ".join(changed.task_ids[:IDS_SHOWN])
    more = " ..." if len(changed.task_ids) > IDS_SHOWN else ""
    ctx.say(
        f"{render.tasks(len(changed.task_ids))} of batch {batch.batch_id} now "
        f"{'has' if len(changed.task_ids) == 1 else 'have'} priority {args.priority.value}: "
        f"{shown}{more}",
        f"  now: {render.counts_line(changed.status.counts)}",
    )
    return OK


PRIORITY = Command(
    "priority",
    "Change the priority of tasks of a running batch that have not started.",
    PriorityArgs,
    priority,
    details="The next free slot goes to the queued task of highest priority (critical, urgent, "
    "high,\nnormal, low), then to the one added first. A running, in-review or finished task "
    "keeps\nits priority: the batch refuses the request, and changes nothing.",
)
