"""The AI Photos flow: upload, train, fetch, fetch-many, shared waiting, webhooks, account."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from conftest import API_KEY, FAST_RETRY

from apiframe_async import (
    AsyncApiframe,
    NotFoundError,
    PollPolicy,
    RequestValidationError,
    ResponseValidationError,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    WebhookReceiver,
    parse_webhook,
    verify_webhook,
)

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0" + bytes(64)


def photos(tmp_path: Path, n: int = 10) -> list[Path]:
    paths = []
    for i in range(n):
        path = tmp_path / f"me-{i}.jpg"
        path.write_bytes(JPEG + bytes([i]))
        paths.append(path)
    return paths


class TaskServer:
    """A stand-in for /fetch and /fetch-many: each task runs through scripted states."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[dict[str, object]]] = {}
        self.fetch_calls: list[list[str]] = []

    def script(self, task_id: str, *states: dict[str, object]) -> None:
        self.scripts[task_id] = list(states)

    def state(self, task_id: str) -> dict[str, object] | None:
        states = self.scripts.get(task_id)
        if not states:
            return None
        return states.pop(0) if len(states) > 1 else states[0]

    def fetch(self, request: httpx.Request) -> httpx.Response:
        task_id = json.loads(request.content)["task_id"]
        self.fetch_calls.append([task_id])
        state = self.state(task_id)
        if state is None:
            return httpx.Response(404, json={})
        return httpx.Response(200, json=state)

    def fetch_many(self, request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["task_ids"]
        assert 2 <= len(ids) <= 20
        self.fetch_calls.append(ids)
        tasks = [s for s in (self.state(i) for i in ids) if s is not None]
        return httpx.Response(200, json={"tasks": tasks})


@pytest.fixture
def tasks(api: respx.MockRouter) -> TaskServer:
    server = TaskServer()
    api.post("/fetch").mock(side_effect=server.fetch)
    api.post("/fetch-many").mock(side_effect=server.fetch_many)
    return server


async def test_the_four_step_flow_runs_end_to_end(
    client: AsyncApiframe, api: respx.MockRouter, tasks: TaskServer, tmp_path: Path
) -> None:
    """Upload, wait, train, wait with progress, generate: each step sends the contract's shape."""
    upload_route = api.post("/ai-photo-upload").respond(200, json={"task_id": "up-1"})
    train_route = api.post("/ai-photo-train").respond(200, json={"task_id": "tr-1"})
    gen_route = api.post("/ai-photo-generate").respond(
        200,
        json={
            "task_id": "gen-1",
            "status": "finished",
            "task_type": "ai-photo-generate",
            "image_urls": ["https://cdn.example/1.png"],
        },
    )
    tasks.script(
        "up-1",
        {"status": "processing", "message": "Preparing"},
        {
            "task_id": "up-1",
            "status": "finished",
            "message": "Images ready for training",
            "expires_at": "2026-12-01T10:00:00Z",
        },
    )
    tasks.script(
        "tr-1",
        {
            "task_id": "tr-1",
            "status": "processing",
            "message": "Training is in progress",
            "percentage": "40",
        },
        {
            "task_id": "tr-1",
            "status": "processing",
            "message": "Training is in progress",
            "percentage": "80",
        },
        {
            "task_id": "tr-1",
            "status": "finished",
            "message": "done",
            "percentage": 100,
            "trigger_word": "ZXQ",
        },
    )

    upload = await client.upload_images(photos(tmp_path), ethnicity="white", gender="male", age=35)
    prepared = await client.wait(upload.task_id)
    training = await client.train(prepared.task_id, trigger_word="TOKMSN")
    seen: list[int | None] = []
    trained = await client.wait(training.task_id, on_progress=lambda t: seen.append(t.percentage))
    gen = await client.generate(
        training_id=trained.task_id, prompt=f"a portrait of {trained.trigger_word} man"
    )

    body = json.loads(upload_route.calls.last.request.content)
    assert body["ethnicity"] == "white"
    assert body["gender"] == "male"
    assert body["age"] == 35
    assert "webhook_url" not in body
    assert base64.b64decode(body["images"][3]) == JPEG + bytes([3])
    assert prepared.expires_at == dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    assert json.loads(train_route.calls.last.request.content) == {
        "training_images_id": "up-1",
        "trigger_word": "TOKMSN",
    }
    assert seen == [40, 80, 100]
    assert trained.trigger_word == "ZXQ"
    assert json.loads(gen_route.calls.last.request.content)["prompt"] == "a portrait of ZXQ man"
    assert gen.image_urls == ("https://cdn.example/1.png",)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"ethnicity": "martian"}, "ethnicity", id="ethnicity"),
        pytest.param({"gender": "other"}, "gender", id="gender"),
        pytest.param({"age": 0}, "age", id="age-zero"),
        pytest.param({"age": -3}, "age", id="age-negative"),
        pytest.param({"age": True}, "age", id="age-bool"),
        pytest.param({"webhook_url": "ftp://x"}, "webhook_url", id="webhook-scheme"),
        pytest.param({"webhook_secret": ""}, "webhook_secret", id="webhook-secret-empty"),
        pytest.param({"count": 9}, "images", id="too-few"),
        pytest.param({"count": 31}, "images", id="too-many"),
        pytest.param({"bad": b"plain text, not an image"}, "images[4]", id="not-an-image"),
        pytest.param({"bad": b""}, "images[4]", id="empty"),
        pytest.param({"bad": "/no/such/file.jpg"}, "images[4]", id="unreadable"),
        pytest.param({"bad": PNG + bytes(2000)}, "images[4]", id="too-large"),
        pytest.param({"bad": io.StringIO("text")}, "images[4]", id="text-file"),
        pytest.param({"bad": 42}, "images[4]", id="not-a-source"),
    ],
)
async def test_upload_refuses_bad_input_before_any_request(
    client: AsyncApiframe, api: respx.MockRouter, kwargs: dict[str, object], field: str
) -> None:
    """Every upload rule refuses with the field's name, and nothing is sent."""
    route = api.post("/ai-photo-upload").respond(200, json={"task_id": "x"})
    kwargs = dict(kwargs)  # shared by the asyncio and trio runs of this case
    count = int(kwargs.pop("count", 10))  # type: ignore[call-overload]
    images: list[object] = [PNG] * count
    if "bad" in kwargs:
        images[4] = kwargs.pop("bad")
    options: dict[str, object] = {"ethnicity": "asian", "gender": "female", **kwargs}
    with pytest.raises(RequestValidationError) as info:
        await client.upload_images(images, max_image_bytes=1000, **options)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.allowed
    assert route.call_count == 0


