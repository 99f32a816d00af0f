"""Griffe extensions for the API reference.

`AttrsSignatures`: static analysis cannot see the constructor attrs generates, so the
reference would show `GenerateRequest()` with no parameters. This rebuilds it from
`attrs.fields()`: the names (aliases), keyword-only flags and defaults of the running class,
with the annotations as written in the source (so they stay cross-referenced).

`DoctestExamples`: Google style reads a singular `Example:` as an admonition of Markdown,
where `>>>` would become a nested quote; an `Example:` section made of doctest lines is read
as the `Examples:` section it is, so it renders as code.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import griffe

_NOTHING: Any = attrs.NOTHING


def _default(field: attrs.Attribute[Any]) -> str | None:
    default = field.default
    if default is _NOTHING:
        return None
    factory = getattr(default, "factory", None)
    if isinstance(default, attrs.Factory) and factory is not None:  # type: ignore[arg-type]
        return f"{getattr(factory, '__name__', 'factory')}()"
    return repr(default)


class AttrsSignatures(griffe.Extension):
    """Give every attrs class an `__init__` with the parameters attrs generates."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:  # noqa: ARG002 -- griffe passes every event argument by name
        """Replace the missing constructor of an attrs class."""
        if "__init__" in cls.members:
            return
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        if not (isinstance(runtime, type) and attrs.has(runtime)):
            return
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for field in attrs.fields(runtime):
            if not field.init:
                continue
            member = cls.members.get(field.name)
            annotation = getattr(member, "annotation", None) if member is not None else None
            kind = (
                griffe.ParameterKind.keyword_only
                if field.kw_only
                else griffe.ParameterKind.positional_or_keyword
            )
            parameters.append(
                griffe.Parameter(
                    field.alias or field.name,
                    annotation=annotation,
                    kind=kind,
                    default=_default(field),
                )
            )
        init = griffe.Function(
            "__init__",
            lineno=cls.lineno,
            endlineno=cls.lineno,
            parameters=griffe.Parameters(*parameters),
            returns="None",
            parent=cls,
        )
        cls.set_member("__init__", init)


_DOCTEST_EXAMPLE = re.compile(r"^(\s*)Example:(\n\1    >>> )", re.MULTILINE)


class DoctestExamples(griffe.Extension):
    """Render an `Example:` section of doctest lines as code."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002 -- as above
        """Rename the section before the docstring is parsed."""
        if obj.docstring is not None:
            obj.docstring.value = _DOCTEST_EXAMPLE.sub(r"\1Examples:\2", obj.docstring.value)
