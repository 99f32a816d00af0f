"""One benchmark run of one client, alone in its process so CPU time and peak RSS are its own.

Usage: `python benchmarks/clients.py CLIENT BACKEND URL N CONCURRENCY`; prints one JSON
line. The N request bodies come from a generator and are unique (the server counts repeats),
and the raw clients pull them through a fixed pool of CONCURRENCY workers, the way
`generate_many` does: memory stays O(concurrency), never O(N).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import resource
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import httpx
from harness import bodies

from apiframe_async._transport import PooledTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Send = Callable[[dict[str, str]], Awaitable[bool]]

PATH = "/ai-photo-generate"
HEADERS = {"Authorization": "k"}


async def worker_pool(send: Send, n: int, concurrency: int) -> Counter[bool]:
    """`concurrency` workers pulling from one shared lazy iterator."""
    counts: Counter[bool] = Counter()
    items = bodies(n)

    async def worker() -> None:
        for body in items:
            try:
                counts[await send(body)] += 1
            except Exception:
                counts[False] += 1

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return counts


@contextlib.asynccontextmanager
async def httpx_sender(url: str, transport: httpx.AsyncBaseTransport) -> AsyncIterator[Send]:
    # httpx's default 5 s would fail connections that wait in the server's accept queue
    # when 256 open at once on a loaded machine; aiohttp allows 300 s.
    timeout = httpx.Timeout(60)
    async with httpx.AsyncClient(
        transport=transport, base_url=url, headers=HEADERS, timeout=timeout
    ) as client:

        async def send(body: dict[str, str]) -> bool:
            response = await client.post(PATH, json=body)
            return response.status_code == 200 and response.json()["status"] == "finished"

        yield send


@contextlib.asynccontextmanager
async def aiohttp_sender(url: str) -> AsyncIterator[Send]:
    connector = aiohttp.TCPConnector(limit=0)  # no cap: the worker pool is the bound
    async with aiohttp.ClientSession(url, connector=connector, headers=HEADERS) as session:

        async def send(body: dict[str, str]) -> bool:
            async with session.post(PATH, json=body) as response:
                reply = await response.json()
                return response.status == 200 and reply["status"] == "finished"

        yield send


def _aiohttp_transport() -> httpx.AsyncBaseTransport:
    # Imported here: an optional extra of the benchmark, skipped by run.py when missing.
    from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

    # No cap below the worker pool, as for the other clients: without a number it keeps
    # aiohttp's default of 100, and workers past it time out waiting for a connection.
    limits = httpx.Limits(max_connections=4096)
    transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits)
    return transport


async def raw_pool(client: str, url: str, n: int, concurrency: int) -> Counter[bool]:
    senders = {
        # The default transport, with its connection cap lifted so the pool is the bound.
        "httpx": lambda: httpx_sender(url, httpx.AsyncHTTPTransport(limits=httpx.Limits())),
        "httpx+pooled": lambda: httpx_sender(url, PooledTransport()),
        "aiohttp": lambda: aiohttp_sender(url),
        "httpx-aiohttp": lambda: httpx_sender(url, _aiohttp_transport()),
    }
    async with senders[client]() as send:
        return await worker_pool(send, n, concurrency)


async def apiframe(client: str, url: str, n: int, concurrency: int) -> Counter[bool]:
    # Imported here: run.py skips these rows while the client cannot be imported.
    from apiframe_async import AsyncApiframe, GenerateRequest  # noqa: PLC0415

    counts: Counter[bool] = Counter()
    requests = (GenerateRequest(training_id="bench", prompt=f"prompt {i}") for i in range(n))
    # "+pooled": a borrowed httpx client on PooledTransport, whatever the default is.
    http_client = httpx.AsyncClient(transport=PooledTransport()) if "+" in client else None
    async with (
        AsyncApiframe(
            api_key="k", base_url=url, max_concurrency=concurrency, http_client=http_client
        ) as api,
        api.generate_many(requests, concurrency=concurrency) as outcomes,
    ):
        async for outcome in outcomes:
            counts[outcome.ok] += 1
    if http_client is not None:
        await http_client.aclose()
    return counts


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    client, backend, url, n, concurrency = sys.argv[1:6]
    run = raw_pool
    # Imported before measuring, not during: anyio loads its backend on first use.
    importlib.import_module(f"anyio._backends._{backend}")
    if client.startswith("apiframe"):
        importlib.import_module("apiframe_async")
        run = apiframe
    rss_before = max_rss_mb()
    start, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    counts = anyio.run(run, client, url, int(n), int(concurrency), backend=backend)
    wall, end = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime
    result: dict[str, Any] = {
        "wall_s": wall,
        "cpu_us": cpu / int(n) * 1e6,
        "rss_mb": max_rss_mb(),
        "rss_growth_mb": max_rss_mb() - rss_before,
        "ok": counts[True],
        "failed": counts[False],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
