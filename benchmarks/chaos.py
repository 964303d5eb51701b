"""Traffic policies under chaos: ``python -m benchmarks chaos [--quick|--smoke]``.

A hundred callers per target (a quarter of them streaming), each calling in
a loop with a 3 s client timeout through ``mesh.session()``, while the
upstream goes through phases: steady, a burst of 529s, 529s with
``Retry-After: 1``, a hang, mid-stream resets, flapping (2 s good, 2 s
bad), a reload with calls in flight, each bad phase followed by a recovery.
Two targets run side by side in one event loop, on the same schedule: the
upstream in-process, and the upstream in a ``meshbridge serve`` process
reached by a ``remote`` provider (``chaos_targets.py``). The policy (retries,
a fallback, a breaker, timeouts, ``max_in_flight``) is
``chaos_targets.POLICY``.

Per phase and target it prints: the callers' success ratio; attempts per
call (``meshbridge_requests_total`` of the upstream and of the fallback
against ``meshbridge_calls_total``); the breaker's transitions
(``meshbridge_circuit_transitions_total``); how long the circuit was not
closed while the upstream was healthy (``meshbridge_circuit_state`` sampled
every 50 ms); and after the run, each target's capacity
(``chaos_targets.capacity``). Loopback only; about a minute (``--quick``:
about 35 s; ``--smoke``: a few seconds, 20 callers, for the tests); exits 1
if capacity did not come back or the circuit did not close.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chaos_report import problems, report
from .chaos_serve import served
from .chaos_targets import (
    CLIENT_SECONDS,
    CLIENT_TIMEOUT,
    LIMIT,
    POLICY,
    RELOADED,
    Target,
    call,
    capacity,
    counts,
    gauge,
    in_process,
    over_serve,
)
from .chaos_upstream import HEALTHY

SAMPLE = 0.05  # seconds between two readings of the circuit's state
THINK = (0.2, 0.6)  # seconds a caller waits between two calls
RELOAD_EVERY = 0.25  # seconds between two policy changes in the reload phase
SLOW = 0.3  # seconds a response takes in the reload phase


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    segments: tuple[tuple[str, float], ...]  # (mode, seconds), in order
    reload: bool = False

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.segments)


@dataclass(frozen=True, slots=True)
class Scale:
    callers: int  # per target
    steady: float
    bad: float
    recovery: float
    flaps: int  # good/bad cycles
    flap: float  # seconds of each half
    reload: float  # at least: the phase lasts until serve's reloads are done
    serve_reloads: int

    def phases(self) -> list[Phase]:
        def one(name: str, mode: str, seconds: float) -> Phase:
            return Phase(name, ((mode, seconds),))

        recovery = one("recovery", "ok", self.recovery)
        flapping = (("ok", self.flap), ("529", self.flap)) * self.flaps
        return [
            one("steady", "ok", self.steady),
            one("529 burst", "529", self.bad),
            recovery,
            one("529, Retry-After: 1", "529-retry-after", self.bad),
            recovery,
            one("hang", "hang", self.bad),
            recovery,
            one("mid-stream reset", "reset", self.bad),
            recovery,
            Phase(f"flapping {self.flap:g} s / {self.flap:g} s", flapping),
            recovery,
            Phase("reload mid-run", (("slow", self.reload),), reload=True),
            one("after the reloads", "ok", self.recovery),
        ]


FULL = Scale(callers=100, steady=3, bad=3, recovery=3, flaps=3, flap=2, reload=4, serve_reloads=2)
QUICK = Scale(
    callers=100, steady=1.5, bad=1.5, recovery=2, flaps=2, flap=2, reload=2.5, serve_reloads=1
)
SMOKE = Scale(
    callers=20, steady=0.3, bad=0.3, recovery=0.3, flaps=1, flap=0.3, reload=0.6, serve_reloads=1
)


@dataclass(slots=True)
class Stats:
    """What one target's callers saw in one phase (each call in the phase it
    ended in, as the mesh's counters count it)."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)  # a few errors' texts
    healthy: float = 0.0  # seconds the upstream was healthy
    open_healthy: float = 0.0  # of which the circuit was not closed
    metrics: Counter[str] = field(default_factory=Counter)  # counter deltas

    def figures(self) -> dict[str, Any]:
        calls = sum(self.outcomes.values())
        m = self.metrics
        per_call = (lambda n: n / m["calls"]) if m["calls"] else (lambda n: math.nan)
        ordered = sorted(self.latencies)
        return {
            "calls": calls,
            "ok": self.outcomes["ok"] / calls if calls else math.nan,
            "outcomes": dict(self.outcomes.most_common()),
            "details": dict(self.details),
            "p50_ms": 1000 * statistics.median(ordered) if ordered else math.nan,
            "p99_ms": 1000 * ordered[math.ceil(0.99 * len(ordered)) - 1] if ordered else math.nan,
            "attempts_per_call": per_call(m["upstream"] + m["fallback"]),
            "upstream_per_call": per_call(m["upstream"]),
            "fallback_per_call": per_call(m["fallback"]),
            "transitions": {to: m[f"to_{to}"] for to in ("open", "half_open", "closed")},
            "healthy_s": self.healthy,
            "open_healthy_s": self.open_healthy,
            "counters": dict(m),
        }


