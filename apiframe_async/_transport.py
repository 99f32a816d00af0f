"""An HTTP/1.1 transport for httpx on anyio, whose pool costs O(1) per request.

httpx's default transport (httpcore 1.0.9) rescans every pooled connection, with a
`getpeername` syscall each, on every request: at 256 connections that is most of the CPU a
request costs. Here each origin has a LIFO stack of idle connections: a request pops the most
recently used one, checks that one only, and the connection goes back on the stack once its
response has been read to the end. There is no connection cap: the limiter above bounds
concurrency.

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
import select
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, Protocol, Self, TypeAlias

import anyio
import anyio.abc
import httpx

from ._network import VerifyTypes, open_tunnel, ssl_context

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from types import TracebackType

__all__ = ["PooledTransport"]

_READ_SIZE = 64 * 1024
_MAX_HEAD = 64 * 1024
# A request this small goes out in one write that cannot block: it is smaller than any
# default socket send buffer (Linux starts at 16 KiB) and we never pipeline, so the buffer is
# empty. It needs no write timeout, and so no cancel scope (~9 us of CPU each).
_UNBLOCKING_WRITE = 8 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_CLOSE = re.compile(rb"\r\nconnection:[^\r]*\bclose\b", re.IGNORECASE)
_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

_Origin: TypeAlias = tuple[str, str, int]


class _Head(NamedTuple):
    """A response's status line and headers."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    fields: dict[bytes, bytes]  # lower-cased names and values, for framing decisions


class _Connection:
    """One socket, and the bytes read from it past what has been consumed."""

    __slots__ = ("buffer", "idle_since", "socket", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        # Looked up once: the idle check polls it on every reuse.
        raw_socket = anyio.abc.SocketAttribute.raw_socket
        self.socket: socket.socket = stream.extra(raw_socket)  # noqa: S610 - anyio, not Django
        self.buffer = b""
        self.idle_since = 0.0

    def is_stale(self, now: float, expiry: float | None) -> bool:
        """Whether reuse must not be tried: idle too long, or the server closed or spoke."""
        expired = expiry is not None and now - self.idle_since > expiry
        return expired or bool(self.buffer) or _is_readable(self.socket)

    async def aclose(self) -> None:
        # Forcefully: this also runs in cancelled scopes, and HTTP needs no TLS goodbye.
        await anyio.aclose_forcefully(self.stream)

    async def receive(self, request: httpx.Request, timeout: float | None) -> bytes:
        """The next bytes from the network, or b"" at end of stream.

        `timeout=None` adds no cancel scope: the caller's scope, if any, bounds the wait.
        """
        if timeout is None:
            return await self._receive(request)
        with anyio.move_on_after(timeout):
            return await self._receive(request)
        raise httpx.ReadTimeout("timed out reading the response", request=request)

    async def _receive(self, request: httpx.Request) -> bytes:
        try:
            return await self.stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            return b""
        except _IO_ERRORS as exc:
            raise httpx.ReadError(repr(exc), request=request) from exc

    async def read_some(self, limit: int, request: httpx.Request, timeout: float | None) -> bytes:
        """Up to `limit` bytes, from the buffer first; b"" at end of stream."""
        if not self.buffer:
            self.buffer = await self.receive(request, timeout)
        data, self.buffer = self.buffer[:limit], self.buffer[limit:]
        return data

    async def read_until(
        self, delimiter: bytes, request: httpx.Request, timeout: float | None
    ) -> bytes:
        """The bytes before `delimiter`, which is consumed too."""
        while (end := self.buffer.find(delimiter)) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("response line or head too long", request=request)
            data = await self.receive(request, timeout)
            if not data:
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a complete response", request=request
                )
            self.buffer += data
        found, self.buffer = self.buffer[:end], self.buffer[end + len(delimiter) :]
        return found


class _Body(Protocol):
    """Reads one response body off a connection, chunk by chunk."""

    async def read(self) -> bytes:
        """The next piece of the body, or b"" once it is complete."""
        ...


