"""From an error reply to our typed error: the status code decides, the body adds detail."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)

_BY_STATUS: Mapping[int, type[APIStatusError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
}


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date.

    Examples:
        >>> parse_retry_after("7")
        7.0
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=dt.datetime(
        ...     2015, 10, 21, 7, 27, 30, tzinfo=dt.UTC))
        30.0
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return max(seconds, 0.0) if seconds == seconds else None  # noqa: PLR0124 -- NaN check


def _json_object(text: str) -> Mapping[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, Mapping) else {}


def _server_words(data: Mapping[str, Any], default: str) -> str:
    for key in ("message", "error", "detail"):
        if isinstance(data.get(key), str) and data[key]:
            return str(data[key])
    return default


def status_error(
    response: httpx.Response,
    *,
    method: str,
    url: str,
    task_id: str | None = None,
    redact: Callable[[str], str] = lambda text: text,
) -> APIStatusError:
    """The typed error for an error reply; tolerant of any body (HTML, empty, truncated).

    `redact` cleans the body of secrets before any of it is kept.
    """
    text = redact(response.text)
    data = _json_object(text)
    status = response.status_code
    context: dict[str, Any] = {
        "status_code": status,
        "method": method,
        "url": url,
        "body": text,
        "task_id": task_id,
        "retry_after": parse_retry_after(response.headers.get("retry-after")),
    }
    message = _server_words(data, response.reason_phrase or "error")
    if status in (400, 402):
        raw = data.get("errors")
        items = [e for e in raw if isinstance(e, Mapping)] if isinstance(raw, list) else []
        if not items and message:
            items = [{"msg": message}]
        kind = BadRequestError if status == 400 else InsufficientCreditsError  # noqa: PLR2004
        return kind(errors=items, **context)
    if status == 429:  # noqa: PLR2004
        return RateLimitError(message, **context)
    fallback = ClientError if 400 <= status < 500 else ServerError  # noqa: PLR2004
    return _BY_STATUS.get(status, fallback)(message, **context)
