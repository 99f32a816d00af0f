"""attrs validators that refuse bad input with a `RequestValidationError`.

Each names the field as the Python API spells it and says what is allowed, so a caller
can fix the call from the message alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._errors import RequestValidationError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def non_empty_str(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Refuse anything but a string with at least one non-blank character."""
    if not isinstance(value, str) or not value.strip():
        raise RequestValidationError(
            attribute.name, f"must be a non-empty string, got {value!r}", allowed="non-empty str"
        )


def optional_non_empty_str(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Like `non_empty_str`, but `None` (unset) passes."""
    if value is not None:
        non_empty_str(instance, attribute, value)


def int_between(low: int, high: int | None = None) -> Validator:
    """Refuse anything but an int (bool excluded) in `low..high`; `None` (unset) passes."""
    allowed = f"int from {low} to {high}" if high is not None else f"int >= {low}"

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        # bool is an int subclass; True as "1 image" is a bug in the caller, not a value.
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestValidationError(
                attribute.name, f"must be an int, got {type(value).__name__}", allowed=allowed
            )
        if value < low or (high is not None and value > high):
            raise RequestValidationError(
                attribute.name, f"{value} is out of range", allowed=allowed
            )

    return check


def optional_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Refuse anything but an int (bool excluded); `None` (unset) passes."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise RequestValidationError(
            attribute.name, f"must be an int, got {type(value).__name__}", allowed="int"
        )


def one_of(allowed: Collection[str]) -> Validator:
    """Refuse a value that is not one of `allowed`; `None` (unset) passes."""
    listing = ", ".join(repr(a) for a in allowed)

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and value not in allowed:
            raise RequestValidationError(attribute.name, f"{value!r} is not valid", allowed=listing)

    return check


def optional_webhook_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Refuse anything but an absolute http(s) URL; `None` (unset) passes."""
    if value is None:
        return
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise RequestValidationError(
            attribute.name, f"{value!r} is not an http(s) URL", allowed="https://host/path"
        )
    if not urlsplit(value).netloc:
        raise RequestValidationError(attribute.name, "has no host", allowed="https://host/path")
