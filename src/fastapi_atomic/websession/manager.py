"""WebSessionManager: the web-session settings; it opens each request's WebSession."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

from starlette.requests import cookie_parser
from starlette.types import Scope

from ..exceptions import ConfigurationError
from ..unit_of_work import SqlAlchemyUnitOfWork
from .record import SessionRecord
from .session import WebSession
from .signing import KeyRing
from .stores.base import WebSessionStore

#: where the request's WebSession is kept in the ASGI scope, once a route asked for it
WEBSESSION = "fastapi_atomic.websession"


class WebSessionManager:
    """Pass it to the middleware: ``app.add_middleware(AtomicMiddleware, engine=engine,
    websessions=manager)``; its store then starts and stops with the app.

    Timeouts follow the OWASP Session Management Cheat Sheet: an idle timeout and an absolute
    timeout, both checked on the server; the cookie has no Max-Age. A request writes its
    session's ``last_seen_at`` only once per ``touch_interval`` (a write per request would make
    every page view a database write), so the stored time lags the last request by up to that
    interval; the idle allowance counts it in. A session thus ends no sooner than
    ``idle_timeout`` after its last request, and no later than one touch interval after that.
    """

    def __init__(
        self,
        store: WebSessionStore,
        keys: KeyRing | Sequence[str],
        *,
        cookie_name: str = "session",
        idle_timeout: float = 1800,
        absolute_timeout: float = 43200,
        touch_interval: float = 60,
        secure: bool = True,
        samesite: Literal["lax", "strict"] = "lax",
        host_prefix: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if host_prefix and not secure:
            raise ConfigurationError("A __Host- cookie must be Secure: set secure=True.")
        self.store = store
        self.keys = keys if isinstance(keys, KeyRing) else KeyRing(keys)
        self.cookie_name = f"__Host-{cookie_name}" if host_prefix else cookie_name
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.touch_interval = min(touch_interval, idle_timeout / 2)
        self.secure = secure
        self.samesite = samesite
        self.clock = clock
        #: how long after its stored ``last_seen_at`` a session stays alive
        self.idle_allowance = idle_timeout + self.touch_interval
        store.configure(
            idle_timeout=self.idle_allowance, absolute_timeout=absolute_timeout, clock=clock
        )

    def open(self, scope: Scope, uow: SqlAlchemyUnitOfWork) -> WebSession:
        """The request's WebSession, made on first use (not loaded yet): a request that never
        asks for it pays nothing, not even parsing its cookie."""
        found = scope.get(WEBSESSION)
        if isinstance(found, WebSession):
            return found
        cookie: str | None = None
        user_agent = ""
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                cookie = cookie_parser(value.decode("latin-1")).get(self.cookie_name, cookie)
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        websession = WebSession(self, uow, cookie, user_agent)
        scope[WEBSESSION] = websession
        uow._before_commit(websession._save)
        uow._keep_private()
        return websession

    def expires_at(self, record: SessionRecord) -> float:
        return record.expires_at(self.idle_allowance, self.absolute_timeout)

    def is_expired(self, record: SessionRecord) -> bool:
        return self.expires_at(record) <= self.clock()

    def _cookie_attributes(self) -> str:
        secure = "; Secure" if self.secure else ""
        return f"Path=/; HttpOnly; SameSite={self.samesite.capitalize()}{secure}"

    def cookie_header(self, session_id: str) -> str:
        # No Max-Age/Expires: a non-persistent cookie, as OWASP advises for session ids; the
        # server alone decides when the session is dead.
        return f"{self.cookie_name}={self.keys.sign(session_id)}; {self._cookie_attributes()}"

    def clear_cookie_header(self) -> str:
        return f'{self.cookie_name}=""; Max-Age=0; {self._cookie_attributes()}'
