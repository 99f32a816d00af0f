"""Every public signature, called as a user would: checked by mypy --strict, never run.

Each function below uses one part of the public API with correct types and pins what it
gives back with `assert_type`, so a change to a public signature or return type fails the
type check (`nox -s typing`) before it reaches a user.
"""

from __future__ import annotations

import datetime as dt
import io
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, assert_type

import httpx

import apiframe_async
from apiframe_async import (
    ASPECT_RATIOS,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_TIMEOUT,
    ETHNICITIES,
    GENDERS,
    WEBHOOK_SECRET_HEADER,
    Account,
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    APITimeoutError,
    AspectRatio,
    AsyncApiframe,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    BulkJob,
    ClientClosedError,
    ClientError,
    DownloadError,
    Ethnicity,
    Gender,
    GenerateRequest,
    Generation,
    ImageSource,
    InsufficientCreditsError,
    Journal,
    JournalError,
    JournalInUseError,
    NoImagesError,
    NotFoundError,
    NotSentError,
    Outcome,
    PermissionDeniedError,
    PollPolicy,
    Progress,
    RateLimitError,
    ReplayPolicy,
    RequestLike,
    RequestTimeoutError,
    RequestValidationError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    SubmittedTask,
    Task,
    TaskBatch,
    TaskFailedError,
    TaskPollError,
    TaskStatus,
    TaskTimeoutError,
    TaskWaitError,
    TrainRequest,
    UncertainPolicy,
    UncertainSubmissionError,
    UploadRequest,
    WebhookReceiver,
    download,
    download_all,
    parse_webhook,
    verify_webhook,
)
from apiframe_async.testing import (
    ConcurrencyLimit,
    FakeApiframe,
    FakeOptions,
    FakeServer,
    Fault,
    Faults,
    RecordedCall,
    TokenBucket,
    WebhookDelivery,
    render_png,
    run_fake_server,
)

TRAINING_ID: Final = "3492deb6-0000-4000-8000-000000000000"


def constants() -> None:
    assert_type(apiframe_async.__version__, str)
    assert_type(DEFAULT_BASE_URL, str)
    assert_type(DEFAULT_TIMEOUT, httpx.Timeout)
    assert_type(DEFAULT_MAX_CONCURRENCY, int)
    image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    header: str = WEBHOOK_SECRET_HEADER
    assert_type(ASPECT_RATIOS, tuple[str, ...])
    assert_type(ETHNICITIES, tuple[str, ...])
    assert_type(GENDERS, tuple[str, ...])
    ratio: AspectRatio = "16:9"
    ethnicity: Ethnicity = "middle eastern"
    gender: Gender = "female"
    uncertain: UncertainPolicy = "resend"
    replay: ReplayPolicy = "skip"
    del ratio, ethnicity, gender, uncertain, replay, image_bytes, download_bytes, header


def policies(error: ApiframeError) -> None:
    retry = RetryPolicy(max_retries=5, initial_backoff=0.5, max_backoff=30, max_retry_after=60)
    assert_type(retry.max_retries, int)
    assert_type(retry.should_retry(error, paid=True), bool)
    poll = PollPolicy(initial_interval=1, max_interval=10, multiplier=1.5, jitter=0.1, deadline=900)
    assert_type(poll.interval(3), float)
    assert_type(poll.base_interval(3), float)
    assert_type(poll.deadline, float)


