"""The client's settings, checked like request fields: a bad one fails at construction.

A key with a stray newline, or a timeout of zero, would otherwise surface only at the first
request, and there as a failure that looks like the server's (a key ending in a newline
makes a broken header: "may have been submitted and charged"). Messages name the setting
and what it allows; they never repeat the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from ._errors import RequestValidationError

_TIMEOUT_PHASES = ("connect", "read", "write", "pool")


def checked_api_key(key: str) -> str:
    """`key`, if it can travel in an `Authorization` header as it is."""
    if not isinstance(key, str):
        raise RequestValidationError(
            "api_key", f"must be a string, not {type(key).__name__}", allowed="str"
        )
    for position, char in enumerate(key):
        if char.isspace() or not char.isprintable() or not char.isascii():
            where = _where(position, len(key))
            raise RequestValidationError(
                "api_key",
                f"has whitespace, a control or a non-ASCII character {where} "
                f"(character {position + 1} of {len(key)})",
                allowed="the key exactly as the dashboard shows it, without spaces or newlines",
            )
    return key


def _where(position: int, length: int) -> str:
    if position == 0:
        return "at its start"
    if position == length - 1:
        return "at its end"
    return "inside it"


def checked_timeout(timeout: object, field: str = "timeout") -> httpx.Timeout:
    """`timeout` as an `httpx.Timeout`, if every phase is positive seconds or None."""
    if isinstance(timeout, httpx.Timeout):
        for phase in _TIMEOUT_PHASES:
            _check_seconds(getattr(timeout, phase), f"{field}.{phase}", none_ok=True)
        return timeout
    _check_seconds(timeout, field, none_ok=False)
    return httpx.Timeout(timeout)  # type: ignore[arg-type]  # a number, checked above


def _check_seconds(value: object, field: str, *, none_ok: bool) -> None:
    if value is None and none_ok:
        return  # httpx's "no limit" for this phase
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):  # type: ignore[arg-type, operator]
        allowed = "seconds > 0, or an httpx.Timeout of such (None: no limit for a phase)"
        raise RequestValidationError(field, f"{value!r} is not a valid timeout", allowed=allowed)


def checked_count(value: object, field: str, *, minimum: int) -> int:
    """`value`, if it is an int (not a bool) of at least `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RequestValidationError(field, f"{value!r} is not valid", allowed=f"int >= {minimum}")
    return value


def number_field(
    minimum: float, *, strictly: bool = False, below: float | None = None, integer: bool = False
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator: a finite number (an int if `integer`) in the given range.

    The policies' fields are settings too: a bad one is a `RequestValidationError` naming
    the field, like every other bad setting.
    """
    bound = f"> {minimum:g}" if strictly else f">= {minimum:g}"
    allowed = f"{'int' if integer else 'a number'} {bound}"
    if below is not None:
        allowed += f" and < {below:g}"

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        kinds = int if integer else int | float
        if isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value):
            low_ok = value > minimum if strictly else value >= minimum
            if low_ok and (below is None or value < below):
                return
        raise RequestValidationError(attribute.name, f"{value!r} is not valid", allowed=allowed)

    return check
