"""Start `shop serve` and `shop fake-gateway` as real processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SHOP = str(Path(sys.executable).with_name("shop"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, health_url: str) -> None:
        self.args, self.env, self.cwd, self.health_url = args, env, cwd, health_url
        self.log = cwd / f"{Path(args[1]).name}-{int(time.time() * 1000)}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Process:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.health_url, timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.args} did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def shop_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHOP_")}
    env.update(
        SHOP_DATABASE_URL=database_url,
        SHOP_COOKIE_SECURE="false",
        SHOP_SECRET_KEYS="e2e-secret-key-" + "k" * 40,
    )
    env.update(extra)
    return env


def shop_server(
    workdir: Path, env: dict[str, str], port: int | None = None, workers: int = 1
) -> Process:
    port = port or free_port()
    return Process(
        [SHOP, "serve", "--port", str(port), "--workers", str(workers)],
        env,
        workdir,
        f"http://127.0.0.1:{port}/healthz",
    )


def fake_gateway(workdir: Path, latency_ms: int, port: int | None = None) -> Process:
    port = port or free_port()
    return Process(
        [SHOP, "fake-gateway", "--port", str(port), "--latency-ms", str(latency_ms)],
        shop_env("sqlite+aiosqlite:///unused.db"),
        workdir,
        f"http://127.0.0.1:{port}/healthz",
    )


def base_url(process: Process) -> str:
    return process.health_url.removesuffix("/healthz")


# --- a shop to drive over HTTP: an administrator, a customer, a product ---------------------

#: give these to the server as SHOP_ADMIN_EMAIL / SHOP_ADMIN_PASSWORD
ADMIN = {"email": "admin@example.com", "password": "admin-password"}
CUSTOMER = {"email": "crash@example.com", "password": "crash-password"}


def log_in(url: str, credentials: dict[str, str]) -> tuple[httpx.Client, str]:
    """A client logged in as ``credentials``, and its CSRF token."""
    client = httpx.Client(base_url=url, timeout=30)
    response = client.post("/api/session", json=credentials)
    assert response.status_code == 200, response.text
    return client, response.json()["csrf_token"]


def setup_shop(url: str, *, stock: int = 5) -> int:
    """The administrator adds a product (price 1000, ``stock``) and CUSTOMER signs up; the
    product's id."""
    admin, token = log_in(url, ADMIN)
    product = admin.post(
        "/api/products",
        json={"sku": "crash-mug", "name": "Mug", "price": 1000, "stock": stock},
        headers={"X-CSRF-Token": token},
    ).json()
    signup = httpx.post(f"{url}/api/users", json={"name": "Crash", **CUSTOMER})
    assert signup.status_code == 201
    return int(product["id"])


def card_order(client: httpx.Client, token: str, product_id: int, quantity: int) -> httpx.Response:
    """POST /api/orders paid with the test card that pays."""
    return client.post(
        "/api/orders",
        json={
            "items": [{"product_id": product_id, "quantity": quantity}],
            "payment": {"method": "card", "card_number": "4242424242424242"},
        },
        headers={"X-CSRF-Token": token},
    )
