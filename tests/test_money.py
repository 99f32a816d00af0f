"""Charged once, never for nothing: counted by the fake APIFRAME on a loopback socket.

A submission is never sent again once the server may have taken it: polls that are
pushed back are waited out, not re-submitted; a job whose key or balance is refused stops
paying; the journal's states say the same as the retry rules, and resume by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import anyio
import attrs
import httpx
import pytest

from apiframe_async import (
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    APITimeoutError,
    AsyncApiframe,
    AuthenticationError,
    BudgetExceededError,
    ClientError,
    GenerateRequest,
    Generation,
    InsufficientCreditsError,
    Journal,
    JournalError,
    JournalInUseError,
    NoImagesError,
    NotSentError,
    Outcome,
    PermissionDeniedError,
    PollPolicy,
    RateLimitError,
    RequestTimeoutError,
    RequestValidationError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailedError,
    TaskPollError,
    TaskStatus,
    TaskTimeoutError,
    TaskWaitError,
    UncertainSubmissionError,
)
from apiframe_async._charges import Charge, charge_of, dooms_the_job, turned_away
from apiframe_async._journal import request_key
from apiframe_async._wire import Wire
from apiframe_async.testing import FakeApiframe, Fault, Faults

pytestmark = pytest.mark.anyio

GENERATE = "/ai-photo-generate"
POLLS = ("/fetch", "/fetch-many")
FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff=0.005, max_backoff=0.02)
FAST_POLL = PollPolicy(initial_interval=0.01, max_interval=0.05, deadline=20.0)


def _requests(training_id: str, n: int, name: str = "p") -> list[GenerateRequest]:
    return [GenerateRequest(training_id=training_id, prompt=f"{name} {i}") for i in range(n)]


async def _run(
    client: AsyncApiframe, requests: list[GenerateRequest], **options: object
) -> list[Outcome[Generation]]:
    job = client.generate_many(requests, ordered=True, **options)  # type: ignore[arg-type]
    async with job as outcomes:
        return [o async for o in outcomes]


def _status_error(status: int, cls: type[APIStatusError] = ServerError) -> APIStatusError:
    return cls("x", status_code=status, method="POST", url="u", body="")


# -- one classification ---------------------------------------------------------------------

CHARGES = [
    pytest.param(RequestValidationError("prompt", "empty"), Charge.NOT_CHARGED, id="invalid"),
    pytest.param(
        APIConnectionError("refused", method="POST", url="u", may_have_been_submitted=False),
        Charge.NOT_CHARGED,
        id="connect-refused",
    ),
    pytest.param(
        APIConnectionError("dropped", method="POST", url="u", may_have_been_submitted=True),
        Charge.UNCERTAIN,
        id="dropped",
    ),
    pytest.param(_status_error(400, ClientError), Charge.NOT_CHARGED, id="400"),
    pytest.param(_status_error(401, AuthenticationError), Charge.NOT_CHARGED, id="401"),
    pytest.param(_status_error(403, PermissionDeniedError), Charge.NOT_CHARGED, id="403"),
    pytest.param(_status_error(408, RequestTimeoutError), Charge.UNCERTAIN, id="408"),
    pytest.param(_status_error(429, RateLimitError), Charge.NOT_CHARGED, id="429"),
    pytest.param(_status_error(500), Charge.UNCERTAIN, id="500"),
    pytest.param(_status_error(502), Charge.UNCERTAIN, id="502"),
    pytest.param(_status_error(503), Charge.NOT_CHARGED, id="503"),
    pytest.param(_status_error(504), Charge.UNCERTAIN, id="504"),
    pytest.param(ResponseValidationError(["$: not JSON"], body=""), Charge.UNCERTAIN, id="200-bad"),
    pytest.param(NoImagesError("g"), Charge.ACCEPTED, id="no-images"),
    pytest.param(TaskTimeoutError("g", 1.0, None), Charge.ACCEPTED, id="deadline"),
    pytest.param(TaskPollError("g", _status_error(503)), Charge.ACCEPTED, id="poll-503"),
    pytest.param(TaskFailedError("g", "nsfw"), Charge.ACCEPTED, id="task-failed"),
    pytest.param(UncertainSubmissionError("k", "no answer"), Charge.UNCERTAIN, id="uncertain"),
    pytest.param(ApiframeError("unknown"), Charge.UNCERTAIN, id="anything-else"),
]


@pytest.mark.parametrize(("error", "charge"), CHARGES)
def test_one_classification_for_retries_jobs_and_journals(
    error: ApiframeError, charge: Charge
) -> None:
    """What an error may have cost, and the retry and re-run rules that follow from it."""
    assert charge_of(error) is charge
    retried = RetryPolicy().should_retry(error, paid=True)
    # A paid request is retried, or re-run by a job, only if it provably cost nothing.
    assert not retried or charge is Charge.NOT_CHARGED
    assert not turned_away(error) or charge is Charge.NOT_CHARGED
    assert not dooms_the_job(error) or charge is Charge.NOT_CHARGED


@pytest.mark.parametrize(
    ("error", "doomed"),
    [
        pytest.param(_status_error(401, AuthenticationError), True, id="401"),
        pytest.param(_status_error(402, ClientError), True, id="402"),
        pytest.param(_status_error(403, PermissionDeniedError), True, id="403"),
        pytest.param(_status_error(400, ClientError), False, id="400"),
        pytest.param(_status_error(429, RateLimitError), False, id="429"),
        pytest.param(_status_error(500), False, id="500"),
        pytest.param(TaskPollError("g", _status_error(401)), False, id="poll-401"),
    ],
)
def test_only_a_refused_key_or_balance_dooms_a_job(error: ApiframeError, doomed: bool) -> None:
    """401, 402 and 403 on a submission stop a job; a prompt's own refusal does not."""
    assert dooms_the_job(error) is doomed


