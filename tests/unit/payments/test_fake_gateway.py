"""The card simulator: test cards, one charge per key, faults on demand."""

from __future__ import annotations

import asyncio
import time

import pytest

from shop.payments import FakeGateway, GatewayError, GatewayTimeout


@pytest.mark.parametrize(
    ("card", "status", "code"),
    [
        ("4242424242424242", "succeeded", None),
        ("4000000000000002", "declined", "card_declined"),
        ("4000000000009995", "declined", "insufficient_funds"),
        ("5555555555554444", "declined", "card_declined"),
    ],
)
async def test_test_cards(card: str, status: str, code: str | None) -> None:
    gateway = FakeGateway()
    result = await gateway.charge(amount=500, card_number=card, idempotency_key="k")
    assert (result.status, result.decline_code, result.amount) == (status, code, 500)
    assert gateway.total_charged == (500 if status == "succeeded" else 0)


async def test_a_key_charges_once_whatever_is_sent_again() -> None:
    gateway = FakeGateway()
    first = await gateway.charge(amount=500, card_number="4242424242424242", idempotency_key="k")
    again = await gateway.charge(amount=900, card_number="4242424242424242", idempotency_key="k")
    assert again == first
    assert gateway.charge_count("k") == 1 and gateway.total_charged == 500


async def test_concurrent_charges_with_one_key_charge_once() -> None:
    gateway = FakeGateway(latency_ms=5)
    results = await asyncio.gather(
        *(
            gateway.charge(amount=100, card_number="4242424242424242", idempotency_key="same")
            for _ in range(20)
        )
    )
    assert len({r.charge_id for r in results}) == 1
    assert gateway.charge_count("same") == 1


async def test_transient_failure_records_nothing() -> None:
    gateway = FakeGateway()
    with pytest.raises(GatewayError):
        await gateway.charge(amount=100, card_number="4000000000000119", idempotency_key="t")
    assert await gateway.lookup("t") is None


async def test_timeout_after_the_charge_is_found_by_lookup() -> None:
    gateway = FakeGateway()
    gateway.fail_next(1, after_charge=True)
    with pytest.raises(GatewayTimeout):
        await gateway.charge(amount=100, card_number="4242424242424242", idempotency_key="x")
    found = await gateway.lookup("x")
    assert found is not None and found.status == "succeeded"
    assert gateway.charge_count("x") == 1


async def test_timeout_before_the_charge_leaves_no_trace() -> None:
    gateway = FakeGateway()
    gateway.fail_next(1)
    with pytest.raises(GatewayTimeout):
        await gateway.charge(amount=100, card_number="4242424242424242", idempotency_key="y")
    assert await gateway.lookup("y") is None


async def test_latency_is_honoured() -> None:
    gateway = FakeGateway(latency_ms=50)
    started = time.monotonic()
    await gateway.charge(amount=1, card_number="4242424242424242", idempotency_key="l")
    assert time.monotonic() - started >= 0.05
