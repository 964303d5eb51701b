"""What the soak checks, and how it says so.

Each caller first records what the mesh should count for it (its source and
expected outcome) in a :class:`Tally`, then makes its request; anything the
caller saw that it did not expect is a surprise. At the end the mesh's own
``meshbridge_requests_total`` is summed by source and outcome and compared
with the tally, and the run fails if they differ, if a task or an in-flight
request is left, if bytes are left in the pipes, or if anything but the soak's
deliberate failures was logged.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import platform
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from meshbridge import Mesh

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "ERROR",
    "Noise",
    "Tally",
    "compare",
    "count_noise",
    "finish",
    "other_tasks",
    "requests_counted",
]

COMPLETED, CANCELLED, ERROR = "completed", "cancelled", "error"
OUTCOMES = (COMPLETED, CANCELLED, ERROR)
MIB = 1024 * 1024
Key = tuple[str, str]  # (source, outcome)


class Tally:
    """The requests made, by the outcome the mesh should record, and surprises."""

    def __init__(self) -> None:
        self.expected: Counter[Key] = Counter()
        self.left_by: Counter[str] = Counter()  # streams whose caller went away, by how
        self.surprises: list[str] = []  # the first few, for the report
        self.surprise_count = 0

    @property
    def total(self) -> int:
        return self.expected.total()

    def made(self, source: str, outcome: str) -> None:
        self.expected[source, outcome] += 1

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.surprise(message)

    def surprise(self, message: str) -> None:
        self.surprise_count += 1
        if len(self.surprises) < 10:
            self.surprises.append(message)


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks alive besides the current one."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def _samples(registry: CollectorRegistry, name: str, provider: str) -> Iterator[Any]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels.get("provider") == provider:
                yield sample


def requests_counted(registry: CollectorRegistry, provider: str) -> Counter[Key]:
    """``meshbridge_requests_total`` of ``provider``, summed by (source, outcome)."""
    counted: Counter[Key] = Counter()
    for sample in _samples(registry, "meshbridge_requests_total", provider):
        counted[sample.labels["source"], sample.labels["outcome"]] += int(sample.value)
    return counted


def _sum(registry: CollectorRegistry, name: str, provider: str) -> float:
    return float(sum(sample.value for sample in _samples(registry, name, provider)))


def compare(expected: Mapping[Key, int], counted: Mapping[Key, int]) -> list[str]:
    """One line per (source, outcome) whose count differs from the requests made."""
    return [
        f"{source} {outcome}: {expected.get((source, outcome), 0):,} made, "
        f"{counted.get((source, outcome), 0):,} counted"
        for source, outcome in sorted(set(expected) | set(counted))
        if expected.get((source, outcome), 0) != counted.get((source, outcome), 0)
    ]


class Noise(logging.Handler):
    """Counts (and prints) what was logged, except the soak's own deliberate failures."""

    def __init__(self, deliberate: type[BaseException]) -> None:
        super().__init__(logging.WARNING)
        self._deliberate = deliberate
        self.deliberate = 0
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], self._deliberate):
            self.deliberate += 1
            return
        line = f"{record.name}: {record.getMessage()}"
        if len(self.records) < 10:
            self.records.append(line)
        print(f"  logged: {line}", file=sys.stderr)


@contextmanager
def count_noise(deliberate: type[BaseException]) -> Iterator[Noise]:
    """A :class:`Noise` on the loggers of asyncio, aiohttp and meshbridge while inside."""
    noise = Noise(deliberate)
    loggers = [logging.getLogger(name) for name in ("asyncio", "aiohttp", "meshbridge")]
    for logger in loggers:
        logger.addHandler(noise)
    try:
        yield noise
    finally:
        for logger in loggers:
            logger.removeHandler(noise)


async def settle_tasks(before: set[asyncio.Task[Any]], seconds: float = 5.0) -> set[str]:
    """Wait (bounded) for tasks begun since ``before`` to end; the names of those left."""
    for _ in range(int(seconds / 0.01)):
        if other_tasks() <= before:
            break
        await asyncio.sleep(0.01)
    return {t.get_name() + " " + repr(t.get_coro()) for t in other_tasks() - before}


