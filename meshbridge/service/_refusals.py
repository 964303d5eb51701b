"""The ledger's records of calls the gateway answered itself.

The mesh records every call it was handed. A request the gateway refused
after its gate knew the caller (a provider outside the client's scope, an
unknown provider, a body too large or too slow, a provider that requires an
API key id the client has none of) never became a call of the mesh, yet it
is a call that client made: the gateway records it, with ``attempts = 0``
and ``reason`` ``gateway:<error type>``.

A request that did not pass the gate (no or a wrong token, a bad signature)
is not recorded: the ledger holds what known callers did, and a caller
without credentials must not be able to write rows. The access log and
``meshbridge_peer_auth_failures_total`` count those.
"""

from __future__ import annotations

import json
from time import time

from aiohttp import web

from meshbridge import CallRecord, uuid7

from ._access_log import CLIENT, HANDED, PROVIDER, RESPONSE, Ended
from ._ledger import Ledger
from ._peer_auth import Caller

__all__ = ["record_refusals", "refusal_record"]

_PEER_PREFIX = "peer:"


def _error_type(response: web.StreamResponse) -> str:
    body = response.body if isinstance(response, web.Response) else None
    try:
        assert isinstance(body, bytes)
        found = json.loads(body)["error"]["type"]
        return found if isinstance(found, str) else "refused"
    except (AssertionError, ValueError, KeyError, TypeError):
        return "refused"


def record_refusals(ledger: Ledger) -> Ended:
    """The ``ON_END`` callback that records, in ``ledger``, each request the
    gateway answered itself after its gate knew the caller."""

    def ended(
        request: web.Request, response: web.StreamResponse | None, outcome: str, seconds: float
    ) -> None:
        caller = request.get(CLIENT)
        if caller is not None and not request.get(HANDED):
            answered = response or request.get(RESPONSE)
            provider = request.get(PROVIDER)
            ledger.record(refusal_record(caller, provider, request, answered, outcome, seconds))

    return ended


def refusal_record(
    caller: Caller,
    target: str | None,
    request: web.BaseRequest,
    response: web.StreamResponse | None,
    outcome: str,
    seconds: float,
) -> CallRecord:
    """The record of a request the gateway answered itself, ``seconds`` long."""
    started = time() - seconds
    signed = caller.signed and caller.name.startswith(_PEER_PREFIX)
    status = response.status if response is not None else 0
    return CallRecord(
        id=uuid7(started),
        started=started,
        duration=seconds,
        ttfb=seconds if response is not None else None,
        ttft=None,
        source=caller.source,
        api_key_id=caller.api_key_id,
        client=None if signed else caller.name,
        peer=caller.name.removeprefix(_PEER_PREFIX) if signed else None,
        target=target or "",
        provider=target or "",
        attempts=0,
        fallback=False,
        reason=f"gateway:{_error_type(response) if response is not None else outcome}",
        method=request.method,
        path=request.rel_url.raw_path,
        status=status,
        outcome=outcome if response is None else "error",
    )
