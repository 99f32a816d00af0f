"""A loopback stand-in for APIFRAME's `POST /ai-photo-generate`, fast enough to never be the cap.

A raw asyncio protocol (uvloop and the httptools parser when importable, else a minimal
parser) that answers every generate request with a finished task after `--latency-ms`.
`GET /stats` returns the counters the benchmark checks: requests seen, peak requests in
flight, and duplicates (the same JSON body seen twice: the runner makes each body unique,
so a duplicate means a client resent a request). Optional fault rates answer 429/500/503.

Limit modes stand in for an account's limits, answering 429 at once (no latency) past
them: `--token-bucket R --burst B` (R generations per second) or `--concurrency-limit K`
(K running at once) or `--random-429 P` (a share P refused whatever the load), with
`--retry-after ceil|exact|SECONDS`. Under a limit, duplicates
count only generations carried out (a refused request may rightly come again), and
`/stats` adds the 429s sent and a time series sampled every `--sample-s` seconds:
generations running, requests and 429s in each interval.

Usage: `python benchmarks/server.py --latency-ms 100`; prints the port it bound on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Coroutine


class Stats:
    """Counters shared by every connection of the server."""

    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.duplicates = 0
        self.bodies: set[int] = set()

    def started(self, body: bytes) -> None:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        # A hash, not the body: 200,000 bodies must not cost the server 30 MB.
        key = hash(body)
        if key in self.bodies:
            self.duplicates += 1
        self.bodies.add(key)

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "peak_in_flight": self.peak_in_flight,
                "duplicates": self.duplicates,
                **self.extra(),
            },
        ).encode()

    def extra(self) -> dict[str, Any]:
        return {}


class LimitStats(Stats):
    """Counters under a limit: requests, 429s, and what ran, as totals and over time."""

    def __init__(self, sample_s: float) -> None:
        super().__init__()
        self.refused = 0
        self.generated = 0
        self.sample_s = sample_s
        self.start = 0.0
        self.series: list[list[float]] = []  # [running, requests, 429s] per interval

    def sample(self) -> None:
        if not self.start:
            self.start = time.monotonic()
        slot = int((time.monotonic() - self.start) / self.sample_s)
        while len(self.series) <= slot:
            self.series.append([self.in_flight, 0, 0])

    def arrived(self, body: bytes, *, refused: bool) -> None:
        self.sample()
        self.series[-1][1] += 1
        if refused:
            self.requests += 1
            self.refused += 1
            self.series[-1][2] += 1
            return
        self.started(body)
        self.generated += 1
        self.series[-1][0] = max(self.series[-1][0], self.in_flight)

    def extra(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "generated": self.generated,
            "sample_s": self.sample_s,
            "series": self.series,
        }


class Limit:
    """A token bucket (rate > 0) or a concurrency limit (limit > 0): None to go on, or a wait."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rate: float = args.token_bucket
        self.burst: int = args.burst
        self.limit: int = args.concurrency_limit
        self.random: float = args.random_429
        self.retry_after: str = args.retry_after
        self.tokens, self.stamp = float(self.burst), time.monotonic()

    def refuse(self, running: int) -> float | None:
        if self.random:
            return 1.0 if random.random() < self.random else None
        if self.limit:
            return None if running < self.limit else 1.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate

    def header(self, wait: float) -> bytes:
        if self.retry_after == "ceil" or (self.retry_after == "exact" and not self.rate):
            return b"retry-after: %d\r\n" % max(1, math.ceil(wait))
        if self.retry_after == "exact":
            return b"retry-after: %.3f\r\n" % max(wait, 0.001)
        return b"retry-after: %s\r\n" % self.retry_after.encode()


class Faults:
    """Per-request probabilities of answering with an error status instead of a task."""

    def __init__(self, p429: float, p500: float, p503: float) -> None:
        self.table = ((p429, 429), (p500, 500), (p503, 503))

    def pick(self) -> int:
        draw = random.random()
        for probability, status in self.table:
            if draw < probability:
                return status
            draw -= probability
        return 200


REASONS = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests", 500: b"Error", 503: b"Busy"}


