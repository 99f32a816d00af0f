"""A loopback stand-in for APIFRAME's `POST /ai-photo-generate`, fast enough to never be the cap.

A raw asyncio protocol (uvloop and the httptools parser when importable, else a minimal
parser) that answers every generate request with a finished task after `--latency-ms`.
`GET /stats` returns the counters the benchmark checks: requests seen, peak requests in
flight, and duplicates (the same JSON body seen twice: the runner makes each body unique,
so a duplicate means a client resent a request). Optional fault rates answer 429/500/503.

Usage: `python benchmarks/server.py --latency-ms 100`; prints the port it bound on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
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
            },
        ).encode()


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

    def __init__(self, latency: float, faults: Faults) -> None:
        self.stats = Stats()
        self.faults = faults
        self.latency = latency

    def answer(self, method: bytes, path: bytes, body: bytes) -> tuple[bytes, bool]:
        """The response bytes, and whether they count as a generate request in flight."""
        if method == b"GET" and path == b"/stats":
            return http_response(200, self.stats.as_json()), False
        if method != b"POST" or path != b"/ai-photo-generate":
            return http_response(404, b'{"error": "not found"}'), False
        self.stats.started(body)
        status = self.faults.pick()
        if status == 200:
            return http_response(200, task_body()), True
        retry = b"retry-after: 1\r\n" if status == 429 else b""
        return http_response(status, b'{"error": "injected fault"}', retry), True


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
    server = Server(args.latency_ms / 1000, Faults(args.p429, args.p500, args.p503))
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
