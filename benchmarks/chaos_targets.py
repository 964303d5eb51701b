"""The two ways the chaos benchmark reaches its upstream, and what it reads of them.

* **in-process**: the chaos app registered in a :class:`Mesh` as ``chaos``
  with :data:`POLICY`; a reload is :meth:`Mesh.reconfigure` with the same
  apps and a changed policy, as the service's reloads do.
* **serve → remote**: the same app in a ``meshbridge serve`` process
  (``chaos_serve.py``), reached by a ``remote`` provider ``remote`` that
  holds :data:`POLICY` in the caller's mesh; a reload is ``set_policy`` on the
  caller's side, and ``meshbridge reload`` of serve (whose own policy
  changes) on the other.

Both meshes have a ``backup`` (the same app, always healthy) as the fallback.
Every figure is read from the caller's mesh's registry, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NamedTuple

import aiohttp

from meshbridge import CircuitBreaker, Mesh, Policy
from meshbridge.providers import OptionReader, ProviderContext, kinds

from .chaos_serve import SECRET_ENV, Served
from .chaos_upstream import BODY, DONE, SERVED_BY, chaos_app, control

__all__ = [
    "CLIENT_SECONDS",
    "CLIENT_TIMEOUT",
    "LIMIT",
    "POLICY",
    "RELOADED",
    "Outcome",
    "Target",
    "call",
    "capacity",
    "counts",
    "gauge",
    "in_process",
    "over_serve",
    "settle",
]

LIMIT: Final = 150  # max_in_flight, above what 100 callers ever have in flight
# Times scaled down from the defaults (open_for 30 s, max_open_for 300 s) so
# that a run of a minute sees the circuit open, probe, reopen and close.
BREAKER: Final = CircuitBreaker(
    failures=5, interval=2.0, open_for=0.5, max_open_for=2.0, half_open=3
)
POLICY: Final = Policy(
    timeout=2.0,
    first_byte_timeout=0.5,
    idle_timeout=1.0,
    retries=2,
    retry_backoff=(0.05, 1.0),
    fallback=("backup",),
    max_in_flight=LIMIT,
    circuit_breaker=BREAKER,
)
# What a reload changes: a knob that changes nothing a caller sees here.
RELOADED: Final = dataclasses.replace(POLICY, idle_timeout=1.1)
CLIENT_SECONDS: Final = 3.0  # a caller's own timeout, above the policy's 2 s
CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout(total=CLIENT_SECONDS)
HOLD: Final = 0.8  # seconds each call of the capacity check is held (< idle_timeout)


@dataclasses.dataclass(eq=False)
class Target:
    """A mesh whose provider ``primary`` reaches the chaos upstream."""

    label: str
    mesh: Mesh
    primary: str
    switch: Callable[[str, float | None], Awaitable[None]]  # (mode, slow seconds)
    change: Callable[[Policy], Awaitable[None]]  # a reload with this policy
    served: Served | None = None

    async def set_mode(self, mode: str, slow: float | None = None) -> None:
        await self.switch(mode, slow)


@contextlib.asynccontextmanager
async def in_process() -> AsyncIterator[Target]:
    apps = {"chaos": chaos_app("chaos"), "backup": chaos_app("backup")}
    mesh = Mesh()
    mesh.register("chaos", apps["chaos"], policy=POLICY)
    mesh.register("backup", apps["backup"])

    async def switch(mode: str, slow: float | None) -> None:
        control(apps["chaos"]).set(mode, slow)

    async def change(policy: Policy) -> None:
        await mesh.reconfigure(apps, policies={"chaos": policy})

    async with mesh:
        yield Target("in-process", mesh, "chaos", switch, change)


@contextlib.asynccontextmanager
async def over_serve(served: Served) -> AsyncIterator[Target]:
    reader = OptionReader(
        {"url": f"{served.url}/chaos", "peer_secret_env": SECRET_ENV, "max_connections": 256},
        "providers.remote",
        environ={SECRET_ENV: served.secret},
    )
    plan = kinds()["remote"].prepare(reader)
    reader.finish()
    mesh = Mesh()
    mesh.register("remote", plan.build(ProviderContext("remote")), policy=POLICY)
    mesh.register("backup", chaos_app("backup"))

    async def change(policy: Policy) -> None:
        mesh.set_policy("remote", policy)

    async with mesh:
        yield Target("serve → remote", mesh, "remote", served.set_mode, change, served)


def counts(target: Target) -> Counter[str]:
    """The caller mesh's counters about ``target``'s upstream, now."""
    found: Counter[str] = Counter()
    primary = target.primary
    for family in target.mesh.registry.collect():
        for s in family.samples:
            labels = s.labels
            if s.name == "meshbridge_calls_total":
                if labels["target"] == primary:
                    found["calls"] += int(s.value)
            elif s.name == "meshbridge_requests_total":
                if labels["provider"] == primary:
                    found["upstream"] += int(s.value)
                elif labels["provider"] == "backup":
                    found["fallback"] += int(s.value)
            elif labels.get("provider") != primary:
                continue
            elif s.name == "meshbridge_circuit_transitions_total":
                found[f"to_{labels['to']}"] += int(s.value)
            elif s.name == "meshbridge_retries_total":
                found["retries"] += int(s.value)
            elif s.name == "meshbridge_fallbacks_total":
                found["fell_back"] += int(s.value)
            elif s.name == "meshbridge_rejected_total":
                found[f"rejected_{labels['reason']}"] += int(s.value)
            elif s.name == "meshbridge_timeouts_total":
                found[f"timeouts_{labels['kind']}"] += int(s.value)
    return found


def gauge(target: Target, name: str) -> float:
    """``name{provider=primary}`` in the caller mesh (0 when absent)."""
    value = target.mesh.registry.get_sample_value(name, {"provider": target.primary})
    return value or 0.0


class Outcome(NamedTuple):
    """How one call ended: ``ok`` (a whole, right answer) or what went wrong
    (a status and the mesh's reason, ``cut``, ``short``...), who served it,
    and the error's text."""

    kind: str
    served_by: str = ""
    detail: str = ""


async def call(session: aiohttp.ClientSession, url: str, *, stream: bool) -> Outcome:
    """One call as a caller makes it."""
    try:
        async with session.get(url) as response:
            if stream:
                body = b"".join([chunk async for chunk in response.content.iter_any()])
                whole = body.startswith(b"data: 0\n\n") and body.endswith(DONE)
            else:
                whole = await response.read() == BODY
            served_by = response.headers.get(SERVED_BY, "")
            if response.status != 200:
                reason = response.headers.get("x-meshbridge-reason", "")
                return Outcome(f"{response.status} {reason}".strip(), served_by)
            return Outcome("ok" if whole else "short", served_by)
    except aiohttp.ClientPayloadError as exc:
        return Outcome("cut", "", str(exc))
    except TimeoutError:
        return Outcome("client timeout")
    except aiohttp.ClientError as exc:
        return Outcome(type(exc).__name__, "", str(exc))


async def settle(target: Target, seconds: float) -> float:
    """Wait up to ``seconds`` for the policy's admissions to drain; what is left."""
    left = gauge(target, "meshbridge_policy_in_flight")
    for _ in range(int(seconds / 0.02)):
        if left == 0:
            break
        await asyncio.sleep(0.02)
        left = gauge(target, "meshbridge_policy_in_flight")
    return left


async def capacity(target: Target, wait_close: float) -> dict[str, Any]:
    """After the run, on a healthy upstream: how long the circuit took to
    close, what the policy still counted as admitted once the calls had
    ended, then ``LIMIT`` calls held at once: the most the policy counted in
    flight, how many it refused as ``overloaded`` (here and in serve), who
    served them, and what it counts once they ended."""
    loop = asyncio.get_running_loop()
    await target.set_mode("ok")
    url = f"http://{target.primary}/unary"
    figures: dict[str, Any] = {"limit": LIMIT, "closed_after": math.nan}
    started = loop.time()
    async with target.mesh.session(source="agents", timeout=CLIENT_TIMEOUT, limit=0) as session:
        while loop.time() - started < wait_close:
            if gauge(target, "meshbridge_circuit_state") == 0:
                figures["closed_after"] = loop.time() - started
                break
            await call(session, url, stream=False)  # the probes a closing circuit needs
            await asyncio.sleep(0.05)
        figures["left_before"] = await settle(target, 3.0)
        before, serve_before = counts(target), await _serve_counts(target)
        await target.set_mode("slow", HOLD)
        calls = [asyncio.create_task(call(session, url, stream=False)) for _ in range(LIMIT)]
        held = serve_held = 0.0
        while not all(c.done() for c in calls):
            held = max(held, gauge(target, "meshbridge_policy_in_flight"))
            if target.served is not None:
                serve_held = max(serve_held, (await _serve_counts(target))["in_flight"])
            await asyncio.sleep(0.02)
        outcomes = Counter(f"{o.kind} {o.served_by}".strip() for o in await asyncio.gather(*calls))
    await target.set_mode("ok")
    now = counts(target)
    now.subtract(before)
    figures.update(
        held=held,
        admitted=outcomes["ok chaos"],
        outcomes=dict(outcomes),
        overloaded=now["rejected_overloaded"],
        first_byte_timeouts=now["timeouts_first-byte-timeout"],
        left_after=await settle(target, 3.0),
    )
    if target.served is not None:
        serve_after = await _serve_counts(target)
        figures.update(
            serve_held=serve_held,
            serve_overloaded=serve_after["overloaded"] - serve_before["overloaded"],
            serve_left=serve_after["in_flight"],
            serve_reloads=target.served.reloads,
        )
    return figures


async def _serve_counts(target: Target) -> dict[str, float]:
    """Serve's own policy figures of its provider ``chaos``."""
    if target.served is None:
        return {}
    samples = await target.served.metrics()
    return {
        "in_flight": samples.get("meshbridge_policy_in_flight{provider=chaos}", 0.0),
        "overloaded": sum(
            v
            for k, v in samples.items()
            if k.startswith("meshbridge_rejected_total{")
            and "provider=chaos," in k
            and "reason=overloaded" in k
        ),
    }
