"""Fuzzed input: whatever a caller passes or a server sends, only our typed errors come out."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiframe_async import (
    ApiframeError,
    APIStatusError,
    AsyncApiframe,
    GenerateRequest,
    Generation,
    PollPolicy,
    RequestValidationError,
    ResponseValidationError,
    Task,
    TrainRequest,
    UploadRequest,
    parse_webhook,
)
from apiframe_async._bulk import read_prompts
from apiframe_async._status import status_error
from apiframe_async._wire import Wire

# A reply that is neither finished nor failed is polled: briefly, here.
QUICK_POLL = PollPolicy(initial_interval=0.001, max_interval=0.001, deadline=0.05)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
anything = (
    json_values
    | st.binary(max_size=20)
    | st.integers(min_value=10_000, max_value=20_000).map(lambda n: "x" * n)
    | st.sampled_from(["1:1", "custom", "16:9", "0", "-1", "١٢", "\x00", "TOKMSN"])
    | st.integers(min_value=-(10**30), max_value=10**30)
)

TASK_KEYS = [
    "task_id",
    "status",
    "task_type",
    "message",
    "percentage",
    "expires_at",
    "trigger_word",
    "image_urls",
    "error",
]


@FUZZ
@given(
    training_id=anything,
    prompt=anything,
    aspect_ratio=anything,
    width=anything,
    height=anything,
    number_of_images=anything,
    seed=anything,
)
def test_generate_request_validates_or_refuses(**fields: Any) -> None:
    """Any field values give a valid request or a RequestValidationError, nothing else."""
    try:
        request = GenerateRequest(**fields)
    except RequestValidationError as exc:
        assert isinstance(exc, ValueError)
        assert exc.field in fields
    else:
        assert Wire().body(request)["prompt"] == request.prompt


@FUZZ
@given(
    images=st.lists(st.text(max_size=5), max_size=35),
    ethnicity=anything,
    gender=anything,
    age=anything,
    webhook_url=anything,
    webhook_secret=anything,
)
def test_upload_request_validates_or_refuses(**fields: Any) -> None:
    """Upload fields give a valid request or a RequestValidationError naming a field."""
    fields["images"] = tuple(fields["images"])
    try:
        UploadRequest(**fields)
    except RequestValidationError as exc:
        assert exc.field in fields


@FUZZ
@given(training_images_id=anything, trigger_word=anything, webhook_url=anything)
def test_train_request_validates_or_refuses(**fields: Any) -> None:
    """Train fields give a valid request or a RequestValidationError naming a field."""
    try:
        TrainRequest(**fields)
    except RequestValidationError as exc:
        assert exc.field in fields


task_like = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(TASK_KEYS, anything) | {"surprise": json_values},
)


@FUZZ
@given(data=json_values | task_like)
def test_reply_parser_gives_a_task_or_our_error(data: object) -> None:
    """Any decoded reply parses into a Task or raises ResponseValidationError with paths."""
    try:
        task = Wire().task(data)
    except ResponseValidationError as exc:
        assert exc.problems
        assert all(p.startswith("$") for p in exc.problems)
    else:
        assert isinstance(task, Task)
        assert isinstance(task.image_urls, tuple)


@FUZZ
@given(
    body=st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | json_values.map(lambda v: json.dumps(v).encode())
)
def test_webhook_parser_gives_a_task_or_our_error(body: bytes) -> None:
    """Any webhook body parses into a Task or raises ResponseValidationError."""
    with contextlib.suppress(ResponseValidationError):
        assert isinstance(parse_webhook(body), Task)


@FUZZ
@given(
    status=st.integers(min_value=400, max_value=599),
    body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
    retry_after=st.none() | st.text(max_size=40),
)
def test_error_replies_always_map_to_a_status_error(
    status: int, body: bytes, retry_after: str | None
) -> None:
    """Any error status with any body and Retry-After gives a typed APIStatusError."""
    headers = {} if retry_after is None else {"retry-after": retry_after}
    try:
        response = httpx.Response(status, content=body, headers=headers)
    except (ValueError, UnicodeEncodeError):
        return  # httpx itself refuses the header: no reply to parse
    error = status_error(response, method="POST", url="https://x/fetch")
    assert isinstance(error, APIStatusError)
    assert error.status_code == status
    assert len(error.body) < 700
    assert error.retry_after is None or error.retry_after >= 0


@FUZZ
@given(lines=st.lists(st.text(max_size=60), max_size=8))
def test_prompt_lines_give_fields_or_our_error(lines: list[str]) -> None:
    """Lines of a prompts file give field mappings or a RequestValidationError."""
    try:
        for fields in read_prompts(lines, {"training_id": "t"}):
            assert isinstance(fields, dict)
    except RequestValidationError as exc:
        assert exc.field.startswith("prompts line")


@settings(max_examples=60, deadline=None)
@given(
    status=st.sampled_from([200, 200, 200, 400, 401, 404, 429, 500, 502, 503]),
    body=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | task_like.map(lambda v: json.dumps(v, default=str).encode())
    | st.just(b"<html><body>502 Bad Gateway</body></html>")
    | st.just(b'{"task_id": "x", "status": "fini'),
)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_client_only_raises_our_errors(backend: str, status: int, body: bytes) -> None:
    """Whatever a server answers to generate, the client returns a result or our error."""

    async def scenario() -> None:
        transport = httpx.MockTransport(lambda _request: httpx.Response(status, content=body))
        async with (
            httpx.AsyncClient(transport=transport) as http,
            AsyncApiframe("k", http_client=http, max_retries=0, poll=QUICK_POLL) as client,
        ):
            try:
                with anyio.fail_after(5):
                    result = await client.generate(training_id="t", prompt="p")
            except (ApiframeError, ResponseValidationError, RequestValidationError):
                return
            except Exception as exc:  # noqa: BLE001 -- the point: nothing else may escape
                if type(exc).__module__.startswith("apiframe_async"):
                    return
                pytest.fail(f"{type(exc).__name__} escaped: {exc}")
            assert isinstance(result, Generation)

    anyio.run(scenario, backend=backend)