def test_a_poll_failure_is_never_pushback_of_the_submission() -> None:
    """A 429 met while waiting on an accepted task does not make the job send it again."""
    error = TaskPollError("g", _status_error(429, RateLimitError))
    assert not turned_away(error)
    assert not RetryPolicy().should_retry(error, paid=True)
    assert error.task_id == "g"
    assert "wait()" in str(error)


# -- polls never re-submit ------------------------------------------------------------------


async def test_pushed_back_polls_never_resubmit() -> None:
    """429 and 503 on every poll for a while: each prompt is paid once, each ends ok."""
    fake = FakeApiframe(generate_fetches=2, seed=1)
    training_id = fake.add_trained_model()
    for path in POLLS:
        fake.inject_fault(Fault.UNAVAILABLE, path=path, times=20)
        fake.inject_fault(Fault.TOO_MANY_REQUESTS, path=path, times=10, retry_after="0.01")
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=FAST_RETRY, poll=FAST_POLL) as client,
    ):
        outcomes = await _run(client, _requests(training_id, 20), concurrency=8)
    assert [o.error for o in outcomes] == [None] * 20
    assert fake.generate_count_by_prompt() == {f"p {i}": 1 for i in range(20)}
    assert len(fake.calls(GENERATE)) == 20, "a paid POST was sent twice"
    # Whether a poll goes to /fetch or /fetch-many depends on how many waits are due at
    # once: each path's 30 pushbacks come first, then its polls get through. Every prompt
    # ended ok, so at least one path was polled through its whole outage.
    met = {}
    for path in POLLS:
        calls = fake.calls(path)
        met[path] = sum(c.status in (429, 503) for c in calls)
        assert met[path] == min(30, len(calls)), f"a poll of {path} got through a pushback"
    assert max(met.values()) == 30, "every pushback was met"


async def test_an_outage_past_the_deadline_ends_with_the_task_id() -> None:
    """Polls fail until the wait's deadline: a typed error with the task id, nothing resent."""
    fake = FakeApiframe(generate_fetches=1, seed=2)
    training_id = fake.add_trained_model()
    fake.set_faults(Faults(rate_503=1.0, paths=POLLS))
    poll = PollPolicy(initial_interval=0.01, max_interval=0.05, deadline=0.4)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=FAST_RETRY, poll=poll) as client,
    ):
        outcomes = await _run(client, _requests(training_id, 6), concurrency=6)
        errors = [o.error for o in outcomes]
        # Polls failed (or the deadline came before this one's turn): the wait's error.
        assert all(isinstance(e, TaskWaitError) for e in errors), errors
        task_ids = [e.task_id for e in errors if isinstance(e, TaskWaitError)]
        assert sorted(task_ids) == sorted(fake.task_ids(GENERATE))
        failed_polls = [e for e in errors if isinstance(e, TaskPollError)]
        assert failed_polls
        assert all(isinstance(e.__cause__, ServerError) for e in failed_polls)
        # The outage ends: waiting on the task ids gets the photos, without paying again.
        fake.set_faults(None)
        finished = [await client.wait(task_id) for task_id in task_ids]
    assert all(task.image_urls for task in finished)
    assert len(fake.calls(GENERATE)) == 6
    assert set(fake.generate_count_by_prompt().values()) == {1}


