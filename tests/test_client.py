"""AsyncApiframe: construction, what goes on the wire, waiting for tasks, and keeping secrets."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import respx
from conftest import API_KEY, BASE_URL, FAST_POLL, FAST_RETRY

from apiframe_async import (
    DEFAULT_BASE_URL,
    Account,
    ApiframeError,
    APIStatusError,
    AsyncApiframe,
    AuthenticationError,
    BadRequestError,
    GenerateRequest,
    Generation,
    RequestValidationError,
    ResponseValidationError,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
)
from apiframe_async._http import ACCOUNT as ACCOUNT_ENDPOINT
from apiframe_async._http import GENERATE, Endpoint
from apiframe_async._transport import HeadedRequest, request_head_of

FINISHED = {
    "task_id": "g-1",
    "status": "finished",
    "task_type": "ai-photo-generate",
    "image_urls": ["https://cdn/1.png", "https://cdn/2.png"],
}
ACCOUNT = {"email": "a@b.c", "credits": 120, "total_images": 35, "plan": "pro"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No APIFRAME_* variables from the machine running the tests."""
    monkeypatch.delenv("APIFRAME_API_KEY", raising=False)
    monkeypatch.delenv("APIFRAME_BASE_URL", raising=False)
    return monkeypatch


@pytest.fixture
async def http(api: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose requests reach the `api` router."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(api.async_handler)) as http:
        yield http


def ok(body: object) -> httpx.Response:
    """A 200 reply with a JSON body."""
    return httpx.Response(200, json=body)


def sent_json(route: respx.Route) -> Any:
    """The JSON body of the last request the route saw."""
    return json.loads(route.calls.last.request.content)


# --- construction -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_key_from_the_environment(
    clean_env: pytest.MonkeyPatch, api: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """Without api_key, the key comes from APIFRAME_API_KEY."""
    clean_env.setenv("APIFRAME_API_KEY", "env-key-1")
    route = api.get("/account").mock(return_value=ok(ACCOUNT))
    await AsyncApiframe(http_client=http, base_url=BASE_URL).account()
    assert route.calls.last.request.headers["Authorization"] == "env-key-1"


@pytest.mark.anyio
async def test_explicit_key_wins_over_the_environment(
    clean_env: pytest.MonkeyPatch, api: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """An api_key argument is used even when APIFRAME_API_KEY is set."""
    clean_env.setenv("APIFRAME_API_KEY", "env-key-1")
    route = api.get("/account").mock(return_value=ok(ACCOUNT))
    await AsyncApiframe("explicit-key-2", http_client=http, base_url=BASE_URL).account()
    assert route.calls.last.request.headers["Authorization"] == "explicit-key-2"


@pytest.mark.parametrize(
    ("argument", "environment"),
    [
        pytest.param(None, None, id="nothing"),
        pytest.param(None, "", id="empty-variable"),
        pytest.param("", None, id="empty-argument"),
        pytest.param("", "env-key-1", id="empty-argument-not-replaced"),
    ],
)
def test_missing_key_is_refused(
    clean_env: pytest.MonkeyPatch, argument: str | None, environment: str | None
) -> None:
    """No usable key: RequestValidationError naming api_key and no key whatsoever."""
    if environment is not None:
        clean_env.setenv("APIFRAME_API_KEY", environment)
    with pytest.raises(RequestValidationError) as info:
        AsyncApiframe(argument)
    assert info.value.field == "api_key"
    assert "api_key" in str(info.value)
    assert "APIFRAME_API_KEY" in str(info.value)
    assert "env-key-1" not in str(info.value)


def test_base_url_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    """Without base_url, APIFRAME_BASE_URL is used (trailing slash dropped)."""
    clean_env.setenv("APIFRAME_BASE_URL", "https://eu.apiframe.example/v1/")
    assert AsyncApiframe("k").base_url == "https://eu.apiframe.example/v1"


def test_explicit_base_url_wins(clean_env: pytest.MonkeyPatch) -> None:
    """A base_url argument beats APIFRAME_BASE_URL; with neither, the documented host."""
    assert AsyncApiframe("k").base_url == DEFAULT_BASE_URL == "https://api.apiframe.pro"
    clean_env.setenv("APIFRAME_BASE_URL", "https://eu.apiframe.example")
    assert AsyncApiframe("k", base_url="https://us.example").base_url == "https://us.example"


@pytest.mark.anyio
async def test_requests_go_to_the_configured_base_url(clean_env: pytest.MonkeyPatch) -> None:
    """Paths are appended to the base URL, path prefix included."""
    clean_env.setenv("APIFRAME_BASE_URL", "https://eu.apiframe.example/v1")
    router = respx.MockRouter(assert_all_called=False)
    route = router.get("https://eu.apiframe.example/v1/account").mock(return_value=ok(ACCOUNT))
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as http,
        AsyncApiframe("k", http_client=http) as client,
    ):
        await client.account()
    assert route.call_count == 1


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://api.apiframe.pro", id="plain-http"),
        pytest.param("http://10.0.0.7:8080", id="private-ip"),
        pytest.param("http://127.0.0.1.nip.io", id="loopback-lookalike"),
        pytest.param("http://localhost.evil.example", id="localhost-prefix"),
    ],
)
def test_plain_http_off_loopback_is_refused(clean_env: pytest.MonkeyPatch, url: str) -> None:
    """The key would travel in clear: refused, naming base_url, not showing the key."""
    with pytest.raises(RequestValidationError) as info:
        AsyncApiframe("secret-key-3", base_url=url)
    assert info.value.field == "base_url"
    assert "allow_insecure" in str(info.value)
    assert "secret-key-3" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8000", id="127.0.0.1"),
        pytest.param("http://127.5.5.5", id="127/8"),
        pytest.param("http://localhost:8000", id="localhost"),
        pytest.param("http://app.localhost", id="dot-localhost"),
        pytest.param("http://[::1]:8000", id="ipv6-loopback"),
    ],
)
def test_plain_http_on_loopback_is_allowed(clean_env: pytest.MonkeyPatch, url: str) -> None:
    """Plain http to this machine is fine (the fake server, a local proxy)."""
    assert AsyncApiframe("k", base_url=url).base_url == url


