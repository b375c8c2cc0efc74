"""The Temporal Web UI shows a batch's state: current details, search attributes, `status` query.

A dev server with the UI, a worker and the scripted model run in this test; headless Chromium
loads the batch's page the way a person would and reads what it renders. A screenshot of each page
checked goes to tests/artifacts/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from taskpool.client.batches import batch_status, pause_batch, resume_batch
from taskpool.devtools.devserver import DevServer, DevServerOptions
from taskpool.domain.batch import BatchOptions, BatchState, BatchStatus
from taskpool.domain.tasks import TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.temporal_connection import ensure_search_attributes
from taskpool.testing.scripted import ScriptedModelServer
from tests.browser import Browser, find_chromium
from tests.support import ROOT, documents, eventually, running_worker, start_test_batch

ARTIFACTS = ROOT / "tests" / "artifacts"
CI_INSTALL = "apt-get update && apt-get install -y chromium"
PAUSE_REASON = "quota check by the web UI test"
DETAILS_FRAME = "#user-metadata-current-details"
# The rows of the details table (taskpool/details.py), as the rendered table reads.
TABLE_ROWS = (
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.ASSIGNED,
    TaskStatus.IN_PROGRESS,
    TaskStatus.QUEUED,
    TaskStatus.BLOCKED,
    TaskStatus.SCHEDULED,
)


def chromium_or_skip() -> str:
    found = find_chromium()
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"chromium is missing, and CI must run the Web UI test: {CI_INSTALL}")
    pytest.skip(f"chromium is not installed, so the Web UI is not checked ({CI_INSTALL})")


async def paused_batch(client: Client, batch_id: str) -> BatchStatus:
    """Pause the batch once some tasks are done; returns its status once it says it is paused."""

    async def some_done() -> None:
        assert (await batch_status(client, batch_id)).counts["completed"] >= 2

    await eventually(some_done)
    await pause_batch(client, batch_id, reason=PAUSE_REASON)

    async def paused() -> BatchStatus:
        status = await batch_status(client, batch_id)
        assert status.state is BatchState.PAUSED
        return status

    return await eventually(paused)


async def shows_current_details(browser: Browser, client: Client, batch_id: str) -> str:
    """Open the User Metadata tab until its details match the batch's `status` query.

    Tasks whose model call was under way at the pause still finish, so the counts may move for a
    moment after the pause; the page reads the details when it loads, hence a reload per retry.
    """
    page = await browser.url()
    attempts = 0

    async def matches() -> str:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            await browser.goto(page)
        await browser.click("a[role=tab]", text="User Metadata")
        text = await browser.wait_for_text(f"PAUSED: {PAUSE_REASON}", scope=DETAILS_FRAME)
        status = await batch_status(client, batch_id)
        for task_status in TABLE_ROWS:
            row = f"{task_status.value}\t{status.counts[task_status.value]}"
            assert row in text.splitlines(), f"details lack the row {row!r}:\n{text}"
        return text

    return await eventually(matches, within=30)


async def test_web_ui_shows_batch_details_and_status_query(
    scripted: ScriptedModelServer, settings: Settings, batch_id: str, tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    scripted.latency = 0.5
    options = DevServerOptions(ui=True, log_file=tmp_path / "temporal.log")
    async with DevServer(options) as server:
        assert server.ui_url is not None
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        await ensure_search_attributes(client)
        async with running_worker(client, settings):
            handle = await start_test_batch(
                client, settings, batch_id, documents(6), BatchOptions(concurrency=2)
            )
            await paused_batch(client, batch_id)

            async with Browser(chromium, tmp_path / "chromium") as browser:
                await browser.goto(f"{server.ui_url}/namespaces/default/workflows/{batch_id}")
                await browser.wait_for_text(batch_id, "BatchWorkflow", "User Metadata")

                try:
                    details = await shows_current_details(browser, client, batch_id)
                finally:
                    await browser.screenshot(ARTIFACTS / "web-ui-current-details.png")
                # Rendered Markdown: bold and a table, not the source's markup.
                assert "**" not in details
                assert "|---|" not in details
                assert "state\ttasks" in details.splitlines()

                await browser.click("a[role=tab]", text="Search Attributes")
                try:
                    await browser.wait_for_text(
                        '"TaskpoolBatchState": "paused"', '"TaskpoolProgress": '
                    )
                finally:
                    await browser.screenshot(ARTIFACTS / "web-ui-search-attributes.png")

                await browser.click("a[role=tab]", text="Queries")
                await browser.click("[data-testid=query-select-button]")
                await browser.click("li[role=option]", text="status")
                chosen = await browser.evaluate("document.getElementById('query-select').value")
                assert chosen == "status"
                assert '"batch_id"' not in await browser.text()
                await browser.click("button", text="Run Query")
                try:
                    await browser.wait_for_text(
                        f'"batch_id": "{batch_id}"',
                        '"state": "paused"',
                        f'"pause_reason": "{PAUSE_REASON}"',
                    )
                finally:
                    await browser.screenshot(ARTIFACTS / "web-ui-status-query.png")

            await resume_batch(client, batch_id)
            result = await handle.result()
            assert result.state is BatchState.COMPLETED
            assert result.counts["completed"] == 6
