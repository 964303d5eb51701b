"""Turning rounds into medians, ratios, targets, a table and a JSON file.

Ratios are contender / loopback TCP keep-alive (``tcp``, or the reference a
workload names: ``tcp-apart`` for 10,000 streams) for every figure, so for
throughput higher is better and for latency and memory lower is better;
unary workloads also get contender / ``tcp-close``, and the workloads the
client-only floor runs in get contender / ``floor`` (how far from the limit).
The targets are those of the performance issue (13: under concurrency too),
with the earlier ones it does not replace, checked on the medians (the slow
reader's pipe buffer on its worst round: it must *never* go above 1 MiB).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from .measure import fmt, median
from .runner import Results
from .workloads import Scale, Workload

__all__ = ["machine", "summarize", "table", "valgrind_target", "write_json"]

REFERENCE = "tcp"
UNARY_REFERENCE = "tcp-close"
MESH, PIPE, UNIX, FLOOR = "meshbridge", "pipe", "unix", "floor"
Medians = dict[str, dict[str, dict[str, float | None]]]  # workload -> contender -> figure


def machine() -> dict[str, Any]:
    """Facts about where the run happened, for the README's table."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions: dict[str, str | None] = {}
    for dist in ("aiohttp", "httpx", "starlette", "aiohttp-asgi-connector", "meshbridge"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "source": _source_state(),
        "cpu": model,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "event_loop": "asyncio (default selector loop)",
        "versions": versions,
    }


def _source_state() -> str:
    """The commit measured, and whether meshbridge/ differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    dirty = git("status", "--porcelain", "--", "meshbridge")
    return commit + (" + uncommitted changes in meshbridge/" if dirty else "")


def medians(workloads: list[Workload], results: Results) -> Medians:
    out: Medians = {}
    for workload in workloads:
        for contender, rounds in results.rounds.get(workload.name, {}).items():
            keys = {key for figures in rounds for key in figures}
            out.setdefault(workload.name, {})[contender] = {
                key: median([figures.get(key) for figures in rounds]) for key in sorted(keys)
            }
    return out


def _ratio(m: Medians, workload: str, contender: str, key: str, reference: str) -> float | None:
    value = m.get(workload, {}).get(contender, {}).get(key)
    base = m.get(workload, {}).get(reference, {}).get(key)
    return value / base if value is not None and base else None


def _target(name: str, value: float | None, threshold: float, at_least: bool) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if at_least else value <= threshold)
    return {
        "target": name,
        "value": value,
        "threshold": threshold,
        "at_least": at_least,
        "met": met,
    }


def targets(m: Medians, results: Results) -> list[dict[str, Any]]:
    out = []
    for w, over_tcp, over_unix in (("unary_seq", 2.0, None), ("unary_c64", 1.5, 1.3)):
        out.append(
            _target(f"{w}: meshbridge / tcp", _ratio(m, w, MESH, "rps", REFERENCE), over_tcp, True)
        )
        if over_unix is not None:
            out.append(
                _target(f"{w}: meshbridge / unix", _ratio(m, w, MESH, "rps", UNIX), over_unix, True)
            )
        # routing and metrics: at most 10% below the bare pipe
        out.append(_target(f"{w}: meshbridge / pipe", _ratio(m, w, MESH, "rps", PIPE), 0.90, True))
        # the earlier targets issue 13 keeps: far ahead of a new connection per
        # request, and of both in-process peers
        out.append(
            _target(
                f"{w}: meshbridge / tcp-close",
                _ratio(m, w, MESH, "rps", UNARY_REFERENCE),
                4.0,
                True,
            )
        )
        for peer in ("httpx-asgi", "aiohttp-asgi"):
            out.append(
                _target(f"{w}: meshbridge / {peer}", _ratio(m, w, MESH, "rps", peer), 1.0, True)
            )
    out.append(
        _target(
            "sse_paced p50: meshbridge / tcp",
            _ratio(m, "sse_paced", MESH, "p50_us", REFERENCE),
            0.25,
            False,
        )
    )
    out.append(
        _target(
            "sse_burst events/s: meshbridge / tcp",
            _ratio(m, "sse_burst", MESH, "events_per_s", REFERENCE),
            1.2,
            True,
        )
    )
    out.append(
        _target(
            "sse_burst events/s: meshbridge / pipe",
            _ratio(m, "sse_burst", MESH, "events_per_s", PIPE),
            0.85,
            True,
        )
    )
    # large bodies (issue 23): at least twice loopback TCP's throughput, each way
    for w in ("down_1mib", "up_1mib", "down_16mib", "up_16mib"):
        out.append(
            _target(f"{w}: meshbridge / tcp", _ratio(m, w, MESH, "mb_per_s", REFERENCE), 2.0, True)
        )
    peaks = [r.get("pipe_peak_kib") for r in results.rounds.get("slow_reader", {}).get(MESH, [])]
    worst = max((p for p in peaks if p is not None), default=None)
    out.append(
        _target("slow_reader: meshbridge pipe peak, worst round (KiB)", worst, 1024.0, False)
    )
    return out


def valgrind_target(counts: dict[str, Any]) -> dict[str, Any]:
    """Issue 23: the mesh's own bookkeeping at most 5% over the bare pipe, in instructions."""
    value = counts["instructions_mesh_over_pipe"]
    return _target("instructions per request: meshbridge / pipe", value, 1.05, False)


