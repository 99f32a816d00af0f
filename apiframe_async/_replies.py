"""Reading an API reply's body within a size limit, on the wire and after decoding.

httpx inflates a gzip body in one call, whatever it inflates to: a 1 MiB reply can become
1 GiB in memory before anyone looks at its size. Here the body is read raw, counted while it
streams, and inflated with a bound on the output, so memory stays near the limit whatever
the server sends. Only the encodings we ask for (`ACCEPT_ENCODING`) are decoded.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import TYPE_CHECKING, cast

import httpx

from ._errors import ResponseValidationError
from ._transport import buffered_content

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

__all__ = ["ACCEPT_ENCODING", "DEFAULT_MAX_RESPONSE_BYTES", "read_reply"]

#: The largest API reply accepted by default: replies are JSON, the largest (`fetch-many`
#: of many tasks) tens of kilobytes; images are downloads, with their own limit.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
ACCEPT_ENCODING = "gzip, deflate"
_GZIP = zlib.MAX_WBITS | 16
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS


async def read_reply(response: httpx.Response, limit: int, *, method: str, url: str) -> None:
    """Read `response`'s body into `response.content`, refusing more than `limit` bytes.

    The limit holds for the bytes as sent and for the decoded body alike.

    Raises:
        ResponseValidationError: The body is over the limit, or cannot be decoded.
        httpx.HTTPError: Reading the body failed.
    """
    try:
        raw = await _raw_body(response, limit)
        if raw is None:
            return
        # get_list(), not get(): a missing header costs get() a KeyError raised and caught.
        encoding = ", ".join(response.headers.get_list("content-encoding"))
        content = _decoded(raw, encoding, limit)
    except _RefusedError as exc:
        raise ResponseValidationError([f"$: {exc}"], body="", method=method, url=url) from exc
    except zlib.error as exc:
        problem = f"$: the body could not be decoded ({exc})"
        raise ResponseValidationError([problem], body="", method=method, url=url) from exc
    # What httpx's own read() stores; httpx has no public way to hand over a body read
    # and decoded elsewhere.
    response._content = content  # noqa: SLF001


class _RefusedError(Exception):
    """A body we will not take: over the limit, or in an encoding we did not ask for."""


async def _raw_body(response: httpx.Response, limit: int) -> bytes | None:
    """The body as sent, or None if the response was read already (within the limit)."""
    raw = buffered_content(response.stream)  # our transport's common case: all there
    if raw is not None:
        _check_size(len(raw), limit)
        return raw
    try:
        content = response.content  # a borrowed client's transport may have read it already
    except httpx.ResponseNotRead:
        pass
    else:
        _check_size(len(content), limit)
        return None
    length = response.headers.get("content-length", "")
    if length.isdigit():
        _check_size(int(length), limit)  # refused before a byte of the body is read
    chunks, size = [], 0
    # Closed explicitly when refused midway: trio warns of a generator left to the GC.
    raw_pieces = cast("AsyncGenerator[bytes, None]", response.aiter_raw())  # it is one
    async with contextlib.aclosing(raw_pieces) as pieces:
        async for chunk in pieces:
            size += len(chunk)
            _check_size(size, limit)
            chunks.append(chunk)
    return b"".join(chunks)


def _check_size(size: int, limit: int, what: str = "") -> None:
    if size > limit:
        raise _RefusedError(f"reply of {size}{what} bytes or more is over the limit of {limit}")


def _decoded(raw: bytes, encoding: str, limit: int) -> bytes:
    if not encoding:
        return raw
    # Codings are listed in the order they were applied: undo them last to first.
    for coding in reversed(encoding.lower().split(",")):
        name = coding.strip(" \t")
        if name in {"gzip", "x-gzip"}:
            raw = _inflate(raw, _GZIP, limit)
        elif name == "deflate":
            # "deflate" is zlib-wrapped by the spec, raw deflate by some servers.
            try:
                raw = _inflate(raw, _ZLIB, limit)
            except zlib.error:
                raw = _inflate(raw, _RAW_DEFLATE, limit)
        elif name not in {"identity", ""}:
            raise _RefusedError(f"unsupported Content-Encoding {name!r}")
    return raw


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    # Never more than limit + 1 bytes out of one call: one byte over is enough to refuse.
    out = decompressor.decompress(data, limit + 1)
    _check_size(len(out), limit, " decoded")
    return out + decompressor.flush()