def test_allow_insecure_allows_plain_http(clean_env: pytest.MonkeyPatch) -> None:
    """allow_insecure=True accepts a non-loopback http URL."""
    client = AsyncApiframe("k", base_url="http://proxy.internal:8080", allow_insecure=True)
    assert client.base_url == "http://proxy.internal:8080"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://api.apiframe.pro", id="ftp"),
        pytest.param("api.apiframe.pro", id="no-scheme"),
        pytest.param("https://", id="no-host"),
        pytest.param("http://[::1", id="malformed-ipv6"),
        pytest.param("https://api.apiframe.pro:99999", id="bad-port"),
    ],
)
def test_malformed_base_url_is_refused(clean_env: pytest.MonkeyPatch, url: str) -> None:
    """A base_url that is no http(s) URL is a RequestValidationError, never an httpx error."""
    with pytest.raises(RequestValidationError) as info:
        AsyncApiframe("k", base_url=url)
    assert info.value.field == "base_url"


def test_max_concurrency_must_be_positive(clean_env: pytest.MonkeyPatch) -> None:
    """max_concurrency below 1 is refused."""
    with pytest.raises(RequestValidationError) as info:
        AsyncApiframe("k", max_concurrency=0)
    assert info.value.field == "max_concurrency"


# --- on the wire --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_post_headers(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """A POST carries the raw key (no Bearer), a JSON content type, and our user agent."""
    route = api.post("/fetch").mock(return_value=ok({"task_id": "t", "status": "processing"}))
    await client.fetch("t")
    headers = route.calls.last.request.headers
    assert headers["Authorization"] == API_KEY
    assert "bearer" not in headers["Authorization"].lower()
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("apiframe-async/")
    assert sent_json(route) == {"task_id": "t"}


