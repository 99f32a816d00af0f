"""`FakeApiframe`: a stateful fake of the APIFRAME v1 AI Photos API, as a plain ASGI 3 app."""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypedDict, Unpack

import anyio
import attrs
import httpx

from apiframe_async._addresses import trust_local_origin
from apiframe_async.testing import _validation as v
from apiframe_async.testing._asgi import (
    SERVICE_UNAVAILABLE_PAGE,
    Receive,
    Reply,
    Scope,
    Send,
    base_url,
    drop,
    header,
    read_body,
    respond,
)
from apiframe_async.testing._faults import Decision, Fault, FaultPlan, Faults
from apiframe_async.testing._limits import Limit, Limits
from apiframe_async.testing._png import render_png
from apiframe_async.testing._records import Auth, RecordedCall, Recorder, WebhookDelivery
from apiframe_async.testing._server import FakeServer, run_blocking
from apiframe_async.testing._service import Outcome, Service, Settings, WebhookEvent, invalid
from apiframe_async.testing._tasks import JSONObject, Kind
from apiframe_async.testing._transport import InProcessTransport
from apiframe_async.testing._webhooks import Runner, post

UPLOAD, TRAIN, GENERATE = "/ai-photo-upload", "/ai-photo-train", "/ai-photo-generate"
FETCH, FETCH_MANY, ACCOUNT, IMAGES = "/fetch", "/fetch-many", "/account", "/images"
_KINDS: Final = {UPLOAD: Kind.UPLOAD, TRAIN: Kind.TRAIN, GENERATE: Kind.GENERATE}
_METHODS: Final = {
    UPLOAD: "POST",
    TRAIN: "POST",
    GENERATE: "POST",
    FETCH: "POST",
    FETCH_MANY: "POST",
    ACCOUNT: "GET",
}
ROUTES: Final = frozenset([*_METHODS, IMAGES])
_IMAGE_PREFIX, _IMAGE_SUFFIX = "/images/", ".png"
_WEBHOOK_TIMEOUT = 10.0


class FakeOptions(TypedDict, total=False):
    """The keyword arguments of `FakeApiframe`, for `run_fake_server(**options)`.

    Example:
        ```python
        options: FakeOptions = {"api_key": "dev-key", "fetches_to_finish": 2}
        run_fake_server("127.0.0.1", 8123, **options)
        ```
    """

    api_key: str
    credits: int
    enforce_credits: bool
    fetches_to_finish: int
    generate_fetches: int
    step_seconds: float | None
    failure_rate: float
    faults: Faults | Iterable[Faults] | None
    limits: Limit | Iterable[Limit] | None
    seed: int | None
    webhook_client: httpx.AsyncClient | None
    webhook_grace: float
    image_size: int
    upload_ttl: float
    unknown_task_status: int
    trigger_word_override: str | None
    email: str
    plan: str
    next_billing_date: str | None
    clock: Callable[[], float]
    base_url: str
    max_records: int | None


@attrs.frozen
class _Request:
    """One parsed request."""

    method: str
    route: str | None
    name: str
    body: Mapping[str, Any] | None
    json_error: str | None
    auth: Auth
    base_url: str


@attrs.define
class _Trace:
    """What happened to one request, filled in as it is served."""

    decision: Decision = attrs.field(factory=Decision)
    status: int | None = None
    task_id: str | None = None
    created: bool = False
    charged: int = 0


