"""Limits on model calls that hold across every worker: requests and tokens per minute.

Requests per minute are Temporal's job: the task queue's rate limit, which the server enforces for
all the queue's workers (`task_queue_rate` turns a limit into the worker option). Tokens per minute
cannot be: the server does not know how big a call is. So each call reserves its estimated tokens
in a sliding 60-second window before it is sent, waiting while the window is full, and settles
with the usage the provider reported afterwards.

Two backends: one SQLite file that every worker process on a machine shares, and an in-memory one
for a single process. Time comes from an injectable clock, so tests run the window without
sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from taskpool.infra.settings import Settings
from taskpool.infra.sqlite_files import open_shared, transaction
from taskpool.infra.store import is_postgres, sqlite_path

T = TypeVar("T")

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 60.0
CHARS_PER_TOKEN = 4
# What a reply may cost when the request sets no max_tokens.
DEFAULT_COMPLETION_ALLOWANCE = 256
# Waiters look again at least this often: a settle elsewhere may give tokens back before the
# oldest reservation leaves the window.
DEFAULT_POLL_SECONDS = 1.0
MEMORY = ":memory:"
BUDGET_FILE_NAME = "token-budget.db"
_MIN_WAIT_SECONDS = 0.001
# Temporal splits a task queue's rate limit over its read partitions (4 unless the server's
# matching.numTaskqueueReadPartitions says otherwise), each a token bucket that may burst.
DEFAULT_QUEUE_PARTITIONS = 4


def task_queue_rate(
    requests_per_minute: float, partitions: int = DEFAULT_QUEUE_PARTITIONS
) -> float:
    """The task-queue rate (per second) that keeps every sliding minute within the limit.

    Each partition's bucket holds max(ceil(its rate), 1) dispatches, so any 60 s may see the
    rate's minute plus all buckets full: the bursts come off the rate. A limit too small for that
    keeps half of it, and may then exceed it by the bursts.
    """
    per_partition = requests_per_minute / 60 / partitions
    bursts = partitions * max(math.ceil(per_partition), 1)
    return max(requests_per_minute - bursts, requests_per_minute / 2) / 60


@dataclass(frozen=True)
class Reservation:
    """Tokens taken from `model`'s window at `at`; `key` finds them again to settle."""

    model: str
    tokens: int
    at: float
    key: int