class _LengthBody:
    """A body of `Content-Length` bytes."""

    def __init__(
        self, connection: _Connection, request: httpx.Request, timeout: float | None, length: int
    ) -> None:
        self._connection, self._request, self._timeout = connection, request, timeout
        self._remaining = length

    def take_buffered(self) -> bytes | None:
        """The whole body, if it already arrived with the head; None if more is to come."""
        connection = self._connection
        if len(connection.buffer) < self._remaining:
            return None
        data = connection.buffer[: self._remaining]
        connection.buffer = connection.buffer[self._remaining :]
        self._remaining = 0
        return data

    async def read(self) -> bytes:
        if not self._remaining:
            return b""
        data = await self._connection.read_some(self._remaining, self._request, self._timeout)
        if not data:
            raise httpx.RemoteProtocolError(
                "server closed the connection before the end of the body", request=self._request
            )
        self._remaining -= len(data)
        return data


class _ChunkedBody:
    """A `Transfer-Encoding: chunked` body."""

    def __init__(
        self, connection: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        self._connection, self._request, self._timeout = connection, request, timeout
        self._remaining = 0
        self._done = False

    async def read(self) -> bytes:
        if self._done:
            return b""
        if not self._remaining:
            self._remaining = _chunk_size(await self._line(), self._request)
            if not self._remaining:
                while await self._line():  # trailers are not surfaced: skip them
                    pass
                self._done = True
                return b""
        data = await self._connection.read_some(self._remaining, self._request, self._timeout)
        if not data:
            raise httpx.RemoteProtocolError(
                "server closed the connection inside a chunk", request=self._request
            )
        self._remaining -= len(data)
        if not self._remaining and await self._line():
            raise httpx.RemoteProtocolError("chunk longer than its size", request=self._request)
        return data

    async def _line(self) -> bytes:
        return await self._connection.read_until(b"\r\n", self._request, self._timeout)


class _CloseBody:
    """A body delimited by the server closing the connection."""

    def __init__(
        self, connection: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        self._connection, self._request, self._timeout = connection, request, timeout

    async def read(self) -> bytes:
        return await self._connection.read_some(_READ_SIZE, self._request, self._timeout)


class _ResponseStream(httpx.AsyncByteStream):
    """The body as httpx reads it; hands the connection back once the body is complete.

    An iterator class rather than an async generator: an abandoned generator would be
    finalized by the garbage collector, with a ResourceWarning on trio.
    """

    def __init__(
        self,
        release: Callable[[], Awaitable[None]],
        connection: _Connection,
        body: _Body,
    ) -> None:
        self._release = release
        self._connection: _Connection | None = connection
        self._body = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._connection is None:
            raise StopAsyncIteration
        try:
            data = await self._body.read()
        except BaseException:
            await self.aclose()
            raise
        if data:
            return data
        self._connection = None
        await self._release()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Discard the connection if the body was not read to the end: its state is unknown."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive, for `httpx.AsyncClient(transport=PooledTransport())`.

    Runs on asyncio and trio. Connections are opened on demand, without a cap, and kept
    per origin on a LIFO stack so the hottest are reused first. A connection that the server
    closed while idle is noticed before anything is written on it, and replaced.

    Args:
        verify: `True` checks certificates against certifi's roots (or `SSL_CERT_FILE` /
            `SSL_CERT_DIR` with `trust_env`), `False` does not check; or a CA bundle path,
            or your own `ssl.SSLContext`.
        keepalive_expiry: Seconds an idle connection may be reused for; `None` for ever.
        max_idle_per_origin: How many idle connections to keep per origin; `None` keeps all.
        trust_env: Read `SSL_CERT_FILE` and `SSL_CERT_DIR`.
        proxy: An http:// proxy to reach every origin through, by CONNECT.
    """

    def __init__(
        self,
        *,
        verify: VerifyTypes = True,
        keepalive_expiry: float | None = 5.0,
        max_idle_per_origin: int | None = None,
        trust_env: bool = True,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._verify = verify
        self._trust_env = trust_env
        self._proxy = proxy
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._idle: dict[_Origin, deque[_Connection]] = {}
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
        """Close the idle connections; those in use close when their response does."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a pooled or new connection and return the streaming response."""
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        origin = _origin(request)
        connection = await self._checkout(origin) or await self._connect(
            origin, request, timeouts.get("connect")
        )
        try:
            return await self._exchange(origin, connection, request, timeouts)
        except BaseException:
            await connection.aclose()
            raise

    async def _exchange(
        self,
        origin: _Origin,
        connection: _Connection,
        request: httpx.Request,
        timeouts: Mapping[str, float | None],
    ) -> httpx.Response:
        request_head = _request_head(request)
        await _send_request(connection.stream, request, request_head, timeouts.get("write"))
        head = await _read_head(connection, request, timeouts.get("read"))
        body = _body(connection, request, timeouts.get("read"), head)
        reusable = _is_reusable(head, request_head) and not isinstance(body, _CloseBody)
        release = functools.partial(self._checkin if reusable else _discard, origin, connection)
        if isinstance(body, _LengthBody) and (content := body.take_buffered()) is not None:
            # A small reply usually arrives whole with its head: hand it over as content,
            # and the connection back at once, without a stream to drive.
            await release()
            return httpx.Response(
                head.status,
                headers=head.headers,
                content=content,
                extensions={"http_version": head.version, "reason_phrase": head.reason},
            )
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_ResponseStream(release, connection, body),
            extensions={"http_version": head.version, "reason_phrase": head.reason},
        )

    async def _checkout(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.is_stale(time.monotonic(), self._keepalive_expiry):
                return connection
            await connection.aclose()
        return None

    async def _checkin(self, origin: _Origin, connection: _Connection) -> None:
        if self._closed:
            await connection.aclose()
            return
        connection.idle_since = time.monotonic()
        idle = self._idle.setdefault(origin, deque())
        idle.append(connection)
        if self._max_idle is not None and len(idle) > self._max_idle:
            await idle.popleft().aclose()  # the coldest one

    async def _connect(
        self, origin: _Origin, request: httpx.Request, timeout: float | None
    ) -> _Connection:
        try:
            with anyio.fail_after(timeout):
                return _Connection(await self._open_stream(origin))
        except TimeoutError as exc:  # before OSError, which it subclasses
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpx.ConnectError(repr(exc), request=request) from exc

    async def _open_stream(self, origin: _Origin) -> anyio.abc.ByteStream:
        scheme, host, port = origin
        if self._proxy is not None:
            tls = self._ssl_context if scheme == "https" else None
            return await open_tunnel(self._proxy, host, port, tls)
        if scheme == "http":
            return await anyio.connect_tcp(host, port)
        return await anyio.connect_tcp(
            host, port, ssl_context=self._ssl_context, tls_standard_compatible=False
        )

    @functools.cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        # Built on first use: loading the CA bundle costs milliseconds plain HTTP never needs.
        return ssl_context(self._verify, trust_env=self._trust_env)


async def _discard(_origin: _Origin, connection: _Connection) -> None:
    await connection.aclose()


def _origin(request: httpx.Request) -> _Origin:
    url = request.url
    if url.scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
    return url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme]