@pytest.mark.anyio
async def test_get_account_has_no_body(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """GET /account carries the raw key and no body (so no content type)."""
    route = api.get("/account").mock(return_value=ok(ACCOUNT))
    await client.account()
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.headers["Authorization"] == API_KEY
    assert request.content == b""
    assert "Content-Type" not in request.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("endpoint", "content"),
    [
        (GENERATE, b'{"prompt":"a"}'),
        (GENERATE, b'{"prompt":"' + b"b" * 300 + b'"}'),
        (ACCOUNT_ENDPOINT, None),
        (Endpoint("POST", "/fetch", paid=False), None),  # httpx adds Content-Length: 0
    ],
)
async def test_requests_of_our_own_client_are_what_httpx_request_makes(
    clean_env: pytest.MonkeyPatch, endpoint: Endpoint, content: bytes | None
) -> None:
    """The request our own client builds without httpx.Request() equals what it makes."""
    api = AsyncApiframe(api_key=API_KEY, base_url="http://127.0.0.1:9")
    for _ in range(2):  # the second one comes from the headers kept ready for its size
        ours = api._sender._direct_request(endpoint, content, None)
        theirs = httpx.Request(
            endpoint.method,
            "http://127.0.0.1:9" + endpoint.path,
            content=content,
            headers=api._sender._headers
            | ({"Content-Type": "application/json"} if content is not None else {}),
        )
        assert isinstance(ours, httpx.Request)
        assert (ours.method, ours.url, ours.content) == (theirs.method, theirs.url, theirs.content)
        assert sorted(ours.headers.multi_items()) == sorted(theirs.headers.multi_items())
        assert ours.extensions == {"timeout": api._sender._timeouts}
        assert isinstance(ours, HeadedRequest)
        assert ours.head == request_head_of(ours)
        assert not ours.asks_close
        ours.headers["X-Mine"] = "1"  # each request has headers of its own
    await api.aclose()


DOCUMENTED_BODY = {
    "training_id": "3492deb6-c5a2",
    "prompt": "a realistic portrait of TOKMSN man wearing a suit",
    "aspect_ratio": "custom",
    "width": "1024",
    "height": "1536",
    "number_of_images": "2",
    "seed": 7,
}


