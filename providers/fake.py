"""The ``fake`` kind: a local, deterministic LLM emulator. No key, no network.

It speaks the two wire formats agents use, closely enough for the official
SDKs: OpenAI chat completions (``POST /v1/chat/completions``, streaming and
not, with ``stream_options.include_usage``) and Anthropic messages (``POST
/v1/messages`` with the real event sequence, ``/v1/messages/count_tokens``),
plus ``GET /v1/models`` (Anthropic-shaped when the caller sends
``anthropic-version``). Replies are made of deterministic words, paced by
``time_to_first_token`` and ``tokens_per_second``; ``usage`` counts the tokens
actually sent. ``fail_every = N`` makes every Nth generation raise, so a demo
or a test sees handler errors (500s) on purpose.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiohttp import web

from meshbridge import ERROR_BODY

from ._kind import Kind, ProviderContext
from ._options import OptionReader
from ._sse import encode
from ._text import content_text, prompt_tokens, reply_tokens
from ._usage import ModelLabels, Usage, report

__all__ = ["KIND", "FakeOptions", "create_app", "parse_options"]

JSON = dict[str, Any]
DEFAULT_MODELS: Final = ("fake-small", "fake-large")


@dataclass(frozen=True, slots=True)
class FakeOptions:
    """Options of a fake provider (all optional)."""

    tokens_per_second: float = 100.0  # 0: as fast as the caller reads
    time_to_first_token: float = 0.1  # seconds before the first token
    reply_tokens: int = 24  # tokens per reply, unless max_tokens is lower
    models: tuple[str, ...] = DEFAULT_MODELS  # listed by /v1/models; other names label as "other"
    fail_every: int = 0  # every Nth generation raises (a 500); 0: never
    # An outage, for demos and for testing callers' resilience: from
    # outage_after seconds after the app started, for outage_for seconds,
    # generations answer outage_status (or, with 0, hang before the first byte).
    outage_after: float = 0.0
    outage_for: float = 0.0  # 0: no outage
    outage_status: int = 529

    def describe(self) -> Mapping[str, str]:
        shown = {
            "upstream": "(in process)",
            "tokens_per_second": f"{self.tokens_per_second:g}",
            "time_to_first_token": f"{self.time_to_first_token:g}",
            "reply_tokens": str(self.reply_tokens),
            "models": ",".join(self.models),
            "fail_every": str(self.fail_every),
        }
        if self.outage_for:
            what = self.outage_status or "hang"
            shown["outage"] = f"{what} from {self.outage_after:g}s for {self.outage_for:g}s"
        return shown


def parse_options(reader: OptionReader) -> FakeOptions:
    """Read a fake provider's options; problems are recorded on ``reader``."""
    d = FakeOptions()
    return FakeOptions(
        tokens_per_second=reader.number("tokens_per_second", d.tokens_per_second),
        time_to_first_token=reader.number("time_to_first_token", d.time_to_first_token),
        reply_tokens=reader.integer("reply_tokens", d.reply_tokens, minimum=1, maximum=1_000_000),
        models=reader.strings("models", d.models),
        fail_every=reader.integer("fail_every", d.fail_every),
        outage_after=reader.number("outage_after", d.outage_after),
        outage_for=reader.number("outage_for", d.outage_for),
        outage_status=_outage_status(reader, d.outage_status),
    )


def _outage_status(reader: OptionReader, default: int) -> int:
    status = reader.integer("outage_status", default, maximum=599)
    if status and status < 400:
        reader.error(
            "outage_status", f"expected 0 (hang) or an error status 400 to 599, got {status}"
        )
        return default
    return status


class FakeFailure(RuntimeError):
    """Raised on purpose by a fake provider configured with ``fail_every``."""


class _Fake:
    """The state of one fake provider app."""

    def __init__(self, options: FakeOptions, context: ProviderContext) -> None:
        self.options = options
        self.provider = context.name
        self.labels = ModelLabels(options.models, len(options.models))
        self._generations = itertools.count(1)
        self._ids = itertools.count(1)
        self.started = time.monotonic()  # set again when the app starts

    async def on_startup(self, app: web.Application) -> None:
        self.started = time.monotonic()

    def outage(self) -> bool:
        """Whether this moment falls in the configured outage."""
        o = self.options
        elapsed = time.monotonic() - self.started
        return bool(o.outage_for) and o.outage_after <= elapsed < o.outage_after + o.outage_for

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{self.provider}-{next(self._ids):08d}"

    def start_generation(self) -> None:
        n = next(self._generations)
        every = self.options.fail_every
        if every and n % every == 0:
            raise FakeFailure(f"fake provider {self.provider!r} fails every {every} requests")

    async def pace(self, index: int) -> None:
        """Wait before token ``index`` (0 is the first)."""
        if index == 0:
            delay = self.options.time_to_first_token
        elif self.options.tokens_per_second:
            delay = 1.0 / self.options.tokens_per_second
        else:
            delay = 0.0
        await asyncio.sleep(delay)


FAKE: web.AppKey[_Fake] = web.AppKey("meshbridge_fake", _Fake)


