"""The shop on two hosts of two workers each behind nginx, sharing PostgreSQL and a web-session
store (SQL, then Redis): what one process does, every other one sees. Clients go through the
proxy, concurrently, and every test checks its requests were spread over both hosts.

The checks: transfers never change the bank's total nor overdraw an account; orders never sell
more than the stock and charge a card once per order; every paid order's id is in its buyer's
web session, also when several clients of one session order at once; a log-out is a 401 on
every worker of every host at once, though each had the session in its cache.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deployment import NGINX_MISSING, REDIS_URL, Deployment, Host, deployment, nginx_missing
from installed import require_installed
from shop_clients import (
    CARD,
    CLIENTS,
    Clients,
    Customer,
    add_product,
    concurrently,
    customers,
    stock_of,
)


@pytest.fixture(scope="module", params=["sql", "redis"])
def shop(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: str,
) -> Iterator[Deployment]:
    require_installed(NGINX_MISSING if nginx_missing() else None)
    store = str(request.param)
    redis_url = str(request.getfixturevalue("redis_server")) if store == "redis" else REDIS_URL
    workdir: Path = tmp_path_factory.mktemp(f"deployment-{store}")
    # A gateway that takes its time: card orders overlap between reserve and settle.
    with deployment(
        workdir,
        store=store,
        postgres_url=postgres_server,
        redis_url=redis_url,
        gateway_latency_ms=30,
    ) as running:
        yield running


@pytest.fixture
def clients(shop: Deployment) -> Iterator[Clients]:
    made = Clients(shop.url)
    yield made
    made.close()


def assert_spread(shop: Deployment, clients: Clients) -> None:
    """Both hosts answered, and nothing but them (no nginx error page)."""
    hosts = {host.netloc for host in shop.hosts}
    assert set(clients.upstreams) == hosts, clients.upstreams
    assert 500 not in clients.statuses and 502 not in clients.statuses, clients.statuses


# --- the tests ---------------------------------------------------------------------------


def test_requests_spread_over_the_hosts_which_believe_the_proxy(
    shop: Deployment, clients: Clients
) -> None:
    ids = [f"spread-{uuid.uuid4().hex[:8]}-{n}" for n in range(24)]
    concurrently(lambda i: clients.new().get("/api/products", headers={"X-Request-ID": i}), ids)
    assert_spread(shop, clients)
    for host in shop.hosts:  # and each host's own log says so
        assert logged(host, *(f"[{i}]" for i in ids)), host.netloc
    # A client from another address: the hosts log it (from X-Forwarded-For), not nginx.
    transport = httpx.HTTPTransport(local_address="127.0.0.9")
    with httpx.Client(transport=transport) as elsewhere:
        seen = elsewhere.get(f"{shop.url}/healthz", headers={"X-Request-ID": "from-nine"})
    served = next(host for host in shop.hosts if host.netloc == seen.headers["x-upstream"])
    assert logged(served, '[from-nine] 127.0.0.9:0 "GET /healthz')


def logged(host: Host, *texts: str) -> bool:
    """Whether one of ``texts`` is in the host's log, once its access lines are written
    (after the answers)."""
    for _ in range(50):
        log = host.process.log.read_text()
        if any(text in log for text in texts):
            return True
        time.sleep(0.1)
    return False


def test_concurrent_transfers_keep_the_total_and_overdraw_no_one(
    shop: Deployment, clients: Clients
) -> None:
    users = customers(clients, 6)
    concurrently(lambda user: user.deposit(10_000), users)
    accounts = [user.account_id for user in users]
    done: list[tuple[int, int, int, int]] = []  # from, to, amount, status

    def transfers(job: tuple[Customer, int]) -> None:
        user, seed = job
        chance = random.Random(seed)
        tab = user.tab()  # two clients draw on each account at once
        for _ in range(8):
            to = chance.choice([a for a in accounts if a != user.account_id])
            amount = chance.randint(1, 4_000)
            body = {"from_account_id": user.account_id, "to_account_id": to, "amount": amount}
            status = user.post("/api/transfers", body, tab).status_code
            done.append((user.account_id, to, amount, status))

    concurrently(transfers, [(user, seed) for seed in (1, 2) for user in users])

    statuses = Counter(status for *_, status in done)
    assert set(statuses) <= {201, 409}, statuses  # made, or short of funds: nothing else
    assert statuses[201] > 0 and statuses[409] > 0, statuses  # some did run out
    expected = dict.fromkeys(accounts, 10_000)
    for source, target, amount, status in done:
        if status == 201:
            expected[source] -= amount
            expected[target] += amount
    balances = {user.account_id: user.balance() for user in users}
    assert sum(balances.values()) == len(users) * 10_000
    assert min(balances.values()) >= 0
    assert balances == expected  # every 201 counted once, every 409 changed nothing
    assert_spread(shop, clients)


def test_orders_sell_the_stock_once_and_charge_each_card_order_once(
    shop: Deployment, clients: Clients
) -> None:
    stock, price = 15, 500
    product_id = add_product(clients, price, stock)
    buyers = customers(clients, 6)
    concurrently(lambda buyer: buyer.deposit(5_000), buyers)
    charges_before = len(shop.charges())
    placed: list[tuple[Customer, str, int, httpx.Response]] = []

    def buy(job: tuple[Customer, str, int]) -> None:
        buyer, method, seed = job
        chance = random.Random(seed)
        payment = (
            {"method": "card", "card_number": CARD}
            if method == "card"
            else {"method": "account", "account_id": buyer.account_id}
        )
        tab = buyer.tab()  # the buyer's web session, from a second client
        for _ in range(3):
            quantity = chance.randint(1, 2)
            items = [{"product_id": product_id, "quantity": quantity}]
            body = {"items": items, "payment": payment}
            placed.append((buyer, method, quantity, buyer.post("/api/orders", body, tab)))

    concurrently(buy, [(b, m, n) for n, b in enumerate(buyers) for m in ("card", "account")])

    statuses = Counter(response.status_code for *_, response in placed)
    assert set(statuses) <= {201, 409}, statuses  # paid, or out of stock
    paid = [(b, m, q, r) for b, m, q, r in placed if r.status_code == 201]
    sold = sum(quantity for _, _, quantity, _ in paid)
    left = stock_of(clients, product_id)
    assert left >= 0 and sold == stock - left  # no oversell, no stock lost
    assert statuses[409] > 0, statuses  # demand exceeded the stock

    # Exactly the orders answered 201 are paid, each in its buyer's web session.
    for buyer in buyers:
        mine = sorted(r.json()["id"] for b, _, _, r in paid if b is buyer)
        listed = buyer.client.get("/api/orders").json()
        assert sorted(order["id"] for order in listed) == mine
        assert all(order["status"] == "paid" for order in listed)
        remembered = buyer.session_order_ids()
        assert sorted(remembered) == mine, (remembered, mine)

    # One charge per card order, of its total; the account orders charged no card.
    card_orders = [r for _, method, _, r in paid if method == "card"]
    charges = shop.charges()[charges_before:]
    assert len(charges) == len(card_orders)
    assert sorted(int(c["amount"]) for c in charges) == sorted(
        int(r.json()["total"]) for r in card_orders
    )
    # A retry of a paid card order, by its key, on whichever host: the same order, no charge.
    for buyer, method, _, response in paid:
        if method == "card":
            retry = buyer.client.post(
                "/api/orders",
                content=response.request.content,
                headers={
                    "Content-Type": "application/json",
                    "X-CSRF-Token": buyer.token,
                    "Idempotency-Key": response.request.headers["Idempotency-Key"],
                },
            )
            assert (retry.status_code, retry.json()) == (201, response.json())
    assert len(shop.charges()) == charges_before + len(card_orders)
    assert_spread(shop, clients)


def test_concurrent_orders_in_one_web_session_are_all_remembered(
    shop: Deployment, clients: Clients
) -> None:
    product_id = add_product(clients, price=1, stock=1_000)
    buyer = Customer(clients)
    buyer.deposit(1_000)
    tabs = [buyer.tab() for _ in range(CLIENTS)]
    order = {
        "items": [{"product_id": product_id, "quantity": 1}],
        "payment": {"method": "account", "account_id": buyer.account_id},
    }

    def place(tab: httpx.Client) -> list[httpx.Response]:
        return [buyer.post("/api/orders", order, tab) for _ in range(4)]

    answers = [response for batch in concurrently(place, tabs) for response in batch]
    assert Counter(r.status_code for r in answers) == {201: 4 * CLIENTS}
    remembered = buyer.session_order_ids()
    assert len(remembered) == len(set(remembered))
    assert sorted(remembered) == sorted(r.json()["id"] for r in answers)
    assert_spread(shop, clients)


def test_logging_out_reaches_every_worker_of_every_host(shop: Deployment, clients: Clients) -> None:
    user = Customer(clients)
    other, _ = user.log_in()  # a second web session of the same user
    kept = httpx.Cookies(user.client.cookies)  # what a stolen copy of the first would be

    def answers(cookies: httpx.Cookies) -> Counter[int]:
        """Many requests through the proxy, a few at a time, so that nginx opens several
        connections to each host; and straight to every worker of every host."""
        tabs = [clients.new(cookies=cookies) for _ in range(8)]
        through = concurrently(lambda tab: tab.get("/api/session"), tabs * 3)
        statuses = Counter(r.status_code for r in through)
        for host in shop.hosts:
            statuses += straight_to_every_worker(host, cookies)
        return statuses

    every = 24 + sum(len(host.worker_pids()) for host in shop.hosts)  # answers per round
    # Every process has both sessions in its cache (SHOP_SESSION_CACHE), then ...
    assert answers(other.cookies) == {200: every}
    assert answers(kept) == {200: every}
    # ... the first ends the other one, everywhere at once.
    csrf = {"X-CSRF-Token": user.token}
    assert user.client.delete("/api/sessions/others", headers=csrf).status_code == 204
    assert answers(other.cookies) == {401: every}
    assert answers(kept) == {200: every}
    # And logging out ends the first: its old cookie is a 401 everywhere.
    assert user.client.delete("/api/session", headers=csrf).status_code == 204
    assert answers(kept) == {401: every}
    assert_spread(shop, clients)


def straight_to_every_worker(host: Host, cookies: httpx.Cookies) -> Counter[int]:
    """GET /api/session with ``cookies``, on new connections to ``host`` until each of its
    workers has answered one; the status of each worker's (first) answer."""
    workers = host.worker_pids()
    assert len(workers) == 2, workers
    # The cookie as sent: the jar holds it for the proxy's address, not the host's.
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    first: dict[int, int] = {}
    for _ in range(60):
        with httpx.Client(base_url=host.url, headers={"Cookie": cookie}, timeout=30) as client:
            response = client.get("/api/session")
            pid = host.worker_serving(response)
        assert pid is not None
        first.setdefault(pid, response.status_code)
        if set(first) == workers:
            return Counter(first.values())
    raise AssertionError(f"workers {workers - set(first)} of {host.netloc} answered nothing")
