"""When a failed request is tried again, and how long to wait first.

Retries run on tenacity (`AsyncRetrying`, with anyio's sleep so they work on trio too). We
chose it over stamina because the rules here need two things stamina does not give: full
jitter (tenacity's `wait_random_exponential`), and a wait that the server's `Retry-After`
replaces, per attempt.

The rules, money first:

- A paid request (generate, upload, train) is retried only when it provably never reached
  the server: the connection could not be made, or the answer was 429 or 503. Never after
  a read timeout or a connection dropped mid-request: the work may have been done and
  charged, so the caller gets an error that says so.
- A free request (fetch, fetch-many, account) is also retried after timeouts, dropped
  connections, 408 and any 5xx.
- A `Retry-After` longer than `RetryPolicy.max_retry_after` is not waited out: the
  `RateLimitError` is raised, carrying `retry_after`, for the caller to decide.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import attrs
import tenacity

from ._charges import never_left, turned_away
from ._errors import APIConnectionError, ApiframeError, APIStatusError
from ._observe import retry_event
from ._settings import number_field

T = TypeVar("T")

logger = logging.getLogger("apiframe_async")

_RETRYABLE_STATUS_FREE = frozenset({408, 429})
_SERVER_ERRORS = 500


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How requests are retried. Immutable; pass one to `AsyncApiframe(retry=...)`.

    Attributes:
        max_retries: Retries after the first attempt (0 disables retrying, a bulk job's
            re-runs of requests turned away by 429 or 503 included).
        initial_backoff: Upper bound, in seconds, of the first random wait.
        max_backoff: Cap on any wait computed by backoff (not on `Retry-After`).
        max_retry_after: The longest `Retry-After` waited out; above it, the
            `RateLimitError` is raised with `retry_after` set.
    """

    max_retries: int = attrs.field(default=3, validator=number_field(0, integer=True))
    initial_backoff: float = attrs.field(default=0.5, validator=number_field(0, strictly=True))
    max_backoff: float = attrs.field(default=30.0, validator=number_field(0, strictly=True))
    max_retry_after: float = attrs.field(default=60.0, validator=number_field(0))
    _full_jitter: tenacity.wait.wait_base = attrs.field(init=False, repr=False, eq=False)

    @_full_jitter.default
    def _make_full_jitter(self) -> tenacity.wait.wait_base:
        return tenacity.wait_random_exponential(
            multiplier=self.initial_backoff, max=self.max_backoff
        )

    def should_retry(self, exc: BaseException, *, paid: bool) -> bool:
        """Whether `exc` from a request (paid or free) may be retried under these rules."""
        if isinstance(exc, APIStatusError) and (exc.retry_after or 0) > self.max_retry_after:
            return False
        if paid:
            # Only what provably cost nothing; the journal and bulk jobs ask the same rules.
            return turned_away(exc) or never_left(exc)
        if isinstance(exc, APIConnectionError):
            return True
        if isinstance(exc, APIStatusError):
            return exc.status_code in _RETRYABLE_STATUS_FREE or exc.status_code >= _SERVER_ERRORS
        return False

    def wait(self, state: tenacity.RetryCallState) -> float:
        """Seconds to wait before the next attempt: `Retry-After` if sent, else full jitter."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, APIStatusError) and exc.retry_after is not None:
            return exc.retry_after
        return self._full_jitter(state)


def _retryable(
    exc: BaseException, policy: RetryPolicy, *, paid: bool, retry_pushback: bool
) -> bool:
    return policy.should_retry(exc, paid=paid) and (retry_pushback or not turned_away(exc))


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info("retrying in %.2f s (attempt %d failed: %s)", wait, state.attempt_number, exc)
    retry_event(state.attempt_number, wait, exc)


def pushback_wait(policy: RetryPolicy, exc: APIStatusError, attempt: int) -> float | None:
    """Seconds before pushback `exc` is tried again (attempt 0 is the first retry).

    The server's `Retry-After` when it sent one, else full jitter; None when the
    `Retry-After` is longer than the policy waits out, or the policy retries nothing.
    """
    if policy.max_retries == 0:
        return None
    if exc.retry_after is not None:
        return None if exc.retry_after > policy.max_retry_after else exc.retry_after
    cap = min(policy.max_backoff, policy.initial_backoff * 2**attempt)
    return random.uniform(0, cap)  # noqa: S311 - jitter, not crypto


async def call_with_retries(
    policy: RetryPolicy,
    call: Callable[[int], Awaitable[T]],
    *,
    paid: bool,
    retry_pushback: bool = True,
) -> T:
    """Run `call(attempt)`, attempt 1, 2..., until it succeeds or fails in a way not retried.

    With `retry_pushback=False`, a 429 or 503 is raised at once, for the caller to re-run.
    """
    # The first attempt runs bare: setting up tenacity costs about as much as the rest of
    # our request handling, and most requests succeed at once. A failure worth retrying is
    # handed to tenacity as its first attempt, so counting and waiting stay its business.
    try:
        return await call(1)
    except ApiframeError as exc:
        if policy.max_retries == 0 or not _retryable(
            exc, policy, paid=paid, retry_pushback=retry_pushback
        ):
            raise
        first_failure: ApiframeError | None = exc
    attempts = 1

    def retryable(exc: BaseException) -> bool:
        return _retryable(exc, policy, paid=paid, retry_pushback=retry_pushback)

    async def attempt() -> T:
        nonlocal first_failure, attempts
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure
        attempts += 1
        return await call(attempts)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.max_retries + 1),
        wait=policy.wait,
        retry=tenacity.retry_if_exception(retryable),
        sleep=anyio.sleep,
        before_sleep=_log_retry,
        reraise=True,
    )
    return await retrying(attempt)
