"""The wire format: request bodies as the API documents them, replies parsed strictly."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import cattrs
import pytest

from apiframe_async import (
    Account,
    GenerateRequest,
    ResponseValidationError,
    Task,
    TaskStatus,
)
from apiframe_async._wire import Wire, make_converter

LENIENT = Wire()
#: The strict copy: a reply key the models do not know is an error, so fixtures cannot drift.
STRICT = Wire(make_converter(forbid_extra_keys=True))

# --- request bodies -----------------------------------------------------------------------


def test_full_generate_body_matches_the_contract() -> None:
    """width, height and number_of_images go out as digit strings, seed as an int."""
    request = GenerateRequest(
        training_id="3492deb6",
        prompt="a realistic portrait of TOKMSN man wearing a suit",
        aspect_ratio="custom",
        width=1024,
        height=1536,
        number_of_images=2,
        seed=7,
    )
    body = LENIENT.body(request)
    assert body == {
        "training_id": "3492deb6",
        "prompt": "a realistic portrait of TOKMSN man wearing a suit",
        "aspect_ratio": "custom",
        "width": "1024",
        "height": "1536",
        "number_of_images": "2",
        "seed": 7,
    }
    assert json.loads(json.dumps(body)) == body


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, {}, id="required-only"),
        pytest.param({"number_of_images": 3}, {"number_of_images": "3"}, id="count-as-string"),
        pytest.param({"seed": 0}, {"seed": 0}, id="seed-zero-kept"),
        pytest.param({"seed": -5}, {"seed": -5}, id="negative-seed"),
        pytest.param({"aspect_ratio": "1:1"}, {"aspect_ratio": "1:1"}, id="default-ratio-sent"),
        pytest.param({"aspect_ratio": "9:21"}, {"aspect_ratio": "9:21"}, id="ratio"),
    ],
)
def test_unset_optionals_are_omitted(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    """Only set fields are sent: no nulls, and a falsy but set value (seed=0) is kept."""
    body = LENIENT.body(GenerateRequest(training_id="t", prompt="p", **fields))
    assert body == {"training_id": "t", "prompt": "p", **expected}
    assert None not in body.values()


# --- replies as documented ----------------------------------------------------------------

CONTRACT_REPLIES = [
    pytest.param(
        {"task_id": "u1", "status": "processing", "message": "Preparing images"},
        {"status": TaskStatus.PROCESSING, "message": "Preparing images"},
        id="upload-processing",
    ),
    pytest.param(
        {
            "task_id": "u1",
            "status": "finished",
            "message": "Images ready for training",
            "expires_at": "2025-03-01T12:00:00Z",
        },
        {
            "status": TaskStatus.FINISHED,
            "expires_at": dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC),
        },
        id="upload-finished",
    ),
    pytest.param(
        {
            "task_id": "tr1",
            "status": "processing",
            "message": "Training is in progress",
            "percentage": "40",
        },
        {"status": TaskStatus.PROCESSING, "percentage": 40},
        id="train-processing",
    ),
    pytest.param(
        {
            "task_id": "tr1",
            "status": "finished",
            "message": "Training completed",
            "percentage": 100,
            "trigger_word": "TOKMSN",
        },
        {"status": TaskStatus.FINISHED, "percentage": 100, "trigger_word": "TOKMSN"},
        id="train-finished",
    ),
    pytest.param(
        {
            "task_id": "g1",
            "status": "finished",
            "task_type": "ai-photo-generate",
            "image_urls": ["https://cdn/1.png", "https://cdn/2.png"],
        },
        {
            "task_type": "ai-photo-generate",
            "image_urls": ("https://cdn/1.png", "https://cdn/2.png"),
        },
        id="generate-finished",
    ),
    pytest.param(
        {"task_id": "g1", "status": "failed", "error": "NSFW"},
        {"status": TaskStatus.FAILED, "error": "NSFW"},
        id="failed-with-error",
    ),
]


@pytest.mark.parametrize(("reply", "expected"), CONTRACT_REPLIES)
@pytest.mark.parametrize(
    "wire", [pytest.param(LENIENT, id="lenient"), pytest.param(STRICT, id="strict")]
)
def test_documented_replies_parse(
    reply: dict[str, Any], expected: dict[str, Any], wire: Wire
) -> None:
    """Every documented reply shape parses, even with the strict converter."""
    task = wire.task(reply)
    assert task.task_id == reply["task_id"]
    for name, value in expected.items():
        assert getattr(task, name) == value
    assert task.extra == {}


def test_upload_progress_without_task_id_takes_the_id_asked_for() -> None:
    """The docs' progress reply has no task_id: the id that was fetched fills it in."""
    task = STRICT.task({"status": "processing", "message": "..."}, task_id="u1")
    assert task.task_id == "u1"
    assert STRICT.task({"task_id": "server-id"}, task_id="u1").task_id == "server-id"