def _spread(
    results: Results, workload: str, contender: str, key: str, reference: str
) -> list[float] | None:
    """The lowest and highest ratio of a round to the reference's same round
    (rounds rotate the order, so round i of each ran next to the other)."""
    ours = results.rounds.get(workload, {}).get(contender, [])
    theirs = results.rounds.get(workload, {}).get(reference, [])
    ratios = [
        a[key] / b[key]  # type: ignore[operator]
        for a, b in zip(ours, theirs, strict=False)
        if a.get(key) is not None and b.get(key)
    ]
    return [min(ratios), max(ratios)] if ratios else None


def summarize(
    workloads: list[Workload],
    names: list[str],
    results: Results,
    scale: Scale,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    """Everything the run measured, as one JSON-ready document."""
    m = medians(workloads, results)
    doc: dict[str, Any] = {
        "machine": machine(),
        "rounds": rounds,
        "seconds": seconds,
        "scale": asdict(scale),
        "contenders": names,
        "reference": REFERENCE,
        "workloads": {},
    }
    for workload in workloads:
        per: dict[str, Any] = {}
        for name in workload.runs_on(names):
            med = m.get(workload.name, {}).get(name, {})
            per[name] = {
                "median": med,
                "vs_tcp": {
                    f.key: _ratio(m, workload.name, name, f.key, workload.reference)
                    for f in workload.figures
                },
                "rounds": results.rounds.get(workload.name, {}).get(name, []),
                "errors": results.errors.get(workload.name, {}).get(name, []),
            }
            if workload.spread:
                per[name]["vs_tcp_range"] = {
                    f.key: _spread(results, workload.name, name, f.key, workload.reference)
                    for f in workload.figures
                }
            if workload.name.startswith("unary"):
                per[name]["vs_tcp_close"] = {
                    "rps": _ratio(m, workload.name, name, "rps", UNARY_REFERENCE)
                }
            if FLOOR in workload.runs_on(names):
                key = workload.figures[0].key
                per[name]["vs_floor"] = {key: _ratio(m, workload.name, name, key, FLOOR)}
        doc["workloads"][workload.name] = {
            "title": workload.title,
            "about": workload.about,
            "reference": workload.reference,
            "rounds": workload.rounds(rounds),
            "figures": [asdict(f) for f in workload.figures],
            "contenders": per,
        }
    doc["targets"] = targets(m, results)
    return doc


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(doc: dict[str, Any]) -> str:
    """The medians as text: one block per workload, ratios to TCP beside each figure."""
    lines = []
    for name, workload in doc["workloads"].items():
        figures = workload["figures"]
        lines.append(f"\n{name}: {workload['title']}\n  ({workload['about']})")
        head = f"  {'contender':<22}"
        for f in figures:
            head += f" {f['key'] + ' (' + f['unit'] + ')':>22} {'x ' + workload['reference']:>11}"
        if name.startswith("unary"):
            head += f" {'x tcp-close':>12}"
        floor = FLOOR in workload["contenders"]
        if floor:
            head += f" {'x floor':>9}"
        lines.append(head)
        for contender, cell in workload["contenders"].items():
            row = f"  {contender:<22}"
            for f in figures:
                value, ratio = cell["median"].get(f["key"]), cell["vs_tcp"][f["key"]]
                row += f" {fmt(value):>22} {_x(ratio):>11}"
                spread = cell.get("vs_tcp_range", {}).get(f["key"])
                if spread is not None and contender != workload["reference"]:
                    row += f" ({spread[0]:.2f}-{spread[1]:.2f})"
            if name.startswith("unary"):
                row += f" {_x(cell['vs_tcp_close']['rps']):>12}"
            if floor:
                row += f" {_x(cell['vs_floor'][figures[0]['key']]):>9}"
            if cell["errors"]:
                row += f"  ({len(cell['errors'])} failed: {cell['errors'][0][:60]})"
            lines.append(row)
    lines.append("\ntargets:")
    for t in doc["targets"]:
        if t["met"] is None:
            continue  # its workloads or contenders were not run
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        sign = ">=" if t["at_least"] else "<="
        lines.append(f"  {verdict:<6} {t['target']}: {fmt(t['value'])} ({sign} {t['threshold']})")
    return "\n".join(lines)
