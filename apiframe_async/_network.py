"""How a client reaches the API: which proxy, if any, and which certificates to trust.

Both are decided as httpx decides them, so that a network where httpx works works here:

- `proxy=` wins; else, with `trust_env`, `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and
  `NO_PROXY` (any case) are read with httpx's own helpers and matched the way
  `httpx.AsyncClient` matches its mounts.
- `verify=` takes `True` (certifi's roots, or `SSL_CERT_FILE` / `SSL_CERT_DIR` with
  `trust_env`), a CA bundle file or a hashed folder, an `ssl.SSLContext`, or `False`.

Nothing here runs at construction but cheap checks: the environment is read and the CA
bundle loaded when the first connection is opened.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import anyio
import anyio.abc
import anyio.streams.tls
import certifi
import h11
import httpx

# httpx's own reading of the proxy variables and its mount patterns: reusing them keeps
# NO_PROXY's many forms (`.example.com`, `example.com`, IPs, `*`, `scheme://host`) and the
# priority between patterns exactly as httpx has them.
from httpx._utils import URLPattern, get_environment_proxies

from ._errors import RequestValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

#: What `AsyncApiframe(verify=...)` takes.
VerifyTypes: TypeAlias = ssl.SSLContext | str | os.PathLike[str] | bool
#: What `AsyncApiframe(proxy=...)` takes.
ProxyTypes: TypeAlias = str | httpx.URL | httpx.Proxy

_PROXY_SCHEMES = ("http://", "https://", "socks5://", "socks5h://")
# A CONNECT reply is a status line and a few headers: anything larger is not a proxy.
_MAX_CONNECT_REPLY = 16 * 1024


def checked_proxy(proxy: ProxyTypes | None) -> httpx.Proxy | None:
    """`proxy` as an `httpx.Proxy`, or a `RequestValidationError` naming `proxy`."""
    if proxy is None or isinstance(proxy, httpx.Proxy):
        checked = proxy
    else:
        try:
            checked = httpx.Proxy(proxy)
        except (ValueError, TypeError, httpx.InvalidURL):
            # The URL itself is not repeated: it may hold a password.
            raise RequestValidationError(
                "proxy", "is not a proxy URL", allowed=_allowed_proxies()
            ) from None
    if checked is not None and checked.url.scheme.startswith("socks") and not _has_socks():
        raise RequestValidationError(
            "proxy",
            "a SOCKS proxy needs the socksio package",
            allowed="pip install 'httpx[socks]', or an http:// proxy",
        )
    return checked


def checked_verify(verify: VerifyTypes) -> VerifyTypes:
    """`verify` if it is usable, else a `RequestValidationError` naming `verify`."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    if isinstance(verify, str | os.PathLike):
        if not Path(verify).exists():
            raise RequestValidationError(
                "verify", f"{os.fspath(verify)!r} does not exist", allowed=_ALLOWED_VERIFY
            )
        return verify
    raise RequestValidationError("verify", f"{verify!r} is not valid", allowed=_ALLOWED_VERIFY)


_ALLOWED_VERIFY = "True, False, an ssl.SSLContext, or the path of a CA bundle or folder"


def _allowed_proxies() -> str:
    return "a URL starting " + ", ".join(_PROXY_SCHEMES) + ", or an httpx.Proxy"


def _has_socks() -> bool:
    return importlib.util.find_spec("socksio") is not None


def proxy_for(url: httpx.URL, proxy: httpx.Proxy | None, *, trust_env: bool) -> httpx.Proxy | None:
    """The proxy that `url` goes through, or None to connect directly.

    An explicit proxy takes every URL, and the environment is then not read, as in httpx.
    """
    if proxy is not None or not trust_env:
        return proxy
    mounts = sorted(
        ((URLPattern(pattern), target) for pattern, target in get_environment_proxies().items()),
        key=lambda mount: mount[0],
    )
    for pattern, target in mounts:
        if pattern.matches(url):
            return None if target is None else _environment_proxy(target)
    return None


