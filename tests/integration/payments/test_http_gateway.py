"""The HTTP client against the simulator: in-process, then a real process we slow and kill."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from shop.payments import GatewayError, GatewayTimeout, HttpGateway, create_fake_gateway_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(port: int, latency_ms: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from shop.payments.fake import serve; serve('127.0.0.1', {port}, {latency_ms})",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the gateway did not start")


@pytest.fixture
def slow_gateway() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = start_gateway(port, latency_ms=300)
    yield f"http://127.0.0.1:{port}", process
    process.kill()
    process.wait()


async def test_in_process_round_trip() -> None:
    app = create_fake_gateway_app()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    gateway = HttpGateway("http://gw", client=client)
    charged = await gateway.charge(amount=250, card_number="4242424242424242", idempotency_key="a")
    declined = await gateway.charge(amount=250, card_number="4000000000000002", idempotency_key="b")
    assert charged.status == "succeeded" and declined.decline_code == "card_declined"
    assert await gateway.lookup("a") == charged
    assert await gateway.lookup("never") is None
    with pytest.raises(GatewayError):
        await gateway.charge(amount=250, card_number="4000000000000119", idempotency_key="c")
    bad = await client.post("/v1/charges", json={"amount": -1}, headers={"Idempotency-Key": "z"})
    assert bad.status_code == 422
    await gateway.aclose()


async def test_a_timeout_is_an_unknown_outcome_that_lookup_resolves(
    slow_gateway: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, _ = slow_gateway
    impatient = HttpGateway(url, timeout=0.1)
    with pytest.raises(GatewayTimeout):
        await impatient.charge(amount=100, card_number="4242424242424242", idempotency_key="slow")
    await impatient.aclose()
    patient = HttpGateway(url, timeout=5)
    await asyncio.sleep(0.4)
    found = await patient.lookup("slow")
    assert found is not None and found.status == "succeeded"
    again = await patient.charge(amount=100, card_number="4242424242424242", idempotency_key="slow")
    assert again.charge_id == found.charge_id  # the same charge, not a second one
    await patient.aclose()


async def test_a_dead_gateway_is_an_error_not_a_hang(
    slow_gateway: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, process = slow_gateway
    process.kill()
    process.wait()
    gateway = HttpGateway(url, timeout=2)
    started = time.monotonic()
    with pytest.raises(GatewayError):
        await gateway.charge(amount=100, card_number="4242424242424242", idempotency_key="dead")
    assert time.monotonic() - started < 10
    await gateway.aclose()
