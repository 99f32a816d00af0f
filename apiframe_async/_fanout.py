"""Bounded, lazy, streaming fan-out of generations: `generate_many()` and its parts.

How the bounds hold:

- A fixed set of `concurrency` worker tasks pulls requests from the input one at a time,
  so no task exists per input item and the input is read lazily.
- A window semaphore is taken before an item is pulled and given back only when its
  outcome has been handed to the caller. Items pulled, in flight and waiting to be read
  therefore never exceed the window, whatever the input's size and however slowly the
  caller reads: memory is O(concurrency), ordered or not.
- Under pressure (429, 503) an adaptive limit lowers the requests in flight by one per
  window (an eighth when the server turned most of it away), straight to what the server
  took when it refused a request sent with more in flight, and grows back by one per
  window of successes, never above `concurrency`.
- A request turned away (429, 503: nothing was done, nothing charged) is sent again
  after its `Retry-After`, and up to a quarter of a request's time more, so that
  requests told the same wait do not all come back at once. It keeps its place only a
  quarter of the time a request takes, so that a free place does not turn into a storm
  of 429s; then it waits out the rest without one, while spare workers keep the places
  busy. While it waits it also lends its window place to a fresh pull (up to
  `_LENT_PER_PLACE` per place of concurrency): a server that answers a burst of 429s
  with `Retry-After: 1` when it takes the next request 10 ms later would otherwise leave
  the window full of waiting requests and nothing to send for that second.
- After a 401, 402 or 403 (see `_charges.dooms_the_job`) no new request is started: the
  items left end with `NotSentError`, so a doomed job pays for at most what was in flight.
- A cancel, or a deadline that passed while the caller handled an outcome, frees no
  place: the places of outcomes read go back only after a trip through the scheduler
  that lets such a cancel land (`BulkJob._checkpoint`; `_after_due_timers` for asyncio's).
  The trip is two passes of the loop on asyncio, a fifth of a request's CPU when the
  reader is the only task ready, so it is taken once every concurrency / 4 reads; a
  cancel that the reader cannot see in its own scopes may hand over a few more outcomes
  first, all already paid for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.lowlevel
import attrs
import sniffio
from anyio.abc import TaskGroup

from ._budget import credits_charged
from ._charges import dooms_the_job, turned_away
from ._errors import ApiframeError, APIStatusError, NotSentError, RequestValidationError
from ._models import GenerateRequest
from ._pricing import generation_cost

logger = logging.getLogger("apiframe_async")

T = TypeVar("T")

RequestLike = GenerateRequest | Mapping[str, Any]
"""A `GenerateRequest`, or a mapping of its fields (as read from JSON lines)."""

_FIELDS = tuple(f.name for f in attrs.fields(GenerateRequest))


@attrs.frozen(kw_only=True)
class Outcome(Generic[T]):
    """What became of one request of a bulk job: its result or its error, never both.

    Attributes:
        index: The request's position in the input, from 0.
        request: The request as it was given (a mapping, if that is what came).
        result: The result, when the request succeeded.
        error: The typed error, when it failed.
        replayed: True when the result comes from a journal: a previous run of the job
            got it, and nothing was sent this time.
        credits: The credits this request spent, or may have spent, in this run: its
            price when it gave a result or may have been charged, 0 when it provably was
            not (or was replayed).
    """

    index: int
    request: RequestLike
    result: T | None = None
    error: ApiframeError | None = None
    replayed: bool = False
    credits: int = 0

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self.error is None

    def unwrap(self) -> T:
        """The result, or the error raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None  # noqa: S101 -- one of the two is always set
        return self.result


@attrs.define
class Progress:
    """Live counters of a bulk job, for a progress bar. Read it while the job runs.

    Attributes:
        submitted: Requests pulled from the input and started.
        succeeded: Requests that ended with a result.
        failed: Requests that ended with an error.
        in_flight: Requests started and not yet ended.
        concurrency: The adaptive limit's current value.
        stopped_by: The error (a 401, 402 or 403) after which the job stopped sending
            paid requests, if one came; the items left end with `NotSentError`.
        credits: Credits spent, or possibly spent, by the requests that ended (see
            `Outcome.credits`).
    """

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    concurrency: int = 0
    stopped_by: ApiframeError | None = None
    credits: int = 0

    @property
    def done(self) -> int:
        """Requests that ended, either way."""
        return self.succeeded + self.failed


