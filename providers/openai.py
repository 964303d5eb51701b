"""The ``openai`` kind: a proxy of an OpenAI-compatible upstream.

Serves ``POST /v1/chat/completions``, ``POST /v1/responses`` and passes
``GET /v1/models`` (and ``/v1/models/{id}``) through. The configured key is
sent as ``Authorization: Bearer …`` unless the caller brought its own.
Streamed chat completions ask the upstream for a final usage chunk
(``stream_options.include_usage``) unless the caller chose otherwise, so
usage is recorded for streams too (``stream_usage = false`` turns this off).
See :mod:`providers._proxy` for the relay's rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDictProxy

from ._calls import event_tool_call
from ._kind import Kind, ProviderContext
from ._options import OptionReader
from ._proxy import (
    ProxyOptions,
    Watcher,
    count,
    error_message,
    event_payload,
    parse_proxy_options,
    proxy_app,
)
from ._sse import Event, encode
from ._usage import Usage

__all__ = ["KIND", "OpenAIOptions", "create_app", "parse_options"]

JSON = dict[str, Any]

FORWARD_HEADERS: Final = frozenset(
    {
        "accept",
        "content-type",
        "user-agent",
        "idempotency-key",
        "openai-organization",
        "openai-project",
        "openai-beta",
    }
)

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
}
_ERROR_CODES: Final = {
    404: "unknown_url",
    413: "request_too_large",
    502: "bad_gateway",
    504: "upstream_timeout",
}


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """Options of an openai provider: the shared proxy options, and more."""

    proxy: ProxyOptions
    stream_usage: bool = True  # ask streamed chat completions for a final usage chunk

    def describe(self) -> Mapping[str, str]:
        return {**self.proxy.describe(), "stream_usage": str(self.stream_usage).lower()}


def parse_options(reader: OptionReader) -> OpenAIOptions:
    """Read an openai provider's options; problems are recorded on ``reader``."""
    return OpenAIOptions(
        proxy=parse_proxy_options(reader),
        stream_usage=reader.boolean("stream_usage", True),
    )


def _usage(raw: object) -> Usage | None:
    """OpenAI usage (chat: prompt/completion; responses: input/output); the
    prompt total includes cached tokens, counted here as cache_read."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details") or raw.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = count(raw.get("prompt_tokens")) or count(raw.get("input_tokens"))
    output = count(raw.get("completion_tokens")) or count(raw.get("output_tokens"))
    spent = raw.get("completion_tokens_details") or raw.get("output_tokens_details")
    reasoning = count(spent.get("reasoning_tokens")) if isinstance(spent, dict) else 0
    return Usage(
        input=max(prompt - cached, 0), output=output, cache_read=cached, reasoning=reasoning
    )


class _ChatWatcher(Watcher):
    """Chat completion chunks, ending with ``data: [DONE]``."""

    def see(self, event: Event) -> bool:
        if not event.data:
            return False
        if event.data == "[DONE]":
            self.finished = True
            return False
        chunk = event_payload(event.data.encode())
        if "error" in chunk:
            self.failed = error_message(chunk["error"])
            return False
        self.tool_calls += event_tool_call(chunk)
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return False
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and any(
                delta.get(k) for k in ("content", "tool_calls", "refusal", "function_call")
            ):
                return True
        return False


class _ResponsesWatcher(Watcher):
    """Responses API events, ending with ``response.completed`` (or its kin)."""

    _FINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def see(self, event: Event) -> bool:
        if not event.data:
            return False
        data = event_payload(event.data.encode())
        kind = data.get("type", event.event)
        if kind == "error":
            self.failed = error_message(data.get("error", data))
            return False
        self.tool_calls += event_tool_call(data)
        response = data.get("response")
        if isinstance(response, dict):
            if isinstance(response.get("model"), str):
                self.model = response["model"]
            usage = _usage(response.get("usage"))
            if usage is not None:
                self.usage = usage
        if kind in self._FINAL:
            self.finished = True
        return isinstance(kind, str) and kind.endswith(".delta")


class OpenAIDialect:
    forward_headers = FORWARD_HEADERS
    system = "openai"

    def error(self, status: int, message: str) -> JSON:
        code = _ERROR_CODES.get(status)
        type_ = _ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": message, "type": type_, "param": None, "code": code}}

    def stream_error(self, message: str) -> bytes:
        return encode(self.error(502, message))

    def credentials(self, headers: CIMultiDictProxy[str], api_key: str | None) -> dict[str, str]:
        own = headers.get("Authorization", "")
        scheme, _, credential = own.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return {"Authorization": own}
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def prepare(self, path: str, payload: JSON) -> JSON | None:
        if path != "/v1/chat/completions" or payload.get("stream") is not True:
            return None
        if "stream_options" in payload:
            return None  # the caller chose
        return {**payload, "stream_options": {"include_usage": True}}

    def watcher(self, path: str) -> _ChatWatcher | _ResponsesWatcher:
        return _ResponsesWatcher() if path.startswith("/v1/responses") else _ChatWatcher()

    def usage(self, path: str, body: JSON) -> Usage | None:
        return _usage(body.get("usage"))


class _NoUsageDialect(OpenAIDialect):
    def prepare(self, path: str, payload: JSON) -> JSON | None:
        return None


ROUTES: Final = {
    "POST": ("/v1/chat/completions", "/v1/responses"),
    "GET": ("/v1/models", "/v1/models/{model}"),
}


def create_app(options: OpenAIOptions, context: ProviderContext) -> web.Application:
    """A provider app proxying the OpenAI-compatible upstream of ``options``."""
    dialect = OpenAIDialect() if options.stream_usage else _NoUsageDialect()
    return proxy_app(options.proxy, dialect, context, ROUTES)


KIND: Final = Kind(
    name="openai",
    summary="proxy of an OpenAI-compatible upstream",
    parse_options=parse_options,
    create_app=create_app,
)
