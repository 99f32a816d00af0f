"""CI check of the main job's output: real PNG files, and one manifest line per prompt."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path


def check_png(path: Path) -> None:
    """Walk the PNG's chunks: signature, every CRC, and image data that inflates."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG signature"
    offset, idat = 8, b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    assert zlib.decompress(idat), f"{path}: empty image data"


def main(folder: str) -> None:
    """Check the main job's folder against the prompts file it was given."""
    out = Path(folder)
    prompts = [
        line
        for line in Path("examples/prompts.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["index"] for e in entries) == list(range(len(prompts))), "manifest lines"
    assert all(e["error"] is None for e in entries), "every prompt succeeded"
    photos = sorted(out.glob("*.png"))
    assert len(photos) == sum(len(e["files"]) for e in entries) >= len(prompts), "photo count"
    for photo in photos:
        check_png(photo)
    print(f"main job ok: {len(entries)} prompts, {len(photos)} valid PNG files in {out}/")


if __name__ == "__main__":
    main(sys.argv[1])
