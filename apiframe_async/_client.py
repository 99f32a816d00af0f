"""`AsyncApiframe`: the client, an async context manager around one `httpx.AsyncClient`."""

from __future__ import annotations

import copy
import functools
import ipaddress
import os
import ssl
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from importlib.metadata import version
from types import TracebackType
from typing import Any, Self, get_args, overload

import anyio
import attrs
import httpx

from ._addresses import trust_local_origin
from ._budget import Budget, check_max_credits
from ._errors import (
    ApiframeError,
    ClientClosedError,
    NotFoundError,
    RequestValidationError,
    ResponseValidationError,
    TaskFailedError,
    TaskPollError,
    TaskWaitError,
)
from ._fanout import BulkJob, Outcome, Progress, RequestLike, Work, as_request
from ._http import (
    ACCOUNT,
    FETCH,
    FETCH_MANY,
    GENERATE,
    TRAIN,
    UPLOAD,
    BeforeSend,
    Endpoint,
    Reply,
    Sender,
    TimeoutTypes,
)
from ._images import DEFAULT_MAX_IMAGE_BYTES, ImageSource, encode_images
from ._journal import Journal, JournaledWork, ReplayPolicy, Submit, UncertainPolicy
from ._models import (
    MIN_IMAGES,
    Account,
    AspectRatio,
    Ethnicity,
    Gender,
    GenerateRequest,
    Generation,
    SubmittedTask,
    Task,
    TaskBatch,
    TrainRequest,
    UploadRequest,
)
from ._network import checked_proxy, checked_verify
from ._observe import operation, set_task_id
from ._replies import DEFAULT_MAX_RESPONSE_BYTES
from ._retry import RetryPolicy, pushback_wait
from ._routing import RoutingTransport
from ._settings import checked_api_key, checked_count, checked_timeout
from ._waiting import Poller, PollPolicy, checked
from ._webhooks import WebhookReceiver
from ._wire import Wire

#: The most ids one `/fetch-many` request takes.
FETCH_MANY_LIMIT = 20

DEFAULT_BASE_URL = "https://api.apiframe.pro"

#: A synchronous generation keeps the request open while the photos are made, so the read
#: timeout is minutes; connecting is quick or it is not happening.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=360.0, write=60.0, pool=60.0)

#: Requests in flight at once across every entry point of one client.
DEFAULT_MAX_CONCURRENCY = 64

