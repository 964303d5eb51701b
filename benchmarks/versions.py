"""``python -m benchmarks versions``: the unary and streaming workloads under
each Python, in one table (``make bench-versions``).

For each interpreter (``--python``, repeatable; by default ``.venv`` and
every ``.venv-X.Y`` beside it, one per version) it runs, in a fresh process
and one version after another (never side by side: they would share the
cores)::

    python -m benchmarks --quick --only unary,sse,slow_reader \\
        --contender meshbridge,pipe,floor,tcp,unix --rounds 3

Every ratio is taken within one version's own run, as in ``make bench``:
against loopback TCP, the Unix socket, the bare pipe and the client-only
floor. The table (markdown) goes to stdout and ``versions.md``, each run's
figures to ``versions.json``, both in ``benchmarks/results/``. At the quick
scale each version takes about two to three minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measure import fmt
from .report import FLOOR, MESH, PIPE, REFERENCE, UNIX, machine

__all__ = ["main", "versions_table"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = "unary,sse,slow_reader"
CONTENDERS = ",".join((MESH, PIPE, FLOOR, REFERENCE, UNIX))
TCP = REFERENCE
RUN_LIMIT = 900.0  # seconds: one version's run, whatever happens
Doc = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure of each version's run, and its target."""

    label: str
    value: Callable[[Doc], float | None]
    threshold: float | None = None
    at_least: bool = True
    ratio: bool = True  # shown as 1.23x; else as a plain figure


def _median(doc: Doc, workload: str, contender: str, key: str) -> float | None:
    cells = doc["workloads"].get(workload, {}).get("contenders", {})
    value: float | None = cells.get(contender, {}).get("median", {}).get(key)
    return value


def _over(workload: str, key: str, a: str, b: str) -> Callable[[Doc], float | None]:
    def value(doc: Doc) -> float | None:
        top, base = _median(doc, workload, a, key), _median(doc, workload, b, key)
        return top / base if top is not None and base else None

    return value


def _figure(workload: str, key: str, contender: str) -> Callable[[Doc], float | None]:
    return lambda doc: _median(doc, workload, contender, key)


def _worst_pipe_peak(doc: Doc) -> float | None:
    cell = doc["workloads"].get("slow_reader", {}).get("contenders", {}).get(MESH, {})
    peaks = [r.get("pipe_peak_kib") for r in cell.get("rounds", [])]
    return max((p for p in peaks if p is not None), default=None)


def _unary_rows(w: str, over_tcp: float, over_unix: float | None) -> list[Row]:
    return [
        Row(f"{w} req/s: meshbridge", _figure(w, "rps", MESH), ratio=False),
        Row(f"{w}: meshbridge / tcp", _over(w, "rps", MESH, TCP), over_tcp),
        Row(f"{w}: meshbridge / unix", _over(w, "rps", MESH, UNIX), over_unix),
        Row(f"{w}: meshbridge / pipe", _over(w, "rps", MESH, PIPE), 0.90),
        Row(f"{w}: meshbridge / floor", _over(w, "rps", MESH, FLOOR)),
        Row(f"{w}: floor / tcp (the limit)", _over(w, "rps", FLOOR, TCP)),
        Row(f"{w}: pipe / tcp", _over(w, "rps", PIPE, TCP)),
        Row(f"{w}: unix / tcp", _over(w, "rps", UNIX, TCP)),
    ]


# Issue 13's targets, and beside them what explains them.
ROWS: tuple[Row, ...] = (
    *_unary_rows("unary_seq", 2.0, None),
    *_unary_rows("unary_c64", 1.5, 1.3),
    Row("sse_burst events/s: meshbridge / tcp", _over("sse_burst", "events_per_s", MESH, TCP), 1.2),
    Row("sse_burst events/s: meshbridge / unix", _over("sse_burst", "events_per_s", MESH, UNIX)),
    Row(
        "sse_paced p50: meshbridge / tcp",
        _over("sse_paced", "p50_us", MESH, TCP),
        0.25,
        at_least=False,
    ),
    Row("sse_paced p50: meshbridge / unix", _over("sse_paced", "p50_us", MESH, UNIX)),
    Row(
        "slow_reader: meshbridge pipe peak, worst round (KiB)",
        _worst_pipe_peak,
        1024.0,
        at_least=False,
        ratio=False,
    ),
)