def _is_readable(sock: socket.socket) -> bool:
    # An idle HTTP/1.1 connection has nothing to read unless the server closed it (EOF) or
    # broke the protocol; either way it must not be reused. One poll, on this socket only.
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])  # pragma: no cover - Windows


def _request_head(request: httpx.Request) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % pair for pair in request.headers.raw]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    # A CR or LF inside a header would let a value smuggle in headers or a second request.
    if head.count(b"\n") != len(lines) + 1 or head.count(b"\r") != len(lines) + 1:
        raise httpx.LocalProtocolError("CR or LF inside a request header", request=request)
    return head


async def _send_request(
    stream: anyio.abc.ByteStream, request: httpx.Request, head: bytes, timeout: float | None
) -> None:
    try:
        content: bytes | None = request.content
    except httpx.RequestNotRead:  # a streaming upload
        content = None
    try:
        if content is not None and len(head) + len(content) <= _UNBLOCKING_WRITE:
            await stream.send(head + content)
            return
        with anyio.move_on_after(timeout):
            await _send_in_parts(stream, request, head, content)
            return
    except _IO_ERRORS as exc:
        raise httpx.WriteError(repr(exc), request=request) from exc
    raise httpx.WriteTimeout("timed out writing the request", request=request)


async def _send_in_parts(
    stream: anyio.abc.ByteStream, request: httpx.Request, head: bytes, content: bytes | None
) -> None:
    await stream.send(head)
    if content is not None:
        await stream.send(content)
        return
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    async for chunk in request.stream:  # type: ignore[union-attr]  # async client: async
        if chunk:
            await stream.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        await stream.send(b"0\r\n\r\n")


