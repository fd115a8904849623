"""The card gateway simulator: in-process, or over HTTP as its own process.

Test cards behave like the well-known ones: 4242424242424242 charges, 4000000000000002 is
declined, 4000000000009995 is declined for insufficient funds, 4000000000000119 fails with a
transient error (nothing recorded, so a retry with the same key meets the same failure). Every
key is remembered: a repeated key, even with another amount or card, returns the first result
and never charges again.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field, StringConstraints

from .gateway import ChargeResult, GatewayError, GatewayTimeout

DECLINES = {"4000000000000002": "card_declined", "4000000000009995": "insufficient_funds"}
SUCCEEDS = {"4242424242424242"}
TRANSIENT = {"4000000000000119"}


@dataclass
class _Fault:
    remaining: int
    after_charge: bool


@dataclass
class FakeGateway:
    latency_ms: int = 0
    results: dict[str, ChargeResult] = field(default_factory=dict)
    #: every real charge, in order: (key, amount)
    charges: list[tuple[str, int]] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @property
    def charge_lease(self) -> timedelta:
        return timedelta(seconds=2 * self.latency_ms / 1000 + 1)

    def fail_next(self, times: int = 1, *, after_charge: bool = False) -> None:
        """Make the next ``times`` charges time out, before or after the charge is recorded."""
        self._faults.append(_Fault(times, after_charge))

    def charge_count(self, key: str) -> int:
        return sum(1 for charged_key, _ in self.charges if charged_key == key)

    @property
    def total_charged(self) -> int:
        return sum(amount for _, amount in self.charges)

    async def charge(self, *, amount: int, card_number: str, idempotency_key: str) -> ChargeResult:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        fault = self._take_fault()
        if fault is not None and not fault.after_charge:
            raise GatewayTimeout("simulated time-out before the charge")
        lock = self._locks.setdefault(idempotency_key, asyncio.Lock())
        async with lock:
            result = self.results.get(idempotency_key)
            if result is None:
                if card_number in TRANSIENT:
                    raise GatewayError("simulated transient gateway failure")
                result = self._decide(amount, card_number)
                self.results[idempotency_key] = result
                if result.status == "succeeded":
                    self.charges.append((idempotency_key, amount))
        if fault is not None:
            raise GatewayTimeout("simulated time-out after the charge")
        return result

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        return self.results.get(idempotency_key)

    def _take_fault(self) -> _Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            self._faults.pop(0)
        return fault

    @staticmethod
    def _decide(amount: int, card_number: str) -> ChargeResult:
        if card_number in SUCCEEDS:
            return ChargeResult("succeeded", f"ch_{uuid.uuid4().hex[:24]}", None, amount)
        return ChargeResult("declined", None, DECLINES.get(card_number, "card_declined"), amount)


class ChargeIn(BaseModel):
    amount: Annotated[int, Field(gt=0)]
    card_number: Annotated[str, StringConstraints(pattern=r"^[0-9]{12,19}$")]


class ChargeOut(BaseModel):
    status: str
    charge_id: str | None
    decline_code: str | None
    amount: int


def _out(result: ChargeResult) -> ChargeOut:
    return ChargeOut(
        status=result.status,
        charge_id=result.charge_id,
        decline_code=result.decline_code,
        amount=result.amount,
    )


def create_fake_gateway_app(gateway: FakeGateway | None = None, latency_ms: int = 0) -> FastAPI:
    """The simulator over HTTP: POST /v1/charges (Idempotency-Key header), GET /v1/charges/{key}."""
    simulator = gateway or FakeGateway(latency_ms=latency_ms)
    app = FastAPI(title="fake card gateway")
    app.state.gateway = simulator

    @app.post("/v1/charges")
    async def charge(
        body: ChargeIn,
        idempotency_key: Annotated[str, Header(min_length=1, max_length=255)],
    ) -> ChargeOut:
        try:
            result = await simulator.charge(
                amount=body.amount, card_number=body.card_number, idempotency_key=idempotency_key
            )
        except GatewayError as exc:
            raise HTTPException(503, str(exc)) from exc
        return _out(result)

    @app.get("/v1/charges/{idempotency_key}")
    async def lookup(idempotency_key: str) -> ChargeOut:
        result = await simulator.lookup(idempotency_key)
        if result is None:
            raise HTTPException(404, "no charge with this key")
        return _out(result)

    @app.get("/v1/charges")
    async def charges() -> list[dict[str, int | str]]:
        """Every real charge, for tests that count them."""
        return [{"idempotency_key": key, "amount": amount} for key, amount in simulator.charges]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(host: str, port: int, latency_ms: int) -> None:
    import uvicorn

    uvicorn.run(create_fake_gateway_app(latency_ms=latency_ms), host=host, port=port)
