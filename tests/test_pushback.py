"""What a 429 holds back, and how long a request waits for a slot of the client-wide limit."""

from __future__ import annotations

import anyio
import httpx
import pytest

from apiframe_async import APITimeoutError, AsyncApiframe, RetryPolicy
from apiframe_async._pause import Pause
from apiframe_async.testing import FakeApiframe, Fault

pytestmark = pytest.mark.anyio

GENERATE = "/ai-photo-generate"
NO_RETRY = RetryPolicy(max_retries=0)


async def generate_all(client: AsyncApiframe, model: str, prompts: list[str]) -> None:
    async with anyio.create_task_group() as tg:
        for prompt in prompts:
            tg.start_soon(lambda p: client.generate(training_id=model, prompt=p), prompt)


async def test_a_broad_pause_holds_back_requests_already_waiting_for_a_slot() -> None:
    """Every request in flight turned away: none of the 12 waiting for a slot goes out early."""
    fake = FakeApiframe()
    model = fake.add_trained_model()
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path=GENERATE, times=8, retry_after=2)
    prompts = [f"p{i}" for i in range(16)]
    with anyio.fail_after(20):
        async with fake.serve() as base_url:
            client = AsyncApiframe(api_key=fake.api_key, base_url=base_url, max_concurrency=4)
            async with client:
                await generate_all(client, model, prompts)
    calls = fake.calls(GENERATE)
    refused = sorted(c.ended_at for c in calls if c.status == 429)
    assert len(refused) == 8
    pause_from = refused[3]  # the 4th in a row: all 4 in flight were turned away
    early = [c for c in calls if pause_from + 0.1 < c.started_at < pause_from + 1.9]
    assert early == [], f"{len(early)} requests went out during the pause"
    assert fake.generate_count_by_prompt() == dict.fromkeys(prompts, 1)


async def test_a_scattered_429_holds_back_only_the_request_that_got_it() -> None:
    """One 429 (Retry-After 2) among 8: that one waits 2 s, the 7 others go straight through."""
    fake = FakeApiframe()
    model = fake.add_trained_model()
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path=GENERATE, times=1, retry_after=2)
    prompts = [f"p{i}" for i in range(8)]
    with anyio.fail_after(20):
        async with fake.serve() as base_url:
            client = AsyncApiframe(api_key=fake.api_key, base_url=base_url, max_concurrency=2)
            async with client:
                await generate_all(client, model, prompts)
    calls = fake.calls(GENERATE)
    (refusal,) = [c for c in calls if c.status == 429]
    done = {c.body["prompt"]: c.started_at for c in calls if c.status == 200}
    refused_prompt = refusal.body["prompt"]
    assert done[refused_prompt] >= refusal.ended_at + 2
    others = [t for p, t in done.items() if p != refused_prompt]
    assert max(others) < refusal.ended_at + 1
    assert fake.generate_count_by_prompt() == dict.fromkeys(prompts, 1)


def test_a_pause_is_broad_only_once_the_whole_flight_came_back_turned_away() -> None:
    """8 in flight: 7 of them refused pause nothing, nor do later ones; the 8th pauses."""
    pause = Pause(max_wait=60)
    tickets = [anyio.run(pause.wait) for _ in range(8)]
    for ticket in tickets[:7]:
        pause.pushed_back(5, ticket=ticket, in_flight=8)
    for _ in range(20):  # sent after the run began, as slots came free
        pause.pushed_back(5, ticket=anyio.run(pause.wait), in_flight=8)
    assert pause.resume_at == 0.0
    pause.pushed_back(5, ticket=tickets[7], in_flight=1)
    assert pause.resume_at > 0.0


def test_an_answer_breaks_the_run_and_a_too_long_wait_is_never_a_pause() -> None:
    """A success between pushbacks starts the count again; Retry-After past the policy: no pause."""
    pause = Pause(max_wait=60)
    first, second = anyio.run(pause.wait), anyio.run(pause.wait)
    pause.pushed_back(5, ticket=first, in_flight=2)
    pause.answered()
    pause.pushed_back(5, ticket=second, in_flight=1)
    assert pause.resume_at > 0.0, "a new run: the one in flight came back turned away"
    late = Pause(max_wait=60)
    late.pushed_back(120, ticket=anyio.run(late.wait), in_flight=1)
    assert late.resume_at == 0.0


async def hold_the_only_slot(fake: FakeApiframe, client: AsyncApiframe, model: str) -> None:
    fake.inject_fault(path=GENERATE, delay=1.0)
    await client.generate(training_id=model, prompt="slow")


@pytest.mark.parametrize("per_call", [False, True], ids=["client-timeout", "call-timeout"])
async def test_the_pool_timeout_bounds_the_wait_for_a_slot(per_call: bool) -> None:
    """No free slot within `pool` seconds: APITimeoutError that says nothing was sent."""
    fake = FakeApiframe()
    model = fake.add_trained_model()
    pool = httpx.Timeout(30.0, pool=0.1)
    client = AsyncApiframe(
        api_key=fake.api_key,
        http_client=fake.client(),
        max_concurrency=1,
        retry=NO_RETRY,
        timeout=30.0 if per_call else pool,
    )
    with anyio.fail_after(10):
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(hold_the_only_slot, fake, client, model)
            await anyio.sleep(0.05)
            started = anyio.current_time()
            with pytest.raises(APITimeoutError, match="pool timeout") as caught:
                await client.generate(
                    training_id=model, prompt="queued", timeout=pool if per_call else None
                )
            waited = anyio.current_time() - started
    assert caught.value.may_have_been_submitted is False
    assert "nothing was sent" in str(caught.value)
    assert waited < 0.9, "it did not wait for the slow request to end"
    assert fake.generate_count_by_prompt() == {"slow": 1}


async def test_a_paid_request_past_the_pool_timeout_is_retried_safely() -> None:
    """Nothing was sent, so the retry rules send the generation again once a slot is free."""
    fake = FakeApiframe()
    model = fake.add_trained_model()
    client = AsyncApiframe(
        api_key=fake.api_key,
        http_client=fake.client(),
        max_concurrency=1,
        retry=RetryPolicy(max_retries=3, initial_backoff=0.5, max_backoff=1.0),
        timeout=httpx.Timeout(30.0, pool=0.3),
    )
    with anyio.fail_after(10):
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(hold_the_only_slot, fake, client, model)
            await anyio.sleep(0.05)
            await client.generate(training_id=model, prompt="queued")
    assert fake.generate_count_by_prompt() == {"slow": 1, "queued": 1}
