"""The fault proxy does what the fault tests rely on: each fault, and nothing else.

Checked against a local echo server that records what reached it, so "the server never saw
it" and "the server got it, the client never got an answer" are facts, not hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from fault_proxy import FaultProxy


class EchoServer:
    """Echoes every chunk back, and keeps what each connection sent and whether it ended."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.closed = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> EchoServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()

    @property
    def everything(self) -> bytes:
        return b"".join(bytes(part) for part in self.received)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        try:
            while chunk := await reader.read(65536):
                got.extend(chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed += 1
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await EchoServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def read_or_cut(reader: asyncio.StreamReader) -> bytes | None:
    """What the client reads next (within 2 s): bytes, b"" at a clean EOF, None when reset."""
    try:
        async with asyncio.timeout(2):
            return await reader.read(65536)
    except (ConnectionError, OSError):
        return None


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait up to 2 s for ``condition()``."""
    deadline = time.monotonic() + 2
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_pass_through_forwards_both_ways_and_counts(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    assert (proxy.connections, proxy.active, sum(proxy.faults.values())) == (1, 1, 0)
    writer.close()
    await eventually(lambda: proxy.active == 0 and echo.closed == 1)


async def test_refuse_closes_new_connections_and_leaves_open_ones(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    reader, writer = await connect(proxy)
    proxy.refuse()
    refused_reader, _ = await connect(proxy)
    assert await read_or_cut(refused_reader) in (None, b"")
    writer.write(b"still here")
    assert await reader.readexactly(10) == b"still here"
    assert proxy.faults["refused"] == 1
    assert len(echo.received) == 1  # the refused one never reached the server
    proxy.pass_through()
    again_reader, again = await connect(proxy)
    again.write(b"back")
    assert await again_reader.readexactly(4) == b"back"


async def test_cut_all_closes_both_sides(proxy: FaultProxy, echo: EchoServer) -> None:
    pairs = [await connect(proxy) for _ in range(3)]
    for reader, writer in pairs:
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
    assert proxy.cut_all() == 3
    for reader, _ in pairs:
        assert await read_or_cut(reader) in (None, b"")
    await eventually(lambda: echo.closed == 3 and proxy.active == 0)
    assert proxy.faults["cut"] == 3


async def test_cut_all_can_spare_connections_waiting_on_a_marker(proxy: FaultProxy) -> None:
    committing_reader, committing = await connect(proxy)
    working_reader, working = await connect(proxy)
    committing.write(b"COMMIT;")
    working.write(b"UPDATE")
    assert await committing_reader.readexactly(7) == b"COMMIT;"
    assert await working_reader.readexactly(6) == b"UPDATE"
    assert proxy.cut_all(spare=b"COMMIT") == 1
    assert await read_or_cut(working_reader) in (None, b"")
    committing.write(b"BEGIN;")  # its next chunk: no longer spared
    assert await committing_reader.readexactly(6) == b"BEGIN;"
    assert proxy.cut_all(spare=b"COMMIT") == 1


@pytest.mark.parametrize("forward", [False, True], ids=["before-forwarding", "after-forwarding"])
async def test_cut_on_marker(proxy: FaultProxy, echo: EchoServer, forward: bool) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"BEGIN;")
    assert await reader.readexactly(6) == b"BEGIN;"
    proxy.cut_on(b"COMMIT", forward=forward, times=1)
    writer.write(b"COM")  # a marker split across packets is still found
    assert await reader.readexactly(3) == b"COM"
    writer.write(b"MIT;")
    assert await read_or_cut(reader) in (None, b"")  # no answer either way
    await eventually(lambda: echo.closed == 1)
    assert echo.everything == (b"BEGIN;COMMIT;" if forward else b"BEGIN;COM")
    kind = "cut_after_forwarding" if forward else "cut_before_forwarding"
    assert proxy.faults[kind] == 1
    # times=1: the rule is spent, the next connection passes
    reader, writer = await connect(proxy)
    writer.write(b"COMMIT;")
    assert await reader.readexactly(7) == b"COMMIT;"


async def test_cut_on_the_nth_marker(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    proxy.cut_on(b"COMMIT", forward=False, times=1, skip=1)
    writer.write(b"COMMIT;")
    assert await reader.readexactly(7) == b"COMMIT;"  # the first one passes
    writer.write(b"COMMIT!")
    assert await read_or_cut(reader) in (None, b"")
    await eventually(lambda: echo.closed == 1)
    assert echo.everything == b"COMMIT;"


async def test_cut_on_marker_and_refuse_after(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    proxy.cut_on(b"SET", forward=True, times=1, and_refuse=True)
    writer.write(b"SET k v")
    assert await read_or_cut(reader) in (None, b"")
    retry_reader, _ = await connect(proxy)  # the client's retry: refused
    assert await read_or_cut(retry_reader) in (None, b"")
    await eventually(lambda: echo.closed == 1)
    assert echo.everything == b"SET k v"
    assert (proxy.faults["cut_after_forwarding"], proxy.faults["refused"]) == (1, 1)


async def test_cut_after_bytes_forwards_exactly_that_many(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"12345")
    assert await reader.readexactly(5) == b"12345"
    proxy.cut_after_bytes(3)
    writer.write(b"abcdef")
    await read_or_cut(reader)
    await eventually(lambda: echo.closed == 1)
    assert echo.everything == b"12345abc"
    assert proxy.faults["cut_after_bytes"] == 1


async def test_delay_holds_each_chunk_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    proxy.delay(0.1)
    started = time.monotonic()
    writer.write(b"slow")
    assert await reader.readexactly(4) == b"slow"
    assert time.monotonic() - started >= 0.2  # out and back
    assert proxy.faults["delayed"] == 2


async def test_hang_forwards_nothing_until_lifted(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    proxy.hang()
    writer.write(b"anyone?")
    new_reader, new_writer = await connect(proxy)  # accepted, but nothing flows
    new_writer.write(b"me too")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.read(1)
    assert echo.everything == b""
    proxy.pass_through()
    assert await reader.readexactly(7) == b"anyone?"
    assert await new_reader.readexactly(6) == b"me too"


async def test_hang_on_a_marker_holds_that_packet(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    proxy.hang_on(b"EVALSHA")
    writer.write(b"GET k")
    assert await reader.readexactly(5) == b"GET k"
    writer.write(b"EVALSHA x")
    await proxy.wait_for("hang", within=2)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.read(1)
    assert echo.everything == b"GET k"
    proxy.pass_through()
    assert await reader.readexactly(9) == b"EVALSHA x"


async def test_a_hung_connection_can_be_cut(proxy: FaultProxy) -> None:
    reader, _writer = await connect(proxy)
    proxy.hang()
    await eventually(lambda: proxy.active == 1)
    assert proxy.cut_all() == 1
    assert await read_or_cut(reader) in (None, b"")
    await eventually(lambda: proxy.active == 0)


def test_in_a_thread_of_its_own_for_blocking_clients() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        proxy = FaultProxy.in_thread("127.0.0.1", listener.getsockname()[1])
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as client:
                server_side, _ = listener.accept()
                with server_side:
                    client.sendall(b"ping")
                    assert server_side.recv(4) == b"ping"
                    proxy.cut_on(b"COMMIT", forward=False)  # called from another thread
                    client.sendall(b"COMMIT")
                    server_side.settimeout(2)
                    try:
                        received = server_side.recv(16)
                    except ConnectionResetError:
                        received = b""
                    assert received == b""  # cut: the marker never arrived
            assert proxy.faults["cut_before_forwarding"] == 1
        finally:
            proxy.close()