@pytest.mark.anyio
async def test_full_example_request(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """The documented example goes out as exactly the documented JSON body."""
    route = api.post("/ai-photo-generate").mock(return_value=ok(FINISHED))
    generation = await client.generate(
        training_id="3492deb6-c5a2",
        prompt="a realistic portrait of TOKMSN man wearing a suit",
        aspect_ratio="custom",
        width=1024,
        height=1536,
        number_of_images=2,
        seed=7,
    )
    assert sent_json(route) == DOCUMENTED_BODY
    assert route.calls.last.request.headers["Content-Type"] == "application/json"
    assert generation == Generation(
        task_id="g-1",
        status=TaskStatus.FINISHED,
        task_type="ai-photo-generate",
        image_urls=("https://cdn/1.png", "https://cdn/2.png"),
    )


@pytest.mark.anyio
async def test_generate_takes_a_request_object(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """A GenerateRequest passed positionally sends the same body as keywords."""
    route = api.post("/ai-photo-generate").mock(return_value=ok(FINISHED))
    request = GenerateRequest(
        training_id="3492deb6-c5a2",
        prompt="a realistic portrait of TOKMSN man wearing a suit",
        aspect_ratio="custom",
        width=1024,
        height=1536,
        number_of_images=2,
        seed=7,
    )
    await client.generate(request)
    assert sent_json(route) == DOCUMENTED_BODY


BAD_GENERATE_KEYWORDS = [
    pytest.param({}, "training_id", id="nothing"),
    pytest.param({"prompt": "p"}, "training_id", id="no-training-id"),
    pytest.param({"training_id": "t"}, "prompt", id="no-prompt"),
    pytest.param(
        {"training_id": "t", "prompt": "p", "negative_prompt": "x"},
        "negative_prompt",
        id="unknown-field",
    ),
    pytest.param(
        {"training_id": "t", "prompt": "p", "numberOfImages": 2}, "numberOfImages", id="camel"
    ),
    pytest.param({"training_id": "t", "prompt": "  "}, "prompt", id="blank-prompt"),
    pytest.param({"training_id": "", "prompt": "p"}, "training_id", id="empty-training-id"),
    pytest.param(
        {"training_id": "t", "prompt": "p", "number_of_images": 5},
        "number_of_images",
        id="5-images",
    ),
    pytest.param(
        {"training_id": "t", "prompt": "p", "aspect_ratio": "16:10"}, "aspect_ratio", id="ratio"
    ),
    pytest.param({"training_id": "t", "prompt": "p", "width": 512}, "width", id="width-no-custom"),
    pytest.param({"training_id": "t", "prompt": "p", "seed": "7"}, "seed", id="seed-str"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("fields", "field"), BAD_GENERATE_KEYWORDS)
async def test_bad_generate_keywords_are_refused_before_sending(
    client: AsyncApiframe, api: respx.MockRouter, fields: dict[str, Any], field: str
) -> None:
    """Bad, unknown or missing fields raise RequestValidationError naming them; nothing is sent."""
    loose: Any = client
    with pytest.raises(RequestValidationError) as info:
        await loose.generate(**fields)
    assert info.value.field == field
    assert api.calls.call_count == 0


@pytest.mark.anyio
async def test_request_object_and_fields_do_not_mix(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """A GenerateRequest plus keyword fields is refused, naming the field; nothing is sent."""
    loose: Any = client
    with pytest.raises(RequestValidationError) as info:
        await loose.generate(GenerateRequest(training_id="t", prompt="p"), seed=7)
    assert info.value.field == "seed"
    assert "GenerateRequest" in str(info.value)
    assert api.calls.call_count == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({"training_id": "t", "prompt": ""}, id="mapping-with-empty-prompt"),
        pytest.param({"prompt": "p"}, id="mapping-without-training-id"),
        pytest.param("a portrait of TOKMSN", id="string"),
        pytest.param(None, id="explicit-none"),
    ],
)
async def test_positional_non_request_is_refused_before_sending(
    client: AsyncApiframe, api: respx.MockRouter, request_: object
) -> None:
    """Whatever is passed positionally is validated: nothing unvalidated goes on the wire."""
    loose: Any = client
    with pytest.raises(RequestValidationError):
        await loose.generate(request_)
    assert api.calls.call_count == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c, i: c.fetch(i), id="fetch"),
        pytest.param(lambda c, i: c.wait(i), id="wait"),
    ],
)
async def test_bad_task_id_is_refused_before_sending(
    client: AsyncApiframe,
    api: respx.MockRouter,
    task_id: object,
    call: Callable[[AsyncApiframe, object], Awaitable[object]],
) -> None:
    """fetch() and wait() refuse a task id that is not a non-empty string; nothing is sent."""
    with pytest.raises(RequestValidationError) as info:
        await call(client, task_id)
    assert info.value.field == "task_id"
    assert api.calls.call_count == 0