@pytest.mark.parametrize(
    ("wire_value", "value"),
    [
        pytest.param("40", 40, id="string-while-running"),
        pytest.param(100, 100, id="number-when-finished"),
        pytest.param("100", 100, id="string-100"),
        pytest.param("0", 0, id="string-0"),
        pytest.param(40.0, 40, id="float"),
        pytest.param("12.5", 12, id="decimal-string"),
        pytest.param(None, None, id="null"),
    ],
)
def test_percentage_string_or_number(wire_value: object, value: int | None) -> None:
    """percentage is an int whether the wire sends "40" or 100."""
    assert STRICT.task({"task_id": "t", "percentage": wire_value}).percentage == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2025-03-01T12:00:00Z", dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC), id="zulu"),
        pytest.param(
            "2025-03-01T14:00:00+02:00", dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC), id="offset"
        ),
        pytest.param(
            "2025-03-01T12:00:00.250000+00:00",
            dt.datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=dt.UTC),
            id="fraction",
        ),
        pytest.param(
            "2025-03-01T12:00:00", dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC), id="naive-is-utc"
        ),
    ],
)
def test_expires_at_is_an_aware_datetime(text: str, expected: dt.datetime) -> None:
    """expires_at parses to a timezone-aware datetime, comparable with datetime.now(UTC)."""
    expires_at = STRICT.task({"task_id": "t", "expires_at": text}).expires_at
    assert expires_at is not None
    assert expires_at.tzinfo is not None
    assert expires_at == expected
    assert (expires_at < dt.datetime.now(dt.UTC)) is True


@pytest.mark.parametrize(
    ("reply", "next_billing_date"),
    [
        pytest.param({"next_billing_date": "2025-04-01"}, "2025-04-01", id="with-date"),
        pytest.param({"next_billing_date": None}, None, id="null-date"),
        pytest.param({}, None, id="no-date"),
    ],
)
def test_account_parses(reply: dict[str, Any], next_billing_date: str | None) -> None:
    """The account reply parses with or without next_billing_date."""
    data = {"email": "a@b.c", "credits": 120, "total_images": 35, "plan": "pro", **reply}
    account = STRICT.structure(data, Account)
    assert account == Account(
        email="a@b.c",
        credits=120,
        total_images=35,
        plan="pro",
        next_billing_date=next_billing_date,
    )


def test_generation_view_of_a_task() -> None:
    """A finished task's Generation keeps id, urls, type and extra; no status means finished."""
    task = LENIENT.task({"task_id": "g", "image_urls": ["https://cdn/1.png"], "cost": 1})
    generation = LENIENT.generation(task)
    assert generation.task_id == "g"
    assert generation.status is TaskStatus.FINISHED
    assert generation.image_urls == ("https://cdn/1.png",)
    assert generation.extra == {"cost": 1}


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "reply"),
    [
        pytest.param(
            Task,
            {"task_id": "t", "status": "finished", "seed": 7, "meta": {"gpu": "a100"}},
            id="task",
        ),
        pytest.param(
            Account,
            {
                "email": "a@b.c",
                "credits": 1,
                "total_images": 0,
                "plan": "basic",
                "seed": 7,
                "meta": {"gpu": "a100"},
            },
            id="account",
        ),
    ],
)
def test_unknown_keys_kept_by_lenient_refused_by_strict(
    cls: type[Task | Account], reply: dict[str, Any]
) -> None:
    """Unknown keys land in `extra` with the library's converter and fail the strict one."""
    parsed = LENIENT.structure(reply, cls)
    assert parsed.extra == {"seed": 7, "meta": {"gpu": "a100"}}
    with pytest.raises(ResponseValidationError) as info:
        STRICT.structure(reply, cls)
    assert any("seed" in problem for problem in info.value.problems)


