"""``meshbridge usage CONFIG``: the usage ledger of a config, summed or listed.

::

    meshbridge usage meshbridge.toml --since 7d --group-by key
    meshbridge usage meshbridge.toml --calls --key team-a --limit 20 --format json

It reads the database the config's ``[ledger]`` names (the SQLite file in
the state directory by default) directly: ``serve`` need not be running.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from meshbridge import ConfigError

from ._config import load_config
from ._ledger_query import GROUP_BY, MAX_PAGE, OUTCOMES, LedgerReader
from ._usage_api import call_json, filter_of, row_json

__all__ = ["add_usage_parser", "usage"]

_SUMMARY: Final = ("calls", "errors", "input_tokens", "output_tokens", "cached_input_tokens",
                   "reasoning_tokens", "p50_ms", "p95_ms")  # fmt: skip
_CALLS: Final = ("started", "duration_ms", "status", "outcome", "source", "api_key_id",
                 "client", "provider", "model", "input_tokens", "output_tokens")  # fmt: skip
_GROUP_TITLES: Final = {"key": "api_key_id"}


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"expected a number of calls from 1 to {MAX_PAGE}")
    return int(value)


def add_usage_parser(commands: Any) -> None:
    """Add ``usage`` to the subcommands of the ``meshbridge`` parser."""
    usage = commands.add_parser(
        "usage", help="summaries and calls from the usage ledger of a config"
    )
    usage.add_argument("config", type=Path, metavar="CONFIG")
    usage.add_argument("--since", metavar="WHEN", help="ISO 8601 (2025-01-31) or a span: 24h, 7d")
    usage.add_argument("--until", metavar="WHEN", help="ISO 8601 or a span back from now")
    for name, what in (("source", "Source"), ("key", "API key id"), ("client", "gateway client"),
                       ("provider", "provider"), ("model", "model")):  # fmt: skip
        usage.add_argument(f"--{name}", metavar=name.upper(), help=f"only calls of this {what}")
    usage.add_argument("--outcome", choices=OUTCOMES, help="only calls that ended so")
    usage.add_argument("--group-by", choices=GROUP_BY, help="one summary line per value")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.add_argument("--calls", action="store_true", help="list calls, newest first")
    usage.add_argument("--limit", type=_limit, default=100, help="calls listed (default 100)")


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    def shown(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    cells = [[c.upper() for c in columns]] + [[shown(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _write(rows: list[dict[str, Any]], columns: Sequence[str], form: str, out: TextIO) -> None:
    if form == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
    elif form == "csv":
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )
    else:
        _table(rows, columns, out)


def usage(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``meshbridge usage`` with parsed ``args``; returns the exit status."""
    try:
        config = load_config(args.config, require_env=False)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    unset = [var for key, var in config.missing_env if key.startswith("ledger.")]
    if unset:
        print(f"meshbridge usage: environment variable {unset[0]} is not set", file=sys.stderr)
        return 1
    params = {k: v for k in ("since", "until", "source", "key", "client", "provider", "model",
                             "outcome") if (v := getattr(args, k)) is not None}  # fmt: skip
    try:
        where = filter_of(params)
    except ValueError as exc:
        print(f"meshbridge usage: --{exc}", file=sys.stderr)
        return 2
    try:
        reader = LedgerReader(config.ledger)
    except FileNotFoundError as exc:
        print(f"meshbridge usage: {exc} (nothing recorded yet?)", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"meshbridge usage: cannot read the ledger: {exc}", file=sys.stderr)
        return 1
    try:
        if args.calls:
            page, _ = reader.calls(where, limit=args.limit)
            rows = [call_json(record) for record in page]
            for row, record in zip(rows, page, strict=True):
                row["duration_ms"] = record.duration * 1000
                row["model"] = record.response_model or record.request_model
            _write(rows, _CALLS, args.format, out)
            return 0
        summary = [row_json(r) for r in reader.summary(where, args.group_by)]
        for row in summary:
            row["p50_ms"] = row.pop("p50_seconds") * 1000
            row["p95_ms"] = row.pop("p95_seconds") * 1000
            row[_GROUP_TITLES.get(args.group_by, args.group_by or "group")] = row.pop("group")
        group = [_GROUP_TITLES.get(args.group_by, args.group_by)] if args.group_by else []
        _write(summary, [*group, *_SUMMARY], args.format, out)
        return 0
    finally:
        reader.close()
