"""Which failures re-run a request, and how long the backoff waits."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError, OperationalError

from fastapi_atomic import Backoff, ConcurrentChange, retry_reason


class FakePgError(Exception):
    def __init__(self, sqlstate: str, message: str = "") -> None:
        super().__init__(message or sqlstate)
        self.sqlstate = sqlstate


#: as CockroachDB words its retry errors (its "transaction retry error reference")
COCKROACH_RETRY = (
    "restart transaction: TransactionRetryWithProtoRefreshError: "
    "TransactionRetryError: retry txn (RETRY_SERIALIZABLE - failed preemptive refresh)"
)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OperationalError("x", {}, FakePgError("40001")), "serialization_failure"),
        (OperationalError("x", {}, FakePgError("40P01")), "deadlock"),
        (
            OperationalError("x", {}, sqlite3.OperationalError("database is locked")),
            "database_locked",
        ),
        (ConcurrentChange("a price changed"), "concurrent_change"),
        # CockroachDB: its 40001, and the same error from a driver that gives no SQLSTATE
        (OperationalError("x", {}, FakePgError("40001", COCKROACH_RETRY)), "serialization_failure"),
        (OperationalError("x", {}, Exception(COCKROACH_RETRY)), "serialization_failure"),
        # CockroachDB's "statement completion unknown": it may have committed, never re-run
        (OperationalError("x", {}, FakePgError("40003", "result is ambiguous")), None),
        (IntegrityError("x", {}, FakePgError("23505")), None),
        (OperationalError("x", {}, sqlite3.OperationalError("no such table: t")), None),
        (RuntimeError("boom"), None),
    ],
)
def test_retry_reason(exc: BaseException, reason: str | None) -> None:
    assert retry_reason(exc) == reason


def test_retry_reason_follows_the_cause_chain() -> None:
    try:
        try:
            raise OperationalError("x", {}, FakePgError("40001"))
        except OperationalError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert retry_reason(outer) == "serialization_failure"


@given(st.integers(min_value=1, max_value=60))
def test_backoff_is_bounded(retry_number: int) -> None:
    backoff = Backoff(attempts=5, base=0.01, cap=0.5)
    assert 0 <= backoff.delay(retry_number) <= 0.5