@dataclass(slots=True)
class Now:
    """Where one target is: its phase, and whether its upstream is healthy.
    Each target's moves once its own upstream has switched."""

    phase: int = 0
    healthy: bool = True
    marks: list[Counter[str]] = field(default_factory=list)  # counters as each phase began


class Chaos:
    """One run: callers on every target, the phases, the circuit's samples."""

    def __init__(self, targets: list[Target], scale: Scale) -> None:
        self.targets = targets
        self.scale = scale
        self.phases = scale.phases()
        self.stats = {t.label: [Stats() for _ in self.phases] for t in targets}
        self.now = {t.label: Now() for t in targets}
        self.seconds = [0.0 for _ in self.phases]  # how long each phase lasted
        self.stopping = False

    async def caller(self, target: Target, index: int) -> None:
        stream = index % 4 == 0
        url = f"http://{target.primary}/{'stream' if stream else 'unary'}"
        rng = random.Random(index)
        loop = asyncio.get_running_loop()
        now = self.now[target.label]
        async with target.mesh.session(source="agents", timeout=CLIENT_TIMEOUT) as session:
            await asyncio.sleep(rng.uniform(*THINK))  # callers do not start in step
            while not self.stopping:
                started = loop.time()
                outcome = await call(session, url, stream=stream)
                stats = self.stats[target.label][now.phase]  # where it ended, as counters do
                stats.outcomes[outcome.kind] += 1
                if outcome.detail and len(stats.details) < 5:
                    stats.details[f"{outcome.kind}: {outcome.detail}"] += 1
                stats.latencies.append(loop.time() - started)
                await asyncio.sleep(rng.uniform(*THINK))

    async def sample(self) -> None:
        """Time the circuit was not closed while the upstream was healthy: each
        interval counts as the state, phase and health read at its start."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        seen = {t.label: (0.0, self.now[t.label].phase, True) for t in self.targets}
        while True:
            await asyncio.sleep(SAMPLE)
            at = loop.time()
            for t in self.targets:
                level, phase, healthy = seen[t.label]
                if healthy:
                    stats = self.stats[t.label][phase]
                    stats.healthy += at - last
                    if level > 0:
                        stats.open_healthy += at - last
                now = self.now[t.label]
                seen[t.label] = (gauge(t, "meshbridge_circuit_state"), now.phase, now.healthy)
            last = at

    async def reloads(self, seconds: float) -> None:
        """A policy change every RELOAD_EVERY seconds on both targets (the last
        one back to POLICY) and, meanwhile, ``meshbridge reload`` of serve
        (one after the other, each with its policy changed)."""
        serve = [t.served for t in self.targets if t.served is not None]

        async def serve_reloads() -> None:
            for n in range(self.scale.serve_reloads):
                for s in serve:
                    await s.reload(31.0 if n % 2 == 0 else 30.0)

        reloading = asyncio.create_task(serve_reloads())
        steps = max(2, 2 * int(seconds / RELOAD_EVERY / 2))
        for step in range(1, steps + 1):
            await asyncio.sleep(seconds / (steps + 1))
            for t in self.targets:
                await t.change(RELOADED if step % 2 else POLICY)
        await reloading

    async def run(self) -> None:
        callers = [
            asyncio.create_task(self.caller(t, i))
            for t in self.targets
            for i in range(self.scale.callers)
        ]
        sampler = asyncio.create_task(self.sample())
        try:
            for index, phase in enumerate(self.phases):
                await self._phase(index, phase)
        finally:
            self.stopping = True
            await asyncio.wait(callers, timeout=2 * CLIENT_SECONDS)
            for task in [*callers, sampler]:
                task.cancel()
            await asyncio.gather(*callers, sampler, return_exceptions=True)
        for t in self.targets:
            marks = [*self.now[t.label].marks, counts(t)]
            for index, (then, later) in enumerate(itertools.pairwise(marks)):
                self.stats[t.label][index].metrics = +(later - then)

    async def _switch(self, target: Target, mode: str, phase: int | None) -> None:
        await target.set_mode(mode, SLOW)
        now = self.now[target.label]
        if phase is not None:
            now.marks.append(counts(target))
            now.phase = phase
        now.healthy = mode in HEALTHY

    async def _phase(self, index: int, phase: Phase) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reloading = None
        for n, (mode, seconds) in enumerate(phase.segments):
            await asyncio.gather(
                *(self._switch(t, mode, index if n == 0 else None) for t in self.targets)
            )
            if phase.reload and n == 0:
                reloading = asyncio.create_task(self.reloads(phase.seconds))
            await asyncio.sleep(seconds)
        if reloading is not None:
            await reloading
        self.seconds[index] = loop.time() - started

    def figures(self) -> list[dict[str, Any]]:
        return [
            {"phase": phase.name, "target": t.label, "seconds": self.seconds[i],
             **self.stats[t.label][i].figures()}
            for i, phase in enumerate(self.phases)
            for t in self.targets
        ]  # fmt: skip


class Tally(logging.Handler):
    """Counts the warnings and errors logged in this process, by logger and
    level (and whether they carry a traceback), where Python's last-resort
    handler would print them: the report lists them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        traceback = " with a traceback" if record.exc_info else ""
        self.counts[f"{record.name} {record.levelname}{traceback}"] += 1


