"""Deadlines for waits on trio sockets, kept by one system task per trio run.

A trio wait is timed out by a cancel scope, and a cancel scope entered and left around
each wait for a socket cost a request on trio as much as the wait itself (about 8% of its
CPU). Instead a connection that waits tells the `Deadlines` of its run when the wait must
end, and says again when it has ended. One system task sleeps until the earliest deadline
it knows of and tells an expired waiter, which marks itself and wakes its wait with
`trio.lowlevel.notify_closing`: the wait raises `trio.ClosedResourceError`, and the
connection reports a timeout and is closed (a timed-out connection is never reused).

All waits of a client share one timeout, so each new deadline is later than those before:
the task's sleep moves only when a shorter one comes, and it wakes about once per timeout
whatever the traffic. Only for trio; imported when trio is running.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

__all__ = ["Deadlines", "Expirable"]

_INF = float("inf")


class Expirable(Protocol):
    """What `Deadlines` needs of a connection."""

    def expire(self) -> None:
        """The wait in progress ran out of time: end it."""


class Deadlines:
    """When each waiting connection's wait ends; one per trio run (see `for_this_run`)."""

    def __init__(self) -> None:
        """Nothing waits yet; the task starts with the first deadline."""
        self._waiting: dict[Expirable, float] = {}
        self._wake_at = _INF
        self._sleep: trio.CancelScope | None = None
        self._running = False

    @staticmethod
    def for_this_run() -> Deadlines:
        """The `Deadlines` of the running trio run, made on first use."""
        try:
            return _RUN.get()
        except LookupError:
            deadlines = Deadlines()
            _RUN.set(deadlines)
            return deadlines

    def arm(self, connection: Expirable, timeout: float) -> None:
        """`connection` waits from now for at most `timeout` seconds."""
        if not math.isfinite(timeout):
            return  # no deadline (and NaN must never reach the task's cancel scope)
        deadline = trio.current_time() + timeout
        if not self._running:
            trio.lowlevel.spawn_system_task(self._run, name="apiframe-async deadlines")
            self._running = True
        self._waiting[connection] = deadline
        if deadline < self._wake_at:
            self._wake_at = deadline
            if self._sleep is not None:
                self._sleep.deadline = deadline

    def disarm(self, connection: Expirable) -> None:
        """`connection`'s wait ended (in time or not)."""
        self._waiting.pop(connection, None)

    async def _run(self) -> None:
        # Ends when the run's system tasks are cancelled, as the main task returns.
        while True:
            with trio.CancelScope(deadline=self._wake_at) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            for connection, deadline in list(self._waiting.items()):
                if deadline <= now:
                    del self._waiting[connection]
                    connection.expire()
            self._wake_at = min(self._waiting.values(), default=_INF)


_RUN: trio.lowlevel.RunVar[Deadlines] = trio.lowlevel.RunVar("apiframe_async_deadlines")
