"""Fault injection: what can go wrong on the wire, before or after the server did the work."""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable

import attrs


class Fault(enum.StrEnum):
    """A fault the fake server can inject into one request.

    Faults that happen *before the work* leave no trace in the service: nothing was created
    and nothing was charged, so retrying is always safe. `DROP_AFTER_WORK` is the dangerous
    one: the task was created and charged, then the connection dropped before the reply,
    so the client cannot know whether to retry.

    Example:
        ```python
        from apiframe_async.testing import FakeApiframe, Fault

        fake = FakeApiframe()
        fake.inject_fault(Fault.DROP_AFTER_WORK, path="/ai-photo-generate")
        ```
    """

    TOO_MANY_REQUESTS = "429"
    """429 with a `Retry-After` header and a plain-text body, before the work."""
    SERVER_ERROR = "500"
    """500 with the body `{}`, before the work."""
    UNAVAILABLE = "503"
    """503 with a proxy's HTML page as the body, before the work."""
    DROP_BEFORE_WORK = "drop-before-work"
    """The connection drops before the work: the client sees an incomplete response."""
    DROP_AFTER_WORK = "drop-after-work"
    """The work is done (and charged), then the connection drops before the reply."""

    @property
    def before_work(self) -> bool:
        """Whether the fault happens before the service does anything."""
        return self is not Fault.DROP_AFTER_WORK

    @property
    def drops_connection(self) -> bool:
        """Whether the client sees a dropped connection rather than a status code."""
        return self in {Fault.DROP_BEFORE_WORK, Fault.DROP_AFTER_WORK}


def _paths(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _rate(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


@attrs.define
class Faults:
    """Random faults, deterministic with a seed, for every route or only some.

    Each request draws once: with probability `rate_429` it gets a 429, else with
    `rate_500` a 500, and so on (the rates of the five kinds must add up to at most 1).
    Independently, with probability `slow_rate` the reply is delayed by `slow_seconds`.
    With the same `seed` and the same order of requests, the same requests fail.

    Args:
        rate_429: share of requests answered 429 before the work.
        rate_500: share answered 500 `{}` before the work.
        rate_503: share answered 503 with an HTML body before the work.
        rate_drop_before: share whose connection drops before the work.
        rate_drop_after: share whose work is done and charged, then the connection drops.
        retry_after: the `Retry-After` header of a 429: seconds, a preformatted string
            (e.g. an HTTP date), or None to send no header.
        slow_rate: share of requests delayed by `slow_seconds` (with `anyio.sleep`).
        slow_seconds: the delay of a slow request.
        paths: the routes the faults apply to (`"/ai-photo-generate"`, `"/fetch"`,
            `"/images"`, ...); None for every route.
        seed: the seed of this object's own random generator.

    Example:
        ```python
        from apiframe_async.testing import FakeApiframe, Faults

        fake = FakeApiframe(
            faults=[
                Faults(rate_429=0.2, retry_after=0, seed=1),
                Faults(rate_drop_after=0.1, paths={"/ai-photo-generate"}, seed=2),
            ]
        )
        ```
    """

    rate_429: float = attrs.field(default=0.0, validator=_rate)
    rate_500: float = attrs.field(default=0.0, validator=_rate)
    rate_503: float = attrs.field(default=0.0, validator=_rate)
    rate_drop_before: float = attrs.field(default=0.0, validator=_rate)
    rate_drop_after: float = attrs.field(default=0.0, validator=_rate)
    retry_after: float | str | None = 1
    slow_rate: float = attrs.field(default=0.0, validator=_rate)
    slow_seconds: float = 1.0
    paths: frozenset[str] | None = attrs.field(default=None, converter=_paths)
    seed: int | None = None
    _rng: random.Random = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        """Check the rates and seed the random generator."""
        if sum(rate for _, rate in self._table()) > 1.0:
            raise ValueError("the rates of 429, 500, 503 and drops must add up to at most 1")
        self._rng = random.Random(self.seed)  # noqa: S311 - fault injection, not crypto

    def applies_to(self, route: str) -> bool:
        """Whether these faults cover `route` (e.g. `"/fetch"` or `"/images"`)."""
        return self.paths is None or route in self.paths

    def draw(self) -> tuple[Fault | None, float]:
        """Draw the fault (or None) and the delay in seconds for one request."""
        roll = self._rng.random()
        fault = None
        for kind, rate in self._table():
            if roll < rate:
                fault = kind
                break
            roll -= rate
        slow = self.slow_rate > 0 and self._rng.random() < self.slow_rate
        return fault, self.slow_seconds if slow else 0.0

    def _table(self) -> tuple[tuple[Fault, float], ...]:
        return (
            (Fault.TOO_MANY_REQUESTS, self.rate_429),
            (Fault.SERVER_ERROR, self.rate_500),
            (Fault.UNAVAILABLE, self.rate_503),
            (Fault.DROP_BEFORE_WORK, self.rate_drop_before),
            (Fault.DROP_AFTER_WORK, self.rate_drop_after),
        )


@attrs.frozen
class Decision:
    """What happens to one request: a fault or none, a delay, and a 429's `Retry-After`."""

    fault: Fault | None = None
    delay: float = 0.0
    retry_after: float | str | None = None


NO_FAULT = Decision()


@attrs.define
class _Injected:
    """A scripted fault: applies to the next `times` matching requests."""

    decision: Decision
    route: str | None
    times: int


@attrs.define
class FaultPlan:
    """Scripted faults first, then the random `Faults` in order; not thread-safe alone."""

    faults: tuple[Faults, ...] = ()
    _scripted: list[_Injected] = attrs.field(factory=list)

    def inject(self, decision: Decision, route: str | None, times: int) -> None:
        """Queue a scripted decision for the next `times` requests to `route` (None: any)."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self._scripted.append(_Injected(decision, route, times))

    def decide(self, route: str) -> Decision:
        """What happens to the next request to `route`."""
        for entry in self._scripted:
            if entry.route in {None, route}:
                entry.times -= 1
                if entry.times == 0:
                    self._scripted.remove(entry)
                return entry.decision
        for faults in self.faults:
            if faults.applies_to(route):
                fault, delay = faults.draw()
                if fault is not None or delay:
                    return Decision(fault, delay, faults.retry_after)
        return NO_FAULT
