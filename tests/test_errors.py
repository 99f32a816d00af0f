"""Error replies and transport failures become our typed errors; nothing lower escapes."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import respx
from conftest import BASE_URL

from apiframe_async import (
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    APITimeoutError,
    AsyncApiframe,
    AuthenticationError,
    BadRequestError,
    ClientError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    ServerError,
)
from apiframe_async._status import parse_retry_after

Call = Callable[[AsyncApiframe], Awaitable[object]]


async def _fetch(client: AsyncApiframe) -> object:
    return await client.fetch("task-1")


async def _generate(client: AsyncApiframe) -> object:
    return await client.generate(training_id="train-1", prompt="TOKMSN man")


async def _account(client: AsyncApiframe) -> object:
    return await client.account()


#: (method, path, call, the task id the error should carry)
ENDPOINTS = [
    pytest.param(("POST", "/fetch", _fetch, "task-1"), id="fetch"),
    pytest.param(("POST", "/ai-photo-generate", _generate, None), id="generate"),
    pytest.param(("GET", "/account", _account, None), id="account"),
]
Endpoint = tuple[str, str, Call, str | None]

HTML_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

#: A Retry-After long enough that the error is raised at once, not waited out.
LONG_WAIT = {"Retry-After": "120"}

STATUSES = [
    pytest.param(400, {"errors": [{"msg": "Invalid request"}]}, {}, BadRequestError, id="400"),
    pytest.param(401, {}, {}, AuthenticationError, id="401"),
    pytest.param(403, {"message": "plan limit"}, {}, PermissionDeniedError, id="403"),
    pytest.param(404, {"error": "no such task"}, {}, NotFoundError, id="404"),
    pytest.param(408, {}, {}, RequestTimeoutError, id="408"),
    pytest.param(429, {"message": "slow down"}, LONG_WAIT, RateLimitError, id="429"),
    pytest.param(500, {}, {}, ServerError, id="500"),
    pytest.param(502, HTML_PAGE, {}, ServerError, id="502-html"),
    pytest.param(503, "", {}, ServerError, id="503-empty"),
    pytest.param(504, {}, {}, ServerError, id="504"),
    pytest.param(418, {"message": "teapot"}, {}, ClientError, id="418-unexpected"),
    pytest.param(409, {}, {}, ClientError, id="409-unexpected"),
    pytest.param(
        402, {"errors": [{"msg": "Not enough credits"}]}, {}, InsufficientCreditsError, id="402"
    ),
    pytest.param(301, "", {}, ServerError, id="301-unexpected"),
]


def reply(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    """A response with `body` as JSON, or as text when it is a str."""
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def mock(api: respx.MockRouter, endpoint: Endpoint, response: httpx.Response) -> respx.Route:
    """Route the endpoint's method and path to `response`."""
    method, path, _, _ = endpoint
    return api.route(method=method, path=path).mock(return_value=response)


async def raised(client: AsyncApiframe, endpoint: Endpoint) -> ApiframeError:
    """The ApiframeError the endpoint's call raises (anything else fails the test)."""
    with pytest.raises(ApiframeError) as info:
        await endpoint[2](client)
    return info.value


# --- status codes -------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("status", "body", "headers", "expected"), STATUSES)
async def test_status_maps_to_typed_error_with_context(
    client: AsyncApiframe,
    api: respx.MockRouter,
    *,
    endpoint: Endpoint,
    status: int,
    body: object,
    headers: dict[str, str],
    expected: type[APIStatusError],
) -> None:
    """Each status raises its own error, carrying status, method, url, body and task id."""
    response = reply(status, body, headers)
    mock(api, endpoint, response)
    error = await raised(client, endpoint)
    method, path, _, task_id = endpoint
    assert type(error) is expected
    assert isinstance(error, APIStatusError)
    assert error.status_code == status
    assert error.method == method
    assert error.url == BASE_URL + path
    assert error.body == response.text
    assert error.task_id == task_id
    assert str(status) in str(error)
    assert path in str(error)


