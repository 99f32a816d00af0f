"""Bounded replies, a pool that bad replies cannot poison, and stale bytes inside TLS.

Raw loopback servers (plain TCP and TLS with trustme certificates), on asyncio and trio.
"""

from __future__ import annotations

import ssl
import struct
import tracemalloc
import zlib
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.streams.tls
import httpx
import pytest
import trustme
from raw_server import Conn, Server, serving

from apiframe_async import AsyncApiframe, RequestValidationError, ResponseValidationError
from apiframe_async._http import ACCOUNT
from apiframe_async._transport import PooledTransport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.anyio

LIMIT = 1024 * 1024


def reply(body: bytes, headers: bytes = b"content-type: application/json\r\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


def answering(*replies: bytes) -> Callable[[Conn], Awaitable[None]]:
    """A handler answering the requests of all connections with `replies`, in order."""
    queue = list(replies)

    async def handler(conn: Conn) -> None:
        while queue:
            await conn.request()
            await conn.send(queue.pop(0))
        await conn.until_closed()

    return handler


def api_for(server: Server, max_response_bytes: int = 8 * 1024 * 1024) -> AsyncApiframe:
    return AsyncApiframe(
        api_key="k", base_url=server.url, max_retries=0, max_response_bytes=max_response_bytes
    )


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A valid 1 MiB gzip body that inflates to 1 GiB of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block, size = bytes(16 * 1024 * 1024), 1024**3
    # A full flush ends each segment on a byte boundary with no back references, so one
    # compressed segment repeated is a valid stream of the whole.
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // len(block)):
        crc = zlib.crc32(block, crc)
    deflated = segment * (size // len(block)) + compressor.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + deflated + struct.pack("<II", crc, size % 2**32)


# Bounded replies.


async def test_gzip_bomb_is_refused_in_bounded_memory(gzip_bomb: bytes) -> None:
    """1 MiB of gzip inflating to 1 GiB: a typed error, and memory peaks near the limit."""
    headers = b"content-type: application/json\r\ncontent-encoding: gzip\r\n"
    async with serving(answering(reply(gzip_bomb, headers))) as server, api_for(server) as api:
        tracemalloc.start()
        try:
            decoded_over = "decoded bytes or more is over the limit"
            with pytest.raises(ResponseValidationError, match=decoded_over):
                await api.account()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # The compressed body (1 MiB) and at most the limit (8 MiB) inflated, with slack.
    assert peak < 24 * 1024 * 1024


async def test_reply_over_the_limit_by_content_length_fails_before_the_body() -> None:
    """A head announcing more than the limit is refused without waiting for the body."""
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n{" % (LIMIT + 1)
    async with serving(answering(head)) as server, api_for(server, LIMIT) as api:
        with anyio.fail_after(5), pytest.raises(ResponseValidationError, match="over the limit"):
            await api.account()


async def test_endless_chunked_reply_is_refused_while_it_streams() -> None:
    """No length given: the body is counted as it arrives and refused past the limit."""

    async def endless(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
        while True:
            await conn.send(chunk)

    async with serving(endless) as server, api_for(server, LIMIT) as api:
        tracemalloc.start()
        try:
            with anyio.fail_after(10), pytest.raises(ResponseValidationError, match="limit"):
                await api.account()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * LIMIT


async def test_reply_at_the_limit_is_taken() -> None:
    """The limit is inclusive: a reply of exactly max_response_bytes is read."""
    body = b'{"pad":"' + b"x" * (LIMIT - 10) + b'"}'
    async with serving(answering(reply(body))) as server, api_for(server, LIMIT) as api:
        assert len(body) == LIMIT
        assert (await api._sender.call(ACCOUNT)).data == {"pad": "x" * (LIMIT - 10)}


async def test_deeply_nested_json_is_a_validation_error() -> None:
    """JSON nested past the recursion limit: ResponseValidationError, not RecursionError."""
    body = b"[" * 100_000 + b"]" * 100_000
    async with serving(answering(reply(body))) as server, api_for(server) as api:
        with pytest.raises(ResponseValidationError, match="nested too deeply"):
            await api.account()


@pytest.mark.parametrize("value", [0, -1, True])
def test_max_response_bytes_is_validated(value: int) -> None:
    with pytest.raises(RequestValidationError) as caught:
        AsyncApiframe(api_key="k", max_response_bytes=value)
    assert caught.value.field == "max_response_bytes"


# A bad reply never poisons the pool.


CORRUPT_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + b"not deflate at all"


async def test_corrupt_gzip_leaves_the_next_request_its_own_answer() -> None:
    """After a corrupt gzip body, the same client's next request gets its own reply."""
    headers = b"content-type: application/json\r\ncontent-encoding: gzip\r\n"
    replies = (reply(CORRUPT_GZIP, headers), reply(b'{"n":2}'), reply(b'{"n":3}'))
    async with serving(answering(*replies)) as server, api_for(server) as api:
        with pytest.raises(ResponseValidationError, match="could not be decoded"):
            await api._sender.call(ACCOUNT)
        assert (await api._sender.call(ACCOUNT)).data == {"n": 2}
        assert (await api._sender.call(ACCOUNT)).data == {"n": 3}
    assert server.accepted == 1  # the body was whole: the connection stayed good


# httpx abandons its own body generators when its decoder raises; trio reports them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_corrupt_gzip_through_a_plain_httpx_client() -> None:
    """The same on a bare httpx.AsyncClient over our transport: httpx's DecodingError, then ok."""
    headers = b"content-encoding: gzip\r\n"
    replies = (reply(CORRUPT_GZIP, headers), reply(b"second"))
    async with (
        serving(answering(*replies)) as server,
        httpx.AsyncClient(transport=PooledTransport(), base_url=server.url) as client,
    ):
        with pytest.raises(httpx.DecodingError):
            await client.get("/")
        assert (await client.get("/")).content == b"second"


# Stale bytes inside TLS.


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_bytes_pending_inside_tls_make_the_connection_stale(ca: trustme.CA) -> None:
    """A TLS record already read off the socket but not yet decrypted is stale, as on TCP."""
    fresh = reply(b"fresh", b"")
    # The first reply fills one TLS record exactly (16 KiB); an unasked reply follows in a
    # second record of the same TCP write, so it sits in TLS's buffers, not the socket's.
    pad = 16384 - len(reply(b"", b"x-pad: \r\n"))
    first = reply(b"", b"x-pad: " + b"p" * pad + b"\r\n")
    assert len(first) == 16384
    unasked = reply(b"stale", b"")

    sent_first = False

    async def handler(conn: Conn) -> None:
        nonlocal sent_first
        if not sent_first:
            sent_first = True
            await conn.request()
            await conn.send(first + unasked)
        while True:
            await conn.request()
            await conn.send(fresh)

    server_context, client_context = contexts(ca)
    async with (
        serving(handler, tls=server_context) as server,
        httpx.AsyncClient(
            transport=PooledTransport(verify=client_context), base_url=server.url
        ) as client,
    ):
        assert (await client.get("/")).content == b""
        await anyio.sleep(0.05)  # let the second record arrive
        assert (await client.get("/")).content == b"fresh"
        assert server.accepted == 2
