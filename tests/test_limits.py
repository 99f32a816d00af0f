"""The fake's limit servers refuse past their limit, and a job under them pays once per prompt."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import pytest
from conftest import FAST_POLL

from apiframe_async import AsyncApiframe, RetryPolicy
from apiframe_async.testing import ConcurrencyLimit, FakeApiframe, Faults, TokenBucket

pytestmark = pytest.mark.anyio

GENERATE = "/ai-photo-generate"


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def generate(http: httpx.AsyncClient, training_id: str, prompt: str) -> httpx.Response:
    return await http.post(GENERATE, json={"training_id": training_id, "prompt": prompt})


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    """Burst B at once, then one more per 1/R seconds; refusals say when the next comes."""
    clock = Clock()
    bucket = TokenBucket(rate=8, burst=3, retry_after="exact", clock=clock)
    assert [bucket.admit() is None for _ in range(4)] == [True, True, True, False]
    refusal = bucket.admit()
    assert refusal is not None
    assert refusal.retry_after == "0.125"
    clock.now += 0.0625
    assert bucket.admit() is not None
    clock.now += 0.0625
    assert bucket.admit() is None
    clock.now += 10
    assert sum(bucket.admit() is None for _ in range(10)) == 3, "never more than the burst"


@pytest.mark.parametrize(
    ("choice", "header"),
    [
        pytest.param("ceil", 1, id="ceil-whole-seconds"),
        pytest.param("exact", "0.250", id="exact"),
        pytest.param(7, 7, id="fixed"),
        pytest.param(None, None, id="no-header"),
    ],
)
def test_token_bucket_retry_after_forms(choice: float | str | None, header: object) -> None:
    """The true wait (here 0.25 s) is sent rounded up to seconds, exact, fixed, or not at all."""
    bucket = TokenBucket(rate=4, burst=1, retry_after=choice, clock=Clock())  # type: ignore[arg-type]
    assert bucket.admit() is None
    refusal = bucket.admit()
    assert refusal is not None
    assert refusal.retry_after == header


def test_concurrency_limit_counts_places_held() -> None:
    """K places; a refusal holds none; a release frees one."""
    limit = ConcurrencyLimit(2, retry_after=3)
    assert limit.admit() is None
    assert limit.admit() is None
    refusal = limit.admit()
    assert refusal is not None
    assert refusal.retry_after == 3
    assert limit.running == 2
    limit.release()
    assert limit.admit() is None


def test_limits_refuse_unknown_routes() -> None:
    """A limit on a route the fake does not have is a mistake, said at once."""
    with pytest.raises(ValueError, match="/generate"):
        FakeApiframe(limits=TokenBucket(rate=1, paths={"/generate"}))


async def test_fake_answers_429_past_the_bucket_and_charges_nothing_for_it() -> None:
    """Past the burst: 429 with Retry-After, recorded, no task, no credit spent."""
    fake = FakeApiframe(limits=TokenBucket(rate=0.001, burst=2))
    model = fake.add_trained_model()
    async with fake.client(headers={"Authorization": fake.api_key}) as http:
        statuses = [(await generate(http, model, f"p{i}")).status_code for i in range(4)]
        refused = await generate(http, model, "p4")
        account = await http.get("/account")
    assert statuses == [200, 200, 429, 429]
    assert refused.headers["retry-after"] == "1000"
    assert fake.generate_count_by_prompt() == {"p0": 1, "p1": 1}
    assert [c.created for c in fake.calls(GENERATE)] == [True, True, False, False, False]
    assert account.status_code == 200, "other routes are not limited"
    assert fake.credits == 10_000 - 2


async def test_fake_concurrency_limit_refuses_only_past_k_running() -> None:
    """With K=3 and slow generations, 8 at once: 3 generated, 5 refused, places freed after."""
    fake = FakeApiframe(
        limits=ConcurrencyLimit(3),
        faults=Faults(slow_rate=1.0, slow_seconds=0.2, paths={GENERATE}),
    )
    model = fake.add_trained_model()
    statuses: list[int] = []
    async with fake.client(headers={"Authorization": fake.api_key}) as http:

        async def one(i: int) -> None:
            statuses.append((await generate(http, model, f"p{i}")).status_code)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert sorted(statuses) == [200] * 3 + [429] * 5
        assert (await generate(http, model, "after")).status_code == 200
    assert len(fake.generate_count_by_prompt()) == 4


def fast_limit_servers() -> list[object]:
    return [
        pytest.param(
            lambda: TokenBucket(rate=200, burst=4, retry_after="exact"), id="bucket-exact"
        ),
        pytest.param(lambda: TokenBucket(rate=200, burst=4), id="bucket-whole-seconds"),
        pytest.param(lambda: ConcurrencyLimit(4, retry_after=0.05), id="concurrency"),
    ]


@pytest.mark.parametrize("make_limit", fast_limit_servers())
@pytest.mark.parametrize("served", [False, True], ids=["in-process", "served"])
async def test_a_job_under_each_limit_generates_every_prompt_exactly_once(
    make_limit: Callable[[], TokenBucket | ConcurrencyLimit], served: bool
) -> None:
    """Server-counted: under each limit, 60 prompts at concurrency 16 are each generated once."""
    fake = FakeApiframe(
        limits=make_limit(), faults=Faults(slow_rate=1.0, slow_seconds=0.01, paths={GENERATE})
    )
    model = fake.add_trained_model()
    prompts = [f"photo {i}" for i in range(60)]
    retry = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.01)

    async def run(client: AsyncApiframe) -> list[bool]:
        async with client:
            requests = ({"training_id": model, "prompt": p} for p in prompts)
            outcomes = await client.generate_all(requests, concurrency=16)
        return [o.ok for o in outcomes]

    with anyio.fail_after(30):
        if served:
            async with fake.serve() as base_url:
                client = AsyncApiframe(
                    api_key=fake.api_key, base_url=base_url, retry=retry, poll=FAST_POLL
                )
                ok = await run(client)
        else:
            client = AsyncApiframe(
                api_key=fake.api_key, http_client=fake.client(), retry=retry, poll=FAST_POLL
            )
            ok = await run(client)
    assert all(ok)
    assert fake.generate_count_by_prompt() == dict.fromkeys(prompts, 1)
    assert any(c.status == 429 for c in fake.calls(GENERATE)), "the limit was reached"
