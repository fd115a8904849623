"""The web-session state machine on the memory store."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from websession_model import WebSessionMachine

from fastapi_atomic import create_engine
from fastapi_atomic.websession import MemoryStore


class MemoryMachine(WebSessionMachine):
    make_store = staticmethod(MemoryStore)
    make_engine = staticmethod(lambda: create_engine("sqlite+aiosqlite://"))


TestMemoryStoreAgainstTheModel = MemoryMachine.TestCase
TestMemoryStoreAgainstTheModel.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
