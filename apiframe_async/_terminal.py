r"""Text for a terminal: control characters shown escaped, never sent to it.

Server messages, prompts and paths reach the CLI's output and, with `APIFRAME_LOG`, the
log lines on standard error. An escape sequence in them (a colour, a window title, a
cursor move, a right-to-left override) would act on the terminal instead of being read;
here it is written out as `\x1b`, `\u202e` and so on, so what shows is what was there.
"""

from __future__ import annotations

import unicodedata

_CONTROLS = frozenset({"Cc", "Cf", "Zl", "Zp"})


def escape_controls(text: str) -> str:
    """`text` with every control or format character but newline and tab escaped."""
    if text.isprintable():
        return text
    return "".join(_visible(char) for char in text)


def _visible(char: str) -> str:
    if char in "\n\t" or unicodedata.category(char) not in _CONTROLS:
        return char
    return char.encode("unicode_escape").decode("ascii")
