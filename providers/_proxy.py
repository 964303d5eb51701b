"""Relaying requests to an LLM upstream over HTTP: what the openai and
anthropic kinds share.

Rules of the relay:

1. Headers. Only the headers a dialect names go upstream (plus the SDKs'
   ``x-stainless-*`` telemetry): nothing internal, no cookies, no hop-by-hop
   headers, no ``X-Forwarded-*``, and no ``User-Agent`` but the caller's.
   The caller's own credentials go up when it brought some; otherwise the
   configured key is injected. Only the answer's content type, request ids,
   rate-limit and retry headers come back.
2. Errors are the provider's shape. Invalid JSON is a 400 answered here; a
   refused or failed connection is a 502; an upstream that does not answer
   within ``timeout`` is a 504. Upstream 4xx/5xx pass through with their body.
3. Streams go event by event: each server-sent event is written to the caller
   as soon as its closing blank line arrives. A stream that breaks (the
   connection dies, an event is not JSON, it ends before its final event, or
   it goes silent past ``read_timeout``) gets a provider-shaped error event,
   then the handler raises, so the caller's read fails: never a clean end.
4. Usage is recorded once per request, also when it ends early, from what
   the upstream reported (the final usage event, or the JSON body).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from meshbridge import ERROR_BODY, StreamBroken, report_connect_failure

from ._calls import last_user_prompt, tool_calls
from ._kind import ProviderContext
from ._options import OptionReader
from ._sse import Event, SSEError, SSEParser
from ._usage import ModelLabels, Usage, report

__all__ = [
    "Dialect",
    "Proxy",
    "ProxyOptions",
    "UpstreamStreamError",
    "Watcher",
    "count",
    "error_message",
    "event_payload",
    "json_object",
]

JSON = dict[str, Any]

_RESPONSE_HEADERS: Final = frozenset(
    {
        "content-type",
        "retry-after",
        "retry-after-ms",
        "x-request-id",
        "request-id",
        "x-should-retry",
    }
)
_RESPONSE_PREFIXES: Final = ("x-ratelimit-", "anthropic-ratelimit-", "openai-processing-")
# aiohttp's own User-Agent (its version and Python's) never goes upstream: a
# caller's own goes, or none.
_NO_AUTO_HEADERS: Final = ("User-Agent",)


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """Options every upstream-proxying kind takes."""

    upstream: URL  # base URL; the request path (/v1/...) is appended
    api_key: str | None = field(default=None, repr=False)  # from api_key_env
    api_key_env: str | None = None
    timeout: float = 600.0  # seconds to the answer (its headers; its body when not streaming)
    connect_timeout: float = 10.0
    read_timeout: float = 300.0  # longest silence while a body streams
    models: tuple[str, ...] = ()  # allow-list of model labels; empty: first max_models seen
    max_models: int = 20
    max_body_bytes: int = 32 * 1024 * 1024

    def describe(self) -> dict[str, str]:
        shown = {
            "upstream": str(self.upstream),
            "api_key": f"${self.api_key_env}" if self.api_key_env else "(caller's own)",
            "timeout": f"{self.timeout:g}s",
            "read_timeout": f"{self.read_timeout:g}s",
        }
        if self.models:
            shown["models"] = ",".join(self.models)
        return shown


def parse_proxy_options(reader: OptionReader) -> ProxyOptions:
    """Read the shared proxy options; problems are recorded on ``reader``."""
    url = reader.url("upstream", required=True)
    key = reader.env("api_key_env")
    d = ProxyOptions(URL("http://upstream.invalid"))
    return ProxyOptions(
        upstream=url or d.upstream,
        api_key=key[1] if key else None,
        api_key_env=key[0] if key else None,
        timeout=reader.number("timeout", d.timeout, exclusive=True),
        connect_timeout=reader.number("connect_timeout", d.connect_timeout, exclusive=True),
        read_timeout=reader.number("read_timeout", d.read_timeout, exclusive=True),
        models=reader.strings("models"),
        max_models=reader.integer("max_models", d.max_models, minimum=1, maximum=1000),
        max_body_bytes=reader.integer(
            "max_body_bytes", d.max_body_bytes, minimum=1, maximum=1024**3
        ),
    )


def count(value: object) -> int:
    """A token count from an upstream's JSON: a non-negative int, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# The upstream was never reached: traffic policies' "connect-failure".
