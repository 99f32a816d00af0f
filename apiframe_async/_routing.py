"""The transport of a client we make: the route to its API, chosen on the first request.

A client talks to one base URL, so one route serves all its requests:

    direct                          PooledTransport
    https through an http:// proxy  PooledTransport through a CONNECT tunnel
    http through a proxy, or any    httpx.AsyncHTTPTransport (httpcore): it forwards
    https:// or SOCKS proxy         plain http and speaks TLS or SOCKS to the proxy

The environment is read and the route chosen on the first request, not at construction:
reading the proxy variables costs more than building the rest of the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import httpx

from ._network import VerifyTypes, proxy_for, ssl_context
from ._transport import PooledTransport

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from types import TracebackType

# httpcore's pool would cap connections at 100 and keep 20 idle: the client's limiter
# bounds concurrency instead, and a connection cut off by the cap would queue requests.
_NO_CAP = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=5.0)


class RoutingTransport(httpx.AsyncBaseTransport):
    """Sends every request by the route the first one took (see the module docstring)."""

    def __init__(self, *, proxy: httpx.Proxy | None, verify: VerifyTypes, trust_env: bool) -> None:
        self._proxy = proxy
        self._verify = verify
        self._trust_env = trust_env
        self._transport: httpx.AsyncBaseTransport | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    @property
    def route(self) -> httpx.AsyncBaseTransport | None:
        """The transport requests go through, once the first one has chosen it."""
        return self._transport

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        """Send `request` by this client's route."""
        # The route's own coroutine, handed back: no frame of ours on every request's chain.
        transport = self._transport or self._choose(request.url)
        return transport.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the route's connections."""
        if self._transport is not None:
            await self._transport.aclose()

    def _choose(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        proxy = proxy_for(url, self._proxy, trust_env=self._trust_env)
        transport: httpx.AsyncBaseTransport
        if proxy is None or (url.scheme == "https" and proxy.url.scheme == "http"):
            transport = PooledTransport(verify=self._verify, trust_env=self._trust_env, proxy=proxy)
        else:
            transport = httpx.AsyncHTTPTransport(
                verify=ssl_context(self._verify, trust_env=self._trust_env),
                trust_env=False,  # already applied: the proxy and the context are chosen
                limits=_NO_CAP,
                proxy=proxy,
            )
        self._transport = transport
        return transport
