"""What the mesh tells a usage ledger: one record per caller request.

A :class:`CallRecord` is made when a call ends, in the one place every call
ends (the unit ``meshbridge_calls_total`` counts: what one caller request
got, after retries and fallbacks), and handed to the mesh's ledger, if it
has one. The core only makes records; where they go (SQLite, PostgreSQL) is
the service layer's business (``meshbridge.service.Ledger``), or anything
else that has the shape of :class:`LedgerSink`.

Never a credential: ``api_key_id`` is the delegated key's id, set by code or
by the gateway's client table, never a key.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["CallRecord", "LedgerSink", "uuid7"]


@dataclass(slots=True, kw_only=True)
class CallRecord:
    """One caller request through the mesh, as it ended.

    Attributes:
        id: a UUIDv7 (text): unique, and sorts by start time.
        started: when the call started, seconds since the epoch.
        duration: seconds from its start to its end.
        ttfb: seconds to the response head the caller got (None: none came).
        ttft: seconds to the first token, for streams the provider reported.
        source, api_key_id: who called (None: unset).
        client: the gateway client it came through (None: in-process code).
        peer: the signing meshbridge it came through (a ``remote`` hop), whose
            signature carried ``source`` and ``api_key_id``.
        target: the name the caller used (a provider or a route).
        provider: the provider that answered, or was last tried.
        attempts: attempts made (0: the mesh answered before any).
        fallback: whether a fallback provider was tried.
        reason: ``x-meshbridge-reason`` when the mesh answered itself.
        method, path: the request's method and path (no query).
        status: the status the caller got (0: none).
        outcome: ``completed``, ``error`` or ``cancelled``.
        request_model, response_model: the model asked for and the one that
            answered, as the provider reported them.
        input_tokens, output_tokens, cached_input_tokens, reasoning_tokens:
            usage as the provider reported it (None: not reported).
        tool_calls: the names of the tools the response called, in order.
        trace_id: the trace's id (32 hex digits) when tracing is on.
        prompt: the last user prompt, only when the ledger asks for prompts.
    """

    id: str
    started: float
    duration: float
    ttfb: float | None
    ttft: float | None
    source: str | None
    api_key_id: str | None
    client: str | None
    peer: str | None
    target: str
    provider: str
    attempts: int
    fallback: bool
    reason: str | None
    method: str
    path: str
    status: int
    outcome: str
    request_model: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_calls: tuple[str, ...] = ()
    trace_id: str | None = None
    prompt: str | None = None


@runtime_checkable
class LedgerSink(Protocol):
    """What ``Mesh(ledger=...)`` takes.

    ``record`` is called on the event loop, once per call, when it ends: it
    must return at once (queue the record; never wait for a database).
    ``start`` runs when the mesh starts, ``aclose`` after its providers have
    stopped (flush what is queued). ``record_prompts``: whether records
    should carry the last user prompt.
    """

    record_prompts: bool

    def record(self, record: CallRecord) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


# Random bits of ids (uniqueness, not secrecy: ids are not credentials), from
# a generator of the module's own, seeded from the OS: nobody's random.seed()
# repeats them.
_random = random.Random().getrandbits


def uuid7(unix_seconds: float | None = None) -> str:
    """A UUIDv7 (RFC 9562) as text: 48 bits of milliseconds, then random bits:
    unique, and ordered by time (what the ledger keys its rows by)."""
    ms = int((time.time() if unix_seconds is None else unix_seconds) * 1000)
    rand = _random(74)
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62
    h = f"{value | (rand & 0x3FFFFFFFFFFFFFFF):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
