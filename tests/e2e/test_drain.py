"""SIGTERM drains: a server told to stop answers the requests it has begun, each committed or
rolled back as it would have been, shuts the app down and exits; it takes no new work
meanwhile.

Card orders are the requests in flight: each waits 1.5 s on the payment gateway between its
reserve and its settle transaction, so the signal lands while every one of them is half-way.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving import (
    ADMIN,
    CUSTOMER,
    SHOP,
    Process,
    base_url,
    card_order,
    fake_gateway,
    free_port,
    log_in,
    setup_shop,
    shop_env,
)

IN_FLIGHT = 6
STOCK = 50


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_every_request_in_flight_then_exits(tmp_path: Path, workers: int) -> None:
    gateway = fake_gateway(tmp_path, latency_ms=1500).start()
    env = shop_env(
        f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
        SHOP_PAYMENT_GATEWAY=base_url(gateway),
        SHOP_ADMIN_EMAIL=ADMIN["email"],
        SHOP_ADMIN_PASSWORD=ADMIN["password"],
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [SHOP, "serve", "--port", str(port), "--workers", str(workers)]
    server = Process(command, env, tmp_path, f"{url}/healthz").start(timeout=60)
    restarted: Process | None = None
    try:
        product_id = setup_shop(url, stock=STOCK)
        buyers = [log_in(url, CUSTOMER) for _ in range(IN_FLIGHT)]
        answers: list[int | str] = []

        def order(client: httpx.Client, token: str) -> None:
            try:
                answers.append(card_order(client, token, product_id, quantity=1).status_code)
            except httpx.TransportError as exc:
                answers.append(f"no answer: {exc!r}")

        threads = [threading.Thread(target=order, args=buyer) for buyer in buyers]
        for thread in threads:
            thread.start()
        time.sleep(0.7)  # every order reserved, its charge at the gateway
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=30)

        assert answers == [201] * IN_FLIGHT, answers
        # uvicorn re-raises the signal once drained (one worker): ended by SIGTERM as asked
        exit_status = server.process.wait(timeout=30)
        log = server.log.read_text()
        assert exit_status in (0, -signal.SIGTERM), log[-3000:]
        assert log.count("Application shutdown complete") == workers, log[-3000:]
        with pytest.raises(httpx.TransportError):  # gone: no new work after the drain
            httpx.get(f"{url}/healthz", timeout=2)

        # Every order answered 201 is paid, its stock taken and its card charged once.
        restarted = Process(command, env, tmp_path, f"{url}/healthz").start(timeout=60)
        customer, _ = log_in(url, CUSTOMER)
        orders = customer.get("/api/orders").json()
        assert [o["status"] for o in orders] == ["paid"] * IN_FLIGHT
        assert customer.get("/api/products").json()[0]["stock"] == STOCK - IN_FLIGHT
        assert len(httpx.get(f"{base_url(gateway)}/v1/charges").json()) == IN_FLIGHT
        # ... and in the web session of the buyer who placed it.
        remembered = [
            order_id
            for client, _ in buyers
            for order_id in client.get("/api/session").json()["order_ids"]
        ]
        assert sorted(remembered) == sorted(o["id"] for o in orders)
    finally:
        server.kill()
        if restarted is not None:
            restarted.stop()
        gateway.kill()
