"""Who is calling: the Source and the delegated API key id of a request.

Both travel beside the request, on the in-memory connection, never in a
header: nothing a caller puts on the wire can set or change them. Code inside
the process sets them per session or connector, and overrides them for the
calls made inside a block with :func:`use_source` / :func:`use_api_key_id`
(context variables, read when each request is made).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

from ._names import SOURCE

__all__ = [
    "Source",
    "check_api_key_id",
    "check_caller_name",
    "use_api_key_id",
    "use_client",
    "use_source",
]


class Source(str):
    """The kind of caller a request comes from, such as ``agents`` or ``batch``.

    A ``str`` subclass: ``Source.AGENTS == "agents"``. ``Source("nightly")``
    makes another one. Sources become the ``source`` label of every metric,
    so they are names chosen by code, never values taken from a request:
    lower-case letters, digits, ``-`` and ``_``, at most 63 characters.
    ``"none"`` is reserved for requests that carry no source.

    Raises:
        ValueError: the value is not a valid source name.
    """

    __slots__ = ()

    AGENTS: ClassVar[Source]
    API: ClassVar[Source]
    BATCH: ClassVar[Source]

    def __new__(cls, value: str) -> Source:
        if type(value) is cls:
            return value
        SOURCE.check(value)
        if value == "none":
            raise ValueError("'none' is reserved for requests that carry no source")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Source({str(self)!r})"


Source.AGENTS = Source("agents")
Source.API = Source("api")
Source.BATCH = Source("batch")


def check_api_key_id(value: str) -> str:
    """Validate a delegated API key id (an opaque, printable identifier)."""
    if not isinstance(value, str):
        raise TypeError(f"api_key_id must be a str, not {type(value).__name__}")
    if not value or not value.isprintable() or len(value) > 256:
        raise ValueError(f"invalid api_key_id {value!r}: expected 1 to 256 printable characters")
    return value


def check_caller_name(value: str, what: str = "client") -> str:
    """Validate a gateway client's or a peer's name (printable, 1 to 256 characters)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or not value.isprintable() or len(value) > 256:
        raise ValueError(f"invalid {what} {value!r}: expected 1 to 256 printable characters")
    return value


# Unset (None) means "use the session's or connector's own value".
current_source: ContextVar[Source | None] = ContextVar("meshbridge_source", default=None)
current_api_key_id: ContextVar[str | None] = ContextVar("meshbridge_api_key_id", default=None)
# (client, peer) of a call that came in through a gateway; None for in-process code.
current_origin: ContextVar[tuple[str | None, str | None] | None] = ContextVar(
    "meshbridge_origin", default=None
)


@contextmanager
def use_source(source: str) -> Iterator[Source]:
    """Make requests issued inside the block carry ``source``.

    Overrides the source given to ``mesh.session()``/``mesh.connector()`` for
    every request made in this context (including tasks created inside it).

    Raises:
        ValueError: ``source`` is not a valid source name.
    """
    value = Source(source)
    token = current_source.set(value)
    try:
        yield value
    finally:
        current_source.reset(token)


@contextmanager
def use_api_key_id(api_key_id: str) -> Iterator[str]:
    """Make requests issued inside the block carry ``api_key_id``.

    Raises:
        ValueError: ``api_key_id`` is empty or not printable.
    """
    value = check_api_key_id(api_key_id)
    token = current_api_key_id.set(value)
    try:
        yield value
    finally:
        current_api_key_id.reset(token)


@contextmanager
def use_client(client: str | None, *, peer: str | None = None) -> Iterator[None]:
    """Make calls issued inside the block come from gateway client ``client``,
    forwarded by the signing meshbridge ``peer`` (if any).

    This is what ``meshbridge serve`` sets for the requests it forwards; a
    usage ledger records it (in-process code leaves it unset) and per-caller
    limits can match on it. Like the Source, it travels beside the request:
    no header can set it.

    Raises:
        ValueError: a name is empty, too long or not printable.
    """
    origin = (
        check_caller_name(client) if client is not None else None,
        check_caller_name(peer, "peer") if peer is not None else None,
    )
    token = current_origin.set(origin)
    try:
        yield
    finally:
        current_origin.reset(token)
