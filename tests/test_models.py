"""The domain: GenerateRequest's rules, TaskStatus as an open enum, Task's derived state."""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
import pytest

from apiframe_async import (
    ASPECT_RATIOS,
    Account,
    GenerateRequest,
    Generation,
    PollPolicy,
    RequestValidationError,
    RetryPolicy,
    Task,
    TaskStatus,
)

#: The aspect ratios the API documents for /ai-photo-generate, in the docs' order.
DOCUMENTED_RATIOS = (
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

DOCUMENTED_STATUSES = {
    "pending": False,
    "staged": False,
    "starting": False,
    "processing": False,
    "retry": False,
    "retrying": False,
    "finished": True,
    "failed": True,
}

REQUIRED: dict[str, Any] = {"training_id": "3492deb6-c5a2-4e3a", "prompt": "TOKMSN man in a suit"}
CUSTOM: dict[str, Any] = {"aspect_ratio": "custom", "width": 1024, "height": 1536}


def refusal(**fields: Any) -> RequestValidationError:
    """The error GenerateRequest raises for the required fields overridden by `fields`."""
    with pytest.raises(RequestValidationError) as info:
        GenerateRequest(**{**REQUIRED, **fields})
    return info.value


def assert_names(error: RequestValidationError, field: str, *allowed: str) -> None:
    """`error` is a ValueError naming `field` and saying what is allowed."""
    assert isinstance(error, ValueError)
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    assert error.allowed is not None
    assert f"(allowed: {error.allowed})" in str(error)
    for word in allowed:
        assert word in error.allowed


# --- aspect_ratio -------------------------------------------------------------------------


def test_aspect_ratios_are_the_documented_eighteen() -> None:
    """ASPECT_RATIOS lists exactly the 18 documented values, in the documented order."""
    assert ASPECT_RATIOS == DOCUMENTED_RATIOS
    assert len(set(ASPECT_RATIOS)) == 18


@pytest.mark.parametrize(
    "ratio", [pytest.param(r, id=r) for r in DOCUMENTED_RATIOS if r != "custom"]
)
def test_every_documented_ratio_is_accepted(ratio: str) -> None:
    """Each documented fixed ratio builds a request that keeps it."""
    request = GenerateRequest(**REQUIRED, aspect_ratio=ratio)  # type: ignore[arg-type]
    assert request.aspect_ratio == ratio


def test_custom_ratio_is_accepted_with_both_sizes() -> None:
    """aspect_ratio='custom' with a width and a height builds a request."""
    request = GenerateRequest(**REQUIRED, **CUSTOM)
    assert (request.aspect_ratio, request.width, request.height) == ("custom", 1024, 1536)


@pytest.mark.parametrize(
    "ratio",
    [
        pytest.param("16:10", id="undocumented-ratio"),
        pytest.param("1:1 ", id="trailing-space"),
        pytest.param("CUSTOM", id="upper-case"),
        pytest.param("", id="empty"),
        pytest.param("1/1", id="slash"),
        pytest.param("square", id="word"),
        pytest.param(1, id="int"),
        pytest.param(1.0, id="float"),
        pytest.param(("1", "1"), id="tuple"),
    ],
)
def test_undocumented_ratio_is_refused_listing_all_allowed(ratio: object) -> None:
    """A ratio outside the documented 18 is refused; the message lists every allowed one."""
    error = refusal(aspect_ratio=ratio)
    assert_names(error, "aspect_ratio", *(repr(r) for r in DOCUMENTED_RATIOS))


# --- width and height ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"width": 1024}, id="width-no-ratio"),
        pytest.param({"height": 1024}, id="height-no-ratio"),
        pytest.param({"width": 1024, "height": 768}, id="both-no-ratio"),
        pytest.param({"aspect_ratio": "1:1", "width": 1024, "height": 1024}, id="both-with-1:1"),
        pytest.param({"aspect_ratio": "16:9", "height": 1024}, id="height-with-16:9"),
    ],
)
def test_size_without_custom_ratio_is_refused(fields: dict[str, Any]) -> None:
    """width or height without aspect_ratio='custom' is refused, naming the size field."""
    error = refusal(**fields)
    assert error.field in {"width", "height"}
    assert error.field in fields
    assert_names(error, error.field, "custom")


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        pytest.param({"width": 1024}, "height", id="height-missing"),
        pytest.param({"height": 1024}, "width", id="width-missing"),
        pytest.param({}, "width", id="both-missing"),
    ],
)
def test_custom_ratio_needs_both_sizes(fields: dict[str, Any], missing: str) -> None:
    """aspect_ratio='custom' without both width and height is refused, naming the missing one."""
    error = refusal(aspect_ratio="custom", **fields)
    assert_names(error, missing, "width and height")


