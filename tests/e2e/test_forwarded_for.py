"""`shop serve` behind a reverse proxy: X-Forwarded-For names the client only when the peer is
a proxy it was told to trust. Seen where the address matters: the log-in throttle's count per
address (two failures allowed here) and the access log's line."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import SHOP, Process, base_url, free_port, shop_env

#: every e-mail different: only the count per address can block
LIMITS = {
    "SHOP_LOGIN_MAX_FAILURES_PER_ADDRESS": "2",
    "SHOP_LOGIN_MAX_FAILURES_PER_EMAIL": "1000",
    "SHOP_LOGIN_MAX_FAILURES_PER_EMAIL_AND_ADDRESS": "1000",
}


def serve(workdir: Path, *options: str, **env: str) -> Process:
    port = free_port()
    return Process(
        [SHOP, "serve", "--port", str(port), *options],
        shop_env(f"sqlite+aiosqlite:///{workdir / 'shop.db'}", **LIMITS, **env),
        workdir,
        f"http://127.0.0.1:{port}/healthz",
    ).start()


@pytest.fixture
def server_process() -> Iterator[list[Process]]:
    """The test's servers, stopped when it ends however it ends."""
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def fail_log_in(server: Process, email: str, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = httpx.post(
        f"{base_url(server)}/api/session",
        json={"email": email, "password": "not the password"},
        headers=headers,
    )
    return response.status_code


def test_a_trusted_proxy_names_the_client(tmp_path: Path, server_process: list[Process]) -> None:
    # The option wins over the setting, which names a proxy that is not the peer.
    server = serve(
        tmp_path, "--forwarded-allow-ips", "127.0.0.1", SHOP_FORWARDED_ALLOW_IPS="10.9.9.9"
    )
    server_process.append(server)
    # What a proxy appends is the last entry: what a client put before it is not believed.
    assert fail_log_in(server, "a@example.com", "198.51.100.1, 203.0.113.7") == 401
    assert fail_log_in(server, "b@example.com", "203.0.113.7") == 401
    assert fail_log_in(server, "c@example.com", "203.0.113.7") == 429
    assert fail_log_in(server, "d@example.com", "198.51.100.1, 203.0.113.8") == 401
    assert fail_log_in(server, "e@example.com", None) == 401  # the peer itself: 127.0.0.1
    server.stop()
    log = server.log.read_text()
    assert '203.0.113.7:0 "POST /api/session HTTP/1.1" 429' in log
    assert '203.0.113.8:0 "POST /api/session HTTP/1.1" 401' in log


def test_without_a_trusted_proxy_the_header_is_ignored(
    tmp_path: Path, server_process: list[Process]
) -> None:
    server = serve(tmp_path)
    server_process.append(server)
    assert fail_log_in(server, "a@example.com", "203.0.113.7") == 401
    assert fail_log_in(server, "b@example.com", "203.0.113.8") == 401
    # Everyone is the peer, 127.0.0.1: its two failures block the next client.
    assert fail_log_in(server, "c@example.com", "203.0.113.9") == 429
    server.stop()
    log = server.log.read_text()
    assert "127.0.0.1:" in log and "203.0.113." not in log


def test_the_setting_alone_trusts_its_proxies(
    tmp_path: Path, server_process: list[Process]
) -> None:
    server = serve(tmp_path, SHOP_FORWARDED_ALLOW_IPS="10.0.0.0/8, 127.0.0.0/8")
    server_process.append(server)
    assert fail_log_in(server, "a@example.com", "203.0.113.7") == 401
    assert fail_log_in(server, "b@example.com", "203.0.113.7") == 401
    assert fail_log_in(server, "c@example.com", "203.0.113.8") == 401
    assert fail_log_in(server, "d@example.com", "203.0.113.7") == 429


def test_a_proxy_that_is_not_an_address_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [SHOP, "serve", "--port", str(free_port()), "--forwarded-allow-ips", "proxy.internal"],
        env=shop_env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--forwarded-allow-ips" in result.stderr and "proxy.internal" in result.stderr
