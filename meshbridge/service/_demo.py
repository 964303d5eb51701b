"""``meshbridge demo``: the service on fake providers, under a live workload.

It serves a built-in config (two fake providers, ``local`` and
``local-anthropic``; no key, no network) exactly as ``meshbridge serve``
would, then keeps a workload running until ``--duration`` ends or Ctrl-C:

* in-process agents with the Sources ``agents``, ``api`` and ``batch`` stream
  completions through ``mesh.session()``, in both wire formats the fake
  speaks (OpenAI chat completions and Anthropic messages, taking turns; a
  provider of kind ``openai`` or ``anthropic`` gets its own format only, one
  of kind ``remote`` is taken for a fake elsewhere); every fifth ``agents``
  stream is closed early by its caller (a cancellation);
* the fake providers fail every Nth generation on purpose (handler errors,
  500s);
* an outside caller goes through the gated HTTP route with the demo token,
  and now and then without it (401);
* the config is reloaded every few seconds (alternating two variants), as
  SIGHUP would, while streams run.

So every metric family on ``/metrics`` has data. It prints progress, and a
summary per provider and source at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp

from meshbridge import Source
from meshbridge.providers.fake import FakeOptions

from ._config import Config, load_config
from ._service import Service, serve_until_signalled

__all__ = ["BUILTIN_CONFIG", "Demo"]

DEMO_TOKEN: Final = "demo-token-not-a-secret"
ADMIN_TOKEN: Final = "demo-admin-token-not-a-secret"  # the admin page's, with --admin-listen
# With --admin-listen: the admin listener (the admin page, /metrics, /readyz)
# and a client whose token opens the admin page.
_ADMIN: Final = 'admin_listen = "{address}"\n'
_OPERATOR: Final = """
# The operator of the admin page (`meshbridge demo --admin-listen`).
[server.clients.operator]
token = "{token}"
admin = true
"""
BUILTIN_CONFIG: Final = """\
# The config `meshbridge demo` runs: fake providers only (no key, no network).
[server]
listen = "127.0.0.1:8080"
grace_period = 2.0
{admin}
[server.clients.demo]
token = "{token}"
source = "api"

[providers.local]
kind = "fake"
tokens_per_second = {tps}
time_to_first_token = 0.05
reply_tokens = 24
fail_every = 13
models = ["fake-small", "fake-large"]

[providers.local-anthropic]
kind = "fake"
tokens_per_second = 150
time_to_first_token = 0.08
fail_every = 17
models = ["fake-claude"]

# A provider with an outage (529s from 3 s after it starts, for 4 s), behind
# a policy: its breaker opens, its fallback carries the traffic, callers
# still succeed, and the breaker closes again once the outage is over.
[providers.flaky]
kind = "fake"
tokens_per_second = 300
time_to_first_token = 0.03
models = ["fake-small"]
outage_after = 3.0
outage_for = 4.0
outage_status = 529

[providers.flaky.policy]
retries = 1
retry_backoff = [0.02, 0.2]
fallback = ["local"]
circuit_breaker = {{ failures = 5, interval = 5.0, open_for = 2.0, half_open = 2 }}

# Callers of http://chat/... go to flaky or local-anthropic by weight.
[routes.chat]
split = {{ flaky = 80, local-anthropic = 20 }}

# The batch callers share a budget of calls per minute: past it the mesh
# answers 429 (rate-limited, with Retry-After) before any provider is reached.
[limits.batch]
match = {{ source = "batch" }}
requests_per_minute = 40
{operator}"""
_CIRCUIT: Final = {0.0: "closed", 0.5: "half-open", 1.0: "open"}
_VARIANTS: Final = (200, 300)  # tokens_per_second of `local`, swapped at each reload
_RELOAD_EVERY: Final = 4.0
_OUTSIDE_EVERY: Final = 1.0


def builtin_config(variant: int = 0, admin: str | None = None) -> str:
    """The built-in config; ``admin``: the ``admin_listen`` address, with an
    admin client whose token is :data:`ADMIN_TOKEN`."""
    return BUILTIN_CONFIG.format(
        token=DEMO_TOKEN,
        tps=_VARIANTS[variant % len(_VARIANTS)],
        admin=_ADMIN.format(address=admin) if admin else "",
        operator=_OPERATOR.format(token=ADMIN_TOKEN) if admin else "",
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class Row:
    """What one (provider, source, route) saw, from the caller's side."""

    requests: int = 0
    errors: int = 0
    limited: int = 0  # answered 429 by the mesh's limits
    cancelled: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)


