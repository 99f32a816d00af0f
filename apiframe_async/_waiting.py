"""Waiting for a task: polling `/fetch` with backoff and jitter until it ends or time runs out."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import attrs

from ._errors import TaskFailedError, TaskTimeoutError
from ._models import Task


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How a task is polled while it runs. Immutable; pass one to `AsyncApiframe(poll=...)`.

    The n-th wait is `min(max_interval, initial_interval * multiplier**n)`, then spread by
    up to `jitter` (a fraction) either way, so a thousand waits do not poll in lockstep.

    Attributes:
        initial_interval: Seconds before the first poll.
        max_interval: Cap on the seconds between polls.
        multiplier: Growth of the interval from one poll to the next.
        jitter: Random spread of each interval, as a fraction of it.
        deadline: Seconds a wait may take in all before `TaskTimeoutError`.
    """

    initial_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    max_interval: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    multiplier: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )
    deadline: float = attrs.field(default=900.0, validator=attrs.validators.gt(0))

    def interval(self, poll_number: int) -> float:
        """Seconds to wait before poll number `poll_number` (0-based)."""
        base = min(self.max_interval, self.initial_interval * self.multiplier**poll_number)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 -- not crypto


def checked(task: Task) -> Task:
    """`task` itself, or `TaskFailedError` with its reason if it failed."""
    if task.is_failed:
        raise TaskFailedError(task.task_id, task.failure_reason)
    return task


async def poll_until_terminal(
    task_id: str,
    fetch: Callable[[str], Awaitable[Task]],
    policy: PollPolicy,
    *,
    deadline: float | None = None,
    on_progress: Callable[[Task], object] | None = None,
) -> Task:
    """Poll `fetch(task_id)` until the task ends; return it finished or raise.

    Raises:
        TaskFailedError: The task failed; carries the server's reason.
        TaskTimeoutError: `deadline` (default `policy.deadline`) passed first.
    """
    limit = policy.deadline if deadline is None else deadline
    last: Task | None = None
    with anyio.move_on_after(limit):
        poll = 0
        while True:
            await anyio.sleep(policy.interval(poll))
            poll += 1
            last = await fetch(task_id)
            if on_progress is not None:
                on_progress(last)
            if last.is_terminal:
                return checked(last)
    status = str(last.status) if last is not None and last.status is not None else None
    raise TaskTimeoutError(task_id, limit, status)
