"""The card gateway's metrics: every call counted by outcome and timed, the answer unchanged."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from shop.payments import FakeGateway, GatewayError, GatewayMetrics, GatewayTimeout, MeteredGateway


def calls(metrics: GatewayMetrics, operation: str, outcome: str) -> float:
    return float(metrics.calls.labels(operation, outcome)._value.get())


async def test_each_call_is_counted_by_its_outcome() -> None:
    fake = FakeGateway()
    metrics = GatewayMetrics.create(CollectorRegistry())
    gateway = MeteredGateway(fake, metrics)
    paid = await gateway.charge(amount=100, card_number="4242424242424242", idempotency_key="a")
    assert paid.status == "succeeded"
    await gateway.charge(amount=100, card_number="4000000000000002", idempotency_key="b")
    with pytest.raises(GatewayError):
        await gateway.charge(amount=100, card_number="4000000000000119", idempotency_key="c")
    fake.fail_next()
    with pytest.raises(GatewayTimeout):
        await gateway.charge(amount=100, card_number="4242424242424242", idempotency_key="d")
    assert await gateway.lookup("a") == paid
    assert await gateway.lookup("nothing") is None

    outcomes = ["succeeded", "declined", "error", "timeout"]
    assert [calls(metrics, "charge", outcome) for outcome in outcomes] == [1, 1, 1, 1]
    assert [calls(metrics, "lookup", outcome) for outcome in ["found", "not_found"]] == [1, 1]
    assert metrics.latency.labels("charge")._sum.get() > 0
    assert gateway.charge_lease == fake.charge_lease
    await gateway.aclose()  # the simulator has nothing to close