CONNECT_FAILURES: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class Watcher:
    """Follows one upstream stream: usage, model, and how it ended."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.usage = Usage()
        self.tool_calls: list[str] = []  # the names of the tools the answer calls
        self.finished = False  # the final event arrived
        self.failed: str | None = None  # the upstream sent an error event: its message

    def see(self, event: Event) -> bool:
        """Take one event; True if it carries output (a token).

        Raises:
            SSEError: the event is malformed.
        """
        raise NotImplementedError


def error_message(error: object) -> str:
    """The message of an upstream's error object (or the object itself)."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error)


class Dialect(Protocol):
    """What differs between upstream APIs."""

    forward_headers: frozenset[str]
    system: str  # the API family, for tracing's gen_ai.provider.name

    def error(self, status: int, message: str) -> JSON:
        """A provider-shaped error body."""
        ...

    def stream_error(self, message: str) -> bytes:
        """A provider-shaped error event ending a broken stream."""
        ...

    def credentials(self, headers: CIMultiDictProxy[str], api_key: str | None) -> dict[str, str]:
        """The auth headers to send: the caller's own, else ``api_key``'s."""
        ...

    def prepare(self, path: str, payload: JSON) -> JSON | None:
        """A changed payload to send instead, or None to send the body as is."""
        ...

    def watcher(self, path: str) -> Watcher: ...

    def usage(self, path: str, body: JSON) -> Usage | None:
        """The usage reported in a non-streaming answer."""
        ...


