"""A bulk job's budget: credits spent plus credits in flight never pass `max_credits`.

A request reserves its cost before it is sent. When its submission ends, the reservation
becomes spent if the request was, or may have been, charged (a task accepted, no answer
after the bytes left, an unparsable reply), and is given back only when the failure proves
nothing was charged (`_charges` decides, as it does for retries and journals). A request
that cannot fit even if every reservation is given back is refused with
`BudgetExceededError`; one that might fit waits for the requests in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

import anyio

from ._charges import Charge, charge_of
from ._errors import (
    ApiframeError,
    BudgetExceededError,
    RequestValidationError,
    UncertainSubmissionError,
)
from ._models import GenerateRequest
from ._pricing import generation_cost

T = TypeVar("T")

_P = ParamSpec("_P")


def check_max_credits(max_credits: object) -> None:
    """Refuse a budget that is not None or an int of at least 1."""
    if max_credits is None:
        return
    if isinstance(max_credits, bool) or not isinstance(max_credits, int) or max_credits < 1:
        raise RequestValidationError(
            "max_credits", f"{max_credits!r} is not a budget", allowed="an int >= 1, or None"
        )


def credits_charged(cost: int, error: ApiframeError | None) -> int:
    """The credits a generation that ended with `error` (None: a result) counts as spent."""
    # Refused by a journal before anything was sent in this run: it costs this run nothing.
    if isinstance(error, UncertainSubmissionError):
        return 0
    return cost if error is None or charge_of(error) is not Charge.NOT_CHARGED else 0


class Budget:
    """Credits spent and reserved by one bulk job, against a ceiling."""

    def __init__(self, max_credits: int) -> None:
        """Start with nothing spent."""
        check_max_credits(max_credits)
        self.max_credits = max_credits
        self.spent = 0
        self.reserved = 0
        # Made only when a request waits: most jobs never come near their ceiling.
        self._changed: anyio.Event | None = None

    async def reserve(self, cost: int) -> None:
        """Hold `cost` credits for a request about to be sent.

        Raises:
            BudgetExceededError: The request cannot fit, whatever the requests in flight
                turn out to cost.
        """
        ceiling = self.max_credits
        while self.spent + self.reserved + cost > ceiling:
            if self.spent + cost > ceiling:
                raise BudgetExceededError(cost=cost, spent=self.spent, max_credits=ceiling)
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        self.reserved += cost

    def settle(self, cost: int, charged: int) -> None:
        """End a reservation of `cost`, of which `charged` counts as spent."""
        self.reserved -= cost
        self.spent += charged
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def guard(
        self, submit: Callable[Concatenate[GenerateRequest, _P], Awaitable[T]]
    ) -> Callable[Concatenate[GenerateRequest, _P], Awaitable[T]]:
        """`submit`, the paid step of a generation, run under this budget."""

        async def guarded(request: GenerateRequest, /, *args: _P.args, **kwargs: _P.kwargs) -> T:
            cost = generation_cost(request.number_of_images)
            await self.reserve(cost)
            # A cancellation or any surprise counts as possibly charged.
            charged = cost
            try:
                return await submit(request, *args, **kwargs)
            except ApiframeError as exc:
                charged = credits_charged(cost, exc)
                raise
            finally:
                self.settle(cost, charged)

        return guarded