async def client_lifetime(http: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    client = AsyncApiframe(
        "key",
        base_url="https://api.apiframe.pro",
        timeout=httpx.Timeout(10.0, read=360.0),
        max_retries=2,
        retry=RetryPolicy(),
        poll=PollPolicy(),
        max_concurrency=32,
        http_client=http,
        webhooks=receiver,
        allow_insecure=False,
        max_response_bytes=4 * 1024 * 1024,
    )
    async with client as entered:
        assert_type(entered, AsyncApiframe)
        assert_type(entered.base_url, str)
        assert_type(entered.max_concurrency, int)
    async with AsyncApiframe(timeout=30.0):
        pass
    view = client.with_options(timeout=5.0, max_retries=0)
    assert_type(view, AsyncApiframe)
    assert_type(client.with_options(timeout=httpx.Timeout(2.0), retry=RetryPolicy()), AsyncApiframe)
    async with view as entered_view:
        assert_type(entered_view, AsyncApiframe)
    await client.aclose()
    context = ssl.create_default_context()
    for verify in (True, False, "corp-ca.pem", Path("corp-ca.pem"), context):
        AsyncApiframe("key", verify=verify, trust_env=False)
    for proxy in ("http://u:p@proxy:3128", httpx.URL("http://proxy:3128"), httpx.Proxy("http://p")):
        AsyncApiframe("key", proxy=proxy)


async def generation(client: AsyncApiframe) -> None:
    gen = await client.generate(
        training_id=TRAINING_ID,
        prompt="a portrait of TOKMSN man",
        aspect_ratio="custom",
        width=1024,
        height=1536,
        number_of_images=2,
        seed=7,
        timeout=400.0,
    )
    assert_type(gen, Generation)
    request = GenerateRequest(training_id=TRAINING_ID, prompt="p", aspect_ratio="3:4")
    assert_type(await client.generate(request, timeout=httpx.Timeout(400.0)), Generation)
    assert_type(gen.task_id, str)
    assert_type(gen.status, TaskStatus)
    assert_type(gen.image_urls, tuple[str, ...])
    assert_type(gen.task_type, str | None)
    assert_type(gen.extra, Mapping[str, Any])
    assert_type(request.number_of_images, int | None)
    assert_type(request.aspect_ratio, AspectRatio | None)


def _requests() -> Iterator[RequestLike]:
    yield GenerateRequest(training_id=TRAINING_ID, prompt="a")
    yield {"training_id": TRAINING_ID, "prompt": "b", "seed": 1}


async def _async_requests() -> AsyncIterator[GenerateRequest]:
    yield GenerateRequest(training_id=TRAINING_ID, prompt="c")


def _show(progress: Progress) -> None:
    assert_type(progress.submitted, int)
    assert_type(progress.succeeded, int)
    assert_type(progress.failed, int)
    assert_type(progress.in_flight, int)
    assert_type(progress.concurrency, int)
    assert_type(progress.credits, int)
    assert_type(progress.done, int)
    assert_type(progress.stopped_by, ApiframeError | None)


def _key(request: GenerateRequest) -> str:
    return request.prompt


async def bulk(client: AsyncApiframe) -> None:
    job = client.generate_many(
        _requests(),
        concurrency=8,
        ordered=True,
        fail_fast=False,
        adaptive=True,
        on_progress=_show,
        journal=Path("job.sqlite"),
        on_uncertain="skip",
        replay="yield",
        key=_key,
        max_credits=100,
    )
    assert_type(job, BulkJob[Generation])
    async with job as outcomes:
        assert_type(outcomes, BulkJob[Generation])
        assert_type(outcomes.progress, Progress)
        async for outcome in outcomes:
            assert_type(outcome, Outcome[Generation])
            assert_type(outcome.index, int)
            assert_type(outcome.request, RequestLike)
            assert_type(outcome.result, Generation | None)
            assert_type(outcome.error, ApiframeError | None)
            assert_type(outcome.replayed, bool)
            assert_type(outcome.credits, int)
            assert_type(outcome.ok, bool)
            assert_type(outcome.unwrap(), Generation)
    async with client.generate_many(_async_requests(), journal=Journal("job.sqlite")) as more:
        async for outcome in more:
            assert_type(outcome, Outcome[Generation])
    everything = await client.generate_all(
        [{"training_id": TRAINING_ID, "prompt": "d"}], concurrency=4, fail_fast=True, adaptive=False
    )
    assert_type(everything, list[Outcome[Generation]])


def journal() -> None:
    book = Journal("job.sqlite")
    assert_type(book.path, Path)
    assert_type(book.counts(), Mapping[str, int])
    book.close()


def _progress(task: Task) -> None:
    assert_type(task.task_id, str)
    assert_type(task.status, TaskStatus | None)
    assert_type(task.task_type, str | None)
    assert_type(task.message, str | None)
    assert_type(task.percentage, int | None)
    assert_type(task.expires_at, dt.datetime | None)
    assert_type(task.trigger_word, str | None)
    assert_type(task.image_urls, tuple[str, ...])
    assert_type(task.error, str | None)
    assert_type(task.extra, Mapping[str, Any])
    assert_type(task.is_failed, bool)
    assert_type(task.is_finished, bool)
    assert_type(task.is_terminal, bool)
    assert_type(task.failure_reason, str | None)


async def photos_flow(client: AsyncApiframe, photo_file: io.BufferedReader) -> None:
    sources: list[ImageSource] = [Path("me/1.jpg"), "me/2.jpg", b"\xff\xd8\xff", photo_file]
    upload = await client.upload_images(
        sources,
        ethnicity="white",
        gender="male",
        age=35,
        webhook_url="https://me.example/hook",
        webhook_secret="s3cret",
        max_image_bytes=DEFAULT_MAX_IMAGE_BYTES,
        timeout=60.0,
    )
    assert_type(upload, SubmittedTask)
    assert_type(upload.task_id, str)
    assert_type(upload.extra, Mapping[str, Any])
    prepared = await client.wait(upload.task_id, deadline=600.0, on_progress=_progress)
    assert_type(prepared, Task)
    training = await client.train(
        prepared.task_id,
        trigger_word="TOKMSN",
        webhook_url="https://me.example/hook",
        webhook_secret="s3cret",
        timeout=60.0,
    )
    assert_type(training, SubmittedTask)
    assert_type(await client.fetch(training.task_id, timeout=10.0), Task)
    batch = await client.fetch_many([upload.task_id, training.task_id])
    assert_type(batch, TaskBatch)
    assert_type(batch.tasks, Mapping[str, Task])
    assert_type(batch.missing, tuple[str, ...])
    account = await client.account(timeout=10.0)
    assert_type(account, Account)
    assert_type(account.email, str)
    assert_type(account.credits, int)
    assert_type(account.total_images, int)
    assert_type(account.plan, str)
    assert_type(account.next_billing_date, str | None)


def statuses() -> None:
    status = TaskStatus("queued")
    assert_type(status.is_terminal, bool)
    assert_type(status.is_known, bool)
    finished: TaskStatus = TaskStatus.FINISHED
    assert_type(finished.value, str)


def request_models() -> None:
    upload = UploadRequest(
        images=("aGk=",) * 10, ethnicity="asian", gender="female", age=30, webhook_url=None
    )
    assert_type(upload.images, tuple[str, ...])
    assert_type(upload.ethnicity, Ethnicity)
    assert_type(upload.gender, Gender)
    train = TrainRequest(training_images_id="u", trigger_word="TOKMSN", webhook_secret="s")
    assert_type(train.trigger_word, str | None)


async def downloads(gen: Generation, task: Task, http: httpx.AsyncClient) -> None:
    paths = await download(
        gen, "photos", http_client=http, max_bytes=DEFAULT_MAX_DOWNLOAD_BYTES, retry=None
    )
    assert_type(paths, list[Path])
    assert_type(await download(task, Path("photos")), list[Path])
    assert_type(await download(["https://cdn.example/a.png"], "photos"), list[Path])
    saved = await download_all([gen, task], "photos", concurrency=4, http_client=http)
    assert_type(saved, list[list[Path]])
    local = await download(gen, "photos", allow_private_addresses=True)
    assert_type(local, list[Path])
    everything = await download_all([gen], "photos", allow_private_addresses=False)
    assert_type(everything, list[list[Path]])


async def webhooks(headers: Mapping[str, str], body: bytes) -> None:
    async def on_task(task: Task) -> None:
        del task

    receiver = WebhookReceiver("s3cret", url="https://me.example/hook", on_task=on_task)
    assert_type(receiver.url, str | None)
    assert_type(receiver.secret, str)
    stop = receiver.subscribe(lambda _task: None)
    stop()
    assert_type(await receiver.handle(headers, body), int)
    assert_type(await receiver.handle([(b"x-webhook-secret", b"s3cret")], "{}"), int)
    assert_type(verify_webhook(headers, "s3cret"), bool)
    assert_type(parse_webhook(body), Task)
    assert_type(parse_webhook({"task_id": "t", "status": "finished"}), Task)


def errors(exc: Exception) -> None:  # noqa: C901, PLR0912, PLR0915 -- one branch per error type
    if isinstance(exc, RequestValidationError):
        assert_type(exc.field, str)
        assert_type(exc.allowed, str | None)
        assert isinstance(exc, ValueError)
    if isinstance(exc, APIConnectionError):
        assert_type(exc.method, str)
        assert_type(exc.url, str)
        assert_type(exc.may_have_been_submitted, bool)
    if isinstance(exc, APITimeoutError):
        assert isinstance(exc, TimeoutError)
    if isinstance(exc, APIStatusError):
        assert_type(exc.status_code, int)
        assert_type(exc.body, str)
        assert_type(exc.task_id, str | None)
        assert_type(exc.retry_after, float | None)
    if isinstance(exc, BadRequestError):
        assert_type(exc.messages, tuple[str, ...])
        assert_type(exc.errors, tuple[Mapping[str, Any], ...])
    if isinstance(exc, RateLimitError):
        assert_type(exc.retry_after, float | None)
    if isinstance(exc, ResponseValidationError):
        assert_type(exc.problems, tuple[str, ...])
        assert_type(exc.method, str | None)
    if isinstance(exc, TaskFailedError):
        assert_type(exc.task_id, str)
        assert_type(exc.reason, str | None)
    if isinstance(exc, TaskTimeoutError):
        assert_type(exc.deadline, float)
        assert_type(exc.last_status, str | None)
    if isinstance(exc, UncertainSubmissionError):
        assert_type(exc.key, str)
    if isinstance(exc, ClientClosedError):
        assert isinstance(exc, RuntimeError)
    if isinstance(exc, InsufficientCreditsError):
        assert_type(exc.messages, tuple[str, ...])
    if isinstance(exc, NoImagesError):
        assert_type(exc.task_id, str)
    if isinstance(exc, TaskWaitError):
        assert_type(exc.task_id, str)
    if isinstance(exc, TaskPollError):
        assert_type(exc.last_error, ApiframeError)
    if isinstance(exc, NotSentError):
        assert_type(exc.reason, ApiframeError)
    if isinstance(exc, JournalError):
        assert_type(exc.path, str)
    if isinstance(exc, JournalInUseError):
        assert_type(exc.path, str)
    if isinstance(exc, BudgetExceededError):
        assert_type(exc.cost, int)
        assert_type(exc.spent, int)
        assert_type(exc.max_credits, int)
    if isinstance(exc, DownloadError):
        assert_type(exc.url, str)
        assert_type(exc.reason, str)
    leaves: tuple[type[APIStatusError], ...] = (
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RequestTimeoutError,
        ServerError,
        ClientError,
        InsufficientCreditsError,
    )
    del leaves


async def fake_server(receiver_client: httpx.AsyncClient) -> None:
    fake = FakeApiframe(
        api_key="dev-key",
        credits=100,
        enforce_credits=True,
        fetches_to_finish=2,
        generate_fetches=0,
        step_seconds=0.5,
        failure_rate=0.0,
        faults=[Faults(rate_429=0.1, retry_after=0, seed=1), Faults(paths={"/fetch"})],
        limits=TokenBucket(rate=10.0, burst=2),
        seed=3,
        webhook_client=receiver_client,
        webhook_grace=1.0,
        image_size=32,
        upload_ttl=3600.0,
        unknown_task_status=400,
        trigger_word_override="ANNA",
        email="me@example.com",
        plan="pro",
        next_billing_date=None,
        base_url="https://fake.apiframe",
        max_records=1000,
    )
    async with fake as entered:
        assert_type(entered, FakeApiframe)
    assert_type(fake.api_key, str)
    assert_type(fake.base_url, str)
    assert_type(fake.client(headers={"Authorization": fake.api_key}), httpx.AsyncClient)
    server = fake.serve("127.0.0.1", 0)
    assert_type(server, FakeServer)
    async with server as base_url:
        assert_type(base_url, str)
    with fake.serve() as base_url:
        assert_type(base_url, str)
    assert_type(server.start(), str)
    server.stop()
    state = fake.state()
    assert_type(state, dict[str, Any])
    fake.restore(state)
    fake.set_faults(Faults(rate_503=0.5))
    fake.set_faults(None)
    fake.set_limits([TokenBucket(rate=100.0, burst=10, retry_after="exact"), ConcurrencyLimit(32)])
    fake.set_limits(TokenBucket(rate=5, retry_after=1.5, paths={"/fetch"}, clock=time.monotonic))
    fake.set_limits(ConcurrencyLimit(limit=4, retry_after=None, paths={"/ai-photo-generate"}))
    fake.set_limits(None)
    assert_type(ConcurrencyLimit(2).running, int)
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate", times=2, retry_after=0)
    fake.inject_fault(path="/fetch", delay=0.5)
    fake.fail_next_task("/ai-photo-train", reason="Not enough faces")
    training_id = fake.add_trained_model("TOKMSN", 12)
    assert_type(training_id, str)
    assert_type(fake.add_trained_model(training_id="5c0d7a3e-0000-4000-8000-000000000001"), str)
    await fake.advance(training_id)
    await fake.advance()
    await fake.wait_webhooks(timeout=2.0)
    assert_type(fake.credits, int)
    assert_type(fake.total_images, int)
    assert_type(fake.calls("/fetch"), list[RecordedCall])
    assert_type(fake.generate_count_by_prompt(), dict[str, int])
    assert_type(fake.peak_in_flight("/ai-photo-generate"), int)
    assert_type(fake.in_flight("/ai-photo-generate"), int)
    assert_type(fake.webhooks(training_id), list[WebhookDelivery])
    assert_type(fake.task_ids("/ai-photo-upload"), list[str])
    assert fake.task(training_id) is not None


def records(call: RecordedCall, delivery: WebhookDelivery, faults: Faults) -> None:
    assert_type(call.method, str)
    assert_type(call.route, str | None)
    assert_type(call.body, Mapping[str, Any])
    assert_type(call.status, int | None)
    assert_type(call.fault, Fault | None)
    assert_type(call.created, bool)
    assert_type(call.charged, int)
    assert_type(call.authorization_sent, bool)
    assert_type(call.dropped, bool)
    assert_type(delivery.payload, Mapping[str, Any])
    assert_type(delivery.status, int | None)
    assert_type(Fault.TOO_MANY_REQUESTS.before_work, bool)
    assert_type(Fault.DROP_AFTER_WORK.drops_connection, bool)
    assert_type(faults.applies_to("/fetch"), bool)
    assert_type(faults.draw(), tuple[Fault | None, float])
    assert_type(render_png("a prompt", 1, 0, 64, 64), bytes)


def serve_blocking() -> None:
    options: FakeOptions = {"api_key": "dev-key", "fetches_to_finish": 2}
    run_fake_server("127.0.0.1", 8123, log_level="warning", **options)
    run_fake_server(fake=FakeApiframe())
