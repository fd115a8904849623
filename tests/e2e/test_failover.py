"""The shop on a high-availability data stack, under load, while the stack fails.

The stack (``tests/support/ha.py``, the distribution's own servers): PostgreSQL with a
synchronous streaming standby, PgBouncer in transaction pooling in front of it, and Redis with a
replica under three Sentinels. The shop: `shop serve --workers 2` through PgBouncer
(``SHOP_DB_TRANSACTION_POOLING``), its web-session cache listening past the pooler on a URL
that names both PostgreSQL servers (``SHOP_DATABASE_DIRECT_URL``).

Each test injects one failure while customers transfer money, order from their accounts and
read their web sessions, each from a thread of its own:

- the primary crashes (SIGKILL); two seconds later the standby is promoted and PgBouncer sent
  to it, as an operator's script (or Patroni) would;
- PgBouncer crashes and starts again a second later;
- the Redis master crashes and the Sentinels fail over to its replica;
- on a second stack, where Patroni (with etcd) runs the two PostgreSQL servers and the shop
  reaches them straight through a URL that names both (no PgBouncer), the leader's host dies
  (Patroni and PostgreSQL killed at once) and Patroni promotes the synchronous standby by
  itself.

What must hold: every request is answered, with what the contract names or a 503 (never a
500, never a broken connection, never a hang); ``/readyz`` says 503 while the data cannot be
reached and 200 again after; the service recovers by itself; a request answered 503 is sent
again with its ``Idempotency-Key`` once the stack is back, and then has its one outcome; and
nothing acknowledged is lost: balances and stock are exactly what the successful requests made
them, and every paid order's id is in its buyer's web session.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from ha import (
    PatroniCluster,
    PgBouncer,
    PostgresPair,
    RedisSentinels,
    patroni_missing,
    pgbouncer_missing,
    postgres_missing,
    redis_missing,
    temporary_workdir,
)
from installed import require_installed
from serving import ADMIN, Process, base_url, fake_gateway, shop_env, shop_server
from shop_clients import Clients, Customer, add_product, concurrently, customers, stock_of

CUSTOMERS = 6
DEPOSIT = 100_000
PRICE = 100
STOCK = 100_000
#: seconds of load before the failure, and after the stack is repaired
BEFORE, AFTER = 2.0, 4.0
#: the longest the shop may take to answer a write again once its data is back (the repair's
#: end: the promoted standby takes writes, PgBouncer restarted, Sentinel settled); a test may
#: give its own to ``under_load``
RECOVERY_BOUND = 10.0

#: the kinds of request that write (the load also reads sessions, and asks /readyz)
WRITES = ("transfer", "order")

#: how the shop reaches PostgreSQL: through PgBouncer in front of a PostgresPair whose
#: failover the test scripts, or straight to the two nodes of a PatroniCluster
Database = Literal["pgbouncer", "patroni"]


@dataclass
class Stack:
    workdir: Path
    shop: Process
    postgres: PostgresPair | None = None
    bouncer: PgBouncer | None = None
    patroni: PatroniCluster | None = None
    redis: RedisSentinels | None = None

    @property
    def url(self) -> str:
        return base_url(self.shop)


def require_stack(database: Database, store: str) -> None:
    """Skip (or, under CI, fail) a test whose stack is not installed."""
    if database == "patroni":
        missing = patroni_missing() or postgres_missing()
    else:
        missing = postgres_missing() or pgbouncer_missing()
    require_installed(missing or (redis_missing() if store == "redis" else None))


@contextlib.contextmanager
def stack(logs: Path, store: str = "sql", database: Database = "pgbouncer") -> Iterator[Stack]:
    """The data stack and the shop on it, all the test's own; everything stopped at the end.
    The shop's and the gateway's logs are kept in ``logs``. ``database``: PgBouncer over a
    PostgresPair (the shop in transaction pooling, its LISTEN past the pooler), or Patroni's
    two nodes, which the shop reaches straight through their multihost URL."""
    require_stack(database, store)
    with contextlib.ExitStack() as cleanup:
        workdir = cleanup.enter_context(temporary_workdir("failover-"))
        postgres = bouncer = patroni = None
        if database == "patroni":
            patroni = cleanup.enter_context(PatroniCluster(workdir))
            # Straight to the nodes: asyncpg tries both and keeps the one that takes writes.
            # No pooler, so the web-session cache's LISTEN goes the same way.
            database_url = patroni.multihost_url()
            extra: dict[str, str] = {}
        else:
            postgres = cleanup.enter_context(PostgresPair(workdir))
            bouncer = cleanup.enter_context(PgBouncer(workdir, backend_port=postgres.primary_port))
            database_url = bouncer.url()
            extra = {
                "SHOP_DB_TRANSACTION_POOLING": "true",
                "SHOP_DATABASE_DIRECT_URL": postgres.multihost_url(),
            }
        redis = None
        if store == "redis":
            redis = cleanup.enter_context(RedisSentinels(workdir))
            sentinels = ",".join(f"{host}:{port}" for host, port in redis.sentinels)
            extra |= {
                "SHOP_REDIS_SENTINELS": sentinels,
                "SHOP_REDIS_SENTINEL_SERVICE": redis.service_name,
            }
        gateway = fake_gateway(logs, latency_ms=0)
        cleanup.callback(gateway.kill)
        env = shop_env(
            database_url,
            SHOP_SESSION_STORE=store,
            SHOP_PAYMENT_GATEWAY=base_url(gateway.start()),
            SHOP_ADMIN_EMAIL=ADMIN["email"],
            SHOP_ADMIN_PASSWORD=ADMIN["password"],
            SHOP_DB_POOL_SIZE="5",
            **extra,
        )
        shop = shop_server(logs, env, workers=2)
        cleanup.callback(shop.stop)
        shop.start(timeout=60)
        yield Stack(workdir, shop, postgres, bouncer, patroni, redis)


@dataclass
class Request:
    """One POST of the load, and each answer it got (the first, then any retry by its key)."""

    kind: str  # "transfer" or "order"
    customer: Customer
    body: dict[str, Any]
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    answers: list[httpx.Response] = field(default_factory=list)

    @property
    def final(self) -> httpx.Response:
        return self.answers[-1]

    @property
    def pending(self) -> bool:
        """No outcome yet: come back later (503), or the key's first attempt is in progress
        (409 with Retry-After; a 409 without is the contract's refusal, an outcome)."""
        status = self.final.status_code
        return status == 503 or (status == 409 and "retry-after" in self.final.headers)

    def send(self) -> None:
        path = "/api/transfers" if self.kind == "transfer" else "/api/orders"
        self.answers.append(self.customer.post(path, self.body, key=self.key))


@dataclass
class Load:
    """Customers' requests from a thread each, and /readyz asked every 0.1 s, until stopped.
    Every answer is noted with the time it came."""

    url: str
    customers: list[Customer]
    product_id: int
    requests: list[Request] = field(default_factory=list)
    #: (time, "read" / "transfer" / "order" / "readyz", status or the transport error's name)
    answers: list[tuple[float, str, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for number, customer in enumerate(self.customers):
            thread = threading.Thread(target=self._customer, args=(customer, number), daemon=True)
            self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._readiness, daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a request hung"

    def _note(self, kind: str, outcome: int | str) -> None:
        with self._lock:
            self.answers.append((time.monotonic(), kind, outcome))

    def _customer(self, customer: Customer, seed: int) -> None:
        chance = random.Random(seed)
        others = [c.account_id for c in self.customers if c is not customer]
        while not self._stop.is_set():
            kind = chance.choice(["transfer", "order", "read"])
            outcome: int | str
            try:
                if kind == "read":
                    outcome = customer.client.get("/api/session").status_code
                else:
                    request = Request(kind, customer, self._body(kind, customer, others, chance))
                    with self._lock:
                        self.requests.append(request)
                    request.send()
                    outcome = request.final.status_code
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            self._note(kind, outcome)
            if outcome == 503:
                time.sleep(0.05)  # as a client told to come back would, a little

    def _body(
        self, kind: str, customer: Customer, others: list[int], chance: random.Random
    ) -> dict[str, Any]:
        if kind == "transfer":
            return {
                "from_account_id": customer.account_id,
                "to_account_id": chance.choice(others),
                "amount": chance.randint(1, 500),
            }
        return {
            "items": [{"product_id": self.product_id, "quantity": chance.randint(1, 3)}],
            "payment": {"method": "account", "account_id": customer.account_id},
        }

    def _readiness(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    self._note("readyz", client.get("/readyz").status_code)
                except httpx.TransportError as exc:
                    self._note("readyz", type(exc).__name__)
                time.sleep(0.1)

    def settle(self, timeout: float = 30) -> int:
        """Send every request without an outcome (a 503, or a 409 for its key still in
        progress) again, by its key, as a client would, until it has one; how many were."""
        unsettled = [r for r in self.requests if r.pending]
        deadline = time.monotonic() + timeout
        pending = unsettled
        while pending:
            assert time.monotonic() < deadline, [r.final.text for r in pending]
            concurrently(Request.send, pending)
            pending = [r for r in pending if r.pending]
            time.sleep(0.2 if pending else 0)
        return len(unsettled)


@dataclass
class Shop:
    """The customers and the product of a test, and what they had at the start."""

    clients: Clients
    customers: list[Customer]
    product_id: int


def open_shop(url: str, cleanup: contextlib.ExitStack) -> Shop:
    clients = Clients(url)
    cleanup.callback(clients.close)
    product_id = add_product(clients, price=PRICE, stock=STOCK)
    people = customers(clients, CUSTOMERS)
    concurrently(lambda customer: customer.deposit(DEPOSIT), people)
    return Shop(clients, people, product_id)


def under_load(
    shop: Shop,
    url: str,
    fail: Callable[[], object],
    repair: Callable[[], object],
    recovery_bound: float = RECOVERY_BOUND,
) -> Report:
    """Load, then ``fail()``, then ``repair()``, then load again; the report of it all, whose
    checks give the shop ``recovery_bound`` seconds from the repair's end to recover."""
    load = Load(url, shop.customers, shop.product_id)
    load.start()
    try:
        time.sleep(BEFORE)
        failed_at = time.monotonic()
        fail()
        repair()
        repaired_at = time.monotonic()
        time.sleep(AFTER)
    finally:
        load.stop()
    return Report(load, failed_at, repaired_at, load.settle(), recovery_bound)


@dataclass
class Report:
    load: Load
    failed_at: float
    repaired_at: float
    sent_again: int
    recovery_bound: float = RECOVERY_BOUND

    def of(self, kind: str) -> list[tuple[float, int | str]]:
        return [(at, outcome) for at, k, outcome in self.load.answers if k == kind]

    def check_answers(self) -> None:
        """Every answer one the contract names, or a 503; some 503s (the failure was felt)."""
        outcomes = Counter(outcome for _, _, outcome in self.load.answers)
        assert set(outcomes) <= {200, 201, 409, 503}, outcomes  # no 500, no broken connection
        assert outcomes[503] > 0, outcomes

    def check_readiness(self) -> None:
        """/readyz said 503 once the data was out of reach, then 200 within the bound of the
        repair, and stayed so.

        A 503 may come after the repair: a readiness check sent during the outage waits up to
        its own timeout (2 s) for the database, about as long as the outage itself."""
        since = [(at, s) for at, s in self.of("readyz") if at >= self.failed_at]
        unready = [at for at, s in since if s == 503]
        assert unready, since
        back = [at for at, s in since if s == 200 and at > unready[-1]]
        assert back and back[0] - self.repaired_at < self.recovery_bound, since
        assert all(s == 200 for at, s in since if at >= back[0]), since  # and stays so

    def recovery(self) -> float:
        """Seconds from the repair to the first write answered 201 after it."""
        writes = [
            at
            for at, kind, status in self.load.answers
            if kind in WRITES and status == 201 and at > self.repaired_at
        ]
        assert writes, "no write succeeded after the repair"
        return writes[0] - self.repaired_at

    def longest_gap(self) -> float:
        """The longest time between two writes answered 201: the outage clients saw."""
        writes = sorted(
            at for at, kind, status in self.load.answers if kind in WRITES and status == 201
        )
        return max((b - a for a, b in itertools.pairwise(writes)), default=0.0)

    def check_nothing_lost(self, shop: Shop) -> None:
        """Balances, stock and web sessions are what the successful requests made them."""
        expected = {customer.account_id: DEPOSIT for customer in shop.customers}
        sold = 0
        paid: dict[int, list[int]] = {customer.account_id: [] for customer in shop.customers}
        for request in self.load.requests:
            answer = request.final
            assert answer.status_code in (201, 409), answer.text
            if answer.status_code != 201:
                continue
            if request.kind == "transfer":
                expected[request.body["from_account_id"]] -= request.body["amount"]
                expected[request.body["to_account_id"]] += request.body["amount"]
            else:
                quantity = request.body["items"][0]["quantity"]
                sold += quantity
                expected[request.customer.account_id] -= PRICE * quantity
                paid[request.customer.account_id].append(int(answer.json()["id"]))
        balances = {c.account_id: c.balance() for c in shop.customers}
        assert balances == expected
        assert stock_of(shop.clients, shop.product_id) == STOCK - sold
        for customer in shop.customers:
            assert sorted(customer.session_order_ids()) == sorted(paid[customer.account_id])

    def summary(self, name: str, workdir: Path) -> dict[str, Any]:
        outcomes = Counter(
            str(outcome) for _, kind, outcome in self.load.answers if kind != "readyz"
        )
        unready = [at for at, status in self.of("readyz") if status == 503]
        figures = {
            "failure": name,
            "requests": sum(outcomes.values()),
            "outcomes": dict(outcomes),
            "writes sent again by key": self.sent_again,
            "repair took s": round(self.repaired_at - self.failed_at, 2),
            "readyz 503 for s": round(max(unready) - min(unready), 2) if unready else 0,
            "longest time without a successful write s": round(self.longest_gap(), 2),
            "recovery after repair s": round(self.recovery(), 2),
        }
        print(json.dumps(figures))  # shown with -s; the note's figures come from here
        (workdir / f"failover-{name}.json").write_text(json.dumps(figures))
        return figures


def test_the_primary_crashes_and_the_standby_is_promoted(tmp_path: Path) -> None:
    with stack(tmp_path) as running, contextlib.ExitStack() as cleanup:
        postgres, bouncer = running.postgres, running.bouncer
        assert postgres is not None and bouncer is not None
        shop = open_shop(running.url, cleanup)

        def promote() -> None:
            time.sleep(2)  # the outage an operator's script or Patroni takes to decide
            port = postgres.promote()
            bouncer.retarget(port)

        report = under_load(shop, running.url, postgres.kill_primary, promote)
        report.check_answers()
        report.check_readiness()
        assert report.recovery() < RECOVERY_BOUND
        report.check_nothing_lost(shop)
        report.summary("primary", tmp_path)


def test_pgbouncer_crashes_and_starts_again(tmp_path: Path) -> None:
    with stack(tmp_path) as running, contextlib.ExitStack() as cleanup:
        bouncer = running.bouncer
        assert bouncer is not None
        shop = open_shop(running.url, cleanup)

        def start_again() -> None:
            time.sleep(1)
            bouncer.restart()

        report = under_load(shop, running.url, bouncer.daemon.kill, start_again)
        report.check_answers()
        report.check_readiness()
        assert report.recovery() < RECOVERY_BOUND
        report.check_nothing_lost(shop)
        report.summary("pgbouncer", tmp_path)


def test_the_redis_master_crashes_and_sentinel_fails_over(tmp_path: Path) -> None:
    with stack(tmp_path, "redis") as running, contextlib.ExitStack() as cleanup:
        assert running.redis is not None
        redis = running.redis
        shop = open_shop(running.url, cleanup)
        report = under_load(
            shop, running.url, lambda: redis.kill_master(), lambda: redis.wait_for_failover()
        )
        report.check_answers()
        report.check_readiness()
        assert report.recovery() < RECOVERY_BOUND
        report.check_nothing_lost(shop)
        report.summary("redis", tmp_path)


#: Patroni's repair ends when the promoted node takes writes; what is left is the shop's own:
#: connections to the dead leader found broken, new ones made through the multihost URL. The
#: same bound as the scripted failover's, whose repair ends at the same point (promoted and
#: PgBouncer retargeted): Patroni's detection time (its ``ttl``) falls before it, in the repair.
PATRONI_RECOVERY_BOUND = RECOVERY_BOUND
#: the longest Patroni may take to promote the standby after the leader's host dies: the
#: leader key outlives the host by up to ``ttl`` (5 s), then a promotion
PATRONI_FAILOVER_TIMEOUT = 20.0


def test_the_primary_host_dies_and_patroni_fails_over(tmp_path: Path) -> None:
    with stack(tmp_path, database="patroni") as running, contextlib.ExitStack() as cleanup:
        patroni = running.patroni
        assert patroni is not None
        shop = open_shop(running.url, cleanup)
        report = under_load(
            shop,
            running.url,
            patroni.kill_leader_host,
            lambda: patroni.wait_for_new_leader(timeout=PATRONI_FAILOVER_TIMEOUT),
            PATRONI_RECOVERY_BOUND,
        )
        report.check_answers()
        report.check_readiness()
        assert report.recovery() < report.recovery_bound
        report.check_nothing_lost(shop)
        report.summary("patroni", tmp_path)
