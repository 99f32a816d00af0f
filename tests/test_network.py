"""Proxies and certificates, against a real forward proxy and a TLS server on loopback.

The proxy is proxy.py (the `tests` dependency group), run as a subprocess; its access log
shows which requests went through it. The TLS server is a TLS-terminating relay in front
of the served fake, with certificates made at run time by trustme, so that what reached
the API is what the fake recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.streams.tls
import httpx
import pytest
import trustme

from apiframe_async import (
    APIConnectionError,
    APIStatusError,
    AsyncApiframe,
    ClientClosedError,
    RequestValidationError,
)
from apiframe_async._network import open_tunnel, proxy_for
from apiframe_async._routing import RoutingTransport
from apiframe_async._transport import PooledTransport
from apiframe_async.testing import FakeApiframe

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

USER, PASSWORD = "alice", "s3cret-proxy-pw"
PROMPT = "a portrait of TOKMSN man"


# -- the environment ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """None of the machine's proxy or certificate variables, whatever their case."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in {"SSL_CERT_FILE", "SSL_CERT_DIR"}:
            monkeypatch.delenv(name)
    for name in ("APIFRAME_API_KEY", "APIFRAME_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def dead_url() -> str:
    """An http URL on a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- a real forward proxy ----------------------------------------------------------------


@dataclass
class Proxy:
    """A proxy.py process on loopback, and its access log."""

    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    def access(self) -> list[str]:
        """The requests it handled: `CONNECT host:port`, `POST host:port/path`, ..."""
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [line.split(" - ")[3] for line in lines if "access_log" in line]

    def saw(self, request: str) -> bool:
        return any(line.startswith(request) for line in self.access())


def _proxy_module_missing() -> None:
    if importlib.util.find_spec("proxy") is not None:
        return
    message = "proxy.py is not installed (the tests dependency group has it)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs the group: a missing proxy is a broken setup
    pytest.skip(message)


def _start_proxy(folder: Path, *options: str) -> Iterator[Proxy]:
    _proxy_module_missing()
    port_file, log = folder / "port", folder / "access.log"
    command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"]
    command += ["--port-file", str(port_file), "--log-file", str(log)]
    command += ["--num-workers", "1", "--num-acceptors", "1", *options]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "proxy.py exited at start"
            assert time.monotonic() < deadline, "proxy.py did not start in 30 s"
            time.sleep(0.05)
        yield Proxy(int(port_file.read_text().split()[0]), log)
    finally:
        # Its acceptor and worker processes share its session: stop them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def open_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A forward proxy that lets anyone through."""
    yield from _start_proxy(tmp_path_factory.mktemp("open-proxy"))


@pytest.fixture(scope="session")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A forward proxy that requires basic auth (USER, PASSWORD)."""
    yield from _start_proxy(
        tmp_path_factory.mktemp("auth-proxy"), "--basic-auth", f"{USER}:{PASSWORD}"
    )


async def until(condition: Callable[[], bool]) -> None:
    """Wait, up to 5 s, for another process to catch up (its log is written at close)."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - another process: no event to wait on
            await anyio.sleep(0.02)


# -- certificates and a TLS server in front of the fake ----------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "corporate-root.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def ca_folder(ca: trustme.CA, ca_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as `SSL_CERT_DIR` wants it: the CA under its OpenSSL subject hash."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("the openssl command is needed to hash a CA folder")
        pytest.skip("needs the openssl command to hash a CA folder")
    command = [openssl, "x509", "-noout", "-subject_hash", "-in", str(ca_file)]
    digest = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()  # noqa: S603
    folder = tmp_path_factory.mktemp("ca-folder")
    shutil.copy(ca_file, folder / f"{digest}.0")
    return folder


@dataclass
class TLSServer:
    """What the TLS relay saw: handshakes done, and the ALPN protocol of each."""

    url: str
    fake: FakeApiframe
    handshakes: int = 0
    alpn: list[str | None] = field(default_factory=list)

    def paid_posts(self) -> int:
        return sum(self.fake.generate_count_by_prompt().values())


def _leaf(ca: trustme.CA, kind: str) -> trustme.LeafCert:
    if kind == "wrong-hostname":
        return ca.issue_cert("api.example.com")
    if kind == "expired":
        now = dt.datetime.now(dt.UTC)
        return ca.issue_cert(
            "127.0.0.1", not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(days=1)
        )
    if kind == "unknown-ca":
        return trustme.CA().issue_cert("127.0.0.1")
    return ca.issue_cert("127.0.0.1")


@contextlib.asynccontextmanager
async def tls_fake(ca: trustme.CA, kind: str = "good") -> AsyncIterator[TLSServer]:
    """The fake, behind a TLS relay on loopback whose certificate is of `kind`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _leaf(ca, kind).configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    fake = FakeApiframe(fetches_to_finish=1)
    async with (
        fake.serve() as upstream,
        await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp,
    ):
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        server = TLSServer(f"https://127.0.0.1:{port}", fake)
        upstream_url = httpx.URL(upstream)

        async def relay(client: anyio.abc.ByteStream) -> None:
            async with client:
                try:
                    tls = await anyio.streams.tls.TLSStream.wrap(
                        client, server_side=True, ssl_context=context, standard_compatible=False
                    )
                except (ssl.SSLError, OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    return  # the client refused our certificate: nothing was sent
                server.handshakes += 1
                alpn = anyio.streams.tls.TLSAttribute.alpn_protocol
                server.alpn.append(tls.extra(alpn))  # noqa: S610 - anyio, not Django
                assert upstream_url.port is not None
                async with (
                    await anyio.connect_tcp("127.0.0.1", upstream_url.port) as api,
                    anyio.create_task_group() as tg,
                ):
                    # Either side closing ends both, as a TLS terminator does.
                    tg.start_soon(_pipe, tls, api, tg.cancel_scope)
                    tg.start_soon(_pipe, api, tls, tg.cancel_scope)

        async with anyio.create_task_group() as tg:
            tg.start_soon(tcp.serve, relay)
            yield server
            tg.cancel_scope.cancel()


async def _pipe(
    source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, both: anyio.CancelScope
) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        while True:
            await sink.send(await source.receive())
    both.cancel()


@contextlib.asynccontextmanager
async def http_fake() -> AsyncIterator[tuple[str, FakeApiframe]]:
    """The fake served over plain http on loopback."""
    fake = FakeApiframe(fetches_to_finish=1)
    async with fake.serve() as base_url:
        yield base_url, fake


def client_for(base_url: str, fake: FakeApiframe, **options: object) -> AsyncApiframe:
    return AsyncApiframe(fake.api_key, base_url=base_url, max_retries=0, **options)  # type: ignore[arg-type]


async def generate(client: AsyncApiframe, fake: FakeApiframe) -> list[str]:
    gen = await client.generate(training_id=fake.add_trained_model(), prompt=PROMPT)
    return list(gen.image_urls)


# -- certificates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "way", ["verify-path", "verify-folder", "verify-context", "SSL_CERT_FILE", "SSL_CERT_DIR"]
)
async def test_a_corporate_ca_is_trusted_each_way(
    way: str,
    ca: trustme.CA,
    ca_file: Path,
    ca_folder: Path,
    no_network_env: pytest.MonkeyPatch,
) -> None:
    """The right CA, given by path, folder, context or variable: a paid request goes once."""
    options: dict[str, object] = {}
    if way == "verify-path":
        options["verify"] = str(ca_file)
    elif way == "verify-folder":
        options["verify"] = ca_folder
    elif way == "verify-context":
        options["verify"] = ssl.create_default_context(cafile=ca_file)
    elif way == "SSL_CERT_FILE":
        no_network_env.setenv("SSL_CERT_FILE", str(ca_file))
    else:
        no_network_env.setenv("SSL_CERT_DIR", str(ca_folder))
    async with tls_fake(ca) as server, client_for(server.url, server.fake, **options) as client:
        assert await generate(client, server.fake)
        assert (await client.account()).credits >= 0
    assert server.paid_posts() == 1
    assert server.handshakes == 1  # one connection, kept alive


async def test_alpn_offers_http_1_1(ca: trustme.CA, ca_file: Path) -> None:
    """The TLS handshake offers ALPN `http/1.1`, and the server picks it."""
    async with tls_fake(ca) as server, client_for(server.url, server.fake, verify=ca_file) as c:
        await c.account()
    assert server.alpn == ["http/1.1"]


@pytest.mark.parametrize("kind", ["wrong-hostname", "expired", "unknown-ca"])
async def test_bad_certificates_are_refused_before_anything_is_sent(
    kind: str, ca: trustme.CA, ca_file: Path
) -> None:
    """Hostname, expiry and chain are checked: a typed error saying nothing was sent."""
    async with (
        tls_fake(ca, kind) as server,
        client_for(server.url, server.fake, verify=ca_file) as c,
    ):
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await generate(c, server.fake)
    assert caught.value.may_have_been_submitted is False
    assert "nothing was sent" in str(caught.value)
    assert server.handshakes == 0
    assert server.fake.calls() == []


async def test_default_roots_do_not_trust_a_private_ca(ca: trustme.CA) -> None:
    """By default only certifi's roots are trusted: a private CA is refused."""
    async with tls_fake(ca) as server, client_for(server.url, server.fake) as client:
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.account()
    assert server.fake.calls() == []


async def test_trust_env_false_ignores_ssl_cert_file(
    ca: trustme.CA, ca_file: Path, no_network_env: pytest.MonkeyPatch
) -> None:
    """With trust_env=False, SSL_CERT_FILE is not read."""
    no_network_env.setenv("SSL_CERT_FILE", str(ca_file))
    async with tls_fake(ca) as server, client_for(server.url, server.fake, trust_env=False) as c:
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await c.account()


async def test_verify_false_checks_nothing(ca: trustme.CA) -> None:
    """verify=False accepts a certificate from an unknown CA."""
    async with (
        tls_fake(ca, "unknown-ca") as server,
        client_for(server.url, server.fake, verify=False) as client,
    ):
        assert (await client.account()).credits >= 0


@pytest.mark.parametrize(
    "verify", [pytest.param("missing.pem", id="missing-path"), pytest.param(3, id="not-a-path")]
)
def test_bad_verify_fails_at_construction(verify: object, tmp_path: Path) -> None:
    """A missing CA bundle path, or a value of the wrong kind: RequestValidationError."""
    value = str(tmp_path / verify) if isinstance(verify, str) else verify
    with pytest.raises(RequestValidationError) as caught:
        AsyncApiframe("key", verify=value)  # type: ignore[arg-type]
    assert caught.value.field == "verify"


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "garbage"])
async def test_a_bad_ssl_cert_file_is_named(
    content: bytes | None, tmp_path: Path, ca: trustme.CA, no_network_env: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE pointing at nothing usable: an error naming it, nothing sent."""
    path = tmp_path / "roots.pem"
    if content is not None:
        path.write_bytes(content)
    async with tls_fake(ca) as server, client_for(server.url, server.fake) as client:
        # Set once the fake runs (its own httpx client would trip on it), and read by
        # ours at its first connection.
        no_network_env.setenv("SSL_CERT_FILE", str(path))
        with pytest.raises(RequestValidationError) as caught:
            await client.account()
    assert caught.value.field == "SSL_CERT_FILE"
    assert server.fake.calls() == []


# -- proxies from the environment --------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
async def test_https_goes_through_the_environment_proxy_by_connect(
    variable: str,
    open_proxy: Proxy,
    ca: trustme.CA,
    ca_file: Path,
    no_network_env: pytest.MonkeyPatch,
) -> None:
    """https through a proxy from the environment is a CONNECT tunnel; paid once."""
    no_network_env.setenv(variable, open_proxy.url)
    async with tls_fake(ca) as server:
        target = server.url.removeprefix("https://")
        async with client_for(server.url, server.fake, verify=ca_file) as client:
            assert await generate(client, server.fake)
        await until(lambda: open_proxy.saw(f"CONNECT {target}"))
    assert server.paid_posts() == 1
    assert server.handshakes == 1  # the tunnel's connection was kept alive and reused
    assert isinstance(client._http_client._transport, RoutingTransport)
    assert isinstance(client._http_client._transport.route, PooledTransport)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_http_is_forwarded_by_the_environment_proxy(
    variable: str, open_proxy: Proxy, no_network_env: pytest.MonkeyPatch
) -> None:
    """Plain http through a proxy is forwarded (absolute URL), not tunnelled; paid once."""
    no_network_env.setenv(variable, open_proxy.url)
    async with http_fake() as (base_url, fake):
        async with client_for(base_url, fake) as client:
            assert await generate(client, fake)
        # The proxy logs a connection when it closes, with its first request.
        target = base_url.removeprefix("http://")
        await until(lambda: open_proxy.saw(f"POST {target}/ai-photo-generate"))
    assert sum(fake.generate_count_by_prompt().values()) == 1


async def test_a_mandatory_proxy_is_not_bypassed(
    ca: trustme.CA, ca_file: Path, no_network_env: pytest.MonkeyPatch
) -> None:
    """A proxy in the environment that cannot be reached fails the request, unsent."""
    no_network_env.setenv("HTTPS_PROXY", dead_url())
    async with tls_fake(ca) as server, client_for(server.url, server.fake, verify=ca_file) as c:
        with pytest.raises(APIConnectionError) as caught:
            await generate(c, server.fake)
    assert caught.value.may_have_been_submitted is False
    assert server.handshakes == 0


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
async def test_no_proxy_bypasses_the_proxy(
    no_proxy: str, ca: trustme.CA, ca_file: Path, no_network_env: pytest.MonkeyPatch
) -> None:
    """NO_PROXY naming the API's host sends it directly, past a proxy that is down."""
    no_network_env.setenv("HTTPS_PROXY", dead_url())
    no_network_env.setenv("HTTP_PROXY", dead_url())
    no_network_env.setenv("NO_PROXY", no_proxy)
    async with tls_fake(ca) as server, client_for(server.url, server.fake, verify=ca_file) as c:
        assert await generate(c, server.fake)
    async with http_fake() as (base_url, fake), client_for(base_url, fake) as client:
        assert await generate(client, fake)


async def test_trust_env_false_ignores_proxy_variables(
    ca: trustme.CA, ca_file: Path, no_network_env: pytest.MonkeyPatch
) -> None:
    """With trust_env=False the proxy variables are not read: requests go directly."""
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        no_network_env.setenv(variable, dead_url())
    options = {"verify": ca_file, "trust_env": False}
    async with tls_fake(ca) as server, client_for(server.url, server.fake, **options) as c:
        assert await generate(c, server.fake)
    async with http_fake() as (base_url, fake), client_for(base_url, fake, trust_env=False) as c:
        assert await generate(c, fake)


# -- an explicit proxy, with basic auth --------------------------------------------------


def _explicit(proxy: Proxy, form: str) -> str | httpx.Proxy:
    if form == "url-with-credentials":
        return proxy.url_with_credentials
    return httpx.Proxy(proxy.url, auth=(USER, PASSWORD))


@pytest.mark.parametrize("form", ["url-with-credentials", "httpx-proxy-auth"])
async def test_explicit_proxy_with_basic_auth(
    form: str,
    auth_proxy: Proxy,
    ca: trustme.CA,
    ca_file: Path,
    no_network_env: pytest.MonkeyPatch,
) -> None:
    """proxy= with credentials works for https (CONNECT) and http (forwarded), NO_PROXY or not."""
    no_network_env.setenv("NO_PROXY", "*")  # an explicit proxy wins over the environment
    proxy = _explicit(auth_proxy, form)
    async with tls_fake(ca) as server:
        async with client_for(server.url, server.fake, verify=ca_file, proxy=proxy) as client:
            assert await generate(client, server.fake)
            assert PASSWORD not in repr(client)
        target = server.url.removeprefix("https://")
        await until(lambda: auth_proxy.saw(f"CONNECT {target}"))
    assert server.paid_posts() == 1
    async with http_fake() as (base_url, fake):
        async with client_for(base_url, fake, proxy=proxy) as client:
            assert await generate(client, fake)
        target = base_url.removeprefix("http://")
        await until(lambda: auth_proxy.saw(f"POST {target}/ai-photo-generate"))
    assert sum(fake.generate_count_by_prompt().values()) == 1


@pytest.mark.parametrize(
    "credentials", [pytest.param("", id="none"), pytest.param(f"{USER}:wrong-pw-9f2@", id="wrong")]
)
async def test_proxy_refusing_credentials_is_a_typed_error_without_them(
    credentials: str, auth_proxy: Proxy, ca: trustme.CA, ca_file: Path
) -> None:
    """407 from the proxy: a typed error, nothing sent, and no credentials in its text."""
    proxy = f"http://{credentials}127.0.0.1:{auth_proxy.port}"
    async with tls_fake(ca) as server:
        async with client_for(server.url, server.fake, verify=ca_file, proxy=proxy) as client:
            with pytest.raises(APIConnectionError, match="407") as tunnel:
                await generate(client, server.fake)
            assert "wrong-pw" not in repr(client)
        assert server.fake.calls() == []
    assert tunnel.value.may_have_been_submitted is False
    async with http_fake() as (base_url, fake), client_for(base_url, fake, proxy=proxy) as client:
        with pytest.raises(APIStatusError) as forwarded:
            await generate(client, fake)
    assert forwarded.value.status_code == 407
    assert sum(fake.generate_count_by_prompt().values()) == 0
    for error in (tunnel.value, forwarded.value):
        text = f"{error} {error!r} {getattr(error, 'body', '')} {error.__cause__!r}"
        assert "wrong-pw" not in text
        assert PASSWORD not in text


@pytest.mark.parametrize(
    "proxy", ["ftp://alice:hunter2@proxy:21", "not a url", "http://[::1"], ids=str
)
def test_a_bad_proxy_fails_at_construction_without_echoing_it(proxy: str) -> None:
    """A proxy that is not an http(s) or SOCKS URL: RequestValidationError, URL not shown."""
    with pytest.raises(RequestValidationError) as caught:
        AsyncApiframe("key", proxy=proxy)
    assert caught.value.field == "proxy"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "option",
    [{"proxy": "http://proxy:3128"}, {"verify": False}, {"trust_env": False}],
    ids=lambda option: next(iter(option)),
)
async def test_a_borrowed_client_keeps_its_own_network_settings(option: dict[str, object]) -> None:
    """Network settings with http_client would be ignored: refused, naming the setting."""
    async with httpx.AsyncClient() as http:
        with pytest.raises(RequestValidationError) as caught:
            AsyncApiframe("key", http_client=http, **option)  # type: ignore[arg-type]
    assert caught.value.field == next(iter(option))


