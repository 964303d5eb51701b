"""The command line: ``python -m benchmarks [--smoke|--quick] [--rounds N] [--only W]
[--json PATH] [--no-valgrind]``, and ``python -m benchmarks soak [--quick]`` (see ``soak.py``),
``slowloris``, ``policies [--quick]`` (what traffic policies cost, see
``policies.py``), ``limits [--quick]`` (what limits cost, see ``limits.py``),
``ledger [--quick] [--postgres URL]`` (what the usage ledger costs and
sustains, see ``ledger.py``), ``workers [--quick]`` (gateway throughput with
1 and 2 workers, see ``workers.py``), ``chaos [--quick|--smoke]`` (traffic
policies under failures, see ``chaos.py``) and ``versions`` (the unary and
streaming workloads under each Python's venv, one table, see ``versions.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import chaos, ledger, limits, policies, slowloris, soak, valgrind, versions, workers
from .apart import serve_main
from .contenders import CONTENDERS
from .report import summarize, table, valgrind_target, write_json
from .runner import child_main, run
from .workloads import FULL, QUICK, SMOKE, WORKLOADS

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="meshbridge against loopback TCP, a Unix socket and in-process peers.",
        epilog="`python -m benchmarks soak --help`: the soak (make soak); "
        "`python -m benchmarks versions --help`: one table for each Python (make bench-versions).",
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds (CI)")
    scale.add_argument(
        "--quick", action="store_true", help="a quarter of the counts, 3 s per measurement"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per workload (default 5, memory workloads at most 3; smoke 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD",
        help=f"run only these workloads (repeatable, or comma-separated; a prefix such as "
        f"'unary' matches several): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--contender",
        action="append",
        metavar="NAME",
        help=f"run only these contenders (repeatable): {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the figures go")
    parser.add_argument(
        "--no-valgrind",
        action="store_true",
        help="skip the valgrind counts (instructions per request, copies per body) that "
        "follow the workloads where valgrind is installed (a few minutes)",
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("WORKLOAD", "CONTENDER"), help=argparse.SUPPRESS
    )
    parser.add_argument("--serve-app", action="store_true", help=argparse.SUPPRESS)
    return parser


def _pick(wanted: list[str] | None, known: Sequence[str], what: str, *, prefix: bool) -> list[str]:
    """The known names asked for (comma-separated or repeated), in known order;
    with ``prefix``, ``unary`` also picks ``unary_seq`` and ``unary_c64``."""
    if not wanted:
        return list(known)
    asked = {w.strip() for item in wanted for w in item.split(",") if w.strip()}

    def matches(name: str, ask: str) -> bool:
        return name == ask or (prefix and name.startswith(ask))

    unknown = sorted(a for a in asked if not any(matches(k, a) for k in known))
    if unknown or not asked:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if any(matches(k, a) for a in asked)]


def _raise_fd_limit() -> None:
    """A thousand TCP streams need two thousand descriptors, client and server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["soak"]:
        return soak.main(argv[1:])
    if argv[:1] == ["policies"]:
        return policies.main(argv[1:])
    if argv[:1] == ["chaos"]:
        return chaos.main(argv[1:])
    if argv[:1] == ["limits"]:
        return limits.main(argv[1:])
    if argv[:1] == ["ledger"]:
        return ledger.main(argv[1:])
    if argv[:1] == ["workers"]:
        return workers.main(argv[1:])
    if argv[:1] == ["versions"]:
        return versions.main(argv[1:])
    if argv[:1] == ["valgrind"]:
        return valgrind.main(argv[1:])
    if argv[:1] == ["--valgrind-child"]:
        return valgrind.child_main(argv[1:])
    if argv[:1] == ["slowloris"]:
        _raise_fd_limit()  # a descriptor per connection, here and in the server it starts
        return slowloris.main(argv[1:])
    args = _parser().parse_args(argv)
    scale = SMOKE if args.smoke else QUICK if args.quick else FULL
    _raise_fd_limit()
    if args.serve_app:
        return serve_main()
    if args.child:
        workload, contender = args.child
        return child_main(WORKLOADS[workload], contender, scale)
    rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 5)
    if rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    workloads = [WORKLOADS[n] for n in _pick(args.only, list(WORKLOADS), "workload", prefix=True)]
    names = _pick(args.contender, list(CONTENDERS), "contender", prefix=False)
    running = {n for w in workloads for n in w.runs_on(names)}
    print(
        f"{len(running)} contenders x {len(workloads)} workloads x {rounds} rounds", file=sys.stderr
    )
    started = time.perf_counter()
    results = asyncio.run(run(workloads, names, scale, rounds))
    seconds = time.perf_counter() - started
    doc = summarize(workloads, names, results, scale, rounds, seconds)
    if not (args.smoke or args.no_valgrind or args.only or args.contender):
        if valgrind.available():
            print("valgrind: counting instructions and copies (a few minutes)", file=sys.stderr)
            doc["valgrind"] = asyncio.run(valgrind.count())
            doc["targets"].append(valgrind_target(doc["valgrind"]))
        else:
            print("valgrind is not installed: no instruction or copy counts", file=sys.stderr)
    print(table(doc))
    if "valgrind" in doc:
        print(valgrind.summary(doc["valgrind"]))
    write_json(doc, args.json)
    print(f"\n{seconds:.0f} s; figures in {args.json}")
    failed = sum(len(e) for per in results.errors.values() for e in per.values())
    return 1 if failed else 0
