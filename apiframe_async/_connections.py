"""One HTTP/1.1 connection's bytes in and out, with httpx's errors, on asyncio and on trio.

Two kinds, one interface (`Connection`), chosen when a connection is opened:

- On asyncio, direct connections (plain TCP or TLS) are an `asyncio.Protocol`, as
  aiohttp's are: the socket stays registered with the event loop for its whole life and
  bytes arrive by callback. Waiting for a reply costs one future, and a read timeout one
  timer handle per connection that is moved, not remade, on each read.
- Everywhere else (trio, and tunnels through a proxy) a connection is an anyio byte
  stream. Plain TCP is read and written on its non-blocking socket directly, waiting only
  when it would block (on trio with trio's own waits); TLS goes through anyio's
  `TLSStream`.

Either way a connection knows whether it is stale (idle too long, or the server closed or
sent something while it was idle), so that nothing is written on a connection the server
has already given up.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import select
import socket
import ssl
import sys
from asyncio import trsock
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.streams.tls
import httpx
import sniffio

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._deadlines import Deadlines

__all__ = [
    "Connection",
    "ProtocolConnection",
    "StreamConnection",
    "open_protocol_connection",
    "open_stream_connection",
]

_READ_SIZE = 64 * 1024
# Bytes an asyncio connection buffers unread before it stops reading from the socket: a
# slow reader of a large body must not have it all in memory.
_MAX_BUFFERED = 256 * 1024
_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_INF = float("inf")


class Connection(Protocol):
    """What the pool needs of a connection, whichever kind it is."""

    #: Set once the connection is closed, or closing; it is never reused then.
    closed: bool
    #: `time.monotonic()` when it went back to the pool.
    idle_since: float

    def is_stale(self, now: float, expiry: float | None) -> bool:
        """Whether reuse must not be tried: idle too long, or the server closed or spoke."""
        ...

    def abort(self) -> None:
        """Mark closed and wake a read or write waiting on it (closing from another task)."""
        ...

    async def aclose(self) -> None:
        """Close the connection at once; this also runs in cancelled scopes."""
        ...

    async def receive(self, request: httpx.Request, timeout: float | None) -> bytes:
        """The next bytes, or b"" at end of stream; `timeout` bounds this one read."""
        ...

    async def send(self, data: bytes, request: httpx.Request, timeout: float | None) -> None:
        """Write all of `data`; `timeout` bounds each wait for the socket to take more."""
        ...


class _Phase(NamedTuple):
    """The errors of one direction of a connection."""

    error: type[httpx.TransportError]
    timeout: type[httpx.TimeoutException]
    doing: str


_READING = _Phase(httpx.ReadError, httpx.ReadTimeout, "reading the response")
_WRITING = _Phase(httpx.WriteError, httpx.WriteTimeout, "writing the request")


def _interrupted(phase: _Phase, request: httpx.Request, *, closed: bool) -> httpx.TransportError:
    if closed:
        return phase.error("the transport was closed", request=request)
    return phase.timeout(f"timed out {phase.doing}", request=request)


def _is_readable(fd: int) -> bool:
    # An idle HTTP/1.1 connection has nothing to read unless the server closed it (EOF) or
    # broke the protocol; either way it must not be reused. One poll, on this socket only.
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows


# -- asyncio: bytes by callback ---------------------------------------------------------


class _Interrupted(Exception):  # noqa: N818 - a wake-up signal, turned into httpx's error
    """A wait ended by closing the connection, or by its deadline."""


async def open_protocol_connection(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> ProtocolConnection:
    """A direct connection on the running asyncio loop; TLS with `ssl_context`.

    Raises OSError (ssl.SSLError included) when it cannot be opened: nothing was sent.
    """
    loop = asyncio.get_running_loop()
    connect = functools.partial(
        loop.create_connection,
        lambda: ProtocolConnection(loop),
        host,
        port,
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
    )
    # As anyio.connect_tcp: a name's IPv6 and IPv4 addresses raced, the second 250 ms
    # after the first. An address has nothing to race, and the race costs three tasks;
    # uvloop's loop has no such option.
    race = isinstance(loop, asyncio.BaseEventLoop) and not _is_address(host)
    _, connection = await (connect(happy_eyeballs_delay=0.25) if race else connect())
    return cast("ProtocolConnection", connection)


async def open_stream_connection(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> StreamConnection:
    """A direct connection as an anyio stream (on trio); TLS with `ssl_context`.

    Raises OSError (ssl.SSLError included) or anyio.BrokenResourceError when it cannot be
    opened: nothing was sent.
    """
    # A name's addresses are raced by anyio (happy eyeballs), as on asyncio.
    connect = _connect_address if _is_address(host) else anyio.connect_tcp
    plain = await connect(host, port)
    if ssl_context is None:
        return StreamConnection(plain)
    try:
        tls = await anyio.streams.tls.TLSStream.wrap(
            plain, hostname=host, ssl_context=ssl_context, standard_compatible=False
        )
    except anyio.EndOfStream as exc:
        await anyio.aclose_forcefully(plain)
        message = "the server closed the connection during the TLS handshake"
        raise ConnectionResetError(errno.ECONNRESET, message) from exc
    except BaseException:
        await anyio.aclose_forcefully(plain)
        raise
    return StreamConnection(tls)


async def _connect_address(host: str, port: int) -> anyio.abc.SocketStream:
    """What anyio.connect_tcp does for an address, without its race.

    The race (a task group, a task, an event and a cancel scope) has nothing to race
    between for one address, and cost about 150 us of CPU a connection on trio, two thirds
    of what opening one costs. Opening 256 at once, the first request left 44-69 ms after
    the start instead of 67-73 ms.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()  # a connect timeout of 0 fails here
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)  # noqa: FBT003 - the standard library's signature
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connecting to {host}:{port}: {os.strerror(error)}") from None
        try:
            return await anyio.abc.SocketStream.from_socket(sock)
        except ValueError as exc:  # from_socket's check: reset since the connect finished
            raise ConnectionResetError(errno.ENOTCONN, f"{host}:{port} reset") from exc
    except BaseException:
        sock.close()
        raise


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ProtocolConnection(asyncio.Protocol):
    """A connection whose bytes the asyncio event loop hands over as they arrive.

    Received bytes wait in a buffer until read; a reader that finds it empty waits on a
    future that the next `data_received` (or EOF, or loss) resolves. Writes go to the
    transport's buffer at once; only when that buffer is over its high-water mark does a
    send wait for it to drain, bounded by the write timeout.
    """

    __slots__ = (
        "_buffer",
        "_buffered",
        "_deadline",
        "_eof",
        "_error",
        "_fd",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_timer",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        # The timeout of a wait: one timer, moved forward lazily (see `_arm`).
        self._deadline = _INF
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.idle_since = 0.0

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport, and the socket's descriptor for the stale check."""
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        """Buffer the bytes and wake the reader."""
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > _MAX_BUFFERED and not self._paused_reading and self._transport:
            self._paused_reading = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        """The server is done sending: the reader gets b"" once the buffer is read."""
        self._eof = True
        self._wake()
        return False  # close the transport: nothing more will be written on it either

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: wake whoever waits, with the reason if there is one."""
        self._eof = True
        self._error = exc
        self._transport = None  # closed by asyncio, socket and all
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        """The transport's write buffer is over its high-water mark."""
        self._paused_writing = True

    def resume_writing(self) -> None:
        """The write buffer drained below its low-water mark."""
        self._paused_writing = False
        self._wake()

    def _wake(self, error: BaseException | None = None) -> None:
        # A waiter rechecks what it waits for: a wake-up it did not need costs nothing.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    # the Connection interface

    def is_stale(self, now: float, expiry: float | None) -> bool:
        """Whether reuse must not be tried: idle too long, or the server closed or spoke."""
        if expiry is not None and now - self.idle_since > expiry:
            return True
        transport = self._transport
        if self._buffer or self._eof or self.closed or transport is None:
            return True
        # Closing: the socket may be closed already (TLS tells us one turn later), and its
        # number may belong to another socket by now. Not closing: bytes or a FIN that
        # reached the socket since the loop last looked.
        return transport.is_closing() or _is_readable(self._fd)

    def abort(self) -> None:
        """Mark closed and wake a read or write waiting on it (closing from another task)."""
        self.closed = True
        self._wake(_Interrupted())

    async def aclose(self) -> None:
        """Close the socket at once, without waiting for buffered writes."""
        self.abort()
        if self._transport is not None:  # else lost already, and its timer stopped with it
            self._transport.abort()
            # asyncio closes the socket in a callback of the loop's next turn: let it run,
            # shielded (this also runs in cancelled scopes), so that it is closed on return
            # and not left to the garbage collector if the loop stops first.
            await anyio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self, request: httpx.Request, timeout: float | None) -> bytes:
        """The next bytes, or b"" at end of stream; `timeout` bounds this one read."""
        if self.closed:
            raise _interrupted(_READING, request, closed=True)
        if not self._buffer and not self._eof:
            # Waited for here, not in a helper: a coroutine less on every request's chain.
            self._arm(timeout)
            try:
                while not self._buffer and not self._eof:
                    self._waiter = self._loop.create_future()
                    await self._waiter
            except _Interrupted:
                raise _interrupted(_READING, request, closed=self.closed) from None
            finally:
                self._disarm()
        if not self._buffer:
            if self._error is not None:
                raise httpx.ReadError(repr(self._error), request=request) from self._error
            return b""
        buffer = self._buffer
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._buffered = 0
        if self._paused_reading and self._transport is not None:
            self._paused_reading = False
            self._transport.resume_reading()
        return data

    async def send(self, data: bytes, request: httpx.Request, timeout: float | None) -> None:
        """Write all of `data`; `timeout` bounds the wait for the transport to take it."""
        if self.closed:
            raise _interrupted(_WRITING, request, closed=True)
        transport = self._transport
        if transport is None or transport.is_closing():
            raise httpx.WriteError(repr(self._error or "connection closed"), request=request)
        try:
            transport.write(data)
        except (OSError, RuntimeError) as exc:
            raise httpx.WriteError(repr(exc), request=request) from exc
        if self._must_drain():
            self._arm(timeout)
            try:
                while self._must_drain():
                    self._waiter = self._loop.create_future()
                    await self._waiter
            except _Interrupted:
                raise _interrupted(_WRITING, request, closed=self.closed) from None
            finally:
                self._disarm()
        if self._error is not None:
            raise httpx.WriteError(repr(self._error), request=request) from self._error

    def _must_drain(self) -> bool:
        return self._paused_writing and not self._eof

    def _arm(self, timeout: float | None) -> None:
        # One timer per connection, not per wait: each wait moves the deadline forward,
        # and the timer, when it fires early, sets itself again for the deadline then. Only
        # a deadline sooner than the timer's (a shorter timeout) sets it anew.
        if timeout is None:
            return
        deadline = self._deadline = self._loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _disarm(self) -> None:
        self._waiter = None
        self._deadline = _INF

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline == _INF:
            return  # nobody waits: a later wait sets a timer of its own
        waiter = self._waiter
        if self._loop.time() >= self._deadline and waiter is not None and not waiter.done():
            waiter.set_exception(_Interrupted())
            return
        # Not due yet; or due, but the waiter was woken in this same turn for another
        # reason (a drain wait then waits again): look again then, at once if due.
        self._timer = self._loop.call_at(self._deadline, self._check_deadline)


