"""A mesh whose providers misbehave, serving its /metrics for the live ops tests.

``python -m tests.ops._resilience --listen 127.0.0.1:PORT --duration SECONDS``

Built with the public API only. Every traffic policy the dashboard's
Resilience row charts fires again and again, a bounded batch of requests every
:data:`TICK` seconds, until SIGTERM or ``--duration``:

- ``flaky`` answers 503 to every other request: a retry serves the caller.
- ``primary`` answers 529: its circuit opens, ``backup`` carries its traffic.
- ``broken`` answers 503 with no fallback: callers get 503 (``circuit-open``).
- ``slow``, ``stalling`` and ``dribbling`` run past their first-byte, idle and
  total timeouts; ``limited`` gets more requests than its ``max_in_flight``;
  ``faulty`` aborts half of its requests by fault injection.
- the route ``chat`` splits between ``backup`` and ``flaky``.
- callers go over their limits (:data:`LIMITS`): ``batch`` over its requests
  per minute, ``agents`` through its daily token budget (the mesh's limiter
  answers them 429 before their provider is reached).

Its requests are traced (an OpenTelemetry SDK provider, no export), so its
latency histograms carry exemplars; ``GET /trace-ids`` lists the trace ids
of its latest spans, for the exemplar check against Prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from meshbridge import CircuitBreaker, Fault, Limit, Limiter, Mesh, Policy, record_tokens

TICK = 0.5  # seconds between two batches of requests
HANG = 2.0  # how long the slow handlers would take: far past every timeout
SOURCES = ("agents", "batch")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FLIP: web.AppKey[Iterator[int]] = web.AppKey("flip")


async def ok(request: web.Request) -> web.Response:
    # an LLM's answer: its usage is what the limits debit
    record_tokens(request, "work-model", input=200, output=300)
    return web.json_response({"served_by": request.host})


async def overloaded(request: web.Request) -> web.Response:
    return web.json_response({"error": "overloaded"}, status=529)


async def unavailable(request: web.Request) -> web.Response:
    return web.json_response({"error": "unavailable"}, status=503)


async def every_other_fails(request: web.Request) -> web.Response:
    statuses = request.app[FLIP]
    status = next(statuses)
    return web.json_response({"status": status}, status=status)


async def no_first_byte(request: web.Request) -> web.Response:
    await asyncio.sleep(HANG)
    return web.json_response({})


async def stalls(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.sleep(HANG)
    return response


async def dribbles(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(int(HANG / 0.05)):
        await response.write(b"data: more\n\n")
        await asyncio.sleep(0.05)
    return response


async def busy(request: web.Request) -> web.Response:
    await asyncio.sleep(0.2)
    return web.json_response({})


def app(handler: Handler) -> web.Application:
    served = web.Application()
    served[FLIP] = itertools.cycle((503, 200))
    served.router.add_route("*", "/{tail:.*}", handler)
    return served


BREAKER = CircuitBreaker(failures=2, interval=10.0, open_for=1.0, half_open=1)
PROVIDERS: dict[str, tuple[Handler, Policy | None]] = {
    "backup": (ok, None),
    "flaky": (every_other_fails, Policy(retries=2, retry_backoff=(0.01, 0.05))),
    "primary": (overloaded, Policy(fallback=("backup",), circuit_breaker=BREAKER)),
    "broken": (unavailable, Policy(circuit_breaker=BREAKER)),
    "slow": (no_first_byte, Policy(first_byte_timeout=0.1)),
    "stalling": (stalls, Policy(idle_timeout=0.1)),
    "dribbling": (dribbles, Policy(timeout=0.3)),
    "limited": (busy, Policy(max_in_flight=1)),
    "faulty": (ok, Policy(fault=Fault(abort=503, abort_ratio=0.5))),
}
# Requests per batch, by the name callers use.
BATCH = dict.fromkeys(PROVIDERS, 1) | {"limited": 3, "chat": 2}
LIMITS = (
    Limit("batch", {"source": "batch"}, requests_per_minute=30),
    Limit("agents-daily", {"source": "agents", "target": "backup"}, tokens_per_day=5000),
    Limit("per-target", {"target": "*"}, concurrent=100),
)


async def call(session: aiohttp.ClientSession, name: str) -> None:
    # Cut streams, 5xx and 429 answers are what this workload is for.
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(f"http://{name}/v1/work") as response:
            await response.read()


async def drive(mesh: Mesh, stop: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=HANG * 2)
    sessions = {source: mesh.session(source=source, timeout=timeout) for source in SOURCES}
    try:
        for source in itertools.cycle(SOURCES):
            session = sessions[source]
            batch = [call(session, name) for name, n in BATCH.items() for _ in range(n)]
            await asyncio.gather(*batch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK)
            if stop.is_set():
                return
    finally:
        for session in sessions.values():
            await session.close()


class RecentTraces(SpanExporter):
    """Keeps the trace ids of the latest spans (bounded), exports nothing."""

    def __init__(self) -> None:
        self.ids: deque[str] = deque(maxlen=5000)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            if span.context is not None:
                self.ids.append(trace.format_trace_id(span.context.trace_id))
        return SpanExportResult.SUCCESS


async def main(host: str, port: int, duration: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(duration, stop.set)
    recent = RecentTraces()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recent))

    async def trace_ids(request: web.Request) -> web.Response:
        return web.json_response(list(recent.ids))

    async with Mesh(tracer_provider=provider, limiter=Limiter(LIMITS)) as mesh:
        for name, (handler, policy) in PROVIDERS.items():
            mesh.register(name, app(handler), policy=policy)
        mesh.add_route("chat", {"backup": 80, "flaky": 20})
        metrics = web.Application()
        metrics.router.add_get("/metrics", mesh.metrics_handler())
        metrics.router.add_get("/trace-ids", trace_ids)
        runner = web.AppRunner(metrics)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await drive(mesh, stop)
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT of /metrics")
    parser.add_argument("--duration", type=float, required=True, help="seconds, at most")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(main(host, int(port), args.duration))