async def _read_head(
    connection: _Connection, request: httpx.Request, timeout: float | None
) -> _Head:
    # One cancel scope for the whole head rather than one per receive: a scope costs
    # ~9 us of CPU on either backend, a tenth of what the transport may spend.
    with anyio.move_on_after(timeout):
        while True:
            head = _parse_head(await connection.read_until(b"\r\n\r\n", request, None), request)
            # 1xx responses are interim (100 Continue, 103 Early Hints): the real one follows.
            if not 100 <= head.status < 200:  # noqa: PLR2004 - the 1xx class
                return head
    raise httpx.ReadTimeout("timed out waiting for the response", request=request)


def _parse_head(data: bytes, request: httpx.Request) -> _Head:
    status_line, *lines = data.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in _VERSIONS or len(code) != len(b"200") or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {status_line!r}", request=request)
    headers = [_parse_header(line, request) for line in lines]
    fields = {name.lower(): value.lower() for name, value in headers}
    return _Head(version, int(code), reason, headers, fields)


def _parse_header(line: bytes, request: httpx.Request) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    value = value.strip(b" \t")
    # Rejects obsolete line folding and bare CR/LF too: neither is a token or a clean value.
    if not _TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value:
        raise httpx.RemoteProtocolError(f"malformed header line {line!r}", request=request)
    return name, value


def _body(
    connection: _Connection, request: httpx.Request, timeout: float | None, head: _Head
) -> _Body:
    """How the body ends: RFC 9112, section 6.3."""
    if request.method == "HEAD" or head.status in {204, 304}:
        return _LengthBody(connection, request, timeout, 0)
    if (coding := head.fields.get(b"transfer-encoding")) is not None:
        if coding.rsplit(b",", 1)[-1].strip() == b"chunked":
            return _ChunkedBody(connection, request, timeout)
        return _CloseBody(connection, request, timeout)
    if b"content-length" in head.fields:
        return _LengthBody(connection, request, timeout, _content_length(head.headers, request))
    return _CloseBody(connection, request, timeout)


def _is_reusable(head: _Head, request_head: bytes) -> bool:
    """Whether keep-alive holds: neither side said close, and HTTP/1.1 or asked for it."""
    connection = head.fields.get(b"connection", b"")
    if b"close" in connection or _CLOSE.search(request_head):
        return False
    return head.version == b"HTTP/1.1" or b"keep-alive" in connection


def _content_length(headers: list[tuple[bytes, bytes]], request: httpx.Request) -> int:
    # Repeated Content-Length headers are allowed only if they all agree (RFC 9110, 8.6).
    lengths = {
        item.strip()
        for name, value in headers
        if name.lower() == b"content-length"
        for item in value.split(b",")
    }
    if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
        raise httpx.RemoteProtocolError("invalid Content-Length", request=request)
    return int(length)


def _chunk_size(line: bytes, request: httpx.Request) -> int:
    size = line.partition(b";")[0].strip(b" \t")  # chunk extensions are ignored
    # Not int(size, 16) alone: it would also take "0x1f", "+1f" and "1_f".
    if not _HEX.fullmatch(size):
        raise httpx.RemoteProtocolError(f"malformed chunk size {line!r}", request=request)
    return int(size, 16)
