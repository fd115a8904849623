"""X-Request-ID against `shop serve`: the client's id (or a new one) comes back on the response
and is on the server's log lines for that request."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import Process, base_url, shop_env, shop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    workdir: Path = tmp_path_factory.mktemp("request-ids")
    process = shop_server(workdir, shop_env(f"sqlite+aiosqlite:///{workdir / 'shop.db'}"))
    yield process.start()
    process.stop()


def log_lines_with(process: Process, text: str) -> list[str]:
    """The server's log lines that mention ``text``, once its access line is written."""
    for _ in range(50):
        lines = [line for line in process.log.read_text().splitlines() if text in line]
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_the_clients_id_comes_back_and_is_logged(server: Process) -> None:
    response = httpx.get(f"{base_url(server)}/api/products", headers={"X-Request-ID": "req-42.a"})
    assert response.headers["x-request-id"] == "req-42.a"
    lines = log_lines_with(server, "[req-42.a]")
    assert any('"GET /api/products HTTP/1.1" 200' in line for line in lines), lines
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[0])  # with a timestamp


def test_without_one_the_server_makes_one(server: Process) -> None:
    made = httpx.get(f"{base_url(server)}/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    again = httpx.get(f"{base_url(server)}/healthz").headers["x-request-id"]
    assert again != made


@pytest.mark.parametrize("forged", ["a b", "x" * 129, "id\tINFO forged line", ""])
def test_an_id_that_could_forge_a_log_line_is_replaced(server: Process, forged: str) -> None:
    response = httpx.get(f"{base_url(server)}/healthz", headers={"X-Request-ID": forged})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_error_responses_carry_it_too(server: Process) -> None:
    response = httpx.get(f"{base_url(server)}/api/session", headers={"X-Request-ID": "who-am-i"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "who-am-i"
