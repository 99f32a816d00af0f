"""The in-process transport: an `httpx.ASGITransport` that behaves like a network one.

Two differences from the plain `ASGITransport`: a dropped connection is raised as
`httpx.RemoteProtocolError` (as httpx raises it for a real socket), and the request's read
timeout is honoured (`ASGITransport` ignores timeouts), so slow replies time out.
"""

from __future__ import annotations

import anyio
import httpx

from apiframe_async.testing._asgi import ASGIApp, ConnectionDroppedError


class InProcessTransport(httpx.AsyncBaseTransport):
    """Calls an ASGI app in the caller's event loop, with network-like failures."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`."""
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run the app for `request`; a drop or a read timeout raises as httpx would."""
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            with anyio.move_on_after(timeout) as scope:
                return await self._inner.handle_async_request(request)
        except ConnectionDroppedError as exc:
            msg = "Server disconnected without sending a complete response (injected fault)."
            raise httpx.RemoteProtocolError(msg, request=request) from exc
        if scope.cancelled_caught:
            raise httpx.ReadTimeout(f"No reply within {timeout} s (in-process).", request=request)
        msg = "unreachable: the app neither replied nor timed out"
        raise AssertionError(msg)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()
