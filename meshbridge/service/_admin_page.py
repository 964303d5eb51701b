"""The admin page of ``meshbridge serve``: ``GET /admin/``, its live part
``/admin/live`` (which a little JavaScript fetches again every
``[server] admin_refresh`` seconds), its style sheet, script and icon,
signing in and out, and its data as JSON: ``/admin/api/config`` and
``/admin/api/live`` (the ledger's are ``_usage_api.py``'s).

Rules of the page:

1. One gate: every path here goes through :class:`AdminGate` (served on the
   admin listener, or also on the public one with ``admin_api_public``).
   The page takes an admin token or the session cookie a browser got by
   signing in with one (``_admin_session.py``), and its 401 is the sign-in
   form; the JSON takes a bearer token only. The sign-in form, the style
   sheet, the script and the icon need no token (they show nothing).
2. Read-only: GET only, but for signing in and out, which change nothing
   but the browser's cookie. Nothing here changes the mesh, the config, the
   limits or the ledger.
3. Everything shown is escaped: Jinja2 autoescaping renders every value
   (model names, paths, key ids and client names come from callers); the
   script only swaps in the server-rendered, escaped live part; and a
   Content-Security-Policy without inline scripts or styles backs this up.
   No value is ever put into a script, a style or an event handler.
4. Works with JavaScript off: the recent-calls filters are a GET form, a
   call's record opens with ``<details>``, paging is a link; only the live
   refresh needs JavaScript (without it, reloading the page refreshes it).
5. No build step and no CDN: the templates, the script and the style sheet
   are files of the package (``_admin/``), and so is its icon.
6. The rates over the last minute come from a ring of counter snapshots
   (``_admin_rates.py``) that a task of the service samples every few
   seconds and each read of the live state samples too: nothing per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from functools import partial
from importlib.resources import files
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from ._admin_gate import AdminGate, Handler
from ._admin_rates import STEP
from ._admin_session import clear_session, set_session, signed
from ._admin_state import AdminState
from ._config import ServerConfig
from ._ledger_query import OUTCOMES
from ._usage_api import UsageAPI, call_json, row_json

__all__ = ["AdminPage"]

PAGE_SIZE: Final = 50
FILTERS: Final = ("source", "key", "client", "provider", "model", "outcome", "since", "until")
_STATIC: Final = {
    "admin.js": "text/javascript",
    "admin.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# Rule 3: no inline script or style, nothing from elsewhere, never in a frame.
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _when(value: str | None) -> str:
    """ISO 8601 UTC as ``2025-06-14 12:34:56Z``."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%SZ")


def _cross_site(request: web.BaseRequest) -> bool:
    """Whether another site's page sent ``request`` (rule 4 of ``_admin_session.py``):
    what the browser says (``Sec-Fetch-Site``), else the ``Origin`` it sent."""
    fetched_from = request.headers.get("Sec-Fetch-Site")
    if fetched_from is not None:
        return fetched_from not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("meshbridge.service", "_admin"),
        autoescape=True,  # rule 3: every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(seconds=_seconds, ratio=_ratio, when=_when)
    return env


