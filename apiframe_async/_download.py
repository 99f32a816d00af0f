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
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path
from typing import Final, cast

import anyio
import anyio.to_thread
import attrs
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
        # Plain calls, not awaits: a cancelled task cannot be stopped halfway through them.
        partial.unlink(missing_ok=True)
        raise


async def _write_capped(response: httpx.Response, path: Path, max_bytes: int) -> None:
    size = 0
    out = await anyio.to_thread.run_sync(path.open, "wb")
    # httpx's body iterators are async generators: closed here, not by the garbage collector.
    chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise DownloadError(str(response.url), f"more than the {max_bytes}-byte cap")
            await anyio.to_thread.run_sync(out.write, chunk)
    finally:
        # Closed in place, even when cancelled: an awaited close could be skipped.
        out.close()
        with anyio.CancelScope(shield=True):
            await chunks.aclose()


def _refusal(exc: Exception, url: str) -> DownloadError | None:
    """The `DownloadError` for an httpx failure that no retry can mend, if it is one."""
    if isinstance(exc, httpx.TooManyRedirects):
        return DownloadError(url, "too many redirects")
    if isinstance(exc, httpx.DecodingError):
        return DownloadError(url, f"the body could not be decoded ({exc})")
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return DownloadError(url, f"not a URL that can be fetched ({exc})")
    return None


def _translated(exc: Exception, url: str, doing: str) -> ApiframeError:
    """An httpx failure of a download as an error of our tree."""
    if (refused := _refusal(exc, url)) is not None:
        return refused
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"{doing} timed out", method="GET", url=url, may_have_been_submitted=False
        )
    return APIConnectionError(
        f"{doing}: {type(exc).__name__}", method="GET", url=url, may_have_been_submitted=False
    )


# Every failure httpx raises for a request, whatever its kind (a bad URL is not an HTTPError).
_HTTPX_FAILURES = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)


async def _stream_to_file(
    http: httpx.AsyncClient,
    url: str,
    folder: Path,
    stem: str,
    max_bytes: int,
    *,
    guard: AddressGuard | None = None,
) -> Path:
    try:
        request = http.build_request("GET", url, timeout=_DOWNLOAD_TIMEOUT)
        # Whatever the client's defaults, the key never travels to an image host.
        request.headers.pop("authorization", None)
        response = await send_guarded(http, request, guard)
    except _HTTPX_FAILURES as exc:
        raise _translated(exc, url, "download failed") from exc
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
    except _HTTPX_FAILURES as exc:
        raise _translated(exc, url, "download broke off") from exc
    else:
        return target
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()


def _jobs(result: Generation | Task | Sequence[str]) -> list[tuple[str, str]]:
    """Each photo's URL and file stem."""
    if isinstance(result, Generation | Task):
        return [(url, file_stem(result.task_id, i)) for i, url in enumerate(result.image_urls)]
    return [(url, file_stem(url, 0)) for url in result]


async def _save_one(
    http: httpx.AsyncClient,
    url: str,
    folder: Path,
    stem: str,
    *,
    max_bytes: int,
    policy: RetryPolicy,
    guard: AddressGuard | None,
) -> Path:
    """The photo's path: already saved, or fetched now (retried as a free request)."""
    existing = await anyio.to_thread.run_sync(_existing, folder, stem)
    if existing is not None:
        return existing

    async def fetch(_attempt: int) -> Path:
        return await _stream_to_file(http, url, folder, stem, max_bytes, guard=guard)

    return await call_with_retries(policy, fetch, paid=False)


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
        DownloadError: Not an image, too large, a name that would leave the folder, a URL
            that cannot be fetched, a redirect loop, a body that cannot be decoded, or a
            host that is not a public address.
        APIStatusError: The image host answered with an error status.
        APIConnectionError: The image host could not be reached or broke off.
    """
    target_folder = await anyio.to_thread.run_sync(_prepared, folder)
    policy = retry or RetryPolicy()
    guard = None if allow_private_addresses else AddressGuard()
    http = http_client or httpx.AsyncClient(follow_redirects=True)
    try:
        return [
            await _save_one(
                http, url, target_folder, stem, max_bytes=max_bytes, policy=policy, guard=guard
            )
            for url, stem in _jobs(result)
        ]
    finally:
        if http_client is None:
            await http.aclose()


@attrs.frozen
class SavedPhotos:
    """What became of each photo of one result: the files saved, and the photos not saved."""

    files: list[Path]
    failures: list[DownloadError]


async def save_photos(
    result: Generation | Task,
    folder: str | os.PathLike[str],
    *,
    http_client: httpx.AsyncClient,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    retry: RetryPolicy | None = None,
    allow_private_addresses: bool = False,
) -> SavedPhotos:
    """Save every photo of `result` that can be saved; a photo that cannot is a failure.

    Unlike `download()`, one photo failing does not stop the others, and every failure,
    whatever its cause (the host's status, a broken connection, a bad URL, a refused
    address, a full disk), is a `DownloadError` naming the photo's URL, chained to the cause.
    """
    policy = retry or RetryPolicy()
    guard = None if allow_private_addresses else AddressGuard()
    saved = SavedPhotos([], [])
    try:
        target_folder = await anyio.to_thread.run_sync(_prepared, folder)
    except OSError as exc:
        saved.failures.extend(DownloadError(url, str(exc)) for url, _ in _jobs(result))
        return saved
    for url, stem in _jobs(result):
        try:
            path = await _save_one(
                http_client,
                url,
                target_folder,
                stem,
                max_bytes=max_bytes,
                policy=policy,
                guard=guard,
            )
        except DownloadError as exc:
            saved.failures.append(exc)
        except (ApiframeError, OSError) as exc:
            failure = DownloadError(url, str(exc))
            failure.__cause__ = exc
            saved.failures.append(failure)
        else:
            saved.files.append(path)
    return saved


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


def saved_so_far(result: Generation | Task, folder: str | os.PathLike[str]) -> SavedPhotos:
    """What is on disk of `result`'s photos, for a job stopped while saving them.

    A plain call, not an await, so that a cancelled job can still tell: each photo not
    on disk is a failure, fetched again by a resumed job.
    """
    saved = SavedPhotos([], [])
    target_folder = Path(folder).resolve()
    for url, stem in _jobs(result):
        existing = _existing(target_folder, stem)
        if existing is not None:
            saved.files.append(existing)
        else:
            saved.failures.append(DownloadError(url, "not saved: the job was stopped first"))
    return saved