_USER_AGENT = f"apiframe-async/{version('apiframe-async')} httpx/{httpx.__version__}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_base_url(base_url: str, *, allow_insecure: bool) -> str:
    try:
        url = httpx.URL(base_url)
        port = url.port  # httpx checks the port's range only when it is read
    except (httpx.InvalidURL, ValueError):
        url, port = httpx.URL(), None
    if url.scheme not in ("http", "https") or not url.host or not 0 < (port or 1) < 65536:  # noqa: PLR2004
        raise RequestValidationError(
            "base_url", f"{base_url!r} is not an http(s) URL", allowed="https://host[/path]"
        )
    if url.scheme == "http" and not allow_insecure and not _is_loopback(url.host):
        raise RequestValidationError(
            "base_url",
            f"{base_url!r} would send the API key unencrypted",
            allowed="https URLs, http on loopback, or allow_insecure=True",
        )
    return base_url


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: the API sets no cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing."""


class _ApiHttpClient(httpx.AsyncClient):
    """The `httpx.AsyncClient` we create: httpx's own, minus the cookie jar.

    Reading each response's cookies is half of what `httpx.AsyncClient.send` costs per
    request, for an API that sets none. A client you pass in is used as it is.
    """

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        """An empty jar that stays empty."""
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise TypeError("the APIFRAME client keeps no cookies")


class AsyncApiframe:
    """The APIFRAME AI Photos client. Use it as an async context manager.

    It owns one `httpx.AsyncClient`, or borrows the one you pass (and then leaves it open).
    Every request it sends, from any method, shares one concurrency limit, one retry policy
    and the pause a 429 asks for.

    Example:
        ```python
        async with AsyncApiframe() as client:  # the key from APIFRAME_API_KEY
            gen = await client.generate(
                training_id="3492deb6-...", prompt="a portrait of TOKMSN man in a suit"
            )
            print(gen.image_urls)
        ```

    Args:
        api_key: The APIFRAME key; defaults to `$APIFRAME_API_KEY`. Sent raw in the
            `Authorization` header, never logged, never in a repr or an error.
        base_url: Defaults to the borrowed client's base URL, then to
            `$APIFRAME_BASE_URL`, then to `https://api.apiframe.pro`. Plain http is
            refused except on loopback, unless `allow_insecure=True`.
        timeout: Seconds for every phase, or an `httpx.Timeout`. The default allows six
            minutes for the reply, since a generation answers only when it is done.
        max_retries: Retries per request (see `RetryPolicy` for what is retried).
        retry: The whole retry policy; `max_retries`, when given, overrides its count.
        poll: How tasks are polled while they run.
        max_concurrency: Requests in flight at once, across every entry point.
        http_client: An `httpx.AsyncClient` to use instead of our own; keep its connection
            limit at or above `max_concurrency`, or requests queue in its pool. It keeps
            its own proxy and certificate settings: `proxy`, `verify` and `trust_env`
            cannot be combined with it.
        webhooks: A `WebhookReceiver` whose tasks end this client's waits as soon as
            they arrive, and whose URL and secret uploads and trainings send by default.
        allow_insecure: Allow a non-loopback plain-http `base_url`.
        max_response_bytes: The largest API reply accepted, as sent and once decoded
            (default 8 MiB); a larger one is refused while it streams, with a
            `ResponseValidationError`. Image downloads have their own limit.
        proxy: A proxy for every request, as a URL (`http://user:pass@proxy:3128`) or an
            `httpx.Proxy`; it replaces the proxy variables. https goes through a CONNECT
            tunnel, plain http is forwarded. Its credentials are never shown.
        verify: `True` checks certificates against certifi's roots (or `SSL_CERT_FILE`
            / `SSL_CERT_DIR`); the path of a CA bundle (or of a hashed folder) to trust
            instead, an `ssl.SSLContext`, or `False` to check nothing.
        trust_env: Read `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`,
            `SSL_CERT_FILE` and `SSL_CERT_DIR` as httpx does; `False` ignores them.

    Raises:
        RequestValidationError: No key given or in the environment, a key with
            whitespace or control characters, a bad `base_url`, `proxy` or `verify`,
            network settings combined with `http_client`, or a setting out of range (a
            timeout phase of zero or less, `max_retries` below 0, `max_concurrency` or
            `max_response_bytes` below 1); the field names which.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        http_client: httpx.AsyncClient | None = None,
        webhooks: WebhookReceiver | None = None,
        allow_insecure: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        proxy: str | httpx.URL | httpx.Proxy | None = None,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
        trust_env: bool = True,
    ) -> None:
        """Configure the client; no I/O happens until the first request."""
        key = api_key if api_key is not None else os.environ.get("APIFRAME_API_KEY")
        if not key:
            raise RequestValidationError(
                "api_key",
                "no API key given and APIFRAME_API_KEY is not set",
                allowed="AsyncApiframe(api_key=...) or the APIFRAME_API_KEY variable",
            )
        checked_api_key(key)
        checked_count(max_concurrency, "max_concurrency", minimum=1)
        checked_count(max_response_bytes, "max_response_bytes", minimum=1)
        if max_retries is not None:
            checked_count(max_retries, "max_retries", minimum=0)
        borrowed_base = str(http_client.base_url).rstrip("/") if http_client is not None else ""
        # A client passed in with a base URL says where to go more plainly than the
        # environment does: the fake's `client()`, say, in a shell that also points elsewhere.
        from_env = os.environ.get("APIFRAME_BASE_URL")
        base = base_url or borrowed_base or from_env or DEFAULT_BASE_URL
        policy = retry or RetryPolicy()
        if max_retries is not None:
            policy = attrs.evolve(policy, max_retries=max_retries)
        self._timeout = checked_timeout(timeout)
        self._owns_http_client = http_client is None
        own_transport = None
        if http_client is None:
            # httpx's default pool rescans every connection on every request (36x slower
            # than ideal at 256 in flight); ours is O(1), and our limiter bounds it.
            own_transport = RoutingTransport(
                proxy=checked_proxy(proxy), verify=checked_verify(verify), trust_env=trust_env
            )
        else:
            _check_borrowed(proxy=proxy, verify=verify, trust_env=trust_env)
        self._http_client = http_client or _ApiHttpClient(
            transport=own_transport, timeout=self._timeout
        )
        checked_base = _checked_base_url(base, allow_insecure=allow_insecure)
        if _is_loopback(httpx.URL(checked_base).host):
            trust_local_origin(checked_base)  # a local fake's photo URLs are its own
        self._sender = Sender(
            self._http_client,
            api_key=key,
            base_url=checked_base,
            timeout=self._timeout,
            retry=policy,
            max_concurrency=max_concurrency,
            user_agent=_USER_AGENT,
            own_transport=own_transport,
            max_response_bytes=max_response_bytes,
        )
        self._wire = Wire()
        self._poller = Poller(
            self.fetch_many,
            poll or PollPolicy(),
            fetch_url=f"{self._sender.base_url}{FETCH_MANY.path}",
        )
        self._webhooks = webhooks
        self._unsubscribe = webhooks.subscribe(self._poller.deliver) if webhooks else None
        if webhooks is not None:
            self._sender.secrets.add(webhooks.secret)
        # What a `with_options()` view changes; None: the shared sender's own.
        self._call_timeout: httpx.Timeout | None = None
        self._call_retry: RetryPolicy | None = None
        self._is_view = False

    def with_options(
        self,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncApiframe:
        """A view of this client with other per-request settings; nothing new is opened.

        The view shares everything that has to be shared: the connection pool, the
        client-wide concurrency limit, the pause after a 429, the polling loop (whose
        polls keep this client's settings) and the webhook receiver. Only the requests
        sent through the view's own methods use its `timeout` and retries. A web handler
        uses it to fit its own deadline.

        Closing a view closes nothing: `async with client.with_options(...) as view:`
        is allowed and leaves the client open; the client's own `aclose()` (or the end
        of its `async with`) ends every view of it too.

        Example:
            ```python
            quick = client.with_options(timeout=5.0, max_retries=0)
            account = await quick.account()
            ```

        Args:
            timeout: Seconds for every phase, or an `httpx.Timeout`; None keeps this
                client's.
            max_retries: Retries per request; None keeps this client's count.
            retry: A whole retry policy; `max_retries`, when given, overrides its count.

        Raises:
            RequestValidationError: A setting is not valid (the field names it).
        """
        view = copy.copy(self)
        view._is_view = True  # noqa: SLF001 -- a view of our own class
        view._owns_http_client = False  # noqa: SLF001
        view._unsubscribe = None  # noqa: SLF001
        if timeout is not None:
            view._call_timeout = checked_timeout(timeout)  # noqa: SLF001
        policy = retry or self._call_retry or self._sender.retry
        if max_retries is not None:
            checked_count(max_retries, "max_retries", minimum=0)
            policy = attrs.evolve(policy, max_retries=max_retries)
        view._call_retry = policy  # noqa: SLF001
        return view

    # Plain functions that hand back the coroutine doing the work (here and in
    # `_submit_bulk`): each coroutine frame less on a request's await chain is one less
    # object held while it waits and one less frame resumed each time its socket wakes it.

    def _call(
        self,
        endpoint: Endpoint,
        body: object = None,
        *,
        timeout: TimeoutTypes = None,
        task_id: str | None = None,
        before_send: BeforeSend | None = None,
        retry_pushback: bool = True,
    ) -> Coroutine[Any, Any, Reply]:
        return self._sender.call(
            endpoint,
            body,
            timeout=self._call_timeout if timeout is None else timeout,
            task_id=task_id,
            before_send=before_send,
            retry=self._call_retry,
            retry_pushback=retry_pushback,
        )

    def __repr__(self) -> str:
        """Name the server, never the key."""
        return f"<AsyncApiframe base_url={self._sender.base_url!r}>"

    async def __aenter__(self) -> Self:
        """Enter the client's lifetime; it is closed when the block ends.

        Raises:
            ClientClosedError: The client was closed already.
        """
        if self._sender.closed:
            raise ClientClosedError("this AsyncApiframe is closed: make a new one")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client (the HTTP client too, unless it was borrowed)."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this client created it; a borrowed one stays open.

        From then on every request is refused with `ClientClosedError`, nothing sent.
        Closing again does nothing, and closing a view (see `with_options`) neither.
        """
        if self._is_view:
            return
        self._sender.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._owns_http_client:
            await self._http_client.aclose()

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return self._sender.base_url

    @property
    def max_concurrency(self) -> int:
        """The client-wide bound on requests in flight."""
        return self._sender.max_concurrency

    @overload
    async def generate(
        self, request: GenerateRequest, /, *, timeout: TimeoutTypes = None
    ) -> Generation: ...

    @overload
    async def generate(
        self,
        request: None = None,
        /,
        *,
        training_id: str,
        prompt: str,
        aspect_ratio: AspectRatio | None = None,
        width: int | None = None,
        height: int | None = None,
        number_of_images: int | None = None,
        seed: int | None = None,
        timeout: TimeoutTypes = None,
    ) -> Generation: ...

    async def generate(
        self,
        request: GenerateRequest | None = None,
        /,
        *,
        timeout: TimeoutTypes = None,
        **fields: Any,
    ) -> Generation:
        """Generate photos of a trained subject from a prompt; costs a credit per photo.

        Takes a `GenerateRequest`, or its fields as keywords. The input is validated
        before anything is sent. If the server answers before the photos are ready, the
        task is polled until it finishes (see `PollPolicy`).

        Example:
            ```python
            gen = await client.generate(
                training_id=trained.task_id,
                prompt="a portrait of TOKMSN man in a suit",
                aspect_ratio="custom", width=1024, height=1536, number_of_images=2,
            )
            ```

        Raises:
            RequestValidationError: A field broke a rule (nothing was sent).
            APITimeoutError: No reply in time. The generation may have been submitted and
                charged, so it is not retried; `may_have_been_submitted` says which.
            TaskFailedError: The generation failed; carries the server's reason.
            TaskWaitError: The generation was accepted, and the wait for it ended first
                (its deadline, or polls that kept failing); carries `task_id`: call
                `wait()` on it, never `generate()` again.
            NoImagesError: The generation finished without any photo.
            InsufficientCreditsError: The balance cannot pay for it (402).
            APIStatusError: The server refused (400, 401, 429 past the retries, ...).
        """
        if request is not None and fields:
            raise RequestValidationError(
                next(iter(fields)),
                "cannot be combined with a GenerateRequest",
                allowed="a GenerateRequest or keyword fields, not both",
            )
        return await self._generate(
            as_request(fields if request is None else request), timeout=timeout
        )

    async def _generate(
        self, request: GenerateRequest, *, timeout: TimeoutTypes = None
    ) -> Generation:
        return await self._generate_with(self._submit, request, timeout=timeout)

    async def _generate_with(
        self, submit: Submit, request: GenerateRequest, *, timeout: TimeoutTypes = None
    ) -> Generation:
        # One span (when tracing) over the submission and every poll of this generation.
        with operation("apiframe.generate") as span:
            task = await submit(request, timeout=timeout)
            set_task_id(span, task.task_id)
            return await self._complete(task)

    async def _submit(
        self,
        request: GenerateRequest,
        /,
        *,
        timeout: TimeoutTypes = None,
        before_send: BeforeSend | None = None,
        retry_pushback: bool = True,
    ) -> Task:
        """The paid step: POST the generation; its answer, finished or with a task to wait on."""
        reply = await self._call(
            GENERATE,
            self._wire.body(request),
            timeout=timeout,
            before_send=before_send,
            retry_pushback=retry_pushback,
        )
        task = reply.parse(self._wire.task)
        if not task.is_terminal and not task.task_id.strip():
            raise ResponseValidationError(
                ["$.task_id: a running generation came back without a task id to wait on"],
                body=reply.text,
                method=GENERATE.method,
                url=str(reply.response.request.url),
            )
        return task

    async def _complete(self, task: Task | str) -> Generation:
        """The free step: the accepted generation's photos, waiting on its task if need be.

        Raises:
            TaskWaitError: The wait ended without the result (the deadline passed, or
                polls failed); carries the task id. The submission is never sent again.
        """
        if isinstance(task, Task) and task.is_terminal:
            return self._wire.generation(checked(task))
        task_id = task if isinstance(task, str) else task.task_id
        try:
            finished = await self.wait(task_id)
        except (TaskWaitError, TaskFailedError):
            raise
        except ApiframeError as exc:
            # A task the server stops knowing, say: still an accepted task, not a refusal.
            raise TaskPollError(task_id, exc) from exc
        return self._wire.generation(finished)

    def generate_many(
        self,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        concurrency: int = 16,
        ordered: bool = False,
        fail_fast: bool = False,
        adaptive: bool = True,
        on_progress: Callable[[Progress], object] | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
        on_uncertain: UncertainPolicy = "skip",
        replay: ReplayPolicy = "yield",
        key: Callable[[GenerateRequest], str] | None = None,
        max_credits: int | None = None,
    ) -> BulkJob[Generation]:
        """Generate for many requests at once: bounded, lazy, streaming, cancel-safe.

        Use the result as an async context manager and iterate over it for one `Outcome`
        per request. At most `concurrency` generations are in flight (and never more than
        the client's `max_concurrency` across all its calls); the input, a list or an
        endless generator, sync or async, is read only as fast as the work goes.

        Example:
            ```python
            requests = (GenerateRequest(training_id=tid, prompt=p) for p in prompts)
            async with client.generate_many(requests, concurrency=16) as outcomes:
                async for outcome in outcomes:
                    if outcome.ok:
                        save(outcome.request, outcome.result.image_urls)
                    else:
                        log(outcome.request, outcome.error)
            ```

        Args:
            requests: `GenerateRequest`s, or mappings of their fields; an invalid one
                becomes a failed outcome (with `RequestValidationError`).
            concurrency: The most generations in flight at once for this job.
            ordered: Yield outcomes in input order (a bounded buffer holds early ones)
                instead of as they complete.
            fail_fast: Raise the first error (cancelling the rest) instead of yielding it
                as an outcome. With a list or tuple, every request is validated before
                any is sent.
            adaptive: Lower the requests in flight when the server pushes back (429,
                503): by one per window, by an eighth when it turned most of a window
                away, or straight to what the server took when it turned away a request
                sent with more in flight; grow back by one per window of successes.
                Requests turned away are sent again after their `Retry-After` (they cost
                nothing), without holding a place meanwhile.
            on_progress: Called with the job's `Progress` each time a request ends.
            journal: A SQLite file (or `Journal`) that records each paid request right
                before it is sent and when it ends, so that a job run again with the same
                journal sends only what is not done yet, and waits on what was accepted.
                One journal serves one run at a time. See `Journal`.
            on_uncertain: With a journal, what to do with requests that may have been
                charged by an earlier run that stopped mid-request: `"skip"` (the default:
                a failed outcome with `UncertainSubmissionError`) or `"resend"`.
            replay: With a journal, `"yield"` the recorded results of requests done by an
                earlier run (outcomes with `replayed=True`), or `"skip"` them.
            key: With a journal, an item's identity from its request (default: a hash of
                its fields; identical requests are told apart by their order).
            max_credits: The most credits the job may spend: credits spent plus credits in
                flight never exceed it (a generation costs 1 per photo). A request that
                would pass it is not sent: a failed outcome with `BudgetExceededError`,
                which a resumed job with a larger budget sends. Replays cost nothing.

        After a 401, 402 or 403 the job submits nothing more: the requests not sent end
        with `NotSentError`, and `progress.stopped_by` holds the reason.

        Raises:
            RequestValidationError: `concurrency` is not within 1 to `max_concurrency`,
                `max_credits` is not an int of at least 1 or None, or a policy is not one
                of its values.
            ClientClosedError: The client is closed: the job would fail every request.
            JournalInUseError: Another run has the journal open; nothing was sent.
            JournalError: The journal file cannot be used (damaged, not a journal, or
                from a newer version).
        """
        if self._sender.closed:
            raise ClientClosedError("this AsyncApiframe is closed: make a new one")
        if not 1 <= concurrency <= self.max_concurrency:
            raise RequestValidationError(
                "concurrency",
                f"{concurrency} is out of range for this client",
                allowed=f"1 to max_concurrency={self.max_concurrency} (set on AsyncApiframe)",
            )
        check_max_credits(max_credits)
        # The budget holds only the paid step: once a task exists its credits are spent,
        # whatever the wait for it brings.
        bulk = self._submit_bulk
        submit = bulk if max_credits is None else Budget(max_credits).guard(bulk)
        if fail_fast and isinstance(requests, list | tuple):
            requests = [as_request(item) for item in requests]

        def work_unclaimed(
            request: GenerateRequest, _claim: object
        ) -> Coroutine[Any, Any, Generation]:
            return self._generate_with(submit, request)

        work: Work[Generation] = work_unclaimed
        options: dict[str, Any] = {}
        if journal is not None:
            _check_choice("on_uncertain", on_uncertain, get_args(UncertainPolicy))
            _check_choice("replay", replay, get_args(ReplayPolicy))
            opened = journal if isinstance(journal, Journal) else Journal(journal)
            journaled = JournaledWork(
                opened, submit, self._complete, on_uncertain=on_uncertain, key=key
            )
            work = journaled
            options = {
                "claim": journaled.claim,
                "yield_replayed": replay == "yield",
                "on_not_sent": journaled.not_sent,
            }
            if opened is not journal:
                options["on_close"] = opened.close  # the job opened it, the job closes it
        return BulkJob(
            requests,
            work,
            concurrency=concurrency,
            ordered=ordered,
            fail_fast=fail_fast,
            adaptive=adaptive,
            on_progress=on_progress,
            pushback_wait=functools.partial(pushback_wait, self._call_retry or self._sender.retry),
            **options,
        )

    def _submit_bulk(
        self,
        request: GenerateRequest,
        /,
        *,
        timeout: TimeoutTypes = None,
        before_send: BeforeSend | None = None,
    ) -> Coroutine[Any, Any, Task]:
        # A bulk job re-runs pushback itself, so that a turned-away request waits out its
        # Retry-After without holding a place in the job's limit.
        return self._submit(request, timeout=timeout, before_send=before_send, retry_pushback=False)

    async def generate_all(
        self,
        requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
        *,
        concurrency: int = 16,
        fail_fast: bool = False,
        adaptive: bool = True,
    ) -> list[Outcome[Generation]]:
        """Run `generate_many()` to the end; the outcomes come back in input order.

        For small jobs: all outcomes are held in memory. For large ones, iterate over
        `generate_many()` instead.

        Example:
            ```python
            outcomes = await client.generate_all(requests, concurrency=8)
            photos = [o.result.image_urls for o in outcomes if o.ok]
            ```
        """
        job = self.generate_many(
            requests,
            concurrency=concurrency,
            ordered=True,
            fail_fast=fail_fast,
            adaptive=adaptive,
        )
        async with job as outcomes:
            return [outcome async for outcome in outcomes]

    async def fetch(self, task_id: str, *, timeout: TimeoutTypes = None) -> Task:
        """The current state of a task, whichever endpoint created it.

        Raises:
            RequestValidationError: `task_id` is empty.
            NotFoundError: The server knows no such task.
        """
        _check_task_id(task_id)
        reply = await self._call(FETCH, {"task_id": task_id}, timeout=timeout, task_id=task_id)
        return reply.parse(lambda data: self._wire.task(data, task_id=task_id))

    async def fetch_many(self, task_ids: Iterable[str]) -> TaskBatch:
        """The current state of any number of tasks, 20 ids per request, in parallel.

        A lone id goes through `/fetch`, since `/fetch-many` takes 2 to 20. Ids the
        server does not report are listed in `missing`, not raised.

        Example:
            ```python
            batch = await client.fetch_many(ids)
            done = [t for t in batch.tasks.values() if t.is_terminal]
            ```

        Raises:
            RequestValidationError: An id is empty or not a string.
        """
        ids = list(dict.fromkeys(task_ids))
        for task_id in ids:
            _check_task_id(task_id)
        found: dict[str, Task] = {}

        async def fetch_chunk(chunk: list[str]) -> None:
            for task in await self._fetch_chunk(chunk):
                found[task.task_id] = task

        try:
            async with anyio.create_task_group() as tg:
                for start in range(0, len(ids), FETCH_MANY_LIMIT):
                    tg.start_soon(fetch_chunk, ids[start : start + FETCH_MANY_LIMIT])
        except* ApiframeError as group:
            # The first failure says it all (one bad key fails every chunk alike).
            raise group.exceptions[0] from None
        return TaskBatch(
            tasks={i: found[i] for i in ids if i in found},
            missing=tuple(i for i in ids if i not in found),
        )

    async def _fetch_chunk(self, ids: list[str]) -> list[Task]:
        if len(ids) == 1:
            try:
                return [await self.fetch(ids[0])]
            except NotFoundError:
                return []
        reply = await self._call(FETCH_MANY, {"task_ids": ids})
        return reply.parse(self._wire.tasks)

    async def wait(
        self,
        task_id: str,
        *,
        deadline: float | None = None,
        on_progress: Callable[[Task], object] | None = None,
    ) -> Task:
        """Wait until a task ends, and return it finished.

        All waits of one client share one polling loop that asks for every due task at
        once, through `/fetch-many`, and a webhook (see `WebhookReceiver`) ends a wait as
        soon as it arrives. Polls start about a second apart and slow to about ten
        (see `PollPolicy`).

        Example:
            ```python
            trained = await client.wait(
                training.task_id, on_progress=lambda t: print(t.percentage, "%")
            )
            ```

        Args:
            task_id: The task to wait for.
            deadline: Seconds to wait at most; defaults to `PollPolicy.deadline`.
            on_progress: Called with each new state of the task while it runs.

        Raises:
            TaskFailedError: The task failed; carries the server's reason.
            TaskTimeoutError: The deadline passed. The task goes on; wait again for it.
            NotFoundError: The server does not know the task.
        """
        _check_task_id(task_id)
        return await self._poller.wait(task_id, deadline=deadline, on_progress=on_progress)

    async def upload_images(
        self,
        images: Iterable[ImageSource],
        *,
        ethnicity: Ethnicity,
        gender: Gender,
        age: int | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        timeout: TimeoutTypes = None,
    ) -> SubmittedTask:
        """Upload 10 to 30 photos of a subject to prepare them for training; 2 credits.

        Photos are read and base64-encoded in a worker thread, and every rule is checked
        before anything is sent. The prepared set expires (see `Task.expires_at`):
        start the training before then.

        Example:
            ```python
            upload = await client.upload_images(
                Path("me/").glob("*.jpg"), ethnicity="white", gender="male", age=35
            )
            prepared = await client.wait(upload.task_id)
            ```

        Args:
            images: Paths, bytes or binary file objects of JPEG, PNG, WebP, HEIC, ...
            ethnicity: One of `ETHNICITIES`.
            gender: `"female"` or `"male"`.
            age: The subject's age in years.
            webhook_url: Where to POST progress; defaults to the client's receiver's.
            webhook_secret: Echoed in `x-webhook-secret`; defaults to the receiver's.
            max_image_bytes: The largest photo accepted.
            timeout: This call's HTTP timeout.

        Raises:
            RequestValidationError: A rule was broken (the field says which, e.g.
                `images[3]`); nothing was sent.
        """
        hook_url, hook_secret = self._webhook_defaults(webhook_url, webhook_secret)
        # Cheap fields first, on a stand-in for the photos: a typo in `gender` should not
        # wait for 30 files to be read. `evolve` then checks the real photos too.
        fields_only = UploadRequest(
            images=("",) * MIN_IMAGES,
            ethnicity=ethnicity,
            gender=gender,
            age=age,
            webhook_url=hook_url,
            webhook_secret=hook_secret,
        )
        photos = await encode_images(images, max_bytes=max_image_bytes)
        request = attrs.evolve(fields_only, images=photos)
        reply = await self._call(UPLOAD, self._wire.body(request), timeout=timeout)
        return reply.parse(lambda data: self._wire.structure(data, SubmittedTask))

    async def train(
        self,
        training_images_id: str,
        *,
        trigger_word: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        timeout: TimeoutTypes = None,
    ) -> SubmittedTask:
        """Train a model on prepared photos; 4 credits per training photo.

        Example:
            ```python
            training = await client.train(prepared.task_id, trigger_word="TOKMSN")
            trained = await client.wait(training.task_id)
            prompt = f"a portrait of {trained.trigger_word} man in a suit"
            ```

        Args:
            training_images_id: The task id of the finished upload.
            trigger_word: The word for the subject in prompts (server default `TOKMSN`).
                The finished training's `trigger_word` is the one to use.
            webhook_url: Where to POST progress; defaults to the client's receiver's.
            webhook_secret: Echoed in `x-webhook-secret`; defaults to the receiver's.
            timeout: This call's HTTP timeout.

        Raises:
            RequestValidationError: A rule was broken; nothing was sent.
        """
        hook_url, hook_secret = self._webhook_defaults(webhook_url, webhook_secret)
        request = TrainRequest(
            training_images_id=training_images_id,
            trigger_word=trigger_word,
            webhook_url=hook_url,
            webhook_secret=hook_secret,
        )
        reply = await self._call(TRAIN, self._wire.body(request), timeout=timeout)
        return reply.parse(lambda data: self._wire.structure(data, SubmittedTask))

    def _webhook_defaults(
        self, url: str | None, secret: str | None
    ) -> tuple[str | None, str | None]:
        # A secret sent along is redacted from the replies' error text, as the key is.
        self._sender.secrets.add(secret)
        receiver = self._webhooks
        if url is None and receiver is not None and receiver.url is not None:
            return receiver.url, secret if secret is not None else receiver.secret
        return url, secret

    async def account(self, *, timeout: TimeoutTypes = None) -> Account:
        """The account behind the key: email, credits left, images made, plan."""
        reply = await self._call(ACCOUNT, timeout=timeout)
        return reply.parse(lambda data: self._wire.structure(data, Account))


def _check_borrowed(*, proxy: object, verify: object, trust_env: bool) -> None:
    # A borrowed client's own settings apply; ours would silently not, so say so now.
    given = {"proxy": proxy is not None, "verify": verify is not True, "trust_env": not trust_env}
    for field, set_here in given.items():
        if set_here:
            raise RequestValidationError(
                field,
                "cannot be combined with http_client, which keeps its own network settings",
                allowed=f"set {field} on the httpx.AsyncClient you pass in",
            )


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RequestValidationError(
            field, f"{value!r} is not valid", allowed=", ".join(repr(a) for a in allowed)
        )


def _check_task_id(task_id: object) -> None:
    if not isinstance(task_id, str) or not task_id.strip():
        raise RequestValidationError(
            "task_id", f"must be a non-empty string, got {task_id!r}", allowed="a task id (str)"
        )