async def test_a_refused_poll_ends_the_wait_at_once() -> None:
    """A poll answered 401 is not waited out: TaskPollError with the task id and the cause."""
    fake = FakeApiframe(generate_fetches=3, seed=3)
    training_id = fake.add_trained_model()
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=FAST_RETRY, poll=FAST_POLL) as client,
    ):
        task = await client._submit(GenerateRequest(training_id=training_id, prompt="p"))
        assert not task.is_terminal
        fake.api_key = "rotated"
        with anyio.fail_after(5), pytest.raises(TaskPollError) as info:
            await client._complete(task)
    assert info.value.task_id == task.task_id
    assert isinstance(info.value.__cause__, AuthenticationError)
    assert len(fake.calls(GENERATE)) == 1


# -- doomed jobs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fake_options", "reason"),
    [
        pytest.param({"api_key": "the-real-key"}, AuthenticationError, id="401-wrong-key"),
        pytest.param({"credits": 0}, InsufficientCreditsError, id="402-no-credits"),
    ],
)
async def test_a_doomed_job_stops_paying(
    fake_options: dict[str, object], reason: type[APIStatusError]
) -> None:
    """1,000 prompts, a wrong key or no credits: at most `concurrency` paid POSTs, then none."""
    fake = FakeApiframe(seed=4, **fake_options)  # type: ignore[arg-type]
    training_id = fake.add_trained_model()
    concurrency = 16
    key = "wrong-key" if reason is AuthenticationError else fake.api_key
    async with fake.serve() as base_url, AsyncApiframe(key, base_url=base_url) as client:
        job = client.generate_many(_requests(training_id, 1000), concurrency=concurrency)
        async with job as outcomes:
            results = [o async for o in outcomes]
    assert len(fake.calls(GENERATE)) <= concurrency
    assert isinstance(job.progress.stopped_by, reason)
    kinds = Counter(type(o.error) for o in results)
    assert set(kinds) == {reason, NotSentError}
    not_sent = [o.error for o in results if isinstance(o.error, NotSentError)]
    assert all(e.reason is job.progress.stopped_by for e in not_sent)
    assert "not sent" in str(not_sent[0])


async def test_a_stopped_job_resumes_once_the_key_is_fixed(tmp_path: Path) -> None:
    """The prompts a 401 stopped are sent by the next run, each once."""
    fake = FakeApiframe(seed=5)
    training_id = fake.add_trained_model()
    journal = tmp_path / "job.sqlite"
    requests = _requests(training_id, 100)
    async with fake.serve() as base_url:
        async with AsyncApiframe("wrong", base_url=base_url) as client:
            first = await _run(client, requests, concurrency=8, journal=journal)
        with Journal(journal) as opened:  # refused and not sent alike: sent again
            assert opened.counts() == {"not_charged": 100}
        async with AsyncApiframe(fake.api_key, base_url=base_url) as client:
            second = await _run(client, requests, concurrency=8, journal=journal)
    assert not any(o.ok for o in first)
    assert sum(isinstance(o.error, NotSentError) for o in first) >= 100 - 8
    assert len(fake.calls(GENERATE)) <= 8 + 100
    assert all(o.ok for o in second)
    assert fake.generate_count_by_prompt() == {f"p {i}": 1 for i in range(100)}


# -- journal states agree with the retry rules --------------------------------------------