async def test_a_borrowed_client_uses_its_own_proxy(
    open_proxy: Proxy, no_network_env: pytest.MonkeyPatch
) -> None:
    """A borrowed httpx client's proxy applies; the client does not look at it."""
    async with (
        http_fake() as (base_url, fake),
        httpx.AsyncClient(proxy=open_proxy.url, trust_env=False) as http,
    ):
        async with AsyncApiframe(fake.api_key, base_url=base_url, http_client=http) as client:
            assert await generate(client, fake)
        await http.aclose()
        await until(lambda: open_proxy.saw(f"POST {base_url.removeprefix('http://')}/"))


# -- a closed client ---------------------------------------------------------------------


async def test_a_closed_client_refuses_requests_and_closes_once() -> None:
    """After aclose(): ClientClosedError, nothing sent; aclose() again does nothing."""
    async with http_fake() as (base_url, fake):
        client = client_for(base_url, fake)
        async with client:
            await client.account()
        calls = len(fake.calls())
        for call in (client.account(), generate(client, fake)):
            with pytest.raises(ClientClosedError, match="closed"):
                await call
        await client.aclose()
        with pytest.raises(ClientClosedError):
            async with client:
                pass
        with pytest.raises(ClientClosedError):
            client.generate_many([{"training_id": "t", "prompt": PROMPT}])
        assert len(fake.calls()) == calls
        assert sum(fake.generate_count_by_prompt().values()) == 0