async def run(scale: Scale) -> dict[str, Any]:
    started = time.perf_counter()
    tally = Tally()
    logging.getLogger().addHandler(tally)
    try:
        with tempfile.TemporaryDirectory(prefix="meshbridge-chaos-") as folder:
            async with (
                in_process() as local,
                served(Path(folder), LIMIT) as server,
                over_serve(server) as remote,
            ):
                chaos = Chaos([local, remote], scale)
                await chaos.run()
                breaker = POLICY.circuit_breaker
                wait_close = 4 * (breaker.max_open_for if breaker is not None else 1)
                after = {t.label: await capacity(t, wait_close) for t in (local, remote)}
            served_log, serve_pid = server.log_counts(), server.pid
    finally:
        logging.getLogger().removeHandler(tally)
    return {
        "callers_per_target": scale.callers,
        "phases": chaos.figures(),
        "capacity": after,
        "seconds": time.perf_counter() - started,
        "problems": problems(after),
        "logged": {"here": dict(tally.counts), "serve": served_log},
        "serve_pid": serve_pid,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="shorter phases (about 35 s)")
    scale.add_argument("--smoke", action="store_true", help="20 callers, tiny phases (tests)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    doc = asyncio.run(run(SMOKE if args.smoke else QUICK if args.quick else FULL))
    print(report(doc))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
