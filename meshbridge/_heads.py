"""Response heads the relay holds: where they end, what they say, one change.

Pure functions over the bytes of an HTTP/1.1 response head as a provider's
server wrote it (aiohttp's, so well formed); nothing here sees a socket.
"""

from __future__ import annotations

import re
import time
from typing import Final

from ._retry import parse_retry_after

__all__ = ["SDK_RETRIES", "head_end", "retry_after", "status_of", "without_sdk_retries"]

MAX_HEAD: Final = 64 * 1024  # a head that grows past this is taken as it is

# The statuses the official SDKs retry by themselves (openai, anthropic).
SDK_RETRIES: Final = frozenset({408, 409, 429})

_SHOULD_RETRY: Final = re.compile(rb"\r\nx-should-retry:[^\r\n]*", re.IGNORECASE)


def head_end(head: bytes | bytearray) -> int:
    """The index of the blank line ending ``head``, -1 while it is incomplete."""
    return head.find(b"\r\n\r\n")  # not `in`: for bytes it tries int() first, and raises


def status_of(head: bytes | bytearray) -> int:
    """The status of a response head (0 if it has none)."""
    try:
        return int(head[9:12])
    except ValueError:
        return 0


def retry_after(head: bytes | bytearray, end: int) -> float | None:
    """A response head's ``Retry-After``, in seconds (``end``: :func:`head_end`)."""
    for line in bytes(head[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after":
            return parse_retry_after(value.strip().decode("latin-1"), time.time())
    return None


def without_sdk_retries(head: bytes | bytearray, end: int) -> bytes:
    """``head`` saying ``x-should-retry: false`` (any such header of the
    provider's replaced): the mesh has retried this call already, so the
    SDKs, which honour the header, do not multiply its retries."""
    start = bytes(head[:end])
    rest = bytes(head[end:])
    return _SHOULD_RETRY.sub(b"", start) + b"\r\nx-should-retry: false" + rest
