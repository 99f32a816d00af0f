"""PooledTransport against real loopback servers written with anyio, on asyncio and trio."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.streams.tls
import httpx
import pytest

from apiframe_async._connections import ProtocolConnection, StreamConnection
from apiframe_async._transport import PooledTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio

_DISCONNECTS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


@dataclass
class Server:
    """What a test server saw: connections accepted and closed, requests read."""

    url: str
    accepted: int = 0
    closed: int = 0
    requests: list[bytes] = field(default_factory=list)


class Peer:
    """The server side of one connection."""

    def __init__(self, stream: anyio.abc.ByteStream, server: Server) -> None:
        self.stream = stream
        self.server = server
        self.buffer = b""

    async def read_request(self) -> bytes | None:
        """The next request's head and body, or None if the client closed first."""
        while b"\r\n\r\n" not in self.buffer:
            try:
                self.buffer += await self.stream.receive()
            except anyio.EndOfStream:
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = await self._read_chunked()
        else:
            body = await self._read_exactly(_content_length(head))
        self.server.requests.append(head + b"\r\n\r\n" + body)
        return head + b"\r\n\r\n" + body

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def wait_closed(self) -> None:
        """Read until the client closes its side; count the close."""
        with contextlib.suppress(*_DISCONNECTS):
            while True:
                await self.stream.receive()

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += await self.stream.receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    async def _read_chunked(self) -> bytes:
        body = b""
        while size := int(await self._read_line(), 16):
            body += await self._read_exactly(size)
            await self._read_line()
        await self._read_line()
        return body


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.partition(b":")[2])
    return 0