async def test_a_client_whose_borrowed_http_client_closed_refuses_requests() -> None:
    """The owner closed the borrowed httpx client: ClientClosedError, not httpx's RuntimeError."""
    async with http_fake() as (base_url, fake):
        http = httpx.AsyncClient()
        client = AsyncApiframe(fake.api_key, base_url=base_url, http_client=http)
        await http.aclose()
        with pytest.raises(ClientClosedError):
            await client.account()
        assert fake.calls() == []


# -- the same route as httpx, for every form of the variables ------------------------------

ENVIRONMENTS = {
    "https-only": {"HTTPS_PROXY": "http://corp:3128"},
    "no-scheme": {"HTTPS_PROXY": "corp:3128", "HTTP_PROXY": "corp:8080"},
    "all": {"ALL_PROXY": "http://corp:3128"},
    "all-and-https": {"ALL_PROXY": "http://all:1", "HTTPS_PROXY": "http://secure:2"},
    "lower-wins": {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"},
    "no-proxy-domain": {"ALL_PROXY": "http://corp:3128", "NO_PROXY": "apiframe.pro"},
    "no-proxy-subdomains": {"ALL_PROXY": "http://corp:3128", "NO_PROXY": ".apiframe.pro"},
    "no-proxy-ips": {"ALL_PROXY": "http://corp:3128", "no_proxy": "127.0.0.1, ::1,localhost"},
    "no-proxy-star": {"ALL_PROXY": "http://corp:3128", "NO_PROXY": "*"},
    "no-proxy-url": {"ALL_PROXY": "http://corp:3128", "NO_PROXY": "http://127.0.0.1:8000"},
}
URLS = [
    "https://api.apiframe.pro/account",
    "https://apiframe.pro/account",
    "https://wwwapiframe.pro/account",
    "http://127.0.0.1:8000/account",
    "http://127.0.0.1:9000/account",
    "http://[::1]:8000/account",
    "http://localhost:8000/account",
]


def _httpx_proxy(client: httpx.AsyncClient, url: httpx.URL) -> str | None:
    transport = client._transport_for_url(url)
    if transport is client._transport:
        return None
    proxy_url = transport._pool._proxy_url  # type: ignore[attr-defined]
    return f"{proxy_url.scheme.decode()}://{proxy_url.host.decode()}:{proxy_url.port}"


@pytest.mark.parametrize("environment", list(ENVIRONMENTS), ids=str)
def test_the_environment_chooses_the_proxy_httpx_would(
    environment: str, no_network_env: pytest.MonkeyPatch
) -> None:
    """For each URL, the proxy chosen from the variables is the one httpx chooses."""
    for name, value in ENVIRONMENTS[environment].items():
        no_network_env.setenv(name, value)
    client = httpx.AsyncClient(trust_env=True)
    for text in URLS:
        url = httpx.URL(text)
        ours = proxy_for(url, None, trust_env=True)
        chosen = None if ours is None else f"{ours.url.scheme}://{ours.url.host}:{ours.url.port}"
        assert chosen == _httpx_proxy(client, url), text


@pytest.mark.parametrize(
    ("url", "proxy", "route"),
    [
        pytest.param("https://api.apiframe.pro", None, PooledTransport, id="https-direct"),
        pytest.param("http://127.0.0.1:8000", None, PooledTransport, id="http-direct"),
        pytest.param("https://api.apiframe.pro", "http://p:1", PooledTransport, id="https-connect"),
        pytest.param(
            "http://127.0.0.1:8000", "http://p:1", httpx.AsyncHTTPTransport, id="http-forwarded"
        ),
        pytest.param(
            "https://api.apiframe.pro", "https://p:1", httpx.AsyncHTTPTransport, id="tls-proxy"
        ),
    ],
)
def test_each_route_goes_to_the_transport_that_takes_it(
    url: str, proxy: str | None, route: type[httpx.AsyncBaseTransport]
) -> None:
    """Ours for direct and CONNECT routes, httpx's for forwarding and TLS to the proxy."""
    chosen = RoutingTransport(
        proxy=None if proxy is None else httpx.Proxy(proxy), verify=True, trust_env=False
    )._choose(httpx.URL(url))
    assert type(chosen) is route
    if isinstance(chosen, PooledTransport):
        assert (chosen._proxy is None) is (proxy is None)


def test_a_socks_proxy_needs_socksio(monkeypatch: pytest.MonkeyPatch) -> None:
    """socks5:// without socksio installed: refused at construction, saying what to install."""
    monkeypatch.setattr("apiframe_async._network._has_socks", lambda: False)
    with pytest.raises(RequestValidationError, match="socksio") as caught:
        AsyncApiframe("key", proxy="socks5://u:hunter2@corp:1080")
    assert caught.value.field == "proxy"
    assert "hunter2" not in str(caught.value)
    monkeypatch.setattr("apiframe_async._network._has_socks", lambda: True)
    assert AsyncApiframe("key", proxy="socks5://corp:1080").base_url


# -- the CONNECT handshake, against a hand-made proxy --------------------------------------


@contextlib.asynccontextmanager
async def scripted_proxy(reply: bytes) -> AsyncIterator[tuple[httpx.Proxy, list[bytes]]]:
    """A proxy that reads one CONNECT head, sends `reply`, and closes."""
    heads: list[bytes] = []

    async def answer(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            head = b""
            with contextlib.suppress(anyio.EndOfStream):
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
            heads.append(head)
            if reply:
                await stream.send(reply)

    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        tg.start_soon(listener.serve, answer)
        yield httpx.Proxy(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"), heads
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param(b"", "closed the tunnel before answering", id="closed"),
        pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", "malformed", id="not-http"),
        pytest.param(b"HTTP/1.1 403 Forbidden\r\n\r\n", "403 Forbidden", id="forbidden"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\nhello", "bytes of its own", id="bytes-after-200"),
    ],
)
async def test_a_failed_connect_is_a_proxy_error(reply: bytes, message: str) -> None:
    """Every way a CONNECT can fail is httpx.ProxyError (so: not sent), credentials left out."""
    async with scripted_proxy(reply) as (proxy, heads):
        with pytest.raises(httpx.ProxyError, match=message) as caught:
            await open_tunnel(proxy, "::1", 443, ssl.create_default_context())
    assert PASSWORD not in str(caught.value)
    (head,) = heads
    assert head.startswith(b"CONNECT [::1]:443 HTTP/1.1\r\n")
    assert b"host: [::1]:443\r\n" in head.lower()
    assert b"proxy-authorization: basic " in head.lower()


async def test_the_pooled_transport_tunnels_plain_http_too(open_proxy: Proxy) -> None:
    """Given a proxy, PooledTransport takes every origin through CONNECT, http included."""
    transport = PooledTransport(proxy=httpx.Proxy(open_proxy.url), trust_env=False)
    async with http_fake() as (base_url, fake):
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            for _ in range(2):
                reply = await http.get("/account", headers={"Authorization": fake.api_key})
                assert reply.status_code == 200
        await until(lambda: open_proxy.saw(f"CONNECT {base_url.removeprefix('http://')}"))
    assert len([line for line in open_proxy.access() if base_url[7:] in line]) == 1  # reused
