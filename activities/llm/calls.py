"""One HTTP call to the model, inside the activity: within the token budget, heartbeating while it
waits, with provider errors turned into Temporal's retry decisions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.llm.errors import provider_error
from taskpool.infra.ratelimit import (
    DEFAULT_COMPLETION_ALLOWANCE,
    BudgetWaitTimeout,
    TokenBudget,
    estimate_tokens,
    spending,
)

# Waiting for the token budget stops while this much of the attempt's start-to-close time is
# left for the call (less when the call's own timeout is shorter), plus a margin, so an attempt
# ends with a clear error of its own rather than Temporal's timeout.
MIN_CALL_SECONDS = 30.0
ATTEMPT_MARGIN_SECONDS = 5.0


class ModelCaller:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        heartbeat_every: float = 2.0,
        budget: TokenBudget | None = None,
        completion_allowance: int = DEFAULT_COMPLETION_ALLOWANCE,
    ) -> None:
        self._client = client
        self._heartbeat_every = heartbeat_every
        self._budget = budget
        self._completion_allowance = completion_allowance

    async def complete(
        self, body: dict[str, Any], *, task_key: str, turn: int, timeout_seconds: float
    ) -> ChatCompletion:
        """The model's completion of `body` (the API's JSON), or an ApplicationError."""
        headers = {"X-Taskpool-Task": task_key, "X-Taskpool-Turn": str(turn)}
        try:
            # Waiting for the token budget happens in here too: it heartbeats all the while.
            async with self._heartbeating():
                return await self._within_budget(body, headers, timeout_seconds)
        except BudgetWaitTimeout as err:
            raise ApplicationError(
                f"{err}; lower the batch's concurrency or raise TASKPOOL_TPM", type="token_budget"
            ) from err
        except openai.APIError as err:
            raise provider_error(err) from err
        except ValueError as err:
            # The client raises the JSON decoder's error for a reply body that is not JSON.
            raise ApplicationError(
                f"unreadable reply from the model: {err}", type="bad_reply"
            ) from err

    async def _within_budget(
        self, body: dict[str, Any], headers: dict[str, str], timeout_seconds: float
    ) -> ChatCompletion:
        if self._budget is None:
            return await self._post(body, headers, timeout_seconds)
        started = time.monotonic()
        estimate = estimate_tokens(body, self._completion_allowance)
        limit = activity.info().start_to_close_timeout
        attempt_seconds = None if limit is None else limit.total_seconds() - ATTEMPT_MARGIN_SECONDS
        wait_limit = None
        if attempt_seconds is not None:
            wait_limit = attempt_seconds - min(timeout_seconds, MIN_CALL_SECONDS)
        async with spending(self._budget, body["model"], estimate, wait_limit=wait_limit) as charge:
            timeout = timeout_seconds
            if attempt_seconds is not None:
                left = attempt_seconds - (time.monotonic() - started)
                timeout = max(min(timeout, left), 1.0)
            completion = await self._post(body, headers, timeout)
            total = completion.usage.total_tokens if completion.usage is not None else None
            charge.tokens = total if isinstance(total, int) else estimate
            return completion

    async def _post(
        self, body: dict[str, Any], headers: dict[str, str], seconds: float
    ) -> ChatCompletion:
        # The client's own request method, not chat.completions.create: `create` walks every
        # message through the SDK's typed-parameter transform (aliases, file encodings), which
        # these bodies never need since they are built as the API's JSON here, and that walk is
        # a noticeable share of a task's worker CPU. Errors, retries, timeouts and the typed reply
        # are the same.
        return await self._client.post(
            "/chat/completions",
            body=body,
            cast_to=ChatCompletion,
            options={"timeout": seconds, "headers": headers},
        )

    @contextlib.asynccontextmanager
    async def _heartbeating(self) -> AsyncIterator[None]:
        """Heartbeat while the model thinks, so a lost worker is noticed within the heartbeat
        timeout and a cancelled task stops waiting."""

        info = activity.info()
        if info.is_local:
            # A local activity has no heartbeats: the SDK keeps the workflow task that runs it
            # alive instead.
            yield
            return
        timeout = info.heartbeat_timeout
        every = self._heartbeat_every
        if timeout is not None:
            every = min(every, timeout.total_seconds() / 4)

        async def beat() -> None:
            # The activity's start counts as its first sign of life, and a heartbeat is a write on
            # the server: a call that returns within `every` sends none.
            while True:
                await asyncio.sleep(every)
                activity.heartbeat()

        beating = asyncio.create_task(beat())
        try:
            yield
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
