"""The domain: what a caller builds and what the API gives back, as frozen attrs classes.

These classes know nothing of the wire format (string numbers, renamed or missing fields):
that is `_wire.py`'s business.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import attrs

from ._errors import RequestValidationError
from ._validators import (
    int_between,
    non_empty_str,
    one_of,
    optional_int,
    optional_non_empty_str,
    optional_webhook_url,
)

AspectRatio = Literal[
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
]
"""The aspect ratios `/ai-photo-generate` accepts; `custom` requires `width` and `height`."""

ASPECT_RATIOS: Final[tuple[str, ...]] = get_args(AspectRatio)

Ethnicity = Literal[
    "asian",
    "black",
    "latino",
    "middle eastern",
    "native american",
    "pacific islander",
    "white",
]
"""The subject's ethnicity, as `/ai-photo-upload` names it."""

ETHNICITIES: Final[tuple[str, ...]] = get_args(Ethnicity)

Gender = Literal["female", "male"]
"""The subject's gender, as `/ai-photo-upload` names it."""

GENDERS: Final[tuple[str, ...]] = get_args(Gender)

#: How many photos of the subject an upload takes.
MIN_IMAGES: Final = 10
MAX_IMAGES: Final = 30

EMPTY_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


class TaskStatus(enum.StrEnum):
    """A task's status: an open enum, so a status the server invents tomorrow still parses.

    Unknown values become members on the fly (`TaskStatus("queued")`), compare equal to
    their string, and count as not terminal.

    Examples:
        >>> TaskStatus("finished").is_terminal
        True
        >>> TaskStatus("queued") == "queued", TaskStatus("queued").is_terminal
        (True, False)
    """

    PENDING = "pending"
    STAGED = "staged"
    STARTING = "starting"
    PROCESSING = "processing"
    RETRY = "retry"
    RETRYING = "retrying"
    FINISHED = "finished"
    FAILED = "failed"

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if not isinstance(value, str):
            return None
        if value.lower() in cls._value2member_map_:
            # "FINISHED" is the documented "finished" in other clothes, not a new status.
            return cls(value.lower())
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    @property
    def is_terminal(self) -> bool:
        """Whether the task is over (`finished` or `failed`)."""
        return self in (TaskStatus.FINISHED, TaskStatus.FAILED)

    @property
    def is_known(self) -> bool:
        """Whether the status is one the API documents."""
        return self._value_ in type(self)._value2member_map_


def _check_custom_size(request: GenerateRequest) -> None:
    custom = request.aspect_ratio == "custom"
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and not custom:
            raise RequestValidationError(
                name,
                f"is only allowed with aspect_ratio='custom', not {request.aspect_ratio!r}",
                allowed="set aspect_ratio='custom', or leave width and height unset",
            )
        if value is None and custom:
            raise RequestValidationError(
                name,
                "is required when aspect_ratio='custom'",
                allowed="a positive int, with both width and height set",
            )


@attrs.frozen(kw_only=True)
class GenerateRequest:
    """One generation: a prompt for a trained subject. Validated when built.

    Any rule broken raises `RequestValidationError` (also a `ValueError`) naming the field
    and the allowed values, before anything is sent.

    Examples:
        >>> GenerateRequest(training_id="3492deb6", prompt="a portrait of TOKMSN man")
        GenerateRequest(training_id='3492deb6', prompt='a portrait of TOKMSN man')
        >>> GenerateRequest(training_id="t", prompt="p", seed="7")
        Traceback (most recent call last):
        ...
        apiframe_async.RequestValidationError: seed: must be an int, got str (allowed: int)

    Attributes:
        training_id: The task id of the finished training.
        prompt: The text; mention the training's trigger word to get the subject.
        aspect_ratio: One of `ASPECT_RATIOS`; the server's default is `1:1`.
        width: Pixels; only with `aspect_ratio="custom"`, and then with `height`.
        height: Pixels; only with `aspect_ratio="custom"`, and then with `width`.
        number_of_images: 1 to 4 photos from this prompt; each costs one credit.
        seed: For reproducible results.
    """

    training_id: str = attrs.field(validator=non_empty_str)
    prompt: str = attrs.field(validator=non_empty_str)
    aspect_ratio: AspectRatio | None = attrs.field(default=None, validator=one_of(ASPECT_RATIOS))
    width: int | None = attrs.field(default=None, validator=int_between(1))
    height: int | None = attrs.field(default=None, validator=int_between(1))
    number_of_images: int | None = attrs.field(default=None, validator=int_between(1, 4))
    seed: int | None = attrs.field(default=None, validator=optional_int)

    def __attrs_post_init__(self) -> None:
        """Check the rules that span fields."""
        _check_custom_size(self)

    def __repr__(self) -> str:
        """Show the set fields only: a bulk job's logs stay readable."""
        shown = [f"training_id={self.training_id!r}", f"prompt={self.prompt!r}"]
        shown += [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in attrs.fields(GenerateRequest)[2:]
            if getattr(self, f.name) is not None
        ]
        return f"GenerateRequest({', '.join(shown)})"


