"""A fault-injecting TCP proxy: the network between the code under test and its servers.

Tests point a client (a SQLAlchemy engine, a Redis client) at :attr:`FaultProxy.port` instead
of the server, then change what the network does while requests are in flight:

- :meth:`~FaultProxy.pass_through` forwards everything (and ends every fault below);
- :meth:`~FaultProxy.refuse` closes new connections at once (a server that is down);
- :meth:`~FaultProxy.cut_all` cuts every open connection now, on both sides;
- :meth:`~FaultProxy.cut_after_bytes` cuts a connection once its client sent N more bytes;
- :meth:`~FaultProxy.cut_on` cuts a connection whose client bytes contain a marker (say
  ``b"COMMIT"``), either before forwarding that packet (the server never sees it) or right
  after forwarding it and before any answer comes back (the server acts, the client never
  learns the outcome);
- :meth:`~FaultProxy.delay` holds each chunk, in both directions, for D seconds (or a random
  time in a range): a slow network;
- :meth:`~FaultProxy.hang` accepts connections and forwards nothing, until the fault is lifted
  (then the held bytes flow, as after a network partition that healed) or the connections are
  cut; :meth:`~FaultProxy.hang_on` starts that hang the moment a client sends a marker (that
  packet held as well).

Only connections made through the proxy are touched: a cut closes the proxy's own two sockets,
and the server sees an ordinary client going away.

The proxy runs in the test's event loop (``async with FaultProxy(host, port) as proxy``), or
in a thread with its own loop (:meth:`FaultProxy.in_thread`) when the code under test runs in
another process or loop; every control method may be called from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

#: bytes read from a socket at once
CHUNK = 65536


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    HANG = "hang"


@dataclass
class _CutRule:
    """Cut a connection when its client's bytes reach a count or contain a marker."""

    marker: bytes | None
    after_bytes: int | None
    forward: bool
    #: how many more connections to cut; None: every matching one
    remaining: int | None
    #: matches to let through before the first cut
    skip: int = 0
    #: refuse new connections once it cut one (a server that died right after)
    and_refuse: bool = False
    #: client bytes each connection had sent when the rule was armed
    baseline: dict[int, int] = field(default_factory=dict)


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, number: int, client: asyncio.StreamWriter) -> None:
        self.number = number
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        #: bytes the client sent through the proxy so far
        self.client_bytes = 0
        #: the last bytes of the client's stream, so a marker split across chunks is found
        self.tail = b""
        #: the client's latest chunk: what it waits for an answer to, if anything
        self.latest = b""
        #: set once the link is being cut: nothing more is forwarded either way
        self.cut = False
        #: set with ``cut``, for pumps that wait for a hang to end
        self.dead = asyncio.Event()

    def abort(self) -> None:
        """Cut both sides at once, with a reset (as a broken network or a dead peer does)."""
        self.cut = True
        self.dead.set()
        _reset(self.client)
        if self.server is not None:
            _reset(self.server)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listens on ``host`` (a free port), forwards to ``(target_host, target_port)``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        #: connections accepted, in total (refused ones included)
        self.connections = 0
        #: faults injected, by kind: "refused", "cut", "cut_after_bytes",
        #: "cut_before_forwarding", "cut_after_forwarding", "delayed", "hang" (by hang_on),
        #: "held" (chunks held by a hang), "target_unreachable"
        self.faults: Counter[str] = Counter()
        self._mode = Mode.PASS
        self._delay: tuple[float, float] = (0.0, 0.0)
        self._rules: list[_CutRule] = []
        self._hang_markers: list[bytes] = []
        self._links: dict[int, _Link] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rng = random.Random(0)

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and cut whatever is still open."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            link.abort()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2)
            for task in pending:  # still connecting to the target
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @classmethod
    def in_thread(cls, target_host: str, target_port: int) -> FaultProxy:
        """A started proxy whose loop runs in a thread of its own; :meth:`close` stops it."""
        proxy = cls(target_host, target_port)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(proxy.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(proxy.stop())
                loop.close()

        proxy._thread = threading.Thread(target=run, name=f"fault-proxy-{target_port}", daemon=True)
        proxy._thread.start()
        started.result(timeout=10)
        return proxy

    def close(self) -> None:
        """Stop a proxy made by :meth:`in_thread`, and wait for its thread."""
        assert self._thread is not None and self._loop is not None, "not started by in_thread()"
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # --- what the network does -------------------------------------------------------------

    @property
    def url_netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def active(self) -> int:
        """Connections open through the proxy now."""
        return len(self._links)

    def pass_through(self) -> None:
        """Forward everything: ends a refusal, a hang (held bytes then flow), delays and cuts."""

        def apply() -> None:
            self._mode = Mode.PASS
            self._delay = (0.0, 0.0)
            self._rules.clear()
            self._hang_markers.clear()
            assert self._flowing is not None
            self._flowing.set()

        self._on_loop(apply)

    def refuse(self) -> None:
        """Close every new connection at once (open ones are left alone: see cut_all)."""
        self._on_loop(lambda: self._set_mode(Mode.REFUSE))

    def hang(self) -> None:
        """Accept connections but forward nothing, either way, until the fault is lifted."""
        self._on_loop(lambda: self._set_mode(Mode.HANG))

    def hang_on(self, marker: bytes) -> None:
        """Hang (as :meth:`hang`) as soon as a client sends ``marker``, holding that packet."""
        assert marker, "an empty marker would match everything"
        self._on_loop(lambda: self._hang_markers.append(marker))

    def delay(self, seconds: float | tuple[float, float]) -> None:
        """Hold each chunk, both ways, ``seconds`` (or a uniform time in ``(low, high)``)."""
        low, high = (seconds, seconds) if isinstance(seconds, int | float) else seconds

        def apply() -> None:
            self._delay = (float(low), float(high))

        self._on_loop(apply)

    def cut_all(self, *, spare: bytes | None = None) -> int:
        """Cut every open connection now, both sides; returns how many were cut.

        ``spare``: leave alone the connections whose client's latest chunk holds it (say
        ``b"COMMIT"``: a connection whose outcome is unknown until its answer is read), to cut
        connections in the middle of their work but never at that one point.
        """

        def apply() -> int:
            doomed = [
                link
                for link in self._links.values()
                if not link.cut and (spare is None or spare not in link.latest)
            ]
            for link in doomed:
                link.abort()
                self.faults["cut"] += 1
            return len(doomed)

        return self._on_loop(apply)

    def cut_after_bytes(self, count: int, *, times: int | None = None) -> None:
        """Cut a connection once its client sent ``count`` more bytes (those are forwarded).

        Counted per connection from now on (from its start for new ones); ``times`` bounds
        how many connections are cut, None for every one that gets there.
        """
        rule = _CutRule(None, count, True, times)
        self._on_loop(lambda: self._arm(rule))

    def cut_on(
        self,
        marker: bytes,
        *,
        forward: bool,
        times: int | None = None,
        skip: int = 0,
        and_refuse: bool = False,
    ) -> None:
        """Cut a connection whose client sends ``marker`` (after letting ``skip`` through).

        ``forward=False``: the chunk holding it is dropped, the server never sees it.
        ``forward=True``: it is delivered to the server, then both sides are cut before any
        answer goes back: the client cannot tell whether the server acted.
        ``and_refuse``: from that cut on, new connections are refused too (a server that died
        right after), so a client's retry on a new connection fails as well.
        """
        assert marker, "an empty marker would match everything"
        rule = _CutRule(marker, None, forward, times, skip, and_refuse)
        self._on_loop(lambda: self._arm(rule))

    async def wait_for(self, kind: str, count: int = 1, within: float = 10.0) -> None:
        """Wait (in any event loop) until ``count`` faults of ``kind`` were injected."""
        deadline = time.monotonic() + within
        while self.faults[kind] < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.faults[kind]} of {count} {kind!r} faults")
            await asyncio.sleep(0.01)

    # --- internals -----------------------------------------------------------------------

    def _on_loop(self, apply: Callable[[], T]) -> T:
        """Run ``apply`` on the proxy's loop (now, when called from it) and return its result."""
        loop = self._loop
        assert loop is not None, "start the proxy first"
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return apply()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(apply())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return done.result(timeout=10)

    def _set_mode(self, mode: Mode) -> None:
        self._mode = mode
        assert self._flowing is not None
        if mode is Mode.HANG:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _arm(self, rule: _CutRule) -> None:
        rule.baseline = {number: link.client_bytes for number, link in self._links.items()}
        self._rules.append(rule)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        try:
            if self._mode is Mode.REFUSE:
                self.faults["refused"] += 1
                _reset(writer)
                return
            link = _Link(number, writer)
            self._links[number] = link
            try:
                upstream_reader, link.server = await asyncio.open_connection(*self.target)
            except OSError:
                self.faults["target_unreachable"] += 1
                link.abort()
                return
            if link.cut:  # cut while connecting
                link.abort()
                return
            up = asyncio.create_task(self._pump(link, reader, upstream=True))
            down = asyncio.create_task(self._pump(link, upstream_reader, upstream=False))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in (up, down):
                    pump.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
                if not link.cut:
                    link.cut = True
                    link.dead.set()
                    link.client.close()
                    link.server.close()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cancelled by stop(): end quietly (asyncio logs a handler that ends cancelled).
        finally:
            self._links.pop(number, None)
            self._tasks.discard(task)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, *, upstream: bool) -> None:
        """Copy one direction until EOF, an error, or a cut."""
        assert self._flowing is not None
        writer = link.server if upstream else link.client
        assert writer is not None
        try:
            while not link.cut:
                await self._until_flowing(link)
                chunk = await reader.read(CHUNK)
                if not chunk:
                    return
                if upstream and any(marker in chunk for marker in self._hang_markers):
                    self._hang_markers.clear()
                    self.faults["hang"] += 1
                    self._set_mode(Mode.HANG)
                if not self._flowing.is_set():
                    self.faults["held"] += 1
                    await self._until_flowing(link)
                low, high = self._delay
                if high > 0:
                    self.faults["delayed"] += 1
                    await asyncio.sleep(self._rng.uniform(low, high))
                if link.cut:
                    return
                if upstream:
                    chunk, then_cut = self._apply_rules(link, chunk)
                    if chunk:
                        writer.write(chunk)
                        await writer.drain()
                    if then_cut:
                        self._cut_after_forwarding(link)
                        return
                else:
                    writer.write(chunk)
                    await writer.drain()
        except (ConnectionError, OSError):
            return

    async def _until_flowing(self, link: _Link) -> None:
        """Return when bytes may flow again (a hang lifted) or the link was cut."""
        assert self._flowing is not None
        if self._flowing.is_set():
            return
        waiters = {
            asyncio.create_task(self._flowing.wait()),
            asyncio.create_task(link.dead.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _apply_rules(self, link: _Link, chunk: bytes) -> tuple[bytes, bool]:
        """What of ``chunk`` to forward, and whether to cut the link after it."""
        link.latest = chunk
        start = link.client_bytes
        link.client_bytes += len(chunk)
        window = link.tail + chunk
        for rule in list(self._rules):
            if rule.after_bytes is not None:
                sent_before = start - rule.baseline.get(link.number, 0)
                if sent_before + len(chunk) < rule.after_bytes:
                    continue
                self._fired(rule, "cut_after_bytes")
                return chunk[: max(0, rule.after_bytes - sent_before)], True
            assert rule.marker is not None
            if rule.marker in window and rule.skip:
                rule.skip -= 1
            elif rule.marker in window:
                if rule.forward:
                    self._fired(rule, "cut_after_forwarding")
                    return chunk, True
                self._fired(rule, "cut_before_forwarding")
                link.abort()
                return b"", False
        keep = max((len(rule.marker) - 1 for rule in self._rules if rule.marker), default=0)
        link.tail = window[-keep:] if keep else b""
        return chunk, False

    def _fired(self, rule: _CutRule, kind: str) -> None:
        self.faults[kind] += 1
        if rule.and_refuse:
            self._set_mode(Mode.REFUSE)
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                self._rules.remove(rule)

    def _cut_after_forwarding(self, link: _Link) -> None:
        """The last chunk went to the server: let it get there, answer nothing, cut both."""
        link.cut = True  # the downstream pump forwards nothing from now on
        link.dead.set()
        server = link.server
        assert server is not None
        # close(), not a reset: asyncio flushes what it still buffers, then sends a FIN behind
        # it, so the server reads the packet, then EOF. The client gets a reset at once.
        server.close()
        _reset(link.client)