async def test_upload_takes_paths_bytes_and_files(
    client: AsyncApiframe, api: respx.MockRouter, tmp_path: Path
) -> None:
    """Paths, bytes and binary file objects are all read and encoded."""
    route = api.post("/ai-photo-upload").respond(200, json={"task_id": "x", "note": "hi"})
    sources: list[object] = [*photos(tmp_path, 8), PNG, io.BytesIO(JPEG)]
    upload = await client.upload_images(sources, ethnicity="middle eastern", gender="female")  # type: ignore[arg-type]
    images = json.loads(route.calls.last.request.content)["images"]
    assert [base64.b64decode(i) for i in images[-2:]] == [PNG, JPEG]
    assert upload.task_id == "x"
    assert upload.extra == {"note": "hi"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"training_images_id": ""}, "training_images_id", id="empty-id"),
        pytest.param({"trigger_word": " "}, "trigger_word", id="blank-trigger"),
        pytest.param({"webhook_url": "not a url"}, "webhook_url", id="webhook-url"),
    ],
)
async def test_train_refuses_bad_input_before_any_request(
    client: AsyncApiframe, api: respx.MockRouter, kwargs: dict[str, str], field: str
) -> None:
    """Train validates its fields before anything is sent."""
    route = api.post("/ai-photo-train").respond(200, json={"task_id": "x"})
    options = {"training_images_id": "up-1", **kwargs}
    training_images_id = options.pop("training_images_id")
    with pytest.raises(RequestValidationError) as info:
        await client.train(training_images_id, **options)  # type: ignore[arg-type]
    assert info.value.field == field
    assert route.call_count == 0


