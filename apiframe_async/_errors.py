"""Every error apiframe-async raises, in one tree.

```text
ApiframeError
├── RequestValidationError (also ValueError)   bad input, refused before any request
├── APIConnectionError                          no usable answer from the server
│   └── APITimeoutError (also TimeoutError)     connect, write or read timed out
├── APIStatusError                              the server answered with an error status
│   ├── BadRequestError            400          .messages from the server's errors[].msg
│   ├── AuthenticationError        401
│   ├── InsufficientCreditsError   402          .messages: the server's words
│   ├── PermissionDeniedError      403
│   ├── NotFoundError              404
│   ├── RequestTimeoutError        408
│   ├── RateLimitError             429          .retry_after in seconds, when given
│   ├── ClientError                4xx          any other 4xx: the request was refused
│   └── ServerError                5xx          (and any other unexpected status)
├── ResponseValidationError                     a reply that does not fit the contract
│   └── NoImagesError                           a generation "finished" without photos
├── TaskFailedError                             the task ended with status "failed"
├── TaskWaitError                               accepted, but the wait did not end it
│   ├── TaskTimeoutError (also TimeoutError)    a wait's deadline passed; the task lives on
│   └── TaskPollError                           polls failed; the task lives on
├── NotSentError                                a bulk job stopped before sending this
├── UncertainSubmissionError                    a resumed job's request may have been charged
├── ClientClosedError (also RuntimeError)       the client was closed; nothing was sent
├── JournalError                                a journal cannot be used as it is
│   └── JournalInUseError                       another run holds the journal
├── BudgetExceededError                         not sent: it would pass the job's max_credits
└── DownloadError                               a photo could not be saved safely
```

Catch `ApiframeError` for everything, or a leaf for what you can handle. No `httpx` or
`cattrs` exception escapes the public API: they are translated here and chained as
`__cause__`. No error text ever holds the API key or a webhook secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: How much of a reply body an error keeps: enough to diagnose, never a megabyte of HTML.
BODY_EXCERPT_LIMIT = 500


def excerpt(text: str, limit: int = BODY_EXCERPT_LIMIT) -> str:
    """Cut `text` to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


class ApiframeError(Exception):
    """Base class of every error raised by apiframe-async."""


class RequestValidationError(ApiframeError, ValueError):
    """A caller's input broke a rule of the API; raised before any request is sent.

    Attributes:
        field: The name of the offending argument, as the Python API spells it.
        allowed: A description of the allowed values, e.g. `'1 to 4'`.
        value: The value that was refused (never a secret: secrets are not validated here).
    """

    def __init__(self, field: str, message: str, *, allowed: str | None = None) -> None:
        """Build the error; the text names the field and, when known, what is allowed."""
        self.field = field
        self.allowed = allowed
        text = f"{field}: {message}"
        if allowed is not None:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class APIConnectionError(ApiframeError):
    """The request got no usable answer: the connection failed, dropped or timed out.

    Attributes:
        method: The HTTP method of the request.
        url: The URL of the request.
        may_have_been_submitted: True when the request may have reached the server
            (bytes were sent and no answer came back). For a paid endpoint this means the
            work may have been done and charged, so it is never retried automatically.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        may_have_been_submitted: bool,
    ) -> None:
        """Build the error from a description of what failed and where."""
        self.method = method
        self.url = url
        self.may_have_been_submitted = may_have_been_submitted
        text = f"{message} ({method} {url})"
        if may_have_been_submitted:
            text += (
                "; the request may have reached the server, so it was not retried: "
                "if it was a generation, it may have been submitted and charged"
            )
        super().__init__(text)


class APITimeoutError(APIConnectionError, TimeoutError):
    """Connecting, sending or waiting for the reply took longer than the timeout allowed."""


class APIStatusError(ApiframeError):
    """The server answered with an error status code.

    Attributes:
        status_code: The HTTP status code.
        method: The HTTP method of the request.
        url: The URL of the request.
        body: The reply body as text, cut to a sane length.
        task_id: The task the request was about, when known.
        retry_after: Seconds the server asked us to wait (`Retry-After`, sent with 429
            and often with 503), if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str,
        url: str,
        body: str,
        task_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Build the error; the text holds the status, the request and the server's words."""
        self.status_code = status_code
        self.method = method
        self.url = url
        self.body = excerpt(body)
        self.task_id = task_id
        self.retry_after = retry_after
        if retry_after is not None:
            message = f"{message}, retry after {retry_after:g} s"
        super().__init__(f"{status_code} {message} ({method} {url})")


