"""The one I/O seam: a JSON request to an endpoint, and its reply or our typed error.

Everything around it (validation, the wire format, retry decisions) is pure. Here live the
three things every request shares, whichever entry point sent it: the API key header, the
client-wide concurrency limit (its wait bounded by the `pool` timeout), and the pause that
every request honours when the server's pushback is broad.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import attrs
import httpx

from ._charges import Charge, charge_of
from ._errors import (
    APIConnectionError,
    ApiframeError,
    APITimeoutError,
    ClientClosedError,
    ResponseValidationError,
)
from ._observe import Exchange, warn_uncertain
from ._pause import Pause
from ._replies import ACCEPT_ENCODING, DEFAULT_MAX_RESPONSE_BYTES, read_reply
from ._retry import RetryPolicy, call_with_retries
from ._secrets import Redactor
from ._status import status_error
from ._transport import HeadedRequest, asks_close, request_head_of

logger = logging.getLogger("apiframe_async")

T = TypeVar("T")

#: A per-call timeout: seconds for every phase, an `httpx.Timeout`, or None for the client's.
TimeoutTypes = float | httpx.Timeout | None

# Failures that prove no byte of the request reached the server. A proxy that refuses the
# tunnel (ProxyError) does so before any byte of the request goes in.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)

#: Called once per attempt, right before its bytes leave (a journal marks it in flight).
BeforeSend = Callable[[], Awaitable[None]]

_PUSHBACK_STATUSES = frozenset({429, 503})
# Request heads kept ready for this many endpoints and body sizes, at most.
_MAX_PREPARED = 512
_NO_BODY = httpx.ByteStream(b"")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# One encoder for every body: json.dumps() with options makes a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"))


@attrs.frozen
class Endpoint:
    """One API endpoint, and whether its work costs money (then it is never resent blindly)."""

    method: str
    path: str
    paid: bool


GENERATE: Final = Endpoint("POST", "/ai-photo-generate", paid=True)
UPLOAD: Final = Endpoint("POST", "/ai-photo-upload", paid=True)
TRAIN: Final = Endpoint("POST", "/ai-photo-train", paid=True)
FETCH: Final = Endpoint("POST", "/fetch", paid=False)
FETCH_MANY: Final = Endpoint("POST", "/fetch-many", paid=False)
ACCOUNT: Final = Endpoint("GET", "/account", paid=False)


class _DirectRequest(HeadedRequest):
    """An `httpx.Request` of our own client, made from parts its `Sender` prepared once.

    `httpx.Request()` wraps the URL again, rebuilds and searches the headers and encodes
    the body, and the transport then writes the head out of the headers: for a request
    whose every part is already final that was a sixth of the CPU the request costs. The
    result is the same: the attributes `httpx.Request` documents, its own copy of the
    headers, and the body read, as `content=` would have it.
    """

    # Sets every attribute httpx.Request.__init__ sets, without calling it.
    def __init__(
        self,
        method: str,
        url: httpx.URL,
        prepared: _Prepared,
        content: bytes,
        timeouts: dict[str, float | None],
    ) -> None:
        self.method = method
        self.url = url
        self.headers = httpx.Headers(prepared.headers)
        self.extensions = {"timeout": timeouts}
        self.stream = httpx.ByteStream(content)
        # What read() would store, without its isinstance check against typing.Iterable.
        self._content = content
        self.head = prepared.head
        self.asks_close = prepared.asks_close


@attrs.frozen
class _Prepared:
    """What every request to one endpoint with a body of one size shares."""

    headers: httpx.Headers
    head: bytes
    asks_close: bool


@attrs.frozen
class Reply:
    """A successful reply: the decoded JSON, and the response it came from."""

    data: Any
    response: httpx.Response
    redact: Callable[[str], str] = lambda text: text

    @property
    def text(self) -> str:
        """The body as text, cleaned of secrets, for the context of an error found later."""
        return self.redact(self.response.text)

    def parse(self, parse: Callable[[Any], T]) -> T:
        """`parse(data)`, with the request named in any `ResponseValidationError`."""
        try:
            return parse(self.data)
        except ResponseValidationError as exc:
            request = self.response.request
            raise ResponseValidationError(
                exc.problems, body=self.text, method=request.method, url=str(request.url)
            ) from exc.__cause__
        except RecursionError as exc:  # JSON nested deeper than any reply of the API
            request = self.response.request
            raise ResponseValidationError(
                ["$: nested too deeply"], body="", method=request.method, url=str(request.url)
            ) from exc


class Sender:
    """Sends JSON requests through one `httpx.AsyncClient` with auth, limits and retries."""

    def __init__(
        self,
        http_client: httpx.AsyncClient,
        *,
        api_key: str,
        base_url: str,
        timeout: httpx.Timeout,
        retry: RetryPolicy,
        max_concurrency: int,
        user_agent: str,
        own_transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Bind the seam to a client; `api_key` goes only into the `Authorization` header.

        `own_transport` is the transport of a client we made ourselves: requests then go
        straight to it. A client made elsewhere is used through its `send()`, so its
        hooks, mounts, proxies and headers all apply. Replies over `max_response_bytes`,
        as sent or decoded, are refused while they stream.
        """
        self._client = http_client
        self._transport = own_transport
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self.retry = retry
        self.max_concurrency = max_concurrency
        self.max_response_bytes = max_response_bytes
        self._headers = {
            "Authorization": api_key,
            "Accept": "application/json",
            # Only what we decode within the reply limit, on a borrowed client too.
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": user_agent,
        }
        # Per path: its URL, and that URL's text, which errors and logs name.
        self._urls: dict[str, tuple[httpx.URL, str]] = {}
        #: Cleans error text of the key and of every webhook secret the client sends: a
        #: server that quotes them back must not put them in our errors.
        self.secrets = Redactor(api_key)
        self._redact = self.secrets
        self._limiter: anyio.Semaphore | None = None
        # What httpx would merge into each request of our own client, merged once; Host
        # first, where httpx puts it.
        direct = {"Host": httpx.URL(self._base_url).netloc.decode("ascii"), **self._headers}
        self._direct_headers = httpx.Headers(direct)
        self._direct_json_headers = httpx.Headers({**direct, "Content-Type": "application/json"})
        self._prepared: dict[tuple[Endpoint, int], _Prepared] = {}
        self._timeouts = timeout.as_dict()
        self._pause = Pause(max_wait=retry.max_retry_after)
        self._closed = False

    def __repr__(self) -> str:
        """Name the server, never the key."""
        return f"<Sender {self._base_url}>"

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    @property
    def closed(self) -> bool:
        """Whether requests are refused: `close()` was called, or the httpx client closed."""
        return self._closed or self._client.is_closed

    def close(self) -> None:
        """Refuse every request from now on."""
        self._closed = True

    @property
    def limiter(self) -> anyio.Semaphore:
        """The client-wide bound on requests in flight, shared by every entry point."""
        # Created on first use: anyio primitives belong to the running event loop. No
        # checkpoint when a slot is free: the request itself is one.
        if self._limiter is None:
            self._limiter = anyio.Semaphore(self.max_concurrency, fast_acquire=True)
        return self._limiter

    async def call(
        self,
        endpoint: Endpoint,
        body: object = None,
        *,
        timeout: TimeoutTypes = None,
        task_id: str | None = None,
        before_send: BeforeSend | None = None,
        retry: RetryPolicy | None = None,
        retry_pushback: bool = True,
    ) -> Reply:
        """Send `body` to `endpoint` with the retry rules (this sender's by default).

        `before_send` is awaited before each attempt's bytes leave, once its slot is held.
        `retry_pushback=False` leaves a 429 or 503 to the caller, who re-runs the request
        itself (a bulk job does, without holding its slot while it waits).
        """
        content = _JSON.encode(body).encode() if body is not None else None
        send = functools.partial(
            self.send_once,
            endpoint,
            content,
            timeout=timeout,
            task_id=task_id,
            before_send=before_send,
        )
        try:
            return await call_with_retries(
                retry or self.retry, send, paid=endpoint.paid, retry_pushback=retry_pushback
            )
        except ApiframeError as exc:
            if endpoint.paid and charge_of(exc) is Charge.UNCERTAIN:
                warn_uncertain(endpoint.method, endpoint.path, exc)
            raise

    async def send_once(
        self,
        endpoint: Endpoint,
        content: bytes | None,
        attempt: int = 1,
        *,
        timeout: TimeoutTypes = None,
        task_id: str | None = None,
        before_send: BeforeSend | None = None,
    ) -> Reply:
        """Attempt number `attempt`, not retried: take a slot, wait out any pause, then send."""
        if self.closed:
            raise ClientClosedError(
                f"cannot send {endpoint.method} {endpoint.path}: the client is closed; "
                "nothing was sent"
            )
        request = self._build(endpoint, content, timeout)
        method, url = endpoint.method, self._url_text(endpoint.path)
        await self._acquire_slot(timeout, method, url)
        try:
            # After the slot is held, right before bytes go out: a pause that began while
            # this request waited for its slot holds it back too.
            ticket = await self._pause.wait()
            if before_send is not None:
                # Last thing before the bytes go: what it marks in flight may really be.
                await before_send()
            # The DEBUG record and the CLIENT span of this attempt.
            with Exchange(
                method, endpoint.path, request.url, attempt=attempt, task_id=task_id
            ) as seen:
                try:
                    response = await self._send(request, method, url)
                except httpx.HTTPError as exc:
                    raise translated(exc, method=method, url=url) from exc
                seen.response = response
            # Counted while this slot is held: once released, a waiting request takes it.
            in_flight = self.max_concurrency - self.limiter.value
        finally:
            self.limiter.release()
        if response.status_code not in _PUSHBACK_STATUSES:
            self._pause.answered()
        if response.is_success:
            return Reply(_decode(response, method, url, self._redact), response, self._redact)
        error = status_error(response, method=method, url=url, task_id=task_id, redact=self._redact)
        if response.status_code in _PUSHBACK_STATUSES:
            self._pause.pushed_back(error.retry_after, ticket=ticket, in_flight=in_flight)
        raise error

    async def _acquire_slot(self, timeout: TimeoutTypes, method: str, url: str) -> None:
        """A slot of the client-wide limit, waited for at most the `pool` timeout."""
        try:
            self.limiter.acquire_nowait()  # a free slot: no cancel scope to pay for
        except anyio.WouldBlock:
            pool = self._timeout.pool if timeout is None else httpx.Timeout(timeout).pool
            with anyio.move_on_after(math.inf if pool is None else pool):
                await self.limiter.acquire()
                return
            raise APITimeoutError(
                f"timed out: no free slot of max_concurrency={self.max_concurrency} "
                f"within the pool timeout ({pool:g} s); nothing was sent",
                method=method,
                url=url,
                may_have_been_submitted=False,
            ) from None

    def _url(self, path: str) -> httpx.URL:
        return self._url_and_text(path)[0]

    def _url_text(self, path: str) -> str:
        return self._url_and_text(path)[1]

    def _url_and_text(self, path: str) -> tuple[httpx.URL, str]:
        cached = self._urls.get(path)
        if cached is None:
            # Absolute, so httpx merges no base URL into it: the request's URL is this one.
            url = httpx.URL(self._base_url + path)
            cached = self._urls[path] = (url, str(url))
        return cached

    def _build(
        self,
        endpoint: Endpoint,
        content: bytes | None,
        timeout: TimeoutTypes,
    ) -> httpx.Request:
        if self._transport is not None:
            return self._direct_request(endpoint, content, timeout)
        headers = self._headers
        if content is not None:
            headers = {**headers, "Content-Type": "application/json"}
        return self._client.build_request(
            endpoint.method,
            self._url(endpoint.path),
            content=content,
            headers=headers,
            timeout=self._timeout if timeout is None else timeout,
        )

    def _direct_request(
        self, endpoint: Endpoint, content: bytes | None, timeout: TimeoutTypes
    ) -> httpx.Request:
        # Our own client: nothing of its configuration is left to merge in, and the
        # headers httpx would add (Host, Content-Length) are ours to add.
        timeouts = self._timeouts if timeout is None else httpx.Timeout(timeout).as_dict()
        url = self._url(endpoint.path)
        # Bodies of one kind come in few sizes: each size's headers and head are made once.
        key = (endpoint, -1 if content is None else len(content))
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= _MAX_PREPARED:
                self._prepared.clear()
            prepared = self._prepared[key] = self._prepare(endpoint, url, content)
        return _DirectRequest(endpoint.method, url, prepared, content or b"", timeouts)

    def _prepare(self, endpoint: Endpoint, url: httpx.URL, content: bytes | None) -> _Prepared:
        headers = self._direct_headers
        if content is not None:
            headers = httpx.Headers(self._direct_json_headers)
            headers["Content-Length"] = str(len(content))
        elif endpoint.method in _BODY_METHODS:  # as httpx.Request: a bodiless POST says so
            headers = httpx.Headers(headers)
            headers["Content-Length"] = "0"
        # Given a stream, httpx.Request adds no header of its own: the head is these headers.
        sample = httpx.Request(endpoint.method, url, headers=headers, stream=_NO_BODY)
        head = request_head_of(sample)
        return _Prepared(headers, head, asks_close(head))

    async def _send(self, request: httpx.Request, method: str, url: str) -> httpx.Response:
        if self._transport is None:
            response = await self._client.send(request, stream=True)
        else:
            # Our own client has no hooks, auth flows, redirects or cookies to go through:
            # httpx's send() would cost as much again as the transport does.
            response = await self._transport.handle_async_request(request)
            response.request = request
        try:
            await read_reply(response, self.max_response_bytes, method=method, url=url)
        finally:
            await response.aclose()
        return response