def http_response(status: int, body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
    return head % (status, REASONS[status], len(body), extra) + body


def task_body() -> bytes:
    return json.dumps(
        {
            "task_id": str(uuid.uuid4()),
            "status": "finished",
            "task_type": "ai-photo-generate",
            "image_urls": ["https://img.example/x.png"],
        },
    ).encode()


class Server:
    """What every connection needs: the counters, the faults and the latency."""

    def __init__(self, latency: float, faults: Faults, limit: Limit | None = None) -> None:
        self.stats: Stats = Stats()
        self.faults = faults
        self.latency = latency
        self.limit = limit

    def answer(self, method: bytes, path: bytes, body: bytes) -> tuple[bytes, bool]:
        """The response bytes, and whether they count as a generate request in flight."""
        if method == b"GET" and path == b"/stats":
            return http_response(200, self.stats.as_json()), False
        if method != b"POST" or path != b"/ai-photo-generate":
            return http_response(404, b'{"error": "not found"}'), False
        if self.limit is not None:
            return self.limited(self.limit, body)
        self.stats.started(body)
        status = self.faults.pick()
        if status == 200:
            return http_response(200, task_body()), True
        retry = b"retry-after: 1\r\n" if status == 429 else b""
        return http_response(status, b'{"error": "injected fault"}', retry), True

    def limited(self, limit: Limit, body: bytes) -> tuple[bytes, bool]:
        """Past the limit, 429 at once, before any work; else a generation after the latency."""
        stats = cast("LimitStats", self.stats)
        wait = limit.refuse(stats.in_flight)
        stats.arrived(body, refused=wait is not None)
        if wait is not None:
            return http_response(429, b'{"error": "limit"}', limit.header(wait)), False
        return http_response(200, task_body()), True


class MinimalParser:
    """Just enough HTTP/1.1 for the benchmark clients: Content-Length bodies, no chunking."""

    def __init__(self, protocol: HttpProtocol) -> None:
        self.protocol = protocol
        self.buffer = b""

    def feed_data(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = head[0].split(b" ", 2)
            self.protocol.on_request(method, path, body)


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer each after the configured latency."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.WriteTransport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.parser = new_parser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.WriteTransport", transport)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio's signature
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks.
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        self.on_request(method, url, body)

    def on_request(self, method: bytes, path: bytes, body: bytes) -> None:
        response, counted = self.server.answer(method, path.partition(b"?")[0], body)
        if self.server.latency and counted:
            asyncio.get_running_loop().call_later(self.server.latency, self.send, response, counted)
        else:
            self.send(response, counted)

    def send(self, response: bytes, counted: bool) -> None:  # noqa: FBT001 - a loop callback
        if counted:
            self.server.stats.in_flight -= 1
        if self.transport is not None:
            self.transport.write(response)


async def serve(args: argparse.Namespace) -> None:
    limited = args.token_bucket or args.concurrency_limit or args.random_429
    server = Server(
        args.latency_ms / 1000,
        Faults(args.p429, args.p500, args.p503),
        Limit(args) if limited else None,
    )
    if limited:
        server.stats = LimitStats(args.sample_s)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: HttpProtocol(server), "127.0.0.1", args.port)
    print(listener.sockets[0].getsockname()[1], flush=True)
    await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--p429", type=float, default=0.0)
    parser.add_argument("--p500", type=float, default=0.0)
    parser.add_argument("--p503", type=float, default=0.0)
    parser.add_argument("--token-bucket", type=float, default=0.0, help="generations/s")
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--concurrency-limit", type=int, default=0)
    parser.add_argument("--random-429", type=float, default=0.0, help="a share refused at once")
    parser.add_argument("--retry-after", default="ceil", help="ceil, exact or seconds")
    parser.add_argument("--sample-s", type=float, default=0.5)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args))


def new_parser(protocol: HttpProtocol) -> Any:
    """httptools' C parser when importable, else ours."""
    try:
        import httptools  # noqa: PLC0415 - optional
    except ImportError:
        return MinimalParser(protocol)
    return httptools.HttpRequestParser(protocol)


def run(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop when importable: the server must never be the bottleneck."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":
    main()
