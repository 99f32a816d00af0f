"""The wire format: how domain classes become JSON bodies and replies become domain classes.

One private cattrs converter, built by `make_converter()`, never the global one. It is strict
about types (a `None` never becomes `'None'`, `2.9` never becomes `2`) and lenient about
keys it does not know, which it keeps in each result's `extra`. A reply that does not fit
raises `ResponseValidationError` with the path of each problem; no cattrs exception escapes.
"""

from __future__ import annotations

import datetime as dt
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._errors import NoImagesError, ResponseValidationError
from ._models import (
    Account,
    GenerateRequest,
    Generation,
    SubmittedTask,
    Task,
    TaskStatus,
    TrainRequest,
    UploadRequest,
)

T = TypeVar("T")


def _strict_str(value: object, _: object = None) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _: object = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _strict_float(value: object, _: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _percentage(value: object, _: object) -> int | None:
    # The API sends "40" while a training runs and 100 once it is finished.
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return round(float(value))
        except (ValueError, OverflowError):
            raise ValueError(f"expected a number or a numeric string, got {value!r}") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value)
    raise TypeError(f"expected a number or a numeric string, got {type(value).__name__}")


def _datetime(value: object, _: object) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(_strict_str(value))
    # A timestamp without an offset is the server's UTC; naive datetimes break comparisons.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _status(value: object, _: object) -> TaskStatus:
    return TaskStatus(_strict_str(value))


def _int_to_wire_string(value: int) -> str:
    return str(value)


def _keeping_extra(
    cls: type[T],
    converter: cattrs.Converter,
    **overrides: Any,  # noqa: ANN401
) -> Callable[[Any, Any], T]:
    """A structure hook for `cls` that collects unknown keys into its `extra` field."""
    structure_known = make_dict_structure_fn(
        cls,
        converter,
        _cattrs_forbid_extra_keys=converter.forbid_extra_keys,
        extra=override(omit=True),
        **overrides,
    )
    known = frozenset(a.name for a in attrs.fields(cls)) - {"extra"}  # type: ignore[arg-type]

    def structure(value: Any, _: Any) -> T:  # noqa: ANN401
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        result: T = structure_known(value, cls)
        extra = {k: v for k, v in value.items() if k not in known}
        return attrs.evolve(result, extra=extra) if extra else result  # type: ignore[misc]

    return structure


def _is_optional(type_: Any) -> bool:  # noqa: ANN401
    args = typing.get_args(type_)
    return typing.get_origin(type_) in (types.UnionType, typing.Union) and (
        len(args) == 2 and type(None) in args  # noqa: PLR2004 -- X | None
    )


def _optional_hook(
    converter: cattrs.Converter,
) -> Callable[[Any], Callable[[Any, Any], Any]]:
    """Hooks for `X | None` that look X's hook up once, not on every value as cattrs does."""

    def factory(type_: Any) -> Callable[[Any, Any], Any]:  # noqa: ANN401
        (inner,) = (arg for arg in typing.get_args(type_) if arg is not type(None))
        structure_inner = converter.get_structure_hook(inner)

        def structure(value: Any, _: Any) -> Any:  # noqa: ANN401
            return None if value is None else structure_inner(value, inner)

        return structure

    return factory


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """Build the converter between the domain classes and the API's JSON.

    Args:
        forbid_extra_keys: Refuse replies with keys the models do not know. Off in the
            library (servers add fields); on in tests, so fixtures that drift from the
            models fail loudly.
    """
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=forbid_extra_keys)
    # Primitive hooks first: generated class hooks look these up once and cache them.
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(TaskStatus, _status)
    converter.register_structure_hook(dt.datetime, _datetime)
    # cattrs turns any iterable into a tuple: a string would become a tuple of letters.
    strings = converter.get_structure_hook(tuple[str, ...])

    def _list_of_strings(value: object, type_: Any) -> tuple[str, ...]:  # noqa: ANN401
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        result: tuple[str, ...] = strings(value, type_)
        return result

    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _list_of_strings)
    converter.register_structure_hook_factory(_is_optional, _optional_hook(converter))

    as_string = override(unstruct_hook=_int_to_wire_string)
    converter.register_unstructure_hook(
        GenerateRequest,
        make_dict_unstructure_fn(
            GenerateRequest,
            converter,
            _cattrs_omit_if_default=True,
            width=as_string,
            height=as_string,
            number_of_images=as_string,
        ),
    )
    for request_cls in (UploadRequest, TrainRequest):
        converter.register_unstructure_hook(
            request_cls,
            make_dict_unstructure_fn(request_cls, converter, _cattrs_omit_if_default=True),
        )
    percentage = override(struct_hook=_percentage)
    for cls, overrides in (
        (Task, {"percentage": percentage}),
        (Account, {}),
        (SubmittedTask, {}),
    ):
        converter.register_structure_hook(cls, _keeping_extra(cls, converter, **overrides))
    return converter


