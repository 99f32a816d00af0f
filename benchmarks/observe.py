"""What observing a request costs: the log record and span of `Sender.send_once`.

Times entering and leaving `apiframe_async._observe.Exchange` around nothing, the way
every request does, in the states an application may be in: OpenTelemetry not installed,
installed with no tracer provider (the default), a provider that records spans (SDK, no
exporter), and DEBUG logging on. Pure CPU, no I/O: run it alone on a quiet machine.

Usage: `python benchmarks/observe.py [--n 200000]`
"""

from __future__ import annotations

import argparse
import logging
import timeit
from collections.abc import Callable

import httpx

from apiframe_async import _observe

try:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
except ImportError:  # the bench group need not have the SDK
    HAVE_SDK = False
else:
    HAVE_SDK = True

URL = httpx.URL("https://api.apiframe.pro/ai-photo-generate")


def one_request() -> None:
    with _observe.Exchange("POST", "/ai-photo-generate", URL, attempt=1, task_id="t") as seen:
        seen.response = None


def per_call(function: Callable[[], None], n: int) -> float:
    """Microseconds per call, best of five runs."""
    return min(timeit.repeat(function, number=n, repeat=5)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    n = parser.parse_args().n
    baseline = per_call(lambda: None, n)
    rows = [("OpenTelemetry installed, no tracer provider", per_call(one_request, n))]
    saved = _observe._trace_module  # noqa: SLF001 -- to play "not installed"
    _observe._trace_module = None  # noqa: SLF001
    rows.append(("OpenTelemetry not installed", per_call(one_request, n)))
    _observe._trace_module = saved  # noqa: SLF001
    logger = logging.getLogger("apiframe_async")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    rows.append(("DEBUG logging on (to a NullHandler)", per_call(one_request, n // 10)))
    logger.setLevel(logging.WARNING)
    if not HAVE_SDK:
        print("opentelemetry-sdk not installed: no row for a recording provider")
    else:
        trace.set_tracer_provider(TracerProvider())
        rows.append(("SDK tracer provider, no exporter", per_call(one_request, n // 10)))
    for label, micros in rows:
        print(f"{label:48} {micros - baseline:7.2f} us per request")


if __name__ == "__main__":
    main()
