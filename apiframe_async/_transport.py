"""An HTTP/1.1 transport for httpx on anyio, whose pool costs O(1) per request.

httpx's default transport (httpcore 1.0.9) rescans every pooled connection, with a
`getpeername` syscall each, on every request: at 256 connections that is most of the CPU a
request costs. Here each origin has a LIFO stack of idle connections: a request pops the most
recently used one, checks that one only, and the connection goes back on the stack once its
response has been read to the end. There is no connection cap: the limiter above bounds
concurrency. The bytes of each connection come and go through `_connections`.

Errors map to httpx's classes by the phase they happen in, because retry decisions depend
on it:

    connecting (DNS, refused, TLS, timeout)   httpx.ConnectError, httpx.ConnectTimeout
                                              (the request was provably never sent)
    writing the request                       httpx.WriteError, httpx.WriteTimeout
    waiting for or reading the response       httpx.ReadError, httpx.ReadTimeout
    peer closed early, malformed response     httpx.RemoteProtocolError
    a proxy refusing the CONNECT tunnel       httpx.ProxyError (never sent either)
"""

from __future__ import annotations

import functools
import re
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol, Self, TypeAlias

import anyio
import anyio.abc
import httpx
import sniffio

from ._connections import (
    Connection,
    StreamConnection,
    open_protocol_connection,
    open_stream_connection,
)
from ._network import VerifyTypes, open_tunnel, ssl_context
from ._parser import ResponseParser

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Mapping
    from types import TracebackType

__all__ = [
    "HeadedRequest",
    "PooledTransport",
    "asks_close",
    "buffered_content",
    "request_head_of",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CLOSE = re.compile(rb"\r\nconnection:[^\r]*\bclose\b", re.IGNORECASE)

_Origin: TypeAlias = tuple[str, str, int]


class _Release(Protocol):
    """Hands a connection back to the pool, or closes it."""

    def __call__(self, connection: Connection, *, reusable: bool) -> Awaitable[None]: ...


class _Buffered(httpx.AsyncByteStream):
    """A body that arrived whole with its head: one chunk, nothing left on the socket."""

    __slots__ = ("content",)

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.content:
            yield self.content


def buffered_content(stream: object) -> bytes | None:
    """The whole body of a response of ours that arrived with its head; None otherwise."""
    return stream.content if isinstance(stream, _Buffered) else None


class _ResponseStream(httpx.AsyncByteStream):
    """The body as httpx reads it; hands the connection back once the body is complete.

    An iterator class rather than an async generator: an abandoned generator would be
    finalized by the garbage collector, with a ResourceWarning on trio.
    """

    def __init__(
        self,
        release: _Release,
        connection: Connection,
        parser: ResponseParser,
        request: httpx.Request,
        timeout: float | None,
        *,
        reusable: bool,
    ) -> None:
        self._release = release
        self._connection: Connection | None = connection
        self._parser = parser
        self._request = request
        self._timeout = timeout
        self._reusable = reusable

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        parser = self._parser
        try:
            while not (data := parser.take_body()) and not parser.complete:
                received = await connection.receive(self._request, self._timeout)
                if received:
                    parser.feed(received)
                else:
                    parser.finish_at_eof()
                    self._reusable = False  # close-delimited: the socket is done
        except BaseException:
            await self.aclose()
            raise
        if data:
            return data
        self._connection = None
        await self._release(connection, reusable=self._reusable and not parser.extra)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Discard the connection if the body was not read to the end: its state is unknown."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._release(connection, reusable=False)


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive, for `httpx.AsyncClient(transport=PooledTransport())`.

    Runs on asyncio and trio. Connections are opened on demand, without a cap, and kept
    per origin on a LIFO stack so the hottest are reused first. A connection that the server
    closed while idle is noticed before anything is written on it, and replaced. Responses
    are parsed by llhttp (httptools), with the stricter checks of `_parser`.

    Args:
        verify: `True` checks certificates against certifi's roots (or `SSL_CERT_FILE` /
            `SSL_CERT_DIR` with `trust_env`), `False` does not check; or a CA bundle path,
            or your own `ssl.SSLContext`.
        keepalive_expiry: Seconds an idle connection may be reused for; `None` for ever.
            Expired connections are closed as traffic goes on, not only when reached.
        max_idle_per_origin: How many idle connections to keep per origin; `None` keeps all.
        max_response_bytes: Body bytes allowed per response as sent (before any content
            decoding); a larger one is refused while it streams. `None` for no limit.
        trust_env: Read `SSL_CERT_FILE` and `SSL_CERT_DIR`.
        proxy: An http:// proxy to reach every origin through, by CONNECT.
    """

    def __init__(
        self,
        *,
        verify: VerifyTypes = True,
        keepalive_expiry: float | None = 5.0,
        max_idle_per_origin: int | None = None,
        max_response_bytes: int | None = None,
        trust_env: bool = True,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._verify = verify
        self._trust_env = trust_env
        self._proxy = proxy
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._max_body = max_response_bytes
        self._idle: dict[_Origin, deque[Connection]] = {}
        # Connections with a request or a response body in progress: aclose() ends them.
        self._in_use: set[Connection] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection: idle ones, and those a request or response is using.

        A request or response body read in progress then fails with `httpx.ReadError`
        (or `httpx.WriteError`), and the streamed response is closed.
        """
        self._closed = True
        idle, self._idle = self._idle, {}
        in_use, self._in_use = self._in_use, set()
        for connection in in_use:
            connection.abort()
        for connections in (*idle.values(), in_use):
            for connection in connections:
                await connection.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a pooled or new connection and return the streaming response."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        origin = _origin(request)
        connection = await self._checkout(origin) or await self._connect(
            origin, request, timeouts.get("connect")
        )
        self._in_use.add(connection)
        try:
            return await self._exchange(origin, connection, request, timeouts)
        except BaseException:
            self._in_use.discard(connection)
            await connection.aclose()
            raise

    async def _exchange(
        self,
        origin: _Origin,
        connection: Connection,
        request: httpx.Request,
        timeouts: Mapping[str, float | None],
    ) -> httpx.Response:
        if isinstance(request, HeadedRequest):
            request_head, closes = request.head, request.asks_close
        else:
            request_head = request_head_of(request)
            closes = asks_close(request_head)
        await _send_request(connection, request, request_head, timeouts.get("write"))
        read_timeout = timeouts.get("read")
        parser = ResponseParser(request, self._max_body)
        while not parser.head_done:
            data = await connection.receive(request, read_timeout)
            if not data:
                parser.finish_at_eof()
            parser.feed(data)
        reusable = not parser.closes and not closes
        release = functools.partial(self._release, origin)
        extensions = {"http_version": parser.version, "reason_phrase": parser.reason}
        if request.method == "HEAD":
            # llhttp would take the Content-Length as a body to come: there is none, and
            # any byte already past the head is the server speaking out of turn.
            await release(connection, reusable=reusable and not parser.body_bytes)
            stream: httpx.AsyncByteStream = _Buffered(b"")
        elif parser.complete:
            # A small reply usually arrives whole with its head: no stream to drive, and
            # the connection goes back at once.
            await release(connection, reusable=reusable and not parser.extra)
            stream = _Buffered(parser.take_body())
        else:
            stream = _ResponseStream(
                release, connection, parser, request, read_timeout, reusable=reusable
            )
        return httpx.Response(
            parser.status, headers=parser.headers, stream=stream, extensions=extensions
        )

    async def _checkout(self, origin: _Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.is_stale(time.monotonic(), self._keepalive_expiry):
                return connection
            await connection.aclose()
        return None

    async def _release(self, origin: _Origin, connection: Connection, *, reusable: bool) -> None:
        self._in_use.discard(connection)
        if not reusable or self._closed or connection.closed:
            await connection.aclose()
            return
        now = connection.idle_since = time.monotonic()
        idle = self._idle.setdefault(origin, deque())
        idle.append(connection)
        if self._max_idle is not None and len(idle) > self._max_idle:
            await idle.popleft().aclose()  # the coldest one
        if self._keepalive_expiry is not None:
            await self._close_expired(now - self._keepalive_expiry)

    async def _close_expired(self, idle_before: float) -> None:
        # The coldest connections sit at the bottom of each stack, where the LIFO order
        # may never reach while traffic goes on: close them from there. O(1) per request
        # when none expired, amortised O(1) otherwise.
        # A snapshot: closing yields, and another task may add an origin meanwhile.
        for idle in list(self._idle.values()):
            while idle and idle[0].idle_since < idle_before:
                await idle.popleft().aclose()

    async def _connect(
        self, origin: _Origin, request: httpx.Request, timeout: float | None
    ) -> Connection:
        try:
            with anyio.fail_after(timeout):
                return await self._open(origin)
        except TimeoutError as exc:  # before OSError, which it subclasses
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpx.ConnectError(repr(exc), request=request) from exc

    async def _open(self, origin: _Origin) -> Connection:
        scheme, host, port = origin
        tls = self._ssl_context if scheme == "https" else None
        if self._proxy is not None:
            return StreamConnection(await open_tunnel(self._proxy, host, port, tls))
        if sniffio.current_async_library() == "asyncio":
            return await open_protocol_connection(host, port, tls)
        return await open_stream_connection(host, port, tls)

    @functools.cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        # Built on first use: loading the CA bundle costs milliseconds plain HTTP never needs.
        return ssl_context(self._verify, trust_env=self._trust_env)


def _origin(request: httpx.Request) -> _Origin:
    url = request.url
    if url.scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
    return url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme]


