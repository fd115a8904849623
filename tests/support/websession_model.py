"""A hypothesis state machine that drives web sessions on a store against a simple model.

Two browsers log in and out, write, regenerate, log out other sessions and let time pass; after
every step each browser's cookie must load exactly the session the model says it has (or none).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic.unit_of_work import SqlAlchemyUnitOfWork
from fastapi_atomic.websession import WebSession, WebSessionManager, WebSessionStore

IDLE, ABSOLUTE = 100.0, 250.0
BROWSERS = st.integers(min_value=0, max_value=1)


@dataclass
class ModelSession:
    user: str | None
    data: dict[str, Any]
    started: float
    seen: float

    def alive(self, now: float) -> bool:
        return now < min(self.seen + IDLE, self.started + ABSOLUTE)


@dataclass
class Browser:
    cookie: str | None = None
    model: ModelSession | None = None


@dataclass
class World:
    now: float = 1_000_000.0
    browsers: list[Browser] = field(default_factory=lambda: [Browser(), Browser()])


class WebSessionMachine(RuleBasedStateMachine):
    """Subclass with ``make_store`` and ``make_engine`` set (see the tests)."""

    make_store: Callable[[], WebSessionStore]
    make_engine: Callable[[], AsyncEngine]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World()
        self.engine = self.make_engine()
        self.manager = WebSessionManager(
            self.make_store(),
            ["model-key-" + "m" * 30],
            idle_timeout=IDLE,
            absolute_timeout=ABSOLUTE,
            touch_interval=0,
            secure=False,
            clock=lambda: self.world.now,
        )

    def teardown(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()

    # --- one request -------------------------------------------------------------------

    def request(self, index: int, action: Callable[[WebSession], Any], commit: bool = True) -> Any:
        browser = self.world.browsers[index]

        async def run() -> Any:
            # What AtomicMiddleware does around a request, step by step.
            uow = SqlAlchemyUnitOfWork(self.engine)
            headers = [(b"cookie", f"session={browser.cookie}".encode())] if browser.cookie else []
            websession = self.manager.open({"type": "http", "headers": headers}, uow)
            await websession.load()
            result = action(websession)
            if hasattr(result, "__await__"):
                result = await result
            if commit:
                await uow._commit()
                message: dict[str, Any] = {"type": "http.response.start", "headers": []}
                uow._apply_response_headers(message, committed=True)
                for name, value in message["headers"]:
                    if name == b"set-cookie":
                        cookie = value.decode().split(";")[0].split("=", 1)[1]
                        browser.cookie = None if cookie == '""' else cookie
            else:
                await uow._rollback()
            await uow._close()
            return result

        return self.loop.run_until_complete(run())

    def live_model(self, index: int) -> ModelSession | None:
        browser = self.world.browsers[index]
        if browser.model is not None and not browser.model.alive(self.world.now):
            browser.model = None
        return browser.model

    def kill(self, model: ModelSession | None) -> None:
        """The session ``model`` is dead on the server: for every browser holding its cookie."""
        for browser in self.world.browsers:
            if model is not None and browser.model is model:
                browser.model = None

    def touched(self, index: int) -> None:
        model = self.live_model(index)
        if model is not None:
            model.seen = self.world.now

    # --- rules ---------------------------------------------------------------------------

    @rule(index=BROWSERS, user=st.sampled_from(["u1", "u2"]))
    def log_in(self, index: int, user: str) -> None:
        model = self.live_model(index)
        self.request(index, lambda ws: ws.login(user, {"user": user}))
        # A guest's data, or the same user's, is kept; another user's session starts empty.
        kept = model.data if model is not None and model.user in (None, user) else {}
        data = {**kept, "user": user}
        self.kill(model)
        self.world.browsers[index].model = ModelSession(user, data, self.world.now, self.world.now)

    @rule(index=BROWSERS, key=st.sampled_from(["a", "b"]), value=st.integers(0, 9))
    def write(self, index: int, key: str, value: int) -> None:
        model = self.live_model(index)
        self.request(index, lambda ws: ws.__setitem__(key, value))
        if model is None:  # a fresh anonymous session, with a new id
            model = ModelSession(None, {}, self.world.now, self.world.now)
            self.world.browsers[index].model = model
        model.data[key] = value
        model.seen = self.world.now

    @rule(index=BROWSERS, value=st.integers(0, 9))
    def append(self, index: int, value: int) -> None:
        model = self.live_model(index)
        self.request(index, lambda ws: ws.append("list", value))
        if model is None:
            model = ModelSession(None, {}, self.world.now, self.world.now)
            self.world.browsers[index].model = model
        model.data["list"] = [*model.data.get("list", []), value]
        model.seen = self.world.now

    @rule(index=BROWSERS)
    def write_then_fail(self, index: int) -> None:
        """A request that changes the session and then rolls back changes nothing."""
        self.request(index, lambda ws: ws.__setitem__("a", 99), commit=False)

    @rule(index=BROWSERS)
    def regenerate(self, index: int) -> None:
        model = self.live_model(index)
        if model is None:
            return
        self.request(index, lambda ws: ws.regenerate())
        self.kill(model)
        self.world.browsers[index].model = ModelSession(
            model.user, dict(model.data), model.started, self.world.now
        )

    @rule(index=BROWSERS)
    def log_out(self, index: int) -> None:
        model = self.live_model(index)
        if model is None:
            return
        self.request(index, lambda ws: ws.invalidate())
        self.kill(model)

    @rule(index=BROWSERS)
    def log_out_others(self, index: int) -> None:
        model = self.live_model(index)
        if model is None or model.user is None:
            return
        self.request(index, lambda ws: ws.invalidate_others())
        self.touched(index)
        for browser in self.world.browsers:
            other = browser.model
            if other is not None and other is not model and other.user == model.user:
                browser.model = None

    @rule(seconds=st.sampled_from([1.0, 30.0, 60.0, 99.0, 101.0, 200.0]))
    def time_passes(self, seconds: float) -> None:
        self.world.now += seconds

    @rule(index=BROWSERS)
    def replay_an_old_cookie(self, index: int) -> None:
        """Whatever cookie the other browser holds, this one may steal: it gets the same view."""
        other = 1 - index
        self.world.browsers[index].cookie = self.world.browsers[other].cookie
        model = self.live_model(other)
        self.world.browsers[index].model = model

    # --- the check -------------------------------------------------------------------------

    @invariant()
    def every_cookie_loads_what_the_model_says(self) -> None:
        for index in range(len(self.world.browsers)):
            model = self.live_model(index)
            seen = self.request(index, lambda ws: (ws.is_live, dict(ws), ws.user_id), commit=False)
            if model is None:
                assert seen[0] is False, f"browser {index} should have no session: {seen}"
            else:
                assert seen == (True, model.data, model.user), (index, seen, model)