def _mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


async def finish(
    mesh: Mesh,
    provider: str,
    *,
    plan: object,
    tally: Tally,
    rss: list[tuple[int, int]],
    before: set[asyncio.Task[Any]],
    noise: Noise,
    timed_out: bool,
    seconds: float,
    json_path: Path | None,
) -> dict[str, Any]:
    """Check a finished run (sessions closed, mesh still running); print the report.

    Returns the figures, with ``"ok"`` true only if every check passed.
    """
    tasks_left = await settle_tasks(before)
    in_flight = _sum(mesh.registry, "meshbridge_requests_in_flight", provider)
    handler_errors = _sum(mesh.registry, "meshbridge_handler_errors_total", provider)
    counted = requests_counted(mesh.registry, provider)
    buffered = mesh.buffered_bytes
    gc.collect()
    middle = rss[len(rss) // 2] if len(rss) > 2 else rss[-1]
    failing_handlers = tally.expected["unary", ERROR] + tally.expected["streams", ERROR]

    problems = compare(tally.expected, counted)
    if timed_out:
        problems.append(f"did not finish within {getattr(plan, 'time_limit', '?')} s")
    if tasks_left:
        problems.append(f"{len(tasks_left)} tasks left: {sorted(tasks_left)[:3]}")
    if in_flight:
        problems.append(f"meshbridge_requests_in_flight is {in_flight:g}, not 0")
    if buffered:
        problems.append(f"{buffered:,} bytes left in the pipes")
    if handler_errors != failing_handlers:
        problems.append(
            f"meshbridge_handler_errors_total is {handler_errors:g}, "
            f"{failing_handlers} handlers failed on purpose"
        )
    if tally.surprise_count:
        problems.append(f"{tally.surprise_count} callers saw the unexpected: {tally.surprises}")
    if noise.records:
        problems.append(f"{len(noise.records)}+ unexpected log records: {noise.records}")

    print(f"\n{tally.total:,} requests in {seconds:.1f} s")
    print(
        f"RSS: start {_mib(rss[0][1])}, middle {_mib(middle[1])} (after {middle[0]:,} requests), "
        f"end {_mib(rss[-1][1])}"
    )
    print(
        f"tasks left: {len(tasks_left)}; meshbridge_requests_in_flight: {in_flight:g}; "
        f"bytes in the pipes: {buffered}; handler errors: {handler_errors:g} "
        f"({failing_handlers} on purpose)"
    )
    print("meshbridge_requests_total by source and outcome (made / counted):")
    for source in sorted({s for s, _ in tally.expected} | {s for s, _ in counted}):
        cells = (
            f"{o} {tally.expected[source, o]:>7,} / {counted[source, o]:>7,}" for o in OUTCOMES
        )
        print(f"  {source:<8} " + "   ".join(cells))
    left = ", ".join(f"{how} {n:,}" for how, n in sorted(tally.left_by.items()))
    print(f"streams whose caller went away: {left or 'none'}")
    print("\n".join(["FAILED:", *(f"  {p}" for p in problems)]) if problems else "OK")

    doc: dict[str, Any] = {
        "ok": not problems,
        "problems": problems,
        "plan": asdict(plan) if is_dataclass(plan) and not isinstance(plan, type) else {},
        "seconds": seconds,
        "python": platform.python_version(),
        "requests": tally.total,
        "rss_mib": {
            "start": rss[0][1] / MIB,
            "middle": middle[1] / MIB,
            "end": rss[-1][1] / MIB,
            "by_requests": [[n, b / MIB] for n, b in rss],
        },
        "tasks_left": len(tasks_left),
        "in_flight": in_flight,
        "buffered_bytes": buffered,
        "handler_errors": handler_errors,
        "made": {f"{s}/{o}": n for (s, o), n in sorted(tally.expected.items())},
        "counted": {f"{s}/{o}": n for (s, o), n in sorted(counted.items())},
        "left_by": dict(sorted(tally.left_by.items())),
        "deliberate_log_records": noise.deliberate,
    }
    if json_path is not None:
        _write(json_path, doc)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