class AdminPage:
    """The admin page's routes (see the module's rules).

    Args:
        gate: the admin gate (the same as the usage API's).
        state: what the page shows.
        usage: the ledger's reader, for the recent calls and the per-key summary.
        settings: the running ``[server]`` table (its ``admin_refresh``).
    """

    def __init__(
        self,
        gate: AdminGate,
        state: AdminState,
        usage: UsageAPI,
        settings: Callable[[], ServerConfig],
    ) -> None:
        self._gate = gate
        self.state = state
        self._usage = usage
        self._settings = settings
        self._env = _environment()
        folder = files("meshbridge.service").joinpath("_admin")
        self._static = {name: folder.joinpath(name).read_bytes() for name in _STATIC}

    def routes(self) -> list[tuple[str, str, Handler]]:
        gate = self._gate
        page = partial(gate.protect, sign_in=self._sign_in_form)
        return [
            ("GET", "/admin", gate.here(self._to_page)),
            ("GET", "/admin/", page(self._page)),
            ("GET", "/admin/live", page(self._live)),
            ("POST", "/admin/sign-in", gate.here(self._sign_in)),
            ("POST", "/admin/sign-out", gate.here(self._sign_out)),
            ("GET", "/admin/static/{name}", gate.here(self._file)),
            ("GET", "/admin/api/config", gate.protect(self._config_api)),
            ("GET", "/admin/api/live", gate.protect(self._live_api)),
        ]

    async def sampling(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: the sampler of the rates runs while the app does (rule 6)."""

        async def sample_forever() -> None:
            while True:
                self.state.sample()
                await asyncio.sleep(STEP)

        task = asyncio.create_task(sample_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- HTML ------------------------------------------------------------------

    def _html(self, template: str, status: int = 200, **context: Any) -> web.Response:
        body = self._env.get_template(template).render(**context)
        answer = web.Response(status=status, text=body, content_type="text/html", headers=_HEADERS)
        if status == 401:
            answer.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge admin"'
        return answer

    async def _sign_in_form(self, request: web.Request, message: str = "") -> web.StreamResponse:
        return self._html("sign_in.html", 401, message=message)

    async def _sign_in(self, request: web.Request) -> web.StreamResponse:
        if _cross_site(request):
            return self._html("sign_in.html", 403, message="a sign-in from another site is refused")
        if not self._gate.tokens():
            return self._html("sign_in.html", 403, message="no admin token is configured: set "
                              "[server] admin_token_env, or admin = true on a client")  # fmt: skip
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not self._gate.matches(token):
            return await self._sign_in_form(request, "That is not an admin token.")
        answer = web.Response(status=303, headers={**_HEADERS, "Location": "./"})
        value = signed(token.strip().encode(), self._gate.clock())
        set_session(answer, value, secure=request.secure)
        return answer

    async def _sign_out(self, request: web.Request) -> web.StreamResponse:
        answer = web.Response(status=303, headers={**_HEADERS, "Location": "./"})
        clear_session(answer)
        return answer

    async def _to_page(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect("/admin/", headers=_HEADERS)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        params = request.query
        filters = {name: params.get(name, "").strip() for name in FILTERS}
        chosen = {name: value for name, value in filters.items() if value}
        calls, status = await self._calls(chosen, params.get("cursor", ""))
        config = self.state.config_json()
        return self._html(
            "page.html",
            status,
            config=config,
            live=await self.state.live_json(),
            reloaded=False,
            refresh=self._settings().admin_refresh,
            filters=filters,
            outcomes=OUTCOMES,
            provider_names=[p["name"] for p in config["providers"]],
            **calls,
        )

    async def _calls(self, chosen: Mapping[str, str], cursor: str) -> tuple[dict[str, Any], int]:
        """The recent calls and the per-key summary for the page, or why not."""
        found: dict[str, Any] = {"calls": [], "summary": [], "older": None, "calls_error": None}
        try:
            page, after = await self._usage.calls({**chosen, "limit": str(PAGE_SIZE),
                                                    "cursor": cursor})  # fmt: skip
            rows = await self._usage.summary({**chosen, "group_by": "key"})
        except ValueError as exc:
            found["calls_error"] = str(exc)
            return found, 400
        except LookupError as exc:
            found["calls_error"] = str(exc)
            return found, 200
        except Exception as exc:  # the database is down: the rest of the page still shows
            found["calls_error"] = f"the ledger's database: {type(exc).__name__}"
            return found, 200
        found["calls"] = [call_json(record) for record in page]
        found["summary"] = [row_json(row) for row in rows]
        if after is not None:
            found["older"] = "?" + urlencode({**chosen, "cursor": after})
        return found, 200

    async def _live(self, request: web.Request) -> web.StreamResponse:
        live = await self.state.live_json()
        # the reloads the page saw when it loaded: any since then is said
        seen = request.query.get("reloads", "")
        now = "{success}.{failure}".format(**live["config"]["reloads"])
        return self._html("live.html", live=live, reloaded=bool(seen) and seen != now)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:  # a fixed list: no path reaches the file system
            raise web.HTTPNotFound()
        headers = {**_HEADERS, "Cache-Control": "no-cache"}
        return web.Response(body=self._static[name], content_type=_STATIC[name], headers=headers)

    # -- JSON ------------------------------------------------------------------

    async def _config_api(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.state.config_json(), headers={"Cache-Control": "no-store"})

    async def _live_api(self, request: web.Request) -> web.StreamResponse:
        live = await self.state.live_json()
        return web.json_response(live, headers={"Cache-Control": "no-store"})
