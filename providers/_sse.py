"""Server-sent events: an incremental parser and an encoder. No I/O.

The parser takes bytes as they arrive and hands back each event once its
closing blank line is in, with the event's bytes (line endings normalised to
``\\n``) so a proxy can forward the stream event by event. An event that grows
past ``max_event_bytes`` without ending is a broken stream, not a reason to
buffer forever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

__all__ = ["Event", "SSEError", "SSEParser", "encode"]

MAX_EVENT_BYTES: Final = 1 << 20


class SSEError(ValueError):
    """The bytes are not a well-formed event stream."""


@dataclass(frozen=True, slots=True)
class Event:
    event: str | None  # the "event:" field, None when absent
    data: str  # "data:" lines joined by "\n"; "" for comments only
    raw: bytes  # the whole event, ending with a blank line


def _parse(raw: bytes) -> Event:
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise SSEError(f"event is not UTF-8: {exc}") from None
    name: str | None = None
    data: list[str] = []
    for line in text.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return Event(name, "\n".join(data), raw)


class SSEParser:
    """Feed bytes, get complete events."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._max = max_event_bytes

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished event are buffered (whitespace aside)."""
        return bool(self._buffer.strip())

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``.

        Raises:
            SSEError: an event is not UTF-8 or is longer than the limit.
        """
        buffer = self._buffer + chunk
        # Normalise CRLF and CR to LF; a trailing CR may be half of a CRLF.
        hold = buffer.endswith(b"\r")
        if hold:
            buffer = buffer[:-1]
        buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            raw = buffer[start : end + 2].lstrip(b"\n")
            start = end + 2
            if raw:
                events.append(_parse(raw))
        self._buffer = buffer[start:] + (b"\r" if hold else b"")
        if len(self._buffer) > self._max:
            raise SSEError(f"an event is longer than {self._max} bytes")
        return events


def encode(data: object, event: str | None = None) -> bytes:
    """One event: ``data`` as compact JSON (a ``str`` is sent as is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()
