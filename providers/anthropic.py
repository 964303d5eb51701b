"""The ``anthropic`` kind: a proxy of the Anthropic Messages API.

Serves ``POST /v1/messages`` and passes ``POST /v1/messages/count_tokens``
and ``GET /v1/models`` (and ``/v1/models/{id}``) through. The configured key
is sent as ``x-api-key`` unless the caller brought its own (``x-api-key``,
or an ``Authorization`` bearer token); ``anthropic-version`` is the caller's,
or ``anthropic_version`` from the options. Usage comes from
``message_start`` (input and cache tokens) and ``message_delta`` (output).
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

__all__ = ["KIND", "AnthropicOptions", "create_app", "parse_options"]

JSON = dict[str, Any]

DEFAULT_VERSION: Final = "2023-06-01"
FORWARD_HEADERS: Final = frozenset(
    {"accept", "content-type", "user-agent", "anthropic-version", "anthropic-beta"}
)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class AnthropicOptions:
    """Options of an anthropic provider: the shared proxy options, and more."""

    proxy: ProxyOptions
    anthropic_version: str = DEFAULT_VERSION  # sent when the caller sends none

    def describe(self) -> Mapping[str, str]:
        return {**self.proxy.describe(), "anthropic_version": self.anthropic_version}


def parse_options(reader: OptionReader) -> AnthropicOptions:
    """Read an anthropic provider's options; problems are recorded on ``reader``."""
    return AnthropicOptions(
        proxy=parse_proxy_options(reader),
        anthropic_version=reader.string("anthropic_version", DEFAULT_VERSION),
    )


def _add_usage(usage: Usage, raw: object) -> None:
    """Fold an Anthropic usage object into ``usage`` (later reports win)."""
    if not isinstance(raw, dict):
        return
    if "input_tokens" in raw:
        usage.input = count(raw["input_tokens"])
    if "output_tokens" in raw:
        usage.output = count(raw["output_tokens"])
    if "cache_read_input_tokens" in raw:
        usage.cache_read = count(raw["cache_read_input_tokens"])
    if "cache_creation_input_tokens" in raw:
        usage.cache_write = count(raw["cache_creation_input_tokens"])


class _MessagesWatcher(Watcher):
    """``message_start`` … ``message_stop``, with ``ping`` and ``error`` events."""

    def see(self, event: Event) -> bool:
        if not event.data:
            return False
        data = event_payload(event.data.encode())
        kind = data.get("type", event.event)
        self.tool_calls += event_tool_call(data)
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self.model = message["model"]
                _add_usage(self.usage, message.get("usage"))
        elif kind == "message_delta":
            _add_usage(self.usage, data.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            self.failed = error_message(data.get("error"))
        return kind == "content_block_delta"


class AnthropicDialect:
    forward_headers = FORWARD_HEADERS
    system = "anthropic"

    def __init__(self, version: str) -> None:
        self._version = version

    def error(self, status: int, message: str) -> JSON:
        type_ = _ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": type_, "message": message}}

    def stream_error(self, message: str) -> bytes:
        return encode(self.error(502, message), "error")

    def credentials(self, headers: CIMultiDictProxy[str], api_key: str | None) -> dict[str, str]:
        version = {"anthropic-version": headers.get("anthropic-version") or self._version}
        own_key = headers.get("x-api-key", "").strip()
        if own_key:
            return {"x-api-key": own_key, **version}
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return {"Authorization": f"Bearer {token.strip()}", **version}
        return {"x-api-key": api_key, **version} if api_key else version

    def prepare(self, path: str, payload: JSON) -> JSON | None:
        return None

    def watcher(self, path: str) -> _MessagesWatcher:
        return _MessagesWatcher()

    def usage(self, path: str, body: JSON) -> Usage | None:
        if path != "/v1/messages" or not isinstance(body.get("usage"), dict):
            return None
        usage = Usage()
        _add_usage(usage, body["usage"])
        return usage


ROUTES: Final = {
    "POST": ("/v1/messages", "/v1/messages/count_tokens"),
    "GET": ("/v1/models", "/v1/models/{model}"),
}


def create_app(options: AnthropicOptions, context: ProviderContext) -> web.Application:
    """A provider app proxying the Anthropic upstream of ``options``."""
    return proxy_app(options.proxy, AnthropicDialect(options.anthropic_version), context, ROUTES)


KIND: Final = Kind(
    name="anthropic",
    summary="proxy of the Anthropic Messages API",
    parse_options=parse_options,
    create_app=create_app,
)
