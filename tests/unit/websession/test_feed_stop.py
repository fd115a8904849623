"""A cache feed stops when asked, also when the request to stop reaches it as the timeout of
one of its own waits expires (asyncio.timeout on Python 3.11 then raises TimeoutError, and the
feed took that for a lost connection and subscribed again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi_atomic.websession.cache import RecordCache
from fastapi_atomic.websession.feeds import InvalidationFeed


class SwallowingFeed(InvalidationFeed):
    """Each subscription fails as a feed's timed-out wait does when a cancellation lands as its
    timeout: the CancelledError is gone, a connection error is raised in its place."""

    reconnect_delay = 0.01

    def __init__(self) -> None:
        super().__init__(RecordCache())
        self.subscriptions = 0
        self.cancel_next = asyncio.Event()

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        self.subscriptions += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("Redis did not answer") from None
        yield self._nothing()  # pragma: no cover - never reached

    async def _nothing(self) -> AsyncIterator[str]:  # pragma: no cover
        return
        yield ""


async def test_a_feed_whose_cancellation_became_an_error_stops_all_the_same() -> None:
    feed = SwallowingFeed()
    await feed.start(wait=0.05)
    task = feed._task
    assert task is not None
    await asyncio.sleep(0.05)  # subscribed, waiting
    await feed.aclose()
    assert task.done()
    await asyncio.sleep(0.1)
    assert feed.subscriptions == 1  # it did not subscribe again after being told to stop