BAD_SIZES = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(True, id="bool"),
    pytest.param(1024.0, id="float"),
    pytest.param("1024", id="str"),
]


@pytest.mark.parametrize("name", ["width", "height"])
@pytest.mark.parametrize("value", BAD_SIZES)
def test_custom_size_must_be_a_positive_int(name: str, value: object) -> None:
    """With aspect_ratio='custom', a width or height that is not an int >= 1 is refused."""
    error = refusal(**{**CUSTOM, name: value})
    assert_names(error, name, ">= 1")


# --- number_of_images ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_one_to_four_images_are_accepted(count: int) -> None:
    """number_of_images from 1 to 4 is accepted."""
    assert GenerateRequest(**REQUIRED, number_of_images=count).number_of_images == count


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(0, id="zero"),
        pytest.param(5, id="five"),
        pytest.param(-1, id="negative"),
        pytest.param(True, id="bool"),
        pytest.param("2", id="str"),
        pytest.param(2.0, id="float"),
    ],
)
def test_number_of_images_out_of_range_or_type_is_refused(count: object) -> None:
    """number_of_images that is not an int from 1 to 4 is refused, saying '1 to 4'."""
    assert_names(refusal(number_of_images=count), "number_of_images", "1 to 4")


# --- prompt and training_id ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["prompt", "training_id"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="spaces"),
        pytest.param("\n\t", id="whitespace"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param(b"TOKMSN", id="bytes"),
        pytest.param(["TOKMSN"], id="list"),
    ],
)
def test_prompt_and_training_id_must_be_non_empty_strings(name: str, value: object) -> None:
    """prompt and training_id refuse anything but a string with a non-blank character."""
    assert_names(refusal(**{name: value}), name, "non-empty str")


# --- seed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, -1, 2**40])
def test_any_int_seed_is_accepted(seed: int) -> None:
    """seed is any int, zero and negatives included."""
    assert GenerateRequest(**REQUIRED, seed=seed).seed == seed


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(True, id="bool"),
        pytest.param(7.0, id="float"),
        pytest.param("7", id="str"),
        pytest.param([7], id="list"),
    ],
)
def test_seed_must_be_an_int(seed: object) -> None:
    """seed refuses bools, floats and strings."""
    assert_names(refusal(seed=seed), "seed", "int")


def test_evolve_validates_again() -> None:
    """attrs.evolve() on a valid request checks the rules again."""
    request = GenerateRequest(**REQUIRED)
    with pytest.raises(RequestValidationError) as info:
        attrs.evolve(request, number_of_images=9)
    assert info.value.field == "number_of_images"


def test_repr_shows_only_set_fields() -> None:
    """repr() names the required fields and the optional ones that are set, nothing else."""
    assert repr(GenerateRequest(training_id="t", prompt="p")) == (
        "GenerateRequest(training_id='t', prompt='p')"
    )
    assert repr(GenerateRequest(training_id="t", prompt="p", seed=0, number_of_images=2)) == (
        "GenerateRequest(training_id='t', prompt='p', number_of_images=2, seed=0)"
    )
    full = repr(GenerateRequest(training_id="t", prompt="p", **CUSTOM))
    assert full == (
        "GenerateRequest(training_id='t', prompt='p', aspect_ratio='custom', "
        "width=1024, height=1536)"
    )


# --- TaskStatus ---------------------------------------------------------------------------


def test_task_status_members_are_the_documented_statuses() -> None:
    """TaskStatus has one member per documented status, and no other."""
    assert {s.value for s in TaskStatus} == set(DOCUMENTED_STATUSES)


@pytest.mark.parametrize(
    ("value", "terminal"), [pytest.param(v, t, id=v) for v, t in DOCUMENTED_STATUSES.items()]
)
def test_known_status(value: str, terminal: bool) -> None:
    """Each documented status parses to its member, is known, and is terminal iff it ends."""
    status = TaskStatus(value)
    assert status is TaskStatus[value.upper()]
    assert status == value
    assert status.is_known
    assert status.is_terminal is terminal


def test_unknown_status_parses_and_is_not_terminal() -> None:
    """An undocumented status parses, equals (and hashes like) its string, and is not over."""
    status = TaskStatus("queued")
    assert isinstance(status, TaskStatus)
    assert status == "queued"
    assert str(status) == "queued"
    assert {"queued": 1}[status] == 1
    assert not status.is_terminal
    assert not status.is_known
    assert "queued" not in {s.value for s in TaskStatus}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("queued", id="new-word"),
        pytest.param("finished_ok", id="near-miss"),
    ],
)
def test_is_known_only_for_documented_values(value: str) -> None:
    """is_known is False for any value that is not a documented status."""
    status = TaskStatus(value)
    assert not status.is_known
    assert not status.is_terminal


