"""PooledTransport's HTTP/1.1 connection, in the manner of httpcore's own connection tests.

Framing, keep-alive and close, incomplete and refused replies, expiry, the pool's lifecycle
and timeouts per read and per write; each against a raw loopback server, on asyncio and
trio. (More framing and pool cases live in test_transport.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from raw_server import Conn, Server, serving

from apiframe_async._connections import ProtocolConnection, StreamConnection, _Interrupted
from apiframe_async._transport import PooledTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio


def answering(raw: bytes) -> Callable[[Conn], Awaitable[None]]:
    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            await conn.send(raw)

    return handler


def ok(body: bytes = b"Hello, world!", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


@contextlib.asynccontextmanager
async def client(
    server: Server, timeout: float = 10.0, **options: float | None
) -> AsyncIterator[tuple[httpx.AsyncClient, PooledTransport]]:
    transport = PooledTransport(**options)  # type: ignore[arg-type]  # floats or None only
    async with httpx.AsyncClient(transport=transport, base_url=server.url, timeout=timeout) as http:
        yield http, transport


def idle(transport: PooledTransport) -> int:
    return sum(len(stack) for stack in transport._idle.values())


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - counts kept by other tasks
            await anyio.sleep(0.01)


# Framing and keep-alive.


async def test_content_length_response_leaves_the_connection_idle() -> None:
    async with serving(answering(ok())) as server, client(server) as (http, transport):
        response = await http.get("/")
        assert response.status_code == 200
        assert response.content == b"Hello, world!"
        assert idle(transport) == 1
        assert response.extensions["http_version"] == b"HTTP/1.1"
        assert response.reason_phrase == "OK"


async def test_chunked_response_in_many_packets() -> None:
    """Chunks split across packets anywhere, even inside a size line, arrive whole."""
    raw = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nHel\r\n4\r\nlo, \r\n6\r\nworld!\r\n0\r\n\r\n"
    )

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            for start in range(0, len(raw), 3):
                await conn.send(raw[start : start + 3])
                await anyio.sleep(0.001)

    async with serving(handler) as server, client(server) as (http, transport):
        for _ in range(2):
            assert (await http.get("/")).content == b"Hello, world!"
        assert server.accepted == 1
        assert idle(transport) == 1


async def test_trailing_headers_are_consumed() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: surprise\r\n\r\n"
        b"d\r\nHello, world!\r\n0\r\nsurprise: you thought we were done\r\n\r\n"
    )
    async with serving(answering(raw)) as server, client(server) as (http, _):
        for _ in range(2):
            assert (await http.get("/")).content == b"Hello, world!"
        assert server.accepted == 1


async def test_http10_keep_alive_is_honoured() -> None:
    raw = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nhi"
    async with serving(answering(raw)) as server, client(server) as (http, _):
        for _ in range(2):
            assert (await http.get("/")).content == b"hi"
        assert server.accepted == 1


async def test_304_has_no_body_whatever_its_content_length() -> None:
    raw = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1000\r\n\r\n"
    async with serving(answering(raw)) as server, client(server) as (http, _):
        for _ in range(2):
            response = await http.get("/")
            assert response.status_code == 304
            assert response.content == b""
        assert server.accepted == 1


async def test_request_asking_for_close_is_not_reused() -> None:
    async with serving(answering(ok())) as server, client(server) as (http, transport):
        await http.get("/", headers={"Connection": "close"})
        assert idle(transport) == 0
        await http.get("/")
        assert server.accepted == 2


# Replies that end the connection.


async def test_incomplete_body_is_remote_protocol_error_and_closes() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nHello, wor")

    async with serving(handler) as server, client(server) as (http, transport):
        with pytest.raises(httpx.RemoteProtocolError, match="before the end"):
            await http.get("/")
        assert idle(transport) == 0
        assert transport._in_use == set()
        await until(lambda: server.closed == 1)


async def test_garbage_reply_is_remote_protocol_error_and_closes() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"Wait, this isn't valid HTTP!")
        await conn.until_closed()

    async with serving(handler) as server, client(server) as (http, transport):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")
        assert idle(transport) == 0
        await until(lambda: server.closed == 1)


async def test_nul_in_a_request_header_is_refused_before_sending() -> None:
    async with serving(answering(ok())) as server, client(server) as (http, transport):
        with pytest.raises(httpx.LocalProtocolError):
            await http.get("/", headers={"x-bad": "a\0b"})
        assert idle(transport) == 0
        assert (await http.get("/")).content == b"Hello, world!"


# Expiry and lifecycle.


async def test_expired_idle_connections_close_while_traffic_goes_on() -> None:
    """The cold connection at the bottom of the stack is closed though never popped."""
    async with (
        serving(answering(ok())) as server,
        client(server, keepalive_expiry=0.2) as (http, transport),
    ):
        async with anyio.create_task_group() as tg:  # two at once: two connections
            for _ in range(2):
                tg.start_soon(http.get, "/")
        assert server.accepted == 2
        with anyio.fail_after(5):
            while server.closed == 0:  # traffic goes on, on the hot connection only
                await http.get("/")
                await anyio.sleep(0.05)
        assert server.accepted == 2
        assert idle(transport) == 1


async def test_aclose_ends_a_request_waiting_for_its_reply() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.until_closed()

    async with serving(handler) as server, client(server) as (http, transport):
        failure: list[BaseException] = []

        async def request() -> None:
            try:
                await http.get("/")
            except httpx.ReadError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            await until(lambda: server.accepted == 1 and bool(transport._in_use))
            await anyio.sleep(0.05)
            with anyio.fail_after(2):
                await transport.aclose()
        assert failure
        await until(lambda: server.closed == 1)


async def test_aclose_closes_a_streamed_response() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nfirst")
        await conn.until_closed()

    async with serving(handler) as server, client(server) as (http, transport):
        async with http.stream("GET", "/") as response:
            pieces = response.aiter_raw()
            assert await anext(pieces) == b"first"
            await transport.aclose()
            with anyio.fail_after(2), pytest.raises(httpx.ReadError):
                await anext(pieces)
            await pieces.aclose()  # type: ignore[attr-defined]  # an async generator
        await until(lambda: server.closed == 1)


async def test_closed_transport_refuses_new_requests_before_sending() -> None:
    async with serving(answering(ok())) as server, client(server) as (http, transport):
        await transport.aclose()
        with pytest.raises(httpx.ConnectError, match="closed"):
            await http.get("/")
        assert server.accepted == 0


# Timeouts: one per read and one per write, as httpx defines them.


async def test_read_timeout_bounds_each_read_not_the_whole_reply() -> None:
    """A head and body trickling in for longer than the read timeout, each gap shorter."""
    raw = ok(b"slowly but surely")

    async def handler(conn: Conn) -> None:
        await conn.request()
        for start in range(0, len(raw), 8):
            await conn.send(raw[start : start + 8])
            await anyio.sleep(0.1)
        await conn.until_closed()

    async with serving(handler) as server, client(server, timeout=0.5) as (http, _):
        with anyio.fail_after(10):
            assert (await http.get("/")).content == b"slowly but surely"


async def test_read_timeout_when_one_gap_is_too_long() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n")
        await conn.until_closed()

    async with serving(handler) as server, client(server, timeout=0.2) as (http, transport):
        with anyio.fail_after(5), pytest.raises(httpx.ReadTimeout):
            await http.get("/")
        assert idle(transport) == 0


async def test_write_timeout_bounds_each_send_not_the_whole_upload() -> None:
    """An upload taking longer than the write timeout, read steadily by the server, succeeds."""
    body = b"u" * (8 * 1024 * 1024)

    async def handler(conn: Conn) -> None:
        received = 0
        while b"\r\n\r\n" not in conn.buffer:
            conn.buffer += await conn.stream.receive()
        received = len(conn.buffer.partition(b"\r\n\r\n")[2])
        while received < len(body):
            received += len(await conn.stream.receive(256 * 1024))
            await anyio.sleep(0.005)
        await conn.send(ok(b"got it"))
        await conn.until_closed()

    async with serving(handler) as server, client(server, timeout=0.3) as (http, _):
        with anyio.fail_after(30):
            response = await http.post("/", content=body)
        assert response.content == b"got it"


async def test_a_shorter_read_timeout_on_a_reused_connection_is_kept() -> None:
    """Each request's own read timeout counts, also after a longer one on the same socket."""
    replies = 0

    async def handler(conn: Conn) -> None:
        nonlocal replies
        while True:
            await conn.request()
            replies += 1
            if replies == 1:
                await conn.send(ok())
            else:
                await conn.send(b"HTTP/1.1 200 OK\r\n")  # and nothing more

    async with serving(handler) as server, client(server, timeout=30) as (http, _):
        assert (await http.get("/")).status_code == 200
        with anyio.fail_after(5), pytest.raises(httpx.ReadTimeout):
            await http.get("/", timeout=0.2)
        assert server.accepted == 1


