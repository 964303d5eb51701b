"""What the dashboard and the rules ask Prometheus for, read without a PromQL parser.

Good enough for queries written in this repository: metric names are the
identifiers left once strings, label matchers, ranges, grouping clauses,
function calls and keywords are taken out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ._stack import DASHBOARD

# Grafana's built-in variables as the live test substitutes them, and the range
# it queries over: the last 2 minutes, points every 2 s, rates over 1 minute
# (what $__rate_interval becomes in a view of several hours).
QUERY_RANGE_SECONDS = 120
QUERY_STEP_SECONDS = 2
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval_ms": "2000",
    "$__interval": "2s",
    "$__range_s": str(QUERY_RANGE_SECONDS),
    "$__range_ms": str(QUERY_RANGE_SECONDS * 1000),
    "$__range": f"{QUERY_RANGE_SECONDS}s",
}

# The families meshbridge documents (issues 2, 3, 10 and 19), by the series names
# PromQL selects them with.
DOCUMENTED_FAMILIES = {
    "meshbridge_requests": "meshbridge_requests_total",
    "meshbridge_request_duration_seconds": "meshbridge_request_duration_seconds_bucket",
    "meshbridge_time_to_first_byte_seconds": "meshbridge_time_to_first_byte_seconds_bucket",
    "meshbridge_requests_in_flight": "meshbridge_requests_in_flight",
    "meshbridge_request_bytes": "meshbridge_request_bytes_total",
    "meshbridge_response_bytes": "meshbridge_response_bytes_total",
    "meshbridge_handler_errors": "meshbridge_handler_errors_total",
    "meshbridge_tokens": "meshbridge_tokens_total",
    "meshbridge_time_to_first_token_seconds": "meshbridge_time_to_first_token_seconds_bucket",
    "meshbridge_config_reloads": "meshbridge_config_reloads_total",
    "meshbridge_calls": "meshbridge_calls_total",
    "meshbridge_retries": "meshbridge_retries_total",
    "meshbridge_fallbacks": "meshbridge_fallbacks_total",
    "meshbridge_rejected": "meshbridge_rejected_total",
    "meshbridge_timeouts": "meshbridge_timeouts_total",
    "meshbridge_circuit_state": "meshbridge_circuit_state",
    "meshbridge_circuit_transitions": "meshbridge_circuit_transitions_total",
    "meshbridge_route_requests": "meshbridge_route_requests_total",
    "meshbridge_limited": "meshbridge_limited_total",
    "meshbridge_limit_remaining": "meshbridge_limit_remaining",
    "meshbridge_limit_allowed": "meshbridge_limit_allowed",
    "meshbridge_store_errors": "meshbridge_store_errors_total",
    "meshbridge_store_up": "meshbridge_store_up",
    # the usage ledger of `serve` and `demo` (docs/guides/ledger.md)
    "meshbridge_ledger_written": "meshbridge_ledger_written_total",
    "meshbridge_ledger_spooled": "meshbridge_ledger_spooled_total",
    "meshbridge_ledger_replayed": "meshbridge_ledger_replayed_total",
    "meshbridge_ledger_dropped": "meshbridge_ledger_dropped_total",
    "meshbridge_ledger_write_errors": "meshbridge_ledger_write_errors_total",
    "meshbridge_ledger_pruned": "meshbridge_ledger_pruned_total",
    "meshbridge_ledger_queue_depth": "meshbridge_ledger_queue_depth",
    "meshbridge_ledger_spool_records": "meshbridge_ledger_spool_records",
    "meshbridge_ledger_spool_bytes": "meshbridge_ledger_spool_bytes",
    "meshbridge_ledger_database_up": "meshbridge_ledger_database_up",
}

# Series Prometheus makes itself, not meshbridge.
SYNTHETIC_METRICS = frozenset({"up"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "start", "end"}
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with dashboard and Grafana variables replaced, longest names first."""
    everything = {**GRAFANA_VARIABLES, **{f"${name}": value for name, value in variables.items()}}
    for name in sorted(everything, key=len, reverse=True):
        expr = expr.replace("${" + name[1:] + "}", everything[name]).replace(name, everything[name])
    return expr


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Target:
    panel: str
    ref_id: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"panel {self.panel!r} target {self.ref_id}: {self.expr}"


def targets(dashboard: dict[str, Any]) -> list[Target]:
    """The PromQL of every panel target."""
    return [
        Target(panel["title"], t["refId"], t["expr"], bool(t.get("instant")))
        for panel in panels(dashboard)
        for t in panel.get("targets", [])
    ]


def template_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def label_values_query(variable: dict[str, Any]) -> tuple[str | None, str]:
    """(selector or None, label) of a ``label_values(...)`` variable query."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = _LABEL_VALUES.match(text)
    assert match, f"variable {variable['name']}: not a label_values() query: {text}"
    return match["selector"], match["label"]


def annotation_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """name -> expr of the dashboard's Prometheus annotations."""
    return {a["name"]: a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a}


def dashboard_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every PromQL the dashboard runs, by where it comes from."""
    queries = {str(t): t.expr for t in targets(dashboard)}
    for name, variable in template_variables(dashboard).items():
        if variable["type"] == "query":
            selector, _ = label_values_query(variable)
            if selector:
                queries[f"variable {name}"] = selector
    for name, expr in annotation_queries(dashboard).items():
        queries[f"annotation {name}"] = expr
    return queries


def exported_names(exposition: str) -> dict[str, set[str]]:
    """family -> the series names it can be queried by, from a text-format scrape.

    ``_created`` gauges are prometheus_client's companions of counters and
    histograms, not families of their own.
    """
    families = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    exported = {}
    for name, kind in families.items():
        if name.endswith("_created") and name.removesuffix("_created") in families:
            continue
        if kind == "counter":
            exported[name] = {f"{name}_total"}
        elif kind == "histogram":
            exported[name] = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            exported[name] = {name, f"{name}_sum", f"{name}_count"}
        else:
            exported[name] = {name}
    return exported
