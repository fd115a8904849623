"""A connection pool that serves waiting requests in the order they came.

SQLAlchemy's asyncio pool keeps its idle connections in an ``asyncio.Queue``. A connection
returned while requests wait wakes the first of them, but whoever asks before that waiter runs
(any request reaching its first statement in the same turn of the event loop) takes the
connection without waiting, and the woken request queues again at the back. Under a load that
keeps the pool busy a few requests lose that race again and again, and wait many times longer
than the median for a connection.

Here a returned connection goes straight to the request that has waited longest, never
through the queue, so a request that asks meanwhile finds nothing there and queues behind.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

T = TypeVar("T")


class FairQueue(AsyncAdaptedQueue[T]):
    """First come, first served: a returned item is handed to the longest waiter."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._waiters: deque[asyncio.Future[T]] = deque()
        self._waiting = 0
        #: called with the number of waiting requests whenever one starts or stops waiting
        self.on_waiting: Callable[[int], None] | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection now (counted, not looked up in the line: the
        metric's hook asks twice per wait)."""
        return self._waiting

    def put_nowait(self, item: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that gave up (timed out, cancelled) is skipped
                waiter.set_result(item)
                return
        super().put_nowait(item)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        # Nothing sits in the queue while someone waits (put_nowait hands it over), so an item
        # found here is one nobody was waiting for.
        try:
            return self.get_nowait()
        except Empty:
            if not block:
                raise
        return self._wait_in_line(timeout)

    def _wait_in_line(self, timeout: float | None) -> T:
        """Wait behind everyone already waiting, until an item is handed over."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await_(self._wait(waiter, timeout))

    def _report_waiting(self) -> None:
        if self.on_waiting is not None:
            self.on_waiting(self.waiting)

    async def _wait(self, waiter: asyncio.Future[T], seconds: float | None) -> T:
        self._waiting += 1
        self._report_waiting()
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # handed over as time ran out
                return waiter.result()
            raise Empty() from None
        except BaseException:
            # Cancelled (say, the client went away) just after the item was handed over:
            # give it to the next in line, or the pool would lose a connection for good.
            if waiter.done() and not waiter.cancelled():
                self.put_nowait(waiter.result())
            waiter.cancel()
            raise
        finally:
            self._waiting -= 1
            self._report_waiting()


class TurnTakingQueue(FairQueue[T]):
    """First come, first served, and at most one item taken per turn of the event loop.

    For a pool of one connection whose every use runs without yielding to the loop (a SQLite
    writer whose statements run on the loop): handed from one request to the next within a
    turn, it would let a single turn run every waiting request's transaction back to back,
    and the loop would look at its sockets only between such turns. A server under load then
    takes many seconds to read a new connection's first request. Here a request that asks
    after the connection was taken in this turn waits for the next one, as if the connection
    were busy, so each turn runs at most one transaction and the loop polls in between.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._taken_this_turn = False

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        if self._taken_this_turn:
            if not block:
                raise Empty()
            item = self._wait_in_line(timeout)
        else:
            item = super().get(block, timeout)
        self._taken()
        return item

    def _taken(self) -> None:
        if not self._taken_this_turn:
            self._taken_this_turn = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """The turn after one that took an item: hand what waits in the queue to a waiter."""
        self._taken_this_turn = False
        if self._waiters:
            try:
                item = self.get_nowait()
            except Empty:
                return
            self.put_nowait(item)  # to the first waiter still waiting, or back in the queue


class FairAsyncAdaptedQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool, with its waiters served in arrival order."""

    _queue_class: Any = FairQueue

    @property
    def waiting_queue(self) -> FairQueue[Any]:
        """The queue of idle connections and waiting requests (see :attr:`FairQueue.on_waiting`)."""
        queue = self._pool
        assert isinstance(queue, FairQueue)
        return queue


class TurnTakingPool(FairAsyncAdaptedQueuePool):
    """The fair pool, with at most one checkout per turn of the event loop (see
    :class:`TurnTakingQueue`): for a SQLite file's writer engine."""

    _queue_class: Any = TurnTakingQueue
