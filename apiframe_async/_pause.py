"""When the server's pushback holds back the whole client, and for how long.

A 429 or 503 with `Retry-After` holds back the request that got it: it waits that long
before it is tried again (the retry rules, or a bulk job's re-run). Every other request of
the client is held back only when the pushback is broad: a whole flight's worth of
answers in a row were pushbacks (every request in flight when the run of pushbacks began
came back turned away, and none got through meanwhile). Then the server is refusing the
client as a whole, and sending more would only collect more 429s.

Narrow pushback is left to the request itself: scattered 429s that no backing off can
avoid, a token bucket whose `Retry-After` is rounded up to whole seconds (its true wait
is often a few milliseconds: pausing everyone for a second would throw away the rate),
or a concurrency limit (the adaptive limit of a bulk job learns it).
"""

from __future__ import annotations

import math
import time

import anyio


class Pause:
    """The client-wide pause: begun by broad pushback, honoured before every send."""

    def __init__(self, *, max_wait: float) -> None:
        """A pause never lasts longer than `max_wait` (the retry policy's `max_retry_after`)."""
        self._max_wait = max_wait
        self._resume_at = 0.0
        self._tickets = 0
        self._run = 0
        self._flight = 0
        self._horizon = 0

    @property
    def resume_at(self) -> float:
        """When the current pause ends, on `time.monotonic()` (in the past: no pause)."""
        return self._resume_at

    async def wait(self) -> int:
        """Wait until any pause is over; the request's ticket, to hand to `pushed_back`."""
        # A loop, not an Event: a pause may be extended while we sleep, and its end is a
        # time, which nothing would be there to signal.
        while (delay := self._resume_at - time.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(delay)
        self._tickets += 1
        return self._tickets

    def answered(self) -> None:
        """A reply that was not pushback: the server takes requests again."""
        self._run = 0

    def pushed_back(self, retry_after: float | None, *, ticket: int, in_flight: int) -> None:
        """A 429 or 503 came back to request `ticket`, with `in_flight` requests (it too)."""
        if self._run == 0:
            # A run of pushbacks begins: it is broad once every request in flight now has
            # come back turned away. Requests sent later do not count: taking a freed slot
            # at once, they may all be refused while the first ones are still at work.
            self._flight, self._horizon = in_flight, self._tickets
        if ticket > self._horizon:
            return
        self._run += 1
        broad = self._run >= self._flight
        if broad and retry_after and math.isfinite(retry_after) and retry_after <= self._max_wait:
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after)
            self._run = 0
