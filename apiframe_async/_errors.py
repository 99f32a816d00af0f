"""Every error apiframe-async raises, in one tree.

```text
ApiframeError
├── RequestValidationError (also ValueError)   bad input, refused before any request
├── APIConnectionError                          no usable answer from the server
│   └── APITimeoutError (also TimeoutError)     connect, write or read timed out
├── APIStatusError                              the server answered with an error status
│   ├── BadRequestError            400          .messages from the server's errors[].msg
│   ├── AuthenticationError        401
│   ├── PermissionDeniedError      403
│   ├── NotFoundError              404
│   ├── RequestTimeoutError        408
│   ├── RateLimitError             429          .retry_after in seconds, when given
│   └── ServerError                5xx          (and any other unexpected status)
├── ResponseValidationError                     a reply that does not fit the contract
├── TaskFailedError                             the task ended with status "failed"
├── TaskTimeoutError (also TimeoutError)        a wait's deadline passed; the task lives on
├── UncertainSubmissionError                    a resumed job's request may have been charged
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


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (plan, credits or a proxy's rule)."""


class NotFoundError(APIStatusError):
    """404: no such endpoint or task."""


class RequestTimeoutError(APIStatusError):
    """408: the server or a proxy gave up waiting for the request."""


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after` says how long to wait, when the server said."""


class ServerError(APIStatusError):
    """5xx, or any status the contract does not describe: the server or a proxy failed."""


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


class TaskTimeoutError(ApiframeError, TimeoutError):
    """A wait for a task passed its deadline. The task itself goes on: wait for it again.

    Attributes:
        task_id: The task that was not finished in time.
        deadline: The deadline that passed, in seconds.
        last_status: The last status seen, if any reply came.
    """

    def __init__(self, task_id: str, deadline: float, last_status: str | None) -> None:
        """Build the error from the task id and what was last seen of it."""
        self.task_id = task_id
        self.deadline = deadline
        self.last_status = last_status
        seen = f", last status {last_status!r}" if last_status else ""
        super().__init__(
            f"task {task_id} not finished after {deadline:g} s{seen}; "
            "it is still running, call wait() again to keep waiting"
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