def reply(body: bytes = b"ok", status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    """A complete response with a Content-Length."""
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), headers, body)


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Peer], Awaitable[None]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """Run `handler` for each connection to a fresh loopback listener (https with `tls`)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp:
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        server = Server(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
        listener: anyio.abc.Listener[anyio.abc.ByteStream] = tcp
        if tls is not None:
            listener = anyio.streams.tls.TLSListener(tcp, tls, standard_compatible=False)

        async def accept(stream: anyio.abc.ByteStream) -> None:
            server.accepted += 1
            async with stream:
                with contextlib.suppress(*_DISCONNECTS):
                    await handler(Peer(stream, server))
            server.closed += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, accept)
            yield server
            tg.cancel_scope.cancel()


async def answer_all(peer: Peer) -> None:
    """Answer every request on the connection with a small 200."""
    while await peer.read_request() is not None:
        await peer.send(reply())


@contextlib.asynccontextmanager
async def client_for(
    server: Server, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, PooledTransport]]:
    transport = PooledTransport(**options)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        yield client, transport


async def until(condition: Callable[[], bool]) -> None:
    """Wait, up to 30 seconds, for the server side to catch up."""
    # A ceiling, not a measure: 300 connections take seconds on a loaded 2-core machine.
    with anyio.fail_after(30):
        # Polling: the conditions count events in other tasks; an Event per count is noise.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def idle_count(transport: PooledTransport) -> int:
    return sum(len(stack) for stack in transport._idle.values())


# Keep-alive and the pool.


async def test_sequential_requests_reuse_one_connection() -> None:
    """Keep-alive: ten requests in a row use a single connection."""
    async with serving(answer_all) as server, client_for(server) as (client, transport):
        for _ in range(10):
            response = await client.post("/ai-photo-generate", json={"prompt": "x"})
            assert response.content == b"ok"
        assert server.accepted == 1
        assert idle_count(transport) == 1
        assert response.extensions["http_version"] == b"HTTP/1.1"
        assert response.reason_phrase == "OK"


async def test_concurrent_requests_open_then_reuse_connections() -> None:
    """300 concurrent requests open 300 connections, and a second wave reuses them all."""

    async def all_at_once(peer: Peer) -> None:
        while await peer.read_request() is not None:
            # Hold every answer until the whole wave of 300 is in: none may finish early
            # and free its connection for another request of the same wave.
            await until(lambda: len(peer.server.requests) % 300 == 0)
            await peer.send(reply())

    statuses: list[int] = []

    async def one(client: httpx.AsyncClient) -> None:
        statuses.append((await client.get("/")).status_code)

    async with serving(all_at_once) as server, client_for(server) as (client, transport):
        for _ in range(2):
            async with anyio.create_task_group() as tg:
                for _ in range(300):
                    tg.start_soon(one, client)
        assert statuses == [200] * 600
        assert server.accepted == 300
        assert idle_count(transport) == 300


async def test_a_host_name_and_an_address_both_connect_with_no_delay() -> None:
    """A name goes through the address race, an address straight to one socket: both work.

    Both set TCP_NODELAY, without which a request written in two parts waits for the
    server's delayed ACK.
    """
    async with serving(answer_all) as server, client_for(server) as (client, transport):
        port = httpx.URL(server.url).port
        for url in (f"http://localhost:{port}/", f"http://127.0.0.1:{port}/"):
            assert (await client.get(url)).content == b"ok"
        assert server.accepted == 2
        for stack in transport._idle.values():
            (connection,) = stack
            if isinstance(connection, StreamConnection):
                sock = connection.socket
            else:  # asyncio's TransportSocket
                assert isinstance(connection, ProtocolConnection)
                assert connection._transport is not None
                sock = connection._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_idle_connection_closed_by_server_is_replaced() -> None:
    """A pooled connection the server closed is noticed before writing, and replaced."""

    async def once(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(reply())

    async with serving(once) as server, client_for(server) as (client, _):
        assert (await client.get("/")).status_code == 200
        await until(lambda: server.closed == 1)
        assert (await client.get("/")).status_code == 200
        assert server.accepted == 2
        assert len(server.requests) == 2


async def test_expired_idle_connection_is_not_reused() -> None:
    """A connection idle for longer than keepalive_expiry is closed, not reused."""
    async with serving(answer_all) as server, client_for(server, keepalive_expiry=0) as (client, _):
        await client.get("/")
        await client.get("/")
        assert server.accepted == 2
        await until(lambda: server.closed == 1)


async def test_max_idle_per_origin_closes_the_coldest() -> None:
    """Only max_idle_per_origin connections stay pooled; the extra ones are closed."""

    async def slow(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await anyio.sleep(0.05)
            await peer.send(reply())

    async with (
        serving(slow) as server,
        client_for(server, max_idle_per_origin=2) as (client, transport),
    ):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(client.get, "/")
        assert idle_count(transport) == 2
        await until(lambda: server.closed == 3)


async def test_transport_aclose_closes_idle_connections() -> None:
    """Closing the transport closes its idle connections."""
    async with serving(answer_all) as server:
        async with client_for(server) as (client, _):
            await client.get("/")
        await until(lambda: server.closed == 1)


# Response bodies and framing.


@pytest.mark.parametrize(
    ("raw", "expected", "reused"),
    [
        pytest.param(reply(b"hello"), b"hello", True, id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n",
            b"hello world",
            True,
            id="chunked-with-extension-and-trailer",
        ),
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + reply(b"after"),
            b"after",
            True,
            id="interim-1xx-skipped",
        ),
        pytest.param(reply(b"", b"204 No Content"), b"", True, id="204"),
        pytest.param(
            reply(b"bye", headers=b"connection: close\r\n"), b"bye", False, id="connection-close"
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi", b"hi", False, id="http-1.0"
        ),
    ],
)
async def test_response_framing(raw: bytes, expected: bytes, reused: bool) -> None:
    """Each framing yields the exact body, and the connection is reused only when it may be."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(raw)

    async with serving(handler) as server, client_for(server) as (client, _):
        for _ in range(2):
            assert (await client.get("/")).content == expected
        assert server.accepted == (1 if reused else 2)


async def test_close_delimited_body() -> None:
    """A body without length or chunking ends when the server closes; not reused."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        await anyio.sleep(0.05)
        await peer.send(b"close")

    async with serving(handler) as server, client_for(server) as (client, transport):
        assert (await client.get("/")).content == b"until close"
        assert (await client.get("/")).content == b"until close"
        assert server.accepted == 2
        assert idle_count(transport) == 0


async def test_head_response_has_no_body() -> None:
    """HEAD: the Content-Length is not read as a body and the connection stays usable."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")

    async with serving(handler) as server, client_for(server) as (client, _):
        for _ in range(2):
            response = await client.head("/")
            assert response.headers["content-length"] == "1000"
            assert response.content == b""
        assert server.accepted == 1


