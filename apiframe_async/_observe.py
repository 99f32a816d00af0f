"""What the client tells about its work: log records and, when set up, OpenTelemetry spans.

Logging goes to the `apiframe_async` logger: one DEBUG record per HTTP request, INFO for
each retry and each change of a bulk job's adaptive limit, WARNING when a paid request
may have been charged without an answer. `APIFRAME_LOG=debug` (or `info`) adds a stderr
handler without any code, as `OPENAI_LOG` does for openai-python.

Tracing needs the `otel` extra (`opentelemetry-api`) and a tracer provider set by the
application: then each HTTP request is a CLIENT span with the stable HTTP semantic
conventions, each `generate()` a parent span over its submission and polls, and each retry
an event on the span around it. Without the API, or without a provider, it costs one
check per request. Nothing here ever sees the API key: it travels in a header neither
logs nor spans record, and error text is redacted before it gets here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, cast

import httpx

from ._errors import APIStatusError
from ._terminal import escape_controls

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

logger = logging.getLogger("apiframe_async")

LOG_ENV: Final = "APIFRAME_LOG"
_LOG_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO}
_SERVICE_UNAVAILABLE = 503
_SERVER_ERRORS = 500


def configure_from_env() -> None:
    """Add a stderr handler to our logger if `APIFRAME_LOG` asks for one.

    An unknown value is ignored with a warning (never an error at import time).
    """
    value = os.environ.get(LOG_ENV, "").strip().lower()
    if not value:
        return
    level = _LOG_LEVELS.get(value)
    if level is None:
        logger.warning("%s=%r is not one of %s; ignored", LOG_ENV, value, ", ".join(_LOG_LEVELS))
        return
    if not any(getattr(h, "_apiframe_env", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_TerminalFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._apiframe_env = True  # type: ignore[attr-defined]  # noqa: SLF001 -- our mark
        logger.addHandler(handler)
    logger.setLevel(level)


class _TerminalFormatter(logging.Formatter):
    """Shows control characters escaped: server text must not drive the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The usual line, with control characters written out."""
        return escape_controls(super().format(record))


# -- OpenTelemetry, looked up lazily once ------------------------------------------------

_trace_module: ModuleType | bool | None = False  # False: not looked for yet
_UNKNOWN: Final = object()
_PROVIDER_FROM_ENV: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
# The tracer of the provider last seen (an application may replace its provider).
_tracer_of: dict[str, tuple[object, Tracer]] = {}


def _trace_api() -> ModuleType | None:
    global _trace_module  # noqa: PLW0603 -- a once-only lookup, cached for the process
    if _trace_module is False:
        try:
            from opentelemetry import trace  # noqa: PLC0415 -- optional, looked up once
        except ImportError:
            _trace_module = None
        else:
            _trace_module = trace
    return _trace_module  # type: ignore[return-value]  # narrowed above


def _provider(trace: ModuleType) -> TracerProvider | None:
    # Asked once or twice per request: the API's `get_tracer_provider()` looks the
    # OTEL_PYTHON_TRACER_PROVIDER variable up in os.environ each time no provider is set,
    # which cost a request 4% of its CPU. The provider it returns is the module's global,
    # set once by `set_tracer_provider()`; read that, and ask the API only when the global
    # is not there or the variable is set (the API then loads the provider it names).
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _PROVIDER_FROM_ENV:
        return None
    if provider is None or provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    return cast("TracerProvider", provider)


def tracer() -> Tracer | None:
    """Our tracer, or None when OpenTelemetry is missing or no tracer provider is set."""
    trace = _trace_api()
    if trace is None:
        return None
    provider = _provider(trace)
    if provider is None:
        return None
    cached = _tracer_of.get("provider")
    if cached is not None and cached[0] is provider:
        return cached[1]
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from importlib.metadata import version  # noqa: PLC0415 -- once per provider

    found = provider.get_tracer("apiframe_async", version("apiframe-async"))
    _tracer_of["provider"] = (provider, found)
    return found


def operation(name: str, **attributes: str) -> AbstractContextManager[Span | None]:
    """A parent span (when tracing) around a whole operation, such as one `generate()`."""
    found = tracer()
    if found is None:
        return _NO_SPAN
    return found.start_as_current_span(name, attributes=attributes)


# Shared: a nullcontext holds no state of its own.
_NO_SPAN: Final[AbstractContextManager[None]] = nullcontext()


def set_task_id(span: Span | None, task_id: str) -> None:
    """Name the task an operation span is about, once it is known."""
    if span is not None and task_id:
        span.set_attribute("apiframe.task_id", task_id)


def current_span() -> Span | None:
    """The span around the caller (a `generate()`'s, say), when tracing; else None."""
    trace = _trace_api()
    if trace is None or tracer() is None:
        return None
    span: Span = trace.get_current_span()
    return span if span.is_recording() else None


def status_event(span: Span | None, status: str) -> None:
    """A task's new status, as an event on the span of the call waiting for it.

    Polls of many waits go out as one `/fetch-many`, a child of one of them: this event
    is how every waiting generation's span shows what each poll (or webhook) brought it.
    """
    if span is not None:
        span.add_event("apiframe.task_status", {"apiframe.task_status": status})


def retry_event(attempt: int, wait: float, error: BaseException | None) -> None:
    """A retry, as an event on the current span (the operation's, when there is one)."""
    trace = _trace_api()
    if trace is None or tracer() is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "retry",
            {"attempt": attempt, "wait_s": wait, "error.type": _error_type(error)},
        )


