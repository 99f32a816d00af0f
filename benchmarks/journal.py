"""What a journal's durability costs: write latency per item, in each SQLite mode.

Each item of a journaled job is written down twice (in flight, then its outcome), each
time with a full sync. This times those two writes per item through `Journal` itself
(rollback journal, exclusive lock, `synchronous=FULL`), then two such statements on a raw
connection in that mode and in WAL mode with `synchronous=FULL` (what the 0.1 release
used), in one run on one disk.

Usage: `python benchmarks/journal.py [--items N] [--dir PATH]` (PATH on the disk to measure;
a tmpfs makes every sync free and the figures meaningless).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from apiframe_async import GenerateRequest, Generation, Journal, TaskStatus
from apiframe_async._journal import SCHEMA_VERSION

_RESULT = Generation(task_id="t", status=TaskStatus.FINISHED, image_urls=("u",))


async def _shipped(path: Path, items: int) -> list[float]:
    times = []
    with Journal(path) as journal:
        for i in range(items):
            request = GenerateRequest(training_id="t", prompt=f"prompt {i}")
            key, occurrence = journal.identify(request)
            start = time.perf_counter()
            await journal.begin(key, occurrence, i, request)
            await journal.finish(key, occurrence, _RESULT, None)
            times.append(time.perf_counter() - start)
    return times


def _raw(path: Path, items: int, *, wal: bool) -> list[float]:
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    else:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE items (key TEXT, occurrence INTEGER, state TEXT, result TEXT, "
        "PRIMARY KEY (key, occurrence))"
    )
    times = []
    for i in range(items):
        start = time.perf_counter()
        db.execute("INSERT INTO items VALUES (?, 0, 'sending', NULL)", (f"k{i}",))
        db.execute("UPDATE items SET state = 'done', result = 'r' WHERE key = ?", (f"k{i}",))
        times.append(time.perf_counter() - start)
    db.close()
    return times


def _line(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[int(len(ms) * 0.95)]
    return f"{name:<40} median {statistics.median(ms):7.3f} ms   p95 {p95:7.3f} ms per item"


def main() -> None:
    """Time both modes and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        shipped = anyio.run(_shipped, Path(folder) / "shipped.sqlite", args.items)
        rollback = _raw(Path(folder) / "rollback.sqlite", args.items, wal=False)
        wal = _raw(Path(folder) / "wal.sqlite", args.items, wal=True)
    print(_line(f"Journal (schema v{SCHEMA_VERSION}), via a thread", shipped))
    print(_line("raw SQL, rollback + exclusive + FULL", rollback))
    print(_line("raw SQL, WAL + FULL (0.1's mode)", wal))
    ratio = statistics.median(rollback) / statistics.median(wal)
    print(f"rollback / WAL: {ratio:.2f}x")


if __name__ == "__main__":
    main()
