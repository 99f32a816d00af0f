"""Whether a failed paid request may have cost money: the one place that says so.

The retry rules, the bulk job's second try of turned-away requests and the journal's
states all ask `charge_of()`, so they can never disagree about what is safe to send again.

- `NOT_CHARGED`: the request provably never reached the server (its input was refused
  before sending, the client was closed, or no connection was made), or the server
  refused it before any work: a 4xx other than 408 (bad request, key, credits,
  permission, rate limit) or a 503.
- `ACCEPTED`: the server took the work and named its task: only waiting on the task is
  left, never a second submission.
- `UNCERTAIN`: bytes may have reached the server and nothing says what it did: a timeout,
  a dropped connection, a 5xx other than 503 (a proxy's 502 may follow a finished
  generation), a 408, a 200 that could not be read. Sent again only when the caller says so.
"""

from __future__ import annotations

import enum

from ._errors import (
    APIConnectionError,
    APIStatusError,
    BudgetExceededError,
    ClientClosedError,
    NoImagesError,
    NotSentError,
    RequestValidationError,
    TaskFailedError,
    TaskWaitError,
)

# Turned away before any work: safe to send again, even when paid.
_PUSHBACK = frozenset({429, 503})
# A proxy's 408 can come after the request went on to the server.
_AMBIGUOUS_4XX = frozenset({408})


class Charge(enum.StrEnum):
    """What a failed paid request may have cost."""

    NOT_CHARGED = "not_charged"
    UNCERTAIN = "uncertain"
    ACCEPTED = "accepted"


def charge_of(error: BaseException) -> Charge:
    """What the paid request that ended with `error` may have cost."""
    if isinstance(error, TaskWaitError | TaskFailedError | NoImagesError):
        return Charge.ACCEPTED
    if isinstance(
        error, RequestValidationError | NotSentError | BudgetExceededError | ClientClosedError
    ):
        return Charge.NOT_CHARGED
    if isinstance(error, APIConnectionError):
        return Charge.UNCERTAIN if error.may_have_been_submitted else Charge.NOT_CHARGED
    if isinstance(error, APIStatusError) and _refused_before_work(error.status_code):
        return Charge.NOT_CHARGED
    return Charge.UNCERTAIN


def _refused_before_work(status: int) -> bool:
    return status in _PUSHBACK or (400 <= status < 500 and status not in _AMBIGUOUS_4XX)  # noqa: PLR2004


def turned_away(error: BaseException) -> bool:
    """Whether a paid request was pushed back (429, 503) unprocessed: worth sending later."""
    return (
        isinstance(error, APIStatusError)
        and error.status_code in _PUSHBACK
        and charge_of(error) is Charge.NOT_CHARGED
    )


def never_left(error: BaseException) -> bool:
    """Whether a paid request's connection failed before any byte of it left."""
    return isinstance(error, APIConnectionError) and charge_of(error) is Charge.NOT_CHARGED


def dooms_the_job(error: BaseException) -> bool:
    """Whether every other paid request of the job would be refused the same way.

    A refused key (401), an empty balance (402) or a refusal of the key's rights (403) do
    not depend on the request: sending more would only collect the same answer.
    """
    return (
        isinstance(error, APIStatusError)
        and error.status_code in (401, 402, 403)
        and charge_of(error) is Charge.NOT_CHARGED
    )
