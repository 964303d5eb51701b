"""The control socket between the supervisor of ``serve --workers`` and one
worker: messages both ways, and the worker's nonce store that asks the
supervisor.

Each message is one line ``WORD LENGTH ARG...`` followed by ``LENGTH`` bytes
of payload (0 for most). The words:

=============  ===================  =============================================
from           word and arguments   what
=============  ===================  =============================================
supervisor     ``config`` + bytes   the config generation to start with (first)
supervisor     ``reload`` + bytes   reload into these bytes of the config file
worker         ``ready``            it listens
worker         ``hup``              it got SIGHUP: the server should reload
worker         ``nonce ID KEY N E`` has key id KEY's nonce N (expiring at Unix
                                    time E) been accepted by any worker?
supervisor     ``nonce ID ANSWER``  ``first``, ``replayed`` or ``full``
=============  ===================  =============================================

The end of the stream is the end of the other side: a worker whose
supervisor is gone stops; a supervisor whose worker is gone restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from typing import Final

from ._nonces import NoncesFull, NonceStore

__all__ = ["ANSWER_TIMEOUT", "Channel", "Message", "SupervisorNonces"]

ANSWER_TIMEOUT: Final = 5.0  # seconds for the supervisor to answer a nonce question
_MAX_LINE: Final = 1024

Message = tuple[str, list[str], bytes]  # word, arguments, payload


class Channel:
    """One end of a control socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        """A channel on ``sock`` (one end of a socket pair), on the running loop."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_MAX_LINE * 4)
        return cls(reader, writer)

    def send(self, word: str, *args: str, payload: bytes = b"") -> None:
        """Queue one message (nothing happens if the other side is gone)."""
        if self._writer.is_closing():
            return
        line = " ".join([word, str(len(payload)), *args]) + "\n"
        self._writer.write(line.encode() + payload)

    async def receive(self) -> Message | None:
        """The next message, or None once the other side is gone.

        Raises:
            ValueError: the other side sent something that is not a message.
        """
        try:
            line = await self._reader.readline()
            if not line:
                return None
            word, length, *args = line.decode().split()
            payload = await self._reader.readexactly(int(length)) if int(length) else b""
        except (ConnectionError, asyncio.IncompleteReadError):
            return None
        return word, args, payload

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class SupervisorNonces(NonceStore):
    """A worker's nonce store: the supervisor's, asked over the channel, so
    one signature is accepted once by all the workers of a server, and a
    restarted worker finds what its predecessor accepted."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._gone = False

    async def first_use(self, key_id: str, nonce: str, expires: float) -> bool:
        if self._gone:
            raise ConnectionError("the supervisor is gone")
        ask = str(next(self._ids))
        answer = self._waiting[ask] = asyncio.get_running_loop().create_future()
        try:
            self._channel.send("nonce", ask, key_id, nonce, f"{expires:.0f}")
            async with asyncio.timeout(ANSWER_TIMEOUT):
                said: str = await answer
        finally:
            del self._waiting[ask]
        if said == "full":
            raise NoncesFull("the server's nonce store is full")
        return said == "first"

    def answered(self, args: list[str]) -> None:
        """The supervisor's ``nonce ID ANSWER``."""
        waiting = self._waiting.get(args[0]) if len(args) == 2 else None
        if waiting is not None and not waiting.done():
            waiting.set_result(args[1])

    def gone(self) -> None:
        """The channel ended: every question waiting fails."""
        self._gone = True
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the supervisor is gone"))