@pytest.mark.anyio
async def test_bad_request_keeps_server_messages(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """A 400's errors[] are kept whole in .errors, their msg in .messages and in the text."""
    items = [{"msg": "Invalid request"}, {"msg": "x", "path": "prompt"}]
    route = api.post("/ai-photo-generate").mock(return_value=reply(400, {"errors": items}))
    with pytest.raises(BadRequestError) as info:
        await _generate(client)
    error = info.value
    assert error.messages == ("Invalid request", "x")
    assert error.errors == tuple(items)
    assert "Invalid request; x" in str(error)
    assert route.call_count == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "messages"),
    [
        pytest.param(HTML_PAGE, ("Bad Request",), id="html"),
        pytest.param("", ("Bad Request",), id="empty"),
        pytest.param({"errors": "oops"}, ("Bad Request",), id="errors-not-a-list"),
        pytest.param({"errors": [1, "x", None]}, ("Bad Request",), id="items-not-objects"),
        pytest.param({"errors": [{"msg": 5}]}, ("5",), id="msg-not-a-string"),
        pytest.param({"message": "prompt too long"}, ("prompt too long",), id="message-only"),
    ],
)
async def test_bad_request_tolerates_any_body(
    client: AsyncApiframe, api: respx.MockRouter, body: object, messages: tuple[str, ...]
) -> None:
    """A 400 of any shape is still a BadRequestError with at least one message."""
    api.post("/ai-photo-generate").mock(return_value=reply(400, body))
    with pytest.raises(BadRequestError) as info:
        await _generate(client)
    assert info.value.messages == messages


@pytest.mark.anyio
async def test_unauthorized_empty_object(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """The documented 401 `{}` is an AuthenticationError saying 401."""
    api.get("/account").mock(return_value=reply(401, {}))
    with pytest.raises(AuthenticationError) as info:
        await _account(client)
    assert str(info.value) == f"401 Unauthorized (GET {BASE_URL}/account)"


def _http_date(seconds_from_now: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return email.utils.format_datetime(when, usegmt=True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        pytest.param(lambda: "120", 120.0, 120.0, id="seconds"),
        pytest.param(lambda: "90.5", 90.5, 90.5, id="fractional-seconds"),
        pytest.param(lambda: _http_date(125), 110.0, 125.0, id="http-date"),
    ],
)
async def test_rate_limit_reads_retry_after(
    client: AsyncApiframe,
    api: respx.MockRouter,
    header: Callable[[], str],
    low: float,
    high: float,
) -> None:
    """Retry-After, as seconds or as an HTTP date, becomes retry_after in seconds."""
    # The date is made when the test runs, not when the module is collected.
    api.post("/fetch").mock(return_value=reply(429, {}, {"Retry-After": header()}))
    with pytest.raises(RateLimitError) as info:
        await _fetch(client)
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high
    assert "retry after" in str(info.value)


@pytest.mark.anyio
async def test_rate_limit_without_retry_after(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """A 429 without Retry-After has retry_after None."""
    api.post("/fetch").mock(return_value=reply(429, {}))
    with pytest.raises(RateLimitError) as info:
        await _fetch(client)
    assert info.value.retry_after is None


@pytest.mark.anyio
async def test_huge_error_page_is_cut(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """A megabyte error page is kept as its first 500 characters and a note of the rest."""
    page = "<html>" + "x" * 200_000 + "</html>"
    api.post("/ai-photo-generate").mock(return_value=reply(502, page))
    with pytest.raises(ServerError) as info:
        await _generate(client)
    body = info.value.body
    assert body.startswith(page[:500])
    assert len(body) < 600
    assert f"{len(page) - 500} more characters" in body
    assert len(str(info.value)) < 1000


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("", id="empty"),
        pytest.param(HTML_PAGE, id="html"),
        pytest.param("null", id="json-null"),
        pytest.param("[1, 2]", id="json-list"),
        pytest.param('{"errors": [', id="truncated"),
        pytest.param('"just a string"', id="json-string"),
    ],
)
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(403, PermissionDeniedError, id="403"),
        pytest.param(404, NotFoundError, id="404"),
        pytest.param(500, ServerError, id="500"),
        pytest.param(502, ServerError, id="502"),
    ],
)
async def test_any_error_body_still_gives_the_typed_error(
    client: AsyncApiframe,
    api: respx.MockRouter,
    body: str,
    status: int,
    expected: type[APIStatusError],
) -> None:
    """HTML pages, empty and broken bodies do not change which error the status gives."""
    api.post("/ai-photo-generate").mock(return_value=reply(status, body))
    with pytest.raises(expected) as info:
        await _generate(client)
    assert info.value.status_code == status
    assert info.value.body == body


