"""Plain ASGI 3 plumbing: reading a request, sending a reply, dropping a connection."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SERVICE_UNAVAILABLE_PAGE = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
    b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class ConnectionDroppedError(Exception):
    """Raised by the fake app, after starting a reply, to drop the connection on purpose.

    Under a real server the client then sees an incomplete response; the in-process
    transport of `FakeApiframe.client()` turns it into `httpx.RemoteProtocolError`.
    """


@attrs.frozen
class Reply:
    """A complete HTTP reply."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, data: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """A JSON reply."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, body, "application/json; charset=utf-8", headers)

    @classmethod
    def text(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """A plain-text reply."""
        return cls(status, text.encode(), "text/plain; charset=utf-8", headers)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI wants them, with content type and length."""
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        return headers + [(name.encode(), value.encode()) for name, value in self.headers]


async def read_body(receive: Receive) -> bytes:
    """The whole request body."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def respond(send: Send, reply: Reply) -> None:
    """Send a complete reply."""
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": reply.raw_headers()}
    )
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


async def drop(send: Send) -> None:
    """Start a reply that promises a body, then drop the connection."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"1024")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    raise ConnectionDroppedError


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def base_url(scope: Scope) -> str:
    """The absolute URL the client used to reach the app, without a trailing slash."""
    host = header(scope, b"host")
    if host is None:
        server_host, port = scope.get("server") or ("localhost", None)
        host = f"{server_host}:{port}" if port else str(server_host)
    root = str(scope.get("root_path", "")).rstrip("/")
    return f"{scope.get('scheme', 'http')}://{host}{root}"
