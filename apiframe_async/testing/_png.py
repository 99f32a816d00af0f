"""Deterministic PNG images: a tiny 8-bit RGB encoder on `zlib` and `struct`, no Pillow."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections.abc import Sequence

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRID = 8  # the picture is an 8x8 grid of cells, each either a gradient or a solid colour


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rows: Sequence[bytes]) -> bytes:
    """Encode `height` rows of `3 * width` RGB bytes as a PNG (filter type 0 on every row)."""
    if width < 1 or height < 1 or len(rows) != height:
        raise ValueError(f"need {height} rows for a {width}x{height} image, got {len(rows)}")
    if any(len(row) != 3 * width for row in rows):
        raise ValueError(f"every row must hold {3 * width} bytes")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = b"".join(b"\x00" + row for row in rows)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(pixels, 9))
        + _chunk(b"IEND", b"")
    )


def render_png(
    prompt: str, seed: int | None, index: int, width: int = 64, height: int = 64
) -> bytes:
    r"""The PNG the fake serves for image `index` of a generation of `prompt` with `seed`.

    Pure and deterministic: the same arguments always give the same bytes, and a different
    prompt, seed or index gives a different picture, so a test can compare a downloaded file
    with what it should be.

    Example:
        ```python
        from apiframe_async.testing import render_png

        png = render_png("a portrait of TOKMSN man", seed=7, index=0)
        assert png.startswith(b"\\x89PNG")
        ```
    """
    return _render(prompt, seed, index, width, height)


@functools.lru_cache(maxsize=256)
def _render(prompt: str, seed: int | None, index: int, width: int, height: int) -> bytes:
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    start, end, solid = digest[0:3], digest[3:6], digest[6:9]
    cells = int.from_bytes(digest[9:17], "big")
    span = max(width + height - 2, 1)
    gradient = [
        bytes(round(a + (b - a) * step / span) for a, b in zip(start, end, strict=True))
        for step in range(span + 1)
    ]
    columns = [x * _GRID // width for x in range(width)]
    rows = []
    for y in range(height):
        row_cells = (y * _GRID // height) * _GRID
        pixels = (
            solid if cells >> (row_cells + column) & 1 else gradient[x + y]
            for x, column in enumerate(columns)
        )
        rows.append(b"".join(pixels))
    return encode_png(width, height, rows)
