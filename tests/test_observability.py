"""Logging and tracing: one DEBUG record per request, INFO retries, WARNING uncertainty, spans."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apiframe_async import APIConnectionError, AsyncApiframe, PollPolicy, RetryPolicy
from apiframe_async._fanout import AdaptiveLimit
from apiframe_async._observe import tracer
from apiframe_async.testing import FakeApiframe, Fault

pytestmark = pytest.mark.anyio

KEY = "sk-obs-7f3a9c2e1b5d"
HOOK_SECRET = "whsec-obs-41d2c9"
FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.005)
FAST_POLL = PollPolicy(initial_interval=0.001, max_interval=0.005, deadline=5.0)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeApiframe, AsyncApiframe]]:
    """A client talking to the fake over a real loopback socket."""
    fake = FakeApiframe(api_key=KEY, fetches_to_finish=2)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(KEY, base_url=base_url, retry=FAST_RETRY, poll=FAST_POLL) as client,
    ):
        yield fake, client


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "apiframe_async" and r.levelno == level]


async def test_one_debug_record_per_request_and_info_per_retry(
    served: tuple[FakeApiframe, AsyncApiframe], caplog: pytest.LogCaptureFixture
) -> None:
    """A generate with one 429: two DEBUG records with their fields, one INFO retry record."""
    fake, client = served
    caplog.set_level(logging.DEBUG, logger="apiframe_async")
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-generate", retry_after=0)
    gen = await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
    debug = _records(caplog, logging.DEBUG)
    assert [(r.http_method, r.http_path, r.http_status, r.attempt) for r in debug] == [  # type: ignore[attr-defined]
        ("POST", "/ai-photo-generate", 429, 1),
        ("POST", "/ai-photo-generate", 200, 2),
    ]
    assert debug[1].task_id == gen.task_id  # type: ignore[attr-defined]
    assert debug[0].task_id is None  # type: ignore[attr-defined]
    assert all(r.elapsed_ms >= 0 for r in debug)  # type: ignore[attr-defined]
    assert gen.task_id in debug[1].getMessage()
    (retry,) = _records(caplog, logging.INFO)
    assert "retrying" in retry.getMessage()
    assert "attempt 1 failed" in retry.getMessage()


async def test_an_uncertain_paid_request_logs_a_warning(
    served: tuple[FakeApiframe, AsyncApiframe], caplog: pytest.LogCaptureFixture
) -> None:
    """A generation whose connection dropped after the work is a WARNING, sent once."""
    fake, client = served
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate")
    with pytest.raises(APIConnectionError):
        await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
    (warning,) = _records(caplog, logging.WARNING)
    assert "/ai-photo-generate may have been carried out and charged" in warning.getMessage()
    assert fake.generate_count_by_prompt() == {"TOKMSN man": 1}


async def test_a_refused_free_request_logs_no_warning(
    served: tuple[FakeApiframe, AsyncApiframe], caplog: pytest.LogCaptureFixture
) -> None:
    """Only paid requests warn: a free one that failed costs nothing."""
    fake, client = served
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/account", times=4)
    with pytest.raises(APIConnectionError):
        await client.account()
    assert _records(caplog, logging.WARNING) == []


async def test_no_key_or_webhook_secret_in_any_log_record(
    served: tuple[FakeApiframe, AsyncApiframe], caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG on every logger, a whole flow with faults never logs the key or the secret."""
    fake, client = served
    caplog.set_level(logging.DEBUG)
    fake.inject_fault(Fault.SERVER_ERROR, path="/fetch-many")
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-train", retry_after=0)
    upload = await client.upload_images(
        [PNG] * 10,
        ethnicity="white",
        gender="male",
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret=HOOK_SECRET,
    )
    await client.wait(upload.task_id)
    training = await client.train(
        upload.task_id, webhook_secret=HOOK_SECRET, webhook_url="http://127.0.0.1:9/hook"
    )
    await client.wait(training.task_id)
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate")
    with pytest.raises(APIConnectionError):
        await client.generate(training_id=training.task_id, prompt="TOKMSN man")
    assert len(caplog.records) >= 8
    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {vars(record)!r}"
        assert KEY not in text
        assert HOOK_SECRET not in text