def _cell(row: Row, value: float | None) -> str:
    if value is None:
        return "-"
    shown = f"{value:.2f}x" if row.ratio else fmt(value)
    if row.threshold is None:
        return shown
    met = value >= row.threshold if row.at_least else value <= row.threshold
    return shown if met else f"{shown} MISSED"


def versions_table(runs: dict[str, Doc]) -> str:
    """One markdown table: a row per figure, a column per Python version."""
    head = "| figure | target |" + "".join(f" Python {v} |" for v in runs)
    lines = [head, "|---|---|" + "---:|" * len(runs)]
    for row in ROWS:
        target = "" if row.threshold is None else ("≥ " if row.at_least else "≤ ")
        if row.threshold is not None:
            target += f"{row.threshold:g}" + ("x" if row.ratio else "")
        cells = "".join(f" {_cell(row, row.value(doc))} |" for doc in runs.values())
        lines.append(f"| {row.label} | {target} |{cells}")
    first = next(iter(runs.values()), None)
    if first is not None:
        where = first["machine"]
        lines.append(
            f"\n{where['cpu']}, {where['cpus_usable']} CPUs usable; aiohttp "
            f"{where['versions']['aiohttp']}; source {where['source']}; "
            f"rounds per workload: {first['rounds']} (medians); "
            + ", ".join(f"{v}: {doc['seconds']:.0f} s" for v, doc in runs.items())
        )
    return "\n".join(lines)


def _version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{python}: not a working Python ({done.stderr.strip()[-200:]})")
    return done.stdout.strip()


def _interpreters(asked: Sequence[str]) -> dict[str, str]:
    """Full version -> interpreter, one per X.Y (the first given wins), oldest first."""
    if asked:
        candidates = list(asked)
    else:
        venvs = [ROOT / ".venv", *sorted(ROOT.glob(".venv-*"))]
        candidates = [str(v / "bin" / "python") for v in venvs if (v / "bin" / "python").exists()]
    if not candidates:
        raise SystemExit(f"no interpreter: no .venv or .venv-X.Y in {ROOT}; give --python")
    found: dict[str, tuple[str, str]] = {}
    for python in candidates:
        if not Path(python).exists():
            raise SystemExit(f"--python {python}: no such file")
        version = _version(python)
        found.setdefault(".".join(version.split(".")[:2]), (version, python))

    def key(minor: str) -> tuple[int, ...]:
        return tuple(int(p) for p in minor.split("."))

    return {found[m][0]: found[m][1] for m in sorted(found, key=key)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks versions",
        description="The unary and streaming workloads under each Python, in one table.",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PATH",
        help="an interpreter with meshbridge[bench] installed (repeatable; "
        "default: .venv/bin/python and every .venv-X.Y/bin/python)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload (default 3)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts: checks the harness, measures nothing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where versions.md/.json go")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    interpreters = _interpreters(args.python)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Doc] = {}
    failed: list[str] = []
    for version, python in interpreters.items():
        path = args.out / f"versions-{version}.json"
        argv_ = [python, "-m", "benchmarks", "--smoke" if args.smoke else "--quick"]
        argv_ += ["--only", WORKLOADS, "--contender", CONTENDERS, "--rounds", str(args.rounds)]
        path.unlink(missing_ok=True)
        print(f"Python {version} ({python}):", file=sys.stderr, flush=True)
        started = time.perf_counter()
        # its table goes with its progress lines to stderr; stdout is for the merged one
        try:
            done = subprocess.run(
                [*argv_, "--json", str(path)],
                cwd=ROOT,
                stdout=sys.stderr,
                timeout=RUN_LIMIT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            failed.append(f"{version} (stopped after {RUN_LIMIT:.0f} s)")
        else:
            if done.returncode != 0:
                failed.append(f"{version} (exit {done.returncode})")
        print(f"Python {version}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if path.exists():
            runs[version] = json.loads(path.read_text())
            path.unlink()  # merged into versions.json
    text = versions_table(runs)
    (args.out / "versions.md").write_text(text + "\n")
    merged = {"machine": machine(), "workloads": WORKLOADS, "contenders": CONTENDERS, "runs": runs}
    (args.out / "versions.json").write_text(json.dumps(merged, indent=2) + "\n")
    print(text)
    print(f"\nfigures in {args.out / 'versions.json'}", file=sys.stderr)
    if failed:
        print(f"error: the run failed under Python {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
