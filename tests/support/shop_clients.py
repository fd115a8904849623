"""Customers of a running shop, driven over HTTP from many threads: sign-up, log-in, deposits,
transfers and orders, each client's answers counted. Shared by the tests that run the shop as
real processes (over several hosts, on a failing-over data stack)."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from serving import ADMIN

#: concurrent clients (threads) of :func:`concurrently`
CLIENTS = 12
PASSWORD = "a good password"
CARD = "4242424242424242"

A = TypeVar("A")
T = TypeVar("T")
_emails = itertools.count()


class Clients:
    """The test's HTTP clients of the shop at ``url``; each answer's status is counted, and
    its host too (nginx's ``X-Upstream``, where there is one); every client is closed at the
    end."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url
        self.timeout = timeout
        self.upstreams: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self._open: list[httpx.Client] = []
        self._lock = threading.Lock()

    def new(self, cookies: httpx.Cookies | None = None) -> httpx.Client:
        client = httpx.Client(
            base_url=self.url,
            cookies=cookies,
            timeout=self.timeout,
            event_hooks={"response": [self._note]},
        )
        with self._lock:
            self._open.append(client)
        return client

    def _note(self, response: httpx.Response) -> None:
        with self._lock:
            self.upstreams[response.headers.get("x-upstream", "none")] += 1
            self.statuses[response.status_code] += 1

    def close(self) -> None:
        for client in self._open:
            client.close()


class Customer:
    """A signed-up user, logged in: one web session, its account."""

    def __init__(self, clients: Clients) -> None:
        self.email = f"customer{next(_emails)}-{uuid.uuid4().hex[:6]}@example.com"
        self.clients = clients
        signup = clients.new().post(
            "/api/users", json={"name": "Customer", "email": self.email, "password": PASSWORD}
        )
        assert signup.status_code == 201, signup.text
        self.account_id: int = signup.json()["accounts"][0]["id"]
        self.client, self.token = self.log_in()

    def log_in(self) -> tuple[httpx.Client, str]:
        """A new web session of this user, in a client of its own."""
        client = self.clients.new()
        response = client.post("/api/session", json={"email": self.email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return client, str(response.json()["csrf_token"])

    def tab(self) -> httpx.Client:
        """Another client in the same web session (its own connections)."""
        return self.clients.new(cookies=self.client.cookies)

    def post(
        self,
        path: str,
        body: dict[str, Any],
        client: httpx.Client | None = None,
        *,
        key: str | None = None,
    ) -> httpx.Response:
        """POST with the CSRF token and an ``Idempotency-Key`` (``key``, or a new one)."""
        return (client or self.client).post(
            path,
            json=body,
            headers={"X-CSRF-Token": self.token, "Idempotency-Key": key or uuid.uuid4().hex},
        )

    def deposit(self, amount: int) -> None:
        path = f"/api/accounts/{self.account_id}/deposits"
        response = self.post(path, {"amount": amount, "card_number": CARD})
        assert response.status_code == 201, response.text

    def balance(self) -> int:
        accounts = self.client.get("/api/accounts").json()
        return int(accounts[0]["balance"])

    def session_order_ids(self) -> list[int]:
        response = self.client.get("/api/session")
        assert response.status_code == 200, response.text
        return list(response.json()["order_ids"])


def customers(clients: Clients, count: int) -> list[Customer]:
    return concurrently(Customer, [clients] * count)


def concurrently(job: Callable[[A], T], items: Iterable[A]) -> list[T]:
    """``job`` of each item, CLIENTS at a time; an exception in any is raised here."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(job, items))


def add_product(clients: Clients, price: int, stock: int) -> int:
    """The administrator (serving.ADMIN) adds a product; its id."""
    admin = clients.new()
    token = admin.post("/api/session", json=ADMIN).json()["csrf_token"]
    response = admin.post(
        "/api/products",
        json={
            "sku": f"sku-{uuid.uuid4().hex[:10]}",
            "name": "Lamp",
            "price": price,
            "stock": stock,
        },
        headers={"X-CSRF-Token": token},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def stock_of(clients: Clients, product_id: int) -> int:
    products = clients.new().get("/api/products").json()
    return next(int(p["stock"]) for p in products if p["id"] == product_id)
