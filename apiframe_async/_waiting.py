"""Waiting for tasks: one shared poller per client, and the policy that paces it.

Every `wait()` of a client registers with its `Poller`. Whichever waiter is due first
polls for every waiter due by then, in `/fetch-many` batches of 20, and hands each its
result; the others wake with theirs, so a thousand waits cost a thousand/20 requests a
tick, not a thousand. A webhook delivered to the poller wakes its waiter at once: a wait
ends with whichever comes first, the webhook or the poll, and ends exactly once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import attrs

from ._errors import NotFoundError, TaskFailedError, TaskTimeoutError
from ._models import Task, TaskBatch
from ._observe import current_span, status_event
from ._settings import number_field

if TYPE_CHECKING:
    from opentelemetry.trace import Span

#: Polls in a row that a task may be missing from the server's answer before the wait
#: gives up on it with `NotFoundError`.
MISSING_POLLS_LIMIT = 3


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How tasks are polled while they run. Immutable; pass one to `AsyncApiframe(poll=...)`.

    The n-th wait is `min(max_interval, initial_interval * multiplier**n)`, then spread by
    up to `jitter` (a fraction) either way, so a thousand waits do not poll in lockstep.

    Attributes:
        initial_interval: Seconds before the first poll.
        max_interval: Cap on the seconds between polls.
        multiplier: Growth of the interval from one poll to the next.
        jitter: Random spread of each interval, as a fraction of it.
        deadline: Seconds a wait may take in all before `TaskTimeoutError`.
    """

    initial_interval: float = attrs.field(default=1.0, validator=number_field(0, strictly=True))
    max_interval: float = attrs.field(default=10.0, validator=number_field(0, strictly=True))
    multiplier: float = attrs.field(default=1.5, validator=number_field(1))
    jitter: float = attrs.field(default=0.1, validator=number_field(0, below=1))
    deadline: float = attrs.field(default=900.0, validator=number_field(0, strictly=True))

    def base_interval(self, poll_number: int) -> float:
        """Seconds before poll number `poll_number` (0-based), before jitter."""
        return min(self.max_interval, self.initial_interval * self.multiplier**poll_number)

    def interval(self, poll_number: int) -> float:
        """Seconds to wait before poll number `poll_number` (0-based), with jitter."""
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 -- not crypto
        return self.base_interval(poll_number) * spread


def checked(task: Task) -> Task:
    """`task` itself, or `TaskFailedError` with its reason if it failed."""
    if task.is_failed:
        raise TaskFailedError(task.task_id, task.failure_reason)
    return task


@attrs.define(eq=False)
class _Waiter:
    task_id: str
    due: float
    on_progress: Callable[[Task], object] | None
    polls: int = 0
    missing: int = 0
    latest: Task | None = None
    updated: anyio.Event = attrs.Factory(anyio.Event)
    #: The waiting call's span when tracing, which each new status is told to.
    span: Span | None = None


class Poller:
    """The polling loop every wait of one client shares. Owns no task: waiters take turns."""

    def __init__(
        self,
        fetch_batch: Callable[[list[str]], Awaitable[TaskBatch]],
        policy: PollPolicy,
        *,
        fetch_url: str,
    ) -> None:
        """Poll through `fetch_batch` (the client's `fetch_many`, at `fetch_url`)."""
        self._fetch_batch = fetch_batch
        self._fetch_url = fetch_url
        self.policy = policy
        self._waiters: dict[str, list[_Waiter]] = {}
        self._turn = anyio.Lock()

    async def wait(
        self,
        task_id: str,
        *,
        deadline: float | None = None,
        on_progress: Callable[[Task], object] | None = None,
    ) -> Task:
        """Wait until `task_id` ends; return it finished, or raise.

        Raises:
            TaskFailedError: The task failed; carries the server's reason.
            TaskTimeoutError: The deadline passed; the task goes on.
            NotFoundError: The server did not know the task, several polls in a row.
        """
        limit = self.policy.deadline if deadline is None else deadline
        due = time.monotonic() + self.policy.interval(0)
        waiter = _Waiter(task_id, due, on_progress, span=current_span())
        self._waiters.setdefault(task_id, []).append(waiter)
        try:
            with anyio.move_on_after(limit):
                while True:
                    task = await self._next_update(waiter)
                    if waiter.on_progress is not None:
                        waiter.on_progress(task)
                    if task.is_terminal:
                        return checked(task)
        finally:
            self._forget(waiter)
        last = waiter.latest.status if waiter.latest is not None else None
        raise TaskTimeoutError(task_id, limit, str(last) if last is not None else None)

    def deliver(self, task: Task) -> None:
        """Hand a fresh result (from a poll or a webhook) to everyone waiting for it."""
        for waiter in self._waiters.get(task.task_id, ()):
            status_event(waiter.span, str(task.status))
            waiter.latest = task
            waiter.missing = 0
            waiter.updated.set()

    async def _next_update(self, waiter: _Waiter) -> Task:
        while not waiter.updated.is_set():
            with anyio.move_on_after(waiter.due - time.monotonic()):
                await waiter.updated.wait()
            if waiter.updated.is_set():
                break
            async with self._turn:
                # Another waiter's poll may have brought ours while we queued for the turn.
                if not waiter.updated.is_set():
                    await self._poll_due()
            if waiter.missing >= MISSING_POLLS_LIMIT:
                raise NotFoundError(
                    f"task {waiter.task_id} is unknown to the server",
                    status_code=404,
                    method="POST",
                    url=self._fetch_url,
                    body="",
                    task_id=waiter.task_id,
                )
        waiter.updated = anyio.Event()
        assert waiter.latest is not None  # noqa: S101 -- set before the event
        return waiter.latest

    async def _poll_due(self) -> None:
        now = time.monotonic()
        due = [w for w in self._all_waiters() if w.due <= now + self._slack(w)]
        batch = await self._fetch_batch(list(dict.fromkeys(w.task_id for w in due)))
        now = time.monotonic()
        missing = set(batch.missing)
        for waiter in due:
            waiter.polls += 1
            waiter.due = now + self.policy.interval(waiter.polls)
            if waiter.task_id in missing:
                waiter.missing += 1
        for task in batch.tasks.values():
            self.deliver(task)

    def _slack(self, waiter: _Waiter) -> float:
        # Waiters due within a quarter of their interval join this poll: batches stay full
        # while jitter spreads the waits, and no one is polled much earlier than asked.
        return 0.25 * self.policy.base_interval(waiter.polls)

    def _all_waiters(self) -> Iterable[_Waiter]:
        for waiters in self._waiters.values():
            yield from waiters

    def _forget(self, waiter: _Waiter) -> None:
        waiters = self._waiters.get(waiter.task_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(waiter.task_id, None)