async def test_timeouts_of_concurrent_requests_each_end_their_own_wait() -> None:
    """Of requests waiting at once, only the one whose read timeout passed fails; the rest,
    on longer timeouts, are answered (trio keeps every deadline in one task per run)."""
    requests_seen = 0

    async def handler(conn: Conn) -> None:
        nonlocal requests_seen
        while True:
            request = await conn.request()
            requests_seen += 1
            if b"GET /silent" in request:
                await conn.until_closed()
                return
            await anyio.sleep(0.5)
            await conn.send(ok(b"late but in time"))

    results: dict[str, object] = {}

    async def get(path: str, timeout: float) -> None:
        try:
            results[path] = (await http.get(path, timeout=timeout)).content
        except httpx.ReadTimeout as exc:
            results[path] = exc

    async with serving(handler) as server, client(server) as (http, transport):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, "/silent", 0.2)
                for i in range(3):
                    tg.start_soon(get, f"/slow{i}", 5.0)
            assert isinstance(results.pop("/silent"), httpx.ReadTimeout)
            assert results == {f"/slow{i}": b"late but in time" for i in range(3)}
            # The answered connections are reused: their deadlines did not touch them.
            assert idle(transport) == 3
            assert (await http.get("/slow-again", timeout=5.0)).content == b"late but in time"
        assert requests_seen == 5


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio's connections time themselves
async def test_trio_deadlines_hold_only_waits_in_progress() -> None:
    """On trio, each wait's deadline is dropped when the wait ends: none piles up."""
    from apiframe_async._deadlines import Deadlines  # noqa: PLC0415 - needs trio

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            await anyio.sleep(0.01)  # every read waits
            await conn.send(ok())

    deadlines = Deadlines.for_this_run()
    async with serving(handler) as server, client(server) as (http, _):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(http.get, "/")
        assert deadlines._waiting == {}
    assert deadlines is Deadlines.for_this_run()
    # A timeout that is no number of seconds sets no deadline (and cannot break the task).
    deadlines.arm(StreamConnection.__new__(StreamConnection), math.nan)
    await anyio.sleep(0.01)
    assert deadlines._waiting == {}


