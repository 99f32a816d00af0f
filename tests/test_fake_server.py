"""The fake APIFRAME server (`apiframe_async.testing`) speaks the API contract faithfully."""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import json
import re
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

import apiframe_async.testing
from apiframe_async.testing import (
    FakeApiframe,
    FakeOptions,
    Fault,
    Faults,
    render_png,
    run_fake_server,
)

KEY = "test-key"
IMAGES = [base64.b64encode(f"photo {i}".encode()).decode() for i in range(10)]
UPLOAD = {"images": IMAGES, "ethnicity": "white", "gender": "female"}
HTML_503 = re.compile(r"<html>.*503.*</html>", re.DOTALL)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeApiframe:
    return FakeApiframe(api_key=KEY)


@pytest.fixture
async def http(fake: FakeApiframe) -> AsyncIterator[httpx.AsyncClient]:
    async with fake.client(headers={"Authorization": KEY}) as client:
        yield client


async def fetch(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    reply = await http.post("/fetch", json={"task_id": task_id})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def fetch_until_done(http: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    seen = [await fetch(http, task_id)]
    while seen[-1]["status"] not in {"finished", "failed"}:
        assert len(seen) < 20, seen
        seen.append(await fetch(http, task_id))
    return seen


async def create(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
    reply = await http.post(path, json=body)
    assert reply.status_code == 200, reply.text
    task_id: str = reply.json()["task_id"]
    return task_id


async def trained_model(http: httpx.AsyncClient, trigger_word: str | None = None) -> str:
    upload_id = await create(http, "/ai-photo-upload", UPLOAD)
    await fetch_until_done(http, upload_id)
    body = {"training_images_id": upload_id}
    if trigger_word is not None:
        body["trigger_word"] = trigger_word
    training_id = await create(http, "/ai-photo-train", body)
    await fetch_until_done(http, training_id)
    return training_id


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking the signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    """Check a PNG fully (chunks, IHDR, pixel data) and return its width and height."""
    chunks = png_chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour) == (8, 2)
    pixels = zlib.decompress(chunks[1][1])
    assert len(pixels) == height * (1 + 3 * width)
    assert all(pixels[row * (1 + 3 * width)] == 0 for row in range(height))
    return width, height


class Receiver:
    """An ASGI app that records webhook calls; it can hold its replies until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, dict[str, Any]]] = []
        self.release: anyio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if self.release is not None:
            await self.release.wait()
        headers = dict(scope["headers"])
        secret = headers.get(b"x-webhook-secret")
        self.calls.append((secret and secret.decode(), json.loads(b"".join(chunks))))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self))


# -- public surface -------------------------------------------------------------------------


def test_all_lists_exactly_the_public_names() -> None:
    """`__all__` is sorted and holds every public name of the package and nothing else."""
    module = apiframe_async.testing
    # "@py_builtins" and the like: pytest rewrites the asserts of plugin packages.
    public = {name for name in vars(module) if not name.startswith(("_", "@"))}
    assert module.__all__ == sorted(module.__all__)
    assert set(module.__all__) == public


def test_fake_options_mirror_the_constructor() -> None:
    """`FakeOptions` (for `run_fake_server(**options)`) names every `FakeApiframe` option."""
    parameters = inspect.signature(FakeApiframe).parameters
    assert set(FakeOptions.__annotations__) == set(parameters)


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    """The docs are built from docstrings: each public class and function shows an example."""
    for name in apiframe_async.testing.__all__:
        doc = getattr(apiframe_async.testing, name).__doc__ or ""
        assert "Example:" in doc, name


# -- happy paths ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_upload_goes_pending_processing_finished(http: httpx.AsyncClient) -> None:
    """An upload replies `{task_id}` (a uuid4) and finishes with a message and `expires_at`."""
    reply = await http.post("/ai-photo-upload", json=UPLOAD)
    assert reply.status_code == 200
    assert set(reply.json()) == {"task_id"}
    task_id = reply.json()["task_id"]
    assert uuid.UUID(task_id).version == 4
    seen = await fetch_until_done(http, task_id)
    assert [s["status"] for s in seen] == ["pending", "processing", "processing", "finished"]
    assert seen[1] == {"task_id": task_id, "status": "processing", "message": "Preparing images"}
    final = seen[-1]
    assert set(final) == {"task_id", "status", "message", "expires_at"}
    assert final["message"] == "Images ready for training"
    expires = dt.datetime.fromisoformat(final["expires_at"])
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)


@pytest.mark.anyio
async def test_training_percentage_is_a_string_then_the_number_100(
    http: httpx.AsyncClient,
) -> None:
    """Training reports percentage as a string while running and as the number 100 at the end."""
    upload_id = await create(http, "/ai-photo-upload", UPLOAD)
    await fetch_until_done(http, upload_id)
    training_id = await create(
        http, "/ai-photo-train", {"training_images_id": upload_id, "trigger_word": "ZWX"}
    )
    seen = await fetch_until_done(http, training_id)
    assert [(s["status"], s["percentage"]) for s in seen] == [
        ("pending", "0"),
        ("processing", "33"),
        ("processing", "67"),
        ("finished", 100),
    ]
    assert seen[1]["message"] == "Training is in progress"
    assert set(seen[-1]) == {"task_id", "status", "message", "percentage", "trigger_word"}
    assert seen[-1]["trigger_word"] == "ZWX"


@pytest.mark.anyio
async def test_trigger_word_defaults_and_can_be_overridden_by_the_result() -> None:
    """The trigger word defaults to TOKMSN; `trigger_word_override` makes the result differ."""
    async with FakeApiframe(api_key=KEY).client(headers={"Authorization": KEY}) as http:
        assert (await fetch(http, await trained_model(http)))["trigger_word"] == "TOKMSN"
    fake = FakeApiframe(api_key=KEY, trigger_word_override="SKS")
    async with fake.client(headers={"Authorization": KEY}) as http:
        assert (await fetch(http, await trained_model(http, "ZWX")))["trigger_word"] == "SKS"


@pytest.mark.anyio
async def test_generate_is_synchronous_by_default(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """Generate replies with the finished result: task_type and one absolute URL per image."""
    training_id = await trained_model(http)
    body = {"training_id": training_id, "prompt": "TOKMSN in a suit", "number_of_images": "3"}
    reply = await http.post("/ai-photo-generate", json=body)
    assert reply.status_code == 200
    result = reply.json()
    assert set(result) == {"task_id", "status", "task_type", "image_urls"}
    assert (result["status"], result["task_type"]) == ("finished", "ai-photo-generate")
    assert result["image_urls"] == [
        f"{fake.base_url}/images/{result['task_id']}-{i}.png" for i in range(3)
    ]
    assert await fetch(http, result["task_id"]) == result


@pytest.mark.anyio
async def test_generate_can_answer_processing_and_finish_after_n_fetches() -> None:
    """With `generate_fetches=2`, generate answers processing and the 2nd fetch finishes it."""
    fake = FakeApiframe(api_key=KEY, generate_fetches=2)
    async with fake.client(headers={"Authorization": KEY}) as http:
        body = {"training_id": fake.add_trained_model(), "prompt": "p"}
        reply = (await http.post("/ai-photo-generate", json=body)).json()
        assert reply == {
            "task_id": reply["task_id"],
            "status": "processing",
            "task_type": "ai-photo-generate",
        }
        seen = [await fetch(http, reply["task_id"]) for _ in range(2)]
        assert [s["status"] for s in seen] == ["processing", "finished"]
        assert len(seen[-1]["image_urls"]) == 1
        image = await http.get(seen[-1]["image_urls"][0])
        assert image.status_code == 200


@pytest.mark.anyio
async def test_fetch_many_returns_known_tasks_and_leaves_out_unknown_ids(
    http: httpx.AsyncClient,
) -> None:
    """`/fetch-many` answers `{"tasks": [...]}` for 2-20 ids, silently dropping unknown ones."""
    first = await create(http, "/ai-photo-upload", UPLOAD)
    second = await create(http, "/ai-photo-upload", UPLOAD)
    ids = [first, str(uuid.uuid4()), second]
    reply = await http.post("/fetch-many", json={"task_ids": ids})
    assert reply.status_code == 200
    assert [t["task_id"] for t in reply.json()["tasks"]] == [first, second]
    assert {t["status"] for t in reply.json()["tasks"]} == {"pending"}
    again = (await http.post("/fetch-many", json={"task_ids": ids})).json()["tasks"]
    assert {t["status"] for t in again} == {"processing"}, "each fetch-many moves tasks on"
    twenty = [first, *(str(uuid.uuid4()) for _ in range(19))]
    assert (await http.post("/fetch-many", json={"task_ids": twenty})).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("count", [pytest.param(0, id="none"), 1, 21])
async def test_fetch_many_rejects_fewer_than_2_or_more_than_20_ids(
    http: httpx.AsyncClient, count: int
) -> None:
    """`/fetch-many` with fewer than 2 or more than 20 ids is a 400 on `task_ids`."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    reply = await http.post("/fetch-many", json={"task_ids": ids})
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["path"] == "task_ids"


@pytest.mark.anyio
async def test_account_shape_and_credits_charged_per_the_contract(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """Upload costs 2, training 4 per image, generation 1 per photo; total_images counts photos."""
    account = (await http.get("/account")).json()
    assert set(account) == {"email", "credits", "total_images", "plan", "next_billing_date"}
    assert (account["credits"], account["total_images"]) == (10_000, 0)
    training_id = await trained_model(http)
    assert fake.credits == 10_000 - 2 - 4 * len(IMAGES)
    body = {"training_id": training_id, "prompt": "p", "number_of_images": "4"}
    await http.post("/ai-photo-generate", json=body)
    account = (await http.get("/account")).json()
    assert (account["credits"], account["total_images"]) == (10_000 - 42 - 4, 4)
    assert [c.charged for c in fake.calls() if c.created] == [2, 40, 4]


@pytest.mark.anyio
async def test_out_of_credits_is_a_402_and_nothing_is_created() -> None:
    """Work the account cannot pay for is refused with 402 before anything is created."""
    fake = FakeApiframe(api_key=KEY, credits=41)
    async with fake.client(headers={"Authorization": KEY}) as http:
        upload_id = await create(http, "/ai-photo-upload", UPLOAD)
        await fetch_until_done(http, upload_id)
        reply = await http.post("/ai-photo-train", json={"training_images_id": upload_id})
        assert reply.status_code == 402
        assert "credits" in reply.json()["errors"][0]["msg"]
        assert fake.credits == 39
        assert fake.task_ids("/ai-photo-train") == []
    lenient = FakeApiframe(api_key=KEY, credits=0, enforce_credits=False)
    async with lenient.client(headers={"Authorization": KEY}) as http:
        await create(http, "/ai-photo-upload", UPLOAD)
        assert lenient.credits == -2


# -- validation and auth ---------------------------------------------------------------------


UPLOAD_CASES = [
    pytest.param({"ethnicity": "white", "gender": "male"}, "images", id="no-images"),
    pytest.param(UPLOAD | {"images": IMAGES[:9]}, "images", id="9-images"),
    pytest.param(UPLOAD | {"images": IMAGES * 3 + IMAGES[:1]}, "images", id="31-images"),
    pytest.param(UPLOAD | {"images": "abc"}, "images", id="images-not-a-list"),
    pytest.param(UPLOAD | {"images": [*IMAGES[:9], "not base64!"]}, "images[9]", id="bad-base64"),
    pytest.param(UPLOAD | {"images": [*IMAGES[:9], 7]}, "images[9]", id="image-not-a-string"),
    pytest.param(UPLOAD | {"ethnicity": "martian"}, "ethnicity", id="bad-ethnicity"),
    pytest.param({"images": IMAGES, "gender": "male"}, "ethnicity", id="no-ethnicity"),
    pytest.param(UPLOAD | {"gender": "other"}, "gender", id="bad-gender"),
    pytest.param(UPLOAD | {"age": "30"}, "age", id="age-not-int"),
    pytest.param(UPLOAD | {"webhook_url": "ftp://x"}, "webhook_url", id="bad-webhook-url"),
    pytest.param(
        UPLOAD | {"webhook_url": "http://x", "webhook_secret": 1}, "webhook_secret", id="bad-secret"
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("body", "path"), UPLOAD_CASES)
async def test_upload_validation(
    fake: FakeApiframe, http: httpx.AsyncClient, body: dict[str, Any], path: str
) -> None:
    """Each contract rule of `/ai-photo-upload` gives a 400 naming the field; nothing is charged."""
    reply = await http.post("/ai-photo-upload", json=body)
    assert reply.status_code == 400
    errors = reply.json()["errors"]
    assert path in [e["path"] for e in errors]
    assert all(isinstance(e["msg"], str) and e["msg"] for e in errors)
    assert fake.credits == 10_000
    assert fake.task_ids() == []


@pytest.mark.anyio
async def test_upload_accepts_every_documented_ethnicity_and_age(http: httpx.AsyncClient) -> None:
    """All seven ethnicities, both genders and an int age are accepted."""
    for ethnicity in ["asian", "black", "latino", "middle eastern", "native american",
                      "pacific islander", "white"]:  # fmt: skip
        body = UPLOAD | {"ethnicity": ethnicity, "gender": "male", "age": 30}
        assert (await http.post("/ai-photo-upload", json=body)).status_code == 200


@pytest.mark.anyio
async def test_train_needs_a_finished_unexpired_upload() -> None:
    """Training needs an upload task id that is finished, not failed and not expired."""
    now = [1_700_000_000.0]
    fake = FakeApiframe(api_key=KEY, clock=lambda: now[0], upload_ttl=60)
    async with fake.client(headers={"Authorization": KEY}) as http:

        async def train(images_id: object) -> httpx.Response:
            return await http.post("/ai-photo-train", json={"training_images_id": images_id})

        assert (await train(None)).json()["errors"][0]["path"] == "training_images_id"
        assert (await train(str(uuid.uuid4()))).status_code == 400
        upload_id = await create(http, "/ai-photo-upload", UPLOAD)
        unfinished = await train(upload_id)
        assert unfinished.status_code == 400
        assert "not finished" in unfinished.json()["errors"][0]["msg"]
        await fetch_until_done(http, upload_id)
        now[0] += 61
        expired = await train(upload_id)
        assert expired.status_code == 400
        assert "expired" in expired.json()["errors"][0]["msg"]
        fresh = await create(http, "/ai-photo-upload", UPLOAD)
        await fetch_until_done(http, fresh)
        assert (await train(fresh)).status_code == 200
        generate_id = await create(http, "/ai-photo-train", {"training_images_id": fresh})
        assert (await train(generate_id)).status_code == 400, "a training is no upload"


GENERATE_CASES = [
    pytest.param({"training_id": None}, "training_id", id="no-training-id"),
    pytest.param(
        {"training_id": "00000000-0000-4000-8000-000000000000"},
        "training_id",
        id="unknown-training",
    ),
    pytest.param({"prompt": None}, "prompt", id="no-prompt"),
    pytest.param({"prompt": ""}, "prompt", id="empty-prompt"),
    pytest.param({"aspect_ratio": "7:5"}, "aspect_ratio", id="bad-aspect-ratio"),
    pytest.param({"width": "512"}, "width", id="width-without-custom"),
    pytest.param({"aspect_ratio": "1:1", "height": "512"}, "height", id="height-without-custom"),
    pytest.param({"aspect_ratio": "custom", "width": "512"}, "height", id="custom-without-height"),
    pytest.param(
        {"aspect_ratio": "custom", "width": 512, "height": "512"}, "width", id="width-int"
    ),
    pytest.param(
        {"aspect_ratio": "custom", "width": "5x", "height": "512"}, "width", id="width-not-digits"
    ),
    pytest.param(
        {"aspect_ratio": "custom", "width": "0", "height": "512"}, "width", id="width-zero"
    ),
    pytest.param(
        {"aspect_ratio": "custom", "width": "9" * 5000, "height": "1"}, "width", id="width-huge"
    ),
    pytest.param({"number_of_images": "5"}, "number_of_images", id="five-images"),
    pytest.param({"number_of_images": "0"}, "number_of_images", id="zero-images"),
    pytest.param({"number_of_images": 2}, "number_of_images", id="number-int"),
    pytest.param({"seed": "7"}, "seed", id="seed-str"),
    pytest.param({"seed": True}, "seed", id="seed-bool"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("change", "path"), GENERATE_CASES)
async def test_generate_validation(
    fake: FakeApiframe, http: httpx.AsyncClient, change: dict[str, Any], path: str
) -> None:
    """Each contract rule of `/ai-photo-generate` gives a 400 naming the field; nothing is made."""
    body = {"training_id": fake.add_trained_model(), "prompt": "p"} | change
    reply = await http.post(
        "/ai-photo-generate", json={k: v for k, v in body.items() if v is not None}
    )
    assert reply.status_code == 400
    assert path in [e["path"] for e in reply.json()["errors"]]
    assert fake.generate_count_by_prompt() == {}
    assert fake.credits == 10_000


@pytest.mark.anyio
async def test_generate_needs_a_finished_training(http: httpx.AsyncClient) -> None:
    """A training that is still running (or an upload id) is no `training_id`."""
    upload_id = await create(http, "/ai-photo-upload", UPLOAD)
    await fetch_until_done(http, upload_id)
    training_id = await create(http, "/ai-photo-train", {"training_images_id": upload_id})
    for wrong in (training_id, upload_id):
        reply = await http.post("/ai-photo-generate", json={"training_id": wrong, "prompt": "p"})
        assert reply.status_code == 400
        assert reply.json()["errors"][0]["path"] == "training_id"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "content_type", "msg"),
    [
        pytest.param(b"{not json", "application/json", "not valid JSON", id="bad-json"),
        pytest.param(b"[1, 2]", "application/json", "JSON object", id="not-an-object"),
        pytest.param(b'{"task_id": "x"}', "text/plain", "Content-Type", id="not-json-type"),
    ],
)
async def test_bad_bodies_are_400(
    http: httpx.AsyncClient, content: bytes, content_type: str, msg: str
) -> None:
    """A body that is not a JSON object sent as application/json is a 400."""
    reply = await http.post("/fetch", content=content, headers={"Content-Type": content_type})
    assert reply.status_code == 400
    assert msg in reply.json()["errors"][0]["msg"]


@pytest.mark.anyio
async def test_fetch_without_task_id_is_400(http: httpx.AsyncClient) -> None:
    """`/fetch` needs a `task_id` string."""
    for body in ({}, {"task_id": 5}):
        reply = await http.post("/fetch", json=body)
        assert reply.status_code == 400
        assert reply.json()["errors"][0]["path"] == "task_id"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [404, 400])
async def test_unknown_task_id_is_404_or_as_configured(status: int) -> None:
    """`/fetch` of an unknown id is a 404 (or the configured status) naming `task_id`."""
    fake = (
        FakeApiframe(api_key=KEY)  # the default
        if status == 404
        else FakeApiframe(api_key=KEY, unknown_task_status=status)
    )
    async with fake.client(headers={"Authorization": KEY}) as http:
        reply = await http.post("/fetch", json={"task_id": str(uuid.uuid4())})
    assert reply.status_code == status
    (error,) = reply.json()["errors"]
    assert (error["path"], error["msg"]) == ("task_id", "Task not found")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "auth"),
    [
        pytest.param({}, "missing", id="missing"),
        pytest.param({"Authorization": "wrong"}, "invalid", id="wrong-key"),
        pytest.param({"Authorization": f"Bearer {KEY}"}, "invalid", id="bearer-prefix"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/ai-photo-upload"),
        ("POST", "/fetch"),
        ("POST", "/fetch-many"),
        ("GET", "/account"),
    ],
)
async def test_wrong_or_missing_key_is_401_with_an_empty_object(
    fake: FakeApiframe, headers: dict[str, str], auth: str, method: str, path: str
) -> None:
    """Without the raw key (a `Bearer` prefix is wrong too) every API call is 401 `{}`."""
    async with fake.client(headers=headers) as http:
        reply = await http.request(method, path, json=UPLOAD if method == "POST" else None)
    assert (reply.status_code, reply.json()) == (401, {})
    (call,) = fake.calls(path)
    assert (call.auth, call.status, call.created) == (auth, 401, False)
    assert fake.credits == 10_000


@pytest.mark.anyio
async def test_unknown_routes_and_wrong_methods_are_404(http: httpx.AsyncClient) -> None:
    """Paths outside the contract, or a known path with the wrong method, answer 404."""
    for method, path in [("POST", "/ai-photos/generate"), ("GET", "/fetch"), ("POST", "/account")]:
        assert (await http.request(method, path, json={})).status_code == 404
    assert (await http.get("/images/nope-0.png")).status_code == 404


# -- failures, progress by time, ids ------------------------------------------------------


@pytest.mark.anyio
async def test_failed_tasks_carry_message_and_error() -> None:
    """With `failure_rate=1`, tasks end `failed` with a reason in `message` and `error`."""
    fake = FakeApiframe(api_key=KEY, failure_rate=1.0, fetches_to_finish=2)
    async with fake.client(headers={"Authorization": KEY}) as http:
        upload_id = await create(http, "/ai-photo-upload", UPLOAD)
        final = (await fetch_until_done(http, upload_id))[-1]
        assert final["status"] == "failed"
        assert final["message"] == final["error"]
        assert final["message"]
        reply = await http.post("/ai-photo-train", json={"training_images_id": upload_id})
        assert "failed" in reply.json()["errors"][0]["msg"]


@pytest.mark.anyio
async def test_fail_next_task_makes_a_synchronous_generation_fail(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """`fail_next_task` fails exactly the next generation, with the given reason, in the reply."""
    fake.fail_next_task("/ai-photo-generate", reason="NSFW")
    body = {"training_id": fake.add_trained_model(), "prompt": "p"}
    failed = (await http.post("/ai-photo-generate", json=body)).json()
    assert failed == {
        "task_id": failed["task_id"],
        "status": "failed",
        "task_type": "ai-photo-generate",
        "message": "NSFW",
        "error": "NSFW",
    }
    assert (await http.post("/ai-photo-generate", json=body)).json()["status"] == "finished"
    assert fake.total_images == 1


@pytest.mark.anyio
async def test_tasks_also_move_on_by_the_clock() -> None:
    """With `step_seconds`, a task is as far as the clock says, even without fetches."""
    now = [1_000.0]
    fake = FakeApiframe(api_key=KEY, step_seconds=10, clock=lambda: now[0])
    async with fake.client(headers={"Authorization": KEY}) as http:
        task_id = await create(http, "/ai-photo-upload", UPLOAD)
        now[0] += 25
        assert (await fetch(http, task_id))["status"] == "processing"
        now[0] += 100
        assert (await fetch(http, task_id))["status"] == "finished"


def test_a_seed_makes_ids_and_failures_reproducible() -> None:
    """Two fakes with the same seed hand out the same task ids."""
    first, second = FakeApiframe(seed=3), FakeApiframe(seed=3)
    assert first.add_trained_model() == second.add_trained_model()
    assert first.task_ids() == second.task_ids()
    assert FakeApiframe(seed=4).add_trained_model() != first.add_trained_model()


# -- images -----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("shape", "size"),
    [
        pytest.param({}, (64, 64), id="1:1"),
        pytest.param({"aspect_ratio": "16:9"}, (64, 36), id="16:9"),
        pytest.param({"aspect_ratio": "1:4"}, (16, 64), id="1:4"),
        pytest.param(
            {"aspect_ratio": "custom", "width": "300", "height": "600"}, (32, 64), id="custom"
        ),
    ],
)
async def test_images_are_valid_deterministic_pngs(
    fake: FakeApiframe, http: httpx.AsyncClient, shape: dict[str, str], size: tuple[int, int]
) -> None:
    """Each image is a valid PNG (CRCs, IHDR, zlib data) equal to `render_png(prompt, seed, i)`."""
    body = {"training_id": fake.add_trained_model(), "prompt": "TOKMSN", "seed": 7}
    body |= shape | {"number_of_images": "2"}
    urls = (await http.post("/ai-photo-generate", json=body)).json()["image_urls"]
    pngs = [(await http.get(url)) for url in urls]
    assert [p.headers["content-type"] for p in pngs] == ["image/png"] * 2
    assert [png_size(p.content) for p in pngs] == [size, size]
    assert [p.content for p in pngs] == [render_png("TOKMSN", 7, i, *size) for i in range(2)]
    assert pngs[0].content != pngs[1].content


def test_render_png_depends_on_prompt_seed_and_index() -> None:
    """The same (prompt, seed, index) renders the same bytes; changing any one changes them."""
    base = render_png("a", 1, 0)
    assert render_png("a", 1, 0) == base
    assert png_size(base) == (64, 64)
    assert len({base, render_png("b", 1, 0), render_png("a", 2, 0), render_png("a", 1, 1)}) == 4
    assert render_png("a", None, 0) != base


@pytest.mark.anyio
async def test_image_fetches_need_no_auth_and_record_whether_it_was_sent(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """The image route answers without a key and records whether an Authorization was sent."""
    body = {"training_id": fake.add_trained_model(), "prompt": "p"}
    (url,) = (await http.post("/ai-photo-generate", json=body)).json()["image_urls"]
    async with fake.client() as anonymous:
        assert (await anonymous.get(url)).status_code == 200
    assert (await http.get(url)).status_code == 200
    assert [c.authorization_sent for c in fake.calls("/images")] == [False, True]
    assert [c.auth for c in fake.calls("/images")] == ["missing", "valid"]


@pytest.mark.anyio
async def test_image_urls_work_on_a_real_loopback_server(fake: FakeApiframe) -> None:
    """Under uvicorn, image URLs carry the server's host and port, and the key stays away."""
    async with fake.serve() as base_url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": KEY}) as api:
            body = {"training_id": fake.add_trained_model(), "prompt": "p", "seed": 1}
            result = (await api.post("/ai-photo-generate", json=body)).json()
        (url,) = result["image_urls"]
        assert url == f"{base_url}/images/{result['task_id']}-0.png"
        async with httpx.AsyncClient() as downloader:
            image = await downloader.get(url)
    assert image.content == render_png("p", 1, 0)
    assert not fake.calls("/images")[0].authorization_sent


def test_serve_works_without_an_event_loop(fake: FakeApiframe) -> None:
    """`serve()` is also a plain context manager, for sync tests and scripts."""
    with fake.serve() as base_url, httpx.Client(base_url=base_url) as client:
        assert client.get("/account", headers={"Authorization": KEY}).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/account")


def test_serve_and_run_fake_server_explain_a_missing_uvicorn(
    fake: FakeApiframe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without uvicorn installed, serving raises an ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"apiframe-async\[server\]"), fake.serve():
        pass
    with pytest.raises(ImportError, match=r"apiframe-async\[server\]"):
        run_fake_server("127.0.0.1", 0)


def test_the_testing_kit_and_plugin_import_without_uvicorn() -> None:
    """Only serving needs uvicorn: the package and the pytest plugin import without it."""
    code = (
        "import sys; sys.modules['uvicorn'] = None; "
        "import apiframe_async.testing, apiframe_async.testing._pytest_plugin; "
        "apiframe_async.testing.FakeApiframe()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # noqa: S603 - our own code


def test_run_fake_server_reports_a_busy_port(fake: FakeApiframe) -> None:
    """`run_fake_server` fails fast with OSError when the port is taken."""
    with fake.serve() as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        with pytest.raises(OSError):  # EADDRINUSE, whose text varies by OS
            run_fake_server("127.0.0.1", port, api_key="k")


# -- webhooks ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_webhooks_post_each_step_with_the_secret() -> None:
    """Every step of an upload is POSTed to webhook_url, equal to /fetch, with the secret."""
    receiver = Receiver()
    async with receiver.client() as webhook_client:
        fake = FakeApiframe(api_key=KEY, webhook_client=webhook_client)
        async with fake.client(headers={"Authorization": KEY}) as http:
            hook = {"webhook_url": "http://hooks.test/in", "webhook_secret": "s3cret"}
            task_id = await create(http, "/ai-photo-upload", UPLOAD | hook)
            seen = await fetch_until_done(http, task_id)
    assert [secret for secret, _ in receiver.calls] == ["s3cret"] * 3
    assert [payload for _, payload in receiver.calls] == seen[1:]
    deliveries = fake.webhooks(task_id)
    assert [(d.url, d.status, d.error) for d in deliveries] == [
        ("http://hooks.test/in", 204, None)
    ] * 3


@pytest.mark.anyio
async def test_webhook_delivery_does_not_hold_back_the_reply() -> None:
    """Inside `async with fake:`, a fetch replies while its webhook is still being delivered."""
    receiver = Receiver()
    receiver.release = anyio.Event()
    async with (
        receiver.client() as webhook_client,
        FakeApiframe(api_key=KEY, webhook_client=webhook_client, fetches_to_finish=2) as fake,
        fake.client(headers={"Authorization": KEY}) as http,
    ):
        body = UPLOAD | {"webhook_url": "http://hooks.test/in"}
        task_id = await create(http, "/ai-photo-upload", body)
        with anyio.fail_after(2):
            assert (await fetch(http, task_id))["status"] == "pending"
        assert receiver.calls == []
        receiver.release.set()
        await fake.wait_webhooks()
    assert [payload["status"] for _, payload in receiver.calls] == ["finished"]
    assert receiver.calls[0][0] is None, "no secret, no header"


@pytest.mark.anyio
async def test_training_webhooks_and_manual_advance() -> None:
    """`advance()` moves a training on and delivers its webhooks before returning."""
    receiver = Receiver()
    async with receiver.client() as webhook_client:
        fake = FakeApiframe(api_key=KEY, webhook_client=webhook_client)
        async with fake.client(headers={"Authorization": KEY}) as http:
            upload_id = await create(http, "/ai-photo-upload", UPLOAD)
            await fetch_until_done(http, upload_id)
            body = {
                "training_images_id": upload_id,
                "webhook_url": "http://h/",
                "webhook_secret": "x",
            }
            training_id = await create(http, "/ai-photo-train", body)
        for _ in range(5):
            await fake.advance(training_id)
    assert [p["percentage"] for _, p in receiver.calls] == ["33", "67", 100]
    assert fake.task(training_id) == receiver.calls[-1][1]
    with pytest.raises(KeyError):
        await fake.advance("nope")


@pytest.mark.anyio
async def test_wall_clock_steps_are_posted_without_any_fetch() -> None:
    """With `step_seconds` and a background runner, webhooks arrive with nobody fetching."""
    receiver = Receiver()
    async with (
        receiver.client() as webhook_client,
        FakeApiframe(
            api_key=KEY, webhook_client=webhook_client, step_seconds=0.02, fetches_to_finish=3
        ) as fake,
        fake.client(headers={"Authorization": KEY}) as http,
    ):
        await create(http, "/ai-photo-upload", UPLOAD | {"webhook_url": "http://h/"})
        with anyio.fail_after(5):
            while len(receiver.calls) < 2:  # noqa: ASYNC110 - polling the receiver's list
                await anyio.sleep(0.01)
    assert [p["status"] for _, p in receiver.calls] == ["processing", "finished"]


@pytest.mark.anyio
async def test_webhooks_from_a_served_fake_are_delivered_in_the_background() -> None:
    """Under uvicorn, webhooks go out from the server's loop and are recorded."""
    receiver = Receiver()
    async with receiver.client() as webhook_client:
        fake = FakeApiframe(api_key=KEY, webhook_client=webhook_client, fetches_to_finish=2)
        async with (
            fake.serve() as base_url,
            httpx.AsyncClient(base_url=base_url, headers={"Authorization": KEY}) as http,
        ):
            hook = {"webhook_url": "http://h/", "webhook_secret": "z"}
            task_id = await create(http, "/ai-photo-upload", UPLOAD | hook)
            await fetch_until_done(http, task_id)
            await fake.wait_webhooks()
    assert [(s, p["status"]) for s, p in receiver.calls] == [("z", "finished")]


@pytest.mark.anyio
async def test_a_failing_webhook_receiver_is_recorded_not_raised() -> None:
    """A receiver that cannot be reached is recorded with the error; the API call still works."""
    fake = FakeApiframe(api_key=KEY, fetches_to_finish=1)
    async with fake.client(headers={"Authorization": KEY}) as http:
        body = UPLOAD | {"webhook_url": "http://127.0.0.1:9/unreachable"}
        task_id = await create(http, "/ai-photo-upload", body)
    (delivery,) = fake.webhooks(task_id)
    assert delivery.status is None
    assert delivery.error is not None
    assert "ConnectError" in delivery.error


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_429_comes_with_retry_after_and_does_no_work(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """A 429 carries Retry-After, creates nothing, charges nothing, and is recorded."""
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-upload", retry_after=3)
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-upload", retry_after=None)
    first = await http.post("/ai-photo-upload", json=UPLOAD)
    second = await http.post("/ai-photo-upload", json=UPLOAD)
    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert second.status_code == 429
    assert "retry-after" not in second.headers
    assert (fake.credits, fake.task_ids()) == (10_000, [])
    assert [c.fault for c in fake.calls()] == [Fault.TOO_MANY_REQUESTS] * 2
    assert (await http.post("/ai-photo-upload", json=UPLOAD)).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "status"),
    [
        pytest.param(Fault.SERVER_ERROR, 500, id="500"),
        pytest.param(Fault.UNAVAILABLE, 503, id="503"),
    ],
)
async def test_500_and_503_happen_before_the_work(
    fake: FakeApiframe, http: httpx.AsyncClient, fault: Fault, status: int
) -> None:
    """A 500 answers `{}` and a 503 a proxy's HTML page; neither creates nor charges."""
    fake.inject_fault(fault)
    body = {"training_id": fake.add_trained_model(), "prompt": "p"}
    reply = await http.post("/ai-photo-generate", json=body)
    assert reply.status_code == status
    if status == 500:
        assert reply.json() == {}
    else:
        assert reply.headers["content-type"].startswith("text/html")
        assert HTML_503.search(reply.text)
    assert fake.generate_count_by_prompt() == {}
    assert fake.calls()[0].fault is fault


@pytest.mark.anyio
async def test_drop_before_work_creates_nothing(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """A drop before the work raises RemoteProtocolError and leaves no task and no charge."""
    fake.inject_fault(Fault.DROP_BEFORE_WORK, path="/ai-photo-generate")
    body = {"training_id": fake.add_trained_model(), "prompt": "p"}
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/ai-photo-generate", json=body)
    (call,) = fake.calls("/ai-photo-generate")
    assert (call.fault, call.status, call.created, call.charged) == (
        Fault.DROP_BEFORE_WORK,
        None,
        False,
        0,
    )
    assert call.dropped
    assert fake.generate_count_by_prompt() == {}


@pytest.mark.anyio
async def test_drop_after_work_is_recorded_as_created_and_charged(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """A drop after the work leaves a charged generation behind: a retry would pay twice."""
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate")
    body = {"training_id": fake.add_trained_model(), "prompt": "once", "number_of_images": "2"}
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/ai-photo-generate", json=body)
    (call,) = fake.calls("/ai-photo-generate")
    assert (call.fault, call.status, call.created, call.charged) == (
        Fault.DROP_AFTER_WORK,
        None,
        True,
        2,
    )
    assert call.task_id is not None
    assert call.task_id in fake.task_ids("/ai-photo-generate")
    assert (fake.task(call.task_id) or {}).get("status") == "finished"
    assert fake.credits == 10_000 - 2
    await http.post("/ai-photo-generate", json=body)
    assert fake.generate_count_by_prompt() == {"once": 2}


@pytest.mark.anyio
async def test_a_drop_on_a_real_server_is_an_incomplete_response(
    fake: FakeApiframe, caplog: pytest.LogCaptureFixture
) -> None:
    """Under uvicorn a dropped connection is RemoteProtocolError, without a logged traceback."""
    fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-upload")
    async with (
        fake.serve() as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": KEY}) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/ai-photo-upload", json=UPLOAD)
        assert (await http.get("/account")).json()["credits"] == 10_000 - 2
    assert [c.created for c in fake.calls()] == [True, False]
    assert "Exception in ASGI application" not in caplog.text


@pytest.mark.anyio
async def test_slow_replies_are_delayed_and_time_out_in_process(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """A delay is recorded; in-process, a read timeout shorter than it raises ReadTimeout."""
    fake.inject_fault(delay=0.05, path="/account")
    assert (await http.get("/account")).status_code == 200
    fake.inject_fault(delay=1.0, path="/account")
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/account", timeout=0.05)
    assert [(c.delay, c.status) for c in fake.calls("/account")] == [(0.05, 200), (1.0, None)]


@pytest.mark.anyio
async def test_random_faults_are_reproducible_with_a_seed_and_scoped_by_path() -> None:
    """The same seed gives the same faults; faults only hit the paths they name."""

    async def statuses(seed: int) -> list[int]:
        faults = Faults(
            rate_429=0.3, rate_500=0.2, rate_503=0.2, retry_after=0, paths={"/account"}, seed=seed
        )
        fake = FakeApiframe(api_key=KEY, faults=faults)
        async with fake.client(headers={"Authorization": KEY}) as http:
            assert (await http.post("/fetch", json={"task_id": "x"})).status_code == 404
            return [(await http.get("/account")).status_code for _ in range(40)]

    first = await statuses(1)
    assert first == await statuses(1)
    assert first != await statuses(2)
    assert set(first) == {200, 429, 500, 503}


def test_faults_reject_impossible_rates() -> None:
    """Rates outside 0..1, or adding up to more than 1, are refused."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(rate_429=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        Faults(rate_429=0.6, rate_drop_after=0.6)
    assert Fault.DROP_AFTER_WORK.drops_connection
    assert not Fault.DROP_AFTER_WORK.before_work
    assert all(f.before_work for f in Fault if f is not Fault.DROP_AFTER_WORK)


@pytest.mark.anyio
async def test_set_faults_switches_random_faults_on_and_off(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """`set_faults` changes the random faults of a running fake; None turns them off."""
    fake.set_faults(Faults(rate_503=1.0))
    assert (await http.get("/account")).status_code == 503
    fake.set_faults(None)
    assert (await http.get("/account")).status_code == 200


def test_unknown_routes_in_fault_and_task_helpers_are_refused(fake: FakeApiframe) -> None:
    """A typo in a route name fails loudly instead of never matching."""
    with pytest.raises(ValueError, match="unknown route"):
        fake.inject_fault(Fault.SERVER_ERROR, path="/generate")
    with pytest.raises(ValueError, match="unknown route"):
        fake.set_faults(Faults(rate_500=1.0, paths={"/ai-photos/generate"}))
    with pytest.raises(ValueError, match="creates no tasks"):
        fake.fail_next_task("/fetch")


# -- records ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_records_keeps_only_the_latest() -> None:
    """With `max_records`, old records are forgotten; counters still see everything."""
    fake = FakeApiframe(api_key=KEY, max_records=2)
    async with fake.client(headers={"Authorization": KEY}) as http:
        for _ in range(3):
            await http.get("/account")
        await http.post("/fetch", json={})
    assert [c.route for c in fake.calls()] == ["/account", "/fetch"]


@pytest.mark.anyio
async def test_records_hold_bodies_and_auth_but_never_the_key(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """Each call is recorded (method, path, body, auth, status, time), and the key is nowhere."""
    task_id = await create(http, "/ai-photo-upload", UPLOAD | {"age": 41})
    await fetch(http, task_id)
    upload, fetched = fake.calls()
    assert (upload.method, upload.path, upload.status, upload.body["age"]) == (
        "POST",
        "/ai-photo-upload",
        200,
        41,
    )
    assert (fetched.route, fetched.task_id, fetched.created, fetched.charged) == (
        "/fetch",
        task_id,
        False,
        0,
    )
    assert upload.started_at <= upload.ended_at <= fetched.started_at
    assert KEY not in repr(fake.calls()) + repr(fake.webhooks())


@pytest.mark.anyio
async def test_peak_in_flight_counts_concurrent_requests(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """Five concurrent slow requests to one path give a peak of five, and none stays in flight."""
    fake.inject_fault(delay=0.05, path="/account", times=5)
    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(http.get, "/account")
    assert fake.peak_in_flight("/account") == 5
    assert fake.in_flight("/account") == 0
    assert fake.peak_in_flight("/fetch") == 0


@pytest.mark.anyio
async def test_generate_count_by_prompt_counts_work_not_requests(
    fake: FakeApiframe, http: httpx.AsyncClient
) -> None:
    """Only generations that were carried out count, once per prompt each."""
    training_id = fake.add_trained_model()
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/ai-photo-generate")
    for prompt in ["a", "a", "b"]:
        await http.post("/ai-photo-generate", json={"training_id": training_id, "prompt": prompt})
    assert fake.generate_count_by_prompt() == {"a": 1, "b": 1}
    assert len(fake.calls("/ai-photo-generate")) == 3


# -- pytest plugin ----------------------------------------------------------------------------


@pytest.mark.apiframe_fake(api_key="from-marker", fetches_to_finish=1)
def test_the_pytest_fixture_takes_options_from_the_marker(apiframe_fake: FakeApiframe) -> None:
    """The `apiframe_fake` fixture is a fresh fake configured by `@pytest.mark.apiframe_fake`."""
    assert isinstance(apiframe_fake, FakeApiframe)
    assert apiframe_fake.api_key == "from-marker"
    assert apiframe_fake.calls() == []


@pytest.mark.anyio
async def test_the_pytest_fixture_gives_an_in_process_client(apiframe_fake: FakeApiframe) -> None:
    """`apiframe_fake.client()` reaches the fake with no network."""
    async with apiframe_fake.client(headers={"Authorization": apiframe_fake.api_key}) as http:
        assert (await http.get("/account")).json()["credits"] == 10_000
