"""A raw HTTP/1.1 server on loopback for transport tests: each test scripts the bytes."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.streams.tls

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

_DISCONNECTS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Conn:
    """The server side of one connection."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def request(self) -> bytes:
        """Read one request (head and Content-Length body); its request line."""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.partition(b":")[2])
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive()
        self.buffer = self.buffer[length:]
        return head.partition(b"\r\n")[0]

    async def send(self, data: bytes) -> None:
        """Write raw bytes to the client."""
        await self.stream.send(data)

    async def until_closed(self) -> None:
        """Read and drop whatever comes until the client closes the connection."""
        while True:
            await self.stream.receive()


class Server:
    """Runs `handler` per connection; counts connections accepted and closed."""

    def __init__(self, handler: Callable[[Conn], Awaitable[None]]) -> None:
        self.handler = handler
        self.accepted = 0
        self.closed = 0
        self.url = ""

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one connection; a client that goes away ends it quietly."""
        self.accepted += 1
        async with stream:
            with contextlib.suppress(*_DISCONNECTS):
                await self.handler(Conn(stream))
        self.closed += 1


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Conn], Awaitable[None]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """A `Server` on a free loopback port (TLS with `tls`), for the block's duration."""
    server = Server(handler)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp:
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio
        server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        listener: anyio.abc.Listener[anyio.abc.ByteStream] = tcp
        if tls is not None:
            listener = anyio.streams.tls.TLSListener(tcp, tls, standard_compatible=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, server.handle)
            yield server
            tg.cancel_scope.cancel()
