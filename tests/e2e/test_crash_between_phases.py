"""A server killed between the phases of a card checkout; restart, reconcile, and count.

After `shop payments reconcile` there is no reserved stock without a charge and no charge
without a paid order, whichever side of the charge the crash fell on.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

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
    shop_server,
)


def order_in_background(url: str, product_id: int) -> threading.Thread:
    client, token = log_in(url, CUSTOMER)

    def place() -> None:
        with contextlib.suppress(httpx.TransportError):  # the server dies under us: the point
            card_order(client, token, product_id, quantity=2)

    thread = threading.Thread(target=place, daemon=True)
    thread.start()
    return thread


def wait_for_reservation(database: Path, within: float = 30) -> None:
    """Until the order's first phase (stock held, payment pending and leased) is committed."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as connection:
            query = "SELECT count(*) FROM payments WHERE status = 'pending'"
            if connection.execute(query).fetchone()[0]:
                return
        assert time.monotonic() < deadline, f"no reservation within {within} s"
        time.sleep(0.02)


def charges_at(gateway: Process, *, at_least: int = 0, within: float = 30) -> list[Any]:
    """The gateway's charges, once there are ``at_least`` (or ``within`` seconds passed)."""
    deadline = time.monotonic() + within
    while True:
        charges: list[Any] = httpx.get(f"{base_url(gateway)}/v1/charges").json()
        if len(charges) >= at_least or time.monotonic() > deadline:
            return charges
        time.sleep(0.1)


def state(url: str) -> dict[str, Any]:
    client, _ = log_in(url, CUSTOMER)
    return {
        "stock": client.get("/api/products").json()[0]["stock"],
        "orders": [o["status"] for o in client.get("/api/orders").json()],
    }


def reconcile(workdir: Path, env: dict[str, str], *, check: bool = True) -> str:
    result = subprocess.run(
        [SHOP, "payments", "reconcile", "--min-age", "0"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )
    return result.stdout


@pytest.mark.parametrize("gateway_survives", [True, False], ids=["charged", "never-charged"])
def test_crash_between_phases_then_reconcile(tmp_path: Path, gateway_survives: bool) -> None:
    gateway = fake_gateway(tmp_path, latency_ms=1500).start()
    env = shop_env(
        f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
        SHOP_PAYMENT_GATEWAY=base_url(gateway),
        # A charge's lease: 2 x 4 s + 1 s, so that the reconcile run while it lasts starts
        # with seconds to spare even on a loaded machine (a 5 s lease once ran out first).
        SHOP_PAYMENT_GATEWAY_TIMEOUT="4",
        SHOP_ADMIN_EMAIL=ADMIN["email"],
        SHOP_ADMIN_PASSWORD=ADMIN["password"],
    )
    server = shop_server(tmp_path, env).start()
    restarted: Process | None = None
    try:
        product_id = setup_shop(base_url(server))
        ordered_at = time.monotonic()
        order_in_background(base_url(server), product_id)  # logs in (argon2), then sends it
        sent_at = time.monotonic()  # the lease is taken after this
        # Waited for, not slept for: a loaded machine may take longer to get there. Then the
        # request to the gateway (milliseconds) is given 0.5 s to arrive; the charge takes
        # 1.5 s there, so the server dies with it in flight.
        wait_for_reservation(tmp_path / "shop.db")
        time.sleep(0.5)
        server.kill()
        if not gateway_survives:
            gateway.kill()
            gateway = fake_gateway(
                tmp_path, latency_ms=0, port=int(base_url(gateway).rsplit(":", 1)[1])
            ).start()
            charges = charges_at(gateway)
        else:
            charges = charges_at(gateway, at_least=1)  # the charge nobody waits for, finished
        assert len(charges) == (1 if gateway_survives else 0)

        restarted = shop_server(tmp_path, env).start()
        # Reserved, not one of the customer's orders while its outcome is unknown.
        assert state(base_url(restarted)) == {"stock": 3, "orders": []}
        # The dead server's request still holds the payment's lease: reconcile leaves it.
        if time.monotonic() - ordered_at < 4:
            leased = reconcile(tmp_path, env, check=False)
            assert "settled: 0\nreleased: 0\nstill pending: 1" in leased
        time.sleep(max(0.0, sent_at + 9.5 - time.monotonic()))  # the lease ran out
        output = reconcile(tmp_path, env)
        after = state(base_url(restarted))
        if gateway_survives:
            assert "settled: 1" in output
            assert after == {"stock": 3, "orders": ["paid"]}
        else:
            assert "released: 1" in output
            assert after == {"stock": 5, "orders": []}
        assert len(httpx.get(f"{base_url(gateway)}/v1/charges").json()) == len(charges)
        assert "settled: 0" in reconcile(tmp_path, env)  # nothing left to do
    finally:
        server.kill()
        if restarted is not None:
            restarted.stop()
        gateway.kill()


def test_reconcile_exits_non_zero_while_the_gateway_does_not_answer(tmp_path: Path) -> None:
    """A card order whose gateway never answered stays pending; reconcile says so by its exit
    status until the gateway answers, then settles it (nothing was charged: released)."""
    port = free_port()
    env = shop_env(
        f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
        SHOP_PAYMENT_GATEWAY=f"http://127.0.0.1:{port}",
        SHOP_ADMIN_EMAIL=ADMIN["email"],
        SHOP_ADMIN_PASSWORD=ADMIN["password"],
    )
    server = shop_server(tmp_path, env).start()
    gateway: Process | None = None
    try:
        product_id = setup_shop(base_url(server))
        client, token = log_in(base_url(server), CUSTOMER)
        placed = client.post(
            "/api/orders",
            json={
                "items": [{"product_id": product_id, "quantity": 1}],
                "payment": {"method": "card", "card_number": "4242424242424242"},
            },
            headers={"X-CSRF-Token": token},
        )
        assert placed.status_code == 503, placed.text
        command = [SHOP, "payments", "reconcile", "--min-age", "0"]
        run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 60}
        down = subprocess.run(command, check=False, **run)  # type: ignore[call-overload]
        assert down.returncode == 1 and "still pending: 1" in down.stdout, down
        gateway = fake_gateway(tmp_path, latency_ms=0, port=port).start()
        up = subprocess.run(command, check=False, **run)  # type: ignore[call-overload]
        assert up.returncode == 0 and "released: 1" in up.stdout, up
    finally:
        server.stop()
        if gateway is not None:
            gateway.kill()
