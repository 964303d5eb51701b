"""The dashboard and the rules against what meshbridge really exports.

A dashboard that queries a metric that does not exist shows "No data" forever;
a family nobody charts is invisible. Both directions are checked against a
scrape of the demo, counting the _bucket/_sum/_count/_total series names.
"""

from __future__ import annotations

import pytest

from ._promql import (
    DOCUMENTED_FAMILIES,
    SYNTHETIC_METRICS,
    dashboard_queries,
    load_dashboard,
    metric_names,
    targets,
)
from ._stack import Prometheus

# One worker runs them all: they share the session's demo and Prometheus.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ops")]


def queryable(exported: dict[str, set[str]]) -> set[str]:
    return set().union(*exported.values())


def test_the_demo_exports_every_documented_family(exported: dict[str, set[str]]) -> None:
    known = queryable(exported)
    missing = {f: name for f, name in DOCUMENTED_FAMILIES.items() if name not in known}
    assert not missing, f"the demo's /metrics lacks {missing}"


def test_every_exported_family_is_on_a_panel(exported: dict[str, set[str]]) -> None:
    charted = set().union(*(metric_names(t.expr) for t in targets(load_dashboard())))
    unused = sorted(family for family, names in exported.items() if not names & charted)
    assert not unused, f"families no panel charts: {unused}"


def test_every_metric_the_dashboard_names_is_exported(exported: dict[str, set[str]]) -> None:
    known = queryable(exported)
    unknown = [
        f"{where}: {sorted(names - known)}"
        for where, expr in dashboard_queries(load_dashboard()).items()
        if (names := metric_names(expr)) - known
    ]
    assert not unknown, "\n".join(unknown)


def test_every_metric_a_rule_names_is_exported_or_recorded(
    exported: dict[str, set[str]], prometheus: Prometheus
) -> None:
    rules = prometheus.rules()
    known = queryable(exported) | SYNTHETIC_METRICS
    known |= {r["name"] for r in rules if r["type"] == "recording"}
    unknown = [
        f"{rule['name']}: {sorted(names - known)}"
        for rule in rules
        if (names := metric_names(rule["query"])) - known
    ]
    assert not unknown, "\n".join(unknown)