class _Tunnelled(PooledTransport):
    """The pool with the connections a proxy tunnel hands over for an http:// origin."""

    async def _open(self, origin: tuple[str, str, int]) -> StreamConnection:
        return StreamConnection(await anyio.connect_tcp(origin[1], origin[2]))


async def test_aclose_ends_a_read_that_began_after_the_first_abort() -> None:
    """Closing the pool aborts the connections in use, then closes every one (aborting
    again): a read begun in between, while idle ones closed, is ended by the second."""

    async def handler(conn: Conn) -> None:
        while True:
            request = await conn.request()
            if b"/stream" in request:
                await conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                await conn.send(b"5\r\nhello\r\n")
                await conn.until_closed()
                return
            await conn.send(ok(b"ok"))

    errors: list[BaseException] = []
    got_a_chunk = anyio.Event()
    transport = _Tunnelled()
    async with serving(handler) as server:
        http = httpx.AsyncClient(transport=transport, base_url=server.url, timeout=30)

        async def stream() -> None:
            async with http.stream("GET", "/stream") as response:
                try:
                    async for _ in response.aiter_raw():
                        got_a_chunk.set()
                        await anyio.lowlevel.checkpoint()  # next read: after the first abort
                except httpx.ReadError as exc:
                    errors.append(exc)

        async with anyio.create_task_group() as idle_ones:
            for _ in range(3):
                idle_ones.start_soon(http.get, "/")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream)
                await got_a_chunk.wait()
                await transport.aclose()
    assert len(errors) == 1


async def test_a_large_body_read_slowly_arrives_whole() -> None:
    """A reader slower than the server: reading pauses and resumes, and no byte is lost."""
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await conn.until_closed()

    received = bytearray()
    async with (
        serving(handler) as server,
        client(server) as (http, _),
        http.stream("GET", "/") as response,
    ):
        async for piece in response.aiter_raw():
            received += piece
            await anyio.sleep(0.001)
    assert bytes(received) == body


# Found in review of the asyncio connections.


def test_requests_work_on_uvloop() -> None:
    """uvloop, the loop of uvicorn[standard], takes no happy-eyeballs option: still works."""
    pytest.importorskip("uvloop")

    async def main() -> tuple[int, int]:
        async with serving(answering(ok())) as server, client(server) as (http, _):
            statuses = [(await http.get("/")).status_code for _ in range(3)]
            # By name too: "localhost" is a name the stdlib loop would race.
            url = server.url.replace("127.0.0.1", "localhost")
            statuses.append((await http.get(url)).status_code)
            return statuses.count(200), server.accepted

    assert anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True}) == (4, 2)


def test_a_deadline_met_while_the_waiter_was_woken_is_kept() -> None:
    """The timer finds its wait just woken for another reason: the next wait still ends."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        connection = ProtocolConnection(loop)
        connection._arm(0.01)
        connection._waiter = woken = loop.create_future()
        woken.set_result(None)  # woken (say, the write buffer drained) in the same turn
        await anyio.sleep(0.05)  # the deadline passes: the timer finds the waiter done
        connection._waiter = waiting = loop.create_future()  # and the drain waits again
        with anyio.fail_after(1), pytest.raises(_Interrupted):
            await waiting

    anyio.run(main, backend="asyncio")


def test_a_closing_connection_is_stale_before_its_socket_is_polled() -> None:
    """TLS tells its protocol of a lost socket a turn late: closing is enough to be stale."""

    class Closing:
        def get_extra_info(self, _name: str) -> None:
            return None

        def is_closing(self) -> bool:
            return True

    async def main() -> None:
        connection = ProtocolConnection(asyncio.get_running_loop())
        connection.connection_made(Closing())  # type: ignore[arg-type]  # a stand-in
        assert connection.is_stale(0.0, None)

    anyio.run(main, backend="asyncio")
