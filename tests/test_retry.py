"""Retries: never resend paid work that may have landed, retry what is safe, honour 429s."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import attrs
import httpx
import pytest
import respx
import tenacity
from conftest import API_KEY, BASE_URL, FAST_RETRY

from apiframe_async import (
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    APITimeoutError,
    AsyncApiframe,
    AuthenticationError,
    BadRequestError,
    Generation,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    RequestValidationError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailedError,
)
from apiframe_async._http import TRAIN, UPLOAD, Endpoint

FINISHED = {"task_id": "g-1", "status": "finished", "image_urls": ["https://cdn/1.png"]}
ACCOUNT = {"email": "a@b.c", "credits": 10, "total_images": 0, "plan": "basic"}

MakeClient = Callable[..., AsyncApiframe]


@pytest.fixture
async def http(api: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose requests reach the `api` router."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(api.async_handler)) as http:
        yield http


@pytest.fixture
def make_client(http: httpx.AsyncClient) -> MakeClient:
    """Build clients on the `api` router with fast retries, overriding any argument."""

    def make(**kwargs: Any) -> AsyncApiframe:
        kwargs.setdefault("retry", FAST_RETRY)
        return AsyncApiframe(api_key=API_KEY, base_url=BASE_URL, http_client=http, **kwargs)

    return make


def status(code: int, body: object = None, **headers: str) -> httpx.Response:
    """An error reply with a JSON body."""
    return httpx.Response(code, json={} if body is None else body, headers=headers)


def then(*responses: httpx.Response | type[Exception]) -> Iterator[Any]:
    """Side effects in order: each response is returned, each exception class raised."""
    return iter(responses)


def first(failure: int | type[Exception]) -> httpx.Response | type[Exception]:
    """A fresh error reply for a status code, or the exception class as it is."""
    return status(failure) if isinstance(failure, int) else failure


async def generate(client: AsyncApiframe) -> Generation:
    """One paid generation with fixed fields."""
    return await client.generate(training_id="train-1", prompt="TOKMSN man")


# --- paid requests that may have landed are never resent -----------------------------------

MAY_HAVE_LANDED = [
    pytest.param(httpx.ReadTimeout, APITimeoutError, id="ReadTimeout"),
    pytest.param(httpx.WriteTimeout, APITimeoutError, id="WriteTimeout"),
    pytest.param(httpx.RemoteProtocolError, APIConnectionError, id="RemoteProtocolError"),
    pytest.param(httpx.ReadError, APIConnectionError, id="ReadError"),
    pytest.param(httpx.WriteError, APIConnectionError, id="WriteError"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("failure", "expected"), MAY_HAVE_LANDED)
async def test_paid_generate_is_sent_once_when_it_may_have_landed(
    client: AsyncApiframe,
    api: respx.MockRouter,
    failure: type[httpx.TransportError],
    expected: type[APIConnectionError],
) -> None:
    """A generation that timed out or dropped mid-request is sent exactly once, and says so."""
    route = api.post("/ai-photo-generate").mock(side_effect=then(failure, status(200, FINISHED)))
    with pytest.raises(APIConnectionError) as info:
        await generate(client)
    assert route.call_count == 1
    assert type(info.value) is expected
    assert info.value.may_have_been_submitted is True
    assert "may have been submitted" in str(info.value)


@pytest.mark.anyio
async def test_read_timeout_on_generate_is_a_timeout_error(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """The read timeout of a generation is an APITimeoutError and a builtin TimeoutError."""
    api.post("/ai-photo-generate").mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(TimeoutError) as info:
        await generate(client)
    assert isinstance(info.value, APITimeoutError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "endpoint", [pytest.param(UPLOAD, id="upload"), pytest.param(TRAIN, id="train")]
)
@pytest.mark.parametrize(("failure", "expected"), MAY_HAVE_LANDED)
async def test_every_paid_endpoint_is_sent_once_when_it_may_have_landed(
    client: AsyncApiframe,
    api: respx.MockRouter,
    endpoint: Endpoint,
    failure: type[httpx.TransportError],
    expected: type[APIConnectionError],
) -> None:
    """Uploads and trainings cost credits too: never resent after they may have landed."""
    route = api.post(endpoint.path).mock(side_effect=then(failure, status(200, {"task_id": "x"})))
    with pytest.raises(expected):
        await client._sender.call(endpoint, {"training_images_id": "u-1"})
    assert route.call_count == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.ConnectError, id="ConnectError"),
        pytest.param(httpx.ConnectTimeout, id="ConnectTimeout"),
        pytest.param(httpx.PoolTimeout, id="PoolTimeout"),
    ],
)
async def test_paid_generate_is_retried_when_it_never_left(
    client: AsyncApiframe, api: respx.MockRouter, failure: type[httpx.TransportError]
) -> None:
    """A generation whose connection never opened is retried, and then succeeds."""
    route = api.post("/ai-photo-generate").mock(side_effect=then(failure, status(200, FINISHED)))
    generation = await generate(client)
    assert generation.image_urls == ("https://cdn/1.png",)
    assert route.call_count == 2


@pytest.mark.anyio
@pytest.mark.parametrize("code", [pytest.param(429, id="429"), pytest.param(503, id="503")])
async def test_paid_generate_is_retried_when_turned_away(
    client: AsyncApiframe, api: respx.MockRouter, code: int
) -> None:
    """429 and 503 mean no work was done: a generation is retried after them."""
    route = api.post("/ai-photo-generate").mock(
        side_effect=then(status(code), status(200, FINISHED))
    )
    assert (await generate(client)).task_id == "g-1"
    assert route.call_count == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(500, ServerError, id="500"),
        pytest.param(502, ServerError, id="502"),
        pytest.param(504, ServerError, id="504"),
        pytest.param(408, RequestTimeoutError, id="408"),
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
    ],
)
async def test_paid_generate_is_not_retried_after_other_errors(
    client: AsyncApiframe, api: respx.MockRouter, code: int, expected: type[APIStatusError]
) -> None:
    """After a 500, 502, 504 or 408 the work may have been done: one call, then the error."""
    route = api.post("/ai-photo-generate").mock(
        side_effect=then(status(code), status(200, FINISHED))
    )
    with pytest.raises(expected):
        await generate(client)
    assert route.call_count == 1


@pytest.mark.anyio
async def test_bad_paid_reply_is_not_retried(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """A generation whose 200 reply cannot be read is not sent again."""
    route = api.post("/ai-photo-generate").mock(
        side_effect=then(httpx.Response(200, text="<html>"), status(200, FINISHED))
    )
    with pytest.raises(ResponseValidationError):
        await generate(client)
    assert route.call_count == 1


# --- free requests are retried after anything transient -----------------------------------

TRANSIENT = [
    pytest.param(503, id="503"),
    pytest.param(500, id="500"),
    pytest.param(502, id="502"),
    pytest.param(504, id="504"),
    pytest.param(408, id="408"),
    pytest.param(429, id="429"),
    pytest.param(httpx.ReadTimeout, id="ReadTimeout"),
    pytest.param(httpx.ReadError, id="ReadError"),
    pytest.param(httpx.RemoteProtocolError, id="RemoteProtocolError"),
    pytest.param(httpx.ConnectError, id="ConnectError"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("failure", TRANSIENT)
async def test_fetch_is_retried_after_transient_failures(
    client: AsyncApiframe, api: respx.MockRouter, failure: int | type[Exception]
) -> None:
    """fetch costs nothing: it is retried after timeouts, drops, 408, 429 and any 5xx."""
    reply = status(200, {"task_id": "t-1", "status": "processing"})
    route = api.post("/fetch").mock(side_effect=then(first(failure), reply))
    task = await client.fetch("t-1")
    assert isinstance(task, Task)
    assert task.task_id == "t-1"
    assert route.call_count == 2


@pytest.mark.anyio
@pytest.mark.parametrize("failure", TRANSIENT)
async def test_account_is_retried_after_transient_failures(
    client: AsyncApiframe, api: respx.MockRouter, failure: int | type[Exception]
) -> None:
    """account() is free too, and retried like fetch."""
    route = api.get("/account").mock(side_effect=then(first(failure), status(200, ACCOUNT)))
    assert (await client.account()).credits == 10
    assert route.call_count == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(403, PermissionDeniedError, id="403"),
        pytest.param(404, NotFoundError, id="404"),
    ],
)
async def test_fetch_is_not_retried_after_a_refusal(
    client: AsyncApiframe, api: respx.MockRouter, code: int, expected: type[APIStatusError]
) -> None:
    """A refusal will not change by asking again: one call."""
    route = api.post("/fetch").mock(return_value=status(code))
    with pytest.raises(expected):
        await client.fetch("t-1")
    assert route.call_count == 1


# --- how many, how long -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
async def test_max_retries_is_honoured(
    make_client: MakeClient, api: respx.MockRouter, max_retries: int
) -> None:
    """max_retries=n makes n+1 calls in all, then raises the last error."""
    calls = 0

    def always_503(_: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, text=f"attempt {calls}")

    api.post("/fetch").mock(side_effect=always_503)
    client = make_client(max_retries=max_retries)
    with pytest.raises(ServerError) as info:
        await client.fetch("t-1")
    assert calls == max_retries + 1
    assert info.value.body == f"attempt {max_retries + 1}"


@pytest.mark.anyio
async def test_max_retries_zero_means_one_call(
    make_client: MakeClient, api: respx.MockRouter
) -> None:
    """With max_retries=0 even a safe retry is not made: one call."""
    route = api.post("/ai-photo-generate").mock(
        side_effect=then(httpx.ConnectError, status(200, FINISHED))
    )
    client = make_client(retry=attrs.evolve(FAST_RETRY, max_retries=0))
    with pytest.raises(APIConnectionError) as info:
        await generate(client)
    assert route.call_count == 1
    assert info.value.may_have_been_submitted is False


@pytest.mark.anyio
async def test_max_retries_argument_overrides_the_policy(
    make_client: MakeClient, api: respx.MockRouter
) -> None:
    """AsyncApiframe(max_retries=...) replaces the retry policy's count."""
    route = api.post("/fetch").mock(return_value=status(503))
    client = make_client(retry=attrs.evolve(FAST_RETRY, max_retries=5), max_retries=1)
    with pytest.raises(ServerError):
        await client.fetch("t-1")
    assert route.call_count == 2


