"""What the fake provider's wire formats share: one generation, format-free.

A :class:`Generation` is what the fake decided to answer (text tokens, tool
calls, usage, ids); a :class:`Wire` turns it into one API's bytes: a JSON
answer, or the stream events that API sends, each marked as a token (paced,
counted as output) or not. ``_wire_openai.py`` (chat completions, Responses)
and ``_wire_anthropic.py`` (messages) are the wires. No I/O here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web

from ._usage import Usage

__all__ = [
    "JSON",
    "Generation",
    "Ids",
    "ToolUse",
    "Unit",
    "Wire",
    "error_type",
    "limit",
    "split_text",
]

JSON = dict[str, Any]
Unit = tuple[bytes, bool]  # an event's bytes, and whether it carries a token
_PIECE: Final = 12  # characters of tool-call arguments per streamed piece


class Ids(Protocol):
    def next_id(self, prefix: str) -> str: ...


@dataclass(slots=True)
class ToolUse:
    """One tool call of a generation."""

    id: str
    name: str
    arguments: str  # JSON text
    item_id: str = ""  # the Responses API's id of the output item

    @property
    def pieces(self) -> list[str]:
        """The arguments as a stream sends them, a few characters at a time."""
        text = self.arguments
        return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]

    @property
    def input(self) -> Any:
        """The arguments parsed (Anthropic sends them as a JSON object)."""
        return json.loads(self.arguments) if self.arguments else {}


@dataclass(slots=True)
class Generation:
    """One answer: its text tokens and tool calls, and what every event repeats."""

    model: str
    tokens: list[str]
    usage: Usage
    head: JSON = field(default_factory=dict)  # the id fields events carry
    calls: list[ToolUse] = field(default_factory=list)
    cut: bool = False  # stopped by the caller's max tokens
    include_usage: bool = False  # OpenAI stream_options.include_usage

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def units(self) -> int:
        """How many tokens the whole answer sends (text and argument pieces)."""
        return len(self.tokens) + sum(len(c.pieces) for c in self.calls)


class Wire(Protocol):
    """One API the fake speaks."""

    anthropic: bool  # errors in Anthropic's shape (else OpenAI's)

    def problem(self, body: object) -> str | None:
        """What is wrong with a request body, or None."""
        ...

    def prompt(self, body: JSON) -> tuple[object, list[str]]:
        """What seeds a deterministic reply, and the prompt's texts (for usage)."""
        ...

    def budget(self, body: JSON, default: int) -> int: ...

    def begin(self, ids: Ids, generation: Generation) -> None:
        """Give ``generation`` its ids (``generation.head``)."""
        ...

    def answer(self, generation: Generation) -> JSON: ...

    def stream(self, generation: Generation) -> Iterator[Unit]:
        """The stream's events; usage fields are read as they are reached."""
        ...


def split_text(text: str) -> list[str]:
    """Tokens of a scripted text: words with the spaces after them."""
    return re.findall(r"\S+\s*|\s+", text)


def limit(body: JSON, default: int, *keys: str) -> int:
    """The caller's token limit (the first of ``keys`` set), at most ``default``."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, default)
    return default


class _ErrorTypes(dict[int, str]):
    """Error types by status, as the Anthropic API names them."""

    def __missing__(self, status: int) -> str:
        return "api_error" if status >= 500 else "invalid_request_error"


_TYPES: Final = _ErrorTypes(
    {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
)


def error_type(status: int) -> str:
    return _TYPES[status]


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


def anthropic_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return web.json_response(body, status=status, headers=headers)
