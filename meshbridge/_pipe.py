"""The pipe: two asyncio transports joined back to back, in memory.

A :class:`Pipe` has a ``client`` end and a ``server`` end. Each end is an
``asyncio.Transport`` handed to one protocol; what one protocol writes, the
other receives. The pipe knows nothing of HTTP, aiohttp or routing: bytes in,
bytes out, flow control, close.

Rules of the pipe (everything that moves bytes lives in this file):

Rule 1, order. Bytes written on one end reach the other end's protocol in the
order written, each byte once, unless the pipe is aborted.

Rule 2, no hop. A write is handed to the peer's ``data_received`` at once,
inside ``write()``, when the peer is reading and nothing is queued before it.
Otherwise it is queued and delivered later from the event loop. Delivery never
re-enters a protocol: a write made while the peer is inside its own
``data_received`` is queued.

Rule 3, flow control. The queue of one direction above ``high_water`` bytes
pauses the writing protocol (``pause_writing``); drained to ``low_water`` it
resumes it. A peer that calls ``pause_reading()`` gets nothing until it calls
``resume_reading()``, so a slow reader holds back the writer and what the pipe
holds stays near ``high_water`` plus one write.

Rule 4, bounded delivery. Bytes reach the peer in pieces of at most
``MAX_PIECE`` (a receiver's may be larger, Rule 6), and the peer's pause is
honoured between any two pieces, so a single large write (a 50 MB body) is
handed over only as fast as the reader takes it, as a socket would: what a
paused reader has been given stays within its own high-water mark plus one
``MAX_PIECE``. The queue holds the writer's bytes by reference (a ``bytes``
object is immutable; anything else is copied once); a piece is a copy only
when it is cut from a larger write.

Rule 5, close. ``close()`` on an end stops its writes; bytes it already queued
are still delivered, then both protocols get ``connection_lost``. Until its
``connection_lost`` runs, the other end still accepts writes and drops them,
as a socket does when its peer has gone. ``abort()``
drops the queues and closes at once. ``connection_lost`` is always called from
the event loop, never from inside a write. The ``on_close`` callback learns
which end closed first and may name the error the other end's protocol sees.

Rule 6, receivers. A protocol may have what arrives handed to another
callable of its own (``set_receiver``: an HTTP protocol feeding a body to
its reader), with a ``room()`` that says how many bytes its reader takes
before it pauses. A receiver gets at most that room plus ``MAX_PIECE`` per
turn of the loop, except that a turn's first piece may be a whole ``bytes``
write of up to ``MAX_BODY_PIECE`` more, by reference: a reader keeps a
reference to what it is given either way, so cutting such a write would
only copy it (and a reader's ``read()`` join the copies again), and a head
written together with its body comes whole, for the protocol to tell the two
apart. A larger write is cut into pieces sized to the room, each a copy of
at most ``MAX_BODY_PIECE`` and the last of its turn; what is left of a cut
write goes in one copy once it is at most ``MAX_BODY_PIECE``. One turn's
worth at a time, as a socket's reader gets one read per turn, so that a
reader in another task takes each piece as it comes rather than joining
many into a new object. Rules 1 to 5 hold as for ``data_received``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["OnClose", "Pipe", "PipeEnd", "PipeStats"]

HIGH_WATER: Final = 64 * 1024
LOW_WATER: Final = 16 * 1024
MAX_PIECE: Final = 64 * 1024  # the most handed to data_received at once (Rule 4)
MAX_BODY_PIECE: Final = 1024 * 1024  # the largest piece cut for a receiver (Rule 6)

# Told which end closed first (True for the client end); returns the exception
# the *other* end's protocol gets in connection_lost (None for a clean close).
OnClose = Callable[[bool], Exception | None]


class PipeStats:
    """Bytes queued in pipes, now and at the most, shared by many pipes."""

    __slots__ = ("buffered", "peak")

    def __init__(self) -> None:
        self.buffered = 0
        self.peak = 0


class Pipe:
    """A connected pair of in-memory transports.

    Args:
        loop: the event loop both protocols run on.
        owner: any object the creator wants to find from a transport
            (``transport.pipe.owner``); the pipe never looks at it.
        client_extra / server_extra: what each end's ``get_extra_info`` returns.
        on_close: see Rule 5.
        stats: where queued bytes are counted, if anywhere.
    """

    __slots__ = ("_loop", "_on_close", "_stats", "client", "closed", "owner", "server")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        owner: object = None,
        client_extra: Mapping[str, Any] | None = None,
        server_extra: Mapping[str, Any] | None = None,
        on_close: OnClose | None = None,
        stats: PipeStats | None = None,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
    ) -> None:
        self._loop = loop
        self.owner = owner
        self._on_close = on_close
        self._stats = stats if stats is not None else PipeStats()
        self.closed = False
        self.client = PipeEnd(self, dict(client_extra or {}), high_water, low_water)
        self.server = PipeEnd(self, dict(server_extra or {}), high_water, low_water)
        self.client._peer = self.server
        self.server._peer = self.client

    def connect(self, client: asyncio.Protocol, server: asyncio.Protocol) -> None:
        """Hand each end to its protocol (``connection_made``), client first."""
        self.client.set_protocol(client)
        self.server.set_protocol(server)
        client.connection_made(self.client)
        server.connection_made(self.server)

    @property
    def buffered(self) -> int:
        """Bytes queued in this pipe, both directions."""
        return self.client._queued + self.server._queued

    def _shutdown(self, first: PipeEnd, *, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        first._closing = True
        # The other end is not marked closing until its connection_lost runs:
        # as over TCP, it may still write in between, and those bytes are dropped.
        for end in (self.client, self.server):
            self._stats.buffered -= end._queued
            end._queue.clear()
            end._queued = 0
            end._flushed_callbacks.clear()
        peer_exc: Exception | None = None
        if self._on_close is not None:
            peer_exc = self._on_close(first is self.client)
        if peer_exc is None and reset:
            peer_exc = ConnectionResetError("the other end of the in-memory connection aborted")
        call_soon = self._loop.call_soon
        call_soon(first._lose, None)
        call_soon(first._peer._lose, peer_exc)


class PipeEnd(asyncio.Transport):
    """One end of a :class:`Pipe`, used by one protocol as its transport."""

    __slots__ = (
        "__weakref__",
        "_closing",
        "_deliver",
        "_delivering",
        "_flush_scheduled",
        "_flushed_callbacks",
        "_high",
        "_low",
        "_peer",
        "_protocol",
        "_queue",
        "_queued",
        "_reading",
        "_room",
        "_writing_paused",
        "pipe",
    )

    _peer: PipeEnd
    _protocol: asyncio.Protocol
    _deliver: Callable[[bytes], None]  # its protocol's data_received, or its receiver (Rule 6)

    def __init__(self, pipe: Pipe, extra: dict[str, Any], high: int, low: int) -> None:
        super().__init__(extra)
        self.pipe = pipe
        self._high = high
        self._low = low
        self._queue: deque[bytes | memoryview] = deque()  # written, not yet delivered
        self._queued = 0
        self._reading = True  # our protocol accepts data
        self._delivering = False  # our protocol is inside data_received
        self._writing_paused = False  # we told our protocol to pause_writing
        self._flush_scheduled = False
        self._closing = False
        self._flushed_callbacks: list[Callable[[], None]] = []
        self._room: Callable[[], int] | None = None  # our receiver's room (Rule 6)

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return  # like a socket transport whose connection is gone: dropped
        peer = self._peer
        if peer._closing:
            return  # the other end has closed: nobody will read this
        chunk = data if type(data) is bytes else bytes(data)
        if not self._queue and peer._reading and not peer._delivering:
            if len(chunk) <= MAX_PIECE:
                # The usual case: one small write, no hop (peer._receive, inlined).
                peer._delivering = True
                try:
                    peer._deliver(chunk)
                except Exception as exc:  # a protocol bug must not unwind into the writer
                    peer._protocol_failed(exc)
                finally:
                    peer._delivering = False
                # Bytes we queued while the peer was busy (it wrote back to us and
                # we wrote again from inside its data_received).
                if self._queued and not self.pipe.closed and peer.is_reading():
                    self._schedule_flush()
                return
            if peer._room is not None and len(chunk) <= peer._whole(chunk, peer._turn()):
                peer._receive(chunk)
                return
            piece = peer._piece_size()
            view = memoryview(chunk)
            offset = 0
            while offset < len(view) and peer.is_reading() and not self.pipe.closed:
                paced = peer._room is not None
                peer._receive(bytes(view[offset : offset + piece]))
                offset += piece
                if paced:
                    break  # a receiver's next piece comes on a later turn (Rule 6)
                piece = peer._piece_size()
            if offset >= len(view) or self.pipe.closed:
                return
            self._enqueue(view[offset:])
        else:
            self._enqueue(chunk)

    def _enqueue(self, chunk: bytes | memoryview) -> None:
        self._queue.append(chunk)
        size = len(chunk)
        self._queued += size
        stats = self.pipe._stats
        stats.buffered += size
        if stats.buffered > stats.peak:
            stats.peak = stats.buffered
        if self._queued > self._high and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()
        peer = self._peer
        if peer._reading and not peer._delivering:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.pipe._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Deliver queued bytes while the peer reads (always called from the loop)."""
        self._flush_scheduled = False
        peer = self._peer
        queue = self._queue
        stats = self.pipe._stats
        paced = peer._room is not None
        budget = peer._turn()  # a receiver's for this turn (Rule 6)
        first = True
        while queue and peer._reading and not peer._delivering and not self.pipe.closed:
            chunk = queue.popleft()
            size = len(chunk)
            cut = size > (peer._whole(chunk, budget) if first else budget)
            if cut:
                size = min(budget, MAX_BODY_PIECE) if paced else budget  # a copy: bounded
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                queue.appendleft(view[size:])
                chunk = view[:size]
            self._queued -= size
            stats.buffered -= size
            peer._receive(chunk if type(chunk) is bytes else bytes(chunk))
            if paced:
                budget -= size
                first = False  # past the turn's first piece, only what fits its room
                if budget <= 0 or cut:  # a piece cut for a receiver ends its turn
                    if queue and peer._reading:
                        self._schedule_flush()
                    break
        if self.pipe.closed:
            return
        if self._writing_paused and self._queued <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()
        if not queue:
            self._run_flushed_callbacks()
            if self._closing:
                self.pipe._shutdown(self, reset=False)

    def _receive(self, chunk: bytes) -> None:
        self._delivering = True
        try:
            self._deliver(chunk)
        except Exception as exc:  # a protocol bug must not unwind into the writer
            self._protocol_failed(exc)
        finally:
            self._delivering = False
        # Bytes queued for us while we were busy, or left from a paused spell.
        if self._peer._queue and self._reading and not self.pipe.closed:
            self._peer._schedule_flush()

    def _protocol_failed(self, exc: Exception) -> None:
        self.pipe._loop.call_exception_handler(
            {"message": "in-memory pipe: data_received failed", "exception": exc}
        )
        self.pipe._shutdown(self, reset=True)

    def when_flushed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything written so far reached the peer.

        At once if nothing is queued; never if the pipe closes first.
        """
        if not self._queue:
            callback()
        elif not self.pipe.closed:
            self._flushed_callbacks.append(callback)

    def _run_flushed_callbacks(self) -> None:
        if self._flushed_callbacks:
            callbacks, self._flushed_callbacks = self._flushed_callbacks, []
            for callback in callbacks:
                callback()

    @property
    def _sendfile_compatible(self) -> Any:
        # asyncio's loop.sendfile() reads this private attribute; raising
        # NotImplementedError here makes callers (aiohttp's FileResponse) take
        # their own write() fallback instead of asyncio's, which would swap our
        # protocol out and read the file in a thread.
        raise NotImplementedError("in-memory transports have no file descriptor to sendfile to")

    def writelines(self, list_of_data: Any) -> None:
        chunks = list(list_of_data)
        if sum(map(len, chunks)) <= MAX_PIECE:
            self.write(b"".join(chunks))  # one delivery, as one write would be
        else:
            for chunk in chunks:  # a large body is queued by reference, not joined
                self.write(chunk)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("in-memory transports do not half-close")

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # -- reading -------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        # Never deliver from inside resume_reading(): the reader calls it
        # from the middle of a read, and data_received would re-enter it.
        if self._peer._queue:
            self._peer._schedule_flush()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._queue:
            self.pipe._shutdown(self, reset=False)
        # else: _flush() shuts the pipe down once the queue has been delivered

    def abort(self) -> None:
        self.pipe._shutdown(self, reset=True)

    def _lose(self, exc: Exception | None) -> None:
        self._closing = True
        self._protocol.connection_lost(exc)

    def is_closing(self) -> bool:
        return self._closing

    # -- protocol --------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._deliver = protocol.data_received

    def set_receiver(
        self, receiver: Callable[[bytes], None] | None, room: Callable[[], int] | None = None
    ) -> None:
        """Hand what arrives to ``receiver`` instead of ``data_received``
        (None: to ``data_received`` again), under the same rules, in pieces
        as large as ``room()`` says it takes now (Rule 6)."""
        if receiver is None:
            self._deliver, self._room = self._protocol.data_received, None
        else:
            self._deliver, self._room = receiver, room

    def _turn(self) -> int:
        """The most we hand our protocol in this turn of the loop (Rules 4 and
        6); a receiver's by reference, pieces cut for it at most ``MAX_BODY_PIECE``."""
        room = self._room
        if room is None:
            return MAX_PIECE
        return MAX_PIECE + max(0, room())

    def _whole(self, chunk: bytes | memoryview, turn: int) -> int:
        """The most of ``chunk`` handed over whole as a turn's first piece
        (Rules 4 and 6): ``turn``; for a receiver a ``bytes`` write of up to
        ``MAX_BODY_PIECE`` more, by reference (a body and the head written
        with it), else one copy of at most ``MAX_BODY_PIECE``."""
        if self._room is None:
            return turn
        if type(chunk) is bytes:
            return turn + MAX_BODY_PIECE
        return MAX_BODY_PIECE

    def _piece_size(self) -> int:
        """The most we cut from a write for our protocol now (Rules 4 and 6)."""
        return min(MAX_BODY_PIECE, self._turn())

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol
