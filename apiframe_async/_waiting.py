"""Waiting for tasks: one shared poller per client, and the policy that paces it.

Every `wait()` of a client registers with its `Poller`. Whichever waiter is due first
polls for every waiter due by then, in `/fetch-many` batches of 20, and hands each its
result; the others wake with theirs, so a thousand waits cost a thousand/20 requests a
tick, not a thousand. A webhook delivered to the poller wakes its waiter at once: a wait
ends with whichever comes first, the webhook or the poll, and ends exactly once.

A poll costs nothing, so a pushed-back or failing poll (429, 503, any 5xx, a timeout, a
dropped connection) is only waited out, later and later, until the wait's deadline; a
wait then ends with `TaskPollError`, which carries the task id. It never sends the
task's own request again: the task is accepted and goes on at the server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import attrs

from ._errors import (
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    NotFoundError,
    TaskFailedError,
    TaskPollError,
    TaskTimeoutError,
)
from ._models import Task, TaskBatch
from ._observe import current_span, status_event
from ._settings import number_field

if TYPE_CHECKING:
    from opentelemetry.trace import Span

#: Polls in a row that a task may be missing from the server's answer before the wait
#: gives up on it with `NotFoundError`.
MISSING_POLLS_LIMIT = 3

# Poll answers that tell nothing of the task, only of the server's load or health.
_PASSING_STATUSES = frozenset({408, 429})
_SERVER_ERRORS = 500


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


def passing(error: ApiframeError) -> bool:
    """Whether a poll's failure is worth waiting out: pushback, a 5xx, a lost connection."""
    if isinstance(error, APIConnectionError):
        return True
    return isinstance(error, APIStatusError) and (
        error.status_code in _PASSING_STATUSES or error.status_code >= _SERVER_ERRORS
    )


@attrs.define(eq=False)
class _Waiter:
    task_id: str
    due: float
    on_progress: Callable[[Task], object] | None
    polls: int = 0
    missing: int = 0
    latest: Task | None = None
    #: The failure of the latest poll, if it failed; `fatal` if it is not worth waiting out.
    error: ApiframeError | None = None
    fatal: bool = False
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
            TaskPollError: Polls failed until the deadline, or were refused (a 401, say);
                the task goes on.
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
        if waiter.error is not None:
            raise TaskPollError(task_id, waiter.error) from waiter.error
        last = waiter.latest.status if waiter.latest is not None else None
        raise TaskTimeoutError(task_id, limit, str(last) if last is not None else None)

    def deliver(self, task: Task) -> None:
        """Hand a fresh result (from a poll or a webhook) to everyone waiting for it."""
        for waiter in self._waiters.get(task.task_id, ()):
            status_event(waiter.span, str(task.status))
            waiter.latest = task
            waiter.missing = 0
            waiter.error = None
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
        if waiter.fatal and waiter.error is not None:
            raise TaskPollError(waiter.task_id, waiter.error) from waiter.error
        waiter.updated = anyio.Event()
        assert waiter.latest is not None  # noqa: S101 -- set before the event
        return waiter.latest

    async def _poll_due(self) -> None:
        now = time.monotonic()
        due = [w for w in self._all_waiters() if w.due <= now + self._slack(w)]
        try:
            batch = await self._fetch_batch(list(dict.fromkeys(w.task_id for w in due)))
        except ApiframeError as exc:
            self._failed(due, exc)
            return
        now = time.monotonic()
        missing = set(batch.missing)
        for waiter in due:
            waiter.polls += 1
            waiter.due = now + self.policy.interval(waiter.polls)
            if waiter.task_id in missing:
                waiter.missing += 1
        for task in batch.tasks.values():
            self.deliver(task)

    def _failed(self, due: list[_Waiter], error: ApiframeError) -> None:
        # Every waiter of the batch learns of it: each ends its wait (a refusal) or polls
        # again later (pushback, an outage), no sooner than the server asked.
        fatal = not passing(error)
        pause = (error.retry_after or 0.0) if isinstance(error, APIStatusError) else 0.0
        now = time.monotonic()
        for waiter in due:
            waiter.polls += 1
            waiter.due = now + max(self.policy.interval(waiter.polls), pause)
            waiter.error, waiter.fatal = error, fatal
            if fatal:
                waiter.updated.set()

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
