"""The log-in throttle's keys and limits, on a fake clock and an in-memory database: which
failures block whom, when a block ends, what a success forgets, what is purged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic, create_engine
from shop.db.models import LoginFailure, table
from shop.services.throttle import (
    LoginBlocked,
    LoginLimits,
    LoginThrottle,
    address_key,
    block_end,
)

LIMITS = LoginLimits(per_email_and_address=3, per_email=10, per_address=20, window=60)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    engine = create_engine("sqlite+aiosqlite://")
    async with engine.begin() as connection:
        await connection.run_sync(table(LoginFailure).create)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(engine: AsyncEngine, clock: Clock) -> LoginThrottle:
    return LoginThrottle(engine, LIMITS, clock=clock)


async def retry_after(throttle: LoginThrottle, email: str, address: str) -> int | None:
    """The 429's Retry-After for this attempt; None if it may go ahead."""
    try:
        async with atomic(throttle.engine) as uow:
            await throttle.check(uow.db, email, address)
    except LoginBlocked as blocked:
        return blocked.retry_after
    return None


async def fail(throttle: LoginThrottle, email: str, address: str, times: int = 1) -> None:
    for _ in range(times):
        await throttle.failed(email, address)


async def rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(table(LoginFailure)))
    return int(count or 0)


async def test_an_email_from_one_address_blocks_that_address_only(
    throttle: LoginThrottle,
) -> None:
    await fail(throttle, "ada@example.com", "10.0.0.1", times=2)
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") is None
    await fail(throttle, "ada@example.com", "10.0.0.1")
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 60
    # the owner, elsewhere; and the other accounts, from that address
    assert await retry_after(throttle, "ada@example.com", "10.0.0.2") is None
    assert await retry_after(throttle, "bob@example.com", "10.0.0.1") is None


async def test_many_emails_from_one_address_block_that_address_and_no_other(
    throttle: LoginThrottle,
) -> None:
    for n in range(19):
        await fail(throttle, f"user{n}@example.com", "10.0.0.1")
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") is None
    await fail(throttle, "user19@example.com", "10.0.0.1")
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 60
    assert await retry_after(throttle, "ada@example.com", "10.0.0.2") is None
    assert await retry_after(throttle, "user0@example.com", "10.0.0.2") is None


async def test_one_email_from_many_addresses_blocks_that_email_everywhere(
    throttle: LoginThrottle,
) -> None:
    for n in range(9):
        await fail(throttle, "ada@example.com", f"10.0.1.{n}")
    assert await retry_after(throttle, "ada@example.com", "10.0.2.1") is None
    await fail(throttle, "ada@example.com", "10.0.1.9")
    assert await retry_after(throttle, "ada@example.com", "10.0.2.1") == 60
    assert await retry_after(throttle, "bob@example.com", "10.0.1.1") is None


async def test_a_block_ends_when_its_failures_leave_the_window(
    throttle: LoginThrottle, clock: Clock
) -> None:
    for _ in range(3):
        await fail(throttle, "ada@example.com", "10.0.0.1")
        clock.now += 10  # failures at 0, 10 and 20 s
    clock.now = 1_000_000.0 + 30
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 30
    clock.now = 1_000_000.0 + 59.5
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 1  # rounded up
    clock.now = 1_000_000.0 + 60
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") is None
    # One more failure blocks again: the two later ones still count.
    await fail(throttle, "ada@example.com", "10.0.0.1")
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 10


async def test_the_latest_ending_block_is_the_answer(throttle: LoginThrottle, clock: Clock) -> None:
    for n in range(10):  # the e-mail's count, full at 0 s
        await fail(throttle, "ada@example.com", f"10.0.1.{n}")
    clock.now += 40
    await fail(throttle, "ada@example.com", "10.0.0.1", times=3)  # the pair's, full at 40 s
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 60
    clock.now += 30  # the e-mail's count has run out, the pair's has not
    assert await retry_after(throttle, "ada@example.com", "10.0.2.1") is None
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") == 30


async def test_a_success_forgets_its_emails_failures_from_its_address_only(
    throttle: LoginThrottle,
) -> None:
    await fail(throttle, "ada@example.com", "10.0.0.1", times=2)
    await fail(throttle, "ada@example.com", "10.0.0.2", times=2)
    async with atomic(throttle.engine) as uow:
        await throttle.succeeded(uow.db, "ada@example.com", "10.0.0.1")
    await fail(throttle, "ada@example.com", "10.0.0.1", times=2)
    assert await retry_after(throttle, "ada@example.com", "10.0.0.1") is None
    await fail(throttle, "ada@example.com", "10.0.0.2")
    assert await retry_after(throttle, "ada@example.com", "10.0.0.2") == 60


async def test_a_failure_is_written_after_its_transaction_rolled_back(
    throttle: LoginThrottle, engine: AsyncEngine
) -> None:
    with pytest.raises(RuntimeError):
        async with atomic(engine) as uow:
            throttle.count_failure(uow, "ada@example.com", "10.0.0.1")
            raise RuntimeError("the 401")
    assert await rows(engine) == 1
    async with atomic(engine) as uow:  # or committed: it counts all the same, once
        throttle.count_failure(uow, "ada@example.com", "10.0.0.1")
    assert await rows(engine) == 2


async def test_writing_a_failure_deletes_expired_ones(
    throttle: LoginThrottle, clock: Clock, engine: AsyncEngine
) -> None:
    for n in range(5):
        await fail(throttle, f"user{n}@example.com", "10.0.0.1")
    clock.now += 61
    await fail(throttle, "ada@example.com", "10.0.0.2")
    assert await rows(engine) == 1


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", "unknown"),
        ("x" * 100, "x" * 64),
    ],
)
def test_the_address_counted(host: str, key: str) -> None:
    assert address_key(host) == key


async def test_ipv6_addresses_of_one_64_share_a_count(throttle: LoginThrottle) -> None:
    for n in range(3):
        await fail(throttle, "ada@example.com", f"2001:db8::{n + 1}")
    assert await retry_after(throttle, "ada@example.com", "2001:db8::ffff") == 60
    assert await retry_after(throttle, "ada@example.com", "2001:db8:0:1::1") is None


def test_block_end() -> None:
    assert block_end([30.0, 20.0], 3, 60) is None
    assert block_end([30.0, 20.0, 10.0], 3, 60) == 70.0
    assert block_end([40.0, 30.0, 20.0, 10.0], 3, 60) == 80.0  # past the limit: its newest
