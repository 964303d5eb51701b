"""What the gateway writes when a request ends: one structured access-log
line (logger ``meshbridge.access``, rule 7 of ``_gateway.py``), and the
ledger's record of a call the gateway refused itself (rule 8, ``_refusals.py``).

The gateway's handlers leave what they learn on the request under the keys
below; the middleware reads them once the handler is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from ._ledger import Ledger
from ._peer_auth import Caller
from ._refusals import refusal_record

__all__ = ["CLIENT", "HANDED", "PROVIDER", "RESPONSE", "SENT", "AccessLog"]

access_log = logging.getLogger("meshbridge.access")

CLIENT: Final = web.RequestKey("meshbridge_client", Caller)
PROVIDER: Final = web.RequestKey("meshbridge_provider", str)
RESPONSE: Final = web.RequestKey("meshbridge_response", web.StreamResponse)
SENT: Final = web.RequestKey("meshbridge_sent", int)  # body bytes relayed so far
HANDED: Final = web.RequestKey("meshbridge_handed", bool)  # to the mesh, which records it

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessLog:
    """The gateway's access log, and its ledger records of refusals."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.ledger = ledger

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Handler,
    ) -> web.StreamResponse:
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
            self._log(request, response, outcome, seconds)
            client = request.get(CLIENT)
            if self.ledger is not None and client is not None and not request.get(HANDED):
                self.ledger.record(
                    refusal_record(client, request.get(PROVIDER), request,
                                   response or request.get(RESPONSE), outcome, seconds)
                )  # fmt: skip

    def _log(
        self,
        request: web.Request,
        response: web.StreamResponse | None,
        outcome: str,
        seconds: float,
    ) -> None:
        if not access_log.isEnabledFor(logging.INFO):
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
        access_log.info(json.dumps(line, separators=(",", ":")))

    def rejected(self, remote: str | None, status: int, outcome: str) -> None:
        """The access-log line of what never reached a handler (malformed
        HTTP, a head that timed out): nothing of the request is repeated."""
        if access_log.isEnabledFor(logging.INFO):
            nobody = dict.fromkeys(("method", "path", "provider", "client", "source"))
            line = {**nobody, "status": status, "outcome": outcome, "remote": remote}
            access_log.info(json.dumps(line, separators=(",", ":")))
