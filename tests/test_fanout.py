"""generate_many(): bounded, lazy, streaming, ordered on request, cancel-safe, money-safe."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.lowlevel
import attrs
import httpx
import pytest
import respx
from conftest import API_KEY, BASE_URL, FAST_RETRY

from apiframe_async import (
    AsyncApiframe,
    GenerateRequest,
    Generation,
    Outcome,
    Progress,
    RateLimitError,
    RequestValidationError,
    ServerError,
)
from apiframe_async._fanout import AdaptiveLimit, BulkJob, Replay

pytestmark = pytest.mark.anyio


@attrs.define
class CountingServer:
    """A stand-in for /ai-photo-generate that counts what the server side would see."""

    latency: Callable[[], float] = lambda: 0.002
    fault: Callable[[str], httpx.Response | None] = lambda _prompt: None
    in_flight: int = 0
    peak: int = 0
    generated: Counter[str] = attrs.Factory(Counter)
    refused: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.latency())
            if (refusal := self.fault(prompt)) is not None:
                self.refused += 1
                return refusal
            self.generated[prompt] += 1
            return httpx.Response(
                200,
                json={"task_id": f"task-{prompt}", "status": "finished", "image_urls": ["u"]},
            )
        finally:
            self.in_flight -= 1


@pytest.fixture
def server(api: respx.MockRouter) -> CountingServer:
    counting = CountingServer()
    api.post("/ai-photo-generate").mock(side_effect=counting)
    return counting


def requests(n: int | None, prefix: str = "p") -> Iterator[GenerateRequest]:
    """`n` distinct requests (endless if None), built lazily."""
    i = 0
    while n is None or i < n:
        yield GenerateRequest(training_id="t", prompt=f"{prefix}{i}")
        i += 1


async def drain(job: BulkJob[Generation]) -> None:
    """Run `job` to its end, reading and dropping every outcome."""
    async with job as outcomes:
        async for _ in outcomes:
            pass


async def test_concurrency_bound_holds_at_the_server(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """No more than `concurrency` generations are ever in flight, and the bound is used."""
    server.latency = lambda: random.uniform(0.001, 0.01)
    async with client.generate_many(requests(300), concurrency=12) as outcomes:
        results = [o async for o in outcomes]
    assert len(results) == 300
    assert server.peak == 12


async def test_every_prompt_is_accounted_for_exactly_once(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """Each input gets exactly one outcome and exactly one paid generation."""
    async with client.generate_many(requests(250), concurrency=16) as outcomes:
        results = [o async for o in outcomes]
    assert sorted(o.index for o in results) == list(range(250))
    assert all(o.ok for o in results)
    assert set(server.generated.values()) == {1}
    assert len(server.generated) == 250


async def test_input_is_read_lazily(client: AsyncApiframe, server: CountingServer) -> None:
    """The input is pulled at most about two windows ahead of what the caller has read."""
    pulled = 0

    def source() -> Iterator[GenerateRequest]:
        nonlocal pulled
        for request in requests(None):
            pulled += 1
            yield request

    read = 0
    async with client.generate_many(source(), concurrency=4) as outcomes:
        async for _ in outcomes:
            read += 1
            assert pulled <= read + 2 * 4 + 1
            if read == 50:
                break
    assert pulled <= 50 + 2 * 4 + 1


async def test_endless_async_source_stops_promptly_on_break(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """Breaking out of an endless async source ends the job at once, nothing left running."""
    server.latency = lambda: 0.05

    closed = False

    async def endless() -> AsyncIterator[GenerateRequest]:
        nonlocal closed
        try:
            for request in requests(None):
                yield request
        finally:
            closed = True

    with anyio.fail_after(5):
        async with client.generate_many(endless(), concurrency=8) as outcomes:
            count = 0
            async for _ in outcomes:
                count += 1
                if count == 100:
                    break
        # Leaving the block cancelled the requests still in flight and closed the source.
        assert server.in_flight == 0
        assert closed
    assert count == 100


async def test_ordered_yields_in_input_order(client: AsyncApiframe, server: CountingServer) -> None:
    """With ordered=True outcomes come in input order however the latencies fall."""
    server.latency = lambda: random.uniform(0, 0.01)
    async with client.generate_many(requests(120), concurrency=10, ordered=True) as outcomes:
        indexes = [o.index async for o in outcomes]
    assert indexes == list(range(120))


async def test_completion_order_by_default(client: AsyncApiframe, server: CountingServer) -> None:
    """By default a fast request is not held back behind a slow one."""
    server.latency = lambda: 0.0
    slow = {"p0"}
    original = server.latency

    async def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        server.latency = (lambda: 0.2) if prompt in slow else original
        return await server(request)

    client_api = respx.mock(base_url=BASE_URL, assert_all_called=False)
    client_api.post("/ai-photo-generate").mock(side_effect=handler)
    http = httpx.AsyncClient(transport=httpx.MockTransport(client_api.async_handler))
    async with (
        http,
        AsyncApiframe(api_key=API_KEY, http_client=http, retry=FAST_RETRY) as apiframe,
        apiframe.generate_many(requests(5), concurrency=5) as outcomes,
    ):
        order = [o.index async for o in outcomes]
    assert order[-1] == 0


async def test_failures_are_outcomes_by_default(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """A failing request becomes a failed outcome with a typed error; the rest go on."""
    server.fault = lambda p: (
        httpx.Response(400, json={"errors": [{"msg": "bad"}]}) if p == "p3" else None
    )
    async with client.generate_many(requests(10), concurrency=3) as outcomes:
        results = {o.index: o async for o in outcomes}
    assert len(results) == 10
    failed = results[3]
    assert not failed.ok
    assert failed.result is None
    assert isinstance(failed.error, Exception)
    assert "bad" in str(failed.error)
    with pytest.raises(type(failed.error)):
        failed.unwrap()
    assert all(results[i].ok for i in results if i != 3)
    assert isinstance(results[0].unwrap(), Generation)


async def test_fail_fast_raises_the_first_error_and_cancels_the_rest(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """fail_fast=True raises the first error and sends nothing more after it."""
    server.fault = lambda p: httpx.Response(500, json={}) if p == "p5" else None
    server.latency = lambda: 0.005
    with pytest.raises(ServerError):
        await drain(client.generate_many(requests(1000), concurrency=4, fail_fast=True))
    assert sum(server.generated.values()) < 100
    assert server.in_flight == 0


async def test_invalid_items_become_failed_outcomes(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """Mappings are validated one by one: a bad one fails alone, naming its field."""
    items: list[GenerateRequest | dict[str, object]] = [
        {"training_id": "t", "prompt": "ok-dict"},
        {"training_id": "t", "prompt": "x", "number_of_images": 9},
        {"prompt": "no training id"},
        {"training_id": "t", "prompt": "x", "colour": "red"},
        GenerateRequest(training_id="t", prompt="ok-obj"),
    ]
    outcomes = await client.generate_all(items, concurrency=2)
    assert [o.ok for o in outcomes] == [True, False, False, False, True]
    fields = [getattr(o.error, "field", None) for o in outcomes]
    assert fields == [None, "number_of_images", "training_id", "colour", None]
    assert set(server.generated) == {"ok-dict", "ok-obj"}


async def test_fail_fast_validates_a_list_before_any_request(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """With fail_fast and a list, one bad item stops the job before anything is sent."""
    items = [{"training_id": "t", "prompt": f"p{i}"} for i in range(5)] + [{"prompt": "bad"}]
    with pytest.raises(RequestValidationError, match="training_id"):
        client.generate_many(items, concurrency=2, fail_fast=True)
    assert server.generated == Counter()


async def test_rate_limits_slow_the_batch_but_every_prompt_completes(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """With 20% 429 answers every prompt still finishes, none twice, and the limit shrinks."""
    rng = random.Random(7)
    server.fault = lambda _p: (
        httpx.Response(429, headers={"Retry-After": "0.01"}, json={})
        if rng.random() < 0.2
        else None
    )
    seen: list[int] = []
    async with client.generate_many(
        requests(300), concurrency=16, on_progress=lambda p: seen.append(p.concurrency)
    ) as outcomes:
        results = [o async for o in outcomes]
    assert all(o.ok for o in results), [o.error for o in results if not o.ok][:3]
    assert server.refused > 0
    assert set(server.generated.values()) == {1}
    assert len(server.generated) == 300
    assert min(seen) < 16


async def test_adaptive_can_be_switched_off(client: AsyncApiframe, server: CountingServer) -> None:
    """With adaptive=False the limit stays at the caller's concurrency under 429s."""
    rng = random.Random(3)
    server.fault = lambda _p: (
        httpx.Response(429, headers={"Retry-After": "0"}, json={}) if rng.random() < 0.3 else None
    )
    seen: list[int] = []
    async with client.generate_many(
        requests(100),
        concurrency=8,
        adaptive=False,
        on_progress=lambda p: seen.append(p.concurrency),
    ) as outcomes:
        async for _ in outcomes:
            pass
    assert set(seen) == {8}


