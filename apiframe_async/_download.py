"""Saving generated photos: streamed to a temporary file, renamed into place atomically.

Image URLs point at a CDN, not at the API, so downloads go through a client that never
carries the API key. A URL decides nothing about where a file lands: names are built from
the task id and the photo's position, so no URL can write outside the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
import httpx

from ._addresses import AddressGuard, send_guarded
from ._errors import APIConnectionError, ApiframeError, APITimeoutError, DownloadError
from ._models import Generation, Task
from ._retry import RetryPolicy, call_with_retries
from ._status import status_error

#: The largest photo saved by default.
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 50 * 1024 * 1024

_EXTENSIONS: Final = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/heic": ".heic",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_DOWNLOAD_TIMEOUT: Final = httpx.Timeout(connect=10.0, read=60.0, write=10.0, pool=60.0)


def file_stem(key: str, index: int) -> str:
    """A file name without extension that is safe on every OS, from a task id or a URL."""
    safe = _UNSAFE.sub("-", key).strip("-.")[:80]
    if not safe or safe != key:
        # Ids are UUIDs; anything else gets a short hash so distinct keys stay distinct.
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        safe = f"{safe}-{digest}" if safe else digest
    return f"{safe}-{index}"


def _existing(folder: Path, stem: str) -> Path | None:
    for extension in dict.fromkeys(_EXTENSIONS.values()):
        candidate = folder / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None


def _prepared(folder: str | os.PathLike[str]) -> Path:
    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _inside(folder: Path, name: str) -> Path:
    target = (folder / name).resolve()
    if target.parent != folder:
        raise DownloadError(name, "file name would leave the folder")
    return target


async def _save(response: httpx.Response, target: Path, max_bytes: int) -> None:
    """Stream the body to a temporary file beside `target`, then rename it into place."""
    partial = _inside(target.parent, f".{target.stem}.{secrets.token_hex(4)}.part")
    try:
        await _write_capped(response, partial, max_bytes)
        partial.replace(target)  # atomic: a file under its final name is complete
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


async def _write_capped(response: httpx.Response, path: Path, max_bytes: int) -> None:
    size = 0
    async with await anyio.open_file(path, "wb") as out:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise DownloadError(str(response.url), f"more than the {max_bytes}-byte cap")
            await out.write(chunk)


async def _stream_to_file(
    http: httpx.AsyncClient,
    url: str,
    folder: Path,
    stem: str,
    max_bytes: int,
    *,
    guard: AddressGuard | None = None,
) -> Path:
    request = http.build_request("GET", url, timeout=_DOWNLOAD_TIMEOUT)
    # Whatever the client's defaults, the key never travels to an image host.
    request.headers.pop("authorization", None)
    try:
        response = await send_guarded(http, request, guard)
    except httpx.TimeoutException as exc:
        raise APITimeoutError(
            "download timed out", method="GET", url=url, may_have_been_submitted=False
        ) from exc
    except httpx.TransportError as exc:
        raise APIConnectionError(
            f"download failed: {type(exc).__name__}",
            method="GET",
            url=url,
            may_have_been_submitted=False,
        ) from exc
    try:
        if not response.is_success:
            await response.aread()
            raise status_error(response, method="GET", url=url)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        extension = _EXTENSIONS.get(content_type)
        if extension is None:
            raise DownloadError(url, f"not an image (content-type {content_type or 'none'})")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise DownloadError(url, f"{declared} bytes is above the {max_bytes}-byte cap")
        target = _inside(folder, f"{stem}{extension}")
        await _save(response, target, max_bytes)
    except httpx.TransportError as exc:
        raise APIConnectionError(
            f"download broke off: {type(exc).__name__}",
            method="GET",
            url=url,
            may_have_been_submitted=False,
        ) from exc
    else:
        return target
    finally:
        await response.aclose()


async def download(
    result: Generation | Task | Sequence[str],
    folder: str | os.PathLike[str],
    *,
    http_client: httpx.AsyncClient | None = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    retry: RetryPolicy | None = None,
    allow_private_addresses: bool = False,
) -> list[Path]:
    """Save the photos of a result into `folder`; returns their paths, in order.

    Files are named `<task_id>-<n>.<ext>` (from the URL's hash when only URLs are given),
    the extension from the served content type. A photo already saved is not fetched
    again, so a rerun after an interruption only fetches what is missing.

    Example:
        ```python
        gen = await client.generate(training_id=tid, prompt="a portrait of TOKMSN man")
        paths = await download(gen, "photos/")
        ```

    Args:
        result: A `Generation` or `Task` (its `image_urls`), or plain URLs.
        folder: Created if missing.
        http_client: The client to fetch with (never given the API key); a plain
            one is made and closed if none is given.
        max_bytes: The largest photo accepted.
        retry: How failed fetches are retried (downloads are safe to retry).
        allow_private_addresses: Fetch from loopback, private and link-local addresses
            too. By default a photo URL (or a redirect) whose host resolves to one is
            refused, unless it is at the loopback base URL of a client (the fake's).

    Raises:
        DownloadError: Not an image, too large, a name that would leave the folder, or a
            host that is not a public address.
        APIStatusError: The image host answered with an error status.
        APIConnectionError: The image host could not be reached or broke off.
    """
    target_folder = await anyio.to_thread.run_sync(_prepared, folder)
    if isinstance(result, Generation | Task):
        jobs = [(url, file_stem(result.task_id, i)) for i, url in enumerate(result.image_urls)]
    else:
        jobs = [(url, file_stem(url, 0)) for url in result]
    policy = retry or RetryPolicy()
    guard = None if allow_private_addresses else AddressGuard()
    http = http_client or httpx.AsyncClient(follow_redirects=True)
    try:
        paths = []
        for url, stem in jobs:
            existing = await anyio.to_thread.run_sync(_existing, target_folder, stem)
            if existing is not None:
                paths.append(existing)
                continue

            async def fetch(url: str = url, stem: str = stem) -> Path:
                return await _stream_to_file(http, url, target_folder, stem, max_bytes, guard=guard)

            paths.append(await call_with_retries(policy, fetch, paid=False))
        return paths
    finally:
        if http_client is None:
            await http.aclose()


async def download_all(
    results: Iterable[Generation | Task],
    folder: str | os.PathLike[str],
    *,
    concurrency: int = 8,
    http_client: httpx.AsyncClient | None = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    allow_private_addresses: bool = False,
) -> list[list[Path]]:
    """Save the photos of many results, `concurrency` results at a time, in input order.

    Raises the first failure, after cancelling the rest. `allow_private_addresses` is
    as for `download()`.
    """
    items = list(results)
    saved: list[list[Path]] = [[] for _ in items]
    limiter = anyio.CapacityLimiter(concurrency)
    http = http_client or httpx.AsyncClient(follow_redirects=True)

    async def one(index: int, result: Generation | Task) -> None:
        async with limiter:
            saved[index] = await download(
                result,
                folder,
                http_client=http,
                max_bytes=max_bytes,
                allow_private_addresses=allow_private_addresses,
            )

    try:
        async with anyio.create_task_group() as tg:
            for index, result in enumerate(items):
                tg.start_soon(one, index, result)
    except* (ApiframeError, OSError) as group:
        raise group.exceptions[0] from None
    finally:
        if http_client is None:
            await http.aclose()
    return saved
