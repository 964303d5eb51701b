"""Upstream handlers for the proxy tests: the OpenAI and Anthropic wire
formats as the real APIs speak them, and upstreams misbehaving on purpose.

Each handler notes the request it got in ``app[SEEN]``; streams that must
wait for the test wait on ``app[GATE]``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from .conftest import watched

SEEN: web.AppKey[list[tuple[CIMultiDictProxy[str], bytes]]] = web.AppKey("seen", list)
GATE: web.AppKey[asyncio.Event] = web.AppKey("gate", asyncio.Event)

Handler = Any  # a module-level aiohttp handler


def upstream_app(*routes: tuple[str, str, Handler]) -> web.Application:
    """An upstream app serving ``routes`` (method, path, handler)."""
    app = watched(web.Application())
    app[SEEN] = []
    app[GATE] = asyncio.Event()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app


async def _seen(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    request.app[SEEN].append((request.headers, body))
    return json.loads(body) if body else {}


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["x-request-id"] = "req-upstream-1"
    response.headers["Set-Cookie"] = "__upstream=1"
    await response.prepare(request)
    return response


def _chunk(content: str | None, **extra: Any) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-test-2024",
            "choices": choices, **extra}  # fmt: skip


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}


# -- OpenAI -------------------------------------------------------------------


async def chat(request: web.Request) -> web.StreamResponse:
    """Chat completions: JSON, or a stream (with a usage chunk when asked)."""
    body = await _seen(request)
    if body.get("stream") is not True:
        message = {"role": "assistant", "content": "Hello"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-test-2024"}
        whole = web.json_response({**answer, "choices": [choice], "usage": USAGE})
        whole.headers["x-request-id"] = "req-upstream-1"
        whole.headers["Set-Cookie"] = "__upstream=1"
        return whole
    response = await _stream(request)
    await response.write(_sse(_chunk("Hel")))
    await response.write(_sse(_chunk("lo")))
    if body.get("stream_options", {}).get("include_usage"):
        await response.write(_sse(_chunk(None, usage=USAGE)))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def gated_chat(request: web.Request) -> web.StreamResponse:
    """A stream whose second event waits until the test has read the first."""
    await _seen(request)
    response = await _stream(request)
    await response.write(_sse(_chunk("Hel")))
    await request.app[GATE].wait()
    await response.write(_sse(_chunk("lo")))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def responses(request: web.Request) -> web.StreamResponse:
    """The Responses API, streamed."""
    await _seen(request)
    response = await _stream(request)
    done = {"id": "r1", "object": "response", "model": "gpt-test-2024", "status": "completed",
            "output": [], "usage": {"input_tokens": 9, "output_tokens": 2,
                                    "input_tokens_details": {"cached_tokens": 4}}}  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": {**done, "status": "in_progress", "usage": None}}),
        ("response.output_text.delta", {"item_id": "m1", "output_index": 0,
                                        "content_index": 0, "delta": "Hi"}),
        ("response.output_text.delta", {"item_id": "m1", "output_index": 0,
                                        "content_index": 0, "delta": "!"}),
        ("response.completed", {"response": done}),
    ]  # fmt: skip
    for n, (kind, data) in enumerate(events):
        await response.write(_sse({"type": kind, "sequence_number": n, **data}, kind))
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    await _seen(request)
    model = {"id": "gpt-test", "object": "model", "created": 1, "owned_by": "test"}
    return web.json_response({"object": "list", "data": [model]})


async def rate_limited(request: web.Request) -> web.Response:
    await _seen(request)
    error = {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate"}}
    return web.json_response(error, status=429, headers={"retry-after": "7"})


async def hang(request: web.Request) -> web.Response:
    await _seen(request)
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def die_mid_stream(request: web.Request) -> web.StreamResponse:
    await _seen(request)
    response = await _stream(request)
    await response.write(_sse(_chunk("Hel")))
    raise ConnectionAbortedError("the upstream died")  # the connection is cut, no clean end


async def broken_sse(request: web.Request) -> web.StreamResponse:
    await _seen(request)
    response = await _stream(request)
    await response.write(_sse(_chunk("Hel")))
    await response.write(b"data: {this is not json\n\n")
    await asyncio.Event().wait()  # a relay that missed the breakage would hang here
    raise AssertionError("unreachable")


async def unfinished_sse(request: web.Request) -> web.StreamResponse:
    await _seen(request)
    response = await _stream(request)
    await response.write(_sse(_chunk("Hel")))
    await response.write_eof()  # a clean end of the body, but no [DONE]
    return response


async def silent_stream(request: web.Request) -> web.StreamResponse:
    await _seen(request)
    response = await _stream(request)
    await response.write(_sse(_chunk("Hel")))
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


# -- Anthropic ------------------------------------------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 11,
    "output_tokens": 1,
    "cache_read_input_tokens": 5,
    "cache_creation_input_tokens": 6,
}


def _message(**extra: Any) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "stop_sequence": None, **extra}  # fmt: skip


async def messages(request: web.Request) -> web.StreamResponse:
    """Messages: JSON, or the real event sequence."""
    body = await _seen(request)
    if body.get("stream") is not True:
        text = [{"type": "text", "text": "Hello"}]
        usage = {**ANTHROPIC_USAGE, "output_tokens": 4}
        return web.json_response(
            _message(content=text, stop_reason="end_turn", usage=usage),
            headers={"request-id": "req-upstream-1"},
        )
    response = await _stream(request)
    start = _message(content=[], stop_reason=None, usage=ANTHROPIC_USAGE)
    block = {"type": "text", "text": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": block}),
        ("ping", {}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
    ]
    for kind, data in events:
        await response.write(_sse({"type": kind, **data}, kind))
    if request.query.get("gated"):
        await request.app[GATE].wait()
    if request.query.get("fail"):
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        await response.write(_sse(error, "error"))
        await response.write_eof()
        return response
    events = [
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 4}}),
        ("message_stop", {}),
    ]  # fmt: skip
    for kind, data in events:
        await response.write(_sse({"type": kind, **data}, kind))
    await response.write_eof()
    return response


async def count_tokens(request: web.Request) -> web.Response:
    await _seen(request)
    return web.json_response({"input_tokens": 42})


async def anthropic_models(request: web.Request) -> web.Response:
    await _seen(request)
    data = [{"type": "model", "id": "claude-test", "display_name": "Claude Test",
             "created_at": "2025-01-01T00:00:00Z"}]  # fmt: skip
    return web.json_response(
        {"data": data, "has_more": False, "first_id": "claude-test", "last_id": "claude-test"}
    )


async def anthropic_die_mid_stream(request: web.Request) -> web.StreamResponse:
    await _seen(request)
    response = await _stream(request)
    start = _message(content=[], stop_reason=None, usage=ANTHROPIC_USAGE)
    await response.write(_sse({"type": "message_start", "message": start}, "message_start"))
    raise ConnectionAbortedError("the upstream died")
