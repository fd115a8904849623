"""Operating `shop serve --workers 2`: metrics summed over the workers, one JSON access line per
request, business events, and no secret in the log.

Every request goes on a connection of its own, so that both workers answer some; the test goes
on until the log shows that both did (and that both answered scrapes).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
from serving import ADMIN, CUSTOMER, SHOP, Process, free_port, shop_env

CARD = "4242424242424242"
_ids = itertools.count()


def send(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[str, httpx.Response]:
    """A request on a new connection (either worker may take it), under an id of ours."""
    rid = f"ops-{next(_ids)}"
    headers = {"X-Request-ID": rid, "Connection": "close", **kwargs.pop("headers", {})}
    return rid, client.request(method, url, headers=headers, **kwargs)


def log_entries(server: Process) -> list[dict[str, Any]]:
    """Every line of the server's output, each a JSON object (the test fails on one that is
    not)."""
    return [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]


def access_lines(server: Process, rids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The access lines of these requests, once each has its line (written after the answer)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for _ in range(100):
        found = {rid: [] for rid in rids}
        for entry in log_entries(server):
            if entry["logger"] == "shop.access" and entry["request_id"] in found:
                found[entry["request_id"]].append(entry)
        if all(found.values()):
            break
        time.sleep(0.05)
    return found


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def products_count(text: str) -> float:
    return sample(
        text,
        "shop_http_request_duration_seconds_count",
        method="GET",
        route="/api/products",
        status_class="2xx",
    )


def test_two_workers_one_set_of_metrics_and_a_clean_json_log(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"  # where `shop serve` makes its metrics directory
    scratch.mkdir()
    env = shop_env(
        f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
        SHOP_LOG_FORMAT="json",
        SHOP_ADMIN_EMAIL=ADMIN["email"],
        SHOP_ADMIN_PASSWORD=ADMIN["password"],
        TMPDIR=str(scratch),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    url = f"http://127.0.0.1:{free_port()}"
    server = Process(
        [SHOP, "serve", "--port", url.rsplit(":", 1)[1], "--workers", "2"],
        env,
        tmp_path,
        f"{url}/healthz",
    )
    server.start(timeout=60)
    try:
        with (
            httpx.Client(base_url=url, timeout=30) as admin,
            httpx.Client(base_url=url, timeout=30) as customer,
        ):
            checks: dict[str, tuple[str, int, str]] = {}  # request id: route, status, outcome

            rid, response = send(admin, "POST", "/api/session", json=ADMIN)
            assert response.status_code == 200, response.text
            checks[rid] = ("/api/session", 200, "committed")
            admin_token = response.json()["csrf_token"]
            rid, response = send(
                admin,
                "POST",
                "/api/products",
                json={"sku": "ops-mug", "name": "Mug", "price": 1000, "stock": 5},
                headers={"X-CSRF-Token": admin_token},
            )
            assert response.status_code == 201, response.text
            product_id = response.json()["id"]
            rid, response = send(customer, "POST", "/api/users", json={"name": "Ops", **CUSTOMER})
            assert response.status_code == 201, response.text
            checks[rid] = ("/api/users", 201, "committed")
            rid, response = send(customer, "POST", "/api/session", json=CUSTOMER)
            assert response.status_code == 200, response.text
            csrf = response.json()["csrf_token"]
            cookie = customer.cookies["shop_session"]
            order_rid, response = send(
                customer,
                "POST",
                "/api/orders",
                json={
                    "items": [{"product_id": product_id, "quantity": 1}],
                    "payment": {"method": "card", "card_number": CARD},
                },
                headers={"X-CSRF-Token": csrf},
            )
            assert response.status_code == 201, response.text
            checks[order_rid] = ("/api/orders", 201, "committed")
            order_id = response.json()["id"]
            rid, response = send(customer, "GET", f"/api/orders/{order_id}")
            assert response.status_code == 200
            checks[rid] = ("/api/orders/{order_id}", 200, "read_only")
            rid, response = send(customer, "GET", "/api/orders/999999")
            assert response.status_code == 404
            checks[rid] = ("/api/orders/{order_id}", 404, "rolled_back")

            # Catalogue reads until both workers have answered some.
            reads: set[str] = set()
            for _ in range(100):
                rid, response = send(customer, "GET", "/api/products")
                assert response.status_code == 200
                reads.add(rid)
                checks[rid] = ("/api/products", 200, "read_only")
                pids = {line[0]["pid"] for line in access_lines(server, reads).values()}
                if len(reads) >= 4 and len(pids) == 2:
                    break
            assert len(pids) == 2, "one worker answered every request"

            # Scrapes, answered by either worker, each count every read of both.
            counts: list[float] = []
            scrapers: set[int] = set()
            for scrape in range(40):
                if scrape % 4 == 3:
                    rid, _ = send(customer, "GET", "/api/products")
                    reads.add(rid)
                    checks[rid] = ("/api/products", 200, "read_only")
                for _ in range(50):  # the count is written just after the answer was sent
                    rid, response = send(customer, "GET", "/metrics")
                    if products_count(response.text) == len(reads):
                        break
                    time.sleep(0.02)
                counts.append(products_count(response.text))
                assert counts[-1] == len(reads), (counts, len(reads))
                scrapers.add(access_lines(server, {rid})[rid][0]["pid"])
                if scrape >= 8 and len(scrapers) == 2:
                    break
            assert len(scrapers) == 2, "one worker answered every scrape"
            assert counts == sorted(counts) and counts[-1] > counts[0]
            metrics = response.text
            assert sample(metrics, "atomic_requests_total", outcome="committed") >= 5
            assert (
                sample(metrics, "shop_gateway_calls_total", operation="charge", outcome="succeeded")
                == 1
            )
            assert sample(metrics, "atomic_websession_loads_total", store="sql") >= 3
            assert "atomic_pool_connections_in_use" in metrics
            assert "atomic_pool_requests_waiting" in metrics
    finally:
        server.stop()

    lines = access_lines(server, set(checks))
    for rid, (route, status, outcome) in checks.items():
        assert len(lines[rid]) == 1, (rid, lines[rid])
        line = lines[rid][0]
        assert (line["route"], line["status"], line["outcome"]) == (route, status, outcome), line
        assert line["duration_ms"] >= 0 and line["client"].startswith("127.0.0.1:")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])
    events = [e["message"] for e in log_entries(server) if e["request_id"] == order_rid]
    assert {"order placed", "order paid"} <= set(events), events

    log = server.log.read_text()
    for secret in (CUSTOMER["password"], ADMIN["password"], CARD, cookie, csrf, admin_token):
        assert secret not in log
    assert not any(scratch.iterdir()), "the metrics directory outlived the server"