@attrs.frozen(kw_only=True)
class Generation:
    """The result of a finished generation.

    Attributes:
        task_id: The generation's task id.
        status: Always `finished` for a result `generate()` returns.
        image_urls: The generated photos, in order.
        task_type: `ai-photo-generate`, as the server reports it.
        extra: Any reply fields this version of the library does not know, untouched.
    """

    task_id: str
    status: TaskStatus
    image_urls: tuple[str, ...]
    task_type: str | None = None
    extra: Mapping[str, Any] = attrs.field(default=EMPTY_EXTRA, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class Task:
    """A task's current state, as `/fetch`, `/fetch-many` and webhooks report it.

    One shape for every task type: fields a type does not use are `None` or empty.

    Attributes:
        task_id: The task.
        status: The task's status, or `None` when the server sent none (some finished
            results of some task types carry no status).
        task_type: The kind of task, when the server says.
        message: The server's words on progress or on the outcome.
        percentage: Training progress, 0 to 100 (the wire's `"40"` and `100` both parse).
        expires_at: When prepared training images expire (upload tasks).
        trigger_word: The word that stands for the subject (training tasks). The one in
            the result is authoritative, even if it differs from the one asked for.
        image_urls: Generated photos (generation tasks).
        error: The server's error text, when it sends one.
        extra: Any reply fields this version of the library does not know, untouched.
    """

    task_id: str
    status: TaskStatus | None = None
    task_type: str | None = None
    message: str | None = None
    percentage: int | None = None
    expires_at: dt.datetime | None = None
    trigger_word: str | None = None
    image_urls: tuple[str, ...] = ()
    error: str | None = None
    extra: Mapping[str, Any] = attrs.field(default=EMPTY_EXTRA, converter=_frozen_mapping)

    @property
    def is_failed(self) -> bool:
        """Whether the task ended in failure."""
        return self.status == TaskStatus.FAILED

    @property
    def is_finished(self) -> bool:
        """Whether the task ended well; a result with a payload and no status counts."""
        if self.status is None:
            return bool(self.image_urls or self.trigger_word or self.expires_at)
        return self.status == TaskStatus.FINISHED

    @property
    def is_terminal(self) -> bool:
        """Whether the task is over, either way."""
        return self.is_finished or self.is_failed

    @property
    def failure_reason(self) -> str | None:
        """The server's explanation of a failure: `error`, else `message`."""
        return self.error or self.message


@attrs.frozen(kw_only=True)
class Account:
    """The account behind the API key.

    Attributes:
        email: The account's email address.
        credits: Credits left.
        total_images: Images generated so far.
        plan: The plan's name.
        next_billing_date: As the server sends it, when it does.
        extra: Any reply fields this version of the library does not know, untouched.
    """

    email: str
    credits: int
    total_images: int
    plan: str
    next_billing_date: str | None = None
    extra: Mapping[str, Any] = attrs.field(default=EMPTY_EXTRA, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class UploadRequest:
    """The photos of one subject, to be prepared for training. Validated when built.

    Built by `AsyncApiframe.upload_images()`, which reads and encodes the files.

    Attributes:
        images: 10 to 30 photos, each as base64 text of the file's bytes.
        ethnicity: One of `ETHNICITIES`.
        gender: One of `GENDERS`.
        age: The subject's age in years, if given.
        webhook_url: Where the server POSTs progress and the result.
        webhook_secret: Sent back in each webhook's `x-webhook-secret` header; never shown
            in a repr.
    """

    images: tuple[str, ...] = attrs.field(repr=lambda images: f"<{len(images)} images>")
    ethnicity: Ethnicity = attrs.field(validator=one_of(ETHNICITIES))
    gender: Gender = attrs.field(validator=one_of(GENDERS))
    age: int | None = attrs.field(default=None, validator=int_between(1, 130))
    webhook_url: str | None = attrs.field(default=None, validator=optional_webhook_url)
    webhook_secret: str | None = attrs.field(
        default=None, repr=False, validator=optional_non_empty_str
    )

    @images.validator
    def _check_count(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not MIN_IMAGES <= len(value) <= MAX_IMAGES:
            raise RequestValidationError(
                attribute.name,
                f"{len(value)} images given",
                allowed=f"{MIN_IMAGES} to {MAX_IMAGES} photos of the subject",
            )


@attrs.frozen(kw_only=True)
class TrainRequest:
    """A training on prepared photos. Validated when built.

    Attributes:
        training_images_id: The task id of the finished upload.
        trigger_word: The word that will stand for the subject in prompts; the server's
            default is `TOKMSN`.
        webhook_url: Where the server POSTs progress and the result.
        webhook_secret: Sent back in each webhook's `x-webhook-secret` header; never shown
            in a repr.
    """

    training_images_id: str = attrs.field(validator=non_empty_str)
    trigger_word: str | None = attrs.field(default=None, validator=optional_non_empty_str)
    webhook_url: str | None = attrs.field(default=None, validator=optional_webhook_url)
    webhook_secret: str | None = attrs.field(
        default=None, repr=False, validator=optional_non_empty_str
    )


@attrs.frozen(kw_only=True)
class SubmittedTask:
    """A task the server accepted and now runs: wait for it, or fetch it, by its id.

    Attributes:
        task_id: The new task.
        extra: Any other reply fields, untouched.
    """

    task_id: str
    extra: Mapping[str, Any] = attrs.field(default=EMPTY_EXTRA, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class TaskBatch:
    """The tasks `fetch_many()` found, and the ids the server left out.

    Attributes:
        tasks: Each task found, by id, in the order asked for.
        missing: Ids the server did not report (unknown to it, or expired).
    """

    tasks: Mapping[str, Task] = attrs.field(converter=_frozen_mapping)
    missing: tuple[str, ...] = ()
