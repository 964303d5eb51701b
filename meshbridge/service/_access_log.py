"""The access log of ``meshbridge serve``: one structured JSON line per
request (logger ``meshbridge.access``), also for what never reached a
handler (malformed HTTP, head timeouts), where nothing of the request is
repeated. The gateway notes on each request what the line reports.

Once the line is written, the app's ``ON_END`` callbacks are told how the
request ended (the usage ledger's record of a refusal: ``_refusals.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from ._peer_auth import Caller

__all__ = [
    "CLIENT",
    "HANDED",
    "ON_END",
    "PROVIDER",
    "RESPONSE",
    "SENT",
    "Ended",
    "access_log",
    "log_rejected",
]

log = logging.getLogger("meshbridge.access")

CLIENT: Final = web.RequestKey("meshbridge_client", Caller)
PROVIDER: Final = web.RequestKey("meshbridge_provider", str)
RESPONSE: Final = web.RequestKey("meshbridge_response", web.StreamResponse)
SENT: Final = web.RequestKey("meshbridge_sent", int)  # body bytes relayed so far
HANDED: Final = web.RequestKey("meshbridge_handed", bool)  # to the mesh, which records the call

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Told of each request's end: (request, response or None, outcome, seconds).
Ended = Callable[[web.Request, web.StreamResponse | None, str, float], None]
ON_END: Final = web.AppKey("meshbridge_on_end", list[Ended])


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The middleware that writes each request's line."""
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    outcome = "error"
    try:
        response = await handler(request)
        outcome = "completed"
        return response
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except web.HTTPException as exc:
        response, outcome = exc, "completed"
        raise
    finally:
        seconds = time.perf_counter() - started
        _log(request, response, outcome, seconds)
        for ended in request.app.get(ON_END, ()):
            ended(request, response, outcome, seconds)


def _log(
    request: web.Request,
    response: web.StreamResponse | None,
    outcome: str,
    seconds: float,
) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    client = request.get(CLIENT)
    response = response or request.get(RESPONSE)  # a stream that broke had started
    if response is None:
        status, sent = (0 if outcome == "cancelled" else 500), 0
    elif isinstance(response, web.Response):
        status, sent = response.status, response.content_length or 0
    else:
        status, sent = response.status, request.get(SENT, 0)
    line = {
        "method": request.method,
        "path": request.rel_url.raw_path,
        "provider": request.get(PROVIDER),
        "client": client.name if client is not None else None,
        "source": str(client.source) if client and client.source else None,
        "status": status,
        "outcome": outcome,
        "duration_ms": round(seconds * 1000, 3),
        "bytes_in": request.content.total_bytes,
        "bytes_out": sent,
        "remote": request.remote,
    }
    log.info(json.dumps(line, separators=(",", ":")))


def log_rejected(remote: str | None, status: int, outcome: str) -> None:
    """The access-log line of what never reached a handler (malformed
    HTTP, a head that timed out): nothing of the request is repeated."""
    if log.isEnabledFor(logging.INFO):
        nobody = dict.fromkeys(("method", "path", "provider", "client", "source"))
        line = {**nobody, "status": status, "outcome": outcome, "remote": remote}
        log.info(json.dumps(line, separators=(",", ":")))