@pytest.mark.parametrize(
    ("value", "member"),
    [
        pytest.param("FINISHED", TaskStatus.FINISHED, id="upper-case-finished"),
        pytest.param("Processing", TaskStatus.PROCESSING, id="capitalised-processing"),
    ],
)
def test_a_documented_status_in_another_case_is_that_status(value: str, member: TaskStatus) -> None:
    """'FINISHED' is the documented 'finished': known, and terminal if that one is."""
    status = TaskStatus(value)
    assert status is member
    assert status.is_known
    assert status.is_terminal == member.is_terminal


def test_status_refuses_non_strings() -> None:
    """A status that is not a string is no TaskStatus."""
    not_a_string: Any = 5
    with pytest.raises(ValueError):
        TaskStatus(not_a_string)


# --- Task ---------------------------------------------------------------------------------

WHEN = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("fields", "finished"),
    [
        pytest.param({"image_urls": ("https://cdn/x.png",)}, True, id="images"),
        pytest.param({"trigger_word": "TOKMSN"}, True, id="trigger-word"),
        pytest.param({"expires_at": WHEN}, True, id="expires-at"),
        pytest.param({}, False, id="nothing"),
        pytest.param({"message": "working on it"}, False, id="message-only"),
        pytest.param({"percentage": 40}, False, id="percentage-only"),
    ],
)
def test_task_without_status_is_finished_when_it_has_a_payload(
    fields: dict[str, Any], finished: bool
) -> None:
    """A result with no status counts as finished when it carries a result payload."""
    task = Task(task_id="t", **fields)
    assert task.status is None
    assert task.is_finished is finished
    assert task.is_terminal is finished
    assert not task.is_failed


@pytest.mark.parametrize(
    ("status", "finished", "failed"),
    [
        pytest.param(TaskStatus.FINISHED, True, False, id="finished"),
        pytest.param(TaskStatus.FAILED, False, True, id="failed"),
        pytest.param(TaskStatus.PROCESSING, False, False, id="processing"),
        pytest.param(TaskStatus("queued"), False, False, id="unknown"),
    ],
)
def test_task_status_decides_when_present(status: TaskStatus, finished: bool, failed: bool) -> None:
    """With a status, the status alone decides, even if images are already there."""
    task = Task(task_id="t", status=status, image_urls=("https://cdn/x.png",))
    assert task.is_finished is finished
    assert task.is_failed is failed
    assert task.is_terminal is (finished or failed)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        pytest.param({"error": "NSFW prompt", "message": "failed"}, "NSFW prompt", id="error-wins"),
        pytest.param({"message": "training diverged"}, "training diverged", id="message"),
        pytest.param({}, None, id="none"),
    ],
)
def test_failure_reason(fields: dict[str, Any], reason: str | None) -> None:
    """failure_reason is the server's `error`, else its `message`, else None."""
    assert Task(task_id="t", status=TaskStatus.FAILED, **fields).failure_reason == reason


# --- immutability -------------------------------------------------------------------------

FROZEN = [
    pytest.param(GenerateRequest(**REQUIRED), "prompt", id="GenerateRequest"),
    pytest.param(Task(task_id="t"), "status", id="Task"),
    pytest.param(
        Generation(task_id="t", status=TaskStatus.FINISHED, image_urls=()),
        "image_urls",
        id="Generation",
    ),
    pytest.param(
        Account(email="a@b.c", credits=1, total_images=0, plan="basic"), "credits", id="Account"
    ),
    pytest.param(RetryPolicy(), "max_retries", id="RetryPolicy"),
    pytest.param(PollPolicy(), "deadline", id="PollPolicy"),
]


@pytest.mark.parametrize(("instance", "name"), FROZEN)
def test_frozen_classes_cannot_be_mutated(instance: object, name: str) -> None:
    """Setting or deleting an attribute of a frozen class raises."""
    before = getattr(instance, name)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(instance, name, before)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        delattr(instance, name)
    assert getattr(instance, name) == before


def test_extra_is_a_read_only_copy() -> None:
    """`extra` cannot be changed, neither through the result nor through the dict passed in."""
    given = {"seed_used": 7}
    task = Task(task_id="t", extra=given)
    given["seed_used"] = 8
    assert task.extra == {"seed_used": 7}
    with pytest.raises(TypeError):
        task.extra["seed_used"] = 9  # type: ignore[index]