async def test_fetch_parses_open_statuses_and_extra_fields(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """An unknown status and unknown fields parse; the status is not terminal."""
    tasks.script("t", {"task_id": "t", "status": "queued_for_gpu", "eta": 12})
    task = await client.fetch("t")
    assert task.status == "queued_for_gpu"
    assert task.status is not None
    assert not task.status.is_known
    assert not task.is_terminal
    assert task.extra == {"eta": 12}


async def test_fetch_many_splits_by_twenty_and_reports_missing(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """45 ids take three requests (20, 20, 5); unknown ids come back as missing."""
    ids = [f"t{i}" for i in range(45)]
    for task_id in ids[:-2]:
        tasks.script(task_id, {"task_id": task_id, "status": "processing"})
    batch = await client.fetch_many(ids)
    assert sorted(len(c) for c in tasks.fetch_calls) == [5, 20, 20]
    assert list(batch.tasks) == ids[:-2]
    assert batch.missing == ("t43", "t44")


async def test_fetch_many_sends_a_lone_id_through_fetch(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """21 ids: 20 through /fetch-many and the last through /fetch; a lone unknown is missing."""
    ids = [f"t{i}" for i in range(21)]
    for task_id in ids[:20]:
        tasks.script(task_id, {"task_id": task_id, "status": "finished"})
    batch = await client.fetch_many(ids)
    assert sorted(len(c) for c in tasks.fetch_calls) == [1, 20]
    assert batch.missing == ("t20",)


async def test_fetch_many_refuses_a_malformed_reply(
    client: AsyncApiframe, api: respx.MockRouter
) -> None:
    """A fetch-many reply without a task list raises ResponseValidationError."""
    api.post("/fetch-many").respond(200, json={"data": []})
    with pytest.raises(ResponseValidationError, match="tasks"):
        await client.fetch_many(["a", "b"])


async def test_waiting_on_500_tasks_batches_the_polls(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """500 concurrent waits send at most one fetch-many per 20 tasks per tick."""
    ids = [f"t{i}" for i in range(500)]
    for task_id in ids:
        tasks.script(
            task_id,
            {"task_id": task_id, "status": "processing"},
            {"task_id": task_id, "status": "processing"},
            {"task_id": task_id, "status": "finished", "image_urls": ["u"]},
        )
    results: dict[str, Task] = {}

    async def wait(task_id: str) -> None:
        results[task_id] = await client.wait(task_id)

    async with anyio.create_task_group() as tg:
        for task_id in ids:
            tg.start_soon(wait, task_id)
    assert len(results) == 500
    assert all(t.is_finished for t in results.values())
    polled = sum(len(c) for c in tasks.fetch_calls)
    # Three states each: every task polled three times, in full batches.
    assert polled == 1500
    assert len(tasks.fetch_calls) <= 3 * 25 + 3


async def test_wait_raises_the_failure_reason(client: AsyncApiframe, tasks: TaskServer) -> None:
    """A task that fails raises TaskFailedError with its id and the server's reason."""
    tasks.script("t", {"task_id": "t", "status": "failed", "message": "NSFW content detected"})
    with pytest.raises(TaskFailedError) as info:
        await client.wait("t")
    assert info.value.task_id == "t"
    assert info.value.reason == "NSFW content detected"


async def test_wait_treats_a_payload_without_status_as_finished(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """A result with image_urls and no status ends the wait."""
    tasks.script("t", {"task_id": "t", "image_urls": ["u"]})
    task = await client.wait("t")
    assert task.image_urls == ("u",)


async def test_wait_deadline_raises_with_the_task_id(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """A deadline raises TaskTimeoutError naming the task; waiting again still works."""
    tasks.script("t", {"task_id": "t", "status": "processing"})
    with pytest.raises(TaskTimeoutError) as info:
        await client.wait("t", deadline=0.05)
    assert info.value.task_id == "t"
    assert info.value.last_status == "processing"
    assert "wait() again" in str(info.value)
    tasks.script("t", {"task_id": "t", "status": "finished", "image_urls": ["u"]})
    assert (await client.wait("t")).is_finished


async def test_wait_for_an_unknown_task_raises_not_found(
    client: AsyncApiframe, tasks: TaskServer
) -> None:
    """A task the server never reports ends the wait with NotFoundError, not at the deadline."""
    with pytest.raises(NotFoundError) as info:
        await client.wait("nope")
    assert info.value.task_id == "nope"


async def test_account(client: AsyncApiframe, api: respx.MockRouter) -> None:
    """account() returns the typed account, with next_billing_date when present."""
    api.get("/account").respond(
        200,
        json={
            "email": "a@b.c",
            "credits": 120,
            "total_images": 7,
            "plan": "pro",
            "next_billing_date": "2026-12-24",
            "team": "x",
        },
    )
    account = await client.account()
    assert (account.email, account.credits, account.total_images, account.plan) == (
        "a@b.c",
        120,
        7,
        "pro",
    )
    assert account.next_billing_date == "2026-12-24"
    assert account.extra == {"team": "x"}


SECRET = "whsec-very-secret-value"


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        pytest.param({"x-webhook-secret": SECRET}, True, id="right"),
        pytest.param({"X-Webhook-Secret": SECRET}, True, id="any-case"),
        pytest.param([(b"x-webhook-secret", SECRET.encode())], True, id="asgi-pairs"),
        pytest.param({"x-webhook-secret": SECRET[:-1]}, False, id="prefix"),
        pytest.param({"x-webhook-secret": ""}, False, id="empty"),
        pytest.param({}, False, id="missing"),
    ],
)
def test_verify_webhook(headers: dict[str, str], ok: bool) -> None:
    """Only the exact secret in x-webhook-secret is accepted."""
    assert verify_webhook(headers, SECRET) is ok


def test_parse_webhook_gives_the_fetch_shape() -> None:
    """A webhook body parses into the same Task as fetch; bad bodies raise our error."""
    task = parse_webhook(b'{"task_id": "t", "status": "processing", "percentage": "40"}')
    assert (task.task_id, task.status, task.percentage) == ("t", TaskStatus.PROCESSING, 40)
    for bad in (b"<html>", b'{"status": "finished"}', b"[1]"):
        with pytest.raises(ResponseValidationError):
            parse_webhook(bad)


async def post(app: WebhookReceiver, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hooks.test"
    ) as http:
        return await http.post("/apiframe", content=body, headers=headers)


async def test_receiver_refuses_wrong_secret_and_accepts_right(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ASGI receiver answers 401 to a wrong or missing secret, 200 to the right one."""
    got: list[Task] = []
    receiver = WebhookReceiver(SECRET, on_task=got.append)
    body = b'{"task_id": "t", "status": "finished", "trigger_word": "ZXQ"}'
    assert (await post(receiver, body, {"x-webhook-secret": "wrong"})).status_code == 401
    assert (await post(receiver, body, {})).status_code == 401
    assert (await post(receiver, b"nonsense", {"x-webhook-secret": SECRET})).status_code == 400
    assert got == []
    assert (await post(receiver, body, {"x-webhook-secret": SECRET})).status_code == 200
    assert [t.trigger_word for t in got] == ["ZXQ"]
    assert SECRET not in repr(receiver)
    assert SECRET not in caplog.text


async def test_a_webhook_ends_a_wait_before_the_next_poll(
    api: respx.MockRouter, tasks: TaskServer
) -> None:
    """With a receiver, a wait ends on the webhook, exactly once, without waiting to poll."""
    tasks.script("tr-1", {"task_id": "tr-1", "status": "processing", "percentage": "10"})
    receiver = WebhookReceiver(SECRET, url="https://me.example/hooks")
    http = httpx.AsyncClient(transport=httpx.MockTransport(api.async_handler))
    slow_poll = PollPolicy(initial_interval=30, max_interval=30, deadline=60)
    async with (
        http,
        AsyncApiframe(
            api_key=API_KEY, http_client=http, webhooks=receiver, poll=slow_poll, retry=FAST_RETRY
        ) as client,
    ):
        train_route = api.post("/ai-photo-train").respond(200, json={"task_id": "tr-1"})
        training = await client.train("up-1")
        sent = json.loads(train_route.calls.last.request.content)
        assert sent["webhook_url"] == "https://me.example/hooks"
        assert sent["webhook_secret"] == SECRET
        results: list[Task] = []
        progress: list[int | None] = []

        async def wait() -> None:
            results.append(
                await client.wait(
                    training.task_id, on_progress=lambda t: progress.append(t.percentage)
                )
            )

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(0.01)
                headers = {"x-webhook-secret": SECRET}
                await post(
                    receiver,
                    b'{"task_id": "tr-1", "status": "processing", "percentage": "60"}',
                    headers,
                )
                await anyio.sleep(0.01)
                await post(
                    receiver,
                    b'{"task_id": "tr-1", "status": "finished", "percentage": 100}',
                    headers,
                )
                await post(
                    receiver,
                    b'{"task_id": "tr-1", "status": "finished", "percentage": 100}',
                    headers,
                )
        assert [r.percentage for r in results] == [100]
        assert progress == [60, 100]
        assert tasks.fetch_calls == []


async def test_generate_polls_a_task_reply_through_the_shared_poller(
    client: AsyncApiframe, api: respx.MockRouter, tasks: TaskServer
) -> None:
    """A generate answered with a running task is waited on until it finishes."""
    api.post("/ai-photo-generate").respond(200, json={"task_id": "g", "status": "staged"})
    tasks.script(
        "g",
        {"task_id": "g", "status": "processing"},
        {"task_id": "g", "status": "finished", "image_urls": ["a", "b"]},
    )
    gen = await client.generate(training_id="t", prompt="p")
    assert gen.image_urls == ("a", "b")
