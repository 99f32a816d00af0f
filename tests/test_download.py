"""download(): safe names, atomic files, image-only, size caps, no key, skip what is saved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from apiframe_async import (
    DownloadError,
    Generation,
    RetryPolicy,
    ServerError,
    Task,
    TaskStatus,
    download,
    download_all,
)
from apiframe_async._download import file_stem

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)
CDN = "https://cdn.example"
FAST = RetryPolicy(max_retries=2, initial_backoff=0.001, max_backoff=0.002)


def generation(task_id: str = "3492deb6-aaaa", n: int = 2) -> Generation:
    urls = tuple(f"{CDN}/img/{task_id}/{i}.png" for i in range(n))
    return Generation(task_id=task_id, status=TaskStatus.FINISHED, image_urls=urls)


@pytest.fixture
def cdn() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=CDN, assert_all_called=False) as router:
        yield router


def http(cdn: respx.MockRouter, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(cdn.async_handler), **kwargs)  # type: ignore[arg-type]


async def test_saves_each_photo_under_a_name_from_the_task(
    cdn: respx.MockRouter, tmp_path: Path
) -> None:
    """Photos land as <task_id>-<n>.<ext>, complete, with no temporary file left."""
    cdn.get(url__regex=r"/img/.*").respond(200, content=PNG, headers={"content-type": "image/png"})
    async with http(cdn) as client:
        paths = await download(generation(), tmp_path / "out", http_client=client)
    assert [p.name for p in paths] == ["3492deb6-aaaa-0.png", "3492deb6-aaaa-1.png"]
    assert all(p.read_bytes() == PNG for p in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]


async def test_the_api_key_never_reaches_the_image_host(
    cdn: respx.MockRouter, tmp_path: Path
) -> None:
    """Even a client with an Authorization default sends none to the image host."""
    route = cdn.get(url__regex=r"/img/.*").respond(
        200, content=PNG, headers={"content-type": "image/png"}
    )
    async with http(cdn, headers={"Authorization": "secret-key"}) as client:
        await download(generation(n=1), tmp_path, http_client=client)
    assert "authorization" not in route.calls.last.request.headers


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param("../../etc/passwd", id="dot-dot"),
        pytest.param("/abs/path", id="absolute"),
        pytest.param("..", id="only-dots"),
        pytest.param("a\\..\\..\\b", id="backslashes"),
        pytest.param("", id="empty"),
    ],
)
async def test_no_name_escapes_the_folder(
    cdn: respx.MockRouter, tmp_path: Path, task_id: str
) -> None:
    """Whatever the task id or URL says, the file is written inside the folder."""
    cdn.get(url__regex=r".*").respond(200, content=PNG, headers={"content-type": "image/png"})
    task = Task(task_id=task_id, image_urls=(f"{CDN}/../../x.png",))
    folder = tmp_path / "photos"
    async with http(cdn) as client:
        (path,) = await download(task, folder, http_client=client)
    assert path.parent == folder.resolve()
    assert list(tmp_path.iterdir()) == [folder]


def test_stems_stay_distinct() -> None:
    """Ids that sanitise alike still get distinct names."""
    assert file_stem("a/b", 0) != file_stem("a?b", 0)
    assert file_stem("3492deb6-1c2d", 1) == "3492deb6-1c2d-1"


@pytest.mark.parametrize(
    ("headers", "content", "match"),
    [
        pytest.param({"content-type": "text/html"}, b"<html>", "not an image", id="html"),
        pytest.param({}, PNG, "not an image", id="no-type"),
        pytest.param(
            {"content-type": "image/png", "content-length": "999999"}, PNG, "cap", id="declared-big"
        ),
        pytest.param({"content-type": "image/png"}, PNG * 20, "cap", id="streamed-big"),
    ],
)
async def test_refuses_what_is_not_a_small_image(
    cdn: respx.MockRouter, tmp_path: Path, headers: dict[str, str], content: bytes, match: str
) -> None:
    """Non-image content and files above the cap are refused and leave nothing behind."""
    cdn.get(url__regex=r".*").respond(200, content=content, headers=headers)
    async with http(cdn) as client:
        with pytest.raises(DownloadError, match=match):
            await download(generation(n=1), tmp_path, http_client=client, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


async def test_skips_photos_already_saved(cdn: respx.MockRouter, tmp_path: Path) -> None:
    """A rerun fetches only the photos that are missing."""
    route = cdn.get(url__regex=r".*").respond(
        200, content=PNG, headers={"content-type": "image/png"}
    )
    (tmp_path / "3492deb6-aaaa-0.png").write_bytes(b"already here")
    async with http(cdn) as client:
        paths = await download(generation(), tmp_path, http_client=client)
    assert route.call_count == 1
    assert paths[0].read_bytes() == b"already here"


async def test_retries_a_failing_image_host(cdn: respx.MockRouter, tmp_path: Path) -> None:
    """A 503 from the image host is retried; a lasting 500 raises ServerError."""
    cdn.get(f"{CDN}/img/x/0.png").mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(200, content=PNG, headers={"content-type": "image/png"}),
        ]
    )
    async with http(cdn) as client:
        (path,) = await download(generation("x", 1), tmp_path, http_client=client, retry=FAST)
        assert path.read_bytes() == PNG
        cdn.get(f"{CDN}/img/y/0.png").respond(500)
        with pytest.raises(ServerError):
            await download(generation("y", 1), tmp_path, http_client=client, retry=FAST)


async def test_download_all_keeps_input_order(cdn: respx.MockRouter, tmp_path: Path) -> None:
    """download_all saves every result's photos and returns them in input order."""
    cdn.get(url__regex=r".*").respond(200, content=PNG, headers={"content-type": "image/png"})
    results = [generation(f"t{i}", 2) for i in range(6)]
    async with http(cdn) as client:
        saved = await download_all(results, tmp_path, concurrency=3, http_client=client)
    assert [[p.name for p in paths] for paths in saved] == [
        [f"t{i}-0.png", f"t{i}-1.png"] for i in range(6)
    ]