class FakeApiframe:
    """A stateful, in-memory fake of APIFRAME's v1 AI Photos API, as an ASGI 3 app.

    It speaks the API contract: `POST /ai-photo-upload`, `/ai-photo-train`,
    `/ai-photo-generate`, `/fetch`, `/fetch-many`, `GET /account`, and serves the generated
    images as small, deterministic PNG files at `GET /images/<task_id>-<index>.png` (no
    auth). Requests need the header `Authorization: <api_key>` (401 `{}` otherwise) and are
    validated as the contract says (400 `{"errors": [{"msg", "path", ...}]}`).

    Tasks move one step per fetch: upload and train tasks answer `pending` on their first
    fetch, then `processing` (train: `percentage` a string), and `finished` on fetch number
    `fetches_to_finish` (train: `percentage` the number 100). With `step_seconds`, they also
    move one step per `step_seconds` of the `clock`. Generation is synchronous unless
    `generate_fetches` is set. Every step of a task with a `webhook_url` is POSTed there.

    Plug it in in-process with `client()`, or on a real loopback port with `serve()`;
    `async with fake:` delivers webhooks in the background of in-process requests.

    Args:
        api_key: the only key accepted.
        credits: the account's starting credits (upload 2, training 4 per image,
            generation 1 per image).
        enforce_credits: refuse work the account cannot pay for with a 402
            `{"errors": [{"msg": "Not enough credits: ..."}]}` (nothing is created). When
            False, credits may go negative.
        fetches_to_finish: the fetch of an upload or train task that reports it finished
            (1: the first fetch already does; 4: pending, "33", "67", finished).
        generate_fetches: 0 for a synchronous generation (the reply is the finished
            result); N for a reply `{"status": "processing"}` and a finished result on the
            Nth fetch.
        step_seconds: also move tasks one step per this many seconds (None: fetches only).
            With a webhook and a background runner, steps are POSTed without any fetch.
        failure_rate: share of new tasks that end `failed` (with `message` and `error`).
        faults: random faults, for every route or some (see `Faults`).
        limits: an account's limits, checked at each request's arrival before any
            fault or work: a `TokenBucket` (rate) or a `ConcurrencyLimit` (at once),
            answering 429 with `Retry-After` past them.
        seed: makes task ids and failures reproducible.
        webhook_client: the client that POSTs webhooks (e.g. on an `httpx.ASGITransport`
            to the receiving app); default: a plain `httpx.AsyncClient`. Under `serve()` it
            is used from the server's thread, so prefer an ASGI-transport client there.
        webhook_grace: seconds that leaving `async with fake:` or stopping a server waits
            for webhooks still being delivered.
        image_size: the longest side, in pixels, of the generated images.
        upload_ttl: seconds a finished upload stays usable for training (`expires_at`).
        unknown_task_status: the status for `/fetch` of an unknown task id (404 or 400),
            with `{"errors": [{"msg": "Task not found", "path": "task_id"}]}`.
        trigger_word_override: report this trigger word when training finishes, whatever
            was asked for (the result is authoritative).
        email: the account's email.
        plan: the account's plan.
        next_billing_date: the account's next billing date (a string or None).
        clock: the clock for timestamps, wall-clock steps and expiry (seconds since the
            epoch); inject one to control time in tests.
        base_url: the base URL of `client()`. In-process there is no network and no TLS;
            the default is https only so that clients refusing to send a key over plain
            http accept it. Image URLs of in-process requests start with it.
        max_records: keep only the latest records of requests and of webhooks (None: all;
            `run_fake_server` defaults to 10,000 so a long-running server stays small).

    Example:
        ```python
        import httpx
        from apiframe_async.testing import FakeApiframe

        fake = FakeApiframe(fetches_to_finish=2)
        async with fake.client(headers={"Authorization": fake.api_key}) as http:
            reply = await http.get("/account")
            assert reply.json()["credits"] == 10_000

        # with our client:
        # AsyncApiframe(api_key=fake.api_key, http_client=fake.client())
        ```
    """

    def __init__(
        self,
        *,
        api_key: str = "fake-api-key",
        credits: int = 10_000,  # noqa: A002 - the account field's name in the API
        enforce_credits: bool = True,
        fetches_to_finish: int = 4,
        generate_fetches: int = 0,
        step_seconds: float | None = None,
        failure_rate: float = 0.0,
        faults: Faults | Iterable[Faults] | None = None,
        limits: Limit | Iterable[Limit] | None = None,
        seed: int | None = None,
        webhook_client: httpx.AsyncClient | None = None,
        webhook_grace: float = 5.0,
        image_size: int = 64,
        upload_ttl: float = 7 * 24 * 3600.0,
        unknown_task_status: int = 404,
        trigger_word_override: str | None = None,
        email: str = "fake@example.com",
        plan: str = "pro",
        next_billing_date: str | None = "2030-01-01T00:00:00.000Z",
        clock: Callable[[], float] = time.time,
        base_url: str = "https://fake.apiframe",
        max_records: int | None = None,
    ) -> None:
        """Create an empty fake: no tasks, full credits, no records."""
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        settings = Settings(
            fetches_to_finish=fetches_to_finish,
            generate_fetches=generate_fetches,
            step_seconds=step_seconds,
            failure_rate=failure_rate,
            image_size=image_size,
            upload_ttl=upload_ttl,
            unknown_task_status=unknown_task_status,
            enforce_credits=enforce_credits,
            trigger_word_override=trigger_word_override,
        )
        account = {"email": email, "plan": plan, "next_billing_date": next_billing_date}
        self._service = Service(settings, credits=credits, account=account, seed=seed, clock=clock)
        self._plan = FaultPlan()
        self.set_faults(faults)
        self.set_limits(limits)
        self._recorder = Recorder(max_records)
        self._webhook_client = webhook_client
        self._webhook_grace = webhook_grace
        self._runners: dict[int, Runner] = {}
        self._stacks: dict[int, contextlib.AsyncExitStack] = {}

    # -- plugging it in -------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.AsyncClient:  # noqa: ANN401 - passed on to httpx.AsyncClient
        """An `httpx.AsyncClient` that calls this fake in-process, at `base_url`.

        Keyword arguments go to `httpx.AsyncClient`. Unlike a bare `httpx.ASGITransport`,
        its transport raises `httpx.RemoteProtocolError` for a dropped connection and
        `httpx.ReadTimeout` when the reply takes longer than the read timeout.

        Example:
            ```python
            async with fake.client(headers={"Authorization": fake.api_key}) as http:
                reply = await http.post("/fetch", json={"task_id": task_id})
            ```
        """
        kwargs.setdefault("base_url", self.base_url)
        # Photo URLs at this origin are served in-process: no address to guard, none to
        # resolve (a DNS query for a name that exists nowhere may take seconds).
        trust_local_origin(self.base_url)
        return httpx.AsyncClient(transport=InProcessTransport(self), **kwargs)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> FakeServer:
        """Serve this fake with uvicorn (the `server` extra) in a thread, on a real socket.

        Use the result as a context manager, sync or async (from asyncio, trio or no event
        loop at all); its value is the base URL. Port 0 picks a free port. Leaving the
        block stops the server. The state is shared: records and tasks are the same
        whether a request came in-process or over the socket.

        Raises:
            ImportError: uvicorn is not installed.

        Example:
            ```python
            async with fake.serve() as base_url:  # e.g. "http://127.0.0.1:51234"
                async with httpx.AsyncClient(base_url=base_url) as http:
                    ...
            ```
        """
        return FakeServer(self, host, port)

    async def __aenter__(self) -> Self:
        """Deliver webhooks of in-process requests in the background of this event loop.

        Without it, in-process requests deliver their webhooks themselves after replying,
        which delays the reply. Leaving the block waits up to `webhook_grace` seconds for
        deliveries still going on. (`serve()` does the same in the server's loop.)

        Example:
            ```python
            async with FakeApiframe(webhook_client=receiver_client) as fake:
                ...
            ```
        """
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._background())
        self._stacks[threading.get_ident()] = stack
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop background delivery, after a grace period for deliveries in progress."""
        await self._stacks.pop(threading.get_ident()).aclose()

    # -- steering it ----------------------------------------------------------------------

    def set_faults(self, faults: Faults | Iterable[Faults] | None) -> None:
        """Replace the random faults (None: no random faults; scripted ones stay).

        Example:
            ```python
            fake.set_faults(Faults(rate_503=1.0, paths={"/fetch"}))
            ```
        """
        chosen = (faults,) if isinstance(faults, Faults) else tuple(faults or ())
        for each in chosen:
            _check_routes(each.paths or ())
        with self._service.lock:
            self._plan.faults = chosen

    def set_limits(self, limits: Limit | Iterable[Limit] | None) -> None:
        """Replace the limits (None: no limits); the new ones start afresh.

        Example:
            ```python
            fake.set_limits(TokenBucket(rate=5, burst=2, retry_after="exact"))
            ```
        """
        chosen = (limits,) if isinstance(limits, Limit) else tuple(limits or ())
        for each in chosen:
            _check_routes(each.paths)
        self._limits = Limits(chosen)

    def inject_fault(
        self,
        fault: Fault | None = None,
        *,
        path: str | None = None,
        times: int = 1,
        delay: float = 0.0,
        retry_after: float | str | None = 1,
    ) -> None:
        """Script a fault (and/or a delay) for the next `times` requests to `path`.

        Scripted faults come before random ones, in the order they were injected.

        Args:
            fault: the fault, or None for a delay alone.
            path: the route, e.g. `"/ai-photo-generate"` or `"/images"`; None for any.
            times: how many requests it applies to.
            delay: seconds to wait before handling (or refusing) each of them.
            retry_after: the `Retry-After` of a 429 (None: no header).

        Example:
            ```python
            fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-generate", retry_after=0)
            fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate")
            ```
        """
        _check_routes([path] if path is not None else [])
        decision = Decision(fault, delay, retry_after)
        with self._service.lock:
            self._plan.inject(decision, path, times)

    def fail_next_task(self, path: str, reason: str | None = None) -> None:
        """Make the next task created at `path` end `failed`, with `reason` as its message.

        Example:
            ```python
            fake.fail_next_task("/ai-photo-train", reason="Not enough faces")
            ```
        """
        self._service.fail_next(_kind(path), reason)

    def add_trained_model(
        self,
        trigger_word: str = v.DEFAULT_TRIGGER_WORD,
        image_count: int = 10,
        *,
        training_id: str | None = None,
    ) -> str:
        """Create a finished upload and training, free and unrecorded; returns the training id.

        A shortcut for tests that are about generation only. With `training_id`, the
        training gets that id (a model that is the same in every run, so that a journal
        of jobs on it can be resumed); if a task has that id already, it is kept as is.

        Example:
            ```python
            training_id = fake.add_trained_model()
            await http.post("/ai-photo-generate", json={"training_id": training_id, "prompt": "x"})
            ```
        """
        return self._service.add_trained_model(trigger_word, image_count, training_id)

    async def advance(self, task_id: str | None = None) -> None:
        """Move one task (or every unfinished task) one step on, as a fetch would.

        Its webhooks are delivered before this returns.

        Raises:
            KeyError: the task id is unknown.

        Example:
            ```python
            await fake.advance(task_id)
            assert fake.task(task_id)["status"] == "processing"
            ```
        """
        events = self._service.advance(task_id)
        self._recorder.expect(len(events))
        await self._deliver_now(events)

    async def wait_webhooks(self, timeout: float = 5.0) -> None:
        """Wait until every queued webhook has been delivered (or failed).

        Raises:
            TimeoutError: some were still pending after `timeout` seconds.

        Example:
            ```python
            await fake.wait_webhooks()
            ```
        """
        with anyio.fail_after(timeout):
            # Polling: deliveries may run in a server thread, where no event of ours can wake us.
            while self._recorder.pending_deliveries > 0:  # noqa: ASYNC110
                await anyio.sleep(0.005)

    # -- looking at it --------------------------------------------------------------------

    @property
    def credits(self) -> int:
        """The account's credits now."""
        with self._service.lock:
            return self._service.credits

    @property
    def total_images(self) -> int:
        """Images generated so far."""
        with self._service.lock:
            return self._service.total_images

    def calls(self, route: str | None = None) -> list[RecordedCall]:
        """Records of the requests that ended, oldest first; only those to `route` if given.

        `route` is a route such as `"/fetch"` or `"/images"`, or an exact request path.

        Example:
            ```python
            assert [c.status for c in fake.calls("/ai-photo-generate")] == [429, 200]
            ```
        """
        records = self._recorder.calls()
        if route is None:
            return records
        return [call for call in records if route in {call.route, call.path}]

    def generate_count_by_prompt(self) -> dict[str, int]:
        """How many generations were carried out (and charged) per prompt.

        Requests refused before the work (400, 402, 429, 500, 503, a drop before the work)
        are not counted; a generation whose reply was lost to a drop after the work is.

        Example:
            ```python
            assert set(fake.generate_count_by_prompt().values()) == {1}  # nobody paid twice
            ```
        """
        return dict(Counter(detail.prompt for detail in self._service.generations()))

    def peak_in_flight(self, route: str) -> int:
        """The most requests to `route` that were in flight at once.

        Example:
            ```python
            assert fake.peak_in_flight("/ai-photo-generate") <= 8
            ```
        """
        return self._recorder.peak(route)

    def in_flight(self, route: str) -> int:
        """Requests to `route` in flight now."""
        return self._recorder.in_flight(route)

    def webhooks(self, task_id: str | None = None) -> list[WebhookDelivery]:
        """Records of the webhook POSTs made (for `task_id` only, if given), oldest first.

        Example:
            ```python
            statuses = [d.payload["status"] for d in fake.webhooks(task_id)]
            ```
        """
        deliveries = self._recorder.deliveries()
        return [d for d in deliveries if task_id in {None, d.task_id}]

    def task(self, task_id: str) -> JSONObject | None:
        """The task's current `/fetch` reply, without moving it on; None if unknown.

        Example:
            ```python
            assert fake.task(task_id)["status"] == "pending"
            ```
        """
        return self._service.peek(task_id)

    def task_ids(self, path: str | None = None) -> list[str]:
        """Ids of the tasks created (at `path`, such as `"/ai-photo-upload"`), oldest first."""
        return self._service.ids(None if path is None else _kind(path))

    # -- carrying it over ------------------------------------------------------------------

    def state(self) -> JSONObject:
        """The service's state, JSON-ready: tasks, credits and generated images.

        A fake made later (in another process, say) carries on from it with `restore()`,
        as the `apiframe` command does between commands on its built-in fake. Records,
        scripted faults and webhooks are not part of it (no webhook secret is written).

        Example:
            ```python
            saved = json.dumps(fake.state())
            later = FakeApiframe()
            later.restore(json.loads(saved))
            assert later.task_ids() == fake.task_ids()
            ```
        """
        return self._service.state()

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the tasks, credits and images with those of a `state()`.

        Raises:
            ValueError: `state` is not one that `state()` gave.
        """
        self._service.restore(state)

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point (HTTP and lifespan)."""
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with self._background():
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = self._service.clock()
        key = _route(str(scope["method"]), str(scope["path"])) or str(scope["path"])
        self._recorder.enter(key)
        trace = _Trace()
        request = self._parse(scope, b"")  # recorded as is if reading the body fails
        try:
            request = self._parse(scope, await read_body(receive))
            await self._within_limits(request, trace, send)
        finally:
            self._recorder.leave(key, self._record(request, trace, started))

    async def _within_limits(self, request: _Request, trace: _Trace, send: Send) -> None:
        refusal, held = self._limits.enter(request.route or request.name)
        if refusal is not None:
            trace.decision = refusal
            await self._refuse(send, refusal, trace)
            return
        try:
            await self._serve(request, trace, send)
        finally:
            self._limits.leave(held)

    async def _serve(self, request: _Request, trace: _Trace, send: Send) -> None:
        with self._service.lock:
            trace.decision = decision = self._plan.decide(request.route or request.name)
        if decision.delay:
            await anyio.sleep(decision.delay)
        if decision.fault is not None and decision.fault.before_work:
            await self._refuse(send, decision, trace)
            return
        outcome, reply = self._handle(request)
        trace.task_id, trace.created = outcome.task_id, outcome.created
        trace.charged = outcome.charged
        inline = self._dispatch(outcome)
        try:
            if decision.fault is Fault.DROP_AFTER_WORK:
                await drop(send)
            await respond(send, reply)
            trace.status = reply.status
        finally:
            await self._deliver_now(inline)

    async def _refuse(self, send: Send, decision: Decision, trace: _Trace) -> None:
        if decision.fault is Fault.DROP_BEFORE_WORK:
            await drop(send)
        reply = _fault_reply(decision)
        await respond(send, reply)
        trace.status = reply.status

    def _handle(self, request: _Request) -> tuple[Outcome, Reply]:
        if request.route == IMAGES:
            return Outcome(200, None), self._image(request.name)
        if request.route is None:
            msg = f"Cannot {request.method} {request.name}"
            return Outcome(404, None), Reply.json(404, {"errors": [v.error(None, msg)]})
        outcome = self._api(request)
        return outcome, Reply.json(outcome.status, outcome.body)

    def _api(self, request: _Request) -> Outcome:
        if request.auth != "valid":
            return Outcome(401, {})
        if request.json_error is not None:
            return invalid([v.error(None, request.json_error)])
        body, service = request.body or {}, self._service
        operations: dict[str | None, Callable[[], Outcome]] = {
            UPLOAD: lambda: _either(v.upload(body), service.upload),
            TRAIN: lambda: _either(v.train(body), service.train),
            GENERATE: lambda: _either(
                v.generate(body), lambda valid: service.generate(valid, request.base_url)
            ),
            FETCH: lambda: _either(v.task_id(body), service.fetch),
            FETCH_MANY: lambda: _either(v.task_ids(body), service.fetch_many),
            ACCOUNT: service.account,
        }
        return operations[request.route]()

    def _image(self, path: str) -> Reply:
        name = path.removeprefix(_IMAGE_PREFIX).removesuffix(_IMAGE_SUFFIX)
        spec = self._service.image(name)
        if spec is None:
            return Reply.json(404, {"errors": [v.error(None, "Image not found")]})
        png = render_png(spec.prompt, spec.seed, spec.index, spec.width, spec.height)
        return Reply(200, png, "image/png", (("cache-control", "public, max-age=86400"),))

    def _parse(self, scope: Scope, raw: bytes) -> _Request:
        method, path = str(scope["method"]), str(scope["path"])
        route = _route(method, path)
        body, json_error = None, None
        if method == "POST" and route not in {None, IMAGES}:
            body, json_error = _json_object(raw, header(scope, b"content-type"))
        return _Request(method, route, path, body, json_error, self._auth(scope), base_url(scope))

    def _auth(self, scope: Scope) -> Auth:
        sent = header(scope, b"authorization")
        if sent is None:
            return "missing"
        return "valid" if _same(sent, self.api_key) else "invalid"

    def _record(self, request: _Request, trace: _Trace, started: float) -> RecordedCall:
        return RecordedCall(
            method=request.method,
            path=request.name,
            route=request.route,
            body=MappingProxyType(dict(request.body or {})),
            auth=request.auth,
            status=trace.status,
            fault=trace.decision.fault,
            delay=trace.decision.delay,
            task_id=trace.task_id,
            created=trace.created,
            charged=trace.charged,
            started_at=started,
            ended_at=self._service.clock(),
        )

    # -- webhooks ---------------------------------------------------------------------------

    def _dispatch(self, outcome: Outcome) -> tuple[WebhookEvent, ...]:
        """Queue the outcome's webhooks; returns those to deliver inline (no runner here)."""
        self._recorder.expect(len(outcome.events))
        runner = self._runners.get(threading.get_ident())
        if runner is None:
            return outcome.events
        runner.submit(outcome.events)
        if outcome.created and outcome.task_id and self._service.ticking(outcome.task_id):
            runner.start_daemon(functools.partial(self._tick, runner, outcome.task_id))
        return ()

    async def _tick(self, runner: Runner, task_id: str) -> None:
        """Send a task's wall-clock steps as they fall due, until it ends."""
        while True:
            events, due = self._service.catch_up(task_id)
            self._recorder.expect(len(events))
            runner.submit(events)
            if due is None:
                return
            await anyio.sleep(max(due - self._service.clock(), 0.01))

    async def _deliver_now(self, events: Iterable[WebhookEvent]) -> None:
        events = tuple(events)
        if not events:
            return
        sent = 0
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await self._webhook_client_in(stack)
                for event in events:
                    await self._post(client, event)
                    sent += 1
        finally:
            self._recorder.abandon(len(events) - sent)  # cancelled: they will never go out

    async def _webhook_client_in(self, stack: contextlib.AsyncExitStack) -> httpx.AsyncClient:
        """The injected webhook client, or a new one that `stack` closes."""
        if self._webhook_client is not None:
            return self._webhook_client
        return await stack.enter_async_context(httpx.AsyncClient(timeout=_WEBHOOK_TIMEOUT))

    async def _post(self, client: httpx.AsyncClient, event: WebhookEvent) -> None:
        self._recorder.delivered(await post(client, event, self._service.clock))

    @contextlib.asynccontextmanager
    async def _background(self) -> AsyncIterator[None]:
        """A runner for webhooks and tickers in this thread's event loop."""
        thread = threading.get_ident()
        if thread in self._runners:
            raise RuntimeError("this FakeApiframe already delivers webhooks in this thread")
        async with contextlib.AsyncExitStack() as stack:
            client = await self._webhook_client_in(stack)
            async with anyio.create_task_group() as task_group:
                runner = Runner(task_group, functools.partial(self._post, client))
                self._runners[thread] = runner
                try:
                    yield
                finally:
                    del self._runners[thread]
                    with anyio.CancelScope(shield=True):
                        self._recorder.abandon(await runner.close(self._webhook_grace))


