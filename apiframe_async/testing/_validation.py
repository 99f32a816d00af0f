"""Request validation as the API contract states it, with express-validator-shaped errors.

Each function takes the parsed JSON body and returns either a typed request or the list of
error items for a 400 `{"errors": [...]}`. Every problem is reported, not only the first.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

ErrorItem = dict[str, Any]

ETHNICITIES = frozenset(
    {
        "asian",
        "black",
        "latino",
        "middle eastern",
        "native american",
        "pacific islander",
        "white",
    }
)
GENDERS = frozenset({"female", "male"})
ASPECT_RATIOS = (
    "1:1",
    "4:3",
    "3:4",
    "16:9",
    "9:16",
    "3:2",
    "2:3",
    "21:9",
    "9:21",
    "5:4",
    "4:5",
    "1:2",
    "2:1",
    "1:3",
    "3:1",
    "1:4",
    "4:1",
    "custom",
)
NUMBERS_OF_IMAGES = ("1", "2", "3", "4")
MIN_IMAGES, MAX_IMAGES = 10, 30
MIN_TASK_IDS, MAX_TASK_IDS = 2, 20
MAX_SIZE_DIGITS = 9
DEFAULT_TRIGGER_WORD = "TOKMSN"
_MISSING = object()


def error(path: str | None, msg: str, value: object = _MISSING) -> ErrorItem:
    """One error item: `msg` and `path` as the contract shows, plus express-validator's keys."""
    item: ErrorItem = {"type": "field" if path else "request", "msg": msg}
    if path:
        item.update(path=path, location="body")
    if value is not _MISSING and isinstance(value, str | int | float | bool | None):
        item["value"] = value
    return item


@attrs.frozen
class Invalid:
    """A body that failed validation: the items of the 400 reply."""

    errors: list[ErrorItem]


@attrs.frozen
class Webhook:
    """Where and with which secret to POST a task's progress."""

    url: str
    secret: str | None


@attrs.frozen
class UploadRequest:
    """A valid `/ai-photo-upload` body (the images are only counted)."""

    image_count: int
    ethnicity: str
    gender: str
    age: int | None
    webhook: Webhook | None


@attrs.frozen
class TrainRequest:
    """A valid `/ai-photo-train` body."""

    training_images_id: str
    trigger_word: str
    webhook: Webhook | None


@attrs.frozen
class GenerateRequest:
    """A valid `/ai-photo-generate` body, with the wire strings turned into ints."""

    training_id: str
    prompt: str
    aspect_ratio: str
    width: int | None
    height: int | None
    number_of_images: int
    seed: int | None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _required_str(body: Mapping[str, Any], name: str, errors: list[ErrorItem]) -> str:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        errors.append(error(name, f"{name} is required"))
    elif not isinstance(value, str) or not value.strip():
        errors.append(error(name, f"{name} must be a non-empty string", value))
    else:
        return value
    return ""


def _choice(
    body: Mapping[str, Any],
    name: str,
    choices: frozenset[str] | tuple[str, ...],
    errors: list[ErrorItem],
) -> str:
    value = _required_str(body, name, errors)
    if value and value not in choices:
        errors.append(error(name, f"{name} must be one of: {', '.join(sorted(choices))}", value))
    return value


def _optional_int(body: Mapping[str, Any], name: str, errors: list[ErrorItem]) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        errors.append(error(name, f"{name} must be an integer", value))
        return None
    return int(value)


def _images(body: Mapping[str, Any], errors: list[ErrorItem]) -> int:
    images = body.get("images")
    if not isinstance(images, list):
        errors.append(error("images", "images is required and must be a list of base64 strings"))
        return 0
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        msg = f"images must hold {MIN_IMAGES} to {MAX_IMAGES} images, got {len(images)}"
        errors.append(error("images", msg))
    errors.extend(
        error(f"images[{index}]", "each image must be a non-empty base64 string")
        for index, image in enumerate(images)
        if not _is_base64(image)
    )
    return len(images)