def _stamped(
    hits: list[float], *responses: httpx.Response
) -> Callable[[httpx.Request], httpx.Response]:
    """A side effect that records when each call arrived and answers in order."""
    queue = iter(responses)

    def answer(_: httpx.Request) -> httpx.Response:
        hits.append(time.monotonic())
        return next(queue)

    return answer


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "call"),
    [
        pytest.param("/ai-photo-generate", generate, id="generate"),
        pytest.param("/fetch", lambda c: c.fetch("g-1"), id="fetch"),
    ],
)
async def test_retry_after_is_waited_out(
    client: AsyncApiframe,
    api: respx.MockRouter,
    path: str,
    call: Callable[[AsyncApiframe], Any],
) -> None:
    """A 429's Retry-After is the wait before the retry (backoff alone is milliseconds)."""
    hits: list[float] = []
    api.post(path).mock(
        side_effect=_stamped(hits, status(429, **{"Retry-After": "0.05"}), status(200, FINISHED))
    )
    await call(client)
    assert len(hits) == 2
    assert hits[1] - hits[0] >= 0.045


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("max_retry_after", "retry_after"),
    [
        pytest.param(0.01, "0.05", id="small-limit"),
        pytest.param(60.0, "120", id="default-limit"),
    ],
)
async def test_retry_after_over_the_limit_is_raised_at_once(
    make_client: MakeClient, api: respx.MockRouter, max_retry_after: float, retry_after: str
) -> None:
    """A Retry-After above max_retry_after is not waited: RateLimitError at once, one call."""
    route = api.post("/ai-photo-generate").mock(
        side_effect=then(status(429, **{"Retry-After": retry_after}), status(200, FINISHED))
    )
    client = make_client(retry=attrs.evolve(FAST_RETRY, max_retry_after=max_retry_after))
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        await generate(client)
    assert time.monotonic() - started < 1.0
    assert route.call_count == 1
    assert info.value.retry_after == float(retry_after)


