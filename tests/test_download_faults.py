"""Photos that cannot be saved, served by a broken image host on loopback: typed, recorded.

A redirect loop, a corrupt gzip body, a body cut short, a bad URL, a host that refuses
connections: each is a `DownloadError` with the photo's URL, the other photos are saved,
no temporary file is left behind, and a bulk job goes on and records it in its manifest.
The broken host stands in for a public one, so the download guard lets it through
(`allow_private_addresses=True`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from apiframe_async import (
    APIConnectionError,
    ApiframeError,
    AsyncApiframe,
    DownloadError,
    GenerateRequest,
    Generation,
    RetryPolicy,
    TaskStatus,
    download,
)
from apiframe_async._bulk import run_bulk_job
from apiframe_async._download import save_photos
from apiframe_async.testing import FakeApiframe, FakeServer
from apiframe_async.testing._asgi import ConnectionDroppedError

pytestmark = [
    pytest.mark.anyio,
    # httpx's and httpcore's body iterators are chains of async generators: a body that
    # stops early (a decoding error, a cancel) leaves the inner ones to the garbage
    # collector, which trio reports (encode/httpx#3686; open fix: encode/httpx#3777).
    pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Async generator 'httpcore.:ResourceWarning"),
]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(2000)
FAST = RetryPolicy(max_retries=1, initial_backoff=0.001, max_backoff=0.002)

Scope = dict[str, Any]


class BrokenImageHost:
    """An ASGI image host: good photos under /ok/, and each way a download breaks."""

    def __init__(self) -> None:
        self.stalled = anyio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path.startswith("/ok/"):
            await _reply(send, 200, [(b"content-type", b"image/png")], PNG)
        elif path == "/loop":
            await _reply(send, 302, [(b"location", b"/loop")], b"")
        elif path == "/gzip":
            headers = [(b"content-type", b"image/png"), (b"content-encoding", b"gzip")]
            await _reply(send, 200, headers, b"this is not gzip at all" * 10)
        elif path in {"/cut", "/stall"}:
            headers = [(b"content-type", b"image/png"), (b"content-length", b"100000")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": PNG, "more_body": True})
            if path == "/stall":
                await anyio.sleep(30)
            raise ConnectionDroppedError


async def _reply(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    """The broken image host on a loopback port."""
    with FakeServer(BrokenImageHost()) as base_url:  # type: ignore[arg-type]
        yield base_url


def _refusing_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=True) as client:
        yield client


BROKEN = [
    pytest.param(("/loop", DownloadError, "too many redirects"), id="redirect-loop"),
    pytest.param(("/gzip", DownloadError, "could not be decoded"), id="corrupt-gzip"),
    pytest.param(("/cut", APIConnectionError, "broke off"), id="cut-mid-body"),
]


@pytest.mark.parametrize("case", BROKEN)
async def test_download_raises_a_typed_error_never_httpx(
    host: str, http: httpx.AsyncClient, tmp_path: Path, case: tuple[str, type[Exception], str]
) -> None:
    """download() raises an error of our tree naming the URL, and leaves no partial file."""
    path, kind, reason = case
    with pytest.raises(ApiframeError) as caught:
        await download(
            [f"{host}{path}"], tmp_path, http_client=http, retry=FAST, allow_private_addresses=True
        )
    assert type(caught.value) is kind
    assert getattr(caught.value, "url", None) == f"{host}{path}"
    assert reason in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://[::1/x.png", id="malformed"),
        pytest.param("ftp://example.com/x.png", id="unsupported-scheme"),
        pytest.param("not a url at all", id="no-scheme"),
    ],
)
async def test_a_url_that_cannot_be_fetched_is_a_download_error(
    http: httpx.AsyncClient, tmp_path: Path, url: str
) -> None:
    """A malformed or unfetchable URL is refused with DownloadError, not httpx.InvalidURL."""
    with pytest.raises(DownloadError) as caught:
        await download([url], tmp_path, http_client=http, retry=FAST, allow_private_addresses=True)
    assert caught.value.url == url


async def test_every_photo_that_can_be_saved_is_saved(
    host: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """One result with good and broken photos: the good ones saved, each other one a failure."""
    refused = f"http://127.0.0.1:{_refusing_port()}/x.png"
    urls = (
        f"{host}/ok/0.png",
        f"{host}/loop",
        f"{host}/ok/2.png",
        f"{host}/gzip",
        "http://[::1/x.png",
        f"{host}/cut",
        refused,
        f"{host}/ok/7.png",
    )
    gen = Generation(task_id="task-a", status=TaskStatus.FINISHED, image_urls=urls)
    saved = await save_photos(
        gen, tmp_path, http_client=http, retry=FAST, allow_private_addresses=True
    )
    assert [p.name for p in saved.files] == ["task-a-0.png", "task-a-2.png", "task-a-7.png"]
    assert all(p.read_bytes() == PNG for p in saved.files)
    assert [f.url for f in saved.failures] == [urls[1], urls[3], urls[4], urls[5], refused]
    assert all(isinstance(f, DownloadError) for f in saved.failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in saved.files]


async def test_a_cancelled_download_leaves_no_partial_file(
    host: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Cancelled mid-body, the temporary file is removed, not left at zero or half size."""
    with anyio.move_on_after(0.5) as scope:
        await download(
            [f"{host}/stall"], tmp_path, http_client=http, retry=FAST, allow_private_addresses=True
        )
    assert scope.cancelled_caught
    assert list(tmp_path.iterdir()) == []


class _Detour(httpx.AsyncBaseTransport):
    """Sends the second photo of every generation to the broken host's corrupt gzip."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("-1.png"):
            request = httpx.Request("GET", f"{self._host}/gzip", headers=request.headers)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_bulk_job_records_failed_downloads_and_a_resume_fetches_them(
    host: str, tmp_path: Path
) -> None:
    """The job goes on; the manifest names each unsaved photo; a resume saves it, unpaid."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    requests = [
        GenerateRequest(training_id=training_id, prompt=f"p{i}", number_of_images=2)
        for i in range(6)
    ]
    out, book = tmp_path / "photos", tmp_path / "job.sqlite"
    async with fake.serve() as base_url, AsyncApiframe(fake.api_key, base_url=base_url) as client:
        broken = httpx.AsyncClient(transport=_Detour(host))
        async with broken:
            with (tmp_path / "first.jsonl").open("w") as manifest:
                first = await run_bulk_job(
                    client,
                    requests,
                    out,
                    manifest=manifest,
                    journal=book,
                    download_client=broken,
                    allow_private_addresses=True,
                )
        with (tmp_path / "second.jsonl").open("w") as manifest:
            second = await run_bulk_job(client, requests, out, manifest=manifest, journal=book)

    lines = [json.loads(x) for x in (tmp_path / "first.jsonl").read_text().splitlines()]
    assert (first.succeeded, first.failed, first.files, first.failed_downloads) == (0, 6, 6, 6)
    for line in lines:
        assert len(line["files"]) == 1
        (failure,) = line["failed_downloads"]
        assert failure["url"].endswith(f"{line['task_id']}-1.png")
        assert failure["type"] == "DownloadError"
        assert line["error"]["type"] == "DownloadError"
    assert (second.succeeded, second.failed, second.files, second.credits) == (6, 0, 12, 0)
    assert fake.generate_count_by_prompt() == {f"p{i}": 1 for i in range(6)}
    assert len(list(out.glob("*.png"))) == 12
    assert _leftovers(out) == []