class _ErrorTypes(dict[int, str]):
    """Error types by status, as the Anthropic API names them."""

    def __missing__(self, status: int) -> str:
        return "api_error" if status >= 500 else "invalid_request_error"


_TYPES: Final = _ErrorTypes(
    {
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
)


def _openai_error(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return web.json_response(body, status=status)


def _anthropic_error(
    status: int, message: str, type_: str = "invalid_request_error"
) -> web.Response:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return web.json_response(body, status=status)


def _problem(body: object, *, needs_max_tokens: bool) -> str | None:
    """What is wrong with a generation request, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required (a string)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "messages: Field required (an array of objects)"
    max_tokens = body.get("max_tokens")
    if needs_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return "max_tokens: Field required (a positive integer)"
    return None


async def _read(
    request: web.Request, *, anthropic: bool, needs_max_tokens: bool = False
) -> JSON | web.Response:
    """The request's JSON body, or the provider-shaped 400 answering it."""
    error = _anthropic_error if anthropic else _openai_error
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"invalid JSON in request body: {exc}")
    problem = _problem(body, needs_max_tokens=needs_max_tokens)
    if problem is not None:
        return error(400, problem)
    assert isinstance(body, dict)
    return body


def _limit(body: JSON, default: int, *keys: str) -> int:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, default)
    return default


class _Reply:
    """One generation: its tokens and usage, and how ``_Wire`` shapes it."""

    def __init__(self, fake: _Fake, body: JSON, usage: Usage, budget: int, head: JSON) -> None:
        self.model: str = body["model"]
        self.tokens = reply_tokens(body["messages"], budget)
        self.cut = budget < fake.options.reply_tokens  # stopped by max_tokens
        self.usage = usage
        self.head = {**head, "model": self.model}  # the id fields every event repeats
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True


class _Wire(Protocol):
    """What differs between the two wire formats the fake speaks."""

    anthropic: bool  # errors are Anthropic-shaped; max_tokens is required

    def reply(self, fake: _Fake, body: JSON) -> _Reply: ...
    def answer(self, fake: _Fake, reply: _Reply) -> JSON: ...
    def opening(self, fake: _Fake, reply: _Reply) -> list[bytes]: ...
    def token(self, reply: _Reply, token: str) -> bytes: ...
    def closing(self, reply: _Reply) -> list[bytes]: ...


