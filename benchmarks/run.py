"""The loopback benchmark: our client beside raw httpx and aiohttp, in one run on one machine.

For each scenario and client it starts a fresh stand-in server (benchmarks/server.py) and
runs the client alone in its own process (benchmarks/clients.py), so CPU time and peak RSS
are that client's. Then it prints one table, with ratios against the same run's references:
only ratios measured in one run mean anything on a noisy machine.

Usage: `python benchmarks/run.py [--quick] [--repeat R] [--scenario NAME]... [--client NAME]...`
(or `nox -s bench -- --quick`). With `--repeat R` every client runs R times, the clients
taking turns, and each cell is the median; a CPU ratio is the median of the ratios of
runs taken side by side (round k of a client against round k of aiohttp), with their range.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from harness import HERE, run_process, server


@dataclass(frozen=True)
class Scenario:
    """One load shape; `quick_n` replaces `n` under --quick."""

    name: str
    latency_ms: float
    n: int
    concurrency: int
    quick_n: int


@dataclass(frozen=True)
class Client:
    """One client on one backend."""

    name: str
    backend: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.backend})"


SCENARIOS = (
    Scenario("fan-out", latency_ms=100, n=5_000, concurrency=256, quick_n=1_000),
    Scenario("overhead", latency_ms=0, n=20_000, concurrency=64, quick_n=4_000),
    Scenario("overhead-256", latency_ms=0, n=20_000, concurrency=256, quick_n=4_000),
    Scenario("memory", latency_ms=0, n=200_000, concurrency=64, quick_n=20_000),
)
CLIENTS = (
    Client("httpx", "asyncio"),
    Client("aiohttp", "asyncio"),
    Client("httpx-aiohttp", "asyncio"),
    Client("httpx+pooled", "asyncio"),
    Client("httpx+pooled", "trio"),
    Client("apiframe-async", "asyncio"),
    Client("apiframe-async", "trio"),
    Client("apiframe-async+pooled", "asyncio"),
    Client("apiframe-async+pooled", "trio"),
)
# References for the ratios: aiohttp for CPU, a raw worker pool on the same stack for RSS.
CPU_REFERENCE = Client("aiohttp", "asyncio")
RSS_REFERENCE = "httpx+pooled"


def run_one(client: Client, scenario: Scenario, n: int, limit_s: float) -> dict[str, Any]:
    """One client process against one fresh server: its figures plus the server's counters."""
    with server("--latency-ms", str(scenario.latency_ms)) as url:
        command = [sys.executable, str(HERE / "clients.py"), client.name, client.backend, url]
        command += [str(n), str(scenario.concurrency)]
        return run_process(command, url, limit_s)


def client_available(client: Client) -> bool:
    """Whether the client and its backend can be imported here; says why not."""
    needs = {"trio"} if client.backend == "trio" else set()
    if client.name == "httpx-aiohttp":
        needs.add("httpx_aiohttp")
    if client.name.startswith("apiframe"):
        needs.add("apiframe_async")
    missing = [module for module in sorted(needs) if importlib.util.find_spec(module) is None]
    # The package exists before its client does: the client is being written beside this.
    if "apiframe_async" in needs and not missing and not _has_client():
        missing.append("apiframe_async.AsyncApiframe")
    if missing:
        print(f"note: skipping {client.label}: cannot import {', '.join(missing)}")
    return not missing


def _has_client() -> bool:
    return hasattr(importlib.import_module("apiframe_async"), "AsyncApiframe")


def cell(
    scenario: Scenario,
    n: int,
    results: list[dict[str, Any]],
    backend: str,
    table: dict[str, Any],
) -> str:
    """A table cell: the median of the scenario's figure over the rounds and its ratio, or
    why there is none."""
    errors = [str(r["error"]) for r in results if "error" in r]
    if errors:
        return errors[0]
    if scenario.name == "fan-out":
        # Each worker's requests follow one another: N requests through `concurrency` of
        # them take ceil(N / concurrency) round trips at the least (5,000 at 256: 20, not 19.5).
        ideal = math.ceil(n / scenario.concurrency) * scenario.latency_ms / 1000
        wall = statistics.median(r["wall_s"] for r in results)
        return f"{wall:.2f} s ({wall / ideal:.2f}x ideal){_spread(results, 'wall_s', 's')}"
    if scenario.name.startswith("overhead"):
        cpu = statistics.median(r["cpu_us"] for r in results)
        references = table.get(CPU_REFERENCE.label, {}).get(scenario.name, [])
        ratios = [
            r["cpu_us"] / ref["cpu_us"]
            for r, ref in zip(results, references, strict=False)
            if "error" not in ref
        ]
        if not ratios:
            return f"{cpu:.0f} us"
        ratio = f"{statistics.median(ratios):.2f}x"
        if len(ratios) > 1:
            ratio += f"; {min(ratios):.2f}-{max(ratios):.2f}x"
        return f"{cpu:.0f} us ({ratio})"
    rss = statistics.median(r["rss_mb"] for r in results)
    references = table.get(f"{RSS_REFERENCE} ({backend})", {}).get(scenario.name, [])
    ok = [r["rss_mb"] for r in references if "error" not in r]
    delta = f" ({rss - statistics.median(ok):+.1f})" if ok else ""
    return f"{rss:.1f} MB{delta}"


def _spread(results: list[dict[str, Any]], key: str, unit: str) -> str:
    if len(results) < 2:
        return ""
    values = [r[key] for r in results]
    return f"; {min(values):.2f}-{max(values):.2f} {unit}"


def checks(results: dict[str, list[dict[str, Any]]]) -> str:
    """Failed requests, duplicates seen by the server, and peak in flight, per scenario,
    over every round."""
    parts = []
    for name, rounds in results.items():
        done = [r for r in rounds if "error" not in r]
        if done:
            parts.append(
                f"{name}: {sum(r['failed'] for r in done)} failed, "
                f"{sum(r['duplicates'] for r in done)} dup, "
                f"peak {max(r['peak_in_flight'] for r in done)}"
            )
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth to a fifth of each N")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--client", action="append", choices=sorted({c.name for c in CLIENTS}))
    parser.add_argument("--limit", type=float, default=300, help="seconds allowed per run")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per scenario, the clients taking turns"
    )
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    clients = [c for c in CLIENTS if (not args.client or c.name in args.client)]
    clients = [c for c in clients if client_available(c)]

    table: dict[str, dict[str, Any]] = {c.label: {"backend": c.backend} for c in clients}
    for scenario in scenarios:
        n = scenario.quick_n if args.quick else scenario.n
        print(f"{scenario.name}: N={n}, concurrency {scenario.concurrency}, ", end="")
        print(f"latency {scenario.latency_ms:g} ms", flush=True)
        for round_ in range(args.repeat):
            for client in clients:
                result = run_one(client, scenario, n, args.limit)
                table[client.label].setdefault(scenario.name, []).append(result)
                print(f"  {round_ + 1} {client.label}: {json.dumps(result)}", flush=True)

    print()
    print("| client | " + " | ".join(s.name for s in scenarios) + " | checks |")
    print("|---" * (len(scenarios) + 2) + "|")
    for label, row in table.items():
        sizes = [s.quick_n if args.quick else s.n for s in scenarios]
        cells = [
            cell(s, n, row[s.name], row["backend"], table)
            for s, n in zip(scenarios, sizes, strict=True)
        ]
        results = {s.name: row[s.name] for s in scenarios}
        print(f"| {label} | " + " | ".join(cells) + f" | {checks(results)} |")


if __name__ == "__main__":
    main()
