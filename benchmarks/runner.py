"""Running the rounds: every contender, every workload, in one run.

Timing workloads run in this process, with every contender started side by
side on the same event loop; in each round the contenders take turns in a
rotated order, so a drift of the machine touches all of them alike. Memory
workloads (``Workload.isolated``) run each contender in a fresh interpreter,
one at a time: in one long-lived process, memory one contender freed would be
reused by the next and its RSS growth would read smaller than it is.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .contenders import CONTENDERS
from .measure import fmt, settle_allocator
from .workloads import QUICK, SMOKE, Figures, Scale, Workload

__all__ = ["Results", "child_main", "run"]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Results:
    """Per workload, per contender: the figures of each round and any errors."""

    rounds: dict[str, dict[str, list[Figures]]] = field(default_factory=dict)
    errors: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add(self, workload: str, contender: str, figures: Figures | None, error: str = "") -> None:
        if figures is not None:
            self.rounds.setdefault(workload, {}).setdefault(contender, []).append(figures)
        if error:
            self.errors.setdefault(workload, {}).setdefault(contender, []).append(error)


def _limit(scale: Scale) -> float:
    """The most one measurement may take, whatever happens: its loops'
    time caps plus room for set-up and the longest fan-out with its ramp."""
    fanout = max(
        scale.fanout_interval * (scale.fanout_events + 2),
        scale.wide_ramp + scale.wide_interval * (scale.wide_events + 2),
    )
    return 3 * scale.time_cap + fanout + 30


def _rotated(names: list[str], round_: int) -> list[str]:
    k = round_ % len(names)
    return names[k:] + names[:k]


def _progress(workload: str, round_: int, rounds: int, contender: str, text: str) -> None:
    print(f"  {workload:<12} round {round_ + 1}/{rounds}  {contender:<22} {text}", file=sys.stderr)


def _summary(workload: Workload, figures: Figures) -> str:
    shown = (f"{fmt(figures.get(f.key))} {f.unit}" for f in workload.figures)
    return ", ".join(shown)


async def run(workloads: list[Workload], names: list[str], scale: Scale, rounds: int) -> Results:
    """Measure each workload ``rounds`` times on each named contender."""
    settle_allocator()
    results = Results()
    timed = [w for w in workloads if not w.isolated]
    if timed:
        await _run_in_process(timed, names, scale, rounds, results)
    for workload in workloads:
        if workload.isolated:
            await _run_isolated(workload, names, rounds, results, scale)
    return results


async def _run_in_process(
    workloads: list[Workload], names: list[str], scale: Scale, rounds: int, results: Results
) -> None:
    used = {n for w in workloads for n in w.runs_on(names)}
    contenders = {name: CONTENDERS[name]() for name in names if name in used}
    try:
        for contender in contenders.values():
            await contender.start()
        for workload in workloads:
            on = workload.runs_on(names)
            for round_ in range(workload.rounds(rounds) if on else 0):
                for name in _rotated(on, round_):
                    try:
                        async with asyncio.timeout(_limit(scale)):
                            figures = await workload.run(contenders[name], scale)
                    except Exception as exc:
                        results.add(workload.name, name, None, f"{type(exc).__name__}: {exc}")
                        _progress(workload.name, round_, rounds, name, f"FAILED: {exc!r}")
                        continue
                    results.add(workload.name, name, figures)
                    _progress(workload.name, round_, rounds, name, _summary(workload, figures))
    finally:
        for contender in contenders.values():
            await contender.aclose()


async def _run_isolated(
    workload: Workload, names: list[str], rounds: int, results: Results, scale: Scale
) -> None:
    on = workload.runs_on(names)
    rounds = workload.rounds(rounds) if on else 0
    for round_ in range(rounds):
        for name in _rotated(on, round_):
            argv = [sys.executable, "-m", "benchmarks", "--child", workload.name, name]
            figures, error = await _child(argv + _scale_args(scale), _limit(scale))
            results.add(workload.name, name, figures, error)
            shown = _summary(workload, figures) if figures is not None else f"FAILED: {error}"
            _progress(workload.name, round_, rounds, name, shown)


def _scale_args(scale: Scale) -> list[str]:
    """The option that gives a child process the same scale."""
    return ["--smoke"] if scale is SMOKE else ["--quick"] if scale is QUICK else []


async def _child(argv: list[str], limit: float) -> tuple[Figures | None, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=PACKAGE_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(limit):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, f"timed out after {limit:.0f} s"
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        return None, f"exit {process.returncode}: {' | '.join(tail)}"
    figures: Figures = json.loads(out.decode().strip().splitlines()[-1])
    return figures, ""


def child_main(workload: Workload, name: str, scale: Scale) -> int:
    """Run one round of one workload on one fresh contender; print its figures
    as one JSON line (what the parent reads)."""

    async def measure() -> Figures:
        contender = CONTENDERS[name]()
        await contender.start()
        try:
            return await workload.run(contender, scale)
        finally:
            await contender.aclose()

    settle_allocator()
    started = time.perf_counter()
    figures = asyncio.run(measure())
    if scale is not SMOKE:
        print(
            f"child {workload.name}/{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
    print(json.dumps(figures))
    return 0
