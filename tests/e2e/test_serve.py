"""The real thing: `shop serve` as a subprocess on a temporary SQLite file, driven over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import Process, shop_env

SHOP = Path(sys.executable).with_name("shop")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {
        **os.environ,
        "SHOP_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'shop.db'}",
        "SHOP_COOKIE_SECURE": "false",
        "SHOP_ADMIN_EMAIL": "admin@example.com",
        "SHOP_ADMIN_PASSWORD": "admin-password",
    }
    env.pop("SHOP_SECRET_KEYS", None)
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [str(SHOP), "serve", "--port", str(port)], cwd=workdir, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"shop serve exited: {(workdir / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("shop serve did not answer within 30 s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def test_serve_answers_health_and_readiness(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").status_code == 200
    assert "atomic_requests_total" in httpx.get(f"{server}/metrics").text
    assert httpx.get(f"{server}/openapi.json").json()["info"]["title"] == "shop"


def test_sign_up_over_http(server: str) -> None:
    body = {"name": "Grace", "email": "grace@example.com", "password": "hopper-1906"}
    created = httpx.post(f"{server}/api/users", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["accounts"][0]["balance"] == 0
    assert httpx.post(f"{server}/api/users", json=body).status_code == 409
    assert httpx.post(f"{server}/api/users", json={"email": "x"}).status_code == 422


def test_garbage_never_gets_a_500(server: str) -> None:
    for content in (b"", b"{", b"\x00" * 100, b"[" * 5000):
        response = httpx.post(
            f"{server}/api/users", content=content, headers={"content-type": "application/json"}
        )
        # 422 for what the parser reads; 400 for JSON nested past the parser's depth limit
        assert response.status_code in (400, 422), content
        assert "detail" in response.json()
    assert httpx.post(f"{server}/api/users", content=b"x" * (2 * 1024 * 1024)).status_code == 413


def test_several_workers_start_on_a_fresh_sqlite_database_with_an_administrator(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = shop_env(
        f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
        SHOP_ADMIN_EMAIL="boss@example.com",
        SHOP_ADMIN_PASSWORD="boss-password",
    )
    server = Process(
        [str(SHOP), "serve", "--port", str(port), "--workers", "2"],
        env,
        tmp_path,
        f"http://127.0.0.1:{port}/healthz",
    ).start(timeout=60)
    try:
        for _ in range(6):  # both workers answer (the kernel spreads the connections)
            login = httpx.post(
                f"http://127.0.0.1:{port}/api/session",
                json={"email": "boss@example.com", "password": "boss-password"},
            )
            assert login.status_code == 200, login.text
    finally:
        server.stop()