@attrs.frozen
class Replay(Generic[T]):
    """What a job's work gives for an item already done by an earlier run: its result."""

    result: T


Work = Callable[[GenerateRequest, Any], Awaitable["T | Replay[T]"]]
"""A job's work: (request, its claim) to a result, or a `Replay` of an earlier one."""


@attrs.frozen
class _Skipped:
    """Stands in the outcome stream for an item not to be yielded, to keep the order."""

    index: int


def _no_claim(_index: int, _request: GenerateRequest) -> None:
    return None


async def _nothing_to_record(_request: GenerateRequest, _claim: Any, _error: NotSentError) -> None:  # noqa: ANN401
    return None


#: The most clean windows the adaptive limit waits before trying a level refused again.
_LONGEST_HOLD = 64
#: Refusals at the marked level, after the one that marked it, before the wait doubles.
_REFUSALS_BEFORE_HOLD = 2
#: Window places lent by requests waiting out a `Retry-After`, per place of concurrency.
_LENT_PER_PLACE = 6


def _retry_after(error: APIStatusError, _attempt: int) -> float | None:
    return error.retry_after or 0.0


class AdaptiveLimit:
    """An AIMD bound on requests in flight, learned from the server's pushback.

    A 429 or 503 lowers the limit at most once per window (as many ended requests as the
    limit allows in flight: those already in flight when the server pushed back tell
    nothing new): to one less, or to one less than the requests in flight when the
    turned-away request was sent, whichever is lower, but never by more than an eighth
    at once. A server that runs K at once turns away only requests sent with more than K
    in flight, so the limit lands on K within a few windows; a rate limit or scattered
    429s cost one per window (a 429 to a request sent with fewer in flight than one that
    went through since the last cut is not a ceiling: scattered 429s hit requests sent
    with any number in flight). A window the server mostly turned away costs an eighth:
    a token bucket emptied by the first burst refuses requests sent with every place
    full, which tells nothing of its rate, and one off a window would take some forty
    windows of 429s to come down from 64. Each window of successes adds one, up to the
    ceiling, so pushback that no backing off avoids is won back as fast as it costs.

    A level the server keeps refusing is tried ever less often. The first refusal marks
    its level; from the third refusal at or just above the mark (an eighth, two levels
    at least), each doubles the clean windows the limit spends just under it before
    trying it again (up to 64): every try at a true ceiling costs a 429 and its
    `Retry-After`, and near a job's end nothing else is left to send while the refused
    request waits. Pushback below the mark is not that ceiling (scattered 429s, or a
    limit that came down), nor is pushback well above it (the server took more for a
    while): the mark moves there and the wait starts over at one window. As many clean windows at or
    above the mark since it was last refused as the wait under it (two at least) show
    that the server takes more now, and the mark is dropped: fewer would let a token
    bucket's burst, which takes a level or two more for a second or two, wipe out a long
    wait. Disabled, it is a plain fixed limit of `ceiling`.
    """

    def __init__(self, ceiling: int, *, adaptive: bool) -> None:
        """Start at `ceiling`, the caller's concurrency, which it never exceeds."""
        # A semaphore that takes a free slot without a checkpoint is the cheapest bound
        # anyio has; lowering the limit withholds slots as they come back (the debt).
        self._slots = anyio.Semaphore(ceiling, fast_acquire=True)
        self._current = ceiling
        self._debt = 0
        self._ceiling = ceiling
        self._floor = 1
        self._adaptive = adaptive
        self._successes = self._refusals = 0
        # The most requests in flight that one sent with went through, since the last cut.
        self._taken_with = 0
        self._since_decrease = ceiling
        self._in_use = 0
        self._typical = 0.0
        # The level the server keeps refusing (0: none), the clean windows spent under it
        # before it is tried again, and its refusals since it was marked.
        self._refused_level, self._hold_windows, self._refusals_at_mark = 0, 1, 0
        self._windows_at_mark = 0

    @property
    def current(self) -> int:
        """The limit now in force."""
        return self._current

    @property
    def typical_seconds(self) -> float:
        """How long a successful request takes, smoothed (0.0 before the first)."""
        return self._typical

    async def __aenter__(self) -> int:
        """Wait for room under the current limit; the places in use, this one included."""
        await self._slots.acquire()
        self._in_use += 1
        return self._in_use

    async def __aexit__(self, *exc_info: object) -> None:
        """Give the room back, unless the limit went down meanwhile."""
        self._in_use -= 1
        if self._debt:
            self._debt -= 1
        else:
            self._slots.release()

    def _set(self, limit: int) -> None:
        change, self._current = limit - self._current, limit
        if change < 0:
            self._debt -= change
        for _ in range(change):
            if self._debt:
                self._debt -= 1
            else:
                self._slots.release()

    def took(self, seconds: float) -> None:
        """Learn how long a successful request took."""
        self._typical = seconds if not self._typical else 0.9 * self._typical + 0.1 * seconds

    def record(self, *, ok: bool, overloaded: bool, sent_with: int | None = None) -> None:
        """Adapt to one request's end; `sent_with` is what `async with` gave it."""
        if not self._adaptive:
            return
        self._since_decrease += 1
        if overloaded:
            self._refusals += 1
            if self._since_decrease < self.current:
                return
            # A window mostly turned away: far over what the server takes, an eighth off.
            most = 2 * self._refusals > self._since_decrease
            target = self.current * 7 // 8 if most else self.current - 1
            # Places are taken a moment after they come free, so a request is often sent
            # with one or two fewer than the limit in flight: only a clear gap is news,
            # and none when a request sent with as many in flight went through since the
            # limit last came down (scattered 429s, not a ceiling).
            if (
                sent_with is not None
                and self._taken_with < sent_with < self.current - self.current // 8
            ):
                # An eighth off at most: requests reach the server in another order than
                # they took their places, so one sent with few in flight may be refused
                # by a server that takes many more.
                target = max(sent_with - 1, self.current * 7 // 8)
            target = max(self._floor, target)
            if target < self.current:
                self._mark_refused(self.current)
                self._since_decrease = self._successes = self._refusals = 0
                self._taken_with = 0
                self._set(target)
                logger.info("server pushed back: concurrency lowered to %d", self.current)
        elif ok:
            if sent_with is not None and sent_with > self._taken_with:
                self._taken_with = sent_with
            if self.current < self._ceiling:
                self._grow()

    def _grow(self) -> None:
        """One more success under a limit below the ceiling: a window of them adds one."""
        self._successes += 1
        below_mark = self.current + 1 == self._refused_level
        if self._successes >= self.current * (self._hold_windows if below_mark else 1):
            self._successes = 0
            if self._refused_level and self.current >= self._refused_level:
                self._windows_at_mark += 1
                if self._windows_at_mark >= max(2, self._hold_windows):
                    self._mark(0)
            self._set(self.current + 1)
            logger.info("no pushback for a window: concurrency raised to %d", self.current)

    def _mark_refused(self, level: int) -> None:
        mark = self._refused_level
        if mark and mark <= level <= mark + max(2, mark // 8):
            # Twice more before the wait grows: requests sent in bursts are refused at
            # any level, a few times at each, and holding back after each would ratchet
            # the limit down; a true ceiling is refused every time it is tried.
            self._refusals_at_mark += 1
            self._windows_at_mark = 0  # refused again: the clean windows so far were luck
            if self._refusals_at_mark >= _REFUSALS_BEFORE_HOLD:
                self._hold_windows = min(2 * self._hold_windows, _LONGEST_HOLD)
        else:
            # Below the mark, or well above it: another limit than the one marked.
            self._mark(level)

    def _mark(self, level: int) -> None:
        """Mark `level` as refused (0: no mark), the wait under it back to one window."""
        self._refused_level, self._hold_windows, self._refusals_at_mark = level, 1, 0
        self._windows_at_mark = 0


def as_request(item: object) -> GenerateRequest:
    """`item` as a validated `GenerateRequest`; mappings are built, anything else refused."""
    if isinstance(item, GenerateRequest):
        return item
    if isinstance(item, Mapping):
        for name in item.keys() - _FIELDS:
            raise RequestValidationError(
                str(name), "is not a field of a generation", allowed=", ".join(_FIELDS)
            )
        for name in ("training_id", "prompt"):
            if name not in item:
                raise RequestValidationError(name, "is required", allowed="non-empty str")
        return GenerateRequest(**item)
    raise RequestValidationError(
        "request",
        f"{type(item).__name__} is not a request",
        allowed="GenerateRequest or a mapping of its fields",
    )


class _Input(Generic[T]):
    """One shared, lazy reader of a sync or async iterable, safe for many workers."""

    def __init__(self, source: Iterable[T] | AsyncIterable[T]) -> None:
        self._sync = iter(source) if isinstance(source, Iterable) else None
        self._async = aiter(source) if isinstance(source, AsyncIterable) else None
        self._lock = anyio.Lock()
        self._index = 0
        self.exhausted = False
        #: What the input raised, if it did: held back until the work already started ends.
        self.error: Exception | None = None

    async def next(self) -> tuple[int, T] | None:
        """The next item with its index, or None when the input is exhausted."""
        if self.exhausted:
            return None
        try:
            if self._sync is not None:
                item = next(self._sync)
            else:
                assert self._async is not None  # noqa: S101 -- one of the two is set
                async with self._lock:  # an async iterator must not be entered twice
                    item = await anext(self._async)
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
            return None
        except Exception as exc:  # noqa: BLE001 -- held back and raised as is, below
            # Raising here would cancel generations already sent, and paid for, with it.
            self.exhausted, self.error = True, exc
            return None
        index, self._index = self._index, self._index + 1
        return index, item

    async def aclose(self) -> None:
        """Close an async source left unfinished, as `async for` would not."""
        close = getattr(self._async, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()


#: A delay that makes `asyncio.sleep` set a timer (0 only yields): due at once.
_NOW = 1e-9


async def _after_due_timers() -> None:
    """The reader's trip on asyncio: back after due timers and what they set off have run.

    `sleep(0)` resumes the task before a due timer's callback: an `asyncio.timeout()` that
    passed while the caller handled an outcome would cancel only after the next read had
    freed a place. A timer due now runs after those due earlier (the timeout's, anyio's
    deadlines), and the pass after it lets what they wake act too: a task's `cancel()` of
    a watchdog whose sleep ended, `wait_for()`'s (Python 3.11 cancels from the waiting
    task), `asyncio.TaskGroup`'s when a sibling fails (its done-callback). A cancel that
    comes further down such a chain lands at a later trip: with a trip a read (under 8 in
    flight) one more paid request may go out first; with a trip every few reads, places
    wait a trip more, and a cancel a trip late lets none out (see `BulkJob._checkpoint`).
    """
    await asyncio.sleep(_NOW)
    await asyncio.sleep(0)


class BulkJob(Generic[T]):
    """A running bulk job: an async context manager that yields `Outcome`s as they come.

    Leaving the `async with` block, normally or not, cancels what is still in flight; the
    client stays usable. Built by `AsyncApiframe.generate_many()`.
    """

    def __init__(
        self,
        source: Iterable[object] | AsyncIterable[object],
        work: Work[T],
        *,
        concurrency: int,
        ordered: bool,
        fail_fast: bool,
        adaptive: bool,
        on_progress: Callable[[Progress], object] | None,
        pushback_wait: Callable[[APIStatusError, int], float | None] = _retry_after,
        overload_rounds: int = 16,
        claim: Callable[[int, GenerateRequest], Any] = _no_claim,
        yield_replayed: bool = True,
        on_close: Callable[[], object] = lambda: None,
        on_not_sent: Callable[[GenerateRequest, Any, NotSentError], Awaitable[None]] = (
            _nothing_to_record
        ),
    ) -> None:
        """Prepare the job; nothing runs before `async with`.

        `pushback_wait` gives the seconds before a request turned away (429, 503) is sent
        again, given the error and the re-run's number from 0 (None: give up); at most
        `overload_rounds` re-runs are made. `claim` is called in
        input order as each request is pulled, and its value handed to `work` (a journal
        numbers identical requests with it). Replays are yielded as outcomes unless
        `yield_replayed` is False. `on_close` runs when the job ends (to close a journal
        the job opened). `on_not_sent` records an item the job did not send because
        it stopped (see `Progress.stopped_by`).
        """
        self._on_close = on_close
        self._on_not_sent = on_not_sent
        self._claim = claim
        self._yield_replayed = yield_replayed
        self._pushback_wait = pushback_wait
        self._overload_rounds = overload_rounds
        self._input: _Input[object] = _Input(source)
        self._work = work
        self._concurrency = concurrency
        self._ordered = ordered
        self._fail_fast = fail_fast
        self._limit = AdaptiveLimit(concurrency, adaptive=adaptive)
        self._on_progress = on_progress
        self.progress = Progress(concurrency=concurrency)
        # Outcomes pulled but not yet read by the caller are bounded by this window, which
        # requests waiting out a Retry-After widen while they wait (see `_rest`): places
        # lent and not yet taken back (`_window_debt`) stay under `_most_lent`.
        self._window = anyio.Semaphore(2 * concurrency, fast_acquire=True)
        self._lent = self._window_debt = 0
        # Places of outcomes handed over (or skipped) since the last trip, and before it:
        # see `_checkpoint`. Half of concurrency at most, so with at most concurrency in
        # flight the workers wait for them only when the caller reads slower than they send.
        self._owed = self._owed_before = 0
        self._most_owed = max(1, concurrency // 4)
        self._most_lent = _LENT_PER_PLACE * concurrency
        self._send, self._receive = anyio.create_memory_object_stream[Outcome[T] | _Skipped](
            math.inf
        )
        self._task_group: TaskGroup | None = None
        self._trip: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        # Set by the workers when an outcome is sent or the stream closed: what a reader
        # waits on when none is waiting (made in __aenter__, in the event loop).
        self._arrived: anyio.Event
        # Set when the first request of the job succeeds (see `_hold`).
        self._taken: anyio.Event
        self._workers_left = concurrency
        # Workers waiting out a re-run's Retry-After without a place (see `_rest`).
        self._resting = 0
        self._next_index = 0
        self._reorder: dict[int, Outcome[T] | _Skipped] = {}
        self._leftovers: list[Outcome[T]] = []

    async def __aenter__(self) -> Self:
        """Start the workers."""
        if sniffio.current_async_library() == "asyncio":
            self._trip = _after_due_timers
        self._arrived = anyio.Event()
        self._taken = anyio.Event()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        for _ in range(self._workers_left):
            self._task_group.start_soon(self._worker)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel what is left and wait for the workers to stop."""
        assert self._task_group is not None  # noqa: S101 -- set by __aenter__
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The task group wraps an error raised in the `async with` body (fail_fast's, or
            # the caller's own); the workers were only cancelled, so hand it back unwrapped.
            if exc is not None and group.exceptions == (exc,):
                raise exc from exc.__cause__
            raise
        finally:
            self._leftovers.extend(self._drain())
            self._receive.close()
            await self._input.aclose()
            self._on_close()

    def __aiter__(self) -> AsyncIterator[Outcome[T]]:
        """Iterate over the outcomes."""
        return self

    async def __anext__(self) -> Outcome[T]:
        """The next outcome: in completion order, or in input order if `ordered`."""
        while True:
            await self._checkpoint()
            outcome = await (self._next_in_order() if self._ordered else self._next_received())
            self._owed += 1
            if isinstance(outcome, Outcome):
                break
        if self._fail_fast and outcome.error is not None:
            raise outcome.error
        return outcome

    async def _checkpoint(self) -> None:
        """A read's trip through the scheduler, when due; places go back only after one.

        Due every `_most_owed` reads, and at once when the reader's own scopes are
        cancelled or past their deadline (the trip raises then). A place given back wakes
        a worker that sends another paid request, so it waits for a trip that lets a
        cancel, or a deadline that passed while the caller handled an outcome, land first.
        With more than one read a trip, places go back a trip later still: a cancel that
        comes a trip late (another task's, woken by what the first let run) then lands
        before them, where giving all of them back at the first would let that many paid
        requests out.
        """
        if (
            self._owed < self._most_owed
            and anyio.current_effective_deadline() > anyio.current_time()
        ):
            return
        await self._trip()
        if self._most_owed == 1:  # a trip a read: each gives back the place of the one before
            given, self._owed = self._owed, 0
        else:
            given, self._owed_before, self._owed = self._owed_before, self._owed, 0
        for _ in range(given):
            self._free_place()

    async def _next_received(self) -> Outcome[T] | _Skipped:
        try:
            while True:
                try:
                    return self._receive.receive_nowait()
                except anyio.WouldBlock:
                    # Not `receive()`: a sender hands its item to a waiting receive()
                    # itself, and a cancel landing before that receive() resumes drops the
                    # item, a paid outcome, inside anyio. Here it stays in the buffer.
                    if self._arrived.is_set():  # else another reader waits on it too
                        self._arrived = anyio.Event()
                    await self._arrived.wait()
        except anyio.EndOfStream:
            if self._input.error is not None:
                raise self._input.error from None
            raise StopAsyncIteration from None

    def take_received(self) -> list[Outcome[T]]:
        """The outcomes that came back and were never yielded; also after the job ended.

        For a caller that stops the job early (a break, a cancel, Ctrl-C) and must still
        record what was paid for.
        """
        taken, self._leftovers = [*self._leftovers, *self._drain()], []
        return taken

    def _drain(self) -> list[Outcome[T]]:
        taken = [o for o in self._reorder.values() if isinstance(o, Outcome)]
        self._reorder.clear()
        while True:
            try:
                outcome = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return taken
            if isinstance(outcome, Outcome):
                taken.append(outcome)

    async def _next_in_order(self) -> Outcome[T] | _Skipped:
        while self._next_index not in self._reorder:
            outcome = await self._next_received()
            self._reorder[outcome.index] = outcome
        self._next_index += 1
        return self._reorder.pop(self._next_index - 1)

    async def _worker(self) -> None:
        try:
            while True:
                await self._window.acquire()
                pulled = await self._input.next()
                if pulled is None:
                    self._free_place()
                    return
                self._send.send_nowait(await self._run_one(*pulled))
                self._arrived.set()
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._send.close()
                self._arrived.set()

    async def _hold(self, wait: float) -> float:
        """Keep a turned-away request's place a while; the seconds it was kept.

        A quarter of a request's time; before the server has taken any request of the
        job, until it does (or for the whole wait). A place given up at once then would
        be a fresh request turned away within a millisecond, and the next, hundreds of
        429s before the first generation ends: the server is at its limit already.
        """
        if typical := self._limit.typical_seconds:
            held = min(wait, typical / 4)
            await anyio.sleep(held)
            return held
        # On the event loop's clock, the one the wait and the rest after it run on.
        start = anyio.current_time()
        with anyio.move_on_after(wait):
            await self._taken.wait()
        return min(wait, anyio.current_time() - start)

    def _took(self, result: object, seconds: float) -> None:
        """Learn how long a success took; the job's first ends the holds of `_hold`.

        Not from a journal's replay: it took no time at the server, and a typical time
        near zero would have a turned-away request give up its place at once.
        """
        if isinstance(result, Replay):
            return
        if not self._limit.typical_seconds:
            self._taken.set()
        self._limit.took(seconds)

    def _free_place(self) -> None:
        """Give a window place back, or take back one lent by a request that waited."""
        if self._window_debt:
            self._window_debt -= 1
        else:
            self._window.release()

    async def _rest(self, seconds: float) -> None:
        """Wait out a re-run's delay without a place, while a spare worker uses it.

        A spare is started only when a worker rests and fewer than `concurrency` are
        busy: a job without pushback runs `concurrency` workers (a spare for each place
        would cost every request a task switch), and the window, which bounds what is
        pulled, bounds the workers that rest. The window place is lent meanwhile, and
        taken back from the next place given back after the wait.
        """
        self._resting += 1
        lend = self._lent + self._window_debt < self._most_lent
        if lend:
            self._lent += 1
            self._window.release()
        if self._workers_left - self._resting < self._concurrency:
            assert self._task_group is not None  # noqa: S101 -- set by __aenter__
            self._workers_left += 1
            self._task_group.start_soon(self._worker)
        try:
            await anyio.sleep(seconds)
        finally:
            self._resting -= 1
            if lend:
                self._lent -= 1
                self._window_debt += 1

    async def _run_one(self, index: int, item: object) -> Outcome[T] | _Skipped:
        """The item's outcome, or a marker for a replayed item the caller does not want."""
        try:
            request = as_request(item)
        except RequestValidationError as exc:
            self._tally(exc, 0)
            return Outcome(index=index, request=_as_given(item), error=exc)
        cost = generation_cost(request.number_of_images)
        # Before any await: claims are made in input order.
        claim = self._claim(index, request)
        self.progress.submitted += 1
        for round_ in range(self._overload_rounds + 1):
            async with self._limit as sent_with:
                if self.progress.stopped_by is not None:
                    return await self._not_sent(index, request, claim, self.progress.stopped_by)
                self.progress.in_flight += 1
                started = time.monotonic()
                try:
                    result = await self._work(request, claim)
                except ApiframeError as exc:
                    self._count(error=exc, sent_with=sent_with)
                    wait = self._rerun_wait(exc, round_)
                    if wait is None:
                        if dooms_the_job(exc) and self.progress.stopped_by is None:
                            self.progress.stopped_by = exc
                            logger.info("no more requests sent: %s", exc)
                        spent = credits_charged(cost, exc)
                        self._tally(exc, spent)
                        return Outcome(index=index, request=request, error=exc, credits=spent)
                    # Turned away unprocessed (see _charges): it is sent again, at no risk
                    # of paying twice. Its place is kept a quarter of a request's time:
                    # taken at once it would collect another 429, kept longer it would
                    # leave what the server allows unused.
                    held = await self._hold(wait)
                else:
                    self._took(result, time.monotonic() - started)
                    self._count(error=None, sent_with=sent_with)
                    break
            await self._rest(wait - held)
        else:
            raise AssertionError  # pragma: no cover -- the last round returns or breaks
        if isinstance(result, Replay):
            self._tally(None, 0)
            if not self._yield_replayed:
                return _Skipped(index)
            return Outcome(index=index, request=request, result=result.result, replayed=True)
        self._tally(None, cost)
        return Outcome(index=index, request=request, result=result, credits=cost)

    async def _not_sent(
        self, index: int, request: GenerateRequest, claim: object, reason: ApiframeError
    ) -> Outcome[T]:
        error = NotSentError(reason)
        await self._on_not_sent(request, claim, error)
        self._tally(error, 0)
        return Outcome(index=index, request=request, error=error)

    def _rerun_wait(self, error: ApiframeError, round_: int) -> float | None:
        """Seconds before a turned-away request is sent again; None if it is not."""
        if not turned_away(error) or round_ >= self._overload_rounds:
            return None
        assert isinstance(error, APIStatusError)  # noqa: S101 -- turned away: a status
        wait = self._pushback_wait(error, round_)
        if wait is None:
            return None
        # Up to a quarter of a request's time more: a server that told several requests
        # the same wait would get them back at once, and a burst past its bucket again.
        # Refused in bunches and re-sent in bunches, they drag the limit down level by
        # level (0.78-0.93 of a token bucket's rate with an exact Retry-After, in four
        # runs of five; 0.97-0.99 with the spread).
        return wait + random.uniform(0, self._limit.typical_seconds / 4)  # noqa: S311

    def _count(self, *, error: ApiframeError | None, sent_with: int) -> None:
        """Account for one attempt that ended."""
        self.progress.in_flight -= 1
        overloaded = error is not None and turned_away(error)
        self._limit.record(ok=error is None, overloaded=overloaded, sent_with=sent_with)
        self.progress.concurrency = self._limit.current

    def _tally(self, error: ApiframeError | None, spent: int) -> None:
        """Account for one item that ended, and tell the progress callback."""
        self.progress.credits += spent
        if error is None:
            self.progress.succeeded += 1
        else:
            self.progress.failed += 1
        if self._on_progress is not None:
            self._on_progress(self.progress)


def _as_given(item: object) -> RequestLike:
    return item if isinstance(item, GenerateRequest | Mapping) else {"request": item}
