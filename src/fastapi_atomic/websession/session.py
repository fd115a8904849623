"""WebSession: the HTTP session of one request, a mapping that records its changes.

It loads on first use (no cookie, or no use, means no store read), is saved by the unit of work
just before its COMMIT, and sets a cookie only when its id changed: a new session, a login
(``regenerate``), or a cookie signed by a retiring key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from starlette.datastructures import MutableHeaders

from ..unit_of_work import SqlAlchemyUnitOfWork
from .record import JSON, Changes, SessionRecord, apply_ops
from .signing import new_session_id, store_key

if TYPE_CHECKING:
    from .manager import WebSessionManager


@dataclass(frozen=True)
class SessionInfo:
    """A live session of a user, as shown to them (never its secret id)."""

    id: str
    created_at: float
    last_seen_at: float
    user_agent: str
    current: bool


class WebSession(MutableMapping[str, JSON]):
    def __init__(
        self,
        manager: WebSessionManager,
        uow: SqlAlchemyUnitOfWork,
        cookie: str | None,
        user_agent: str,
    ) -> None:
        self._manager = manager
        self._uow = uow
        self.had_cookie = cookie is not None
        parsed = manager.keys.unsign(cookie) if cookie else None
        self._id: str | None = parsed[0] if parsed else None
        self._resign = bool(parsed and parsed[1])
        self._user_agent = user_agent
        self._loaded = False
        self._record: SessionRecord | None = None
        self._data: dict[str, JSON] = {}
        self._changes = Changes()
        self._created = False
        self._replaced_key: str | None = None
        self._invalidated = False
        self._cookie_action: Literal["set", "clear"] | None = None

    # --- loading -------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the session from the store, once. Dead or unknown ids count as no session."""
        if self._loaded:
            return
        self._loaded = True
        if self._id is None:
            return
        record = await self._manager.store.load(store_key(self._id), self._uow)
        if record is None or self._manager.is_expired(record):
            self._id = None
            return
        self._record = record
        self._data = dict(record.data)

    def _require_loaded(self) -> None:
        assert self._loaded, (
            "WebSession is not loaded: take it from the WebSessionDep dependency, "
            "or `await websession.load()` first."
        )

    @property
    def is_live(self) -> bool:
        """True when the request carries a valid session (or created one)."""
        self._require_loaded()
        return self._record is not None and not self._invalidated

    # --- the mapping ---------------------------------------------------------------------

    def __getitem__(self, key: str) -> JSON:
        self._require_loaded()
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        self._require_loaded()
        return iter(self._data)

    def __len__(self) -> int:
        self._require_loaded()
        return len(self._data)

    def __setitem__(self, key: str, value: JSON) -> None:
        self._record_op(("set", key, value))

    def __delitem__(self, key: str) -> None:
        self._require_loaded()
        if key not in self._data:
            raise KeyError(key)
        self._record_op(("delete", key, None))

    def append(self, key: str, value: JSON) -> None:
        """Append to a list; concurrent appends of one session all survive."""
        self._record_op(("append", key, value))

    def increment(self, key: str, by: int | float = 1) -> None:
        """Add to a number; concurrent increments of one session add up."""
        self._record_op(("increment", key, by))

    def _record_op(self, op: Any) -> None:
        self._require_loaded()
        self._ensure_record()
        self._changes.ops.append(op)
        self._data = apply_ops(self._data, [op])

    def _ensure_record(self) -> None:
        if self._record is None or self._invalidated:
            if self._invalidated and not self._created and self._id is not None:
                # Written to after a log-out (a "you are logged out" message): the new session
                # replaces the old one, which still dies with this request.
                self._replaced_key = store_key(self._id)
            self._record = self._fresh_record()
            self._data = {}
            self._changes = Changes()
            self._id = new_session_id()
            self._created = True
            self._invalidated = False

    def _fresh_record(self) -> SessionRecord:
        now = self._manager.clock()
        return SessionRecord(
            data={},
            created_at=now,
            last_seen_at=now,
            csrf_token=secrets.token_urlsafe(32),
            public_id=secrets.token_urlsafe(12),
            user_agent=self._user_agent[:200],
        )

    # --- identity ------------------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        self._require_loaded()
        return self._record.user_id if self.is_live and self._record else None

    @property
    def csrf_token(self) -> str | None:
        self._require_loaded()
        return self._record.csrf_token if self.is_live and self._record else None

    @property
    def expires_at(self) -> float | None:
        """When the session ends unless used again: as it will be once this request is saved
        (a request that writes, or whose touch is due, moves its idle clock to now)."""
        self._require_loaded()
        if not self.is_live or self._record is None:
            return None
        record = self._record
        now = self._manager.clock()
        if self._created or self._changes or self._touch_due(now):
            record = record.copy()
            record.last_seen_at = now
        return self._manager.expires_at(record)

    def _touch_due(self, now: float) -> bool:
        assert self._record is not None
        return now - self._record.last_seen_at >= self._manager.touch_interval

    def regenerate(self) -> None:
        """A new id and CSRF token, the data kept; the old id is dead once this commits."""
        self._require_loaded()
        if self._record is None or self._invalidated:
            self._ensure_record()
            return
        if not self._created and self._id is not None:
            self._replaced_key = store_key(self._id)
        data, old = dict(self._data), self._record
        self._record = self._fresh_record()
        # Same session, new id: its absolute clock keeps running (an anonymous session's from
        # created_at), or regenerating would be a way to live for ever.
        self._record.created_at = old.created_at
        self._record.user_id, self._record.authenticated_at = old.user_id, old.authenticated_at
        self._data = data
        self._changes = Changes([("set", key, value) for key, value in data.items()])
        self._id = new_session_id()
        self._created = True

    def login(self, user_id: str, data: dict[str, JSON] | None = None) -> None:
        """Regenerate (no fixation), then bind the session to ``user_id``.

        A guest's data is kept (a cart survives logging in), and so is the data of a session
        that was already ``user_id``'s. A session of another user is ended instead: its
        successor starts empty, so nothing of one user ever reaches another.
        """
        self._require_loaded()
        if self.user_id not in (None, str(user_id)):
            self._end_for_another_user()
        self.regenerate()
        assert self._record is not None
        self._record.user_id = str(user_id)
        self._record.created_at = self._record.authenticated_at = self._manager.clock()
        for key, value in (data or {}).items():
            self[key] = value

    def _end_for_another_user(self) -> None:
        if not self._created and self._id is not None:
            self._replaced_key = store_key(self._id)
        self._record, self._data, self._changes = None, {}, Changes()

    def invalidate(self) -> None:
        """Log out: the session is dead on the server once this commits."""
        self._require_loaded()
        self._invalidated = True

    async def list_sessions(self) -> list[SessionInfo]:
        """The live sessions of this session's user, oldest first."""
        user_id = self.user_id
        if user_id is None:
            return []
        current = store_key(self._id) if self._id else None
        records = await self._manager.store.list_for_user(user_id, self._uow)
        infos = [
            SessionInfo(
                id=record.public_id,
                created_at=record.created_at,
                last_seen_at=record.last_seen_at,
                user_agent=record.user_agent,
                current=key == current,
            )
            for key, record in records
            if not self._manager.is_expired(record)
        ]
        return sorted(infos, key=lambda info: (info.created_at, info.id))

    async def invalidate_others(self) -> int:
        """Every other session of this user is dead once this commits."""
        user_id = self.user_id
        if user_id is None:
            return 0
        keep = store_key(self._id) if self._id else None
        return await self._manager.store.delete_for_user(user_id, self._uow, keep=keep)

    # --- saving (the unit of work calls the underscored ones) ---------------------------

    async def flush(self) -> None:
        """Write the changes made so far now, in the request's transaction, not at COMMIT.

        For a route that takes its most contended row locks last: with the web session written
        first, such a lock is held across COMMIT alone. A rollback still undoes what was
        flushed; later changes are saved at COMMIT as usual. A session this request created,
        regenerated or invalidated is left for COMMIT, where those are handled together.
        """
        self._require_loaded()
        if self._created or self._invalidated or self._replaced_key is not None:
            return
        if self._record is None or self._id is None or not self._changes:
            return
        await self._write_changes(self._manager.clock())

    async def _write_changes(self, now: float) -> bool:
        """Replay this request's changes on the stored session; False if it is gone."""
        assert self._record is not None and self._id is not None
        changes, self._changes = self._changes, Changes()
        changes.touch = now
        store = self._manager.store
        saved = await store.update(store_key(self._id), changes, self._uow, current=self._record)
        if saved is None:
            return False  # destroyed meanwhile (logout elsewhere): never write it back
        store.counters.updated.inc()
        self._record = saved
        return True

    async def _save(self) -> None:
        if not self._loaded:
            return
        store, now = self._manager.store, self._manager.clock()
        if self._invalidated:
            if not self._created and self._id is not None:
                await store.delete(store_key(self._id), self._uow)
                store.counters.deleted.inc()
            if self._replaced_key is not None:
                await store.delete(self._replaced_key, self._uow)
                store.counters.deleted.inc()
            if self.had_cookie:
                self._set_cookie("clear")
            return
        if self._record is None or self._id is None:
            return
        if self._created:
            record = self._record.copy()
            record.data = dict(self._data)
            record.last_seen_at = now
            if self._replaced_key is not None:
                await store.delete(self._replaced_key, self._uow)
                store.counters.deleted.inc()
            await store.create(store_key(self._id), record, self._uow)
            store.counters.created.inc()
            self._set_cookie("set")
            return
        if (self._changes or self._touch_due(now)) and not await self._write_changes(now):
            return
        if self._resign:
            self._set_cookie("set")

    def _set_cookie(self, action: Literal["set", "clear"]) -> None:
        """Answer with a Set-Cookie: most responses need none, and build no headers object."""
        self._cookie_action = action
        self._uow._on_response_headers(self._apply_headers)

    def _apply_headers(self, headers: MutableHeaders) -> None:
        if self._cookie_action is None:
            return
        if self._cookie_action == "set" and self._id is not None:
            headers.append("set-cookie", self._manager.cookie_header(self._id))
        else:
            headers.append("set-cookie", self._manager.clear_cookie_header())
            headers["clear-site-data"] = '"cookies"'
        headers["cache-control"] = "no-store"
