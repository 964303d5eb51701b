"""The gate of the admin endpoints (the usage API, the admin page and its
JSON): one check every admin handler goes through.

Rules of the admin gate:

1. Where: on the admin listener (``admin_listen``); on the public listener
   only when the operator says so (``[server] admin_api_public = true``).
   Anywhere else an admin path is a 404, like any path nothing serves.
2. Who: a request with exactly one ``Authorization: Bearer TOKEN`` header
   whose token is ``[server] admin_token_env``'s, or a client's marked
   ``admin = true`` (compared in constant time with every admin token). A
   request signed by a peer never passes: peers forward calls, they do not
   administer. Anything else is a 401.
3. The admin page (and only it, :meth:`AdminGate.protect` with
   ``sign_in``) also takes the session cookie a browser got by signing in
   with such a token (``_admin_session.py``); its 401 is the sign-in form.
4. With no admin token configured at all, every request is refused with a
   403 that says how to configure one.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from meshbridge.providers import PEER_HEADER

from ._admin_session import COOKIE, session_valid
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
        clock: seconds since the epoch, for sessions' expiry (rule 3).
    """

    def __init__(
        self,
        settings: Callable[[], ServerConfig],
        *,
        admin_apart: bool,
        not_found: Handler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self.clock = clock
        self._admin_apart = admin_apart
        self._not_found = not_found

    def tokens(self) -> list[bytes]:
        """Every admin token of the running config."""
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

    def matches(self, token: str) -> bool:
        """Whether ``token`` is an admin token (rule 2; constant time)."""
        offered, matched = token.strip().encode(errors="replace"), False
        for known in self.tokens():  # every one, so timing does not tell which matched
            matched |= hmac.compare_digest(offered, known)
        return matched and bool(offered)

    def refusal(self, request: web.BaseRequest, *, session: bool = False) -> web.Response | None:
        """None if ``request`` may use the admin endpoints, else the 401 or 403
        (rules 2 to 4); ``session``: a valid session cookie also lets it pass."""
        tokens = self.tokens()
        if not tokens:
            message = ("no admin token is configured: set [server] admin_token_env, "
                       "or admin = true on a [server.clients.NAME]")  # fmt: skip
            return json_error(403, "permission_error", message)
        offered = request.headers.getall("Authorization", [])
        scheme, _, token = offered[0].partition(" ") if len(offered) == 1 else ("", "", "")
        matched = scheme.lower() == "bearer" and self.matches(token)
        if not matched and session and COOKIE in request.cookies:
            matched = session_valid(request.cookies[COOKIE], tokens, self.clock())
        if matched and PEER_HEADER not in request.headers:
            return None
        denied = json_error(401, "authentication_error", "missing or invalid admin token")
        denied.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge admin"'
        return denied

    def protect(self, handler: Handler, *, sign_in: Handler | None = None) -> Handler:
        """``handler`` behind the gate. With ``sign_in`` (the admin page), a
        session cookie also passes and a refused request gets ``sign_in``'s
        answer (rule 3)."""

        async def gated(request: web.Request) -> web.StreamResponse:
            if not self.served_here(request):
                return await self._not_found(request)
            refused = self.refusal(request, session=sign_in is not None)
            if refused is None:
                return await handler(request)
            if sign_in is not None and refused.status == 401:
                return await sign_in(request)
            return refused

        return gated

    def here(self, handler: Handler) -> Handler:
        """``handler`` where admin paths are served, with no token (rule 1 only:
        the sign-in form and the page's style sheet, script and icon)."""

        async def located(request: web.Request) -> web.StreamResponse:
            if not self.served_here(request):
                return await self._not_found(request)
            return await handler(request)

        return located
