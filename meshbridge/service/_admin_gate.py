"""The gate of the admin endpoints (the usage API, the admin page and its
JSON): one check every admin handler goes through.

Rules of the admin gate:

1. Where: on the admin listener (``admin_listen``); on the public listener
   only when the operator says so (``[server] admin_api_public = true``).
   Anywhere else an admin path is a 404, like any path nothing serves.
2. Who: a request with exactly one ``Authorization`` header carrying an
   admin token: ``[server] admin_token_env``'s, or a client's marked
   ``admin = true`` (compared in constant time with every admin token),
   either as ``Bearer TOKEN`` (scripts) or as HTTP Basic credentials whose
   password is the token, any user name (what a browser sends once its
   person typed the token into its sign-in prompt). A request signed by a
   peer never passes: peers forward calls, they do not administer.
   Anything else is a 401: the page's offers Basic (so a browser asks for
   the token), every other one Bearer.
3. With no admin token configured at all, every request is refused with a
   403 that says how to configure one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from meshbridge.providers import PEER_HEADER

from ._config import ServerConfig
from ._http_guard import json_error, listener_of

__all__ = ["AdminGate"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SIGN_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meshbridge admin: sign in</title></head>
<body><h1>401: this page needs the admin token</h1>
<p>Your browser asks for it: any user name, and the admin token as the password
(<code>[server] admin_token_env</code>, or the token of a client with <code>admin = true</code>).
Scripts send <code>Authorization: Bearer TOKEN</code> to <code>/admin/api/...</code>.</p>
</body></html>
"""


def _offered_token(header: str) -> bytes | None:
    """The token of one ``Authorization`` value: Bearer's, or Basic's password."""
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value.encode(errors="replace")
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


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

    def refusal(self, request: web.BaseRequest, *, page: bool = False) -> web.Response | None:
        """None if ``request`` may use the admin endpoints, else the 401 or 403
        (rules 2, 3); ``page``: the 401 is a page that asks a browser for the token."""
        tokens = self._tokens()
        if not tokens:
            message = ("no admin token is configured: set [server] admin_token_env, "
                       "or admin = true on a [server.clients.NAME]")  # fmt: skip
            return json_error(403, "permission_error", message)
        offered = request.headers.getall("Authorization", [])
        token = _offered_token(offered[0]) if len(offered) == 1 else None
        matched = False
        for known in tokens:  # every one, so timing does not tell which matched
            matched |= hmac.compare_digest(token or b"", known)
        if PEER_HEADER in request.headers or token is None or not matched:
            if page:
                denied = web.Response(status=401, text=_SIGN_IN, content_type="text/html")
                denied.headers["WWW-Authenticate"] = (
                    'Basic realm="meshbridge admin", charset="UTF-8"'
                )
                denied.headers["Cache-Control"] = "no-store"
                return denied
            denied = json_error(401, "authentication_error", "missing or invalid admin token")
            denied.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge admin"'
            return denied
        return None

    def protect(self, handler: Handler, *, page: bool = False) -> Handler:
        """``handler`` behind the gate (``page``: its 401 asks a browser for the token)."""

        async def gated(request: web.Request) -> web.StreamResponse:
            if not self.served_here(request):
                return await self._not_found(request)
            refused = self.refusal(request, page=page)
            return refused if refused is not None else await handler(request)

        return gated