async def test_requests_waiting_out_a_retry_after_lend_their_places(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """While turned-away requests wait out `Retry-After: 1`, fresh ones are sent meanwhile.

    At concurrency 8 the window is 16 places: twenty requests waiting a second each would
    fill it, and nothing more would be sent for that second. (A fixed limit keeps the
    requests in flight, and the turned-away ones among them, the same all along.)
    """
    waiting = {f"p{i}" for i in range(1, 41, 2)}
    turned_away: set[str] = set()
    done_at_first_rerun: list[int] = []

    def fault(prompt: str) -> httpx.Response | None:
        if prompt in turned_away:
            if not done_at_first_rerun:
                done_at_first_rerun.append(len(server.generated))
            return None
        if prompt in waiting:
            turned_away.add(prompt)
            return httpx.Response(429, headers={"Retry-After": "1"}, json={})
        return None

    server.fault = fault
    pulled = read = most_ahead = 0

    def source() -> Iterator[GenerateRequest]:
        nonlocal pulled
        for request in requests(80):
            pulled += 1
            yield request

    async with client.generate_many(source(), concurrency=8, adaptive=False) as outcomes:
        async for outcome in outcomes:
            assert outcome.ok
            read += 1
            most_ahead = max(most_ahead, pulled - read)
    assert done_at_first_rerun == [60], "the others were all done within that second"
    assert set(server.generated.values()) == {1}
    assert len(server.generated) == 80
    assert most_ahead <= (2 + 6) * 8, "lent places stay bounded"


async def test_re_runs_told_the_same_wait_are_spread_over_a_quarter_of_a_request() -> None:
    """Requests refused together with one `Retry-After` are not all sent again together.

    Refused in bunches and re-sent in bunches, they meet the server's bucket as a burst
    each time; against an exact `Retry-After` the limit then came down level by level.
    """

    async def work(_request: GenerateRequest, _claim: object) -> Generation:
        raise AssertionError  # pragma: no cover - nothing is sent

    job = BulkJob(
        [], work, concurrency=4, ordered=False, fail_fast=False, adaptive=True, on_progress=None
    )
    await drain(job)
    job._limit.took(0.2)
    refused = RateLimitError("x", status_code=429, method="POST", url="u", body="", retry_after=1)
    waits = [job._rerun_wait(refused, 0) or 0.0 for _ in range(200)]
    assert all(1.0 <= wait <= 1.05 for wait in waits), "never before the server's time"
    assert max(waits) - min(waits) > 0.04


async def test_a_replayed_result_teaches_no_request_time() -> None:
    """A journal's replay took no time at the server: it is not the job's first success.

    Learned as one, a typical time near zero has a turned-away request give up its place
    at once, and the job's first second turns into a storm of 429s.
    """

    async def work(_request: GenerateRequest, _claim: object) -> Generation:
        raise AssertionError  # pragma: no cover - nothing is sent

    job = BulkJob(
        [], work, concurrency=4, ordered=False, fail_fast=False, adaptive=True, on_progress=None
    )
    await drain(job)
    job._took(Replay(result=None), 0.0)
    assert job._limit.typical_seconds == 0.0
    assert not job._taken.is_set()
    job._took(None, 0.2)
    assert job._limit.typical_seconds == 0.2
    assert job._taken.is_set()


async def test_before_the_first_success_a_turned_away_request_keeps_its_place(
    api: respx.MockRouter, client: AsyncApiframe
) -> None:
    """A server at its limit from the first request is not sent a storm of fresh ones.

    It runs 2 at once and turns the others away at once. With nothing done yet, a place
    given up at once would be a fresh request refused within a millisecond.
    """
    running = refused = 0
    refused_before_first: list[int] = []
    generated: Counter[str] = Counter()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, refused
        if running >= 2:
            refused += 1
            return httpx.Response(429, headers={"Retry-After": "0.5"}, json={})
        running += 1
        try:
            await anyio.sleep(0.05)
        finally:
            running -= 1
        if not refused_before_first:
            refused_before_first.append(refused)
        prompt = json.loads(request.content)["prompt"]
        generated[prompt] += 1
        return httpx.Response(
            200, json={"task_id": f"task-{prompt}", "status": "finished", "image_urls": ["u"]}
        )

    api.post("/ai-photo-generate").mock(side_effect=handler)
    async with client.generate_many(requests(12), concurrency=8) as outcomes:
        assert all([o.ok async for o in outcomes])
    assert refused_before_first == [6], "only the first flight's six past the limit"
    assert generated == Counter(f"p{i}" for i in range(12))


async def test_client_wide_limit_is_shared_by_every_entry_point(
    api: respx.MockRouter, server: CountingServer
) -> None:
    """Two batches and single calls together never exceed the client's max_concurrency."""
    server.latency = lambda: random.uniform(0.001, 0.01)
    http = httpx.AsyncClient(transport=httpx.MockTransport(api.async_handler))
    async with (
        http,
        AsyncApiframe(api_key=API_KEY, http_client=http, max_concurrency=10) as apiframe,
    ):

        async def batch(prefix: str) -> None:
            async with apiframe.generate_many(requests(100, prefix), concurrency=8) as outcomes:
                async for outcome in outcomes:
                    assert outcome.ok

        async def singles() -> None:
            for i in range(20):
                await apiframe.generate(training_id="t", prompt=f"single{i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, "a")
            tg.start_soon(batch, "b")
            tg.start_soon(singles)
    assert server.peak == 10
    assert len(server.generated) == 220


async def test_concurrency_above_the_client_limit_is_refused(client: AsyncApiframe) -> None:
    """A job may not promise more concurrency than the client allows; nothing is sent."""
    with pytest.raises(RequestValidationError, match="concurrency") as info:
        client.generate_many(requests(1), concurrency=client.max_concurrency + 1)
    assert info.value.field == "concurrency"
    assert str(client.max_concurrency) in str(info.value)


async def test_cancel_from_outside_leaves_the_client_usable(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """Cancelling a job mid-flight stops it; the same client then runs a new job."""
    server.latency = lambda: 0.05
    with anyio.move_on_after(0.12) as scope:
        async with client.generate_many(requests(None), concurrency=8) as outcomes:
            async for _ in outcomes:
                pass
    assert scope.cancelled_caught
    await anyio.lowlevel.checkpoint()
    assert server.in_flight == 0
    server.latency = lambda: 0.0
    again = await client.generate_all(requests(10, "again"), concurrency=4)
    assert all(o.ok for o in again)


@pytest.mark.parametrize("concurrency", [4, 16])
async def test_a_cancelled_caller_stops_at_the_next_outcome_even_if_some_are_waiting(
    client: AsyncApiframe, concurrency: int
) -> None:
    """A read after a cancel stops the job, even with outcomes already back: also where
    reads take their trip through the scheduler only now and then (16)."""
    items = ({"prompt": "no training id"} for _ in range(100))
    seen = 0
    with anyio.CancelScope() as scope:
        async with client.generate_many(items, concurrency=concurrency) as outcomes:
            async for _ in outcomes:
                seen += 1
                scope.cancel()
    assert scope.cancelled_caught
    assert seen == 1


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("concurrency", [2, 16])
async def test_a_cancel_caught_around_one_read_loses_no_outcome_and_no_place(
    client: AsyncApiframe, server: CountingServer, ordered: bool, concurrency: int
) -> None:
    """A read cancelled at its trip (a scope whose time is already up) takes nothing: the
    caller reads on and gets every outcome, in order if asked; no place of the window is
    lost, so the job does not stall. At 16, with reads in between that hand over
    outcomes and owe their places: those too come back."""
    n = 10 * concurrency
    async with client.generate_many(
        requests(n), concurrency=concurrency, ordered=ordered
    ) as outcomes:
        seen = [(await anext(outcomes)).index for _ in range(concurrency // 4)]
        await anyio.sleep(0.2)  # the window fills
        for _ in range(2 * concurrency):  # as many as the window holds
            with anyio.CancelScope(deadline=anyio.current_time() - 1) as scope:
                await anext(outcomes)
            assert scope.cancelled_caught
        with anyio.fail_after(5):
            seen += [o.index async for o in outcomes]
        assert outcomes.take_received() == []
    assert seen == list(range(n)) if ordered else sorted(seen) == list(range(n))
    assert sum(server.generated.values()) == n


async def test_an_ordered_job_reading_what_waited_for_its_turn_keeps_sending() -> None:
    """Outcomes read from the reorder buffer give their places back too: after a slow
    first item, the workers send on while the caller reads the outcomes that waited."""
    sent: list[int] = []

    async def work(request: GenerateRequest, _claim: object) -> str:
        index = int(request.prompt[1:])
        sent.append(index)
        await anyio.sleep(0.3 if index == 0 else 0.01)
        return "photo"

    job: BulkJob[str] = BulkJob(
        requests(100),
        work,
        concurrency=16,
        ordered=True,
        fail_fast=False,
        adaptive=False,
        on_progress=None,
    )
    async with job as outcomes:
        assert (await anext(outcomes)).index == 0
        assert len(sent) == 32  # the window: item 0's place, and 31 waiting behind it
        for expected in range(1, 17):  # half of what waited, read slowly
            assert (await anext(outcomes)).index == expected
            await anyio.sleep(0.01)
        # Places went back at the trips among those reads, and more was sent meanwhile.
        assert len(sent) > 32
        assert [o.index async for o in outcomes] == list(range(17, 100))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_outcome_that_arrives_as_the_waiting_caller_is_cancelled_is_kept() -> None:
    """The caller waits for an outcome; in one pass of the loop a worker's reply comes and,
    after it, a cancel: the outcome, paid for, is in `take_received()`, not dropped."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()

    async def work(request: GenerateRequest, _claim: object) -> str:
        return await reply if request.prompt == "p0" else await loop.create_future()

    job: BulkJob[str] = BulkJob(
        requests(2),
        work,
        concurrency=1,
        ordered=False,
        fail_fast=False,
        adaptive=False,
        on_progress=None,
    )
    yielded: list[int] = []

    async def consume() -> None:
        async with job as outcomes:
            yielded.extend([o.index async for o in outcomes])

    reader = asyncio.create_task(consume())
    for _ in range(5):
        await asyncio.sleep(0)  # the caller waits for an outcome, the worker for its reply
    reply.set_result("photo")
    loop.call_soon(reader.cancel)  # the same pass, after the worker's step
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert yielded == []
    assert [(o.index, o.result) for o in job.take_received()] == [(0, "photo")]


async def test_two_tasks_reading_one_job_share_its_outcomes(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """Both readers wait for outcomes at times; each outcome goes to one of them."""
    server.latency = lambda: random.uniform(0.001, 0.01)
    seen: list[list[int]] = [[], []]
    async with client.generate_many(requests(60), concurrency=4) as outcomes:

        async def read(into: list[int]) -> None:
            into.extend([o.index async for o in outcomes])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as readers:
                readers.start_soon(read, seen[0])
                readers.start_soon(read, seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(60))
    assert seen[0]
    assert seen[1]


async def test_a_job_that_never_waits_on_the_network_lets_other_tasks_run(
    client: AsyncApiframe,
) -> None:
    """Items that fail before any request keep the workers busy without a wait of their own:
    the window still makes them, and the caller, yield every few outcomes."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    items = ({"prompt": "no training id"} for _ in range(2_000))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with client.generate_many(items, concurrency=4) as outcomes:
            seen_at = [ticks async for _ in outcomes]
        tg.cancel_scope.cancel()
    assert len(seen_at) == 2_000
    # The window holds 8 outcomes: the other task runs at least once per 8 or so.
    assert seen_at[-1] - seen_at[0] >= 2_000 // 16


async def test_progress_counts_and_callback(client: AsyncApiframe, server: CountingServer) -> None:
    """Progress counts submitted, succeeded, failed and in flight; the callback sees each end."""
    server.fault = lambda p: httpx.Response(400, json={"errors": []}) if p.endswith("7") else None
    snapshots: list[tuple[int, int, int]] = []

    def record(progress: Progress) -> None:
        assert progress.in_flight <= 5
        snapshots.append((progress.submitted, progress.succeeded, progress.failed))

    job = client.generate_many(requests(40), concurrency=5, on_progress=record)
    async with job as outcomes:
        async for _ in outcomes:
            pass
    assert job.progress.submitted == 40
    assert job.progress.failed == 4
    assert job.progress.succeeded == 36
    assert job.progress.done == 40
    assert job.progress.in_flight == 0
    assert len(snapshots) == 40


async def test_generate_all_returns_input_order(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """generate_all() returns one outcome per request, in input order."""
    server.latency = lambda: random.uniform(0, 0.005)
    outcomes = await client.generate_all(list(requests(30)), concurrency=6)
    assert [o.index for o in outcomes] == list(range(30))
    assert [o.request.prompt for o in outcomes if isinstance(o.request, GenerateRequest)] == [
        f"p{i}" for i in range(30)
    ]


async def test_memory_stays_bounded_for_a_huge_lazy_input() -> None:
    """The machinery holds O(concurrency) state: 20,000 items cost no more than 500."""

    async def work(request: GenerateRequest, _claim: object) -> str:
        await anyio.lowlevel.checkpoint()
        return request.prompt

    async def peak_for(n: int) -> int:
        gc.collect()
        tracemalloc.start()
        job: BulkJob[str] = BulkJob(
            requests(n),
            work,
            concurrency=32,
            ordered=False,
            fail_fast=False,
            adaptive=True,
            on_progress=None,
        )
        async with job as outcomes:
            async for outcome in outcomes:
                assert isinstance(outcome, Outcome)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return peak

    small = await peak_for(500)
    large = await peak_for(20_000)
    assert large < small + 256 * 1024, (small, large)


async def test_rate_limit_error_after_exhausted_rounds_is_an_outcome(
    client: AsyncApiframe, server: CountingServer
) -> None:
    """A server that only ever says 429 ends each item with a RateLimitError, not a hang."""
    server.fault = lambda _p: httpx.Response(429, headers={"Retry-After": "0"}, json={})
    with anyio.fail_after(10):
        outcomes = await client.generate_all(requests(3), concurrency=3)
    assert all(isinstance(o.error, RateLimitError) for o in outcomes)
    assert server.generated == Counter()


async def test_adaptive_limit_shrinks_by_one_per_window_and_grows_back() -> None:
    """One off per pushback window, never below 1, one more per clean window."""
    limit = AdaptiveLimit(16, adaptive=True)
    limit.record(ok=False, overloaded=True)
    assert limit.current == 15
    limit.record(ok=False, overloaded=True)
    assert limit.current == 15, "one decrease per window"
    for _ in range(40):
        for _ in range(limit.current):
            limit.record(ok=False, overloaded=True)
    assert limit.current == 1
    limit.record(ok=True, overloaded=False)
    assert limit.current == 2
    for _ in range(2):
        limit.record(ok=True, overloaded=False)
    assert limit.current == 3


async def test_adaptive_limit_lands_on_what_the_server_took() -> None:
    """A 429 to a request sent with 33 in flight cuts toward 32, an eighth at most per window."""
    limit = AdaptiveLimit(64, adaptive=True)
    limit.record(ok=False, overloaded=True, sent_with=33)
    assert limit.current == 56
    for sent_with in range(34, 65):
        limit.record(ok=False, overloaded=True, sent_with=sent_with)
    assert limit.current == 56, "later refusals of the same window change nothing"
    seen = []
    for _ in range(7):
        # A window at a server that runs 32 at once: the requests past 32 are refused.
        for place in range(limit.current):
            limit.record(ok=place < 32, overloaded=place >= 32, sent_with=place + 1)
        seen.append(limit.current)
    assert seen == [49, 42, 36, 35, 34, 33, 32], "an eighth off while the gap is clear"


async def test_a_429_sent_with_few_in_flight_is_no_ceiling_when_more_went_through() -> None:
    """Scattered 429s hit requests sent with any number in flight: one sent with fewer than
    a request that went through since the last cut tells of no ceiling, and costs one."""
    limit = AdaptiveLimit(64, adaptive=True)
    for _ in range(64):
        limit.record(ok=True, overloaded=False, sent_with=60)
    limit.record(ok=False, overloaded=True, sent_with=20)
    assert limit.current == 63, "not an eighth off"
    # Since that cut nothing sent with more than 20 went through: a ceiling again.
    for _ in range(62):
        limit.record(ok=True, overloaded=False, sent_with=19)
    limit.record(ok=False, overloaded=True, sent_with=20)
    assert limit.current == 63 * 7 // 8, "an eighth off"


async def test_windows_mostly_turned_away_cut_an_eighth_each() -> None:
    """A server that took nothing of a window is far under the limit: an eighth off a window.

    A token bucket emptied by the first burst refuses every request sent with the limit's
    places full, so the places tell nothing; one off a window would take 40 windows of
    429s to come down from 64 to its rate.
    """
    limit = AdaptiveLimit(64, adaptive=True)
    seen = []
    for _ in range(8):
        for _ in range(limit.current):
            limit.record(ok=False, overloaded=True, sent_with=limit.current)
        seen.append(limit.current)
    assert seen == [55, 48, 42, 36, 31, 27, 23, 20]
    # A window mostly taken: one off, as before.
    for _ in range(limit.current):
        limit.record(ok=True, overloaded=False, sent_with=limit.current)
    assert limit.current == 21
    limit.record(ok=False, overloaded=True, sent_with=21)
    assert limit.current == 20


async def test_scattered_pushback_costs_no_more_than_successes_win_back() -> None:
    """2% of requests refused at random, whatever the load: the limit stays near its ceiling."""
    rng = random.Random(5)
    limit = AdaptiveLimit(64, adaptive=True)
    seen = []
    for _ in range(20_000):
        refused = rng.random() < 0.02
        limit.record(ok=not refused, overloaded=refused, sent_with=limit.current)
        seen.append(limit.current)
    assert sum(seen) / len(seen) > 56


def _at_a_concurrency_limit(limit: AdaptiveLimit, k: int, windows: int) -> tuple[int, list[int]]:
    """Windows of requests against a server that runs `k` at once: those past `k` are refused."""
    refused, seen = 0, []
    for _ in range(windows):
        current = limit.current
        for place in range(current):
            turned_away = place >= k
            refused += turned_away
            limit.record(ok=not turned_away, overloaded=turned_away, sent_with=place + 1)
        seen.append(limit.current)
    return refused, seen


async def test_a_ceiling_refused_again_is_probed_ever_less_often() -> None:
    """Each refusal at the same ceiling doubles the clean windows before it is tried again."""
    limit = AdaptiveLimit(64, adaptive=True)
    _at_a_concurrency_limit(limit, 32, 50)
    refused, seen = _at_a_concurrency_limit(limit, 32, 300)
    # One probe every window, as before the hold, is 150 refusals in 300 windows.
    assert refused <= 8
    assert min(seen) == 32


async def test_a_raised_ceiling_is_found_and_then_held_to() -> None:
    """A server that takes more is found within the longest hold a step, then rarely probed."""
    limit = AdaptiveLimit(64, adaptive=True)
    _at_a_concurrency_limit(limit, 32, 300)
    _, seen = _at_a_concurrency_limit(limit, 40, 64 + 8)
    assert 40 in seen
    refused, seen = _at_a_concurrency_limit(limit, 40, 300)
    assert refused <= 8
    assert min(seen) == 40


async def test_a_burst_that_takes_a_level_or_two_more_keeps_the_long_wait() -> None:
    """A probe that a burst lets climb past a ceiling does not cost the wait under it.

    A token bucket with a burst takes a level or two more for a few windows before it
    turns requests away again; after coming back down, the limit waits as long as before
    to try the refused level again, instead of probing it every few windows.
    """
    limit = AdaptiveLimit(64, adaptive=True)
    _at_a_concurrency_limit(limit, 20, 300)
    while limit.current != 21:
        _at_a_concurrency_limit(limit, 20, 1)
    _, climbed = _at_a_concurrency_limit(limit, 22, 2)
    assert climbed == [22, 23]
    _, descent = _at_a_concurrency_limit(limit, 20, 3)
    assert descent == [22, 21, 20]
    refused, seen = _at_a_concurrency_limit(limit, 20, 60)
    assert (refused, min(seen), max(seen)) == (0, 20, 20)


async def test_a_ceiling_refused_after_lucky_windows_keeps_its_long_wait() -> None:
    """Clean windows at a ceiling that is refused again after each do not add up to a drop.

    A bucket's burst may let a probe of the refused level through for a window; counted
    across probes, 64 such windows dropped the mark at a true ceiling, and its wait with it.
    """
    limit = AdaptiveLimit(64, adaptive=True)
    _at_a_concurrency_limit(limit, 20, 300)
    for _ in range(80):
        while limit.current != 21:
            _at_a_concurrency_limit(limit, 20, 1)
        _at_a_concurrency_limit(limit, 21, 1)  # one window at the mark goes through
        _at_a_concurrency_limit(limit, 20, 2)  # then it is refused again
    assert (limit._refused_level, limit._hold_windows) == (21, 64)


async def test_pushback_below_the_refused_level_starts_the_wait_over() -> None:
    """A refusal under the refused level is not that ceiling again: the next try is quick."""
    limit = AdaptiveLimit(64, adaptive=True)
    _at_a_concurrency_limit(limit, 32, 300)
    assert limit.current == 32
    limit.record(ok=False, overloaded=True, sent_with=32)
    assert limit.current == 31
    _, seen = _at_a_concurrency_limit(limit, 40, 2)
    assert seen == [32, 33]


async def test_adaptive_limit_holds_in_flight_under_a_lowered_limit() -> None:
    """After a decrease, requests in flight drain down to the new limit and stay under it."""
    limit = AdaptiveLimit(8, adaptive=True)
    in_flight = peak = 0
    lowered = anyio.Event()

    async def request() -> None:
        nonlocal in_flight, peak
        async with limit:
            in_flight += 1
            if lowered.is_set():
                peak = max(peak, in_flight)
            await anyio.sleep(0.001)
            in_flight -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(request)
        await anyio.lowlevel.checkpoint()
        limit.record(ok=False, overloaded=True, sent_with=2)
        assert limit.current == 7
        await anyio.sleep(0.005)
        lowered.set()
        for _ in range(200):
            tg.start_soon(request)
    assert peak == 7