# --- waiting ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first_status",
    [pytest.param("processing", id="processing"), pytest.param("queued", id="unknown")],
)
async def test_generate_polls_until_finished(
    client: AsyncApiframe, api: respx.MockRouter, first_status: str
) -> None:
    """A generate reply that is not done yet is polled through /fetch until it finishes."""
    api.post("/ai-photo-generate").mock(return_value=ok({"task_id": "g-1", "status": first_status}))
    fetch = api.post("/fetch").mock(
        side_effect=[
            ok({"task_id": "g-1", "status": "processing"}),
            ok({"task_id": "g-1", "status": "processing", "message": "almost"}),
            ok(FINISHED),
        ]
    )
    generation = await client.generate(training_id="t", prompt="p")
    assert fetch.call_count == 3
    assert all(json.loads(c.request.content) == {"task_id": "g-1"} for c in fetch.calls)
    assert generation.status is TaskStatus.FINISHED
    assert generation.image_urls == ("https://cdn/1.png", "https://cdn/2.png")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failed", "reason"),
    [
        pytest.param({"message": "NSFW content detected"}, "NSFW content detected", id="message"),
        pytest.param({"error": "GPU lost", "message": "failed"}, "GPU lost", id="error"),
        pytest.param({}, None, id="no-reason"),
    ],
)
async def test_generation_that_fails_later_raises(
    client: AsyncApiframe, api: respx.MockRouter, failed: dict[str, str], reason: str | None
) -> None:
    """A generation that turns `failed` while polled raises TaskFailedError with id and reason."""
    api.post("/ai-photo-generate").mock(return_value=ok({"task_id": "g-1", "status": "processing"}))
    api.post("/fetch").mock(
        side_effect=[
            ok({"task_id": "g-1", "status": "processing"}),
            ok({"task_id": "g-1", "status": "failed", **failed}),
        ]
    )
    with pytest.raises(TaskFailedError) as info:
        await client.generate(training_id="t", prompt="p")
    assert info.value.task_id == "g-1"
    assert info.value.reason == reason
    assert "g-1" in str(info.value)


