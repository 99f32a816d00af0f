r"""Keeping secrets out of error text: the API key and webhook secrets, however quoted.

A server that quotes a secret back ("invalid key ...", a 400 echoing the body) may write
it JSON-escaped: `\/` for `/`, `\u00e9` (or `\u00E9`) for `é`, surrogate pairs beyond the
BMP. Each secret becomes one pattern that matches every such spelling of it.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f"} | {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _char_pattern(char: str) -> str:
    spellings = [re.escape(char)]
    if char in _SHORT_ESCAPES:
        spellings.append(re.escape(_SHORT_ESCAPES[char]))
    code = ord(char)
    if code > 0xFFFF:  # noqa: PLR2004 -- beyond the BMP, JSON writes a surrogate pair
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        spellings.append(rf"\\u(?i:{high:04x})\\u(?i:{low:04x})")
    else:
        spellings.append(rf"\\u(?i:{code:04x})")
    return "(?:" + "|".join(spellings) + ")"


class Redactor:
    """Replaces every known secret, in any JSON spelling, with `[redacted]`."""

    def __init__(self, *secrets: str) -> None:
        """Start with `secrets` (empty ones are ignored)."""
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Redact `secret` from now on."""
        if not secret or secret in self._secrets:
            return
        self._secrets.add(secret)
        # Longest first: a secret that contains another is replaced whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join("".join(_char_pattern(c) for c in s) for s in ordered))

    def __call__(self, text: str) -> str:
        """`text` without any known secret."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def __repr__(self) -> str:
        """Count the secrets, never show them."""
        return f"<Redactor of {len(self._secrets)} secret(s)>"
