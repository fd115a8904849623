"""The shop under load while the network to PostgreSQL fails: every answer documented or a
JSON 503 with Retry-After, nothing half-done, and the service recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fault_proxy import FaultProxy
from shop_faults import (
    ShopWorld,
    build_world,
    direct_engine,
    recovered,
    recovery_problems,
    report,
    response_problems,
    run_load,
    send,
    settle_and_check,
    state_problems,
    through,
)
from shop_testing import OK_CARD, make_settings, running
from sqlalchemy import text

from fastapi_atomic.engine import create_engine

pytestmark = pytest.mark.postgres

#: what the shop's engine waits for a free connection (create_engine's default)
POOL_TIMEOUT = float(inspect.signature(create_engine).parameters["pool_timeout"].default)

#: a COMMIT cut as it goes out: before the server got it (nothing committed), or after (it
#: landed, and its answer is lost: the outcome is unknown to the shop)
FORWARDING = pytest.mark.parametrize(
    "forward", [False, True], ids=["before-forwarding", "after-forwarding"]
)


@contextlib.asynccontextmanager
async def shop_through(
    database_url: str, proxy: FaultProxy, shoppers: int
) -> AsyncIterator[ShopWorld]:
    """The shop, its engine pointed at the proxy, with ``shoppers`` customers."""
    async with running(make_settings(through(database_url, proxy))) as app:
        built = await build_world(app, shoppers=shoppers)
        yield built
        await built.aclose()


@pytest.fixture
async def world(own_database: str, postgres_proxy: FaultProxy) -> AsyncIterator[ShopWorld]:
    """Five customers (each costs a password hash or two), for the load scenarios."""
    async with shop_through(own_database, postgres_proxy, 5) as built:
        yield built


@pytest.fixture
async def small_world(own_database: str, postgres_proxy: FaultProxy) -> AsyncIterator[ShopWorld]:
    """Two customers, for the tests of one request."""
    async with shop_through(own_database, postgres_proxy, 2) as built:
        yield built


async def scenario(
    name: str,
    world: ShopWorld,
    proxy: FaultProxy,
    database_url: str,
    fault: Callable[[], Awaitable[None]],
) -> None:
    """Load while ``fault()`` plays out, then: answers, recovery, and the state, twice (as the
    fault left it, and once reconcile settled the card payments left pending)."""
    outcomes = await run_load(world, fault)
    proxy.pass_through()
    after = await recovered(world)
    notes: list[str] = []
    problems = response_problems(outcomes) + recovery_problems(after)
    async with direct_engine(database_url) as engine:
        problems += await state_problems(engine, world, [*outcomes, *after], settled=False)
        problems += await settle_and_check(engine, world, [*outcomes, *after], notes)
    report(name, proxy.faults, outcomes, world.app.errors, notes)
    assert not problems, "\n".join(dict.fromkeys(problems))


async def test_refused(world: ShopWorld, postgres_proxy: FaultProxy, own_database: str) -> None:
    """The database goes away for 2 s: open connections cut (but for one that just sent its
    COMMIT: see test_cut_mid_transaction), new ones refused."""

    async def fault() -> None:
        await asyncio.sleep(0.5)
        postgres_proxy.refuse()
        postgres_proxy.cut_all(spare=b"COMMIT")
        await asyncio.sleep(2.0)
        postgres_proxy.pass_through()
        await asyncio.sleep(0.5)

    await scenario("refused", world, postgres_proxy, own_database, fault)


async def test_cut_mid_transaction(
    world: ShopWorld, postgres_proxy: FaultProxy, own_database: str
) -> None:
    """Every open connection cut, six times, 0.3 s apart, with 30 requests in flight: wherever
    each is in its transaction, but for one that just sent its COMMIT (its outcome unknown:
    test_cut_mid_commit's subject)."""

    async def fault() -> None:
        for _ in range(6):
            await asyncio.sleep(0.3)
            postgres_proxy.cut_all(spare=b"COMMIT")
        await asyncio.sleep(0.3)

    await scenario("cut", world, postgres_proxy, own_database, fault)


@FORWARDING
async def test_cut_mid_commit(
    world: ShopWorld, postgres_proxy: FaultProxy, own_database: str, forward: bool
) -> None:
    """Twenty COMMITs (of requests, phases, key claims) cut as they go out: before the server
    got them (nothing committed), or after (committed, the client never hears of it)."""

    async def fault() -> None:
        await asyncio.sleep(0.3)
        postgres_proxy.cut_on(b"COMMIT", forward=forward, times=20)
        kind = "cut_after_forwarding" if forward else "cut_before_forwarding"
        await postgres_proxy.wait_for(kind, 20)
        await asyncio.sleep(0.3)

    await scenario(f"commit-{forward}", world, postgres_proxy, own_database, fault)


async def test_slow_network(
    world: ShopWorld, postgres_proxy: FaultProxy, own_database: str
) -> None:
    """Each chunk, either way, held 50 to 200 ms for 4 s: slow, but every request answered."""

    async def fault() -> None:
        postgres_proxy.delay((0.05, 0.2))
        await asyncio.sleep(4)
        postgres_proxy.pass_through()

    await scenario("slow", world, postgres_proxy, own_database, fault)


@pytest.mark.parametrize("end", ["resume", "cut"])
async def test_hang(
    world: ShopWorld, postgres_proxy: FaultProxy, own_database: str, end: str
) -> None:
    """Nothing flows for longer than the pool's timeout (10 s): requests that wait for a
    connection get a 503 ("busy"), those on a hung connection wait. Then the network heals
    (what was held flows) or the hung connections are cut (a server that was gone; but for one
    whose COMMIT went out before the hang: see test_cut_mid_transaction)."""

    async def fault() -> None:
        await asyncio.sleep(0.5)
        postgres_proxy.hang()
        await asyncio.sleep(POOL_TIMEOUT + 1.5)
        if end == "cut":
            postgres_proxy.cut_all(spare=b"COMMIT")
        postgres_proxy.pass_through()
        await asyncio.sleep(0.5)

    await scenario(f"hang-{end}", world, postgres_proxy, own_database, fault)


# --- one request, one cut COMMIT: what the load scenarios above hit by chance ---------------


async def count_transfers(database_url: str, sent: dict[str, int]) -> int:
    async with direct_engine(database_url) as engine, engine.connect() as connection:
        found = await connection.scalar(
            text(
                "SELECT count(*) FROM transfers WHERE from_account_id = :from_account_id "
                "AND to_account_id = :to_account_id AND amount = :amount"
            ),
            sent,
        )
    return int(found or 0)


@FORWARDING
async def test_a_transfer_whose_commit_is_cut_runs_at_most_once(
    small_world: ShopWorld, postgres_proxy: FaultProxy, own_database: str, forward: bool
) -> None:
    """The first COMMIT of a transfer without a key is the request's own; cut during it, the
    client may be told the outcome is unknown (503), or the truth, but the transfer must be
    in the database once if the COMMIT got there, and not at all if it did not."""
    world = small_world
    sender, receiver = world.shoppers[:2]
    sent = {"from_account_id": sender.account_id, "to_account_id": receiver.account_id}
    sent["amount"] = 4321
    postgres_proxy.cut_on(b"COMMIT", forward=forward, times=1)
    outcome = await send("transfer", sender, lambda: sender.post("/api/transfers", sent), sent=sent)
    assert postgres_proxy.faults["cut_after_forwarding" if forward else "cut_before_forwarding"]
    found = await count_transfers(own_database, sent)
    report(f"one-transfer-commit-{forward}", postgres_proxy.faults, [outcome], world.app.errors)
    assert response_problems([outcome]) == []
    if outcome.status == 201:
        assert found == 1, f"201, and the transfer is in the database {found} times"
    else:
        assert outcome.status == 503
        assert "unknown" in (outcome.detail or ""), outcome.detail
        assert found == (1 if forward else 0)


@pytest.mark.parametrize(
    ("kind", "keyed"),
    [
        pytest.param("card_order", True, id="card_order-with-key"),
        pytest.param(
            "card_order",
            False,
            id="card_order-without-key",
        ),
        pytest.param("deposit", True, id="deposit-with-key"),
        pytest.param(
            "deposit",
            False,
            id="deposit-without-key",
        ),
    ],
)
async def test_a_card_payment_whose_reservation_commit_is_cut(
    small_world: ShopWorld, postgres_proxy: FaultProxy, own_database: str, kind: str, keyed: bool
) -> None:
    """A card payment's reservation phase COMMIT, cut after the server got it: the phase is
    retried on a new connection, and must find what it reserved, not reserve it twice (and
    fail); the payment ends charged once and settled. (A deposit first reads the account in the
    request's transaction, which is committed before the phase: its second COMMIT is the
    reservation's.)"""
    world = small_world
    shopper = world.shoppers[0]
    product_id = next(iter(world.products))
    headers = {"Idempotency-Key": f"reserve-{kind}"} if keyed else {}
    body: dict[str, Any]
    if kind == "card_order":
        path, body = (
            "/api/orders",
            {
                "items": [{"product_id": product_id, "quantity": 1}],
                "payment": {"method": "card", "card_number": OK_CARD},
            },
        )
    else:
        path, body = (
            f"/api/accounts/{shopper.account_id}/deposits",
            {
                "amount": 777,
                "card_number": OK_CARD,
            },
        )
    postgres_proxy.cut_on(b"COMMIT", forward=True, times=1, skip=0 if kind == "card_order" else 1)
    outcome = await send(kind, shopper, lambda: shopper.post(path, body, **headers), sent=body)
    assert postgres_proxy.faults["cut_after_forwarding"] == 1
    notes: list[str] = []
    async with direct_engine(own_database) as engine:
        problems = response_problems([outcome])
        problems += await settle_and_check(engine, world, [outcome], notes)
    report(f"reserve-commit-{kind}-{keyed}", postgres_proxy.faults, [outcome], world.app.errors)
    assert not problems, "\n".join(dict.fromkeys(problems))
    assert outcome.status == 201