# -- one HTTP request ---------------------------------------------------------------------


class Exchange:
    """Observes one HTTP request: a DEBUG record and, when tracing, a CLIENT span.

    Used as `with Exchange(...) as seen:` around the transport call; `seen.response` is
    set once a response arrived. When nobody listens (DEBUG off, no tracer), entering and
    leaving cost two checks.
    """

    __slots__ = (
        "_attempt",
        "_method",
        "_path",
        "_span",
        "_started",
        "_task_id",
        "_token",
        "_url",
        "response",
    )

    def __init__(
        self, method: str, path: str, url: httpx.URL, *, attempt: int, task_id: str | None
    ) -> None:
        """Describe the request; nothing is measured before `with` starts."""
        self._method = method
        self._path = path
        self._url = url
        self._attempt = attempt
        self._task_id = task_id
        self._span: Span | None = None
        self._token: object = None
        self._started = 0.0
        self.response: httpx.Response | None = None

    def __enter__(self) -> Self:
        """Start the clock and the span."""
        self._started = time.perf_counter()
        found = tracer()
        if found is not None:
            self._start_span(found)
        return self

    def _start_span(self, found: Tracer) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415 -- present: we have a tracer

        url = self._url
        attributes: dict[str, Any] = {
            "http.request.method": self._method,
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.full": _without_secrets(url),
        }
        if self._attempt > 1:
            attributes["http.request.resend_count"] = self._attempt - 1
        if self._task_id:
            attributes["apiframe.task_id"] = self._task_id
        self._span = span = found.start_span(
            f"{self._method} {self._path}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        self._token = context.attach(trace.set_span_in_context(span))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Log the request and end its span, whatever happened."""
        span, debug = self._span, logger.isEnabledFor(logging.DEBUG)
        if span is None and not debug:
            return
        status = self.response.status_code if self.response is not None else None
        task_id = self._task_id or self._reply_task_id()
        if span is not None:
            self._end_span(span, status, task_id, exc)
        if debug:
            self._log(status, task_id, exc)

    def _reply_task_id(self) -> str | None:
        # Only read when someone listens: a paid request's reply names its new task.
        response = self.response
        if response is None or not response.is_success or not response.content:
            return None
        try:
            data = json.loads(response.content)
        except ValueError:
            return None
        task_id = data.get("task_id") if isinstance(data, dict) else None
        return task_id if isinstance(task_id, str) and task_id else None

    def _end_span(
        self, span: Span, status: int | None, task_id: str | None, error: BaseException | None
    ) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415 -- present: we have a span

        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if task_id:
            span.set_attribute("apiframe.task_id", task_id)
        failed = error is not None or (status is not None and status >= 400)  # noqa: PLR2004
        if failed:
            error_type = str(status) if error is None else _error_type(error)
            span.set_attribute("error.type", error_type)
            span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))
        span.end()
        context.detach(self._token)  # type: ignore[arg-type]  # the token attach() gave

    def _log(self, status: int | None, task_id: str | None, error: BaseException | None) -> None:
        elapsed = (time.perf_counter() - self._started) * 1000
        outcome = str(status) if status is not None else _error_type(error)
        task = f", task {task_id}" if task_id else ""
        logger.debug(
            "%s %s -> %s (attempt %d, %.1f ms%s)",
            self._method,
            self._path,
            outcome,
            self._attempt,
            elapsed,
            task,
            extra={
                "http_method": self._method,
                "http_path": self._path,
                "http_status": status,
                "attempt": self._attempt,
                "elapsed_ms": round(elapsed, 3),
                "task_id": task_id,
            },
        )


def _without_secrets(url: httpx.URL) -> str:
    # Our URLs carry no query; a base URL with credentials in it must not show them.
    if not (url.userinfo or url.query or url.fragment):
        return str(url)
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _error_type(error: BaseException | None) -> str:
    if error is None:
        return "_OTHER"
    if isinstance(error, APIStatusError):
        return str(error.status_code)
    return type(error).__name__


def warn_uncertain(method: str, path: str, error: BaseException) -> None:
    """The WARNING for a paid request whose outcome nobody can tell."""
    logger.warning(
        "%s %s may have been carried out and charged, but no usable answer came: %s",
        method,
        path,
        error,
        extra={"http_method": method, "http_path": path, "error_type": _error_type(error)},
    )
