"""Where a test server served through a mesh says it listens.

With ``--meshbridge-aiohttp`` a test server has no socket, yet tests read its
``host`` and ``port`` and may aim a real socket at them: their own
``aiohttp.ClientSession()``, ``asyncio.open_connection``, TLS. So that such a
test neither hangs nor passes by accident, each server's address is a real
listener on 127.0.0.1 that answers every connection at once with a ``421
Misdirected Request`` saying why (TLS handshakes are closed) and tells the
test's bookkeeping, which fails the test at teardown.

Rules of the sentinel, because an address is what a test checks:

1. Each server gets a listener of its own, on a port no server of this
   pytest process had before: an old URL never reaches a newer app.
2. Closing the server closes its listener before ``close()`` returns, so its
   address refuses connections, as a closed TCP server's does.
3. One thread serves every listener (a selector; no thread per server, no
   port per test kept open), outliving the tests' event loops.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["SOCKET_HINT", "Sentinel"]

SOCKET_HINT: Final = (
    "with --meshbridge-aiohttp (or meshbridge_aiohttp = true) aiohttp_server and "
    "aiohttp_client serve apps through an in-process mesh, with no socket; only "
    "requests made through the test client (or client.session) reach the app. "
    "A test that needs a real socket (TLS, a raw socket, its own connector or "
    "ClientSession aimed at the server) opts out with @pytest.mark.meshbridge_socket"
)

OnHit = Callable[[str], None]
# what the thread is told: (add | close | stop, port, listener, on_hit, done)
_Command = tuple[str, int, socket.socket | None, OnHit | None, threading.Event | None]
_SILENCE: Final = 1.0  # seconds a connection may send nothing before it is answered
_ACK: Final = 5.0  # seconds to wait for the thread to close a listener


def _describe(head: bytes) -> str:
    """What arrived on a connection, in a few words."""
    if not head:
        return "a connection that sent nothing"
    if head[:1] == b"\x16":
        return "a TLS handshake"
    line = head.split(b"\r\n", 1)[0][:120].decode("latin-1")
    return f"a request {line!r}" if line.isprintable() else "raw bytes"


def _answer() -> bytes:
    body = f"meshbridge: this server has no socket: {SOCKET_HINT}\n".encode()
    head = (
        "HTTP/1.1 421 Misdirected Request\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-meshbridge: socket-required\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Accepted:
    """A connection to a listener, waiting for its first bytes."""

    __slots__ = ("deadline", "on_hit", "sock")

    def __init__(self, sock: socket.socket, on_hit: OnHit) -> None:
        self.sock, self.on_hit = sock, on_hit
        self.deadline = time.monotonic() + _SILENCE


class Sentinel:
    """The listeners of the test servers of one pytest process (see the rules)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()  # every port lent in this process (rule 1)
        self._lent: set[int] = set()
        self._commands: list[_Command] = []
        self._selector: selectors.BaseSelector | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    def borrow(self, on_hit: OnHit) -> int:
        """A new port on 127.0.0.1 whose connections are reported to ``on_hit``."""
        held: list[socket.socket] = []
        try:
            while True:
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
                if port not in self._used:
                    break
                held.append(sock)  # the system offered an old one again: keep looking
        finally:
            for old in held:
                old.close()
        sock.listen(16)
        sock.setblocking(False)
        self._used.add(port)
        self._lent.add(port)
        self._tell(("add", port, sock, on_hit, None))
        return port

    def give_back(self, port: int) -> None:
        """Close ``port``'s listener (rule 2): it refuses connections from now on."""
        if port not in self._lent:
            return
        self._lent.discard(port)
        done = threading.Event()
        self._tell(("close", port, None, None, done))
        done.wait(_ACK)

    def close(self) -> None:
        """Stop the thread and close every listener."""
        thread = self._thread
        if thread is None:
            return
        self._tell(("stop", 0, None, None, None))
        thread.join(_ACK)
        self._thread = None

    # -- the thread's side ---------------------------------------------------------

    def _tell(self, command: _Command) -> None:
        with self._lock:
            if self._thread is None:
                self._start()
            self._commands.append(command)
        assert self._wake is not None
        with contextlib.suppress(OSError):
            self._wake[1].send(b"\0")

    def _start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake = socket.socketpair()
        self._wake[0].setblocking(False)
        self._selector.register(self._wake[0], selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="meshbridge-sentinel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector, wake = self._selector, self._wake
        assert selector is not None
        assert wake is not None
        listeners: dict[int, socket.socket] = {}
        waiting: dict[socket.socket, _Accepted] = {}
        try:
            while True:
                soonest = min((a.deadline for a in waiting.values()), default=None)
                timeout = None if soonest is None else max(0.0, soonest - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.data is None:  # woken: commands
                        with contextlib.suppress(OSError):
                            wake[0].recv(4096)
                        if not self._obey(selector, listeners):
                            return
                    elif isinstance(key.data, _Accepted):
                        self._read(selector, waiting, key.data)
                    else:
                        self._accept(selector, waiting, key.fileobj, key.data)  # type: ignore[arg-type]
                now = time.monotonic()
                for accepted in [a for a in waiting.values() if a.deadline <= now]:
                    self._reply(selector, waiting, accepted, b"")
        finally:
            for accepted in list(waiting.values()):
                self._reply(selector, waiting, accepted, b"")
            for sock in listeners.values():
                sock.close()
            selector.close()
            wake[0].close()
            wake[1].close()

    def _obey(self, selector: selectors.BaseSelector, listeners: dict[int, socket.socket]) -> bool:
        with self._lock:
            commands, self._commands = self._commands, []
        for what, port, sock, on_hit, done in commands:
            if what == "stop":
                return False
            if what == "add" and sock is not None:
                listeners[port] = sock
                selector.register(sock, selectors.EVENT_READ, on_hit)
            elif what == "close":
                closing = listeners.pop(port, None)
                if closing is not None:
                    selector.unregister(closing)
                    closing.close()
            if done is not None:
                done.set()
        return True

    @staticmethod
    def _accept(selector: selectors.BaseSelector, waiting: dict[socket.socket, _Accepted],
                listener: socket.socket, on_hit: OnHit) -> None:  # fmt: skip
        with contextlib.suppress(BlockingIOError, OSError):
            sock, _ = listener.accept()
            sock.setblocking(False)
            accepted = waiting[sock] = _Accepted(sock, on_hit)
            selector.register(sock, selectors.EVENT_READ, accepted)

    def _read(self, selector: selectors.BaseSelector, waiting: dict[socket.socket, _Accepted],
              accepted: _Accepted) -> None:  # fmt: skip
        try:
            head = accepted.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            head = b""
        self._reply(selector, waiting, accepted, head)

    @staticmethod
    def _reply(selector: selectors.BaseSelector, waiting: dict[socket.socket, _Accepted],
               accepted: _Accepted, head: bytes) -> None:  # fmt: skip
        waiting.pop(accepted.sock, None)
        selector.unregister(accepted.sock)
        accepted.on_hit(_describe(head))
        if not head.startswith(b"\x16"):
            with contextlib.suppress(OSError):
                accepted.sock.send(_answer())  # small: the socket buffer takes it whole
        accepted.sock.close()