class _ChatCompletions:
    """OpenAI ``POST /v1/chat/completions``."""

    anthropic = False

    def reply(self, fake: _Fake, body: JSON) -> _Reply:
        budget = _limit(body, fake.options.reply_tokens, "max_completion_tokens", "max_tokens")
        usage = Usage(input=prompt_tokens(content_text(m.get("content")) for m in body["messages"]))
        head = {"id": fake.next_id("chatcmpl-"), "created": int(time.time())}
        reply = _Reply(fake, body, usage, budget, head)
        reply.head["system_fingerprint"] = "fp_meshbridge_fake"
        return reply

    @staticmethod
    def _usage(reply: _Reply) -> JSON:
        usage = reply.usage
        return {
            "prompt_tokens": usage.input,
            "completion_tokens": usage.output,
            "total_tokens": usage.input + usage.output,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _finish(self, reply: _Reply) -> str:
        return "length" if reply.cut else "stop"

    def answer(self, fake: _Fake, reply: _Reply) -> JSON:
        message = {"role": "assistant", "content": "".join(reply.tokens), "refusal": None}
        finish = self._finish(reply)
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        answer = {**reply.head, "object": "chat.completion", "choices": [choice]}
        return {**answer, "usage": self._usage(reply)}

    def _chunk(self, reply: _Reply, delta: JSON, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        data = {**reply.head, "object": "chat.completion.chunk", "choices": [choice]}
        if reply.include_usage:
            data["usage"] = None
        return encode(data)

    def opening(self, fake: _Fake, reply: _Reply) -> list[bytes]:
        return [self._chunk(reply, {"role": "assistant", "content": "", "refusal": None})]

    def token(self, reply: _Reply, token: str) -> bytes:
        return self._chunk(reply, {"content": token})

    def closing(self, reply: _Reply) -> list[bytes]:
        events = [self._chunk(reply, {}, self._finish(reply))]
        if reply.include_usage:
            final = {**reply.head, "object": "chat.completion.chunk", "choices": []}
            events.append(encode({**final, "usage": self._usage(reply)}))
        return [*events, b"data: [DONE]\n\n"]


class _Messages:
    """Anthropic ``POST /v1/messages``."""

    anthropic = True
    _cache: Final = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}

    def reply(self, fake: _Fake, body: JSON) -> _Reply:
        budget = _limit(body, fake.options.reply_tokens, "max_tokens")
        usage = Usage(input=prompt_tokens(_anthropic_texts(body)))
        head = {"id": fake.next_id("msg_"), "type": "message", "role": "assistant"}
        return _Reply(fake, body, usage, budget, head)

    def _stop(self, reply: _Reply) -> str:
        return "max_tokens" if reply.cut else "end_turn"

    def answer(self, fake: _Fake, reply: _Reply) -> JSON:
        message = dict(reply.head)
        message["content"] = [{"type": "text", "text": "".join(reply.tokens)}]
        message.update(stop_reason=self._stop(reply), stop_sequence=None)
        usage = {"input_tokens": reply.usage.input, "output_tokens": reply.usage.output}
        message["usage"] = {**usage, **self._cache}
        return message

    @staticmethod
    def _event(event: str, data: JSON) -> bytes:
        return encode({"type": event, **data}, event)

    def opening(self, fake: _Fake, reply: _Reply) -> list[bytes]:
        message = {**reply.head, "content": [], "stop_reason": None, "stop_sequence": None}
        message["usage"] = {"input_tokens": reply.usage.input, "output_tokens": 1, **self._cache}
        block = {"index": 0, "content_block": {"type": "text", "text": ""}}
        return [
            self._event("message_start", {"message": message}),
            self._event("content_block_start", block),
            self._event("ping", {}),
        ]

    def token(self, reply: _Reply, token: str) -> bytes:
        delta = {"index": 0, "delta": {"type": "text_delta", "text": token}}
        return self._event("content_block_delta", delta)

    def closing(self, reply: _Reply) -> list[bytes]:
        delta = {"stop_reason": self._stop(reply), "stop_sequence": None}
        return [
            self._event("content_block_stop", {"index": 0}),
            self._event(
                "message_delta", {"delta": delta, "usage": {"output_tokens": reply.usage.output}}
            ),
            self._event("message_stop", {}),
        ]


def _anthropic_texts(body: JSON) -> list[str]:
    return [content_text(body.get("system"))] + [
        content_text(m.get("content")) for m in body["messages"]
    ]


async def _generate(request: web.Request, wire: _Wire) -> web.StreamResponse:
    """One generation in ``wire``'s format: a JSON answer, or a paced stream."""
    fake = request.app[FAKE]
    body = await _read(request, anthropic=wire.anthropic, needs_max_tokens=wire.anthropic)
    if isinstance(body, web.Response):
        return body
    if fake.outage():
        status = fake.options.outage_status
        if not status:
            await asyncio.Event().wait()  # hang before the first byte, until cancelled
        error = _anthropic_error if wire.anthropic else _openai_error
        return error(status, f"fake provider {fake.provider!r} is in its outage", _TYPES[status])
    fake.start_generation()
    started = time.perf_counter()
    reply = wire.reply(fake, body)
    ttft: float | None = None
    try:
        if body.get("stream") is not True:
            for i in range(len(reply.tokens)):
                await fake.pace(i)
            reply.usage.output = len(reply.tokens)
            return web.json_response(wire.answer(fake, reply))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        for event in wire.opening(fake, reply):
            await response.write(event)
        for i, token in enumerate(reply.tokens):
            await fake.pace(i)
            await response.write(wire.token(reply, token))
            reply.usage.output += 1
            if i == 0:
                ttft = time.perf_counter() - started
        for event in wire.closing(reply):
            await response.write(event)
        await response.write_eof()
        return response
    finally:
        report(request, fake.labels, reply.model, reply.usage, ttft)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, _ChatCompletions())


async def messages(request: web.Request) -> web.StreamResponse:
    return await _generate(request, _Messages())


async def count_message_tokens(request: web.Request) -> web.Response:
    body = await _read(request, anthropic=True)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"input_tokens": prompt_tokens(_anthropic_texts(body))})


async def models(request: web.Request) -> web.Response:
    names = request.app[FAKE].options.models
    if "anthropic-version" in request.headers:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in names
        ]
        first, last = (names[0], names[-1]) if names else (None, None)
        return web.json_response(
            {"data": data, "has_more": False, "first_id": first, "last_id": last}
        )
    listed: list[JSON] = [
        {"id": m, "object": "model", "created": 0, "owned_by": "meshbridge"} for m in names
    ]
    return web.json_response({"object": "list", "data": listed})


async def not_found(request: web.Request) -> web.Response:
    message = f"no route {request.method} {request.path} on this fake provider"
    if "anthropic-version" in request.headers:
        return _anthropic_error(404, message, "not_found_error")
    return _openai_error(404, message, "not_found_error")


def error_body(status: int, reason: str, message: str) -> tuple[str, bytes]:
    """The mesh's own errors (an open circuit, a timeout...) for a fake provider:
    one body that both the OpenAI and the Anthropic SDKs parse as an error."""
    error = {"type": _TYPES[status], "message": message, "param": None, "code": reason}
    return "application/json", json.dumps({"type": "error", "error": error}).encode()


def create_app(options: FakeOptions, context: ProviderContext) -> web.Application:
    """A fake LLM provider app (see the module docstring for what it serves)."""
    app = web.Application()
    fake = app[FAKE] = _Fake(options, context)
    app.on_startup.append(fake.on_startup)
    app[ERROR_BODY] = error_body
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_message_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


KIND: Final = Kind(
    name="fake",
    summary="local deterministic LLM emulator (OpenAI and Anthropic shapes)",
    parse_options=parse_options,
    create_app=create_app,
)
