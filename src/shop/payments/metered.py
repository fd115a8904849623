"""Prometheus metrics of the card gateway, seen from the shop: calls by outcome, and latency.

A gateway that times out or fails leaves payments pending (``shop payments reconcile`` settles
them) and answers buyers with 503s: alert on ``outcome="timeout"`` and ``outcome="error"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Self

from prometheus_client import CollectorRegistry, Counter, Histogram

from fastapi_atomic import MetricSet

from .gateway import ChargeResult, GatewayTimeout, PaymentGateway

#: buckets around a card gateway's usual answer (tens to hundreds of milliseconds) and its
#: time-out (seconds)
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class GatewayMetrics(MetricSet):
    calls: Counter
    latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        return cls(
            calls=Counter(
                "shop_gateway_calls",
                "Calls to the card gateway by operation (charge, lookup) and outcome.",
                ["operation", "outcome"],
                registry=registry,
            ),
            latency=Histogram(
                "shop_gateway_call_duration_seconds",
                "Time the card gateway took to answer (or to fail), by operation.",
                ["operation"],
                buckets=_BUCKETS,
                registry=registry,
            ),
        )

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        self.child(self.calls, operation, outcome).inc()
        self.child(self.latency, operation).observe(seconds)


class MeteredGateway:
    """A :class:`PaymentGateway` that counts and times every call of the one it wraps.

    Outcomes: a charge ``succeeded`` or was ``declined``; a look-up ``found`` or ``not_found``
    the key; either can end in ``timeout`` (the gateway may have acted) or ``error``.
    """

    def __init__(self, gateway: PaymentGateway, metrics: GatewayMetrics | None = None) -> None:
        self.gateway = gateway
        self.metrics = metrics or GatewayMetrics.default()

    @property
    def charge_lease(self) -> timedelta:
        return self.gateway.charge_lease

    async def charge(self, *, amount: int, card_number: str, idempotency_key: str) -> ChargeResult:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self.gateway.charge(
                amount=amount, card_number=card_number, idempotency_key=idempotency_key
            )
            outcome = result.status
            return result
        except GatewayTimeout:
            outcome = "timeout"
            raise
        finally:
            self.metrics.record("charge", outcome, time.perf_counter() - started)

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self.gateway.lookup(idempotency_key)
            outcome = "not_found" if result is None else "found"
            return result
        except GatewayTimeout:
            outcome = "timeout"
            raise
        finally:
            self.metrics.record("lookup", outcome, time.perf_counter() - started)

    async def aclose(self) -> None:
        """Close the wrapped gateway's connections, if it has any."""
        close = getattr(self.gateway, "aclose", None)
        if close is not None:
            await close()
