"""The upstream under chaos: a real aiohttp app whose behaviour is switched while it runs.

Its :class:`Control` holds the mode every new request meets:

* ``ok``: 200 at once (``GET /unary``: 64 bytes; ``GET /stream``: five
  events 10 ms apart, then ``data: [DONE]``);
* ``slow``: 200, the first body byte at once, the rest ``slow`` seconds later
  (many calls in flight, no timeout fires);
* ``529`` and ``529-retry-after``: ``529`` (overloaded, as Anthropic says
  it), the latter with ``Retry-After: 1``;
* ``hang``: no answer at all (the handler waits until it is cancelled);
* ``reset``: 200, half the body, then the connection is dropped.

Every 200 says which app served it (``x-served-by``), so that a caller can
tell the upstream from its fallback. The benchmark switches an in-process
app directly (:func:`control`); a ``meshbridge serve`` process serves the
same app as the provider kind ``chaos`` (:data:`KIND`, declared by
``chaos_serve.py`` through a ``meshbridge.providers`` entry point), switched
by ``PUT /control`` behind serve's bearer gate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from meshbridge.providers import Kind, OptionReader, ProviderContext

__all__ = [
    "BODY",
    "DONE",
    "HEALTHY",
    "KIND",
    "MODES",
    "SERVED_BY",
    "Control",
    "chaos_app",
    "control",
]

MODES: Final = ("ok", "slow", "529", "529-retry-after", "hang", "reset")
HEALTHY: Final = frozenset({"ok", "slow"})  # an upstream that answers well, if slowly
SERVED_BY: Final = "x-served-by"
BODY: Final = b"o" * 64
EVENTS: Final = 5
DONE: Final = b"data: [DONE]\n\n"
_GAP: Final = 0.01  # seconds between two events of a stream
_OVERLOADED: Final = json.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
).encode()


@dataclass(slots=True)
class Control:
    """What the app does with the next request."""

    mode: str = "ok"
    slow: float = 0.6  # seconds the body waits in mode "slow"

    def set(self, mode: str, slow: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        if slow is not None:
            self.slow = slow


CONTROL: Final = web.AppKey("chaos_control", Control)
NAME: Final = web.AppKey("chaos_name", str)


def control(app: web.Application) -> Control:
    """The switch of an app made by :func:`chaos_app`."""
    return app[CONTROL]


async def _answer(request: web.Request, *, events: bool) -> web.StreamResponse:
    """The answer of the mode the request meets: ``events`` (``/stream``) or a body (``/unary``)."""
    settings = request.app[CONTROL]
    mode = settings.mode
    if mode == "hang":
        await asyncio.sleep(3600)  # until the caller's side gives up and cancels it
    if mode in ("529", "529-retry-after"):
        headers = {"Retry-After": "1"} if mode == "529-retry-after" else {}
        return web.Response(
            status=529, body=_OVERLOADED, content_type="application/json", headers=headers
        )
    response = web.StreamResponse(headers={SERVED_BY: request.app[NAME]})
    if events:
        response.content_type = "text/event-stream"
    else:
        response.content_length = len(BODY)
    await response.prepare(request)
    if events:
        for n in range(EVENTS):
            await response.write(f"data: {n}\n\n".encode())
            if mode == "reset" and n == 1:
                return _hang_up(request, response)
            await asyncio.sleep(settings.slow if mode == "slow" and n == 0 else _GAP)
        await response.write(DONE)
    elif mode == "reset":
        await response.write(BODY[: len(BODY) // 2])
        return _hang_up(request, response)
    elif mode == "slow":
        await response.write(BODY[:1])  # the head and a byte: the response has begun
        await asyncio.sleep(settings.slow)
        await response.write(BODY[1:])
    else:
        await response.write(BODY)
    await response.write_eof()
    return response


def _hang_up(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection midway: what was written arrives, then the read fails."""
    if request.transport is not None:
        request.transport.close()
    return response


async def unary(request: web.Request) -> web.StreamResponse:
    return await _answer(request, events=False)


async def stream(request: web.Request) -> web.StreamResponse:
    return await _answer(request, events=True)


async def set_mode(request: web.Request) -> web.Response:
    """``PUT /control`` ``{"mode": "hang", "slow": 0.6}``: 204, or 400 saying what was wrong."""
    try:
        body = await request.json()
        request.app[CONTROL].set(str(body["mode"]), body.get("slow"))
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(text=f"PUT /control: {exc}") from None
    return web.Response(status=204)


def chaos_app(name: str) -> web.Application:
    """A controllable upstream that says it is ``name`` in ``x-served-by``."""
    app = web.Application()
    app[CONTROL] = Control()
    app[NAME] = name
    app.router.add_get("/unary", unary)
    app.router.add_get("/stream", stream)
    app.router.add_put("/control", set_mode)
    return app


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """The kind has no options: everything is switched at run time."""

    def describe(self) -> Mapping[str, str]:
        return {"upstream": "(in process)", "modes": ", ".join(MODES)}


def parse_options(reader: OptionReader) -> ChaosOptions:
    return ChaosOptions()


def create_app(options: ChaosOptions, context: ProviderContext) -> web.Application:
    return chaos_app(context.name)


KIND: Final = Kind(
    "chaos",
    "an upstream the chaos benchmark switches at run time (benchmarks/chaos_upstream.py)",
    parse_options,
    create_app,
)
