"""A client for a gateway that speaks the simulator's protocol over HTTP."""

from __future__ import annotations

from datetime import timedelta

import httpx

from .gateway import ChargeResult, GatewayError, GatewayTimeout


class HttpGateway:
    """Never retries a charge except with the same key, and only when nothing was sent."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
        connect_retries: int = 2,
    ) -> None:
        self._client = client or httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0))
        )
        self._connect_retries = connect_retries
        # A charge and a look-up, each within the time-out, and a second to spare.
        self.charge_lease = timedelta(seconds=2 * timeout + 1)

    async def charge(self, *, amount: int, card_number: str, idempotency_key: str) -> ChargeResult:
        response = await self._send(
            "POST",
            "/v1/charges",
            json={"amount": amount, "card_number": card_number},
            headers={"Idempotency-Key": idempotency_key},
        )
        if response.status_code != 200:
            raise GatewayError(f"gateway answered {response.status_code}")
        return _result(response)

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        response = await self._send("GET", f"/v1/charges/{idempotency_key}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise GatewayError(f"gateway answered {response.status_code}")
        return _result(response)

    async def _send(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return await self._client.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.ConnectError as exc:  # nothing reached the gateway: safe to repeat
                attempt += 1
                if attempt > self._connect_retries:
                    raise GatewayError(f"gateway unreachable: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise GatewayTimeout(f"gateway did not answer in time: {exc}") from exc
            except httpx.HTTPError as exc:
                raise GatewayTimeout(f"gateway connection failed mid-request: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _result(response: httpx.Response) -> ChargeResult:
    try:
        data = response.json()
        return ChargeResult(
            status=data["status"],
            charge_id=data.get("charge_id"),
            decline_code=data.get("decline_code"),
            amount=int(data["amount"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise GatewayError("gateway sent an unreadable answer") from exc