@pytest.mark.parametrize(
    ("faults", "state", "error"),
    [
        pytest.param({"rate_500": 1.0}, "uncertain", ServerError, id="500"),
        pytest.param({"rate_drop_after": 1.0}, "uncertain", APIConnectionError, id="drop-after"),
        pytest.param({"rate_drop_before": 1.0}, "uncertain", APIConnectionError, id="drop"),
        pytest.param({"rate_503": 1.0}, "not_charged", ServerError, id="503"),
        pytest.param({"rate_429": 1.0}, "not_charged", RateLimitError, id="429"),
    ],
)
async def test_journal_states_follow_the_charge(
    faults: dict[str, float], state: str, error: type[ApiframeError], tmp_path: Path
) -> None:
    """The journal records what an error may have cost; a rerun resends only not_charged."""
    fake = FakeApiframe(seed=6)
    training_id = fake.add_trained_model()
    fake.set_faults(Faults(**faults, retry_after=None, paths=[GENERATE]))  # type: ignore[arg-type]
    journal = tmp_path / "job.sqlite"
    requests = _requests(training_id, 2)
    retry = RetryPolicy(max_retries=0)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=retry) as client,
    ):
        first = await _run(client, requests, concurrency=2, journal=journal)
        assert all(isinstance(o.error, error) for o in first), first
        with Journal(journal) as opened:
            assert opened.counts() == {state: 2}
        sent = len(fake.calls(GENERATE))
        fake.set_faults(None)
        second = await _run(client, requests, concurrency=2, journal=journal)
    if state == "not_charged":
        assert all(o.ok for o in second)
        assert len(fake.calls(GENERATE)) == sent + 2
    else:
        assert all(isinstance(o.error, UncertainSubmissionError) for o in second)
        assert len(fake.calls(GENERATE)) == sent
    assert max(fake.generate_count_by_prompt().values(), default=1) == 1


async def test_a_resend_refused_before_sending_keeps_the_earlier_uncertainty(
    tmp_path: Path,
) -> None:
    """An uncertain item that a resend run never sent (over budget) stays uncertain."""
    fake = FakeApiframe(seed=8)
    training_id = fake.add_trained_model()
    journal = tmp_path / "job.sqlite"
    requests = _requests(training_id, 2)
    async with fake.serve() as base_url:
        client = AsyncApiframe(fake.api_key, base_url=base_url, retry=RetryPolicy(max_retries=0))
        async with client:
            fake.set_faults(Faults(rate_drop_after=1.0, paths=[GENERATE]))
            await _run(client, requests, concurrency=1, journal=journal)
            fake.set_faults(None)
            with Journal(journal) as opened:
                assert opened.counts() == {"uncertain": 2}
            # The caller resends, but the budget lets only the first one go.
            resent = await _run(
                client,
                requests,
                concurrency=1,
                journal=journal,
                on_uncertain="resend",
                max_credits=1,
            )
            assert resent[0].ok
            assert isinstance(resent[1].error, BudgetExceededError)
            with Journal(journal) as opened:
                assert opened.counts() == {"done": 1, "uncertain": 1}
            third = await _run(client, requests, concurrency=1, journal=journal)
    assert isinstance(third[1].error, UncertainSubmissionError)
    assert fake.generate_count_by_prompt() == {"p 0": 2, "p 1": 1}


async def test_an_accepted_item_is_waited_on_never_resent(tmp_path: Path) -> None:
    """A wait that ended with polls failing leaves the item accepted; a rerun only polls."""
    fake = FakeApiframe(generate_fetches=1, seed=7)
    training_id = fake.add_trained_model()
    fake.set_faults(Faults(rate_503=1.0, paths=POLLS))
    journal = tmp_path / "job.sqlite"
    requests = _requests(training_id, 4)
    poll = PollPolicy(initial_interval=0.01, max_interval=0.05, deadline=0.3)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=FAST_RETRY, poll=poll) as client,
    ):
        first = await _run(client, requests, concurrency=4, journal=journal)
        assert all(isinstance(o.error, TaskWaitError) for o in first)
        with Journal(journal) as opened:
            assert opened.counts() == {"accepted": 4}
        fake.set_faults(None)
        second = await _run(client, requests, concurrency=4, journal=journal)
    assert all(o.ok and not o.replayed for o in second)
    assert len(fake.calls(GENERATE)) == 4
    assert fake.generate_count_by_prompt() == {f"p {i}": 1 for i in range(4)}
    with Journal(journal) as opened:
        assert opened.counts() == {"done": 4}


async def test_a_refused_connection_is_not_charged(tmp_path: Path) -> None:
    """No server at all: the items are not_charged, and a rerun against one sends them."""
    with socket.socket() as probe:  # a port with nobody listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    journal = tmp_path / "job.sqlite"
    fake = FakeApiframe(seed=8)
    requests = _requests(fake.add_trained_model(), 3)
    async with AsyncApiframe(
        fake.api_key, base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=0)
    ) as client:
        first = await _run(client, requests, concurrency=3, journal=journal)
    assert all(isinstance(o.error, APIConnectionError) for o in first)
    with Journal(journal) as opened:
        assert opened.counts() == {"not_charged": 3}
    async with fake.serve() as base_url, AsyncApiframe(fake.api_key, base_url=base_url) as client:
        second = await _run(client, requests, concurrency=3, journal=journal)
    assert all(o.ok for o in second)
    assert set(fake.generate_count_by_prompt().values()) == {1}


