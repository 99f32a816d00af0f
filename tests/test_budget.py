"""max_credits: credits spent plus credits in flight never pass the budget, at the server."""

from __future__ import annotations

import pytest
from conftest import FAST_RETRY

from apiframe_async import (
    AsyncApiframe,
    BudgetExceededError,
    GenerateRequest,
    Journal,
    RequestValidationError,
)
from apiframe_async._budget import Budget, credits_charged
from apiframe_async._errors import APIConnectionError, ApiframeError, ServerError, TaskPollError
from apiframe_async._pricing import generation_cost
from apiframe_async.testing import FakeApiframe, Fault

pytestmark = pytest.mark.anyio

GENERATE = "/ai-photo-generate"


def requests(training_id: str, n: int, photos: int | None = None) -> list[GenerateRequest]:
    return [
        GenerateRequest(training_id=training_id, prompt=f"p{i}", number_of_images=photos)
        for i in range(n)
    ]


def charged_by(fake: FakeApiframe) -> int:
    return sum(call.charged for call in fake.calls(GENERATE))


@pytest.mark.parametrize(
    ("n", "photos", "budget", "expected"),
    [
        pytest.param(30, None, 17, 17, id="one-photo-each"),
        pytest.param(30, 3, 20, 18, id="three-photos-each-never-split"),
        pytest.param(5, 2, 100, 10, id="budget-larger-than-job"),
    ],
)
async def test_the_server_never_charges_more_than_the_budget(
    n: int, photos: int | None, budget: int, expected: int
) -> None:
    """The fake charges at most max_credits; the rest end as BudgetExceededError, unsent."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url) as client,
    ):
        job = client.generate_many(requests(training_id, n, photos), max_credits=budget)
        async with job as outcomes:
            results = [o async for o in outcomes]

    assert charged_by(fake) == expected
    assert sum(o.credits for o in results) == expected == job.progress.credits
    refused = [o for o in results if o.error is not None]
    assert all(isinstance(o.error, BudgetExceededError) for o in refused)
    assert len(refused) == n - expected // generation_cost(photos)
    assert all(o.credits == 0 for o in refused)
    assert len(fake.calls(GENERATE)) == n - len(refused), "a refused request was sent"


async def test_a_refusal_that_costs_nothing_gives_its_credits_back() -> None:
    """A 400 or a 503 on the submission frees its reservation for the next request."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    fake.inject_fault(Fault.UNAVAILABLE, path=GENERATE, times=4)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=FAST_RETRY) as client,
    ):
        items: list[GenerateRequest | dict[str, str]] = [
            {"training_id": "no-such-training", "prompt": "refused with a 400"},
            *requests(training_id, 10),
        ]
        job = client.generate_many(items, max_credits=6, concurrency=2, adaptive=False)
        async with job as outcomes:
            results = [o async for o in outcomes]

    assert charged_by(fake) == 6
    assert sum(o.ok for o in results) == 6
    assert sum(isinstance(o.error, BudgetExceededError) for o in results) == 4


async def test_an_uncertain_outcome_counts_as_spent() -> None:
    """A generation whose reply was lost after the work may have been charged: it counts."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    fake.inject_fault(Fault.DROP_AFTER_WORK, path=GENERATE, times=2)
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url, retry=FAST_RETRY) as client,
    ):
        job = client.generate_many(requests(training_id, 10), max_credits=5, concurrency=1)
        async with job as outcomes:
            results = [o async for o in outcomes]

    assert charged_by(fake) == 5
    assert sum(o.ok for o in results) == 3
    assert sum(o.credits for o in results) == 5


async def test_a_resume_with_a_larger_budget_sends_what_was_refused(tmp_path: object) -> None:
    """Refused items cost nothing; a resumed job replays the rest and sends them."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    journal = f"{tmp_path}/job.sqlite"
    async with (
        fake.serve() as base_url,
        AsyncApiframe(fake.api_key, base_url=base_url) as client,
    ):
        for budget in (4, 10):
            job = client.generate_many(
                requests(training_id, 10), journal=journal, max_credits=budget
            )
            async with job as outcomes:
                results = [o async for o in outcomes]

    assert all(o.ok for o in results)
    assert sum(o.replayed for o in results) == 4
    assert sum(o.credits for o in results) == 6
    assert fake.generate_count_by_prompt() == {f"p{i}": 1 for i in range(10)}
    with Journal(journal) as book:
        assert book.counts() == {"done": 10}


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
async def test_the_budget_is_validated_before_any_request(bad: object) -> None:
    """A budget that is not an int >= 1 (or None) fails fast, naming the field."""
    fake = FakeApiframe()
    async with AsyncApiframe(fake.api_key, http_client=fake.client()) as client:
        with pytest.raises(RequestValidationError) as caught:
            client.generate_many([], max_credits=bad)  # type: ignore[arg-type]
    assert caught.value.field == "max_credits"
    assert fake.calls() == []


async def test_a_request_that_might_fit_waits_for_the_ones_in_flight() -> None:
    """With credits reserved that may come back, a request waits instead of being refused."""
    budget = Budget(2)
    await budget.reserve(1)
    await budget.reserve(1)
    budget.settle(1, 0)  # refused at no cost: its credit is free again
    await budget.reserve(1)
    budget.settle(1, 1)
    budget.settle(1, 1)
    with pytest.raises(BudgetExceededError):
        await budget.reserve(1)
    assert (budget.spent, budget.reserved) == (2, 0)


def test_what_counts_as_charged() -> None:
    """Only failures that prove nothing was charged give the credits back."""
    gen, poll = "https://x/ai-photo-generate", "https://x/fetch"

    def status(code: int, url: str = gen) -> ServerError:
        return ServerError("x", status_code=code, method="POST", url=url, body="")

    def dropped(sent: bool, url: str = gen) -> APIConnectionError:
        return APIConnectionError("x", method="POST", url=url, may_have_been_submitted=sent)

    def polled(cause: ApiframeError) -> TaskPollError:
        return TaskPollError("task-1", cause)

    assert credits_charged(3, None) == 3
    assert credits_charged(3, status(400)) == 0
    assert credits_charged(3, status(503)) == 0
    assert credits_charged(3, polled(status(429, poll))) == 3, "a poll's error: the task exists"
    assert credits_charged(3, status(502)) == 3
    assert credits_charged(3, status(408)) == 3
    assert credits_charged(3, dropped(sent=False)) == 0
    assert credits_charged(3, dropped(sent=True)) == 3
    assert credits_charged(3, polled(dropped(sent=False, url=poll))) == 3
