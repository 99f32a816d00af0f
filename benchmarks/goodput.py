"""Goodput at an account's limit: our client beside aiohttp and httpx worker pools, in one run.

Each scenario starts the stand-in server (benchmarks/server.py) in a limit mode, and each
client runs alone in its own process against a fresh server: a job of N generations at
`concurrency` 64, with a 200 ms generation latency. The raw pools (aiohttp, httpx) are
what a careful script does: a fixed pool of workers, each sleeping the `Retry-After` of a
429 and sending the same request again. Our client runs `generate_many` as shipped.

Figures, all from the server's counters: goodput (finished generations per second over
the whole job) against the limit, the share of requests answered 429 (all, and once
settled: after the first `SETTLE_S` seconds), the wall time against aiohttp's in the same
run, and the generations running over time as a sparkline.

Usage: `python benchmarks/goodput.py [--quick] [--scenario NAME]... [--client NAME]...`
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from harness import bodies, run_process, server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Send = Callable[[dict[str, str]], Awaitable[tuple[int, float | None]]]

PATH = "/ai-photo-generate"
HEADERS = {"Authorization": "k"}
LATENCY_MS = 200
CONCURRENCY = 64
SETTLE_S = 3.0
SPARK = " .:-=+*#%@"


@dataclass(frozen=True)
class Scenario:
    """One limit; `ideal_rate` is the most generations per second it allows."""

    name: str
    server_args: tuple[str, ...]
    n: int
    quick_n: int
    ideal_rate: float
    targets: str = ""
    extra: dict[str, str] = field(default_factory=dict)


SCENARIOS = (
    Scenario(
        "concurrency-limit",
        ("--concurrency-limit", "32", "--retry-after", "1"),
        n=4_000,
        quick_n=800,
        ideal_rate=32 / (LATENCY_MS / 1000),
        targets="goodput >= 0.95 of K/latency, settled 429s < 5%",
    ),
    Scenario(
        "token-bucket",
        ("--token-bucket", "100", "--burst", "10", "--retry-after", "ceil"),
        n=2_000,
        quick_n=600,
        ideal_rate=100,
        targets="goodput >= 0.95 of R (Retry-After in whole seconds)",
    ),
    Scenario(
        "token-bucket-exact",
        ("--token-bucket", "100", "--burst", "10", "--retry-after", "exact"),
        n=2_000,
        quick_n=600,
        ideal_rate=100,
        targets="goodput >= 0.95 of R (Retry-After to the ms)",
    ),
    Scenario(
        "random-429",
        ("--random-429", "0.02", "--retry-after", "1"),
        n=5_000,
        quick_n=1_500,
        ideal_rate=CONCURRENCY / (LATENCY_MS / 1000),
        targets="wall <= 1.3x aiohttp's",
    ),
)
CLIENTS = (
    ("aiohttp", "asyncio"),
    ("httpx", "asyncio"),
    ("apiframe-async", "asyncio"),
    ("apiframe-async", "trio"),
)


# -- the clients, each run alone in its process -----------------------------------------


async def worker_pool(send: Send, n: int, concurrency: int) -> Counter[bool]:
    """Workers that sleep each 429's Retry-After and send the same request again."""
    counts: Counter[bool] = Counter()
    items = bodies(n)

    async def worker() -> None:
        for body in items:
            for _ in range(100):
                try:
                    status, retry_after = await send(body)
                except Exception:
                    status, retry_after = 0, None
                if status != 429:
                    counts[status == 200] += 1
                    break
                await anyio.sleep(retry_after or 1.0)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return counts


def _seconds(value: str | None) -> float | None:
    return float(value) if value else None


@contextlib.asynccontextmanager
async def httpx_sender(url: str) -> AsyncIterator[Send]:
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits())
    async with httpx.AsyncClient(transport=transport, base_url=url, headers=HEADERS) as client:

        async def send(body: dict[str, str]) -> tuple[int, float | None]:
            response = await client.post(PATH, json=body)
            return response.status_code, _seconds(response.headers.get("retry-after"))

        yield send


@contextlib.asynccontextmanager
async def aiohttp_sender(url: str) -> AsyncIterator[Send]:
    import aiohttp  # noqa: PLC0415 - only this client needs it

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(url, connector=connector, headers=HEADERS) as session:

        async def send(body: dict[str, str]) -> tuple[int, float | None]:
            async with session.post(PATH, json=body) as response:
                await response.read()
                return response.status, _seconds(response.headers.get("retry-after"))

        yield send


#: The adaptive limit of our client, sampled as the server samples what runs.
LIMITS: list[int] = []