# -- anyio streams: trio, and tunnels --------------------------------------------------


class StreamConnection:
    """One anyio byte stream; plain TCP read and written on its socket directly.

    anyio's stream on asyncio goes through asyncio's transport and protocol, and registers
    and unregisters the socket with epoll on every receive. Plain TCP is therefore read and
    written on the non-blocking socket itself, waiting with `anyio.wait_readable` /
    `wait_writable` only when it would block; anyio's stream stays the owner that closes it.
    TLS goes through anyio's `TLSStream`.
    """

    __slots__ = (
        "_deadlines",
        "_duplicate",
        "_expired",
        "_scope",
        "_trio",
        "closed",
        "idle_since",
        "socket",
        "stream",
        "tls",
    )

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.tls = isinstance(stream, anyio.streams.tls.TLSStream)
        self.socket = _own_socket(stream)
        self._duplicate = self.socket is not stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610
        self.idle_since = 0.0
        self.closed = False
        # The wait in progress, so that closing the transport can end it.
        self._scope: anyio.CancelScope | None = None
        # On trio, trio's own waits (anyio's layer over them cost a request a fifth of its
        # CPU), timed by the run's `Deadlines` rather than a cancel scope each. Imported
        # only when trio is the running library.
        self._trio = sys.modules["trio"] if sniffio.current_async_library() == "trio" else None
        self._deadlines: Callable[[], Deadlines] | None = None
        if self._trio is not None:
            from ._deadlines import Deadlines  # noqa: PLC0415 - needs trio, which is optional

            # Looked up per wait: a pooled connection may serve a later trio run.
            self._deadlines = Deadlines.for_this_run
        self._expired = False

    def is_stale(self, now: float, expiry: float | None) -> bool:
        """Whether reuse must not be tried: idle too long, or the server closed or spoke."""
        if expiry is not None and now - self.idle_since > expiry:
            return True
        return _is_readable(self.socket.fileno()) or (self.tls and _tls_pending(self.stream))

    def abort(self) -> None:
        """Mark closed and wake a read or write waiting on it (closing from another task)."""
        # Each time, not once: a wait may have begun since the last call (the pool aborts
        # connections in use, then closes each, which aborts again).
        already_closed, self.closed = self.closed, True
        if self._scope is not None:
            self._scope.cancel()
        elif self._trio is not None and not already_closed:
            self._trio.lowlevel.notify_closing(self.socket)

    def expire(self) -> None:
        """End the plain-TCP wait in progress on trio: its deadline passed (see `Deadlines`)."""
        if not self.closed:
            assert self._trio is not None  # noqa: S101 -- only trio's Deadlines call this
            self._expired = True
            self._trio.lowlevel.notify_closing(self.socket)

    async def aclose(self) -> None:
        """Close the socket; forcefully: this also runs in cancelled scopes."""
        self.abort()
        if self._trio is not None and not self.tls:
            # trio's socket, told by abort() that it closes: closing it is what anyio's
            # aclose() would do, without the cancelled scope and the Cancelled raised and
            # caught in it, which took most of the pool's close on trio.
            self.socket.close()
            return
        if self._duplicate:
            self.socket.close()
        await anyio.aclose_forcefully(self.stream)

    async def receive(self, request: httpx.Request, timeout: float | None) -> bytes:
        """The next bytes, or b"" at end of stream; `timeout` bounds this one read."""
        if self.tls:
            return await self._receive_tls(request, timeout)
        while True:
            try:
                return self.socket.recv(_READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise httpx.ReadError(repr(exc), request=request) from exc
            await self._wait(_READING, request, timeout)

    async def send(self, data: bytes, request: httpx.Request, timeout: float | None) -> None:
        """Write all of `data`; `timeout` bounds each wait for the socket to take more."""
        if self.tls:
            await self._send_tls(data, request, timeout)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[self.socket.send(view) :]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                raise httpx.WriteError(repr(exc), request=request) from exc
            await self._wait(_WRITING, request, timeout)

    async def _wait(self, phase: _Phase, request: httpx.Request, timeout: float | None) -> None:
        # Only when the socket is not ready: most sends never wait.
        if self._deadlines is not None:
            await self._wait_trio(phase, request, timeout, self._deadlines())
            return
        deadline = _INF if timeout is None else anyio.current_time() + timeout
        wait = anyio.wait_writable if phase is _WRITING else anyio.wait_readable
        with anyio.CancelScope(deadline=deadline) as scope:
            self._scope = scope
            try:
                await wait(self.socket)
            except _IO_ERRORS as exc:
                raise phase.error(repr(exc), request=request) from exc
            finally:
                self._scope = None
        if scope.cancelled_caught:
            raise _interrupted(phase, request, closed=self.closed)

    async def _wait_trio(
        self, phase: _Phase, request: httpx.Request, timeout: float | None, deadlines: Deadlines
    ) -> None:
        trio = self._trio
        assert trio is not None  # noqa: S101 -- deadlines exist only on trio
        if self.closed:
            raise _interrupted(phase, request, closed=True)
        lowlevel = trio.lowlevel
        wait = lowlevel.wait_writable if phase is _WRITING else lowlevel.wait_readable
        self._expired = False
        if timeout is not None:
            deadlines.arm(self, timeout)
        try:
            await wait(self.socket)
        except trio.ClosedResourceError as exc:
            # Woken by notify_closing: our deadline, or the transport closing.
            if self._expired or self.closed:
                raise _interrupted(phase, request, closed=self.closed) from None
            raise phase.error(repr(exc), request=request) from exc
        except (trio.BusyResourceError, OSError) as exc:
            raise phase.error(repr(exc), request=request) from exc
        finally:
            if timeout is not None:
                deadlines.disarm(self)

    async def _receive_tls(self, request: httpx.Request, timeout: float | None) -> bytes:
        deadline = _INF if timeout is None else anyio.current_time() + timeout
        with anyio.CancelScope(deadline=deadline) as scope:
            self._scope = scope
            try:
                return await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return b""
            except _IO_ERRORS as exc:
                raise httpx.ReadError(repr(exc), request=request) from exc
            finally:
                self._scope = None
        raise _interrupted(_READING, request, closed=self.closed)

    async def _send_tls(self, data: bytes, request: httpx.Request, timeout: float | None) -> None:
        deadline = _INF if timeout is None else anyio.current_time() + timeout
        with anyio.CancelScope(deadline=deadline) as scope:
            self._scope = scope
            try:
                await self.stream.send(data)
            except _IO_ERRORS as exc:
                raise httpx.WriteError(repr(exc), request=request) from exc
            finally:
                self._scope = None
        if scope.cancelled_caught:
            raise _interrupted(_WRITING, request, closed=self.closed)


def _own_socket(stream: anyio.abc.ByteStream) -> socket.socket:
    """A `socket.socket` for the stream's connection, to send and receive on directly."""
    raw: object = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610 - anyio
    if isinstance(raw, socket.socket):  # trio hands out the socket itself
        return raw
    # asyncio hands out a TransportSocket, which has no send() or recv(): a duplicate
    # descriptor of the same connection, closed beside the stream.
    transport_socket = cast("trsock.TransportSocket", raw)
    return socket.socket(
        transport_socket.family,
        transport_socket.type,
        transport_socket.proto,
        fileno=os.dup(transport_socket.fileno()),
    )


def _tls_pending(stream: anyio.abc.ByteStream) -> bool:
    # Bytes inside TLS are stale bytes too: decrypted but unread (`pending()`), or records
    # already taken off the socket but not yet decrypted (anyio's incoming memory BIO).
    ssl_object = stream.extra(anyio.streams.tls.TLSAttribute.ssl_object)  # noqa: S610 - anyio
    read_bio = getattr(stream, "_read_bio", None)
    return bool(ssl_object.pending() or (read_bio is not None and read_bio.pending))
