"""The chaos benchmark's verdicts and tables (``chaos.py`` makes the figures)."""

from __future__ import annotations

import math
from typing import Any

from .chaos_targets import LIMIT

__all__ = ["problems", "report"]


def problems(after: dict[str, dict[str, Any]]) -> list[str]:
    """What the run says is wrong with the policies (empty: nothing)."""
    found = []
    for label, f in after.items():
        if math.isnan(f["closed_after"]):
            found.append(f"{label}: the circuit did not close on a healthy upstream")
        left = (f["left_before"], f["left_after"], f.get("serve_left", 0))
        if any(left):
            found.append(
                f"{label}: admissions counted once every call had ended: {left[0]:g} after "
                f"the run, {left[1]:g} after the check, {left[2]:g} in serve"
            )
        if f["held"] < f["limit"] or f["overloaded"] or f.get("serve_overloaded", 0):
            found.append(
                f"{label}: {f['limit']} calls at once: at most {f['held']:g} admitted at once, "
                f"{f['overloaded']:g} refused as overloaded "
                f"({f.get('serve_overloaded', 0):g} in serve)"
            )
    return found


def _cell(value: float, text: str) -> str:
    return "-" if math.isnan(value) else text


def _both(figures: dict[str, Any], here: str, serve: str) -> str:
    """A figure of the caller's mesh, and serve's beside it when there is one."""
    text = f"{figures[here]:g}"
    return text + (f" (serve: {figures[serve]:g})" if serve in figures else "")


def report(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['callers_per_target']} callers per target, "
        f"{doc['seconds']:.0f} s; attempts per call: upstream + fallback",
        "",
        "| phase | target | calls | ok | p50 / p99 | attempts per call | "
        "breaker: opened / half-open / closed | circuit open in good windows |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["phases"]:
        t = row["transitions"]
        lines.append(
            f"| {row['phase']} | {row['target']} | {row['calls']:,} | "
            + _cell(row["ok"], f"{row['ok']:.1%}")
            + " | "
            + _cell(row["p50_ms"], f"{row['p50_ms']:.0f} / {row['p99_ms']:.0f} ms")
            + " | "
            + _cell(
                row["attempts_per_call"],
                f"{row['attempts_per_call']:.2f} ({row['upstream_per_call']:.2f} + "
                f"{row['fallback_per_call']:.2f})",
            )
            + f" | {t['open']} / {t['half_open']} / {t['closed']} | "
            + (
                f"{row['open_healthy_s']:.1f} of {row['healthy_s']:.1f} s"
                if row["healthy_s"]
                else "-"
            )
            + " |"
        )
    lines += [
        "",
        f"| capacity after the run | circuit closed after | admitted, calls ended | "
        f"{LIMIT} calls at once: most admitted at once | refused as overloaded | "
        "served by the upstream | admitted, after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, f in doc["capacity"].items():
        lines.append(
            f"| {label} | "
            + _cell(f["closed_after"], f"{f['closed_after']:.1f} s")
            + f" | {f['left_before']:g} | {_both(f, 'held', 'serve_held')} | "
            f"{_both(f, 'overloaded', 'serve_overloaded')} | {f['admitted']:g} | "
            f"{_both(f, 'left_after', 'serve_left')} |"
        )
    for where, logged in doc["logged"].items():
        if logged:
            what = ", ".join(f"{n} {name}" for name, n in sorted(logged.items()))
            lines.append(f"\nlogged ({where}): {what}")
    lines.append("")
    lines += doc["problems"] or ["OK"]
    return "\n".join(lines)
