"""The ``fake`` kind: a local, deterministic LLM emulator. No key, no network.

It speaks the wire formats agents use, closely enough for the official SDKs:
OpenAI chat completions (``POST /v1/chat/completions``, streaming and not,
with ``stream_options.include_usage``), OpenAI Responses (``POST
/v1/responses``, streaming and not) and Anthropic messages (``POST
/v1/messages`` with the real event sequence, ``/v1/messages/count_tokens``),
plus ``GET /v1/models`` (Anthropic-shaped when the caller sends
``anthropic-version``); the formats live in ``_wire_openai.py`` and
``_wire_anthropic.py``. Replies are made of deterministic words, paced by
``time_to_first_token`` and ``tokens_per_second``; ``usage`` counts the tokens
actually sent. ``fail_every = N`` makes every Nth generation raise, so a demo
or a test sees handler errors (500s) on purpose.

A test scripts what comes next with :func:`script`: replies with text and
tool calls, errors (429 with ``Retry-After``, 500, 529), a delay before the
first token, a stream cut midway; it also records what the app received::

    app = fake.create_app(fake.FakeOptions(), ProviderContext("llm"))
    fake.script(app).tool_call("get_weather", {"city": "Paris"}).reply("Sunny.")
    ...
    assert fake.script(app).received[0].body["model"] == "fake-small"
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from meshbridge import ERROR_BODY

from ._calls import last_user_prompt
from ._kind import Kind, ProviderContext
from ._options import OptionReader
from ._script import Received, Script, Step, ToolCall
from ._text import prompt_tokens, reply_tokens
from ._usage import ModelLabels, Usage, report
from ._wire import (
    JSON,
    Generation,
    ToolUse,
    Wire,
    anthropic_error,
    error_type,
    openai_error,
    split_text,
)
from ._wire_anthropic import Messages, messages_problem, prompt_texts
from ._wire_openai import ChatCompletions, Responses

__all__ = [
    "KIND",
    "FakeOptions",
    "Received",
    "Script",
    "Step",
    "ToolCall",
    "create_app",
    "parse_options",
    "script",
]

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
        self.script: Script | None = None  # made by script(app)

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

    async def pace(self, index: int, step: Step | None = None) -> None:
        """Wait before token ``index`` (0 is the first; a scripted step sets its delay)."""
        if index == 0:
            delay = self.options.time_to_first_token if step is None else step.delay
        elif self.options.tokens_per_second:
            delay = 1.0 / self.options.tokens_per_second
        else:
            delay = 0.0
        await asyncio.sleep(delay)


FAKE: web.AppKey[_Fake] = web.AppKey("meshbridge_fake", _Fake)


async def _read(
    request: web.Request, *, anthropic: bool, problem_of: Callable[[object], str | None]
) -> JSON | web.Response:
    """The request's JSON body, or the provider-shaped 400 answering it."""
    error = anthropic_error if anthropic else openai_error
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"invalid JSON in request body: {exc}")
    problem = problem_of(body)
    if problem is not None:
        return error(400, problem)
    assert isinstance(body, dict)
    return body


def _plan(fake: _Fake, wire: Wire, body: JSON, step: Step | None) -> Generation:
    """What to answer: the scripted step's text and tool calls, or deterministic words."""
    seed, texts = wire.prompt(body)
    usage = Usage(input=prompt_tokens(texts))
    model: str = body["model"]
    if step is None:
        budget = wire.budget(body, fake.options.reply_tokens)
        tokens = reply_tokens(seed, budget)
        generation = Generation(model, tokens, usage, cut=budget < fake.options.reply_tokens)
    else:
        calls = [
            ToolUse(
                c.id or fake.next_id("toolu_" if wire.anthropic else "call_"),
                c.name,
                c.arguments_json(),
            )
            for c in step.tool_calls
        ]
        generation = Generation(model, split_text(step.text), usage, calls=calls)
    options = body.get("stream_options")
    generation.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    wire.begin(fake, generation)
    return generation


def _scripted_error(wire: Wire, step: Step) -> web.Response:
    headers = {} if step.retry_after is None else {"Retry-After": f"{step.retry_after:g}"}
    message = step.message or f"scripted error {step.status}"
    error = anthropic_error if wire.anthropic else openai_error
    return error(step.status, message, error_type(step.status), headers)


