"""The admin page's sign-in session: a browser cannot send a bearer header
when its person follows a link, so the page takes the admin token once, in
a form, and answers with a cookie that stands for it.

Rules of a session:

1. The cookie holds no token: it is ``v1.EXPIRES.MAC``, where MAC is the
   HMAC-SHA256 of ``EXPIRES`` keyed with one of the admin tokens. Any worker
   of ``serve --workers`` checks it (they share the config), and a token
   that a reload changes or removes ends its sessions at the next request.
2. It opens the page only (``/admin/``, ``/admin/live``): the JSON
   endpoints (``/admin/api/...``) take a bearer token and nothing else, so
   what a script needs and what a stolen cookie gives stay apart.
3. ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's
   page makes the browser send it), ``Path=/admin/``, ``Max-Age`` of
   :data:`SESSION_SECONDS`; ``Secure`` when the request came over HTTPS.
4. Signing in changes nothing but the browser's cookie. A sign-in posted by
   another site's page (an ``Origin`` that is not this host) is refused, so
   no other site can sign a browser in with a token of its choosing.
5. Time is passed in (``now``, seconds since the epoch): expiry is tested
   on a clock the test chooses.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from aiohttp import web

__all__ = ["COOKIE", "SESSION_SECONDS", "clear_session", "session_valid", "set_session", "signed"]

COOKIE: Final = "meshbridge_admin"
SESSION_SECONDS: Final = 12 * 3600
_VERSION: Final = "v1"
_PURPOSE: Final = b"meshbridge admin session v1|"  # a MAC for this and nothing else


def _mac(token: bytes, expires: str) -> str:
    return hmac.new(token, _PURPOSE + expires.encode(), hashlib.sha256).hexdigest()


def signed(token: bytes, now: float, seconds: int = SESSION_SECONDS) -> str:
    """The cookie value of a session opened with ``token`` at ``now`` (rule 1)."""
    expires = str(int(now) + seconds)
    return f"{_VERSION}.{expires}.{_mac(token, expires)}"


def session_valid(value: str, tokens: Sequence[bytes], now: float) -> bool:
    """Whether ``value`` is a session of one of ``tokens`` that has not expired."""
    version, _, rest = value.partition(".")
    expires, _, mac = rest.partition(".")
    if version != _VERSION or not expires.isdigit() or len(expires) > 12:
        return False
    matched = False
    for token in tokens:  # every one, so timing does not tell which matched
        matched |= hmac.compare_digest(_mac(token, expires).encode(), mac.encode(errors="replace"))
    return matched and int(expires) > now


def set_session(response: web.StreamResponse, value: str, *, secure: bool) -> None:
    """Put the session cookie ``value`` on ``response`` (rule 3)."""
    response.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, path="/admin/", secure=secure,
                        httponly=True, samesite="Strict")  # fmt: skip


def clear_session(response: web.StreamResponse) -> None:
    """Make the browser forget its session cookie."""
    response.del_cookie(COOKIE, path="/admin/", httponly=True, samesite="Strict")
