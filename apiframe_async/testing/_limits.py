"""Limit servers: an account's rate and concurrency limits, answering 429 past them.

A real generation API refuses work past what the account is allowed: a number of
generations per second (a token bucket) or a number running at once. The limits here do
the same in front of the fake's service, before any work: a refused request creates
nothing and charges nothing, so tests can assert that a job under a limit still generated
every prompt exactly once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Literal

import attrs

from apiframe_async.testing._faults import Decision, Fault

#: What a limit sends as `Retry-After`: `"ceil"` the true wait rounded up to whole
#: seconds (the common HTTP form, at least 1), `"exact"` the true wait to the millisecond,
#: a fixed number of seconds, or None for no header.
RetryAfter = float | Literal["ceil", "exact"] | None

_GENERATE_ONLY = frozenset({"/ai-photo-generate"})


def _paths(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _retry_after(wait: float, choice: RetryAfter) -> float | str | None:
    if choice == "ceil":
        return max(1, math.ceil(wait))
    if choice == "exact":
        return f"{max(wait, 0.001):.3f}"
    return choice


@attrs.define
class TokenBucket:
    """A rate limit: `rate` requests per second on average, `burst` at once.

    The bucket holds up to `burst` tokens and gains `rate` tokens per second. Each request
    to one of `paths` takes a token; with none left it is answered 429 before the work,
    with a `Retry-After` saying when the next token comes (rounded as `retry_after`
    says: real servers mostly send whole seconds, which is much longer than the true wait).

    Args:
        rate: tokens gained per second (requests allowed per second, on average).
        burst: the most tokens held (requests allowed at once after a quiet spell).
        retry_after: `"ceil"` (default), `"exact"`, a fixed number of seconds or None.
        paths: the routes limited (default: generation only).
        clock: the clock, in seconds (inject one to control time in tests).

    Example:
        ```python
        from apiframe_async.testing import FakeApiframe, TokenBucket

        fake = FakeApiframe(limits=TokenBucket(rate=100, burst=10))
        ```
    """

    rate: float = attrs.field(validator=attrs.validators.gt(0))
    burst: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    retry_after: RetryAfter = "ceil"
    paths: frozenset[str] = attrs.field(default=_GENERATE_ONLY, converter=_paths)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    _tokens: float = attrs.field(init=False, repr=False)
    _stamp: float = attrs.field(init=False, repr=False)
    _lock: threading.Lock = attrs.field(init=False, repr=False, factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        """Start full."""
        self._tokens, self._stamp = float(self.burst), self.clock()

    def admit(self) -> Decision | None:
        """Take a token (None: go on), or the 429 to answer."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return None
            wait = (1 - self._tokens) / self.rate
        return Decision(Fault.TOO_MANY_REQUESTS, 0.0, _retry_after(wait, self.retry_after))

    def release(self) -> None:
        """Nothing to give back: a token is spent once taken."""


@attrs.define
class ConcurrencyLimit:
    """A limit on requests running at once: past `limit`, 429 before the work.

    A request holds its place from its arrival until its reply is sent (or its connection
    ends), whatever the reply. Pair it with a delay (`Faults(slow_rate=1.0,
    slow_seconds=...)`) so that generations take time, as real ones do.

    Args:
        limit: the most requests to `paths` running at once.
        retry_after: the `Retry-After` of a refusal: seconds, or None for no header (the
            server cannot know when a place frees up; 1 is what most send).
        paths: the routes limited (default: generation only).

    Example:
        ```python
        from apiframe_async.testing import ConcurrencyLimit, FakeApiframe, Faults

        fake = FakeApiframe(
            limits=ConcurrencyLimit(4),
            faults=Faults(slow_rate=1.0, slow_seconds=0.05),
        )
        ```
    """

    limit: int = attrs.field(validator=attrs.validators.ge(1))
    retry_after: float | None = 1
    paths: frozenset[str] = attrs.field(default=_GENERATE_ONLY, converter=_paths)
    _running: int = attrs.field(init=False, default=0, repr=False)
    _lock: threading.Lock = attrs.field(init=False, repr=False, factory=threading.Lock)

    @property
    def running(self) -> int:
        """Requests holding a place now."""
        return self._running

    def admit(self) -> Decision | None:
        """Take a place (None: go on), or the 429 to answer."""
        with self._lock:
            if self._running < self.limit:
                self._running += 1
                return None
        return Decision(Fault.TOO_MANY_REQUESTS, 0.0, self.retry_after)

    def release(self) -> None:
        """Give the place back."""
        with self._lock:
            self._running -= 1


Limit = TokenBucket | ConcurrencyLimit


@attrs.frozen
class Limits:
    """The limits in front of the service, checked in order at each request's arrival."""

    limits: tuple[Limit, ...] = ()

    def enter(self, route: str) -> tuple[Decision | None, list[Limit]]:
        """The refusal if a limit says no, and the limits held (to `leave` at the end)."""
        held: list[Limit] = []
        for limit in self.limits:
            if route not in limit.paths:
                continue
            refusal = limit.admit()
            if refusal is not None:
                self.leave(held)
                return refusal, []
            held.append(limit)
        return None, held

    @staticmethod
    def leave(held: Iterable[Limit]) -> None:
        """Give back what `enter` took."""
        for limit in held:
            limit.release()