def _run_with_env(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "APIFRAME_LOG"}
    if value is not None:
        env["APIFRAME_LOG"] = value
    code = (
        "import logging, apiframe_async\n"
        "log = logging.getLogger('apiframe_async')\n"
        "log.debug('debug-line'); log.info('info-line')\n"
    )
    return subprocess.run(  # noqa: S603 -- this interpreter, our own code
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )


@pytest.mark.parametrize(
    ("value", "shown", "hidden"),
    [
        pytest.param("debug", ["debug-line", "info-line"], [], id="debug"),
        pytest.param("INFO", ["info-line"], ["debug-line"], id="info"),
        pytest.param(None, [], ["debug-line", "info-line"], id="unset"),
    ],
)
def test_apiframe_log_switches_logging_on(
    value: str | None, shown: list[str], hidden: list[str]
) -> None:
    """`APIFRAME_LOG=debug|info` adds a stderr handler at that level; unset, nothing shows."""
    result = _run_with_env(value)
    for line in shown:
        assert line in result.stderr
    for line in hidden:
        assert line not in result.stderr


def test_the_apiframe_log_handler_escapes_control_characters() -> None:
    """Server text logged to the terminal cannot send it escape sequences."""
    env = {**os.environ, "APIFRAME_LOG": "info"}
    code = (
        "import logging, apiframe_async\n"
        "logging.getLogger('apiframe_async').info('server said %s', '\\x1b[31mred\\x07')\n"
    )
    result = subprocess.run(  # noqa: S603 -- this interpreter, our own code
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "server said \\x1b[31mred\\x07" in result.stderr
    assert "\x1b" not in result.stderr


def test_an_unknown_apiframe_log_value_is_ignored_with_a_warning() -> None:
    """A typo does not break the import; it says what the allowed values are."""
    result = _run_with_env("verbose")
    assert "APIFRAME_LOG='verbose' is not one of debug, info; ignored" in result.stderr
    assert "info-line" not in result.stderr


def test_each_change_of_the_adaptive_limit_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Lowered on pushback, raised after a window of successes: an INFO record each."""
    caplog.set_level(logging.INFO, logger="apiframe_async")
    limit = AdaptiveLimit(8, adaptive=True)
    limit.record(ok=False, overloaded=True)
    for _ in range(limit.current):
        limit.record(ok=True, overloaded=False)
    messages = [r.getMessage() for r in _records(caplog, logging.INFO)]
    assert messages == [
        "server pushed back: concurrency lowered to 7",
        "no pushback for a window: concurrency raised to 8",
    ]


# -- OpenTelemetry ------------------------------------------------------------------------


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider with an in-memory exporter, as the application's global one."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


async def test_a_generate_is_a_parent_span_over_its_requests(
    spans: InMemorySpanExporter,
) -> None:
    """Submit (a 429, then 200) and polls are CLIENT spans under one generate span."""
    fake = FakeApiframe(api_key=KEY, generate_fetches=2)
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-generate", retry_after=0)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(KEY, base_url=base_url, retry=FAST_RETRY, poll=FAST_POLL) as client,
    ):
        gen = await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
        port = int(base_url.rsplit(":", 1)[1])
    finished = spans.get_finished_spans()
    (parent,) = _by_name(finished, "apiframe.generate")
    assert parent.attributes is not None
    assert parent.attributes["apiframe.task_id"] == gen.task_id
    assert parent.events[0].name == "retry"
    statuses = [
        e.attributes["apiframe.task_status"]
        for e in parent.events
        if e.name == "apiframe.task_status" and e.attributes is not None
    ]
    assert statuses[-1] == "finished"
    assert set(statuses[:-1]) <= {"processing"}
    children = [s for s in finished if s.parent and s.parent.span_id == parent.context.span_id]
    names = [s.name for s in children]
    assert names[:2] == ["POST /ai-photo-generate", "POST /ai-photo-generate"]
    assert set(names[2:]) == {"POST /fetch"}
    assert len(names) >= 4  # two polls before "finished"
    refused, accepted, poll = children[0], children[1], children[2]
    assert all(s.kind is trace.SpanKind.CLIENT for s in children)
    assert refused.attributes is not None
    assert dict(refused.attributes) == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": port,
        "url.full": f"{base_url}/ai-photo-generate",
        "http.response.status_code": 429,
        "error.type": "429",
    }
    assert accepted.attributes is not None
    assert accepted.attributes["http.request.resend_count"] == 1
    assert accepted.attributes["apiframe.task_id"] == gen.task_id
    assert "error.type" not in accepted.attributes
    assert poll.attributes is not None
    assert poll.attributes["apiframe.task_id"] == gen.task_id
    for span in finished:
        assert KEY not in repr(span.attributes)


async def test_a_failed_request_span_names_the_error(spans: InMemorySpanExporter) -> None:
    """A dropped connection is `error.type` = our error's name, status ERROR."""
    fake = FakeApiframe(api_key=KEY)
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate")
    async with (
        fake.serve() as base_url,
        AsyncApiframe(KEY, base_url=base_url, retry=FAST_RETRY, poll=FAST_POLL) as client,
    ):
        with pytest.raises(APIConnectionError):
            await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
    (span,) = _by_name(spans.get_finished_spans(), "POST /ai-photo-generate")
    assert span.attributes is not None
    assert span.attributes["error.type"] == "APIConnectionError"
    assert span.status.status_code is trace.StatusCode.ERROR


async def test_generate_many_makes_one_tree_per_prompt(spans: InMemorySpanExporter) -> None:
    """Three prompts: three generate spans, each the parent of its own submission."""
    fake = FakeApiframe(api_key=KEY)
    async with AsyncApiframe(KEY, http_client=fake.client(), poll=FAST_POLL) as client:
        model = fake.add_trained_model()
        requests = [{"training_id": model, "prompt": f"TOKMSN man {i}"} for i in range(3)]
        outcomes = await client.generate_all(requests)
    assert all(o.ok for o in outcomes)
    finished = spans.get_finished_spans()
    parents = _by_name(finished, "apiframe.generate")
    assert len(parents) == 3
    for parent in parents:
        (child,) = [s for s in finished if s.parent and s.parent.span_id == parent.context.span_id]
        assert child.name == "POST /ai-photo-generate"
        assert child.context.trace_id == parent.context.trace_id
    assert len({p.context.trace_id for p in parents}) == 3


async def test_no_provider_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the API installed but no provider set, the client finds no tracer."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert tracer() is None
    fake = FakeApiframe(api_key=KEY)
    async with AsyncApiframe(KEY, http_client=fake.client()) as client:
        await client.account()
    assert tracer() is None


async def test_a_cancelled_request_ends_its_spans_and_leaves_no_context(
    spans: InMemorySpanExporter,
) -> None:
    """Cancelled mid-request: both spans end, failed, and the caller's context is as it was."""
    fake = FakeApiframe(api_key=KEY)
    fake.inject_fault(None, path="/ai-photo-generate", delay=5.0)
    async with AsyncApiframe(KEY, http_client=fake.client(), retry=FAST_RETRY) as client:
        with anyio.move_on_after(0.1):
            await client.generate(training_id=fake.add_trained_model(), prompt="TOKMSN man")
    assert trace.get_current_span() is trace.INVALID_SPAN
    finished = spans.get_finished_spans()
    assert sorted(s.name for s in finished) == ["POST /ai-photo-generate", "apiframe.generate"]
    (request,) = _by_name(finished, "POST /ai-photo-generate")
    assert request.attributes is not None
    assert request.attributes["error.type"] in {"CancelledError", "Cancelled"}


async def test_a_batched_poll_tells_every_waiting_generation(spans: InMemorySpanExporter) -> None:
    """One `/fetch-many` for three waits: each generate span gets its task's new status."""
    fake = FakeApiframe(api_key=KEY, generate_fetches=1)
    slow = PollPolicy(initial_interval=0.05, max_interval=0.05, jitter=0, deadline=5.0)
    async with AsyncApiframe(KEY, http_client=fake.client(), poll=slow) as client:
        model = fake.add_trained_model()
        requests = [{"training_id": model, "prompt": f"TOKMSN man {i}"} for i in range(3)]
        outcomes = await client.generate_all(requests)
    assert all(o.ok for o in outcomes)
    finished = spans.get_finished_spans()
    assert _by_name(finished, "POST /fetch-many")  # usually one, for all three
    parents = _by_name(finished, "apiframe.generate")
    for parent in parents:
        events = [e.attributes for e in parent.events if e.name == "apiframe.task_status"]
        assert events == [{"apiframe.task_status": "finished"}]
