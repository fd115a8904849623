"""Web sessions in Redis: TTLs, a per-user index, versioned compare-and-set.

Writes happen before the database COMMIT and are undone (again by compare-and-set, so a newer
write by another request is never clobbered) if that COMMIT fails.

Every command the store sends is safe to send twice, so a client made with
:meth:`RedisStore.client_options` sends a command once more, on a new connection, when its
pooled one turns out closed (a Redis restart, a CLIENT KILL, an idle timeout): the first request
after a restart is answered, not a 503. Why each is safe:

- GET, MGET, SMEMBERS, PING, SCRIPT LOAD: they change nothing;
- SREM, and SADD with EXPIRE: the second leaves the set as the first did (the TTL restarts);
- DEL with PUBLISH: deleting twice is deleting once; the second "<key> -" evicts nothing more;
- the compare-and-set script: not by itself (run twice, its second run fails the version check
  against its own write, and a save would replay its changes, an append twice), so each run
  carries a write id and leaves a receipt under it: a run that finds its receipt answers 1.

A timeout is not retried: a server that did not answer within ``socket_timeout`` is hung or
overloaded, and a second wait would only double the time to the 503.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from ...exceptions import ServiceUnavailable
from ...unit_of_work import UnitOfWork
from ..cache import DELETED, RecordCache, message
from ..feeds import RedisFeed
from ..record import SessionRecord
from .base import WebSessionStore

T = TypeVar("T")

#: how long a write's receipt is kept: a retry follows its first attempt within a reconnect, and
#: the receipts of a busy app must not pile up
RECEIPT_TTL_MS = 60_000

# KEYS[1] the record, KEYS[2] this write's receipt; ARGV: expected version ("" = must not exist),
# new JSON ("" = delete), TTL ms, the channel to PUBLISH the change on ("" = none), the message
# (see cache.message), the receipt's TTL ms. A run that finds its receipt is a retry of a run that
# wrote (its answer lost with the connection): it answers 1 again and writes nothing.
_CAS = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
else
  if not current then return -1 end
  if tostring(cjson.decode(current)['version']) ~= ARGV[1] then return 0 end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[6])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""


class RedisStore(WebSessionStore):
    """``cache=True`` answers reads from memory, every write PUBLISHing its key to evict it
    in every process (see :mod:`..cache`).

    ``feed_timeout``: how long the cache's feed may hear nothing from Redis (its PINGs
    unanswered) before the cache stops serving from memory; a hung Redis cannot tell it of a
    logout. The client is used as given: build it with :meth:`client_options` (as
    :meth:`from_url` does) for the retry and the timeouts.
    """

    kind = "redis"

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "websession:",
        cache: bool | RecordCache = False,
        feed_timeout: float = 3.0,
    ) -> None:
        super().__init__()
        self.redis = redis
        self.prefix = prefix
        self.channel = f"{prefix}changed"
        self.cache = RecordCache.from_option(cache)
        self._feed = (
            RedisFeed(self.cache, redis, self.channel, timeout=feed_timeout)
            if self.cache is not None
            else None
        )
        self._cas = redis.register_script(_CAS)

    @staticmethod
    def client_options(timeout: float = 2.0) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis`` (or ``Redis.from_url``).

        ``timeout`` bounds each connect and each answer: a hung Redis is a 503 after that long,
        not a hang. A command that fails with a ConnectionError (its pooled connection closed by
        the server) is sent once more, on a new connection: whether the server ran it cannot be
        told, and every command of the store may run twice (see the module's docstring).
        """
        retry = Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,))
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "websession:",
        cache: bool | RecordCache = False,
        timeout: float = 2.0,
        feed_timeout: float = 3.0,
        **options: Any,
    ) -> RedisStore:
        """A store with a client of its own, made with :meth:`client_options`; ``options`` go
        to ``Redis.from_url`` as well (``client_name=``, ``max_connections=``...)."""
        client = Redis.from_url(url, **(cls.client_options(timeout) | options))
        return cls(client, prefix=prefix, cache=cache, feed_timeout=feed_timeout)

    @classmethod
    def from_sentinels(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        url: str | None = None,
        prefix: str = "websession:",
        cache: bool | RecordCache = False,
        timeout: float = 2.0,
        feed_timeout: float = 3.0,
        **options: Any,
    ) -> RedisStore:
        """A store whose client asks the Sentinels which server is the master of
        ``service_name``, and asks again when a connection breaks or the server it reached
        has become a replica: after a failover, the next command reaches the new master.

        ``url`` (``redis://user:password@/2``) gives only the database, user and password:
        the host is the Sentinels' answer.
        """
        from redis.asyncio.sentinel import Sentinel

        connection = _url_credentials(url) if url is not None else {}
        client_options = cls.client_options(timeout) | connection | options
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            **client_options,
        )
        client = sentinel.master_for(service_name)
        return cls(client, prefix=prefix, cache=cache, feed_timeout=feed_timeout)

    # --- the store contract --------------------------------------------------------------

    async def read(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        raw = await self._call(lambda: self.redis.get(self._key(key)))
        return SessionRecord.from_json(raw) if raw is not None else None

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        if await self._swap(key, None, record) != 1:
            raise RuntimeError("a fresh session id was already in use")
        if record.user_id is not None:
            await self._index(record.user_id, key)
        self.cache_on_commit(uow, key, record)
        uow.on_rollback(self._undoer(key, record, None))

    async def compare_and_set(
        self, key: str, expected: SessionRecord, new: SessionRecord, uow: UnitOfWork
    ) -> bool:
        if await self._swap(key, expected, new) != 1:
            return False
        uow.on_rollback(self._undoer(key, new, expected))
        return True

    async def delete(self, key: str, uow: UnitOfWork) -> None:
        old = await self.read(key, uow)
        if old is None:
            return
        await self._call(lambda: self._delete(key))
        self.uncache_on_commit(uow, key)
        if old.user_id is not None:
            user_id = old.user_id
            await self._call(lambda: self.redis.srem(self._user_key(user_id), key))
        uow.on_rollback(lambda: self._restore(key, old))

    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        user_key = self._user_key(user_id)
        members = sorted(
            m.decode() if isinstance(m, bytes) else str(m)
            for m in await self._call(lambda: self.redis.smembers(user_key))
        )
        if not members:
            return []
        raws = await self._call(lambda: self.redis.mget([self._key(k) for k in members]))
        found: list[tuple[str, SessionRecord]] = []
        dead: list[str] = []
        for key, raw in zip(members, raws, strict=True):
            if raw is None:
                dead.append(key)
            else:
                found.append((key, SessionRecord.from_json(raw)))
        if dead:
            await self._call(lambda: self.redis.srem(user_key, *dead))
        return found

    async def purge_expired(self, uow: UnitOfWork) -> int:
        """Nothing to do: every record carries a TTL, and Redis drops it when it runs out."""
        return 0

    async def ping(self) -> None:
        await self._call(lambda: self.redis.ping())

    async def start(self, engine: AsyncEngine) -> None:
        if self._feed is not None:
            await self._feed.start()

    async def aclose(self) -> None:
        if self._feed is not None:
            await self._feed.aclose()
        await self.redis.aclose()

    # --- Redis ---------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.prefix}s:{key}"

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}u:{user_id}"

    def _receipt_key(self) -> str:
        """Where a new write leaves its receipt: a name of its own, so that no other write
        (a later one of the same session) can take it over before a retry looks."""
        return f"{self.prefix}w:{secrets.token_hex(16)}"

    def _ttl_ms(self, record: SessionRecord) -> int:
        remaining = self.expires_at(record) - self.clock()
        return max(1, math.ceil(remaining * 1000))

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise ServiceUnavailable("The session store is unavailable; try again.") from exc

    async def _swap(
        self,
        key: str,
        expected: SessionRecord | None,
        new: SessionRecord | None,
        *,
        forward: bool = True,
    ) -> int:
        """Compare-and-set ``key`` from ``expected`` to ``new``; ``forward=False`` for an undo,
        which puts an older version back (its message then says no version)."""
        version = "" if expected is None else str(expected.version)
        payload = "" if new is None else new.to_json()
        ttl = self._ttl_ms(new) if new is not None else 0
        channel = self.channel if self.cache is not None else ""
        change = message(key, new.version if new is not None and forward else None)
        # One receipt for every attempt of this write: redis-py resends these very arguments.
        keys = [self._key(key), self._receipt_key()]
        args: list[str | int] = [version, payload, ttl, channel, change, RECEIPT_TTL_MS]
        result: Any = await self._call(lambda: self._cas(keys=keys, args=args))
        return int(result)

    def _undoer(
        self, key: str, written: SessionRecord, previous: SessionRecord | None
    ) -> Callable[[], Awaitable[None]]:
        async def undo() -> None:
            await self._swap(key, written, previous, forward=False)

        return undo

    async def _delete(self, key: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(key))
            if self.cache is not None:
                pipe.publish(self.channel, message(key, DELETED))
            await pipe.execute()

    async def _restore(self, key: str, old: SessionRecord) -> None:
        if await self._swap(key, None, old, forward=False) == 1 and old.user_id is not None:
            await self._index(old.user_id, key)

    async def _index(self, user_id: str, key: str) -> None:
        user_key = self._user_key(user_id)

        async def add() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(user_key, key)
                pipe.expire(user_key, math.ceil(self.absolute_timeout) + 60)
                await pipe.execute()

        await self._call(add)


def _url_credentials(url: str) -> dict[str, Any]:
    """The database, user and password of a ``redis://`` URL, for a client whose host comes
    from elsewhere (the Sentinels)."""
    from redis.asyncio.connection import parse_url

    parsed = parse_url(url)
    return {key: parsed[key] for key in ("db", "username", "password") if key in parsed}