@pytest.mark.anyio
async def test_undecodable_error_body(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """An error body that is not valid UTF-8 still gives the typed error."""
    api.post("/fetch").mock(return_value=httpx.Response(404, content=b"\xff\xfe\x00oops"))
    with pytest.raises(NotFoundError) as info:
        await _fetch(client)
    assert info.value.status_code == 404


# --- successful statuses with unusable bodies ---------------------------------------------

BAD_SUCCESS_BODIES = [
    pytest.param("<html><body>Welcome to nginx!</body></html>", id="html"),
    pytest.param("", id="empty"),
    pytest.param('{"task_id": "x"', id="truncated-json"),
    pytest.param('[{"task_id": "x"}]', id="json-list"),
    pytest.param("null", id="json-null"),
    pytest.param("42", id="json-number"),
    pytest.param('"ok"', id="json-string"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body", BAD_SUCCESS_BODIES)
async def test_unusable_success_body_is_a_response_validation_error(
    client: AsyncApiframe, api: respx.MockRouter, endpoint: Endpoint, body: str | bytes
) -> None:
    """A 200 that is not a JSON object of the right shape raises ResponseValidationError once."""
    response = httpx.Response(200, content=body.encode() if isinstance(body, str) else body)
    route = mock(api, endpoint, response)
    with pytest.raises(ResponseValidationError) as info:
        await endpoint[2](client)
    error = info.value
    assert not isinstance(error, ValueError | KeyError | TypeError | json.JSONDecodeError)
    assert error.problems
    assert all(problem.startswith("$") for problem in error.problems)
    assert route.call_count == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("<html></html>", id="not-json"),
        pytest.param("[]", id="json-list"),
        pytest.param('{"task_id": 5, "status": "finished"}', id="wrong-type"),
    ],
)
async def test_response_validation_error_names_the_request(
    client: AsyncApiframe, api: respx.MockRouter, body: str
) -> None:
    """Whatever is wrong with a reply, the error says which request it answered."""
    api.post("/fetch").mock(return_value=httpx.Response(200, text=body))
    with pytest.raises(ResponseValidationError) as info:
        await _fetch(client)
    assert info.value.method == "POST"
    assert info.value.url == f"{BASE_URL}/fetch"
    assert info.value.body == body


# --- transport failures -------------------------------------------------------------------

TRANSPORT_FAILURES = [
    pytest.param(httpx.ConnectError, APIConnectionError, False, id="ConnectError"),
    pytest.param(httpx.ConnectTimeout, APITimeoutError, False, id="ConnectTimeout"),
    pytest.param(httpx.PoolTimeout, APITimeoutError, False, id="PoolTimeout"),
    pytest.param(httpx.UnsupportedProtocol, APIConnectionError, False, id="UnsupportedProtocol"),
    pytest.param(httpx.ReadTimeout, APITimeoutError, True, id="ReadTimeout"),
    pytest.param(httpx.WriteTimeout, APITimeoutError, True, id="WriteTimeout"),
    pytest.param(httpx.ReadError, APIConnectionError, True, id="ReadError"),
    pytest.param(httpx.WriteError, APIConnectionError, True, id="WriteError"),
    pytest.param(httpx.RemoteProtocolError, APIConnectionError, True, id="RemoteProtocolError"),
    # httpx raises it only while the proxy connection is set up (CONNECT, SOCKS handshake).
    pytest.param(httpx.ProxyError, APIConnectionError, False, id="ProxyError"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("failure", "expected", "submitted"), TRANSPORT_FAILURES)
async def test_transport_failures_are_translated(
    client: AsyncApiframe,
    api: respx.MockRouter,
    *,
    endpoint: Endpoint,
    failure: type[httpx.TransportError],
    expected: type[APIConnectionError],
    submitted: bool,
) -> None:
    """No httpx exception escapes: each becomes our error, chained, saying if it may have landed."""
    method, path, call, _ = endpoint
    api.route(method=method, path=path).mock(side_effect=failure)
    with pytest.raises(APIConnectionError) as info:
        await call(client)
    error = info.value
    assert type(error) is expected
    assert isinstance(error, TimeoutError) is (expected is APITimeoutError)
    assert error.may_have_been_submitted is submitted
    assert error.method == method
    assert error.url == BASE_URL + path
    assert isinstance(error.__cause__, failure)


@pytest.mark.anyio
# httpx leaves its body iterators unfinished when decoding fails; trio reports that as a
# ResourceWarning at garbage collection. That is httpx's, not what this test is about.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_undecodable_content_encoding_is_translated(
    client: AsyncApiframe, api: respx.MockRouter, endpoint: Endpoint
) -> None:
    """A reply whose gzip body is corrupt raises our error (not httpx.DecodingError), once."""
    method, path, call, _ = endpoint

    def corrupt_gzip(_: httpx.Request) -> httpx.Response:
        # `stream=` so that the body is decoded by the client, not here.
        stream = httpx.ByteStream(b"this is not gzip")
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=stream)

    route = api.route(method=method, path=path).mock(side_effect=corrupt_gzip)
    with pytest.raises(ApiframeError):
        await call(client)
    if path == "/ai-photo-generate":
        assert route.call_count == 1


