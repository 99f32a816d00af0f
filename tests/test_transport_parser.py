"""The transport's response parser against a table of raw server replies, on asyncio and trio.

Each reply comes from a raw loopback TCP server that then keeps the connection open: a reply
that is refused must be refused as soon as its bytes arrive, not at the read timeout.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import httpx
import pytest

from apiframe_async import APIConnectionError, AsyncApiframe, GenerateRequest
from apiframe_async._parser import MAX_HEAD
from apiframe_async._transport import PooledTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

pytestmark = pytest.mark.anyio

_DISCONNECTS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
# Much shorter than the read timeout below: a refusal that waits for the timeout fails.
FAST = 2.0
READ_TIMEOUT = 30.0


class RawServer:
    """Answers each request with the next reply of `replies` (sent in `pieces`), then idles."""

    def __init__(self, replies: Sequence[bytes], pieces: int = 1) -> None:
        self.replies = list(replies)
        self.pieces = pieces
        self.accepted = 0
        self.url = ""

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        self.accepted += 1
        buffer = b""
        async with stream:
            with contextlib.suppress(*_DISCONNECTS):
                while self.replies:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    buffer = buffer[_content_length(head) :]
                    reply = self.replies.pop(0)
                    size = -(-len(reply) // self.pieces)
                    for start in range(0, len(reply), size):
                        await stream.send(reply[start : start + size])
                while True:  # keep the connection open: the client must not wait on it
                    await stream.receive()


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.partition(b":")[2])
    return 0


@contextlib.asynccontextmanager
async def serving(server: RawServer) -> AsyncIterator[RawServer]:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio
        server.url = f"http://127.0.0.1:{port}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, server.handle)
            yield server
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def client(
    server: RawServer, max_response_bytes: int | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    timeout = httpx.Timeout(READ_TIMEOUT)
    transport = PooledTransport(max_response_bytes=max_response_bytes)
    async with httpx.AsyncClient(transport=transport, base_url=server.url, timeout=timeout) as c:
        yield c


def api_for(server: RawServer) -> AsyncApiframe:
    # Built after the server is serving: the URL carries its port.
    return AsyncApiframe(api_key="k", base_url=server.url, max_retries=0)


def ok(body: bytes = b"ok", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


REFUSED = [
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok", id="unknown-te"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        id="duplicate-te-headers",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        id="duplicate-te-list",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        id="te-coding-before-chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        id="te-and-content-length",
    ),
    pytest.param(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", id="bare-lf-everywhere"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\nx: y\r\n\r\nok", id="bare-lf-header"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\nok", id="bare-lf-end-of-head"),
    pytest.param(b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\ncontent-length: 2\r\n\r\nok", id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\nx: a\x00b\r\ncontent-length: 2\r\n\r\nok", id="nul-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nx\x00: a\r\ncontent-length: 2\r\n\r\nok", id="nul-name"),
    pytest.param(b"HTTP/1.1 099 Low\r\ncontent-length: 2\r\n\r\nok", id="status-99"),
    pytest.param(b"HTTP/1.1 000 Zero\r\ncontent-length: 2\r\n\r\nok", id="status-0"),
    pytest.param(b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok", id="status-4-digits"),
    pytest.param(b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok", id="status-not-digits"),
    pytest.param(b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok", id="http-2-version"),
    pytest.param(b"ICY 200 OK\r\ncontent-length: 2\r\n\r\nok", id="not-http"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\nok",
        id="content-length-overflow",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok", id="content-length-neg"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\nok", id="content-length-hex"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        id="content-length-conflict",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nx : y\r\ncontent-length: 2\r\n\r\nok", id="space-in-name"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        id="chunk-size-0x",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokk\r\n0\r\n\r\n",
        id="chunk-longer-than-size",
    ),
]


@pytest.mark.parametrize("raw", REFUSED)
async def test_malformed_reply_is_refused_at_once(raw: bytes) -> None:
    """Each reply is a RemoteProtocolError as soon as it arrives, with the server still open."""
    async with serving(RawServer([raw])) as server, client(server) as c:
        with anyio.fail_after(FAST), pytest.raises(httpx.RemoteProtocolError):
            await (await c.get("/")).aread()


@pytest.mark.parametrize("raw", REFUSED[:6])
async def test_malformed_reply_split_byte_by_byte_is_refused_too(raw: bytes) -> None:
    """Packet boundaries change nothing: the same replies, sent a byte per packet."""
    async with serving(RawServer([raw], pieces=len(raw))) as server, client(server) as c:
        with anyio.fail_after(FAST * 5), pytest.raises(httpx.RemoteProtocolError):
            await (await c.get("/")).aread()


@pytest.mark.parametrize("pieces", [1, 16, 200])
async def test_head_limit_is_one_number_whatever_the_packets(pieces: int) -> None:
    """A head that never ends is refused once MAX_HEAD bytes came, in any number of packets."""
    endless = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * (MAX_HEAD + 10)
    async with serving(RawServer([endless], pieces=pieces)) as server, client(server) as c:
        with anyio.fail_after(FAST * 5), pytest.raises(httpx.RemoteProtocolError, match="head"):
            await c.get("/")


async def test_head_just_under_the_limit_is_taken() -> None:
    """The limit is not lower than it says: a head of MAX_HEAD bytes in many headers passes."""
    line = b"x-filler: " + b"a" * 1000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
    filler = line * ((MAX_HEAD - len(head) - 2) // len(line))
    server = RawServer([head + filler + b"\r\nok"], pieces=7)
    async with serving(server), client(server) as c:
        assert (await c.get("/")).content == b"ok"


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param(b"connection: close\r\n", id="one-header"),
        pytest.param(b"connection: keep-alive\r\nconnection: close\r\n", id="second-header"),
        pytest.param(b"connection: close\r\nconnection: keep-alive\r\n", id="first-header"),
        pytest.param(b"connection: upgrade, close\r\n", id="in-a-list"),
        pytest.param(b"Connection: CLOSE\r\n", id="any-case"),
    ],
)
async def test_close_in_any_connection_header_is_honoured(connection: bytes) -> None:
    """A `close` anywhere means the connection is not reused for the next request."""
    replies = [ok(b"one", connection), ok(b"two")]
    async with serving(RawServer(replies)) as server, client(server) as c:
        assert (await c.get("/")).content == b"one"
        assert (await c.get("/")).content == b"two"
        assert server.accepted == 2


async def test_bytes_after_the_reply_mean_no_reuse() -> None:
    """A server that sends more than the reply spoke out of turn: its connection is dropped."""
    replies = [ok(b"one") + b"HTTP/1.1 200 OK\r\n", ok(b"two")]
    async with serving(RawServer(replies)) as server, client(server) as c:
        assert (await c.get("/")).content == b"one"
        assert (await c.get("/")).content == b"two"
        assert server.accepted == 2


async def test_transport_limit_refuses_a_large_content_length_before_the_body() -> None:
    """With `max_response_bytes`, an absurd Content-Length fails at the head."""
    huge = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\nstart"
    server = RawServer([huge])
    async with serving(server), client(server, max_response_bytes=1000) as c:
        with anyio.fail_after(FAST), pytest.raises(httpx.RemoteProtocolError, match="limit"):
            await c.get("/")


async def test_malformed_reply_reaches_a_caller_as_our_error() -> None:
    """Through AsyncApiframe, a refused reply is an APIConnectionError that may have been sent."""
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n"
    server = RawServer([raw])
    async with serving(server), api_for(server) as api:
        with anyio.fail_after(FAST), pytest.raises(APIConnectionError) as caught:
            await api.generate(GenerateRequest(training_id="t", prompt="p"))
    assert caught.value.may_have_been_submitted