class HeadedRequest(httpx.Request):
    """An `httpx.Request` that brings the head this transport would write for it.

    For a sender of many requests alike, which makes `head` once with `request_head_of()`
    (and `asks_close`, whether that head asks for the connection to be closed) and hands it
    to each: the transport then writes it as it is.
    """

    head: bytes
    asks_close: bool


def request_head_of(request: httpx.Request) -> bytes:
    """The request line and headers of `request`, as written on the connection.

    Raises:
        httpx.LocalProtocolError: A header holds CR, LF or NUL.
    """
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % pair for pair in request.headers.raw]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    # A CR or LF inside a header would let a value smuggle in headers or a second request;
    # a NUL is refused by every parser on the way.
    if head.count(b"\n") != len(lines) + 1 or head.count(b"\r") != len(lines) + 1:
        raise httpx.LocalProtocolError("CR or LF inside a request header", request=request)
    if b"\0" in head:
        raise httpx.LocalProtocolError("NUL inside a request header", request=request)
    return head


def asks_close(request_head: bytes) -> bool:
    """Whether a request head asks for the connection to be closed after its response."""
    return _CLOSE.search(request_head) is not None


async def _send_request(
    connection: Connection, request: httpx.Request, head: bytes, timeout: float | None
) -> None:
    try:
        content: bytes | None = request.content
    except httpx.RequestNotRead:  # a streaming upload
        content = None
    if content is not None:
        # One write: the common small request costs one send() and no cancel scope.
        await connection.send(head + content, request, timeout)
        return
    await connection.send(head, request, timeout)
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    async for chunk in request.stream:  # type: ignore[union-attr]  # async client: async
        if chunk:
            data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            await connection.send(data, request, timeout)
    if chunked:
        await connection.send(b"0\r\n\r\n", request, timeout)
