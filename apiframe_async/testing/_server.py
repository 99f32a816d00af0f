"""Serving an ASGI app with uvicorn on a real socket, in a thread or blocking.

uvicorn is an optional extra (`apiframe-async[server]`), imported only here and only when a
server is started. Running it in a thread with its own asyncio loop lets tests on any
backend (asyncio or trio, or no event loop at all) talk to it over loopback.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import anyio.to_thread

from apiframe_async.testing._asgi import ASGIApp, ConnectionDroppedError

if TYPE_CHECKING:
    import uvicorn

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 15.0
_MISSING_UVICORN = (
    "serving the fake APIFRAME over HTTP needs uvicorn: pip install 'apiframe-async[server]'"
)


class _HideInjectedDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for each connection the fake drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for records about an injected drop."""
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDroppedError))


_HIDE_DROPS = _HideInjectedDrops()


def _uvicorn_config(app: ASGIApp, *, log_level: str, quiet: bool) -> uvicorn.Config:
    """Uvicorn's config; `quiet` leaves logging alone and shuts down fast (for tests)."""
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError as exc:
        raise ImportError(_MISSING_UVICORN) from exc
    config = uvicorn.Config(
        app,
        lifespan="on",
        http="h11",
        loop="asyncio",
        log_level=log_level,
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        access_log=not quiet,
        timeout_graceful_shutdown=2 if quiet else None,
    )
    logger = logging.getLogger("uvicorn.error")
    if _HIDE_DROPS not in logger.filters:
        logger.addFilter(_HIDE_DROPS)
    return config


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (port 0: a free port), ready to listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_blocking(app: ASGIApp, host: str, port: int, log_level: str) -> None:
    """Serve `app` on `host:port` until interrupted (Ctrl+C)."""
    config = _uvicorn_config(app, log_level=log_level, quiet=False)
    import uvicorn  # noqa: PLC0415 - _uvicorn_config raised a clear error if missing

    with bind(host, port) as sock:
        uvicorn.Server(config).run(sockets=[sock])


class FakeServer:
    """A uvicorn server running an ASGI app in a background thread.

    Use it as a context manager, sync or async; the value is the base URL, such as
    `http://127.0.0.1:51234`. Leaving the block stops the server and waits for it.
    `FakeApiframe.serve()` makes one.

    Example:
        ```python
        with fake.serve() as base_url:  # no event loop needed
            httpx.get(f"{base_url}/account", headers={"Authorization": fake.api_key})

        async with fake.serve(port=8123) as base_url:  # asyncio or trio
            ...
        ```
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        """Prepare to serve `app` on `host:port` (port 0: a free port)."""
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.base_url = ""

    def start(self) -> str:
        """Start serving; returns the base URL once the server accepts connections."""
        config = _uvicorn_config(self._app, log_level="warning", quiet=True)
        import uvicorn  # noqa: PLC0415 - _uvicorn_config raised a clear error if missing

        sock = bind(self._host, self._port)
        host, port = sock.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{url_host}:{port}"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="apiframe-fake", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake APIFRAME server did not start") from self._failure
            time.sleep(0.005)
        return self.base_url

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the fake APIFRAME server did not stop in time")
        self._server = self._thread = None

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None  # noqa: S101 - set before the thread starts
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start(); SystemExit included
            self._failure = exc
        finally:
            sock.close()

    def __enter__(self) -> str:
        """Start; the value is the base URL."""
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop."""
        self.stop()

    async def __aenter__(self) -> str:
        """Start without blocking the event loop; the value is the base URL."""
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop without blocking the event loop."""
        await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        """Where it serves."""
        return f"<FakeServer {self.base_url or 'not started'}>"
