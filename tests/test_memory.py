"""No growth: many clients made and closed, and a 100,000-prompt job, hold memory flat."""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest

from apiframe_async import AsyncApiframe, GenerateRequest

pytestmark = pytest.mark.anyio

REPLY = b'{"task_id":"t","status":"finished","task_type":"ai-photo-generate","image_urls":["u"]}'


class InstantServer(httpx.AsyncBaseTransport):
    """Answers every generate at once, so the job measures the client alone."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=REPLY, request=request)


def traced() -> int:
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    return current


async def test_ten_thousand_client_cycles_do_not_grow() -> None:
    """Creating and closing a client 10,000 times leaves memory where 1,000 cycles did."""
    tracemalloc.start()
    try:
        for _ in range(1_000):
            async with AsyncApiframe("k"):
                pass
        after_warmup = traced()
        for _ in range(9_000):
            async with AsyncApiframe("k"):
                pass
        growth = traced() - after_warmup
    finally:
        tracemalloc.stop()
    assert growth < 64 * 1024, f"{growth} bytes more after 9,000 more cycles"


def prompts(n: int) -> Iterator[GenerateRequest]:
    return (GenerateRequest(training_id="t", prompt=f"prompt {i}") for i in range(n))


def rss_bytes() -> int:
    """The process's resident memory now, from /proc (Linux) or 0 where that is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:  # noqa: PTH123
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


async def test_a_hundred_thousand_prompt_job_stays_flat(anyio_backend: str) -> None:
    """Nothing a prompt allocates outlives it, and resident memory stays flat throughout.

    Tracing every allocation of 100,000 prompts would take minutes, so the last 5,000 are
    traced: once the job is over, nothing they allocated may still be alive.
    """
    n = 100_000 if anyio_backend == "asyncio" else 20_000
    trace_from = n - 5_000
    rss: dict[str, int] = {}
    async with (
        httpx.AsyncClient(transport=InstantServer()) as http,
        AsyncApiframe("k", http_client=http) as client,
    ):
        try:
            async with client.generate_many(prompts(n), concurrency=32) as outcomes:
                async for outcome in outcomes:
                    assert outcome.ok
                    if outcome.index == 5_000:
                        gc.collect()
                        rss["early"] = rss_bytes()
                    elif outcome.index == trace_from:
                        gc.collect()
                        rss["late"] = rss_bytes()
                        tracemalloc.start()
            gc.collect()
            left_over, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert left_over < 64 * 1024, f"{left_over} bytes allocated by the last prompts still alive"
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while tracing"
    assert rss["late"] - rss["early"] < 8 * 1024 * 1024, rss
