"""The one I/O seam: a JSON request to an endpoint, and its reply or our typed error.

Everything around it (validation, the wire format, retry decisions) is pure. Here live the
three things every request shares, whichever entry point sent it: the API key header, the
client-wide concurrency limit, and the pause every request honours after a 429 with
`Retry-After`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio
import attrs
import httpx

from ._errors import APIConnectionError, ApiframeError, APITimeoutError, ResponseValidationError
from ._observe import Exchange, outcome_uncertain, warn_uncertain
from ._retry import RetryPolicy, call_with_retries
from ._secrets import Redactor
from ._status import status_error

logger = logging.getLogger("apiframe_async")

T = TypeVar("T")

#: A per-call timeout: seconds for every phase, an `httpx.Timeout`, or None for the client's.
TimeoutTypes = float | httpx.Timeout | None

# Failures that prove no byte of the request reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


_PUSHBACK_STATUSES = frozenset({429, 503})


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
    ) -> None:
        """Bind the seam to a client; `api_key` goes only into the `Authorization` header.

        `own_transport` is the transport of a client we made ourselves: requests then go
        straight to it. A client made elsewhere is used through its `send()`, so its
        hooks, mounts, proxies and headers all apply.
        """
        self._client = http_client
        self._transport = own_transport
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self.retry = retry
        self.max_concurrency = max_concurrency
        self._headers = {
            "Authorization": api_key,
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        self._urls: dict[str, httpx.URL] = {}
        #: Cleans error text of the key and of every webhook secret the client sends: a
        #: server that quotes them back must not put them in our errors.
        self.secrets = Redactor(api_key)
        self._redact = self.secrets
        self._limiter: anyio.Semaphore | None = None
        # What httpx would merge into each request of our own client, merged once.
        direct = {**self._headers, "Accept-Encoding": "gzip, deflate"}
        self._direct_headers = httpx.Headers(direct)
        self._direct_json_headers = httpx.Headers({**direct, "Content-Type": "application/json"})
        self._timeouts = timeout.as_dict()
        self._resume_at = 0.0
        #: 429 and 503 answers seen so far: bulk jobs read it to sense server pressure,
        #: including answers that a retry then got past.
        self.pushbacks = 0

    def __repr__(self) -> str:
        """Name the server, never the key."""
        return f"<Sender {self._base_url}>"

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

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
        retry: RetryPolicy | None = None,
    ) -> Reply:
        """Send `body` to `endpoint` with the retry rules (this sender's by default)."""
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else None

        attempts = 0

        async def attempt() -> Reply:
            nonlocal attempts
            attempts += 1
            return await self.send_once(
                endpoint, content, timeout=timeout, task_id=task_id, attempt=attempts
            )

        try:
            return await call_with_retries(retry or self.retry, attempt, paid=endpoint.paid)
        except ApiframeError as exc:
            if endpoint.paid and outcome_uncertain(exc):
                warn_uncertain(endpoint.method, endpoint.path, exc)
            raise

    async def send_once(
        self,
        endpoint: Endpoint,
        content: bytes | None,
        *,
        timeout: TimeoutTypes = None,
        task_id: str | None = None,
        attempt: int = 1,
    ) -> Reply:
        """One attempt, no retry: wait out any 429 pause, then send within the limit."""
        await self._wait_for_rate_limit()
        request = self._build(endpoint, content, timeout)
        method, url = endpoint.method, str(request.url)
        async with self.limiter:
            # The DEBUG record and the CLIENT span of this attempt.
            with Exchange(
                method, endpoint.path, request.url, attempt=attempt, task_id=task_id
            ) as seen:
                try:
                    response = await self._send(request)
                except httpx.HTTPError as exc:
                    raise translated(exc, method=method, url=url) from exc
                seen.response = response
        if response.is_success:
            return Reply(_decode(response, method, url, self._redact), response, self._redact)
        error = status_error(response, method=method, url=url, task_id=task_id, redact=self._redact)
        if response.status_code in _PUSHBACK_STATUSES:
            self.pushbacks += 1
            self._pause_for(error.retry_after)
        raise error

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._base_url + path)
        return url

    def _build(
        self,
        endpoint: Endpoint,
        content: bytes | None,
        timeout: TimeoutTypes,
    ) -> httpx.Request:
        if self._transport is not None:
            # Our own client: nothing of its configuration is left to merge in.
            return httpx.Request(
                endpoint.method,
                self._url(endpoint.path),
                headers=self._direct_headers if content is None else self._direct_json_headers,
                content=content,
                extensions={
                    "timeout": self._timeouts
                    if timeout is None
                    else httpx.Timeout(timeout).as_dict()
                },
            )
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

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            return await self._client.send(request)
        # Our own client has no hooks, auth flows, redirects or cookies to go through:
        # httpx's send() would cost as much again as the transport does.
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _pause_for(self, retry_after: float | None) -> None:
        if retry_after and math.isfinite(retry_after) and retry_after <= self.retry.max_retry_after:
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after)

    async def _wait_for_rate_limit(self) -> None:
        # A 429 with Retry-After holds back every request of this client, not only the one
        # that got it: the server's limit is per key, so everyone else would get 429 too.
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)


def translated(exc: httpx.HTTPError, *, method: str, url: str) -> ApiframeError:
    """Our error for an httpx failure, saying whether the request may have gone out."""
    sent = not isinstance(exc, _NOT_SENT)
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"timed out: {type(exc).__name__}", method=method, url=url, may_have_been_submitted=sent
        )
    if isinstance(exc, httpx.DecodingError):
        return ResponseValidationError(
            [f"$: the body could not be decoded ({exc})"], body="", method=method, url=url
        )
    # A transport error, or anything else httpx may add: unless it proves the request never
    # left, it may have reached the server.
    return APIConnectionError(
        f"connection failed: {type(exc).__name__}: {exc}",
        method=method,
        url=url,
        may_have_been_submitted=sent,
    )


def _decode(response: httpx.Response, method: str, url: str, redact: Callable[[str], str]) -> Any:  # noqa: ANN401
    try:
        return json.loads(response.content)
    except ValueError as exc:
        problem = "empty body" if not response.content else f"not JSON ({exc})"
        content_type = response.headers.get("content-type", "none")
        raise ResponseValidationError(
            [f"$: {problem}, content-type {content_type}"],
            body=redact(response.text),
            method=method,
            url=url,
        ) from exc