def translated(exc: httpx.HTTPError, *, method: str, url: str) -> ApiframeError:
    """Our error for an httpx failure, saying whether the request may have gone out."""
    sent = not isinstance(exc, _NOT_SENT)
    unsent = "" if sent else "; nothing was sent"
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"timed out: {type(exc).__name__}{unsent}",
            method=method,
            url=url,
            may_have_been_submitted=sent,
        )
    if isinstance(exc, httpx.DecodingError):
        return ResponseValidationError(
            [f"$: the body could not be decoded ({exc})"], body="", method=method, url=url
        )
    # A transport error, or anything else httpx may add: unless it proves the request never
    # left, it may have reached the server.
    return APIConnectionError(
        f"connection failed: {type(exc).__name__}: {exc}{unsent}",
        method=method,
        url=url,
        may_have_been_submitted=sent,
    )


def _decode(response: httpx.Response, method: str, url: str, redact: Callable[[str], str]) -> Any:  # noqa: ANN401
    try:
        return json.loads(response.content)
    except RecursionError as exc:
        raise ResponseValidationError(
            ["$: JSON nested too deeply"], body="", method=method, url=url
        ) from exc
    except ValueError as exc:
        problem = "empty body" if not response.content else f"not JSON ({exc})"
        content_type = response.headers.get("content-type", "none")
        raise ResponseValidationError(
            [f"$: {problem}, content-type {content_type}"],
            body=redact(response.text),
            method=method,
            url=url,
        ) from exc