def json_object(data: bytes) -> JSON | None:
    """The JSON object in ``data`` (a request body, an answer, an event), or None."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def event_payload(data: bytes) -> JSON:
    """The JSON object an upstream's event carries.

    Raises:
        SSEError: it is not a JSON object.
    """
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SSEError(f"upstream sent data that is not JSON: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise SSEError(f"upstream sent JSON that is not an object: {data[:80]!r}")
    return value


class UpstreamStreamError(StreamBroken):
    """The upstream stream broke after the answer started (the caller's read fails)."""


class Proxy:
    """One proxy provider app's state: options, dialect, upstream session."""

    def __init__(self, options: ProxyOptions, dialect: Dialect, context: ProviderContext) -> None:
        self.options = options
        self.dialect = dialect
        self.provider = context.name
        self.labels = ModelLabels(options.models, options.max_models)
        self._session: aiohttp.ClientSession | None = None

    async def upstream_session(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: the upstream connection pool lives as long as the app."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.options.connect_timeout,
            sock_read=self.options.read_timeout,
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            yield
        self._session = None

    def error(self, status: int, message: str) -> web.Response:
        return web.json_response(self.dialect.error(status, message), status=status)

    def _headers(self, request: web.Request) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in self.dialect.forward_headers or lower.startswith("x-stainless-"):
                headers.add(name, value)
        headers.update(self.dialect.credentials(request.headers, self.options.api_key))
        return headers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Relay ``request`` upstream; JSON bodies are checked and may be adjusted."""
        started = time.perf_counter()
        if self._session is None:
            raise RuntimeError(f"provider {self.provider!r} is not started")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.options.max_body_bytes
            return self.error(413, f"request body is larger than {limit} bytes")
        headers = self._headers(request)
        model: str | None = None
        prompt: str | None = None
        if request.method == "POST":
            payload = json_object(body)
            if payload is None:
                return self.error(400, "invalid JSON in request body: expected a JSON object")
            model = payload.get("model") if isinstance(payload.get("model"), str) else None
            prompt = last_user_prompt(payload)
            changed = self.dialect.prepare(request.path, payload)
            if changed is not None:
                body = json.dumps(changed).encode()
            headers["Content-Type"] = "application/json"
        url = URL(str(self.options.upstream) + request.rel_url.raw_path_qs, encoded=True)
        deadline = asyncio.get_running_loop().time() + self.options.timeout
        host = self.options.upstream.host
        try:
            async with asyncio.timeout_at(deadline):
                upstream = await self._session.request(
                    request.method,
                    url,
                    data=body or None,
                    headers=headers,
                    allow_redirects=False,
                    skip_auto_headers=_NO_AUTO_HEADERS,
                )
        except TimeoutError:
            return self.error(
                504, f"upstream {host} did not answer within {self.options.timeout:g}s"
            )
        except aiohttp.ClientError as exc:
            if isinstance(exc, CONNECT_FAILURES):
                report_connect_failure(request)  # refused, DNS, TLS, connect timeout
            return self.error(502, f"upstream {host} unreachable: {exc.__class__.__name__}: {exc}")
        try:
            if upstream.status == 200 and upstream.content_type == "text/event-stream":
                response = await self._relay_stream(request, upstream, model, prompt, started)
            else:
                response = await self._relay_body(request, upstream, model, prompt, deadline)
        except BaseException:
            upstream.close()
            raise
        upstream.release()
        return response

    def _response_headers(self, upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower in _RESPONSE_HEADERS or lower.startswith(_RESPONSE_PREFIXES):
                headers.add(name, value)
        return headers

    async def _relay_body(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        model: str | None,
        prompt: str | None,
        deadline: float,
    ) -> web.StreamResponse:
        host = self.options.upstream.host
        try:
            async with asyncio.timeout_at(deadline):
                data = await upstream.read()
        except TimeoutError:
            return self.error(
                504, f"upstream {host} did not answer within {self.options.timeout:g}s"
            )
        except aiohttp.ClientError as exc:
            return self.error(502, f"upstream {host} failed: {exc.__class__.__name__}: {exc}")
        if upstream.status == 200 and upstream.content_type == "application/json":
            answer = json_object(data) or {}
            usage = self.dialect.usage(request.path, answer)
            if usage is not None:
                answered = answer.get("model")
                named = answered if isinstance(answered, str) else model
                report(
                    request,
                    self.labels,
                    named,
                    usage,
                    system=self.dialect.system,
                    request_model=model,
                    tool_calls=tool_calls(answer),
                    prompt=prompt,
                )
        return web.Response(
            status=upstream.status,
            reason=upstream.reason,
            body=data,
            headers=self._response_headers(upstream),
        )

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        model: str | None,
        prompt: str | None,
        started: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=self._response_headers(upstream))
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        parser = SSEParser()
        watcher = self.dialect.watcher(request.path)
        chunks = upstream.content.iter_any()
        ttft: float | None = None
        failure: str | None = None
        try:
            while failure is None:
                try:
                    events = parser.feed(await chunks.__anext__())
                except StopAsyncIteration:
                    if parser.pending or not watcher.finished:
                        failure = "upstream stream ended before its final event"
                    break
                except TimeoutError:
                    failure = f"upstream went silent for {self.options.read_timeout:g}s"
                    break
                except (aiohttp.ClientError, SSEError) as exc:
                    failure = f"upstream stream broke: {exc.__class__.__name__}: {exc}"
                    break
                for event in events:
                    try:
                        token = watcher.see(event)
                    except SSEError as exc:
                        failure = f"upstream stream broke: {exc}"
                        break
                    await response.write(event.raw)
                    if token and ttft is None:
                        ttft = time.perf_counter() - started
                    if watcher.failed is not None:
                        failure = f"upstream reported an error: {watcher.failed}"
                        break
            if failure is not None:
                if watcher.failed is None:  # else the caller already has the upstream's error
                    await response.write(self.dialect.stream_error(failure))
                raise UpstreamStreamError(failure)
        finally:
            report(
                request,
                self.labels,
                watcher.model or model,
                watcher.usage,
                ttft,
                system=self.dialect.system,
                request_model=model,
                tool_calls=watcher.tool_calls,
                prompt=prompt,
            )
        await response.write_eof()
        return response


def proxy_app(
    options: ProxyOptions,
    dialect: Dialect,
    context: ProviderContext,
    routes: Mapping[str, tuple[str, ...]],
) -> web.Application:
    """An app relaying ``routes`` (method to paths) upstream; anything else is a 404."""
    proxy = Proxy(options, dialect, context)
    app = web.Application(client_max_size=options.max_body_bytes)

    def error_body(status: int, reason: str, message: str) -> tuple[str, bytes]:
        """The mesh's own errors in this provider's shape (what its SDK parses)."""
        return "application/json", json.dumps(dialect.error(status, message)).encode()

    app[ERROR_BODY] = error_body
    app.cleanup_ctx.append(proxy.upstream_session)
    for method, paths in routes.items():
        for path in paths:
            app.router.add_route(method, path, proxy.handle)

    async def not_found(request: web.Request) -> web.Response:
        return proxy.error(404, f"no route {request.method} {request.path} on this provider")

    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