@functools.cache
def _default_converter() -> cattrs.Converter:
    # Built once: generating the hooks takes milliseconds, and a client is cheap to make.
    return make_converter()


class Wire:
    """Turns requests into bodies and replies into results with one converter.

    Every structuring error becomes a `ResponseValidationError` listing each problem with
    its path (`$.image_urls[0]: expected a string, got int`).
    """

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        """Use `converter`, or the library's lenient one."""
        self._converter = converter or _default_converter()
        # cattrs looks a class's hook up on every call: each is looked up once here.
        self._hooks: dict[type[Any], Callable[[Any, Any], Any]] = {}

    def body(self, request: GenerateRequest | UploadRequest | TrainRequest) -> dict[str, Any]:
        """The JSON body of a request: set fields only, wire numbers as strings."""
        body: dict[str, Any] = self._converter.unstructure(request)
        return body

    def structure(self, data: object, cls: type[T], *, body: str = "") -> T:
        """Build `cls` from a decoded reply, or raise `ResponseValidationError`."""
        _refuse_errors(data, body)
        return self._structure(data, cls, body)

    def _structure(self, data: object, cls: type[T], body: str) -> T:
        hook = self._hooks.get(cls)
        if hook is None:
            hook = self._hooks[cls] = self._converter.get_structure_hook(cls)
        try:
            result: T = hook(data, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
            raise ResponseValidationError(_problems(exc), body=body or repr(data)) from exc
        return result

    def task(self, data: object, *, task_id: str | None = None, body: str = "") -> Task:
        """A `Task` from a reply; `task_id` fills in when the reply leaves it out."""
        _refuse_errors(data, body)
        if task_id is not None and isinstance(data, Mapping) and "task_id" not in data:
            data = {**data, "task_id": task_id}
        return self._structure(data, Task, body)

    def tasks(self, data: object, *, body: str = "") -> list[Task]:
        """The tasks of a `/fetch-many` reply (`{"tasks": [...]}`)."""
        items = data.get("tasks") if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            raise ResponseValidationError(["$.tasks: expected a list of tasks"], body=body)
        return [self.structure(item, Task, body=body) for item in items]

    def generation(self, task: Task) -> Generation:
        """The `Generation` view of a finished generation task.

        Raises:
            NoImagesError: The task says it finished, and has no photo to show.
        """
        if not task.image_urls:
            raise NoImagesError(task.task_id, body=repr(task))
        return Generation(
            task_id=task.task_id,
            status=task.status or TaskStatus.FINISHED,
            image_urls=task.image_urls,
            task_type=task.task_type,
            extra=task.extra,
        )


def _refuse_errors(data: object, body: str) -> None:
    refusal = _server_errors(data)
    if refusal:
        # A 200 that only carries the server's complaint: its words, not a missing field.
        raise ResponseValidationError(
            [f"$.errors: the server answered with errors: {'; '.join(refusal)}"],
            body=body or repr(data),
        )


def _server_errors(data: object) -> list[str]:
    """The messages of a reply's non-empty `errors` list, when it has no task to report."""
    if not isinstance(data, Mapping) or "task_id" in data:
        return []
    items = data.get("errors")
    if not isinstance(items, list) or not items:
        return []
    return [str(i.get("msg", i)) if isinstance(i, Mapping) else str(i) for i in items]


def _problems(exc: Exception) -> list[str]:
    if isinstance(exc, cattrs.BaseValidationError):
        lines = cattrs.transform_error(exc, path="$", format_exception=_describe)
        return [_readable(line) for line in lines]
    return [f"$: {exc}"]


def _describe(exc: BaseException, type_: type | None) -> str:
    # Our hooks' messages say what was expected and what came; cattrs' default drops them.
    if isinstance(exc, TypeError | ValueError) and str(exc).startswith("expected"):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _readable(line: str) -> str:
    # cattrs says "message @ $.path"; "$.path: message" reads better at the start of a line.
    message, sep, path = line.rpartition(" @ ")
    return f"{path}: {message}" if sep else line
