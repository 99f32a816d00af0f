"""The public surface: exactly what `__all__` lists, sorted, documented, nothing by accident."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import types

import pytest

import apiframe_async

#: Names that start with an underscore but are public, as in httpx.
PUBLIC_DUNDERS = {"__version__"}


def _public_names() -> set[str]:
    """The module's public names: not private, not a submodule, not `annotations`."""
    return {
        name
        for name, value in vars(apiframe_async).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest; natural within."""
    if name.isupper() or (name.upper() == name and any(c.isalpha() for c in name)):
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    parts: list[int | str] = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return group, parts


def test_all_is_sorted() -> None:
    """`__all__` is kept in the order ruff's RUF022 enforces, with no duplicates."""
    names = apiframe_async.__all__
    assert len(names) == len(set(names))
    assert names == sorted(names, key=_isort_key)


def test_all_is_exactly_the_public_names() -> None:
    """Every public name is in `__all__` and every name in `__all__` exists."""
    assert set(apiframe_async.__all__) == _public_names() | PUBLIC_DUNDERS
    for name in apiframe_async.__all__:
        assert hasattr(apiframe_async, name)


def _documentable() -> list[str]:
    return [
        name
        for name in apiframe_async.__all__
        if inspect.isclass(getattr(apiframe_async, name))
        or inspect.isfunction(getattr(apiframe_async, name))
    ]


@pytest.mark.parametrize("name", _documentable())
def test_public_classes_and_functions_have_docstrings(name: str) -> None:
    """Every class and function in `__all__` has a docstring of its own."""
    obj = getattr(apiframe_async, name)
    assert obj.__doc__
    assert obj.__doc__.strip()


def _members(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties a class defines itself."""
    found: list[tuple[str, object]] = []
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, property):
            found.append((attr, value.fget))
        elif isinstance(value, classmethod | staticmethod):
            found.append((attr, value.__func__))
        elif inspect.isfunction(value):
            found.append((attr, value))
    return found


@pytest.mark.parametrize(
    "name", [n for n in _documentable() if inspect.isclass(getattr(apiframe_async, n))]
)
def test_public_methods_have_docstrings(name: str) -> None:
    """Each public method and property of an exported class is documented."""
    undocumented = [
        attr
        for attr, func in _members(getattr(apiframe_async, name))
        if not (getattr(func, "__doc__", None) or "").strip()
    ]
    assert undocumented == []


def test_exceptions_show_the_public_module() -> None:
    """Exported exceptions name `apiframe_async` as their module, as tracebacks show them."""
    for name in apiframe_async.__all__:
        obj = getattr(apiframe_async, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert obj.__module__ == "apiframe_async", name


def test_version_is_the_installed_distribution() -> None:
    """`__version__` comes from the package metadata."""
    assert apiframe_async.__version__ == importlib.metadata.version("apiframe-async")