async def test_large_body_really_streams() -> None:
    """A 5 MB body arrives in pieces, the first before the server has sent the rest."""
    first_part, rest = b"a" * (1024 * 1024), b"b" * (4 * 1024 * 1024)
    first_seen = anyio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (5 * 1024 * 1024))
        await peer.send(first_part)
        await first_seen.wait()
        await peer.send(rest)
        await answer_all(peer)

    async with serving(handler) as server, client_for(server) as (client, _):
        pieces = []
        async with client.stream("GET", "/image.png") as response:
            async for piece in response.aiter_raw():
                pieces.append(piece)
                first_seen.set()
        assert b"".join(pieces) == first_part + rest
        assert len(pieces) > 1
        assert (await client.get("/")).content == b"ok"
        assert server.accepted == 1


async def test_early_close_discards_the_connection() -> None:
    """Closing a response before its end closes the connection instead of pooling it."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000)
        await peer.wait_closed()

    async with serving(handler) as server, client_for(server) as (client, transport):
        # Not reading at all: breaking out of aiter_raw() would leave httpx's own async
        # generators unfinished, which trio reports as a ResourceWarning.
        async with client.stream("GET", "/") as response:
            assert response.status_code == 200
        assert idle_count(transport) == 0
        await until(lambda: server.closed == 1)


async def test_streaming_upload_is_chunked() -> None:
    """A request body from an async iterator goes out chunked and arrives whole."""

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"", b"two"):
            yield part

    async with serving(answer_all) as server, client_for(server) as (client, _):
        await client.post("/", content=parts())
        assert server.requests[0].endswith(b"\r\n\r\none two")


async def test_large_request_body() -> None:
    """A 1 MB request body, over the single-write size, arrives whole."""
    async with serving(answer_all) as server, client_for(server) as (client, _):
        await client.post("/", content=b"z" * 1_000_000)
        assert server.requests[0].endswith(b"\r\n\r\n" + b"z" * 1_000_000)


async def test_header_injection_is_refused() -> None:
    """A CR or LF inside a header value is refused before anything is sent."""
    async with serving(answer_all) as server, client_for(server) as (client, _):
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"x-evil": "a\r\nx-injected: 1"})
        assert server.requests == []


# TLS.


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1, with its key in the same PEM file."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    pem = tmp_path_factory.mktemp("tls") / "localhost.pem"
    command = [openssl, "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(pem)]
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603 - our own arguments
    return pem


@pytest.mark.parametrize(
    ("verify", "works"),
    [
        pytest.param("our-ca", True, id="trusted-context"),
        pytest.param(False, True, id="verify-false"),
        pytest.param(True, False, id="self-signed-refused-by-default"),
    ],
)
async def test_https(certificate: Path, verify: str | bool, works: bool) -> None:
    """https works with a trusted context and keeps the connection; an untrusted one fails."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificate)
    option: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=certificate) if verify == "our-ca" else bool(verify)
    )
    async with (
        serving(answer_all, tls=server_context) as server,
        PooledTransport(verify=option) as transport,
        httpx.AsyncClient(transport=transport, base_url=server.url) as client,
    ):
        if not works:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get("/")
            return
        for _ in range(3):
            assert (await client.get("/")).content == b"ok"
        assert server.accepted == 1


# Error mapping.