async def _generate(request: web.Request, wire: Wire) -> web.StreamResponse:
    """One generation in ``wire``'s format: a JSON answer, or a paced stream."""
    fake = request.app[FAKE]
    body = await _read(request, anthropic=wire.anthropic, problem_of=wire.problem)
    if isinstance(body, web.Response):
        return body
    step = fake.script.next() if fake.script is not None else None
    if step is None and fake.outage():
        status = fake.options.outage_status
        if not status:
            await asyncio.Event().wait()  # hang before the first byte, until cancelled
        error = anthropic_error if wire.anthropic else openai_error
        return error(
            status, f"fake provider {fake.provider!r} is in its outage", error_type(status)
        )
    if step is None:
        fake.start_generation()
    elif step.status != 200:
        await asyncio.sleep(step.delay)
        return _scripted_error(wire, step)
    started = time.perf_counter()
    generation = _plan(fake, wire, body, step)
    cut = step.fail_after if step is not None else None
    ttft: float | None = None
    try:
        if body.get("stream") is not True:
            for i in range(max(generation.units, 1)):  # an empty answer still waits its delay
                await fake.pace(i, step)
            generation.usage.output = generation.units
            if cut is not None:
                return await _cut_answer(request, wire.answer(generation))
            return web.json_response(wire.answer(generation))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        if not generation.units:
            await fake.pace(0, step)
        sent = 0
        for event, is_token in wire.stream(generation):
            if is_token:
                if sent == cut:
                    return _hang_up(request, response)
                await fake.pace(sent, step)
                generation.usage.output += 1
            await response.write(event)
            if is_token:
                sent += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
        if sent == cut:  # a cut at the very end: the closing events never come
            return _hang_up(request, response)
        await response.write_eof()
        return response
    finally:
        system = "anthropic" if wire.anthropic else "openai"  # the API it speaks
        model = generation.model
        report(
            request,
            fake.labels,
            model,
            generation.usage,
            ttft,
            system=system,
            request_model=model,
            tool_calls=[call.name for call in generation.calls],
            prompt=last_user_prompt(body),
        )


async def _cut_answer(request: web.Request, answer: JSON) -> web.StreamResponse:
    """Half of ``answer``, then a dropped connection."""
    data = json.dumps(answer).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    return _hang_up(request, response)


def _hang_up(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection midway through ``response`` (a scripted cut): what
    was written arrives, then the caller's read fails, with no server error."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, ChatCompletions())


async def responses(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Responses())


async def messages(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Messages())


async def count_message_tokens(request: web.Request) -> web.Response:
    body = await _read(request, anthropic=True, problem_of=_count_problem)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"input_tokens": prompt_tokens(prompt_texts(body))})


def _count_problem(body: object) -> str | None:
    return messages_problem(body, needs_max_tokens=False)


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
        return anthropic_error(404, message, "not_found_error")
    return openai_error(404, message, "not_found_error")


def error_body(status: int, reason: str, message: str) -> tuple[str, bytes]:
    """The mesh's own errors (an open circuit, a timeout...) for a fake provider:
    one body that both the OpenAI and the Anthropic SDKs parse as an error."""
    error = {"type": error_type(status), "message": message, "param": None, "code": reason}
    return "application/json", json.dumps({"type": "error", "error": error}).encode()


def script(app: web.Application) -> Script:
    """The :class:`Script` of fake provider ``app`` (made on first call; from
    then on the app records every request it receives in ``.received``).

    Raises:
        TypeError: ``app`` was not made by this kind's :func:`create_app`.
    """
    fake = app.get(FAKE)
    if fake is None:
        raise TypeError(f"{app!r} is not a fake provider app (made by fake.create_app)")
    if fake.script is None:
        fake.script = Script()
    return fake.script


@web.middleware
async def _record(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    scripted = request.app[FAKE].script
    if scripted is not None:
        await scripted.record(request)
    return await handler(request)


def create_app(options: FakeOptions, context: ProviderContext) -> web.Application:
    """A fake LLM provider app (see the module docstring for what it serves)."""
    app = web.Application(middlewares=[_record])
    fake = app[FAKE] = _Fake(options, context)
    app.on_startup.append(fake.on_startup)
    app[ERROR_BODY] = error_body
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_message_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


KIND: Final = Kind(
    name="fake",
    summary="local deterministic LLM emulator, scriptable in tests (OpenAI and Anthropic shapes)",
    parse_options=parse_options,
    create_app=create_app,
)
