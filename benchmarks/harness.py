"""What the benchmark runners share: the stand-in server, a client run, the request bodies.

`run.py` and `goodput.py` each start a fresh `server.py` per client run and run the client
alone in its own process, so that its CPU time and peak RSS are its own.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).parent


@contextlib.contextmanager
def server(*args: str) -> Iterator[str]:
    """A fresh stand-in server (`server.py ARGS`) on a free loopback port; yields its URL."""
    command = [sys.executable, str(HERE / "server.py"), *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            port = int(process.stdout.readline()) if process.stdout else 0
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()


def run_process(command: list[str], url: str, limit_s: float) -> dict[str, Any]:
    """Run one client process against the server at `url`: its JSON line plus `/stats`."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over {limit_s:.0f} s"}
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    result: dict[str, Any] = json.loads(done.stdout)
    result.update(httpx.get(f"{url}/stats").json())
    return result


def bodies(n: int) -> Iterator[dict[str, str]]:
    """N generate bodies, each unique (the server counts repeats), made as they are pulled."""
    return ({"training_id": "bench", "prompt": f"prompt {i}"} for i in range(n))
