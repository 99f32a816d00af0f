"""Journals: a job run again sends only what is not done, and never pays twice by guessing."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from conftest import API_KEY

from apiframe_async import (
    AsyncApiframe,
    BadRequestError,
    GenerateRequest,
    Generation,
    Journal,
    Outcome,
    RequestValidationError,
    UncertainSubmissionError,
)

pytestmark = pytest.mark.anyio


class Server:
    """/ai-photo-generate that counts paid generations per prompt; some prompts misbehave."""

    def __init__(self) -> None:
        self.generated: Counter[str] = Counter()
        self.timeouts: set[str] = set()
        self.refusals: set[str] = set()
        #: Prompts answered with this reply once the work is done (and charged).
        self.replies: dict[str, httpx.Response] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        if prompt in self.refusals:
            return httpx.Response(400, json={"errors": [{"msg": "Invalid request"}]})
        self.generated[prompt] += 1
        if prompt in self.timeouts:
            # The work is done and charged, but the answer never arrives.
            raise httpx.ReadTimeout("no answer", request=request)
        if prompt in self.replies:
            return self.replies[prompt]
        n = self.generated[prompt]
        return httpx.Response(
            200, json={"task_id": f"{prompt}#{n}", "status": "finished", "image_urls": ["u"]}
        )


@pytest.fixture
def server(api: respx.MockRouter) -> Server:
    stand_in = Server()
    api.post("/ai-photo-generate").mock(side_effect=stand_in)
    return stand_in


def prompts(*names: str) -> list[GenerateRequest]:
    return [GenerateRequest(training_id="t", prompt=name) for name in names]


async def run(
    client: AsyncApiframe, requests: list[GenerateRequest], journal: Path, **options: object
) -> list[Outcome[Generation]]:
    job = client.generate_many(requests, concurrency=4, ordered=True, journal=journal, **options)  # type: ignore[arg-type]
    async with job as outcomes:
        return [o async for o in outcomes]


async def test_a_rerun_sends_nothing_already_done(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """Run twice with one journal: the second run replays every result, sends nothing."""
    journal = tmp_path / "job.sqlite"
    first = await run(client, prompts("a", "b", "c"), journal)
    second = await run(client, prompts("a", "b", "c"), journal)
    assert server.generated == Counter({"a": 1, "b": 1, "c": 1})
    assert [o.replayed for o in first] == [False] * 3
    assert [o.replayed for o in second] == [True] * 3
    assert [o.unwrap().task_id for o in second] == [o.unwrap().task_id for o in first]


async def test_replay_skip_yields_only_new_work(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """With replay='skip' a rerun yields only the requests it sent."""
    journal = tmp_path / "job.sqlite"
    await run(client, prompts("a", "b"), journal)
    outcomes = await run(client, prompts("a", "b", "new"), journal, replay="skip")
    assert [o.request.prompt for o in outcomes if isinstance(o.request, GenerateRequest)] == ["new"]
    assert server.generated == Counter({"a": 1, "b": 1, "new": 1})


async def test_identical_prompts_are_separate_items(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """Two identical requests are two items: both sent once, both replayed on a rerun."""
    journal = tmp_path / "job.sqlite"
    await run(client, prompts("same", "same", "other"), journal)
    assert server.generated == Counter({"same": 2, "other": 1})
    again = await run(client, prompts("same", "same", "same", "other"), journal)
    assert server.generated == Counter({"same": 3, "other": 1})
    assert [o.replayed for o in again] == [True, True, False, True]


async def test_an_uncertain_request_is_skipped_by_default(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """A request that may have been charged is reported, not resent, unless asked."""
    journal = tmp_path / "job.sqlite"
    server.timeouts.add("lost")
    first = await run(client, prompts("ok", "lost"), journal)
    assert first[1].error is not None
    assert server.generated == Counter({"ok": 1, "lost": 1})
    server.timeouts.clear()

    second = await run(client, prompts("ok", "lost"), journal)
    assert isinstance(second[1].error, UncertainSubmissionError)
    assert "resend" in str(second[1].error)
    assert server.generated == Counter({"ok": 1, "lost": 1})

    third = await run(client, prompts("ok", "lost"), journal, on_uncertain="resend")
    assert third[1].ok
    assert server.generated == Counter({"ok": 1, "lost": 2})


async def test_a_request_in_flight_at_a_crash_is_uncertain(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """A row left 'sending' by a killed process makes that request uncertain on resume."""
    path = tmp_path / "job.sqlite"
    crashed = Journal(path)
    request = prompts("mid-flight")[0]
    key, occurrence = crashed.identify(request)
    await crashed.begin(key, occurrence, 0, request)
    crashed.close()
    outcomes = await run(client, prompts("mid-flight", "fresh"), path)
    assert isinstance(outcomes[0].error, UncertainSubmissionError)
    assert outcomes[1].ok
    assert server.generated == Counter({"fresh": 1})


async def test_failures_that_cost_nothing_are_sent_again(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """A 400 is recorded as failed, and a rerun sends the request again."""
    journal = tmp_path / "job.sqlite"
    server.refusals.add("bad")
    first = await run(client, prompts("bad"), journal)
    assert isinstance(first[0].error, BadRequestError)
    server.refusals.clear()
    second = await run(client, prompts("bad"), journal)
    assert second[0].ok
    assert not second[0].replayed


async def test_a_caller_key_names_items(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """With key=, identity follows the caller's id, not the request's content."""
    journal = tmp_path / "job.sqlite"
    await run(client, prompts("v1"), journal, key=lambda _request: "photo-1")
    outcomes = await run(client, prompts("v2"), journal, key=lambda _request: "photo-1")
    assert outcomes[0].replayed
    assert server.generated == Counter({"v1": 1})


async def test_the_journal_is_one_file_and_holds_no_key(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """The journal is one SQLite file (no side file), one row per item, no trace of the key."""
    journal = tmp_path / "job.sqlite"
    await run(client, prompts("a", "b"), journal)
    assert [p.name for p in tmp_path.iterdir()] == ["job.sqlite"]
    with sqlite3.connect(journal) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert db.execute("SELECT COUNT(*), MIN(state), MAX(state) FROM items").fetchone() == (
            2,
            "done",
            "done",
        )
    for path in tmp_path.iterdir():
        assert API_KEY.encode() not in path.read_bytes()
    with Journal(journal) as opened:
        assert opened.counts() == {"done": 2}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        pytest.param("on_uncertain", "maybe", id="on_uncertain"),
        pytest.param("replay", "all", id="replay"),
    ],
)
async def test_policies_are_validated(
    client: AsyncApiframe, tmp_path: Path, option: str, value: str
) -> None:
    """A policy that is not one of its values is refused, naming the allowed ones."""
    with pytest.raises(RequestValidationError, match=option) as info:
        client.generate_many(prompts("a"), journal=tmp_path / "j.sqlite", **{option: value})  # type: ignore[arg-type]
    assert info.value.allowed is not None


async def test_concurrent_jobs_keep_their_own_journals(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """Two jobs with two journals at once record each their own items."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, client, prompts("x1", "x2"), tmp_path / "x.sqlite")
        tg.start_soon(run, client, prompts("y1"), tmp_path / "y.sqlite")
    with Journal(tmp_path / "x.sqlite") as x, Journal(tmp_path / "y.sqlite") as y:
        assert x.counts() == {"done": 2}
        assert y.counts() == {"done": 1}


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(httpx.Response(200, text="<html>gateway</html>"), id="200-html"),
        pytest.param(httpx.Response(200, text='{"task_id": "g", "sta'), id="200-truncated"),
        pytest.param(httpx.Response(200, text=""), id="200-empty"),
        pytest.param(httpx.Response(200, json={"errors": [{"msg": "busy"}]}), id="200-errors"),
        pytest.param(httpx.Response(500, json={}), id="500"),
        pytest.param(httpx.Response(502, text="<html>bad gateway</html>"), id="502"),
        pytest.param(httpx.Response(504, text=""), id="504"),
    ],
)
async def test_an_answer_after_the_work_is_uncertain_and_not_resent(
    client: AsyncApiframe, server: Server, tmp_path: Path, reply: httpx.Response
) -> None:
    """A 5xx or an unreadable 200 after the request was sent is uncertain: never resent."""
    journal = tmp_path / "job.sqlite"
    server.replies["lost"] = reply
    first = await run(client, prompts("lost"), journal)
    assert first[0].error is not None
    with Journal(journal) as opened:
        assert opened.counts() == {"uncertain": 1}
    server.replies.clear()
    second = await run(client, prompts("lost"), journal)
    assert isinstance(second[0].error, UncertainSubmissionError)
    assert server.generated == Counter({"lost": 1})


async def test_refusals_before_any_work_are_not_charged_and_resent(
    client: AsyncApiframe, server: Server, tmp_path: Path
) -> None:
    """A 400 is recorded not_charged, and the rerun sends it again."""
    journal = tmp_path / "job.sqlite"
    server.refusals.add("bad")
    await run(client, prompts("bad"), journal)
    with Journal(journal) as opened:
        assert opened.counts() == {"not_charged": 1}
