"""The rules for names that code chooses and metrics use as labels.

Provider names become URL hosts and the ``provider`` label; sources become the
``source`` label and limit names the ``limit`` label. All are short lower-case
words, checked by one function so their rules and messages cannot drift
apart. Pure: no I/O, no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["LIMIT", "PROVIDER", "SOURCE", "NameRule"]


@dataclass(frozen=True, slots=True)
class NameRule:
    """What a kind of name may look like, and how to say it is wrong."""

    what: str  # "provider name"
    pattern: re.Pattern[str]
    expected: str  # in words
    why: str = ""  # appended to the message
    max_len: int = 63  # one DNS label

    def check(self, value: object) -> str:
        """Return ``value`` if it follows the rule.

        Raises:
            TypeError: ``value`` is not a str.
            ValueError: it does not follow the rule; the message says why.
        """
        if not isinstance(value, str):
            raise TypeError(f"{self.what} must be a str, not {type(value).__name__}")
        if len(value) > self.max_len or not self.pattern.fullmatch(value):
            raise ValueError(
                f"invalid {self.what} {value!r}: expected {self.expected} "
                f"(pattern {self.pattern.pattern}, at most {self.max_len} characters){self.why}"
            )
        return value


PROVIDER: Final = NameRule(
    "provider name",
    re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
    "lower-case letters and digits, words joined by single '-'",
    ", because the name is the URL host callers use",
)
SOURCE: Final = NameRule(
    "source",
    re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*"),
    "lower-case letters, digits, '-' or '_'",
)
LIMIT: Final = NameRule(
    "limit name",
    re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*"),
    "lower-case letters, digits, '-' or '_'",
    ", because the name is the limit label of meshbridge_limited_total",
)
