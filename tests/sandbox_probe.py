"""A workflow that reads the wall clock, which a workflow must not do: the worker's sandbox has to
refuse it at run time. Its own module, importing nothing heavy, since the sandbox imports it afresh.
"""

from datetime import datetime

from temporalio import workflow


@workflow.defn(name="taskpool-test-reads-the-clock")
class ReadsTheClock:
    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()
