"""Downloads go only where photos live: public addresses, checked at every redirect.

Image URLs come from the API's replies. Followed blindly, a reply (or a redirect) naming
`http://169.254.169.254/...` or `http://localhost:6379/` would make a backend fetch from
its own network and save what it got. So each host is resolved and every address it has
must be public; loopback, private, link-local, shared, reserved and multicast ones are
refused with `DownloadError`. Three ways in remain: the origin of a client's loopback
base URL (the fake on 127.0.0.1 serves its own photos), the origin of the in-process fake
(`FakeApiframe.client()`: nothing goes over a network), and `allow_private_addresses=True`.

A name that does not resolve is let through: the fetch then fails as any unreachable host
does. (Between this check and the connection a name could be resolved again to another
address; a network-level egress rule is the complete answer to that.)
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

import anyio
import httpx

from ._errors import DownloadError

MAX_REDIRECTS: Final = 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: (scheme, host, port) of the loopback base URLs clients were made with, and of in-process
#: fakes: their own photo URLs, the only non-public ones trusted without being told.
_local_origins: set[tuple[str, str, int]] = set()


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), url.port or (443 if url.scheme == "https" else 80)


def trust_local_origin(base_url: str) -> None:
    """Trust photo URLs at the origin of `base_url`: a client's loopback base URL, or a fake's."""
    _local_origins.add(_origin(httpx.URL(base_url)))


def _kind(address: IPAddress) -> str | None:
    """Why `address` is not a public one, or None when it is."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return _kind(mapped)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return name
    return None if address.is_global else "non-public"


class AddressGuard:
    """Checks the hosts of one download job; remembers each host's verdict meanwhile."""

    def __init__(self) -> None:
        """Start with no host checked."""
        self._checked: dict[str, str | None] = {}

    async def check(self, url: httpx.URL) -> None:
        """Raise `DownloadError` unless every address of `url`'s host is public."""
        if _origin(url) in _local_origins:
            return
        host = url.host
        if host not in self._checked:
            self._checked[host] = await _refusal(host, url.port)
        refusal = self._checked[host]
        if refusal is not None:
            raise DownloadError(
                str(url),
                f"{refusal}; photos are fetched only from public addresses "
                "(allow_private_addresses=True allows others)",
            )


async def _refusal(host: str, port: int | None) -> str | None:
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await anyio.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except OSError:
            return None  # unresolvable: the fetch itself fails, as for any dead host
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        kind = _kind(address)
        if kind is not None:
            named = host if host == str(address) else f"{host} ({address})"
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{named} is {article} {kind} address"
    return None


async def send_guarded(
    http: httpx.AsyncClient, request: httpx.Request, guard: AddressGuard | None
) -> httpx.Response:
    """`http.send(request, stream=True)`, with every hop's host checked by `guard`.

    Redirects are followed here (when the client follows them), so that each new host
    is checked before anything is sent to it.
    """
    if guard is None:
        return await http.send(request, stream=True)
    for _ in range(MAX_REDIRECTS + 1):
        await guard.check(request.url)
        response = await http.send(request, stream=True, follow_redirects=False)
        following = response.next_request
        if following is None or not http.follow_redirects:
            return response
        await response.aclose()
        request = following
    raise DownloadError(str(request.url), f"more than {MAX_REDIRECTS} redirects")