@pytest.mark.anyio
async def test_rate_limit_pauses_the_clients_other_requests(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """After a 429 with Retry-After, the client's other requests wait too, not only its retry."""
    fetch_hits: list[float] = []
    account_hits: list[float] = []
    limited = anyio.Event()

    def on_fetch(request: httpx.Request) -> httpx.Response:
        fetch_hits.append(time.monotonic())
        if len(fetch_hits) == 1:
            limited.set()
            return status(429, **{"Retry-After": "0.1"})
        return status(200, {"task_id": "t-1", "status": "processing"})

    def on_account(_: httpx.Request) -> httpx.Response:
        account_hits.append(time.monotonic())
        return status(200, ACCOUNT)

    api.post("/fetch").mock(side_effect=on_fetch)
    api.get("/account").mock(side_effect=on_account)

    async def meanwhile() -> None:
        await limited.wait()
        await client.account()

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(meanwhile)
            await client.fetch("t-1")
    assert len(fetch_hits) == 2
    assert len(account_hits) == 1
    assert fetch_hits[1] - fetch_hits[0] >= 0.09
    assert account_hits[0] - fetch_hits[0] >= 0.09


@pytest.mark.anyio
async def test_unheeded_retry_after_does_not_pause(
    make_client: MakeClient, api: respx.MockRouter
) -> None:
    """A Retry-After too long to wait out does not hold back the client's next request."""
    api.post("/fetch").mock(return_value=status(429, **{"Retry-After": "120"}))
    api.get("/account").mock(return_value=status(200, ACCOUNT))
    client = make_client()
    with pytest.raises(RateLimitError):
        await client.fetch("t-1")
    started = time.monotonic()
    await client.account()
    assert time.monotonic() - started < 0.5


# --- RetryPolicy as a pure function -------------------------------------------------------

URL = f"{BASE_URL}/x"


def _status_error(cls: type[APIStatusError], code: int, **kwargs: Any) -> APIStatusError:
    context: dict[str, Any] = {"status_code": code, "method": "POST", "url": URL, "body": ""}
    if cls is BadRequestError:
        return BadRequestError(errors=[], **context)
    if cls is RateLimitError:
        return RateLimitError("slow down", retry_after=kwargs.get("retry_after"), **context)
    return cls("error", **context)


def _connection(*, submitted: bool, timeout: bool = False) -> APIConnectionError:
    cls = APITimeoutError if timeout else APIConnectionError
    return cls("failed", method="POST", url=URL, may_have_been_submitted=submitted)


#: (error, retried when paid, retried when free)
DECISIONS = [
    pytest.param(_connection(submitted=False), True, True, id="never-sent"),
    pytest.param(_connection(submitted=False, timeout=True), True, True, id="connect-timeout"),
    pytest.param(_connection(submitted=True), False, True, id="dropped-mid-request"),
    pytest.param(_connection(submitted=True, timeout=True), False, True, id="read-timeout"),
    pytest.param(_status_error(RateLimitError, 429), True, True, id="429"),
    pytest.param(_status_error(RateLimitError, 429, retry_after=1.0), True, True, id="429-short"),
    pytest.param(_status_error(RateLimitError, 429, retry_after=61.0), False, False, id="429-long"),
    pytest.param(_status_error(ServerError, 503), True, True, id="503"),
    pytest.param(_status_error(ServerError, 500), False, True, id="500"),
    pytest.param(_status_error(ServerError, 502), False, True, id="502"),
    pytest.param(_status_error(ServerError, 504), False, True, id="504"),
    pytest.param(_status_error(RequestTimeoutError, 408), False, True, id="408"),
    pytest.param(_status_error(ServerError, 418), False, False, id="418"),
    pytest.param(_status_error(BadRequestError, 400), False, False, id="400"),
    pytest.param(_status_error(AuthenticationError, 401), False, False, id="401"),
    pytest.param(_status_error(PermissionDeniedError, 403), False, False, id="403"),
    pytest.param(_status_error(NotFoundError, 404), False, False, id="404"),
    pytest.param(ResponseValidationError(["$: bad"], body=""), False, False, id="bad-reply"),
    pytest.param(TaskFailedError("t", "nope"), False, False, id="task-failed"),
    pytest.param(RequestValidationError("prompt", "empty"), False, False, id="bad-input"),
    pytest.param(ValueError("bug"), False, False, id="foreign-error"),
    pytest.param(httpx.ReadTimeout("raw"), False, False, id="raw-httpx"),
]


@pytest.mark.parametrize(("error", "paid", "free"), DECISIONS)
def test_should_retry_table(error: BaseException, paid: bool, free: bool) -> None:
    """Which errors are retried, for paid and for free requests, under the default policy."""
    policy = RetryPolicy()
    assert policy.should_retry(error, paid=True) is paid
    assert policy.should_retry(error, paid=False) is free


def _state_after(error: BaseException, attempt: int = 1) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_wait_is_retry_after_when_given() -> None:
    """The wait after a 429 with Retry-After is exactly that many seconds."""
    error = _status_error(RateLimitError, 429, retry_after=2.5)
    assert RetryPolicy().wait(_state_after(error)) == 2.5


@pytest.mark.parametrize("attempt", [1, 2, 5, 20])
def test_wait_is_capped_full_jitter(attempt: int) -> None:
    """Without Retry-After the wait is random, never negative, never above max_backoff."""
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0)
    state = _state_after(_status_error(ServerError, 503), attempt)
    waits = [policy.wait(state) for _ in range(200)]
    assert all(0 <= w <= 3.0 for w in waits)
    assert len(set(waits)) > 1


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"max_retries": -1}, id="negative-retries"),
        pytest.param({"initial_backoff": 0}, id="zero-backoff"),
        pytest.param({"max_backoff": -1.0}, id="negative-cap"),
        pytest.param({"max_retry_after": -1.0}, id="negative-retry-after"),
    ],
)
def test_retry_policy_refuses_nonsense(fields: dict[str, Any]) -> None:
    """A RetryPolicy with a negative count or non-positive wait cannot be built."""
    with pytest.raises(ValueError):
        RetryPolicy(**fields)


def test_errors_are_apiframe_errors() -> None:
    """Every error in the decision table that the library raises is an ApiframeError."""
    ours = [p.values[0] for p in DECISIONS if p.id not in {"foreign-error", "raw-httpx"}]
    assert all(isinstance(e, ApiframeError) for e in ours)
