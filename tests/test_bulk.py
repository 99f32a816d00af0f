"""The main job from Python: nothing paid for is lost to a bad input line or a cancel.

Counted at the fake APIFRAME on loopback: every generation it charged for is in the
manifest (and its photos on disk) before the job's error or cancellation surfaces.
"""

from __future__ import annotations

import functools
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from apiframe_async import (
    AsyncApiframe,
    GenerateRequest,
    Generation,
    Outcome,
    RequestValidationError,
)
from apiframe_async._bulk import load_prompts, run_bulk_job
from apiframe_async.testing import FakeApiframe

pytestmark = pytest.mark.anyio

GENERATE = "/ai-photo-generate"


class BadLineError(ValueError):
    """What a caller's own parser raises on a broken line."""


def requests_then_a_bad_line(training_id: str, good: int) -> Iterator[GenerateRequest]:
    for i in range(good):
        yield GenerateRequest(training_id=training_id, prompt=f"p{i}")
    raise BadLineError(f"line {good + 1} is broken")


def manifest_lines(manifest: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in manifest.getvalue().splitlines()]


async def test_a_lazy_input_that_raises_loses_no_paid_result(tmp_path: Path) -> None:
    """The generations in flight when the input breaks finish, are saved, then it raises."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    fake.inject_fault(None, path=GENERATE, delay=0.05, times=1000)
    manifest = io.StringIO()
    async with fake.serve() as base_url, AsyncApiframe(fake.api_key, base_url=base_url) as client:
        with pytest.raises(BadLineError, match="line 41"):
            await run_bulk_job(
                client,
                requests_then_a_bad_line(training_id, 40),
                tmp_path,
                manifest=manifest,
                concurrency=8,
            )

    charged = fake.generate_count_by_prompt()
    lines = manifest_lines(manifest)
    assert len(charged) == 40
    assert sorted(str(e["prompt"]) for e in lines) == sorted(charged)
    assert all(e["error"] is None and len(e["files"]) == 1 for e in lines)  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("*.png"))) == 40


async def test_generate_many_yields_what_was_sent_before_the_input_error() -> None:
    """The job's loop raises the input's error only after the outcomes of work sent."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    fake.inject_fault(None, path=GENERATE, delay=0.05, times=1000)
    seen: list[Outcome[Generation]] = []

    async def run(client: AsyncApiframe) -> None:
        job = client.generate_many(requests_then_a_bad_line(training_id, 10), concurrency=16)
        async with job as outcomes:
            async for outcome in outcomes:
                seen.append(outcome)  # noqa: PERF401 -- kept as they come: the loop raises

    async with fake.serve() as base_url, AsyncApiframe(fake.api_key, base_url=base_url) as client:
        with pytest.raises(BadLineError):
            await run(client)
    assert all(o.ok for o in seen)
    assert len(seen) == 10 == len(fake.generate_count_by_prompt())


def test_load_prompts_checks_every_field_and_names_the_line() -> None:
    """A field error deep in a file is found before anything runs, with its line number."""
    lines = [f"take {i}" for i in range(40)] + ['{"prompt": "p", "number_of_images": 0}']
    with pytest.raises(RequestValidationError) as caught:
        load_prompts(lines, {"training_id": "t"})
    assert caught.value.field == "prompts line 41"
    assert "number_of_images" in str(caught.value)
    assert [r.prompt for r in load_prompts(lines[:2], {"training_id": "t"})] == ["take 0", "take 1"]


# httpx's and httpcore's body iterators are chains of async generators: a download
# cancelled mid-body leaves the inner ones to the garbage collector, which trio reports
# (encode/httpx#3686; open fix: encode/httpx#3777).
@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Async generator 'httpcore.:ResourceWarning")
async def test_a_cancelled_job_records_what_it_received(tmp_path: Path) -> None:
    """Cancelled mid-job: each received result is done in the journal and in the manifest."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    fake.inject_fault(None, path=GENERATE, delay=0.02, times=10_000)
    fake.inject_fault(None, path="/images", delay=0.1, times=10_000)
    requests = [
        GenerateRequest(training_id=training_id, prompt=f"p{i}", number_of_images=2)
        for i in range(200)
    ]
    out, book = tmp_path / "photos", tmp_path / "job.sqlite"
    manifest = io.StringIO()
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url) as client,
        anyio.create_task_group() as tg,
    ):
        job = functools.partial(run_bulk_job, manifest=manifest, journal=book)
        tg.start_soon(job, client, requests, out)
        while len(manifest.getvalue().splitlines()) < 5:  # noqa: ASYNC110 -- a StringIO
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()

    lines = manifest_lines(manifest)
    with sqlite3.connect(book) as db:
        states = dict(db.execute("SELECT position, state FROM items").fetchall())
    received = {e["index"] for e in lines if e["task_id"] is not None}
    assert 0 < len(lines) < 200
    assert {i for i, state in states.items() if state == "done"} == received
    assert len({e["index"] for e in lines}) == len(lines)
    assert set(fake.generate_count_by_prompt()) >= {f"p{i}" for i in received}
    assert [p.name for p in out.iterdir() if p.suffix == ".part"] == []
    for entry in lines:
        files = [Path(str(f)) for f in entry["files"]]  # type: ignore[attr-defined]
        assert all(f.is_file() and f.stat().st_size > 0 for f in files)
        assert len(files) + len(entry["failed_downloads"]) == 2  # type: ignore[arg-type]
