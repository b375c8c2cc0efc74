"""SQLite files that several processes share (the task store, the token budget): how they are
opened and how a transaction runs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Writers in other processes wait their turn this long instead of failing with "database is
# locked".
BUSY_TIMEOUT_SECONDS = 30.0


def open_shared(path: Path, prepare: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """Open (and create) `path` in WAL mode, then run `prepare` (the schema) in a write
    transaction. The connection is closed again if that fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None leaves transactions to the explicit BEGIN/COMMIT of `transaction`
    # instead of sqlite3's guesses.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        # WAL: readers never block the writer. In WAL mode NORMAL cannot corrupt the file and
        # loses nothing when a process dies; only a power cut may drop the last commits, which
        # both users of this module can afford (the workflow is the source of truth).
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        with transaction(conn, "IMMEDIATE"):
            prepare(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Switching a new file to WAL takes an exclusive lock that SQLite's busy timeout does not
    wait for, so processes opening a fresh file together (workers starting at once) retry."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "DEFERRED") -> Iterator[None]:
    """BEGIN `mode` ... COMMIT, rolled back on any error. Writers use IMMEDIATE: it takes the
    write lock at once, so a transaction never upgrades a read lock midway, the one case the busy
    timeout cannot resolve."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
