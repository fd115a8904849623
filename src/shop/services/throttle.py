"""Log-in throttling shared by every process and host: failed log-ins are rows of the database.

Keys and limits. OWASP's Authentication Cheat Sheet asks that failures count against the
account, not only against the source address (a guesser has many addresses), and warns that a
lockout is itself a way to deny service. Three counts, each over the last ``window`` seconds:

- an e-mail from one address (``per_email_and_address``, small): guessing one password from
  one place. It blocks that address only: a stranger cannot lock the owner out from elsewhere;
- an e-mail from every address (``per_email``, larger): the same guessing spread over many
  addresses. Locking an owner out this way takes failures from ``per_email /
  per_email_and_address`` addresses or more;
- an address for every e-mail (``per_address``, larger still): one client trying many accounts.
  Everyone behind that address (a NAT, a proxy ``shop serve`` is not told to trust) shares it,
  and no one else does.

The address is ``request.client.host``, which ``shop serve --forwarded-allow-ips`` takes from
``X-Forwarded-For`` when a trusted proxy sent it; an IPv6 client counts by its /64, since one
host usually has a whole /64 to pick addresses from.

A count at its limit blocks until enough of its failures are older than the window; the 429's
``Retry-After`` says when. An attempt refused while blocked is not counted, so knocking never
makes a block longer, and it is refused whatever the password (an answer that changed with the
password would tell a guesser when they hit). A successful log-in deletes its e-mail's failures
from its address, in the log-in's own transaction.

When a failure is written. The failed request's transaction rolls back (its 401 keeps nothing),
so the failure cannot be written in it; and not in a second write transaction while the request
runs either: on SQLite a process's write transactions share one connection
(``fastapi_atomic.engine.writer_engine``), which the log-in holds from its first query to its
end, so the second would wait for the first, that is for itself. The failure is written by a
hook of the request's unit of work (``on_rollback``, or ``on_commit`` should a route ever answer
a failure with a success), which runs once the request's transaction has ended and given its
connection back: a short transaction of its own, before the 401 leaves (rollback hooks run
before the response starts), so the client's next attempt always sees it.

One INSERT per failure: failures in several processes at once are all kept, none overwrites
another's count. Attempts in flight together may all be checked before any of them is written,
so a burst of parallel guesses can pass a limit by at most the number in flight. The same
transaction deletes failures older than the window, a bounded batch that skips rows another
transaction holds (``SKIP LOCKED`` on PostgreSQL): the table keeps about one window of failures,
and purging never waits for a row lock nor deadlocks with a log-in clearing its failures.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, bindparam, delete, insert, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from fastapi_atomic import UnitOfWork, atomic
from shop.db.models import LoginFailure, table
from shop.errors import TooManyAttempts

#: rows older than the window deleted by each failure written (a backlog goes over several)
PURGE_BATCH = 100

_failures = table(LoginFailure)
_email, _address, _at = _failures.c.email, _failures.c.address, _failures.c.failed_at


@dataclass(frozen=True)
class LoginLimits:
    """Failures allowed within ``window`` seconds before a 429, by what they share."""

    per_email_and_address: int
    per_email: int
    per_address: int
    window: float


class LoginBlocked(TooManyAttempts):
    """A 429 that knows when it ends: ``retry_after`` whole seconds from now."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("Too many failed log-in attempts; try again later.")
        self.retry_after = max(1, math.ceil(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


def address_key(host: str) -> str:
    """The client address as failures are counted: an IPv6 address's /64, an IPv4 address
    itself, anything else (a proxy's odd value) cut to the column's length."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def block_end(newest_first: Sequence[float], limit: int, window: float) -> float | None:
    """When a count ends its block: once its ``limit``-th newest failure leaves the window.
    None if fewer than ``limit`` failures are recent (``newest_first`` holds recent ones)."""
    if len(newest_first) < limit:
        return None
    return newest_first[limit - 1] + window


def _recent(name: str, where: ColumnElement[bool], limit: int) -> Select[tuple[str, float]]:
    """The ``limit`` newest failures within the window that match ``where``, labelled."""
    return (
        select(literal(name).label("key"), _at)
        .where(where, _at > bindparam("horizon"))
        .order_by(_at.desc())
        .limit(limit)
    )


class LoginThrottle:
    """Counts failed log-ins in the app's database; one per app, shared by its requests."""

    def __init__(
        self, engine: AsyncEngine, limits: LoginLimits, *, clock: Callable[[], float] = time.time
    ) -> None:
        #: wall-clock seconds: every process and host compares the same timestamps
        self.engine, self.limits, self.clock = engine, limits, clock
        # Each count reads at most its limit of rows: its block ends with the last of them.
        counts = {
            "email_and_address": (
                (_email == bindparam("email")) & (_address == bindparam("address")),
                limits.per_email_and_address,
            ),
            "email": (_email == bindparam("email"), limits.per_email),
            "address": (_address == bindparam("address"), limits.per_address),
        }
        self._limits = {name: limit for name, (_, limit) in counts.items()}
        recent = [_recent(name, where, limit).subquery() for name, (where, limit) in counts.items()]
        self._select = union_all(*(select(*query.c) for query in recent))
        self._insert = insert(_failures)
        expired = (
            select(_failures.c.id)
            .where(_at <= bindparam("horizon"))
            .order_by(_at)
            .limit(PURGE_BATCH)
            .with_for_update(skip_locked=True)
        )
        self._purge = delete(_failures).where(_failures.c.id.in_(expired.scalar_subquery()))
        self._forget = delete(_failures).where(
            _email == bindparam("email"), _address == bindparam("address")
        )

    async def check(self, db: AsyncSession, email: str, address: str) -> None:
        """Raise :class:`LoginBlocked` if any count of this e-mail and address is at its limit."""
        now = self.clock()
        rows = await db.execute(
            self._select,
            {"email": email, "address": address_key(address), "horizon": now - self.limits.window},
        )
        recent: dict[str, list[float]] = {name: [] for name in self._limits}
        for name, failed_at in rows:
            recent[name].append(failed_at)
        window = self.limits.window
        ends = [
            block_end(sorted(recent[name], reverse=True), limit, window)
            for name, limit in self._limits.items()
        ]
        blocked = [end for end in ends if end is not None]
        if blocked:
            raise LoginBlocked(max(blocked) - now)

    def count_failure(self, uow: UnitOfWork, email: str, address: str) -> None:
        """Write this failure once the request's transaction has ended, however it ends."""

        async def write() -> None:
            await self.failed(email, address)

        uow.on_rollback(write)
        uow.on_commit(write)

    async def failed(self, email: str, address: str) -> None:
        """Write a failure in a transaction of its own, and delete some expired ones."""
        now = self.clock()
        async with atomic(self.engine) as uow:
            await uow.db.execute(
                self._insert, {"email": email, "address": address_key(address), "failed_at": now}
            )
            await uow.db.execute(self._purge, {"horizon": now - self.limits.window})

    async def succeeded(self, db: AsyncSession, email: str, address: str) -> None:
        """Forget this e-mail's failures from this address, with the log-in's transaction."""
        await db.execute(self._forget, {"email": email, "address": address_key(address)})
