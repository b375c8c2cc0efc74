"""The token budget's sliding window (in memory and in a shared SQLite file, on a fake clock), and
the LLM activity waiting for it against the scripted model server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.llm.turn import LlmActivities
from taskpool.domain.records import RegisterTasksRequest
from taskpool.domain.tasks import TaskSpec, TaskStatus
from taskpool.domain.turns import TurnRequest
from taskpool.infra.ratelimit import (
    MEMORY,
    WINDOW_SECONDS,
    InMemoryTokenBudget,
    Reservation,
    SqliteTokenBudget,
    budget_path,
    estimate_tokens,
    open_token_budget,
    task_queue_rate,
)
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Fault, Reply, ScriptedModelServer, ToolCallSpec
from tests.support import ROOT, eventually
from worker import build_worker

START = 1_000.0
LIMIT = 1_000


class SteppingClock:
    """Time moves only when someone sleeps, by exactly what they asked for."""

    def __init__(self, start: float = START) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
        await asyncio.sleep(0)


class ManualClock:
    """Time moves when the test says; sleepers wake once it has passed their deadline."""

    def __init__(self, start: float = START) -> None:
        self.time = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.time + seconds, woken)
        self._sleepers.append(entry)
        try:
            await woken
        finally:
            self._sleepers.remove(entry)

    @property
    def deadlines(self) -> list[float]:
        return [deadline for deadline, _ in self._sleepers]

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, woken in self._sleepers:
            if deadline <= self.time and not woken.done():
                woken.set_result(None)


MakeBudget = Callable[..., Any]


@pytest.fixture(params=["memory", "sqlite"])
def make_budget(request: pytest.FixtureRequest, tmp_path: Path) -> MakeBudget:
    """Budgets of one kind; SQLite ones share one file, as workers on a machine do."""

    def make(clock: Any, limit: int = LIMIT) -> InMemoryTokenBudget | SqliteTokenBudget:
        # A long poll: on a stepping clock every sleep is exactly the wait the window asked for.
        if request.param == "memory":
            return InMemoryTokenBudget(limit, clock=clock, poll_seconds=3600)
        return SqliteTokenBudget(tmp_path / "budget.db", limit, clock=clock, poll_seconds=3600)

    return make


async def test_requests_within_the_limit_do_not_wait(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    first = await budget.reserve("m", 400)
    second = await budget.reserve("m", 600)
    assert (first.at, second.at) == (START, START)
    assert clock.sleeps == []
    await budget.close()


async def test_a_full_window_waits_until_enough_has_left_it(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    await budget.reserve("m", 600)
    clock.time += 10
    await budget.reserve("m", 400)
    clock.time += 10
    # 1,000 are in the window; 300 more fit once the 600 from START have left it, not before.
    third = await budget.reserve("m", 300)
    assert third.at == START + WINDOW_SECONDS
    assert clock.sleeps == [40.0]
    await budget.close()


async def test_settling_an_over_estimate_gives_tokens_back(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    estimate = await budget.reserve("m", 900)
    await budget.settle(estimate, 100)
    await budget.reserve("m", 900)
    assert clock.sleeps == []
    await budget.close()


async def test_settling_an_under_estimate_charges_the_difference(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    estimate = await budget.reserve("m", 100)
    await budget.settle(estimate, 900)
    later = await budget.reserve("m", 200)
    assert later.at == START + WINDOW_SECONDS
    await budget.close()


async def test_a_failed_call_settled_with_zero_frees_its_tokens(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    failed = await budget.reserve("m", LIMIT)
    await budget.settle(failed, 0)
    await budget.reserve("m", LIMIT)
    assert clock.sleeps == []
    await budget.close()


async def test_a_request_over_the_whole_limit_goes_alone(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    small = await budget.reserve("m", 10)
    clock.time += 30
    # Too big for any window: it waits for an empty one instead of forever.
    big = await budget.reserve("m", 5 * LIMIT)
    assert big.at == small.at + WINDOW_SECONDS
    after = await budget.reserve("m", 1)
    assert after.at == big.at + WINDOW_SECONDS
    await budget.close()


async def test_models_have_separate_windows(make_budget: MakeBudget) -> None:
    clock = SteppingClock()
    budget = make_budget(clock)
    await budget.reserve("big-model", LIMIT)
    await budget.reserve("small-model", LIMIT)
    assert clock.sleeps == []
    await budget.close()


async def test_two_sqlite_budgets_on_one_file_share_the_limit(tmp_path: Path) -> None:
    clock = SteppingClock()
    path = tmp_path / "shared.db"
    one = SqliteTokenBudget(path, LIMIT, clock=clock, poll_seconds=3600)
    two = SqliteTokenBudget(path, LIMIT, clock=clock, poll_seconds=3600)
    taken = await one.reserve("m", 800)
    clock.time += 5
    waited = await two.reserve("m", 300)
    assert waited.at == taken.at + WINDOW_SECONDS
    # A settle through either instance corrects the shared row.
    await two.settle(taken, 0)
    await one.settle(waited, 0)
    await one.reserve("m", LIMIT)
    assert clock.sleeps == [55.0]
    await one.close()
    await two.close()


async def test_concurrent_reservations_never_overfill_a_shared_window(tmp_path: Path) -> None:
    clock = SteppingClock()
    path = tmp_path / "shared.db"
    budgets = [SqliteTokenBudget(path, LIMIT, clock=clock) for _ in range(2)]
    sizes = [150, 250, 400, 100, 300, 350, 200, 450] * 2
    taken: list[Reservation] = await asyncio.gather(
        *(budgets[n % 2].reserve("m", size) for n, size in enumerate(sizes))
    )
    assert sorted(r.tokens for r in taken) == sorted(sizes)
    for reservation in taken:
        in_window = sum(
            other.tokens
            for other in taken
            if reservation.at <= other.at < reservation.at + WINDOW_SECONDS
        )
        assert in_window <= LIMIT
    for budget in budgets:
        await budget.close()


async def test_a_reservation_in_another_process_counts(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    script = (
        "import asyncio, sys\n"
        "from taskpool.infra.ratelimit import SqliteTokenBudget\n"
        "async def main():\n"
        "    budget = SqliteTokenBudget(sys.argv[1], 1000)\n"
        "    taken = await budget.reserve('m', 800)\n"
        "    print(taken.at)\n"
        "    await budget.close()\n"
        "asyncio.run(main())\n"
    )
    other = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    taken_at = float(other.stdout)

    class Stop(Exception):
        pass

    class RealTimeNoSleep:
        def __init__(self) -> None:
            self.waits: list[float] = []

        def now(self) -> float:
            return time.time()

        async def sleep(self, seconds: float) -> None:
            self.waits.append(seconds)
            raise Stop

    clock = RealTimeNoSleep()
    budget = SqliteTokenBudget(path, LIMIT, clock=clock, poll_seconds=3600)
    with pytest.raises(Stop):
        await budget.reserve("m", 300)
    # It would wait until the other process's reservation leaves the window.
    assert clock.waits[0] == pytest.approx(taken_at + WINDOW_SECONDS - time.time(), abs=5)
    await budget.close()


async def test_a_cancelled_sqlite_reservation_leaves_nothing_behind(tmp_path: Path) -> None:
    clock = SteppingClock()
    path = tmp_path / "budget.db"
    budget = SqliteTokenBudget(path, LIMIT, clock=clock)
    reserving = asyncio.create_task(budget.reserve("m", LIMIT))
    # Let it hand its transaction to the database thread, then cancel it mid-flight.
    await asyncio.sleep(0)
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    await budget.close()
    again = SqliteTokenBudget(path, LIMIT, clock=clock, poll_seconds=3600)
    await again.reserve("m", LIMIT)
    assert clock.sleeps == []
    await again.close()


def test_the_estimate_is_prompt_characters_over_four_plus_the_reply_allowance() -> None:
    messages = [
        {"role": "system", "content": "s" * 400},
        {"role": "user", "content": [{"type": "text", "text": "u" * 400}]},
    ]
    assert estimate_tokens({"messages": messages}) == 200 + 256
    assert estimate_tokens({"messages": messages, "max_tokens": 50}) == 250
    assert estimate_tokens({"messages": messages}, completion_allowance=0) == 200
    tools = [{"type": "function", "function": {"name": "t", "parameters": {}}}]
    with_tools = estimate_tokens({"messages": messages, "tools": tools}, completion_allowance=0)
    assert with_tools == 200 + -(-len(json.dumps(tools)) // 4)


def test_the_queue_rate_leaves_room_for_every_partitions_burst() -> None:
    # 4 partitions of 0.5/s each hold one dispatch: a full minute may see 4 more than the rate.
    assert task_queue_rate(120) * 60 == pytest.approx(116)
    # At 10,000/min each partition bursts ceil(41.7) = 42.
    assert task_queue_rate(10_000) * 60 == pytest.approx(10_000 - 4 * 42)
    assert task_queue_rate(120, partitions=1) * 60 == pytest.approx(118)
    # Too small to take the bursts off: half the limit.
    assert task_queue_rate(6) * 60 == pytest.approx(3)


# --- Configuration and wiring --------------------------------------------------------------------


def test_limits_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"TASKPOOL_RPM": "120", "TASKPOOL_TPM": "20000", "TASKPOOL_STORE": "var/tasks.db"}
    )
    assert settings.requests_per_minute == 120
    assert settings.tokens_per_minute == 20000
    assert budget_path(settings) == str(Path("var") / "token-budget.db")
    chosen = Settings.from_env({"TASKPOOL_TPM": "5", "TASKPOOL_TOKEN_BUDGET_DB": "/x/b.db"})
    assert budget_path(chosen) == "/x/b.db"
    assert open_token_budget(Settings()) is None


def test_bad_limits_name_their_variable() -> None:
    with pytest.raises(ValueError, match="TASKPOOL_TPM"):
        Settings.from_env({"TASKPOOL_TPM": "0"})
    with pytest.raises(ValueError, match="TASKPOOL_RPM"):
        Settings.from_env({"TASKPOOL_RPM": "-1"})


async def test_the_worker_gives_temporal_the_request_rate(
    client: Client, store: TaskStore, openai_client: openai.AsyncOpenAI
) -> None:
    settings = Settings(requests_per_minute=120, tokens_per_minute=20000, token_budget_db=MEMORY)
    budget = open_token_budget(settings)
    assert isinstance(budget, InMemoryTokenBudget)
    worker = build_worker(client, settings, llm_client=openai_client, store=store, budget=budget)
    config = worker.config()
    assert config.get("max_task_queue_activities_per_second") == task_queue_rate(120)
    assert config.get("disable_eager_activity_execution") is True


# --- The activity waits for the budget -----------------------------------------------------------


@pytest.fixture
async def openai_client(scripted: ScriptedModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=scripted.base_url, api_key="test", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def tasks_in_store(store: TaskStore) -> TaskStore:
    """The store with the definitions the activity reads: doc-1 and doc-2 of batch "batch"."""
    await store.register_tasks(
        RegisterTasksRequest(
            batch_id="batch",
            tasks=[TaskSpec(id=f"doc-{n}", input="A short text to summarise.") for n in (1, 2)],
            initial_status={f"doc-{n}": TaskStatus.ASSIGNED for n in (1, 2)},
            at=datetime.now(UTC),
        )
    )
    return store


def turn(task_id: str) -> TurnRequest:
    return TurnRequest(batch_id="batch", task_id=task_id, attempt=1, turn=1, timeout_seconds=5)


def activity_environment(heartbeats: list[object]) -> ActivityEnvironment:
    env = ActivityEnvironment()
    # The activity bounds its wait by the attempt's start-to-close time, as a real worker's does.
    env.info = dataclasses.replace(
        env.info,
        start_to_close_timeout=timedelta(seconds=120),
        heartbeat_timeout=timedelta(seconds=10),
    )
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    return env


async def test_a_call_waits_heartbeating_while_the_budget_is_spent(
    scripted: ScriptedModelServer, openai_client: openai.AsyncOpenAI, tasks_in_store: TaskStore
) -> None:
    clock = ManualClock()
    budget = InMemoryTokenBudget(LIMIT, clock=clock)
    llm = LlmActivities(
        openai_client,
        store=tasks_in_store,
        default_model="scripted-model",
        budget=budget,
        heartbeat_every=0.02,
    )
    done = [ToolCallSpec("complete_task", {"result": "done"})]
    # The provider reports more than the estimate: the window is charged what it says.
    scripted.script("doc-1", Reply(tool_calls=done, usage=(900, 50)))
    first = await activity_environment([]).run(llm.chat_turn, turn("doc-1"))
    assert first.usage.total_tokens == 950

    heartbeats: list[object] = []
    second = asyncio.create_task(activity_environment(heartbeats).run(llm.chat_turn, turn("doc-2")))

    async def waiting(until: float) -> None:
        assert clock.deadlines == [until]

    await eventually(lambda: waiting(START + 1))  # polls the window once a second
    clock.advance(WINDOW_SECONDS - 1)
    await eventually(lambda: waiting(START + WINDOW_SECONDS))

    async def heartbeating() -> None:
        assert len(heartbeats) >= 3

    await eventually(heartbeating)
    assert len(scripted.requests) == 1
    clock.advance(1)
    result = await asyncio.wait_for(second, timeout=30)
    assert result.tool_calls[-1].name == "complete_task"
    assert len(scripted.requests) == 2


async def test_a_failed_call_gives_its_tokens_back(
    scripted: ScriptedModelServer, openai_client: openai.AsyncOpenAI, tasks_in_store: TaskStore
) -> None:
    clock = ManualClock()
    budget = InMemoryTokenBudget(LIMIT, clock=clock)
    llm = LlmActivities(
        openai_client, store=tasks_in_store, default_model="scripted-model", budget=budget
    )
    scripted.script("doc-1", Fault.server_error())
    with pytest.raises(ApplicationError, match="HTTP 500"):
        await activity_environment([]).run(llm.chat_turn, turn("doc-1"))
    # Had the failed call kept its estimate, this would sleep on a clock nobody advances.
    reservation = await asyncio.wait_for(budget.reserve("scripted-model", LIMIT), timeout=5)
    assert reservation.at == START
