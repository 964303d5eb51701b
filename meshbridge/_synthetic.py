"""Responses the mesh makes itself: a breaker open, a limit reached, a timeout.

They are written to the caller as the bytes of a real HTTP/1.1 response, so
the caller's client parses them as it parses any other. Each names why in
``x-meshbridge-reason`` and, where waiting helps, says how long in
``Retry-After``. The body is the provider's own error shape when its app
sets :data:`ERROR_BODY` (so an SDK parses it as that provider's error), and
an RFC 9457 problem document otherwise.
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Final, Protocol

from aiohttp import web

__all__ = ["ERROR_BODY", "ErrorBody", "problem_body", "synthetic_response"]


class ErrorBody(Protocol):
    """Shapes an error the mesh answers in a provider's name."""

    def __call__(self, status: int, reason: str, message: str) -> tuple[str, bytes]:
        """The content type and body for ``status``; ``reason`` is the
        ``x-meshbridge-reason`` value (circuit-open, overloaded, timeout,
        fault, unavailable) and ``message`` says what happened."""
        ...


ERROR_BODY: Final = web.AppKey[ErrorBody]("meshbridge_error_body")
"""Set on a provider's app to shape the errors the mesh answers in its name."""


def problem_body(status: int, reason: str, message: str) -> tuple[str, bytes]:
    """An ``application/problem+json`` document (RFC 9457)."""
    body = {
        "type": "about:blank",
        "title": _phrase(status),
        "status": status,
        "detail": message,
        "reason": reason,
    }
    return "application/problem+json", json.dumps(body).encode()


def synthetic_response(
    status: int,
    reason: str,
    message: str,
    retry_after: float | None,
    shape: ErrorBody | None,
    *,
    retried: bool = False,
) -> bytes:
    """The whole response, head and body. ``retried``: the mesh already
    retried (or failed over) for this call, so ``x-should-retry: false``
    tells the official SDKs not to multiply its retries with their own."""
    content_type, body = (shape or problem_body)(status, reason, message)
    lines = [
        f"HTTP/1.1 {status} {_phrase(status)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"x-meshbridge-reason: {reason}",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {max(1, math.ceil(retry_after))}")
    if retried:
        lines.append("x-should-retry: false")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