class BadRequestError(APIStatusError):
    """400: the server refused the request.

    Attributes:
        messages: The `msg` of each item of the server's `errors` list.
        errors: The server's `errors` items as sent (they may carry more keys).
    """

    def __init__(self, *, errors: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:  # noqa: ANN401
        """Build the error from the server's `errors` list and the status context."""
        self.errors = tuple(errors)
        self.messages = tuple(str(item.get("msg", "")) for item in self.errors)
        detail = "; ".join(m for m in self.messages if m) or "bad request"
        super().__init__(detail, **kwargs)


class AuthenticationError(APIStatusError):
    """401: the API key was refused."""


class InsufficientCreditsError(APIStatusError):
    """402: the account has too few credits for this work; nothing was done or charged.

    Attributes:
        messages: The `msg` of each item of the server's `errors` list.
    """

    def __init__(self, *, errors: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:  # noqa: ANN401
        """Build the error from the server's `errors` list and the status context."""
        self.messages = tuple(str(item.get("msg", "")) for item in errors)
        detail = "; ".join(m for m in self.messages if m) or "not enough credits"
        super().__init__(detail, **kwargs)


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (plan, credits or a proxy's rule)."""


class NotFoundError(APIStatusError):
    """404: no such endpoint or task."""


class RequestTimeoutError(APIStatusError):
    """408: the server or a proxy gave up waiting for the request."""


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after` says how long to wait, when the server said."""


class ClientError(APIStatusError):
    """Any other 4xx: the server or a proxy refused the request as it was sent."""


class ServerError(APIStatusError):
    """5xx, or any other status the contract does not describe: the server or a proxy failed."""


class ResponseValidationError(ApiframeError):
    """A reply did not fit the contract: not JSON, truncated, or a field of the wrong type.

    Attributes:
        problems: One line per problem, each with the field's path (`$.image_urls[0]`).
        body: The reply body as text, cut to a sane length.
        method: The HTTP method of the request, when the reply came from one.
        url: The URL of the request, when the reply came from one.
    """

    def __init__(
        self,
        problems: Sequence[str],
        *,
        body: str,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        """Build the error from the list of problems found in the reply."""
        self.problems = tuple(problems)
        self.body = excerpt(body)
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method and url else ""
        super().__init__(f"unexpected reply{where}: {'; '.join(self.problems)}")


class NoImagesError(ResponseValidationError):
    """A generation reported `finished` with no photo: a result that cannot be used.

    The task exists and may have been charged: it is never sent again on its own.

    Attributes:
        task_id: The generation's task.
    """

    def __init__(self, task_id: str, *, body: str = "") -> None:
        """Build the error from the finished task's id."""
        self.task_id = task_id
        super().__init__(
            [f"$.image_urls: generation {task_id} finished without any image URL"], body=body
        )


class TaskFailedError(ApiframeError):
    """The task ended with status `failed`.

    Attributes:
        task_id: The failed task.
        reason: The server's explanation (`message` or `error`), if it gave one.
    """

    def __init__(self, task_id: str, reason: str | None) -> None:
        """Build the error from the task id and the server's reason."""
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"task {task_id} failed: {reason or 'no reason given'}")


class TaskWaitError(ApiframeError):
    """The task was accepted, but the wait for it ended without its result.

    The task goes on at the server (and a generation is charged once, whatever happens to
    the wait): call `wait(task_id)` again to pick it up. Never send its request again.

    Attributes:
        task_id: The accepted task.
    """

    def __init__(self, task_id: str, message: str) -> None:
        """Build the error from the task id and what ended the wait."""
        self.task_id = task_id
        super().__init__(message)


class TaskTimeoutError(TaskWaitError, TimeoutError):
    """A wait for a task passed its deadline. The task itself goes on: wait for it again.

    Attributes:
        task_id: The task that was not finished in time.
        deadline: The deadline that passed, in seconds.
        last_status: The last status seen, if any reply came.
    """

    def __init__(self, task_id: str, deadline: float, last_status: str | None) -> None:
        """Build the error from the task id and what was last seen of it."""
        self.deadline = deadline
        self.last_status = last_status
        seen = f", last status {last_status!r}" if last_status else ""
        super().__init__(
            task_id,
            f"task {task_id} not finished after {deadline:g} s{seen}; "
            "it is still running, call wait() again to keep waiting",
        )


class TaskPollError(TaskWaitError):
    """Polling an accepted task failed, until the wait's deadline or outright.

    Polls pushed back (429, 503) or failing (5xx, timeouts, drops) are waited out until
    the deadline; a refusal (a 401, say) ends the wait at once. The task itself goes on:
    wait for it again.

    Attributes:
        task_id: The accepted task.
        last_error: The poll's failure (also the `__cause__`).
    """

    def __init__(self, task_id: str, last_error: ApiframeError) -> None:
        """Build the error from the task id and the poll's failure."""
        self.last_error = last_error
        super().__init__(
            task_id,
            f"task {task_id} was accepted, but polling it failed ({last_error}); "
            "it is not sent again: call wait() to pick it up",
        )


class NotSentError(ApiframeError):
    """A bulk job stopped sending paid requests before this one, and says why.

    After a 401, 402 or 403 every other request would be refused the same way, so the
    job submits nothing more. Nothing was sent or charged for this item; a journal
    records it as not charged, so a rerun sends it once the key or balance is fixed.

    Attributes:
        reason: The error that stopped the job.
    """

    def __init__(self, reason: ApiframeError) -> None:
        """Build the error from the error that stopped the job."""
        self.reason = reason
        super().__init__(f"not sent: the job stopped submitting after {reason}")


class JournalError(ApiframeError):
    """A journal file cannot be used as it is; nothing was sent.

    Attributes:
        path: The journal's path.
    """

    def __init__(self, path: str, message: str) -> None:
        """Build the error from the journal's path and what is wrong with it."""
        self.path = path
        super().__init__(f"journal {path}: {message}")


class JournalInUseError(JournalError):
    """Another run (this process or another) has the journal open: one journal, one run."""

    def __init__(self, path: str) -> None:
        """Build the error from the journal's path."""
        super().__init__(
            path,
            "in use by another run; wait for it to end (two runs on one journal "
            "would pay for the same prompts twice)",
        )


class DownloadError(ApiframeError):
    """A photo was refused: not an image, too large, or a name that would leave the folder.

    Attributes:
        url: The photo's URL.
        reason: Why it was refused.
    """

    def __init__(self, url: str, reason: str) -> None:
        """Build the error from the URL and the reason."""
        self.url = url
        self.reason = reason
        super().__init__(f"cannot save {url}: {reason}")


class ClientClosedError(ApiframeError, RuntimeError):
    """The client was closed (`aclose()`, or the end of its `async with` block).

    Raised before anything is sent, by every request made after the close, also when a
    borrowed `http_client` was closed by its owner. Make a new client to go on.
    """


class BudgetExceededError(ApiframeError):
    """A request of a bulk job was not sent: its cost would take the job past `max_credits`.

    Nothing was sent, so nothing was charged: a resumed job with a larger budget sends it.

    Attributes:
        cost: The credits the request would have cost.
        spent: The credits the job had spent (or may have spent) when it was refused.
        max_credits: The job's budget.
    """

    def __init__(self, *, cost: int, spent: int, max_credits: int) -> None:
        """Build the error from the request's cost and the state of the budget."""
        self.cost = cost
        self.spent = spent
        self.max_credits = max_credits
        super().__init__(
            f"not sent: it costs {cost} credit{'s' if cost != 1 else ''} and {spent} of "
            f"max_credits={max_credits} are spent; a resumed job with a larger budget sends it"
        )


class UncertainSubmissionError(ApiframeError):
    """A request may have been charged, and nothing can tell; it was not sent again.

    A previous run stopped (or lost the connection) while this request was in flight.
    Check your APIFRAME dashboard, or resume with `on_uncertain="resend"` to send it again
    and accept paying twice if it had gone through.

    Attributes:
        key: The item's identity in the journal.
    """

    def __init__(self, key: str, detail: str) -> None:
        """Build the error from the item's key and what was last known of it."""
        self.key = key
        super().__init__(
            f"request {key[:12]} may already have been submitted ({detail}); not sent again: "
            'resume with on_uncertain="resend" to send it anyway'
        )