def _is_base64(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _webhook(body: Mapping[str, Any], errors: list[ErrorItem]) -> Webhook | None:
    url, secret = body.get("webhook_url"), body.get("webhook_secret")
    if secret is not None and not isinstance(secret, str):
        errors.append(error("webhook_secret", "webhook_secret must be a string"))
        secret = None
    if url is None:
        return None
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in {"http", "https"} or not parsed.netloc:
        errors.append(error("webhook_url", "webhook_url must be an http(s) URL", url))
        return None
    return Webhook(url, secret)


def upload(body: Mapping[str, Any]) -> UploadRequest | Invalid:
    """Validate an `/ai-photo-upload` body."""
    errors: list[ErrorItem] = []
    count = _images(body, errors)
    ethnicity = _choice(body, "ethnicity", ETHNICITIES, errors)
    gender = _choice(body, "gender", GENDERS, errors)
    age = _optional_int(body, "age", errors)
    webhook = _webhook(body, errors)
    return Invalid(errors) if errors else UploadRequest(count, ethnicity, gender, age, webhook)


def train(body: Mapping[str, Any]) -> TrainRequest | Invalid:
    """Validate an `/ai-photo-train` body (the reference to the upload is checked later)."""
    errors: list[ErrorItem] = []
    images_id = _required_str(body, "training_images_id", errors)
    trigger_word = body.get("trigger_word")
    if trigger_word is None:
        trigger_word = DEFAULT_TRIGGER_WORD
    elif not isinstance(trigger_word, str) or not trigger_word.strip():
        errors.append(
            error("trigger_word", "trigger_word must be a non-empty string", trigger_word)
        )
    webhook = _webhook(body, errors)
    return Invalid(errors) if errors else TrainRequest(images_id, str(trigger_word), webhook)


def _digits(body: Mapping[str, Any], name: str, errors: list[ErrorItem]) -> int | None:
    value = body.get(name)
    if value is None:
        errors.append(error(name, f"{name} is required when aspect_ratio is custom"))
        return None
    digits = isinstance(value, str) and value.isascii() and value.isdigit()
    digits = digits and len(value) <= MAX_SIZE_DIGITS
    if not digits or not int(value):
        errors.append(error(name, f"{name} must be a string of 1 to 9 digits, above 0", value))
        return None
    return int(value)


def _size(
    body: Mapping[str, Any], aspect_ratio: str, errors: list[ErrorItem]
) -> tuple[int | None, ...]:
    if aspect_ratio == "custom":
        return _digits(body, "width", errors), _digits(body, "height", errors)
    errors.extend(
        error(name, f"{name} is only allowed with aspect_ratio custom")
        for name in ("width", "height")
        if body.get(name) is not None
    )
    return None, None


def generate(body: Mapping[str, Any]) -> GenerateRequest | Invalid:
    """Validate an `/ai-photo-generate` body (the reference to the training is checked later)."""
    errors: list[ErrorItem] = []
    training_id = _required_str(body, "training_id", errors)
    prompt = _required_str(body, "prompt", errors)
    aspect_ratio = body.get("aspect_ratio", "1:1")
    if aspect_ratio not in ASPECT_RATIOS:
        errors.append(
            error("aspect_ratio", "aspect_ratio must be one of the documented ratios", aspect_ratio)
        )
    width, height = _size(body, aspect_ratio if isinstance(aspect_ratio, str) else "", errors)
    number = body.get("number_of_images", "1")
    if number not in NUMBERS_OF_IMAGES:
        errors.append(
            error("number_of_images", 'number_of_images must be a string "1" to "4"', number)
        )
    seed = _optional_int(body, "seed", errors)
    if errors:
        return Invalid(errors)
    return GenerateRequest(training_id, prompt, aspect_ratio, width, height, int(number), seed)


def task_id(body: Mapping[str, Any]) -> str | Invalid:
    """Validate a `/fetch` body."""
    errors: list[ErrorItem] = []
    value = _required_str(body, "task_id", errors)
    return Invalid(errors) if errors else value


def task_ids(body: Mapping[str, Any]) -> list[str] | Invalid:
    """Validate a `/fetch-many` body: 2 to 20 task ids (duplicates are reported once)."""
    ids = body.get("task_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        return Invalid([error("task_ids", "task_ids must be a list of task id strings")])
    if not MIN_TASK_IDS <= len(ids) <= MAX_TASK_IDS:
        msg = f"task_ids must hold {MIN_TASK_IDS} to {MAX_TASK_IDS} ids, got {len(ids)}"
        return Invalid([error("task_ids", msg)])
    return list(dict.fromkeys(ids))