async def test_refused_connection_is_connect_error() -> None:
    """Nothing listening: httpx.ConnectError."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
    async with PooledTransport() as transport, httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_connect_timeout() -> None:
    """A connect that cannot finish within the connect timeout: httpx.ConnectTimeout."""
    async with serving(answer_all) as server, client_for(server) as (client, _):
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("/", timeout=httpx.Timeout(5, connect=0))
        assert server.requests == []


async def test_tls_handshake_failure_is_connect_error() -> None:
    """An https URL on a server that does not speak TLS: httpx.ConnectError."""

    async def plain(peer: Peer) -> None:
        await peer.send(reply(b"not tls", b"400 Bad Request"))

    async with serving(plain) as server, client_for(server) as (client, _):
        with pytest.raises(httpx.ConnectError):
            await client.get(server.url.replace("http:", "https:"))


async def test_a_server_closing_during_the_tls_handshake_is_connect_error() -> None:
    """A server that accepts and closes before the handshake ends: httpx.ConnectError, the
    class of errors before anything was sent (on trio anyio calls it EndOfStream)."""

    async def read_the_hello_and_close(peer: Peer) -> None:
        await peer.stream.receive()  # read, so that the close is a FIN and not a reset

    async with serving(read_the_hello_and_close) as server, client_for(server) as (client, _):
        with pytest.raises(httpx.ConnectError):
            await client.get(server.url.replace("http:", "https:"))
        assert server.requests == []


async def test_no_answer_is_read_timeout() -> None:
    """A server that accepts and reads but never answers: httpx.ReadTimeout."""

    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_closed()

    async with serving(silent) as server, client_for(server) as (client, transport):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(5, read=0.1))
        assert idle_count(transport) == 0
        await until(lambda: server.closed == 1)


async def test_stalled_body_is_read_timeout() -> None:
    """A body that stops arriving: httpx.ReadTimeout while reading it."""

    async def stall(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await peer.wait_closed()

    async with serving(stall) as server, client_for(server) as (client, _):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(5, read=0.1))
        await until(lambda: server.closed == 1)


async def test_server_not_reading_is_write_timeout() -> None:
    """A server that never reads a large upload: httpx.WriteTimeout."""
    # Truly deaf: a listening socket that never accepts. The kernel completes the handshake
    # and takes what fits in the receive buffer, then nothing more. (A server on anyio's
    # asyncio streams may read everything before its handler first asks.)
    with socket.socket() as deaf:
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.bind(("127.0.0.1", 0))
        deaf.listen(1)
        url = f"http://127.0.0.1:{deaf.getsockname()[1]}"
        transport = PooledTransport()
        async with httpx.AsyncClient(transport=transport, base_url=url) as client:
            timeout = httpx.Timeout(5, write=0.2)
            with pytest.raises(httpx.WriteTimeout):
                await client.post("/", content=b"x" * 64_000_000, timeout=timeout)
            assert idle_count(transport) == 0


async def test_server_closing_during_upload_is_write_error() -> None:
    """A server that closes while the body is being written: httpx.WriteError."""

    async def hang_up(peer: Peer) -> None:
        await peer.stream.receive()

    async with serving(hang_up) as server, client_for(server) as (client, _):
        with pytest.raises(httpx.WriteError):
            await client.post("/", content=b"x" * 64_000_000)
        # The server's task counts its close on its next turn, which closing ours (a
        # syscall, no checkpoint on trio) need not have given it yet.
        await until(lambda: server.closed == 1)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="closed-before-answering"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", id="short-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-", id="cut-in-head"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", id="cut-chunk"
        ),
        pytest.param(b"SPDY/3 200 OK\r\n\r\n", id="malformed-status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", id="malformed-header"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            id="conflicting-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
            id="malformed-chunk-size",
        ),
    ],
)
async def test_broken_response_is_remote_protocol_error(raw: bytes) -> None:
    """A response cut short or malformed: httpx.RemoteProtocolError; connection dropped."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(raw)

    async with serving(handler) as server, client_for(server) as (client, transport):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
        assert idle_count(transport) == 0
        await until(lambda: server.closed == 1)


async def test_reused_connection_dying_after_the_write_is_not_retried() -> None:
    """Once bytes were written, a closed connection raises; the request is never resent."""

    async def answer_once_then_drop(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(reply())
        await peer.read_request()

    async with serving(answer_once_then_drop) as server, client_for(server) as (client, _):
        await client.get("/")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/", content=b"second")
        assert len(server.requests) == 2
        assert server.accepted == 1


async def test_unsupported_scheme() -> None:
    """Only http and https: anything else is httpx.UnsupportedProtocol."""
    async with PooledTransport() as transport, httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/")


# Cancellation.


async def test_cancellation_mid_request_closes_the_connection() -> None:
    """A request cancelled while waiting for the answer closes its connection."""

    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_closed()

    async with serving(silent) as server, client_for(server) as (client, transport):
        with anyio.move_on_after(0.1) as scope:
            await client.get("/")
        assert scope.cancelled_caught
        assert idle_count(transport) == 0
        await until(lambda: server.closed == 1)
