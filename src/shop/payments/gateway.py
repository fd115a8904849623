"""What the shop needs from a card gateway: charge with an idempotency key, look a key up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol


@dataclass(frozen=True)
class ChargeResult:
    status: Literal["succeeded", "declined"]
    charge_id: str | None
    decline_code: str | None
    amount: int


class GatewayError(Exception):
    """The gateway failed or could not be reached (HTTP 503 for the client)."""


class GatewayTimeout(GatewayError):
    """No answer in time: the charge may or may not have happened. Ask by key to find out."""


class PaymentGateway(Protocol):
    #: the longest a charge and the look-up after a failed one can take together: how long a
    #: request holds its payment's lease while it charges
    @property
    def charge_lease(self) -> timedelta: ...

    async def charge(self, *, amount: int, card_number: str, idempotency_key: str) -> ChargeResult:
        """Charge once per key: a repeated key returns the first result and charges nothing."""
        ...

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        """The result recorded under the key, or None if no charge was ever made with it."""
        ...
