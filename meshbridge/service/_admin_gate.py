"""The gate of the admin endpoints (the usage API, and any admin page built
on it): one check every admin handler goes through.

Rules of the admin gate:

1. Where: on the admin listener (``admin_listen``); on the public listener
   only when the operator says so (``[server] admin_api_public = true``).
   Anywhere else an admin path is a 404, like any path nothing serves.
2. Who: a request with exactly one ``Authorization: Bearer TOKEN`` header
   whose token is ``[server] admin_token_env``'s, or a client's marked
   ``admin = true`` (compared in constant time with every admin token). A
   request signed by a peer never passes: peers forward calls, they do not
   administer. Anything else is a 401.
3. With no admin token configured at all, every request is refused with a
   403 that says how to configure one.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from meshbridge.providers import PEER_HEADER

from ._config import ServerConfig
from ._http_guard import json_error, listener_of

__all__ = ["AdminGate"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminGate:
    """Who may reach the admin endpoints (see the module's rules).

    Args:
        settings: the running ``[server]`` table (read per request, so a
            reload applies to the next request).
        admin_apart: whether the server has an admin listener.
        not_found: the answer to a path nothing serves here (rule 1).
    """

    def __init__(
        self, settings: Callable[[], ServerConfig], *, admin_apart: bool, not_found: Handler
    ) -> None:
        self._settings = settings
        self._admin_apart = admin_apart
        self._not_found = not_found

    def _tokens(self) -> list[bytes]:
        settings = self._settings()
        tokens = [client.token.encode() for client in settings.clients if client.admin]
        if settings.admin_token:
            tokens.append(settings.admin_token.encode())
        return tokens

    def served_here(self, request: web.BaseRequest) -> bool:
        """Whether admin endpoints are served on the listener of ``request`` (rule 1)."""
        listener = listener_of(request)
        on_admin = listener is not None and listener.admin
        return on_admin or self._settings().admin_api_public

    def refusal(self, request: web.BaseRequest) -> web.Response | None:
        """None if ``request`` may use the admin API, else the 401 or 403 (rules 2, 3)."""
        tokens = self._tokens()
        if not tokens:
            message = ("no admin token is configured: set [server] admin_token_env, "
                       "or admin = true on a [server.clients.NAME]")  # fmt: skip
            return json_error(403, "permission_error", message)
        offered = request.headers.getall("Authorization", [])
        scheme, _, token = offered[0].partition(" ") if len(offered) == 1 else ("", "", "")
        matched = False
        for known in tokens:  # every one, so timing does not tell which matched
            matched |= hmac.compare_digest(token.strip().encode(), known)
        if PEER_HEADER in request.headers or scheme.lower() != "bearer" or not matched:
            denied = json_error(401, "authentication_error", "missing or invalid admin token")
            denied.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge admin"'
            return denied
        return None

    def protect(self, handler: Handler) -> Handler:
        """``handler`` behind the gate."""

        async def gated(request: web.Request) -> web.StreamResponse:
            if not self.served_here(request):
                return await self._not_found(request)
            refused = self.refusal(request)
            return refused if refused is not None else await handler(request)

        return gated