# --- parse_retry_after --------------------------------------------------------------------

NOW = dt.datetime(2015, 10, 21, 7, 27, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 7 ", 7.0, id="padded"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("0.25", 0.25, id="float"),
        pytest.param("-3", 0.0, id="negative-is-now"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 30.0, id="date-ahead"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 +0000", 30.0, id="date-numeric-zone"),
        pytest.param("Wed, 21 Oct 2015 07:28:00", 30.0, id="date-without-zone-is-utc"),
        pytest.param("Wed, 21 Oct 2015 07:00:00 GMT", 0.0, id="date-in-the-past"),
        pytest.param("garbage", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
        pytest.param("nan", None, id="nan"),
        pytest.param("12 seconds", None, id="unit"),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Retry-After as delta-seconds or HTTP date gives seconds >= 0; anything else None."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_retry_after_uses_the_clock_by_default() -> None:
    """Without `now`, an HTTP date is measured from the current time."""
    seconds = parse_retry_after(_http_date(60))
    assert seconds is not None
    assert 55.0 <= seconds <= 60.0


@pytest.mark.anyio
async def test_402_carries_the_servers_words(api: respx.MockRouter, client: AsyncApiframe) -> None:
    """A 402 is InsufficientCreditsError with the server's errors[].msg; never a ServerError."""
    body = {"errors": [{"msg": "Not enough credits: 1 needed, 0 left"}]}
    api.post("/ai-photo-generate").mock(return_value=httpx.Response(402, json=body))
    with pytest.raises(InsufficientCreditsError) as info:
        await client.generate(training_id="train-1", prompt="TOKMSN man")
    assert info.value.messages == ("Not enough credits: 1 needed, 0 left",)
    assert "Not enough credits" in str(info.value)
    assert not isinstance(info.value, ServerError)
