"""Scripting a fake provider: queued answers, and a record of what it received.

:func:`meshbridge.providers.fake.script` returns a fake app's :class:`Script`.
Each generation request (chat completions, Responses, messages: whichever
API the caller speaks) takes the next queued :class:`Step`; with none queued
the fake answers deterministically, as configured. Once a script exists,
every request the app receives is recorded in :attr:`Script.received`.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from meshbridge import api_key_id_of, source_of

__all__ = ["Received", "Script", "Step", "ToolCall"]

# Header names whose values are credentials; recorded as "<redacted>".
_SECRET: Final = re.compile(r"auth|key|token|secret|cookie|signature|identity", re.IGNORECASE)
REDACTED: Final = "<redacted>"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call a scripted reply makes: the tool's name and its arguments
    (a mapping, or JSON text); ``id`` is generated when not given."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted answer: a reply (text, tool calls) or an error."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    status: int = 200  # 400..599: answer this error instead
    message: str = ""  # the error's message
    retry_after: float | None = None  # seconds, sent as Retry-After
    delay: float = 0.0  # seconds before the first token (or before the error)
    fail_after: int | None = None  # cut the stream after this many tokens

    def __post_init__(self) -> None:
        if not (self.status == 200 or 400 <= self.status <= 599):
            raise ValueError(f"a scripted error's status must be 400 to 599, got {self.status}")
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"delay must be a number of seconds >= 0, got {self.delay!r}")
        if self.retry_after is not None and not self.retry_after >= 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {self.retry_after!r}")
        if self.fail_after is not None and self.fail_after < 0:
            raise ValueError(f"fail_after must be >= 0 tokens, got {self.fail_after!r}")


@dataclass(frozen=True, slots=True)
class Received:
    """One request a scripted fake received, for assertions."""

    method: str
    path: str
    headers: Mapping[str, str]  # credentials replaced by "<redacted>"
    body: Any  # the parsed JSON body; None when there was none or it was not JSON
    source: str | None  # the caller's Source, through the mesh
    api_key_id: str | None


class Script:
    """The queue of scripted answers of one fake provider app.

    Every method that queues returns the script, so steps chain::

        script(app).tool_call("get_weather", {"city": "Paris"}).reply("Sunny.")
    """

    def __init__(self) -> None:
        self._steps: deque[Step] = deque()
        self.received: list[Received] = []
        """Every request the app received since the script was made, in order."""

    def __repr__(self) -> str:
        return f"<Script pending={len(self._steps)} received={len(self.received)}>"

    @property
    def pending(self) -> int:
        """Steps queued and not yet answered."""
        return len(self._steps)

    def add(self, step: Step) -> Script:
        """Queue ``step``."""
        self._steps.append(step)
        return self

    def reply(
        self,
        text: str = "",
        *,
        tool_calls: Iterable[ToolCall] = (),
        delay: float = 0.0,
        fail_after: int | None = None,
    ) -> Script:
        """Queue a reply: ``text`` (streamed word by word), then ``tool_calls``.

        Args:
            delay: seconds before the first token.
            fail_after: cut the response after this many tokens (text words
                and pieces of tool arguments): a stream breaks off and the
                caller's read fails, as when a connection drops midway.
        """
        return self.add(Step(text, tuple(tool_calls), delay=delay, fail_after=fail_after))

    def tool_call(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        id: str | None = None,
        text: str = "",
        delay: float = 0.0,
        fail_after: int | None = None,
    ) -> Script:
        """Queue a reply that calls tool ``name`` with ``arguments`` (after ``text``)."""
        call = ToolCall(name, {} if arguments is None else arguments, id)
        return self.reply(text, tool_calls=[call], delay=delay, fail_after=fail_after)

    def error(
        self,
        status: int,
        message: str = "",
        *,
        retry_after: float | None = None,
        delay: float = 0.0,
    ) -> Script:
        """Queue an error answer: ``status`` (429, 500, 529...) in the caller's
        API's error shape, with ``Retry-After: retry_after`` when given."""
        if not 400 <= status <= 599:
            raise ValueError(f"a scripted error's status must be 400 to 599, got {status}")
        return self.add(Step(status=status, message=message, retry_after=retry_after, delay=delay))

    def clear(self) -> None:
        """Drop the queued steps (what was received stays)."""
        self._steps.clear()

    def next(self) -> Step | None:
        """The next step for a generation, or None (answer as configured)."""
        return self._steps.popleft() if self._steps else None

    async def record(self, request: web.Request) -> None:
        """Add ``request`` to :attr:`received`."""
        raw = await request.read() if request.can_read_body else b""
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        headers = {
            name.lower(): REDACTED if _SECRET.search(name) else value
            for name, value in request.headers.items()
        }
        self.received.append(
            Received(
                request.method,
                request.path,
                headers,
                body,
                source_of(request),
                api_key_id_of(request),
            )
        )
