"""Web sessions in Redis: TTLs, a per-user index, versioned compare-and-set.

Writes happen before the database COMMIT and are undone (again by compare-and-set, so a newer
write by another request is never clobbered) if that COMMIT fails.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from ...exceptions import ServiceUnavailable
from ...unit_of_work import UnitOfWork
from ..cache import DELETED, RecordCache, message
from ..feeds import RedisFeed
from ..record import SessionRecord
from .base import WebSessionStore

T = TypeVar("T")

# KEYS[1] the record; ARGV: expected version ("" = must not exist), new JSON, TTL ms,
# the channel to PUBLISH the change on ("" = none) and the message (see cache.message)
_CAS = """
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
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""


class RedisStore(WebSessionStore):
    """``cache=True`` answers reads from memory, every write PUBLISHing its key to evict it
    in every process (see :mod:`..cache`)."""

    def __init__(
        self, redis: Redis, *, prefix: str = "websession:", cache: bool | RecordCache = False
    ) -> None:
        super().__init__()
        self.redis = redis
        self.prefix = prefix
        self.channel = f"{prefix}changed"
        self.cache = RecordCache.from_option(cache)
        self._feed = RedisFeed(self.cache, redis, self.channel) if self.cache is not None else None
        self._cas = redis.register_script(_CAS)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "websession:", cache: bool | RecordCache = False
    ) -> RedisStore:
        client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return cls(client, prefix=prefix, cache=cache)

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
        result: Any = await self._call(
            lambda: self._cas(keys=[self._key(key)], args=[version, payload, ttl, channel, change])
        )
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
