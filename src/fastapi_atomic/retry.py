"""Which database errors are worth re-running a whole request for, how long to wait, and
which say that the database is not there at all.

PostgreSQL's advice for serialization failures and deadlocks is to retry the complete
transaction, including the logic that chose its statements; SQLite's "database is locked"
is the same situation for a single-writer database once its busy timeout ran out. CockroachDB
runs every transaction serializable and asks for the same retry: SQLSTATE 40001, with a
message that begins "restart transaction" (kept for a driver that gives no SQLSTATE). Its
40003, "statement completion unknown", is not retried: like a connection lost during COMMIT,
the transaction may have committed. A database
that refuses connections, is starting up or shutting down, answers nothing worth re-running
the request for at once: the client is told to come back (503).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from .exceptions import ConcurrentChange

SERIALIZATION_FAILURE = "serialization_failure"
DEADLOCK = "deadlock"
DATABASE_LOCKED = "database_locked"
#: the connection broke before COMMIT: nothing of the transaction can have persisted
CONNECTION_LOST = "connection_lost"
#: the application found that something it read changed (:class:`.ConcurrentChange`)
CONCURRENT_CHANGE = "concurrent_change"

_SQLSTATES = {"40001": SERIALIZATION_FAILURE, "40P01": DEADLOCK}
_SQLITE_LOCKED = ("database is locked", "database table is locked")
#: how CockroachDB's retry errors begin (its documentation's "transaction retry error reference")
_COCKROACH_RESTART = "restart transaction"


def retry_reason(exc: BaseException) -> str | None:
    """Name the retryable failure behind ``exc`` (following its cause chain), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = _reason_of(current)
        if reason is not None:
            return reason
        current = current.__cause__ or current.__context__
    return None


def _reason_of(exc: BaseException) -> str | None:
    if isinstance(exc, ConcurrentChange):
        return CONCURRENT_CHANGE
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return CONNECTION_LOST
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and code in _SQLSTATES:
        return _SQLSTATES[code]
    if code is None and str(orig).startswith(_COCKROACH_RESTART):
        return SERIALIZATION_FAILURE
    if type(orig).__name__ == "OperationalError" and any(
        text in str(orig) for text in _SQLITE_LOCKED
    ):
        return DATABASE_LOCKED
    return None


#: connection exceptions (class 08) and the server going away or not ready yet (57P01-57P03)
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
_SQLITE_UNAVAILABLE = ("unable to open database file", "disk I/O error")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database cannot be reached or used now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        orig = current.orig if isinstance(current, DBAPIError) else current
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(code, str) and code.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        if isinstance(orig, OSError):  # refused, reset, unreachable: no server to talk to
            return True
        if type(orig).__name__ == "OperationalError" and any(
            text in str(orig) for text in _SQLITE_UNAVAILABLE
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class Backoff:
    """Bounded retries with "full jitter" exponential backoff (AWS architecture blog)."""

    attempts: int = 5
    base: float = 0.01
    cap: float = 0.5

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        return random.uniform(0, min(self.cap, self.base * 2**retry_number))
