"""FairQueue: the pool's idle connections, handed out in the order requests asked for them."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

from fastapi_atomic.pool import FairQueue, TurnTakingQueue


async def take(queue: AsyncAdaptedQueue[str], pool_timeout: float | None = 5.0) -> str:
    """What the pool does on checkout: a blocking get, from inside SQLAlchemy's greenlet."""
    item: str = await greenlet_spawn(queue.get, True, pool_timeout)
    return item


async def waiting(queue: FairQueue[str], count: int) -> None:
    """Until ``count`` takers are queued (a few turns of the loop)."""
    for _ in range(100):
        if queue.waiting >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} takers never queued")


async def test_an_idle_item_is_taken_at_once() -> None:
    queue: FairQueue[str] = FairQueue(2)
    queue.put_nowait("a")
    assert await take(queue) == "a"


async def test_a_returned_item_goes_to_the_longest_waiter() -> None:
    queue: FairQueue[str] = FairQueue(2)
    first = asyncio.create_task(take(queue))
    await waiting(queue, 1)
    second = asyncio.create_task(take(queue))
    await waiting(queue, 2)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert (await first, await second) == ("a", "b")


async def test_a_newcomer_does_not_overtake_a_waiter() -> None:
    """The race SQLAlchemy's own queue loses: returned, then asked for in the same turn."""
    queue: FairQueue[str] = FairQueue(2)
    waiter = asyncio.create_task(take(queue))
    await waiting(queue, 1)
    queue.put_nowait("a")  # a request gives its connection back...
    with pytest.raises(Empty):
        queue.get(block=False)  # ...and another, already running, asks at once
    assert await waiter == "a"


async def test_the_plain_queue_lets_a_newcomer_overtake() -> None:
    """What the pool replaces: this is why the woken waiter had to queue again."""
    queue: AsyncAdaptedQueue[str] = AsyncAdaptedQueue(2)
    waiter = asyncio.create_task(take(queue, pool_timeout=0.05))
    await asyncio.sleep(0.01)
    queue.put_nowait("a")
    assert queue.get(block=False) == "a"
    with pytest.raises(Empty):
        await waiter


async def test_a_waiter_that_times_out_raises_empty_and_is_skipped() -> None:
    queue: FairQueue[str] = FairQueue(2)
    with pytest.raises(Empty):
        await take(queue, pool_timeout=0.01)
    queue.put_nowait("a")
    assert queue.get(block=False) == "a"


async def test_a_waiter_cancelled_after_the_handover_passes_the_item_on() -> None:
    """A request cancelled (its client went away) must not take a connection with it."""
    queue: FairQueue[str] = FairQueue(2)
    doomed = asyncio.create_task(take(queue))
    await waiting(queue, 1)
    queue.put_nowait("a")  # handed to the doomed waiter, which has not run yet
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert queue.get(block=False) == "a"


async def test_a_waiter_cancelled_before_the_handover_is_skipped() -> None:
    queue: FairQueue[str] = FairQueue(2)
    doomed = asyncio.create_task(take(queue))
    await waiting(queue, 1)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    later = asyncio.create_task(take(queue))
    await waiting(queue, 1)
    queue.put_nowait("a")
    assert await later == "a"


async def test_the_waiting_count_is_reported_as_takers_start_and_stop_waiting() -> None:
    queue: FairQueue[str] = FairQueue(2)
    seen: list[int] = []
    queue.on_waiting = seen.append
    takers = [asyncio.create_task(take(queue)) for _ in range(2)]
    await waiting(queue, 2)
    assert queue.waiting == 2
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await asyncio.gather(*takers) == ["a", "b"]
    assert queue.waiting == 0
    assert seen[:2] == [1, 2] and seen[-1] == 0


class Turns:
    """Counts the turns of the event loop: a callback that schedules itself once per turn."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_turn_taking_hands_out_its_item_once_per_turn_of_the_loop() -> None:
    """Three requests each take the connection and give it back without yielding (a SQLite
    writer's transaction on the loop): each gets it in a turn of its own, in the order they
    asked, and nothing waits for a turn that never comes."""
    queue: TurnTakingQueue[str] = TurnTakingQueue(1)
    queue.put_nowait("writer")
    turns = Turns()
    served: list[tuple[str, int]] = []

    async def use(name: str) -> None:
        item = await take(queue)
        served.append((name, turns.count))
        queue.put_nowait(item)  # the whole transaction, in this same turn

    try:
        await asyncio.gather(*(use(name) for name in "ABC"))
    finally:
        turns.stop()
    assert [name for name, _ in served] == ["A", "B", "C"]
    served_turns = [turn for _, turn in served]
    assert len(set(served_turns)) == 3, served
    assert queue.get_nowait() == "writer"


async def test_turn_taking_refuses_a_second_non_blocking_take_in_the_same_turn() -> None:
    queue: TurnTakingQueue[str] = TurnTakingQueue(1)
    queue.put_nowait("writer")
    item = queue.get(block=False)
    queue.put_nowait(item)
    with pytest.raises(Empty):
        queue.get(block=False)
    await asyncio.sleep(0)  # the next turn
    await asyncio.sleep(0)
    assert queue.get(block=False) == "writer"
