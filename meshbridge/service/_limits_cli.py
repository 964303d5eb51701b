"""``meshbridge limits CONFIG [--format table|json]``: each limit's use and what remains.

With a shared store (``[store] url``) it reads the counters every worker and
replica shares, changing nothing. With the in-process store there is
nothing to read from another process: each ``serve`` process counts on its
own, in its own memory, so the command lists the limits as configured and
says so (their live use is in ``meshbridge_limit_remaining`` on each
process's ``/metrics``).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from meshbridge import ConfigError, Limit, LimitUse

from ._config import Config, load_config

__all__ = ["show_limits"]


def _amount(value: float) -> str:
    return f"{value:.0f}" if math.isclose(value, round(value)) else f"{value:.4g}"


def _caller(caller: dict[str, str] | Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(caller.items())) or "-"


def _match(limit: Limit) -> str:
    return ",".join(f"{k}={v}" for k, v in limit.match.items()) or "every call"


async def _read(config: Config) -> list[LimitUse]:
    limiter = config.limits.limiter()
    assert limiter is not None
    try:
        return await limiter.usage()
    finally:
        await limiter.aclose()


def _as_json(config: Config, rows: list[LimitUse] | None) -> str:
    limits = []
    for limit in config.limits.limits:
        amounts = {kind: limit.amount(kind) for kind in limit.kinds}
        limits.append({"name": limit.name, "match": dict(limit.match), **amounts})
    usage = None
    if rows is not None:
        usage = [
            {
                "limit": r.limit,
                "kind": r.kind,
                "caller": dict(r.caller),
                "used": r.used,
                "allowed": r.allowed,
                "remaining": r.remaining,
                "period": r.period,
                "resets": r.resets,
            }
            for r in rows
        ]
    store = "redis" if config.limits.store.shared else "in-process"
    doc = {"store": store, "time_zone": config.limits.store.time_zone, "limits": limits,
           "usage": usage}  # fmt: skip
    return json.dumps(doc, indent=2)


def _as_table(config: Config, rows: list[LimitUse] | None, out: TextIO) -> None:
    tz = ZoneInfo(config.limits.store.time_zone)
    table = [("LIMIT", "CALLER", "KIND", "USED", "LIMIT", "REMAINING", "RESETS")]
    for limit in config.limits.limits:
        mine = [r for r in rows or () if r.limit == limit.name]
        if rows is None or not mine:
            note = "-" if rows is None else "no calls yet"
            for kind in limit.kinds:
                table.append((limit.name, _match(limit), kind, note,
                              _amount(limit.amount(kind) or 0), "-", "-"))  # fmt: skip
            continue
        for r in mine:
            resets = datetime.fromtimestamp(r.resets, tz).strftime("%Y-%m-%d %H:%M %Z") \
                if r.resets else "-"  # fmt: skip
            table.append((r.limit, _caller(r.caller), r.kind, _amount(r.used),
                          _amount(r.allowed), _amount(r.remaining), resets))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def show_limits(path: Path, fmt: str = "table", out: TextIO = sys.stdout) -> int:
    """Print the limits of the config ``path`` and, with a shared store, their use.

    Returns:
        The exit status: 0, or 1 if the config has errors or the store cannot be read.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=out)
        return 1
    if not config.limits.limits:
        print(f"{path}: no [limits.NAME] tables", file=out)
        return 0
    rows = None
    if config.limits.store.shared:
        try:
            rows = asyncio.run(_read(config))
        except Exception as exc:  # whatever redis raised: say what, no traceback
            print(f"meshbridge limits: cannot read the limit store: {exc}", file=sys.stderr)
            return 1
    if fmt == "json":
        print(_as_json(config, rows), file=out)
    else:
        _as_table(config, rows, out)
        if rows is None:
            print(
                "\nThe in-process store: each `meshbridge serve` process counts in its own "
                "memory, so there is\nno use to read from here (see meshbridge_limit_remaining "
                "on its /metrics). Set [store] url\nto share the counters between workers and "
                "replicas, and to read them here.",
                file=out,
            )
    return 0
