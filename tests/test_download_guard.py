"""Downloads go only where photos live: private, loopback and metadata addresses are refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from apiframe_async import AsyncApiframe, DownloadError, download
from apiframe_async.testing import FakeApiframe

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
PUBLIC = "http://93.184.216.34"  # a literal public address: nothing to resolve


class Recorder:
    """An image host that records what reached it."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.seen: list[str] = []
        self.redirect_to = redirect_to

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        if self.redirect_to is not None and request.url.host != httpx.URL(self.redirect_to).host:
            return httpx.Response(302, headers={"location": self.redirect_to})
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self), follow_redirects=True)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        pytest.param("http://169.254.169.254/latest/meta-data/", "link-local", id="aws-metadata"),
        pytest.param("http://[fd00:ec2::254]/latest/meta-data/", "private", id="aws-metadata-v6"),
        pytest.param("http://127.0.0.1:6379/a.png", "loopback", id="loopback"),
        pytest.param("http://[::1]/a.png", "loopback", id="loopback-v6"),
        pytest.param("http://[::ffff:127.0.0.1]/a.png", "loopback", id="v4-mapped"),
        pytest.param("http://10.1.2.3/a.png", "private", id="private-10"),
        pytest.param("https://192.168.0.1/a.png", "private", id="private-192"),
        pytest.param("http://100.64.0.7/a.png", "non-public", id="shared-cgnat"),
        pytest.param("http://0.0.0.0/a.png", "unspecified", id="unspecified"),
        pytest.param("http://localhost:8080/a.png", "loopback", id="localhost-name"),
    ],
)
async def test_private_addresses_are_refused_before_any_request(
    tmp_path: Path, url: str, kind: str
) -> None:
    """Each address (literal or resolved, v4 or v6) is a DownloadError; nothing is fetched."""
    host = Recorder()
    async with host.client() as http:
        with pytest.raises(DownloadError) as caught:
            await download([url], tmp_path, http_client=http)
    assert f" {kind} address" in caught.value.reason
    assert "allow_private_addresses" in caught.value.reason
    assert host.seen == []
    assert list(tmp_path.iterdir()) == []


async def test_the_caller_may_allow_them(tmp_path: Path) -> None:
    """`allow_private_addresses=True` fetches from a private address."""
    host = Recorder()
    async with host.client() as http:
        (path,) = await download(
            ["http://10.1.2.3/a.png"], tmp_path, http_client=http, allow_private_addresses=True
        )
    assert path.read_bytes() == PNG
    assert host.seen == ["http://10.1.2.3/a.png"]


async def test_a_public_host_is_fetched(tmp_path: Path) -> None:
    """A public address goes through the guard."""
    host = Recorder()
    async with host.client() as http:
        (path,) = await download([f"{PUBLIC}/a.png"], tmp_path, http_client=http)
    assert path.read_bytes() == PNG


async def test_a_redirect_to_a_private_address_is_refused(tmp_path: Path) -> None:
    """A public host redirecting to the metadata address gets no request through to it."""
    host = Recorder(redirect_to="http://169.254.169.254/latest/meta-data/")
    async with host.client() as http:
        with pytest.raises(DownloadError, match="link-local"):
            await download([f"{PUBLIC}/a.png"], tmp_path, http_client=http)
    assert host.seen == [f"{PUBLIC}/a.png"]


async def test_a_redirect_to_a_public_host_is_followed(tmp_path: Path) -> None:
    """Redirects the client follows are still followed, each hop checked."""
    host = Recorder(redirect_to="http://93.184.216.35/b.png")
    async with host.client() as http:
        (path,) = await download([f"{PUBLIC}/a.png"], tmp_path, http_client=http)
    assert host.seen == [f"{PUBLIC}/a.png", "http://93.184.216.35/b.png"]
    assert path.read_bytes() == PNG


async def test_photos_of_a_loopback_fake_are_allowed_but_no_other_loopback(
    tmp_path: Path,
) -> None:
    """A client on a loopback fake saves its photos; another loopback port stays refused."""
    fake = FakeApiframe()
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url) as client,
    ):
        gen = await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
        (path,) = await download(gen, tmp_path)
        assert path.read_bytes().startswith(b"\x89PNG")
        port = int(base_url.rsplit(":", 1)[1])
        other = gen.image_urls[0].replace(f":{port}/", f":{port + 1}/")
        with pytest.raises(DownloadError, match="loopback"):
            await download([other], tmp_path / "other")


async def test_photos_of_an_in_process_fake_are_allowed(tmp_path: Path) -> None:
    """The in-process fake's origin is trusted, even at a private address of its own."""
    fake = FakeApiframe(base_url="https://10.9.9.9")
    async with (
        fake.client() as http,
        AsyncApiframe(fake.api_key, http_client=fake.client()) as client,
    ):
        gen = await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
        (path,) = await download(gen, tmp_path, http_client=http)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert gen.image_urls[0].startswith("https://10.9.9.9/")