def _environment_proxy(url: str) -> httpx.Proxy:
    try:
        return httpx.Proxy(url)
    except (ValueError, httpx.InvalidURL):
        # Named by the variables, not by value: the value may hold a password.
        raise RequestValidationError(
            "HTTP_PROXY/HTTPS_PROXY/ALL_PROXY",
            "the environment's proxy URL is not one httpx can use",
            allowed=_allowed_proxies() + "; or trust_env=False to ignore it",
        ) from None


def ssl_context(verify: VerifyTypes, *, trust_env: bool) -> ssl.SSLContext:
    """The TLS context for `verify`: hostname, expiry and chain checked unless `False`.

    A context passed in is used as it is (its ALPN too); ours offer `http/1.1`.
    """
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif verify is True:
        context = _trusted_context(*_default_roots(trust_env=trust_env))
    else:
        path = os.fspath(verify)
        roots = ("verify", None, path) if Path(path).is_dir() else ("verify", path, None)
        context = _trusted_context(*roots)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _default_roots(*, trust_env: bool) -> tuple[str, str | None, str | None]:
    # As httpx: SSL_CERT_FILE first, then SSL_CERT_DIR, then certifi's bundle.
    if trust_env and (cafile := os.environ.get("SSL_CERT_FILE")):
        return "SSL_CERT_FILE", cafile, None
    if trust_env and (capath := os.environ.get("SSL_CERT_DIR")):
        return "SSL_CERT_DIR", None, capath
    return "verify", certifi.where(), None


def _trusted_context(source: str, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    where = cafile or capath or ""
    if not Path(where).exists():
        raise RequestValidationError(source, f"{where!r} does not exist", allowed=_ALLOWED_VERIFY)
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except ssl.SSLError as exc:
        raise RequestValidationError(
            source, f"{where!r} holds no usable CA certificate ({exc.reason})"
        ) from exc


async def open_tunnel(
    proxy: httpx.Proxy, host: str, port: int, tls: ssl.SSLContext | None
) -> anyio.abc.ByteStream:
    """A stream to `host:port` through an http:// proxy's CONNECT tunnel; TLS with `tls`.

    Raises `httpx.ProxyError` if the proxy refuses (407, 403, 502...): the request was
    then never sent. Its text is the proxy's status, never the credentials.
    """
    stream = await anyio.connect_tcp(proxy.url.host, proxy.url.port or 80)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        await _connect_through(stream, proxy, authority)
        if tls is None:
            return stream
        return await anyio.streams.tls.TLSStream.wrap(
            stream, hostname=host, ssl_context=tls, standard_compatible=False
        )
    except anyio.EndOfStream as exc:
        await anyio.aclose_forcefully(stream)
        raise httpx.ConnectError("the proxy closed the tunnel during the TLS handshake") from exc
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise


async def _connect_through(stream: anyio.abc.ByteStream, proxy: httpx.Proxy, target: str) -> None:
    # h11, as httpcore uses for the same job: it frames the CONNECT reply and knows that a
    # 2xx to CONNECT hands the connection over to the tunnelled bytes.
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_CONNECT_REPLY)
    headers = [("Host", target), *_proxy_headers(proxy).items()]
    request = connection.send(h11.Request(method="CONNECT", target=target, headers=headers))
    await stream.send((request or b"") + (connection.send(h11.EndOfMessage()) or b""))
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.ProxyError(f"the proxy's reply to CONNECT is malformed: {exc}") from exc
        if event is h11.NEED_DATA:
            try:
                connection.receive_data(await stream.receive())
            except anyio.EndOfStream:
                raise httpx.ProxyError("the proxy closed the tunnel before answering") from None
            continue
        if isinstance(event, h11.Response):
            break
    if not 200 <= event.status_code < 300:  # noqa: PLR2004 - the 2xx class
        reason = event.reason.decode("ascii", "replace")
        raise httpx.ProxyError(f"the proxy refused the tunnel: {event.status_code} {reason}")
    if connection.trailing_data[0]:
        raise httpx.ProxyError("the proxy sent bytes of its own into the tunnel")


def _proxy_headers(proxy: httpx.Proxy) -> Mapping[str, str]:
    headers = dict(proxy.headers)
    if proxy.raw_auth is not None:
        user, password = proxy.raw_auth
        token = base64.b64encode(user + b":" + password).decode("ascii")
        headers["Proxy-Authorization"] = f"Basic {token}"
    return headers