def test_a_reply_key_named_extra_is_kept_not_lost() -> None:
    """A server key called `extra` is an unknown key like any other, kept in `extra`."""
    task = LENIENT.task({"task_id": "t", "extra": {"a": 1}})
    assert task.extra == {"extra": {"a": 1}}


# --- bad replies --------------------------------------------------------------------------

BAD_TASKS = [
    pytest.param({"task_id": 5}, "$.task_id", id="task_id-int"),
    pytest.param({"task_id": None}, "$.task_id", id="task_id-null"),
    pytest.param({"task_id": ["t"]}, "$.task_id", id="task_id-list"),
    pytest.param({}, "$.task_id", id="task_id-missing"),
    pytest.param({"task_id": "t", "image_urls": [1]}, "$.image_urls[0]", id="url-int"),
    pytest.param({"task_id": "t", "image_urls": ["u", None]}, "$.image_urls[1]", id="url-null"),
    pytest.param({"task_id": "t", "image_urls": [["u"]]}, "$.image_urls[0]", id="url-list"),
    pytest.param({"task_id": "t", "image_urls": None}, "$.image_urls", id="urls-null"),
    pytest.param({"task_id": "t", "image_urls": 3}, "$.image_urls", id="urls-int"),
    pytest.param(
        {"task_id": "t", "image_urls": "https://cdn/1.png"}, "$.image_urls", id="urls-str"
    ),
    pytest.param(
        {"task_id": "t", "image_urls": {"https://cdn/1.png": 1}}, "$.image_urls", id="urls-object"
    ),
    pytest.param({"task_id": "t", "status": 5}, "$.status", id="status-int"),
    pytest.param({"task_id": "t", "status": ["finished"]}, "$.status", id="status-list"),
    pytest.param({"task_id": "t", "message": 5}, "$.message", id="message-int"),
    pytest.param({"task_id": "t", "error": {"code": 1}}, "$.error", id="error-object"),
    pytest.param({"task_id": "t", "task_type": 1}, "$.task_type", id="task_type-int"),
    pytest.param({"task_id": "t", "trigger_word": True}, "$.trigger_word", id="trigger-bool"),
    pytest.param({"task_id": "t", "percentage": "forty"}, "$.percentage", id="percentage-word"),
    pytest.param({"task_id": "t", "percentage": True}, "$.percentage", id="percentage-bool"),
    pytest.param({"task_id": "t", "percentage": [40]}, "$.percentage", id="percentage-list"),
    pytest.param({"task_id": "t", "percentage": "inf"}, "$.percentage", id="percentage-inf"),
    pytest.param({"task_id": "t", "percentage": 1e400}, "$.percentage", id="percentage-huge"),
    pytest.param({"task_id": "t", "expires_at": "soon"}, "$.expires_at", id="expires-garbage"),
    pytest.param({"task_id": "t", "expires_at": 1735689600}, "$.expires_at", id="expires-epoch"),
    pytest.param({"task_id": "t", "expires_at": ""}, "$.expires_at", id="expires-empty"),
]


@pytest.mark.parametrize(("reply", "path"), BAD_TASKS)
def test_wrong_types_name_the_path(reply: dict[str, Any], path: str) -> None:
    """A field of the wrong type raises ResponseValidationError with that field's path."""
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.task(reply)
    problems = info.value.problems
    assert any(p.startswith(f"{path}: ") for p in problems), problems
    assert info.value.body


def test_problem_lines_read_path_first() -> None:
    """Each problem is one readable line: the path, then what was expected and what came."""
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.task({"task_id": 5, "image_urls": ["u", 1]})
    assert set(info.value.problems) == {
        "$.task_id: expected a string, got int",
        "$.image_urls[1]: expected a string, got int",
    }
    assert "$.task_id" in str(info.value)


