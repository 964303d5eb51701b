"""A caller that leaves in the middle of a streamed answer.

When the caller closes the connection, aiohttp cancels the handler; but if
the handler is already running (not waiting) at that moment, its next write
fails with ``ConnectionResetError`` first. Both mean the same thing: the
caller went away. :func:`caller_may_leave` turns the second into the first,
so a departed caller is never logged or counted as a handler error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["caller_may_leave"]


@contextmanager
def caller_may_leave() -> Iterator[None]:
    """Around the writes of a stream: a reset connection is a cancellation."""
    try:
        yield
    except ConnectionResetError as exc:
        raise asyncio.CancelledError("the caller closed the stream") from exc