async def apiframe(url: str, n: int, concurrency: int) -> Counter[bool]:
    from apiframe_async import AsyncApiframe, GenerateRequest  # noqa: PLC0415

    counts: Counter[bool] = Counter()
    requests = (GenerateRequest(training_id="bench", prompt=f"prompt {i}") for i in range(n))
    async with (
        AsyncApiframe(api_key="k", base_url=url, max_concurrency=concurrency) as api,
        api.generate_many(requests, concurrency=concurrency) as outcomes,
        anyio.create_task_group() as tg,
    ):

        async def sample() -> None:
            while True:
                LIMITS.append(outcomes.progress.concurrency)
                await anyio.sleep(0.5)

        tg.start_soon(sample)
        async for outcome in outcomes:
            counts[outcome.ok] += 1
        tg.cancel_scope.cancel()
    return counts


async def run_client(client: str, url: str, n: int, concurrency: int) -> Counter[bool]:
    if client == "apiframe-async":
        return await apiframe(url, n, concurrency)
    sender = aiohttp_sender if client == "aiohttp" else httpx_sender
    async with sender(url) as send:
        return await worker_pool(send, n, concurrency)


def client_main(argv: list[str]) -> None:
    client, backend, url, n, concurrency = argv
    if client == "apiframe-async":
        importlib.import_module("apiframe_async")  # before the clock starts
    start = time.perf_counter()
    counts = anyio.run(run_client, client, url, int(n), int(concurrency), backend=backend)
    wall = time.perf_counter() - start
    print(
        json.dumps({"wall_s": wall, "ok": counts[True], "failed": counts[False], "limits": LIMITS})
    )


# -- the runner ---------------------------------------------------------------------------


def run_one(client: tuple[str, str], scenario: Scenario, n: int, limit_s: float) -> dict[str, Any]:
    with server("--latency-ms", str(LATENCY_MS), *scenario.server_args) as url:
        command = [sys.executable, __file__, "client", *client, url, str(n), str(CONCURRENCY)]
        return run_process(command, url, limit_s)


def sparkline(series: list[list[float]], top: float, width: int = 40) -> str:
    """Generations running per interval, scaled to `top`, squeezed to `width` characters."""
    running = [row[0] for row in series]
    step = max(1, -(-len(running) // width))
    cells = [max(running[i : i + step]) for i in range(0, len(running), step)]
    return "".join(SPARK[min(len(SPARK) - 1, round(v / top * (len(SPARK) - 1)))] for v in cells)


def figures(scenario: Scenario, result: dict[str, Any], aiohttp_wall: float | None) -> str:
    if "error" in result:
        return f"| {result['error']} |  |  |  |  |  |"
    goodput = result["ok"] / result["wall_s"]
    settle = int(SETTLE_S / result["sample_s"])
    settled = result["series"][settle:]
    settled_429 = sum(row[2] for row in settled) / max(1, sum(row[1] for row in settled))
    wall = f"{result['wall_s']:.1f} s"
    if aiohttp_wall:
        wall += f" ({result['wall_s'] / aiohttp_wall:.2f}x)"
    top = max([32.0, *(row[0] for row in result["series"])])
    checks = f"{result['failed']} failed, {result['duplicates']} paid twice"
    limits = result.get("limits") or []
    limit_line = f"`{sparkline([[v] for v in limits], CONCURRENCY)}`" if limits else "-"
    return (
        f"| {goodput:.1f}/s ({goodput / scenario.ideal_rate:.2f}) "
        f"| {result['refused'] / max(1, result['requests']):.1%} / {settled_429:.1%} "
        f"| {wall} | {checks} | `{sparkline(result['series'], top)}` | {limit_line} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N cut by 3 to 4")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--client", action="append", choices=sorted({c for c, _ in CLIENTS}))
    parser.add_argument("--backend", action="append", choices=["asyncio", "trio"])
    parser.add_argument("--limit", type=float, default=300, help="seconds allowed per run")
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    clients = [
        c
        for c in CLIENTS
        if (not args.client or c[0] in args.client) and (not args.backend or c[1] in args.backend)
    ]
    clients = [c for c in clients if c[1] != "trio" or importlib.util.find_spec("trio")]
    rows: list[str] = []
    for scenario in scenarios:
        n = scenario.quick_n if args.quick else scenario.n
        print(f"{scenario.name}: N={n}, {' '.join(scenario.server_args)}", flush=True)
        results = {}
        for client in clients:
            results[client] = run_one(client, scenario, n, args.limit)
            shown = {k: v for k, v in results[client].items() if k not in {"series", "limits"}}
            print(f"  {client[0]} ({client[1]}): {json.dumps(shown)}", flush=True)
        reference = results.get(("aiohttp", "asyncio"), {}).get("wall_s")
        for client, result in results.items():
            label = f"{scenario.name}, N={n} | {client[0]} ({client[1]}) "
            rows.append(label + figures(scenario, result, reference))
    print()
    print(
        "| scenario | client | goodput (of the limit) | 429s (all / settled) | wall (x aiohttp) |",
        end="",
    )
    print(" checks | generations running over time | adaptive limit over time |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        main()
