"""CPU per request by route: direct, through a proxy's CONNECT tunnel, forwarded by a proxy.

Every route runs in a fresh client process against loopback servers in other processes
(`server.py` for http, a TLS server here for https, proxy.py as the forward proxy), so
the figure is the client's own CPU (`time.process_time`) divided by the requests sent.
`httpx-tunnel` is what delegating https through a proxy to httpx's own transport
would cost: the route the client does not take, measured for comparison.

Usage: `python benchmarks/network.py [--n 2000] [--concurrency 64]` (needs the `bench`
dependency group: proxy.py and trustme).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent
ROUTES = ("direct-http", "forwarded-http", "direct-https", "tunnel-https", "httpx-tunnel-https")
_FINISHED = json.dumps(
    {"task_id": "t", "status": "finished", "image_urls": ["https://cdn.example/1.png"]}
).encode()
_REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_FINISHED),
    _FINISHED,
)


class _Answer(asyncio.Protocol):
    """Answers each request (head plus Content-Length body) with a finished task."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.partition(b":")[2])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if self.transport is not None:
                self.transport.write(_REPLY)


async def _serve_tls(cert: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert)
    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def _client(argv: list[str]) -> dict[str, Any]:
    import anyio  # noqa: PLC0415 - imported in the client process only

    from apiframe_async import AsyncApiframe  # noqa: PLC0415

    route, url, proxy, cafile = argv[:4]
    n, c = int(argv[4]), int(argv[5])
    options: dict[str, Any] = {"verify": cafile} if url.startswith("https") else {}
    if route.startswith(("forwarded", "tunnel")):
        options["proxy"] = proxy
    client = AsyncApiframe("bench-key", base_url=url, max_concurrency=c, max_retries=0, **options)
    if route.startswith("httpx-tunnel"):
        import httpx  # noqa: PLC0415

        from apiframe_async._network import ssl_context  # noqa: PLC0415

        unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        routing = client._http_client._transport  # noqa: SLF001 - a benchmark's shortcut
        routing._transport = httpx.AsyncHTTPTransport(  # type: ignore[attr-defined]  # noqa: SLF001
            proxy=proxy, verify=ssl_context(cafile, trust_env=False), limits=unbounded
        )

    async def worker(count: int) -> None:
        for _ in range(count):
            await client.generate(training_id="t", prompt="a portrait of TOKMSN man")

    async with client:
        async with anyio.create_task_group() as tg:  # warm up: open every connection
            for _ in range(c):
                tg.start_soon(worker, 1)
        cpu, wall = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(c):
                tg.start_soon(worker, n // c + (index < n % c))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"route": route, "cpu_us_per_request": cpu / n * 1e6, "wall_s": wall}


@contextlib.contextmanager
def _process(command: list[str], **options: Any) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(command, text=True, start_new_session=True, **options)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def _port(process: subprocess.Popen[str]) -> int:
    return int(cast("IO[str]", process.stdout).readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per route")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--route", action="append", choices=ROUTES)
    parser.add_argument("--serve-tls", metavar="PEM", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_tls:
        asyncio.run(_serve_tls(args.serve_tls))
        return
    if args.client:
        print(json.dumps(asyncio.run(_client(args.client))))
        return
    import trustme  # noqa: PLC0415 - the bench group

    folder = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    cafile, pem = folder / "ca.pem", folder / "server.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    port_file = folder / "proxy.port"
    proxy_command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"]
    proxy_command += ["--port-file", str(port_file), "--num-workers", "1"]
    proxy_command += ["--num-acceptors", "1", "--log-level", "ERROR"]
    http_command = [sys.executable, str(HERE / "server.py"), "--latency-ms", "0"]
    tls_command = [sys.executable, __file__, "--serve-tls", str(pem)]
    with (
        _process(http_command, stdout=subprocess.PIPE) as http_server,
        _process(tls_command, stdout=subprocess.PIPE) as tls_server,
        _process(proxy_command, stderr=subprocess.DEVNULL),
    ):
        urls = {
            "http": f"http://127.0.0.1:{_port(http_server)}",
            "https": f"https://127.0.0.1:{_port(tls_server)}",
        }
        while not (port_file.exists() and port_file.read_text().strip()):
            time.sleep(0.05)
        proxy = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        print(f"N={args.n}, {args.concurrency} in flight, client CPU per request:")
        for route in args.route or ROUTES:
            url = urls[route.rsplit("-", 1)[1]]
            command = [sys.executable, __file__, "--client", route, url, proxy, str(cafile)]
            command += [str(args.n), str(args.concurrency)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"  {route:20} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            result = json.loads(done.stdout)
            print(
                f"  {route:20} {result['cpu_us_per_request']:7.0f} us"
                f"   (wall {result['wall_s']:.2f} s)"
            )


if __name__ == "__main__":
    main()