async def test_a_reply_that_never_comes_is_paid_once_and_uncertain() -> None:
    """A server that reads the generations and never answers: each read times out (on trio
    through the run's deadline task), each POST reached the server once, none is resent."""
    from raw_server import Conn, serving  # noqa: PLC0415 - the transport tests' raw server

    posts: Counter[bytes] = Counter()

    async def deaf(conn: Conn) -> None:
        posts[await conn.request()] += 1
        await conn.until_closed()

    requests = _requests("t", 3)
    async with (
        serving(deaf) as server,
        AsyncApiframe(
            "key-not-sent-anywhere",
            base_url=server.url,
            timeout=httpx.Timeout(5.0, read=0.2),
            retry=RetryPolicy(max_retries=3),
        ) as client,
    ):
        with anyio.fail_after(10):
            outcomes = await client.generate_all(requests, concurrency=3)
    errors = [o.error for o in outcomes]
    assert all(isinstance(e, APITimeoutError) and e.may_have_been_submitted for e in errors)
    assert posts == {b"POST /ai-photo-generate HTTP/1.1": 3}


# -- a caller's deadline -------------------------------------------------------------------


# Below 8 every read takes the trip that gives places back; from 8, every concurrency // 4th
# read, and places go back a trip later. A cancel that the read cannot see in its own
# scopes lands at a trip.
_CONCURRENCIES = pytest.mark.parametrize("concurrency", [4, 16])