def run_fake_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    fake: FakeApiframe | None = None,
    log_level: str = "info",
    **options: Unpack[FakeOptions],
) -> None:
    """Serve a fake APIFRAME with uvicorn until interrupted (Ctrl+C); blocks.

    Needs the `server` extra (uvicorn). Without `fake`, a new `FakeApiframe(**options)` is
    served. Clients then use `base_url=f"http://{host}:{port}"` and the fake's API key.

    Raises:
        ImportError: uvicorn is not installed.
        OSError: the address is in use.

    Example:
        ```python
        from apiframe_async.testing import run_fake_server

        run_fake_server("127.0.0.1", 8123, api_key="dev-key", fetches_to_finish=2)
        ```
    """
    options.setdefault("max_records", 10_000)
    app = fake if fake is not None else FakeApiframe(**options)
    run_blocking(app, host, port, log_level)


def _either(parsed: Any, operation: Callable[[Any], Outcome]) -> Outcome:  # noqa: ANN401 - a validated request of any kind
    """Run `operation` on a valid request, or answer 400 with the validation errors."""
    if isinstance(parsed, v.Invalid):
        return invalid(parsed.errors)
    return operation(parsed)


def _check_routes(paths: Iterable[str]) -> None:
    unknown = set(paths) - ROUTES
    if unknown:
        raise ValueError(f"unknown route(s) {sorted(unknown)}; choose from {sorted(ROUTES)}")


