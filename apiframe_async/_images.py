"""Reading a subject's photos and encoding them for `/ai-photo-upload`, off the event loop."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Final

import anyio.to_thread

from ._errors import RequestValidationError
from ._models import MAX_IMAGES, MIN_IMAGES

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""A photo: a file path, the file's bytes, or a binary file object open for reading."""

#: The largest photo accepted by default; the service takes phone photos, not RAW files.
DEFAULT_MAX_IMAGE_BYTES: Final = 15 * 1024 * 1024

_FORMATS = "JPEG, PNG, WebP, HEIC/HEIF/AVIF, GIF, BMP or TIFF"


def _looks_like_an_image(head: bytes) -> bool:
    return (
        head.startswith(
            (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
        )
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head[4:8] == b"ftyp"
    )


def _read(source: ImageSource, field: str, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            if path.stat().st_size > max_bytes:
                raise RequestValidationError(
                    field, f"{path} is too large", allowed=f"at most {max_bytes} bytes"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise RequestValidationError(
                field, f"cannot read {path}: {exc.strerror}", allowed="a readable file"
            ) from None
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise RequestValidationError(
                field, "file object is not binary", allowed="a file opened with 'rb'"
            )
    else:
        raise RequestValidationError(
            field,
            f"{type(source).__name__} is not a photo",
            allowed="a path, bytes or a binary file",
        )
    if len(data) > max_bytes:
        raise RequestValidationError(field, "is too large", allowed=f"at most {max_bytes} bytes")
    if not _looks_like_an_image(data[:16]):
        raise RequestValidationError(field, "is not an image file", allowed=_FORMATS)
    return data


def _encode_all(sources: list[ImageSource], max_bytes: int) -> tuple[str, ...]:
    return tuple(
        base64.b64encode(_read(source, f"images[{i}]", max_bytes)).decode("ascii")
        for i, source in enumerate(sources)
    )


async def encode_images(
    sources: Iterable[ImageSource], *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> tuple[str, ...]:
    """Read, check and base64-encode each photo in a worker thread.

    Raises:
        RequestValidationError: Fewer than 10 or more than 30 photos; a photo that cannot
            be read, is empty, too large, or not an image (its field is `images[i]`).
    """
    items = list(sources)
    if not MIN_IMAGES <= len(items) <= MAX_IMAGES:
        raise RequestValidationError(
            "images",
            f"{len(items)} images given",
            allowed=f"{MIN_IMAGES} to {MAX_IMAGES} photos of the subject",
        )
    return await anyio.to_thread.run_sync(_encode_all, items, max_bytes)