@pytest.mark.anyio
async def test_generation_failed_at_once_raises(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """A generate reply that is already `failed` raises TaskFailedError without polling."""
    api.post("/ai-photo-generate").mock(
        return_value=ok({"task_id": "g-1", "status": "failed", "message": "bad prompt"})
    )
    fetch = api.post("/fetch").mock(return_value=ok(FINISHED))
    with pytest.raises(TaskFailedError) as info:
        await client.generate(training_id="t", prompt="p")
    assert (info.value.task_id, info.value.reason) == ("g-1", "bad prompt")
    assert fetch.call_count == 0


@pytest.mark.anyio
async def test_generate_reply_without_a_usable_task_id(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """A running generation with an empty task_id is the server's fault: ResponseValidationError."""
    api.post("/ai-photo-generate").mock(return_value=ok({"task_id": "", "status": "processing"}))
    with pytest.raises(ResponseValidationError):
        await client.generate(training_id="t", prompt="p")


@pytest.mark.anyio
async def test_wait_deadline(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """Past the deadline, TaskTimeoutError (also a TimeoutError) names the task and its status."""
    api.post("/fetch").mock(return_value=ok({"task_id": "tr-1", "status": "processing"}))
    with anyio.fail_after(2), pytest.raises(TaskTimeoutError) as info:
        await client.wait("tr-1", deadline=0.05)
    error = info.value
    assert isinstance(error, TimeoutError)
    assert error.task_id == "tr-1"
    assert error.deadline == 0.05
    assert error.last_status == "processing"
    assert "tr-1" in str(error)


@pytest.mark.anyio
async def test_wait_returns_the_finished_task(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """wait() returns the finished task, with what the result carries (trigger word, 100 %)."""
    api.post("/fetch").mock(
        side_effect=[
            ok({"task_id": "tr-1", "status": "processing", "percentage": "40"}),
            ok({"task_id": "tr-1", "status": "finished", "percentage": 100, "trigger_word": "ZXQ"}),
        ]
    )
    task = await client.wait("tr-1")
    assert task.is_finished
    assert (task.percentage, task.trigger_word) == (100, "ZXQ")


@pytest.mark.anyio
async def test_fetch_fills_a_missing_task_id(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """The documented upload progress reply has no task_id: the one fetched fills it in."""
    api.post("/fetch").mock(return_value=ok({"status": "processing", "message": "Preparing"}))
    task = await client.fetch("u-1")
    assert task.task_id == "u-1"
    assert task.status is TaskStatus.PROCESSING
    assert task.message == "Preparing"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("more", "next_billing_date"),
    [
        pytest.param({"next_billing_date": "2025-04-01"}, "2025-04-01", id="with-date"),
        pytest.param({"next_billing_date": None}, None, id="null-date"),
        pytest.param({}, None, id="no-date"),
    ],
)
async def test_account(
    client: AsyncApiframe,
    api: respx.MockRouter,
    more: dict[str, Any],
    next_billing_date: str | None,
) -> None:
    """account() parses the reply, with or without next_billing_date, keeping extra keys."""
    api.get("/account").mock(return_value=ok({**ACCOUNT, **more, "team": "studio"}))
    account = await client.account()
    assert isinstance(account, Account)
    assert (account.email, account.credits, account.total_images, account.plan) == (
        "a@b.c",
        120,
        35,
        "pro",
    )
    assert account.next_billing_date == next_billing_date
    assert account.extra == {"team": "studio"}


# --- lifetime -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_borrowed_http_client_stays_open(
    api: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """Closing the client leaves a borrowed httpx client open and usable."""
    api.get("/account").mock(return_value=ok(ACCOUNT))
    async with AsyncApiframe(API_KEY, base_url=BASE_URL, http_client=http) as client:
        await client.account()
    await client.aclose()
    assert not http.is_closed
    assert (await http.get(f"{BASE_URL}/account")).status_code == 200


@pytest.mark.anyio
async def test_owned_http_client_is_closed(clean_env: pytest.MonkeyPatch) -> None:
    """The httpx client the client made for itself is closed by aclose() and by `async with`."""
    client = AsyncApiframe("k")
    await client.aclose()
    assert client._http_client.is_closed
    async with AsyncApiframe("k") as other:
        pass
    assert other._http_client.is_closed


# --- secrets ------------------------------------------------------------------------------


def texts(error: BaseException) -> Iterator[str]:
    """str() and repr() of an error, its args, and every error in its cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(arg) for arg in current.args)
        yield from (str(value) for value in vars(current).values())
        current = current.__cause__ or current.__context__


def assert_no_key(error: BaseException, key: str = API_KEY) -> None:
    """The key appears in no text of `error` or of the errors behind it."""
    for text in texts(error):
        assert key not in text


Scenario = Callable[[AsyncApiframe, respx.MockRouter], Awaitable[object]]


async def _unauthorized(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.get("/account").mock(return_value=httpx.Response(401, json={}))
    return await client.account()


async def _bad_request(client: AsyncApiframe, api: respx.MockRouter) -> object:
    body = {"errors": [{"msg": "Invalid request"}, {"msg": "x", "path": "prompt"}]}
    api.post("/ai-photo-generate").mock(return_value=httpx.Response(400, json=body))
    return await client.generate(training_id="t", prompt="p")


async def _rate_limited(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/fetch").mock(return_value=httpx.Response(429, headers={"Retry-After": "120"}))
    return await client.fetch("t")


async def _server_error(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/ai-photo-generate").mock(return_value=httpx.Response(500, text="<html>oops"))
    return await client.generate(training_id="t", prompt="p")


async def _connect_error(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/ai-photo-generate").mock(side_effect=httpx.ConnectError)
    return await client.generate(training_id="t", prompt="p")


async def _read_timeout(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/ai-photo-generate").mock(side_effect=httpx.ReadTimeout)
    return await client.generate(training_id="t", prompt="p")


async def _not_json(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/fetch").mock(return_value=httpx.Response(200, text="<html>"))
    return await client.fetch("t")


async def _wrong_types(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/fetch").mock(return_value=ok({"task_id": 5, "image_urls": [1]}))
    return await client.fetch("t")


async def _task_failed(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/ai-photo-generate").mock(return_value=ok({"task_id": "g", "status": "failed"}))
    return await client.generate(training_id="t", prompt="p")


async def _task_timeout(client: AsyncApiframe, api: respx.MockRouter) -> object:
    api.post("/fetch").mock(return_value=ok({"task_id": "g", "status": "processing"}))
    return await client.wait("g", deadline=0.02)


async def _bad_input(client: AsyncApiframe, api: respx.MockRouter) -> object:
    return await client.generate(training_id="t", prompt="", number_of_images=9)


FAILING_CALLS: list[Scenario] = [
    _unauthorized,
    _bad_request,
    _rate_limited,
    _server_error,
    _connect_error,
    _read_timeout,
    _not_json,
    _wrong_types,
    _task_failed,
    _task_timeout,
    _bad_input,
]


async def failures(client: AsyncApiframe, api: respx.MockRouter) -> list[ApiframeError]:
    """Run every failing call once; return what each raised."""
    raised: list[ApiframeError] = []
    for scenario in FAILING_CALLS:
        with pytest.raises(ApiframeError) as info:
            await scenario(client, api)
        raised.append(info.value)
    return raised


def test_repr_has_no_key() -> None:
    """repr() of the client and of its sender shows the server, not the key."""
    client = AsyncApiframe(API_KEY, base_url=BASE_URL)
    assert API_KEY not in repr(client)
    assert API_KEY not in repr(client._sender)
    assert BASE_URL in repr(client)


@pytest.mark.anyio
async def test_no_error_text_holds_the_key(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """No error any failing call raises shows the key, in itself or in what caused it."""
    raised = await failures(client, api)
    assert len(raised) == len(FAILING_CALLS)
    assert len({type(e) for e in raised}) >= 9
    for error in raised:
        assert_no_key(error)


@pytest.mark.anyio
async def test_debug_logs_hold_no_key(
    client: AsyncApiframe, api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """With every logger at DEBUG, neither a success nor any failure logs the key."""
    caplog.set_level(logging.DEBUG)
    api.get("/account").mock(return_value=ok(ACCOUNT))
    await client.account()
    await failures(client, api)
    assert any(r.name == "apiframe_async" for r in caplog.records)
    assert any(r.name == "httpx" for r in caplog.records)
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in repr(record.args)
    assert API_KEY not in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(401, {"message": f"invalid api key {API_KEY}"}, AuthenticationError, id="401"),
        pytest.param(
            400, {"errors": [{"msg": f"key {API_KEY} has no credits"}]}, BadRequestError, id="400"
        ),
        pytest.param(500, {"error": f"Authorization: {API_KEY}"}, APIStatusError, id="500-debug"),
    ],
)
async def test_a_key_echoed_by_the_server_is_not_repeated(
    client: AsyncApiframe,
    api: respx.MockRouter,
    status: int,
    body: dict[str, Any],
    expected: type[APIStatusError],
) -> None:
    """Even if the server quotes the key back, our error text and body do not hold it."""
    api.post("/ai-photo-generate").mock(return_value=httpx.Response(status, json=body))
    with pytest.raises(expected) as info:
        await client.generate(training_id="t", prompt="p")
    assert_no_key(info.value)
    assert API_KEY not in info.value.body


# A real socket on 127.0.0.1, so httpx's transport and httpcore log as in production.


@contextlib.asynccontextmanager
async def loopback_server(
    answer: Callable[[bytes], tuple[int, bytes]],
) -> AsyncIterator[str]:
    """An HTTP/1.1 server on 127.0.0.1 answering each request by `answer(head + body)`."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += await stream.receive()
            code, payload = answer(head + b"\r\n\r\n" + body)
            await stream.send(
                b"HTTP/1.1 %d Status\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (code, len(payload), payload)
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 -- anyio, not Django
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_loopback_requests_log_no_key(caplog: pytest.LogCaptureFixture) -> None:
    """Over a real socket, with httpx and httpcore at DEBUG, the key is in no log line."""
    seen: list[bytes] = []

    def answer(request: bytes) -> tuple[int, bytes]:
        seen.append(request)
        if request.startswith(b"GET /account"):
            return 200, json.dumps(ACCOUNT).encode()
        return 401, b"{}"

    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(5):
        async with (
            loopback_server(answer) as url,
            AsyncApiframe(API_KEY, base_url=url, retry=FAST_RETRY, poll=FAST_POLL) as client,
        ):
            assert (await client.account()).credits == 120
            with pytest.raises(AuthenticationError) as info:
                await client.fetch("t")
    assert_no_key(info.value)
    assert len(seen) == 2
    assert f"Authorization: {API_KEY}".lower().encode() in seen[0].lower()
    assert any(r.name == "apiframe_async" for r in caplog.records)
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
    assert API_KEY not in caplog.text