class _FakeFailures(logging.Filter):
    """Drops the tracebacks of the failures the fake providers make on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "FakeFailure"


@contextlib.contextmanager
def _quiet_fake_failures() -> Iterator[None]:
    quiet = _FakeFailures()
    loggers = [logging.getLogger(n) for n in ("aiohttp.server", "meshbridge")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _is_token(line: bytes) -> bool:
    """An SSE data line carrying a token, in the OpenAI or the Anthropic shape."""
    return line.startswith(b"data: {") and (
        b'"delta":{"content":' in line or b'"type":"content_block_delta"' in line
    )


def _wire(config: Config, provider: str, turn: int) -> str:
    """The wire format of a provider's ``turn``-th request: its kind's own, or,
    for a fake provider (which speaks both), each in turn."""
    kind = config.providers[provider].kind
    if kind in ("openai", "anthropic"):
        return kind
    return ("openai", "anthropic")[turn % 2]


def _model(config: Config, provider: str, wire: str) -> str:
    """A model the provider lists (so its tokens keep their label)."""
    found = config.providers.get(provider)  # None for a route
    options = found.plan.options if found is not None else None
    if isinstance(options, FakeOptions) and options.models:
        return options.models[0]
    return "fake-claude" if wire == "anthropic" else "fake-small"


class Demo:
    """The demo workload around a running :class:`Service`."""

    def __init__(
        self, service: Service, out: TextIO, variant_file: Path | None, admin: str | None = None
    ) -> None:
        self.service = service
        self.out = out
        self._variant_file = variant_file  # the built-in config, rewritten at each reload
        self._admin = admin  # its admin_listen
        self._variant = 0
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.reloads = 0
        self.rejected = 0
        self.started = time.perf_counter()
        config = service.reloader.config
        # The agents' round-robin skips providers with an outage: those are
        # reached through routes (and their policies), by route_agent. A
        # remote provider is driven as a fake one (in the compose stack it is
        # a fake on another node).
        self.providers = [
            n
            for n, p in config.providers.items()
            if p.kind in ("fake", "remote")
            and not (isinstance(p.plan.options, FakeOptions) and p.plan.options.outage_for)
        ]
        self.routes = list(config.routes)
        self.client = config.server.clients[0] if config.server.clients else None

    def row(self, provider: str, source: str, route: str) -> Row:
        return self.rows.setdefault((provider, source, route), Row())

    def _request(
        self, provider: str, wire: str, n: int, max_tokens: int, stream: bool
    ) -> tuple[str, Any]:
        messages = [{"role": "user", "content": f"request {n}: tell me about the mesh"}]
        model = _model(self.service.reloader.config, provider, wire)
        body = {"model": model, "max_tokens": max_tokens, "messages": messages}
        if wire == "anthropic":
            return "/v1/messages", {**body, "stream": stream}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return "/v1/chat/completions", body

    async def _call(
        self,
        session: aiohttp.ClientSession,
        base: str,
        provider: str,
        wire: str,
        row: Row,
        n: int,
        *,
        max_tokens: int,
        stream: bool = True,
        stop_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        path, body = self._request(provider, wire, n, max_tokens, stream)
        started = time.perf_counter()
        tokens = 0
        row.requests += 1
        try:
            async with session.post(base + path, json=body, headers=headers) as response:
                if response.status == 429 and "x-meshbridge-reason" in response.headers:
                    await response.read()
                    row.limited += 1  # a caller over its limit waits, as it is told
                    wait = float(response.headers.get("Retry-After", "1"))
                    await asyncio.sleep(min(wait, 1.0))
                    return
                if response.status != 200:
                    await response.read()
                    row.errors += 1
                    return
                if not stream:
                    answer = await response.json()
                    usage = answer.get("usage", {})
                    row.tokens += usage.get("completion_tokens", usage.get("output_tokens", 0))
                    row.latencies.append(time.perf_counter() - started)
                    return
                async for line in response.content:
                    if not _is_token(line):
                        continue
                    if tokens == 0:
                        row.ttfts.append(time.perf_counter() - started)
                    tokens += 1
                    if stop_after is not None and tokens >= stop_after:
                        row.cancelled += 1  # leaving the block closes the stream early
                        return
            row.latencies.append(time.perf_counter() - started)
        except aiohttp.ClientError:
            row.errors += 1
        finally:
            row.tokens += tokens

    def _pick(self, n: int) -> tuple[str, str]:
        """The provider and wire format of the ``n``-th call of a caller."""
        count = len(self.providers)
        provider = self.providers[n % count]
        return provider, _wire(self.service.reloader.config, provider, n // count)

    async def agent(self, source: str, worker: int, max_tokens: int, cancel_every: int) -> None:
        """One in-process caller, streaming through the mesh with ``source``."""
        async with self.service.mesh.session(source=Source(source)) as session:
            for n in range(worker, 1 << 62):
                provider, wire = self._pick(n)
                stop = 3 if cancel_every and n % cancel_every == 0 else None
                row = self.row(provider, source, f"mesh/{wire}")
                await self._call(
                    session, f"http://{provider}", provider, wire, row, n,
                    max_tokens=max_tokens, stop_after=stop,
                )  # fmt: skip
                await asyncio.sleep(0.02)

    async def outside(self) -> None:
        """A caller outside the process, through the gated HTTP route."""
        base = self.service.url
        async with aiohttp.ClientSession() as session:
            for n in range(1 << 62):
                provider, wire = self._pick(n)
                if n % 5 == 4 or self.client is None:
                    async with session.get(f"{base}/{provider}/v1/models") as response:
                        self.rejected += response.status == 401
                else:
                    row = self.row(provider, self.client.source, f"http/{wire}")
                    # every provider and wire format gets streams and plain answers
                    stream = n // (4 * len(self.providers)) % 2 == 0
                    await self._call(
                        session, f"{base}/{provider}", provider, wire, row, n,
                        max_tokens=8, stream=stream,
                        headers={"Authorization": f"Bearer {self.client.token}"},
                    )  # fmt: skip
                await asyncio.sleep(_OUTSIDE_EVERY)

    async def reload(self) -> None:
        """Reload the config every few seconds, as SIGHUP does."""
        await asyncio.sleep(_RELOAD_EVERY / 2)
        while True:
            if self._variant_file is not None:
                self._variant += 1
                self._variant_file.write_text(builtin_config(self._variant, self._admin))
            self.reloads += await self.service.reloader.reload()
            await asyncio.sleep(_RELOAD_EVERY)

    async def progress(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            rows = self.rows.values()
            requests, errors = sum(r.requests for r in rows), sum(r.errors for r in rows)
            cancelled, tokens = sum(r.cancelled for r in rows), sum(r.tokens for r in rows)
            registry = self.service.mesh.registry
            circuits = "".join(
                f", circuit {name} {_CIRCUIT.get(level, '?')}"
                for name in self.service.mesh.policies
                if (
                    level := registry.get_sample_value(
                        "meshbridge_circuit_state", {"provider": name}
                    )
                )
                is not None
            )
            self.out.write(
                f"[{time.perf_counter() - self.started:6.1f}s] {requests} requests, "
                f"{errors} errors, {cancelled} cancelled, {tokens} tokens, "
                f"{self.reloads} reloads, {self.rejected} rejected at the gate{circuits}\n"
            )
            self.out.flush()

    async def route_agent(self, source: str, worker: int) -> None:
        """A caller of the config's routes: traffic policies at work."""
        if not self.routes:
            return
        async with self.service.mesh.session(source=Source(source)) as session:
            for n in range(worker, 1 << 62):
                route = self.routes[n % len(self.routes)]
                row = self.row(route, source, "route/openai")
                await self._call(session, f"http://{route}", route, "openai", row, n, max_tokens=12)
                await asyncio.sleep(0.02)

    def resilience(self) -> list[str]:
        """What the traffic policies did, from the mesh's own metrics."""
        totals: dict[tuple[str, ...], float] = {}
        for family in self.service.mesh.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") or sample.name == "meshbridge_circuit_state":
                    key = (sample.name, *sorted(f"{k}={v}" for k, v in sample.labels.items()))
                    totals[key] = totals.get(key, 0.0) + sample.value

        def total(name: str, **labels: str) -> float:
            wanted = {f"{k}={v}" for k, v in labels.items()}
            return sum(v for k, v in totals.items() if k[0] == name and wanted <= set(k[1:]))

        lines = []
        limiter = self.service.mesh.limiter
        for limit in limiter.limits if limiter is not None else ():
            refused = total("meshbridge_limited_total", limit=limit.name)
            lines.append(
                f"limit {limit.name}: {refused:.0f} calls over it answered 429 (Retry-After) "
                "before reaching a provider"
            )
        for route in self.routes:
            calls = total("meshbridge_calls_total", target=route)
            ok = sum(
                v
                for k, v in totals.items()
                if k[0] == "meshbridge_calls_total"
                and f"target={route}" in k
                and "outcome=completed" in k
                and any(x.startswith("code=") and x[5:6] in "1234" for x in k)
            )
            if calls:
                lines.append(f"route {route}: {ok / calls:.1%} of {calls:.0f} calls succeeded")
        for name, guard in self.service.reloader.config.policies.items():
            opened = total("meshbridge_circuit_transitions_total", provider=name, to="open")
            closed = total("meshbridge_circuit_transitions_total", provider=name, to="closed")
            retries = total("meshbridge_retries_total", provider=name)
            moved = total("meshbridge_fallbacks_total", provider=name)
            refused = total("meshbridge_rejected_total", provider=name)
            served = total("meshbridge_requests_total", provider=name)
            failed = sum(
                v
                for k, v in totals.items()
                if k[0] == "meshbridge_requests_total"
                and f"provider={name}" in k
                and any(x.startswith("code=5") for x in k)
            )
            breaker = (
                f"circuit opened {opened:.0f}x, closed {closed:.0f}x; "
                if guard.circuit_breaker is not None
                else ""
            )
            lines.append(
                f"provider {name}: {breaker}{failed:.0f} of {served:.0f} attempts failed, "
                f"{retries:.0f} retried, {moved:.0f} moved to a fallback, "
                f"{refused:.0f} refused at the mesh"
            )
        return lines

    def summary(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        head = ("provider", "source", "via", "requests", "errors", "429", "cancelled",
                "p50 ms", "p95 ms", "ttft ms", "tokens", "tokens/s")  # fmt: skip
        lines = [head]
        for (provider, source, route), r in sorted(self.rows.items()):
            lines.append((
                provider, source, route, str(r.requests), str(r.errors), str(r.limited),
                str(r.cancelled),
                f"{_percentile(r.latencies, 0.5) * 1000:.0f}",
                f"{_percentile(r.latencies, 0.95) * 1000:.0f}",
                f"{_percentile(r.ttfts, 0.5) * 1000:.0f}" if r.ttfts else "-",
                str(r.tokens), f"{r.tokens / elapsed:.1f}",
            ))  # fmt: skip
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = [
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
            for line in lines
        ]
        text.insert(1, "  ".join("-" * w for w in widths))
        footer = (
            f"{elapsed:.1f}s, {self.reloads} config reloads, "
            f"{self.rejected} calls rejected at the gate (401)"
        )
        return "\n".join([*text, footer, *self.resilience()])


async def run_demo(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    duration: float | None,
    out: TextIO = sys.stdout,
    admin: str | None = None,
) -> int:
    """Serve a config of fake providers under the demo workload (see module doc);
    ``admin``: the built-in config's ``admin_listen`` (HOST:PORT)."""
    with contextlib.ExitStack() as stack:
        variant_file = None
        if config_path is None:
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="meshbridge-demo-"))
            )
            config_path = variant_file = folder / "demo.toml"
            variant_file.write_text(builtin_config(0, admin))
        config = load_config(config_path)
        if not any(p.kind == "fake" for p in config.providers.values()):
            out.write(f"{config_path}: the demo needs at least one provider of kind 'fake'\n")
            return 2
        stack.enter_context(_quiet_fake_failures())
        async with Service(config, host=host, port=port) as service:
            demo = Demo(service, out, variant_file, admin)
            url, first = service.url, demo.providers[0]
            out.write(f"meshbridge demo: serving {', '.join(service.mesh.providers)} on {url}\n")
            out.write(f"  metrics: {service.admin_url or url}/metrics\n")
            if service.admin_url is not None:
                token = ADMIN_TOKEN if variant_file is not None else "<an admin token>"
                out.write(f"  admin page: {service.admin_url}/admin/ (token: {token})\n")
            if service.ledger is not None:
                out.write(f"  usage ledger: {service.ledger.where} (meshbridge usage)\n")
            if demo.client is not None:
                token = demo.client.token if variant_file is not None else "<your token>"
                out.write(
                    f"  try: curl -H 'Authorization: Bearer {token}' {url}/{first}/v1/models\n"
                )
            out.write("" if duration else "  Ctrl-C to stop\n")
            out.flush()
            stopped = asyncio.Event()
            work = [
                *(demo.agent("agents", w, 24, cancel_every=5) for w in range(4)),
                *(demo.agent("api", w, 8, cancel_every=0) for w in range(2)),
                *(demo.agent("batch", w, 64, cancel_every=0) for w in range(2)),
                *(demo.route_agent("agents", w) for w in range(4)),
                demo.outside(),
                demo.reload(),
                demo.progress(),
            ]
            tasks = [asyncio.create_task(w) for w in work]
            loop = asyncio.get_running_loop()
            timer = loop.call_later(duration, stopped.set) if duration else None
            try:
                await serve_until_signalled(service, stopped)
            finally:
                if timer is not None:
                    timer.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        out.write("\n" + demo.summary() + "\n")
        if service.ledger is not None:
            written = service.ledger.metrics.written
            out.write(f"usage ledger: {written} calls recorded in {service.ledger.where}\n")
        out.flush()
        return 0