def _kind(path: str) -> Kind:
    if path not in _KINDS:
        raise ValueError(f"{path!r} creates no tasks; choose from {sorted(_KINDS)}")
    return _KINDS[path]


def _route(method: str, path: str) -> str | None:
    if path in _METHODS:
        return path if _METHODS[path] == method else None
    if method == "GET" and path.startswith(_IMAGE_PREFIX) and path.endswith(_IMAGE_SUFFIX):
        return IMAGES
    return None


def _json_object(raw: bytes, content_type: str | None) -> tuple[JSONObject | None, str | None]:
    if content_type is None or content_type.split(";")[0].strip().lower() != "application/json":
        return None, "Content-Type must be application/json"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return None, f"Body is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, "Body must be a JSON object"
    return data, None


def _same(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode(), expected.encode())


def _fault_reply(decision: Decision) -> Reply:
    if decision.fault is Fault.TOO_MANY_REQUESTS:
        retry_after = decision.retry_after
        headers = () if retry_after is None else (("retry-after", _seconds(retry_after)),)
        return Reply.text(429, "Too many requests, please try again later.", headers)
    if decision.fault is Fault.UNAVAILABLE:
        return Reply(503, SERVICE_UNAVAILABLE_PAGE, "text/html")
    return Reply.json(500, {})


def _seconds(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