def _reads_per_trip(concurrency: int) -> int:
    return max(1, concurrency // 4)


@attrs.define
class _LateJob:
    """A job whose caller's deadline passes while it handles outcome 1 and the window (2 x
    concurrency) is full of others: nothing can run while it passes."""

    fake: FakeApiframe = attrs.Factory(lambda: FakeApiframe(generate_fetches=0))
    concurrency: int = 4
    handed_over: list[Outcome[Generation]] = attrs.Factory(list)
    taken_back: list[Outcome[Generation]] = attrs.Factory(list)
    sent_before_deadline: int = -1
    ordered: bool = False
    #: Set: the job's reads run in this scope, its workers outside it.
    reading_scope: anyio.CancelScope | None = None

    def sent(self) -> int:
        return sum(self.fake.generate_count_by_prompt().values())

    async def run(self, set_deadline: Callable[[float], object]) -> None:
        """Run the job; after outcome 1, `set_deadline(0.6)`: the deadline falls while the
        caller blocks, 0.5 to 0.8 s later, the window full."""
        async with (
            self.fake.serve() as base_url,
            AsyncApiframe(
                self.fake.api_key, base_url=base_url, max_concurrency=self.concurrency
            ) as client,
        ):
            requests = _requests(self.fake.add_trained_model(), 100)
            job = client.generate_many(requests, concurrency=self.concurrency, ordered=self.ordered)
            try:
                async with job as outcomes:
                    with self.reading_scope or contextlib.nullcontext():
                        async for outcome in outcomes:
                            self.handed_over.append(outcome)
                            if len(self.handed_over) == 1:
                                set_deadline(0.6)
                                await anyio.sleep(0.5)  # the workers fill the window, wait
                                self.sent_before_deadline = self.sent()
                                time.sleep(0.3)  # noqa: ASYNC251 -- the deadline passes
            finally:
                self.taken_back = job.take_received()

    def check(self, *, most_handed_over: int = 1, most_sent_late: int = 0) -> None:
        """No generation was sent after the deadline (or at most `most_sent_late`), and
        none paid for is lost."""
        # The window is full; outcome 1's place is given back only by the next read's trip.
        assert self.sent_before_deadline == 2 * self.concurrency
        late = self.sent() - self.sent_before_deadline
        assert late <= most_sent_late
        if late:
            return  # cancelled in flight when the job ended: no outcome to account for
        # Outcome 1, then what the reads hand over before the cancel lands: places only
        # come back after the trip where it does.
        assert len(self.handed_over) <= most_handed_over
        outcomes = [*self.handed_over, *self.taken_back]
        assert len(outcomes) == self.sent_before_deadline
        assert all(o.ok for o in outcomes)


@pytest.mark.parametrize("ordered", [False, True])
@_CONCURRENCIES
async def test_a_deadline_passing_while_outcomes_wait_lets_no_generation_out(
    concurrency: int, ordered: bool
) -> None:
    """An anyio (on trio, a trio) cancel scope's deadline: the next read sees it passed,
    also a read that an ordered job serves from the outcomes that waited for their turn."""
    late = _LateJob(concurrency=concurrency, ordered=ordered)
    with anyio.CancelScope() as scope:

        def set_deadline(seconds: float) -> None:
            scope.deadline = anyio.current_time() + seconds

        await late.run(set_deadline)
    assert scope.cancelled_caught
    late.check()


@_CONCURRENCIES
async def test_a_cancel_from_a_watchdog_whose_sleep_ended_lets_no_generation_out(
    concurrency: int,
) -> None:
    """Another task sleeps, then cancels the caller's scope. It runs at the reader's trip,
    or one trip later: on trio that task and the reader wake in one batch, in either
    order, and on asyncio anyio cancels a task whose wait just ended a pass later. Here
    the scope holds the job too: a worker woken by a place given back meets the cancel
    at its slot of the limit before it sends (see the test below for a scope around the
    reads only)."""
    late = _LateJob(concurrency=concurrency)
    async with anyio.create_task_group() as watchdogs:
        with anyio.CancelScope() as scope:

            async def watchdog(seconds: float) -> None:
                await anyio.sleep(seconds)
                scope.cancel()

            # The watchdog is asleep before the caller blocks, and its sleep ends meanwhile.
            await late.run(lambda seconds: watchdogs.start_soon(watchdog, seconds))
    assert scope.cancelled_caught
    late.check(most_handed_over=2 * _reads_per_trip(concurrency))


@_CONCURRENCIES
async def test_a_watchdog_cancelling_only_the_reads_lets_no_more_out_than_a_trip_a_read(
    concurrency: int,
) -> None:
    """The cancelled scope holds the reads and not the job, whose workers meet no cancel:
    a place given back before the cancel lands is a generation sent. On trio the
    watchdog may run after the reader's trip in the same batch, a trip late. A trip a
    read (4 in flight) gives back one place a trip, as a trip before every read always
    did; with a trip every 4 reads (16), places wait a trip more, and none goes out."""
    scope = anyio.CancelScope()
    late = _LateJob(concurrency=concurrency, reading_scope=scope)
    async with anyio.create_task_group() as watchdogs:

        async def watchdog(seconds: float) -> None:
            await anyio.sleep(seconds)
            scope.cancel()

        await late.run(lambda seconds: watchdogs.start_soon(watchdog, seconds))
    assert scope.cancelled_caught
    late.check(
        most_handed_over=2 * _reads_per_trip(concurrency),
        most_sent_late=1 if concurrency < 8 else 0,
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@_CONCURRENCIES
async def test_a_cancel_passes_after_a_watchdog_wakes_lets_no_more_out_than_a_trip_a_read(
    concurrency: int,
) -> None:
    """A task whose sleep ended cancels the reader two passes of the loop later, deeper
    than the reader's trip reaches: it lands a trip late, as in the test above."""
    late = _LateJob(concurrency=concurrency)

    def set_deadline(seconds: float) -> None:
        async def watchdog() -> None:
            await asyncio.sleep(seconds)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            reader.cancel()

        watchdogs.add(asyncio.ensure_future(watchdog()))

    watchdogs: set[asyncio.Future[None]] = set()
    reader = asyncio.ensure_future(late.run(set_deadline))
    with pytest.raises(asyncio.CancelledError):
        await reader
    await asyncio.gather(*watchdogs)
    late.check(
        most_handed_over=2 * _reads_per_trip(concurrency),
        most_sent_late=1 if concurrency < 8 else 0,
    )


class _SiblingFailedError(Exception):
    pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@_CONCURRENCIES
async def test_a_sibling_failing_in_an_asyncio_task_group_lets_no_generation_out(
    concurrency: int,
) -> None:
    """`asyncio.TaskGroup` cancels the job's task from a done-callback of the sibling that
    failed, a step after that sibling's sleep ended."""
    late = _LateJob(concurrency=concurrency)

    async def sibling(seconds: float) -> None:
        await asyncio.sleep(seconds)
        raise _SiblingFailedError

    async def run_in_a_task_group() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(late.run(lambda seconds: group.create_task(sibling(seconds))))

    with pytest.raises(ExceptionGroup) as failed:
        await run_in_a_task_group()
    assert failed.group_contains(_SiblingFailedError)
    late.check(most_handed_over=_reads_per_trip(concurrency) + 1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@_CONCURRENCIES
async def test_an_asyncio_timeout_passing_while_outcomes_wait_lets_no_generation_out(
    concurrency: int,
) -> None:
    """`asyncio.timeout()`, which cancels through a loop callback, at the reader's trip."""
    late = _LateJob(concurrency=concurrency)
    timeout = asyncio.timeout(None)

    def set_deadline(seconds: float) -> None:
        timeout.reschedule(asyncio.get_running_loop().time() + seconds)

    async def run_with_timeout() -> None:
        async with timeout:
            await late.run(set_deadline)

    with pytest.raises(TimeoutError):
        await run_with_timeout()
    assert timeout.expired()
    late.check(most_handed_over=_reads_per_trip(concurrency))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@_CONCURRENCIES
async def test_a_wait_for_timeout_passing_while_outcomes_wait_lets_no_generation_out(
    concurrency: int,
) -> None:
    """`asyncio.wait_for()`, which on Python 3.11 cancels from the task that waits."""
    late = _LateJob(concurrency=concurrency)
    deadline = asyncio.get_running_loop().create_future()
    job = asyncio.ensure_future(late.run(deadline.set_result))

    seconds = await asyncio.shield(deadline)  # after outcome 1: the deadline starts
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job, timeout=seconds)
    late.check(most_handed_over=_reads_per_trip(concurrency))


# -- one journal, one run -------------------------------------------------------------------


async def test_a_journal_in_use_in_this_process_is_refused(tmp_path: Path) -> None:
    """A second job on an open journal refuses at once, naming it; nothing is sent."""
    fake = FakeApiframe(seed=9)
    training_id = fake.add_trained_model()
    journal = tmp_path / "job.sqlite"
    async with fake.serve() as base_url, AsyncApiframe(fake.api_key, base_url=base_url) as client:
        with Journal(journal):
            with pytest.raises(JournalInUseError, match="in use") as info:
                client.generate_many(_requests(training_id, 5), journal=journal)
            assert str(journal) in str(info.value)
            assert info.value.path == str(journal)
        outcomes = await _run(client, _requests(training_id, 2), journal=journal)
    assert all(o.ok for o in outcomes)
    assert len(fake.calls(GENERATE)) == 2


_HOLDER = """
import sys, time
from apiframe_async import Journal
journal = Journal(sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
journal.close()
"""


def test_a_journal_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    """Another process has the journal open: this run refuses at once and pays nothing."""
    fake = FakeApiframe(seed=10)
    training_id = fake.add_trained_model()
    journal = tmp_path / "job.sqlite"
    holder = subprocess.Popen(  # noqa: S603 -- our own interpreter and script
        [sys.executable, "-c", _HOLDER, str(journal)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"holding\n"
        with fake.serve() as base_url:
            client = AsyncApiframe(fake.api_key, base_url=base_url)
            started = time.monotonic()
            with pytest.raises(JournalInUseError, match="in use") as info:
                client.generate_many(_requests(training_id, 50), journal=journal)
            assert time.monotonic() - started < 2, "refused at once, not after a busy wait"
            assert str(journal) in str(info.value)
    finally:
        holder.communicate(b"\n", timeout=10)
    assert fake.calls(GENERATE) == []
    with Journal(journal) as opened:  # free again once the other run ended
        assert opened.counts() == {}


# -- old journals ---------------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE items (
    key TEXT NOT NULL, occurrence INTEGER NOT NULL, position INTEGER NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'done', 'failed', 'uncertain')),
    result TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL,
    PRIMARY KEY (key, occurrence)
);
"""


def _v1_error(kind: str, message: str) -> str:
    return json.dumps({"type": kind, "message": message})


V1_ROWS = [
    pytest.param(
        "failed", _v1_error("BadRequestError", "400 bad (POST u)"), "not_charged", id="400"
    ),
    pytest.param("failed", _v1_error("AuthenticationError", "401 x"), "not_charged", id="401"),
    pytest.param("failed", _v1_error("RateLimitError", "429 x"), "not_charged", id="429"),
    pytest.param("failed", _v1_error("ServerError", "503 x (POST u)"), "not_charged", id="503"),
    pytest.param(
        "failed", _v1_error("APIConnectionError", "refused (POST u)"), "not_charged", id="conn"
    ),
    pytest.param("failed", _v1_error("ServerError", "502 x (POST u)"), "uncertain", id="502"),
    pytest.param("failed", _v1_error("ResponseValidationError", "bad"), "uncertain", id="200"),
    pytest.param("failed", _v1_error("TaskTimeoutError", "task g not"), "uncertain", id="deadline"),
    pytest.param("failed", "garbage", "uncertain", id="unreadable"),
    pytest.param("sending", None, "sending", id="sending"),
    pytest.param("uncertain", None, "uncertain", id="uncertain"),
]


@pytest.mark.parametrize(("v1_state", "error", "state"), V1_ROWS)
def test_a_0_1_journal_is_migrated_conservatively(
    tmp_path: Path, v1_state: str, error: str | None, state: str
) -> None:
    """A 0.1 `failed` row becomes not_charged only if its error proves it never left."""
    path = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_V1_SCHEMA)
        db.execute(
            "INSERT INTO items VALUES ('k', 0, 0, '{}', ?, NULL, ?, 1, 0.0)", (v1_state, error)
        )
    with Journal(path) as journal:
        assert journal.counts() == {state: 1}
    assert not (tmp_path / "old.sqlite-wal").exists()


async def test_a_resumed_0_1_journal_resends_only_what_provably_cost_nothing(
    tmp_path: Path,
) -> None:
    """A 0.1 journal (WAL, `failed` rows) resumed at the server: only the 400 is sent again."""
    fake = FakeApiframe(seed=14)
    training_id = fake.add_trained_model()
    requests = _requests(training_id, 4, name="old")
    done = json.dumps(
        {"task_id": "t0", "status": "finished", "image_urls": ["u"], "task_type": None, "extra": {}}
    )
    rows = [
        ("done", done, None),
        ("failed", None, _v1_error("BadRequestError", "400 Invalid request (POST u)")),
        ("failed", None, _v1_error("ServerError", "502 Bad Gateway (POST u)")),
        ("sending", None, None),
    ]
    path = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_V1_SCHEMA)
        for position, (request, (state, result, error)) in enumerate(
            zip(requests, rows, strict=True)
        ):
            db.execute(
                "INSERT INTO items VALUES (?, 0, ?, '{}', ?, ?, ?, 1, 0.0)",
                (request_key(request), position, state, result, error),
            )
    async with fake.serve() as base_url, AsyncApiframe(fake.api_key, base_url=base_url) as client:
        outcomes = await _run(client, requests, concurrency=4, journal=path)
    assert outcomes[0].replayed
    assert outcomes[1].ok
    assert not outcomes[1].replayed
    assert all(isinstance(o.error, UncertainSubmissionError) for o in outcomes[2:])
    assert fake.generate_count_by_prompt() == {"old 1": 1}


def test_a_journal_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A schema this version does not know is refused, not guessed at."""
    path = tmp_path / "new.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(JournalError, match="newer"):
        Journal(path)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    """Not SQLite at all: a JournalError naming the file, no sqlite3 error."""
    path = tmp_path / "prompts.txt"
    path.write_text("a prompt\n" * 200)
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(path) in str(info.value)


# -- replies that are errors ----------------------------------------------------------------


async def test_a_generation_finished_without_photos_is_an_error() -> None:
    """`finished` with no image URL is NoImagesError with the task id, not 0 photos."""
    fake = FakeApiframe(seed=11)
    finished = Task(task_id="g-1", status=TaskStatus.FINISHED)
    async with AsyncApiframe(fake.api_key, http_client=fake.client()) as client:
        with pytest.raises(NoImagesError) as info:
            await client._complete(finished)
    assert info.value.task_id == "g-1"
    assert charge_of(info.value) is Charge.ACCEPTED


def test_errors_on_a_200_show_the_servers_words() -> None:
    """A 200 whose body is only `{"errors": [...]}` is an error carrying the server's msg."""
    with pytest.raises(ResponseValidationError, match="training not ready") as info:
        Wire().task({"errors": [{"msg": "training not ready"}]})
    assert charge_of(info.value) is Charge.UNCERTAIN