class TokenBudget(Protocol):
    async def reserve(self, model: str, tokens: int) -> Reservation:
        """Take `tokens` from the model's window, waiting until the last 60 s leave room.

        A request larger than the whole limit goes alone, once the window is empty.
        """

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the estimate with what the call really used (0 when it failed)."""

    async def close(self) -> None: ...


class BudgetWaitTimeout(TimeoutError):
    """The window had no room for a request within the time its caller could wait."""


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch; comparable across the processes that share a budget."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def seconds_until_room(
    window: Iterable[tuple[float, int]], tokens: int, limit: int, now: float
) -> float:
    """0 when `tokens` fit in the window now, else the seconds until enough of it has expired.

    `window` holds (reserved at, tokens) pairs from the last WINDOW_SECONDS. A request of the
    whole limit or more needs the window empty, so it cannot wait forever.
    """
    entries = sorted((at, used) for at, used in window if used > 0)
    total = sum(used for _, used in entries)
    if total == 0 or total + tokens <= limit:
        return 0.0
    allowed = max(limit - tokens, 0)
    for at, used in entries:
        total -= used
        if total <= allowed:
            return max(at + WINDOW_SECONDS - now, _MIN_WAIT_SECONDS)
    raise AssertionError("unreachable: the window empties after its last entry")


def estimate_tokens(
    arguments: Mapping[str, Any], completion_allowance: int = DEFAULT_COMPLETION_ALLOWANCE
) -> int:
    """What a chat-completion request may cost before it is sent: prompt characters / 4 (tool
    definitions and response formats count, providers bill them as prompt) plus its max_tokens,
    or the allowance when it sets none."""
    chars = sum(_message_chars(m) for m in arguments.get("messages") or ())
    for key in ("tools", "response_format"):
        if arguments.get(key):
            chars += len(json.dumps(arguments[key]))
    completion = (
        arguments.get("max_completion_tokens")
        or arguments.get("max_tokens")
        or completion_allowance
    )
    return math.ceil(chars / CHARS_PER_TOKEN) + int(completion)


@dataclass
class Charge:
    """What a call settles with: 0 unless the caller learns the real usage."""

    tokens: int = 0


@asynccontextmanager
async def spending(
    budget: TokenBudget, model: str, tokens: int, *, wait_limit: float | None = None
) -> AsyncIterator[Charge]:
    """Reserve `tokens`, run the body, then settle with the body's `Charge` (0 if it raised).

    Raises BudgetWaitTimeout when no room came within `wait_limit` seconds.
    """
    try:
        async with asyncio.timeout(wait_limit):
            reservation = await budget.reserve(model, tokens)
    except TimeoutError:
        raise BudgetWaitTimeout(
            f"no room for {tokens} tokens of {model} within {wait_limit:.0f} s"
        ) from None
    charge = Charge()
    try:
        yield charge
    finally:
        try:
            await budget.settle(reservation, charge.tokens)
        except Exception:
            # The call itself is done (and paid for); failing it now would only repeat it. The
            # estimate stays in the window until it expires.
            log.warning("could not settle a token reservation", model=model, exc_info=True)


class _SlidingWindowBudget(ABC):
    def __init__(
        self,
        tokens_per_minute: int,
        *,
        clock: Clock | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        if tokens_per_minute < 1:
            raise ValueError("tokens_per_minute must be at least 1")
        self.tokens_per_minute = tokens_per_minute
        self.clock: Clock = clock or SystemClock()
        self.poll_seconds = poll_seconds

    async def reserve(self, model: str, tokens: int) -> Reservation:
        if tokens < 0:
            raise ValueError("a reservation cannot be negative")
        while True:
            outcome = await self._try_reserve(model, tokens)
            if isinstance(outcome, Reservation):
                return outcome
            await self.clock.sleep(min(outcome, self.poll_seconds))

    @abstractmethod
    async def _try_reserve(self, model: str, tokens: int) -> Reservation | float:
        """The reservation, or the seconds until there may be room for it."""


@dataclass
class _Entry:
    at: float
    tokens: int


class InMemoryTokenBudget(_SlidingWindowBudget):
    """A budget for the calls of one process."""

    def __init__(
        self,
        tokens_per_minute: int,
        *,
        clock: Clock | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        super().__init__(tokens_per_minute, clock=clock, poll_seconds=poll_seconds)
        self._windows: dict[str, dict[int, _Entry]] = {}
        self._keys = itertools.count(1)

    async def _try_reserve(self, model: str, tokens: int) -> Reservation | float:
        now = self.clock.now()
        window = self._windows.setdefault(model, {})
        for key in [key for key, entry in window.items() if entry.at <= now - WINDOW_SECONDS]:
            del window[key]
        wait = seconds_until_room(
            ((e.at, e.tokens) for e in window.values()), tokens, self.tokens_per_minute, now
        )
        if wait > 0:
            return wait
        key = next(self._keys)
        window[key] = _Entry(at=now, tokens=tokens)
        return Reservation(model=model, tokens=tokens, at=now, key=key)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        entry = self._windows.get(reservation.model, {}).get(reservation.key)
        if entry is not None:
            entry.tokens = max(actual_tokens, 0)

    async def close(self) -> None:
        self._windows.clear()


# AUTOINCREMENT: a key is never reused, so a late settle cannot touch another call's row.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS token_window (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        at REAL NOT NULL,
        tokens INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS token_window_by_model ON token_window (model, at)",
    "CREATE INDEX IF NOT EXISTS token_window_by_age ON token_window (at)",
)


class SqliteTokenBudget(_SlidingWindowBudget):
    """A budget in one SQLite file, shared by every process that opens the same file.

    Each attempt is one write transaction (BEGIN IMMEDIATE): the check and the insert cannot
    interleave with another process's. sqlite3 blocks, so calls run in a thread, one at a time.
    """

    def __init__(
        self,
        path: str | Path,
        tokens_per_minute: int,
        *,
        clock: Clock | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        super().__init__(tokens_per_minute, clock=clock, poll_seconds=poll_seconds)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._cleanups: set[asyncio.Task[None]] = set()

    async def _try_reserve(self, model: str, tokens: int) -> Reservation | float:
        limit, clock = self.tokens_per_minute, self.clock
        attempt = asyncio.ensure_future(
            self._run(lambda conn: _reserve_row(conn, model, tokens, clock.now, limit))
        )
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # The thread commits whatever it was doing; a row it added would hold tokens that no
            # call will settle, so give them back once it is done.
            cleanup = asyncio.get_running_loop().create_task(self._give_back(attempt))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            raise

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        tokens = max(actual_tokens, 0)
        await self._run(lambda conn: _settle_row(conn, reservation, tokens))

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await asyncio.to_thread(self._close)

    async def _give_back(self, attempt: asyncio.Future[Reservation | float]) -> None:
        try:
            outcome = await attempt
            if isinstance(outcome, Reservation):
                await self.settle(outcome, 0)
        except Exception:
            log.warning("could not give back a cancelled reservation", exc_info=True)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"token budget {self.path} is closed")
            if self._conn is None:
                self._conn = _open(self.path)
            return work(self._conn)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _open(path: Path) -> sqlite3.Connection:
    # A power cut may lose the last reservations, which only matters for the next minute.
    return open_shared(path, _create_schema)


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)


def _reserve_row(
    conn: sqlite3.Connection, model: str, tokens: int, clock: Callable[[], float], limit: int
) -> Reservation | float:
    with transaction(conn, "IMMEDIATE"):
        # Read inside the lock: a time read before waiting for it would date the row too early,
        # and it would leave the window before a full minute had passed.
        now = clock()
        conn.execute("DELETE FROM token_window WHERE at <= ?", (now - WINDOW_SECONDS,))
        window = conn.execute(
            "SELECT at, tokens FROM token_window WHERE model = ?", (model,)
        ).fetchall()
        wait = seconds_until_room(window, tokens, limit, now)
        if wait > 0:
            return wait
        cursor = conn.execute(
            "INSERT INTO token_window (model, at, tokens) VALUES (?, ?, ?)", (model, now, tokens)
        )
        key = cursor.lastrowid
    if key is None:
        raise RuntimeError("SQLite did not report the reservation's row id")
    return Reservation(model=model, tokens=tokens, at=now, key=key)


def _settle_row(conn: sqlite3.Connection, reservation: Reservation, tokens: int) -> None:
    # A row already gone has left the window: nothing is left to correct.
    with transaction(conn, "IMMEDIATE"):
        conn.execute(
            "UPDATE token_window SET tokens = ? WHERE id = ? AND model = ?",
            (tokens, reservation.key, reservation.model),
        )


def _message_chars(message: Any) -> int:
    if not isinstance(message, Mapping):
        return 0
    content = message.get("content")
    chars = 0
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(
            len(part["text"])
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            chars += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return chars


# --- From the worker's settings ------------------------------------------------------------------


def budget_path(settings: Settings) -> str:
    """Where the shared budget lives: TASKPOOL_TOKEN_BUDGET_DB, else beside a SQLite task store."""
    if settings.token_budget_db:
        return settings.token_budget_db
    store = settings.store_url
    if is_postgres(store):
        return str(Path("data") / BUDGET_FILE_NAME)
    return str(sqlite_path(store).with_name(BUDGET_FILE_NAME))


def open_token_budget(settings: Settings) -> TokenBudget | None:
    """The worker's budget when TASKPOOL_TPM is set: a SQLite file, or memory for ":memory:"."""
    if settings.tokens_per_minute is None:
        return None
    path = budget_path(settings)
    if path == MEMORY:
        return InMemoryTokenBudget(settings.tokens_per_minute)
    if settings.token_budget_db is None and settings.store_url.startswith(
        ("postgres://", "postgresql://")
    ):
        log.warning(
            "the token budget is a local SQLite file: it holds only across workers on this "
            "machine; set TASKPOOL_TOKEN_BUDGET_DB to a file they all share",
            path=path,
        )
    return SqliteTokenBudget(path, settings.tokens_per_minute)