def test_no_silent_coercion() -> None:
    """Strict hooks: a number is never turned into a string id, nor a float into an int."""
    with pytest.raises(ResponseValidationError):
        LENIENT.task({"task_id": 12})
    with pytest.raises(ResponseValidationError):
        LENIENT.structure(
            {"email": "a@b.c", "credits": 2.9, "total_images": 0, "plan": "p"}, Account
        )


ACCOUNT = {"email": "a@b.c", "credits": 1, "total_images": 0, "plan": "basic"}

BAD_ACCOUNTS = [
    pytest.param({**ACCOUNT, "credits": "10"}, "$.credits", id="credits-str"),
    pytest.param({**ACCOUNT, "credits": True}, "$.credits", id="credits-bool"),
    pytest.param({**ACCOUNT, "credits": None}, "$.credits", id="credits-null"),
    pytest.param({**ACCOUNT, "email": None}, "$.email", id="email-null"),
    pytest.param({**ACCOUNT, "next_billing_date": 20250401}, "$.next_billing_date", id="date-int"),
    pytest.param({k: v for k, v in ACCOUNT.items() if k != "plan"}, "$.plan", id="plan-missing"),
]


@pytest.mark.parametrize(("reply", "path"), BAD_ACCOUNTS)
def test_bad_account_names_the_path(reply: dict[str, Any], path: str) -> None:
    """An account reply of the wrong shape raises ResponseValidationError naming the field."""
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.structure(reply, Account)
    assert any(p.startswith(f"{path}: ") for p in info.value.problems), info.value.problems


NON_OBJECTS = [
    pytest.param([], id="empty-list"),
    pytest.param([{"task_id": "t"}], id="list-of-object"),
    pytest.param("task", id="string"),
    pytest.param(1, id="number"),
    pytest.param(None, id="null"),
    pytest.param(True, id="bool"),
]


@pytest.mark.parametrize("data", NON_OBJECTS)
@pytest.mark.parametrize(
    "cls", [pytest.param(Task, id="task"), pytest.param(Account, id="account")]
)
def test_non_object_json_is_refused(data: object, cls: type[Task | Account]) -> None:
    """JSON that is not an object raises ResponseValidationError at `$`."""
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.structure(data, cls)
    assert info.value.problems == (f"$: expected a JSON object, got {type(data).__name__}",)


#: Shapes whose refusal test_wrong_types_name_the_path already demands; the next test is
#: about what escapes when a reply is refused, so it leaves them out.
COVERED_ABOVE = {"urls-str", "urls-object"}


@pytest.mark.parametrize(
    "data",
    [
        *NON_OBJECTS,
        *(pytest.param(p.values[0], id=p.id) for p in BAD_TASKS if p.id not in COVERED_ABOVE),
        pytest.param({"task_id": "t", "status": None, "percentage": {}}, id="nested-object"),
        pytest.param({"task_id": "t", "image_urls": [{}]}, id="url-object"),
        pytest.param({"task_id": "t", "expires_at": "2025-13-45T99:00:00Z"}, id="bad-date"),
        pytest.param({"task_id": "t" * 10_000, "percentage": "-"}, id="long-id"),
        pytest.param({1: "t"}, id="int-key"),
        pytest.param({"task_id": float("nan")}, id="nan-id"),
    ],
)
def test_no_lower_layer_error_escapes(data: object) -> None:
    """Whatever the shape, only ResponseValidationError comes out, chained to its cause."""
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.task(data)
    error = info.value
    assert not isinstance(error, cattrs.BaseValidationError | KeyError | TypeError | ValueError)
    assert error.problems
    assert all(p.startswith("$") for p in error.problems)
    assert error.__cause__ is not None


def test_error_body_is_the_reply_text_when_given() -> None:
    """The error keeps the reply text it was given (cut short), else a repr of the data."""
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.task({"task_id": 5}, body='{"task_id": 5}')
    assert info.value.body == '{"task_id": 5}'
    with pytest.raises(ResponseValidationError) as info:
        LENIENT.task({"task_id": 5})
    assert info.value.body == "{'task_id': 5}"
