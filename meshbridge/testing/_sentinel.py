"""Where a test server served through a mesh says it listens.

With ``--meshbridge-aiohttp`` a test server has no socket, yet tests read its
``host`` and ``port`` and may aim a real socket at them: their own
``aiohttp.ClientSession()``, ``asyncio.open_connection``, TLS. So that such a
test neither hangs nor passes by accident, each server's address is a real
listener on 127.0.0.1 that answers every connection at once with a ``421
Misdirected Request`` saying why (TLS handshakes are closed) and tells the
test's bookkeeping, which fails the test at teardown.

The listeners live in a thread of their own, bound once per pytest process and
lent to one test server at a time (a test with three servers borrows three),
so they outlive every test's event loop and cost no port per test.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
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


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(1.0)
        try:
            head = sock.recv(65536)
        except OSError:
            head = b""
        what = _describe(head)
        listener = self.server
        assert isinstance(listener, _Listener)
        listener.hit(what)
        if not head.startswith(b"\x16"):
            with contextlib.suppress(OSError):
                sock.sendall(_answer())


class _Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port: int = self.server_address[1]
        self.on_hit: OnHit | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"meshbridge-sentinel-{self.port}",
            daemon=True,
        )
        self.thread.start()

    def hit(self, what: str) -> None:
        with self._lock:
            on_hit = self.on_hit
        if on_hit is not None:
            on_hit(what)

    def lend(self, on_hit: OnHit | None) -> None:
        with self._lock:
            self.on_hit = on_hit


class Sentinel:
    """The pool of listeners test servers borrow their addresses from."""

    def __init__(self, prebind: int = 2) -> None:
        self._free: list[_Listener] = [_Listener() for _ in range(prebind)]
        self._lent: dict[int, _Listener] = {}

    def borrow(self, on_hit: OnHit) -> int:
        """A port on 127.0.0.1 whose connections are reported to ``on_hit``."""
        listener = self._free.pop() if self._free else _Listener()
        listener.lend(on_hit)
        self._lent[listener.port] = listener
        return listener.port

    def give_back(self, port: int) -> None:
        listener = self._lent.pop(port, None)
        if listener is not None:
            listener.lend(None)
            self._free.append(listener)

    def close(self) -> None:
        """Stop every listener and its thread."""
        listeners = [*self._free, *self._lent.values()]
        self._free.clear()
        self._lent.clear()
        for listener in listeners:
            listener.shutdown()
            listener.server_close()
            listener.thread.join()
