"""The Grafana dashboard, read as Grafana's file provisioning reads it (no tools needed)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ._promql import (
    DOCUMENTED_FAMILIES,
    label_values_query,
    load_dashboard,
    metric_names,
    panels,
    targets,
    template_variables,
)
from ._stack import DASHBOARD, REPO

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONED_DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"

# Rows in order, and the families each must chart.
ROWS = {
    "Traffic": {"meshbridge_requests_total"},
    "Errors": {"meshbridge_requests_total", "meshbridge_handler_errors_total"},
    "Resilience": {
        "meshbridge_calls_total",
        "meshbridge_requests_total",
        "meshbridge_retries_total",
        "meshbridge_fallbacks_total",
        "meshbridge_rejected_total",
        "meshbridge_circuit_state",
        "meshbridge_circuit_transitions_total",
        "meshbridge_timeouts_total",
        "meshbridge_route_requests_total",
    },
    "Latency": {
        "meshbridge_request_duration_seconds_bucket",
        "meshbridge_time_to_first_byte_seconds_bucket",
    },
    "Saturation": {"meshbridge_requests_in_flight"},
    "Throughput": {"meshbridge_request_bytes_total", "meshbridge_response_bytes_total"},
    "LLM": {"meshbridge_tokens_total", "meshbridge_time_to_first_token_seconds_bucket"},
    "Config reloads": {"meshbridge_config_reloads_total"},
    "Limits": {
        "meshbridge_limited_total",
        "meshbridge_limit_remaining",
        "meshbridge_limit_allowed",
        "meshbridge_store_errors_total",
        "meshbridge_store_up",
    },
    "Usage ledger": {
        "meshbridge_ledger_written_total",
        "meshbridge_ledger_spooled_total",
        "meshbridge_ledger_replayed_total",
        "meshbridge_ledger_dropped_total",
        "meshbridge_ledger_write_errors_total",
        "meshbridge_ledger_pruned_total",
        "meshbridge_ledger_queue_depth",
        "meshbridge_ledger_spool_records",
        "meshbridge_ledger_spool_bytes",
        "meshbridge_ledger_database_up",
    },
}
# The variable filters of families that lack a provider or a source label
# (every other family takes both). Callers' calls are by the name they used,
# which is a provider's (or a route's).
PROVIDER = 'provider=~"$provider"'
SOURCE = 'source=~"$source"'
FILTERS = {
    "meshbridge_config_reloads_total": (),
    # Limits are matched on who calls, each limit across providers; the
    # remaining budgets and the store belong to no caller.
    "meshbridge_limited_total": (SOURCE,),
    "meshbridge_limit_remaining": (),
    "meshbridge_limit_allowed": (),
    "meshbridge_store_errors_total": (),
    "meshbridge_store_up": (),
    **dict.fromkeys(ROWS["Usage ledger"], ()),  # one writer per process: no labels
    "meshbridge_calls_total": ('target=~"$provider"', SOURCE),
    "meshbridge_circuit_state": (PROVIDER,),
    "meshbridge_circuit_transitions_total": (PROVIDER,),
    "meshbridge_policy_in_flight": (PROVIDER,),
    "meshbridge_route_requests_total": (PROVIDER,),
}

_SELECTOR = re.compile(r"\b(meshbridge_\w+)\s*(\{[^{}]*\})?")
_RANGE = re.compile(r"\[([^\[\]]*)\]")
_QUANTILE = re.compile(r"histogram_quantile\(\s*([\d.]+)\s*,\s*sum by \(([^)]*)\) \(rate\((\w+)\{")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def content_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels(dashboard) if p["type"] != "row"]


def rows(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """row title -> the panels below it (rows laid out top to bottom)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = grouped.setdefault(panel["title"], [])
            current.extend(panel.get("panels", []))
        else:
            current.append(panel)
    return grouped


def test_fixed_uid_and_no_import_placeholders(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "meshbridge"
    assert dashboard["title"] == "meshbridge"
    assert "id" not in dashboard or dashboard["id"] is None, "a provisioned dashboard has no id"
    assert "__inputs" not in dashboard
    # ${DS_...} placeholders only work through the import UI, never with file provisioning.
    assert "${DS_" not in DASHBOARD.read_text()


def test_datasource_variable_defaults_to_the_provisioned_prometheus(
    dashboard: dict[str, Any],
) -> None:
    variable = template_variables(dashboard)["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    uid = re.search(r"^\s*uid:\s*(\S+)\s*$", PROVISIONED_DATASOURCES.read_text(), re.M)
    assert uid, f"{PROVISIONED_DATASOURCES} sets no uid"
    assert variable["current"]["value"] == uid[1]


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in content_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{panel['title']} {target['refId']}"
    for variable in template_variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE, annotation["name"]


@pytest.mark.parametrize("name", ["provider", "source"])
def test_provider_and_source_are_multi_select_with_all(
    dashboard: dict[str, Any], name: str
) -> None:
    variable = template_variables(dashboard)[name]
    assert variable["type"] == "query"
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    # Every series, not the regex of the values Grafana happened to list.
    assert variable["allValue"] == ".*"
    assert variable["refresh"] == 2, "refresh on time range change"
    selector, label = label_values_query(variable)
    assert label == name
    assert selector is not None
    assert metric_names(selector) == {"meshbridge_requests_total"}


def test_source_values_follow_the_chosen_providers(dashboard: dict[str, Any]) -> None:
    selector, _ = label_values_query(template_variables(dashboard)["source"])
    assert selector is not None
    assert 'provider=~"$provider"' in selector


def test_rows_in_order_each_charting_its_families(dashboard: dict[str, Any]) -> None:
    grouped = rows(dashboard)
    assert list(grouped) == list(ROWS)
    for title, families in ROWS.items():
        assert grouped[title], f"row {title!r} is empty"
        exprs = [t["expr"] for panel in grouped[title] for t in panel["targets"]]
        charted = set().union(*map(metric_names, exprs))
        assert families <= charted, f"row {title!r} charts none of {families - charted}"


def test_every_panel_sets_a_unit(dashboard: dict[str, Any]) -> None:
    for panel in content_panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), f"panel {panel['title']!r} has no unit"


def test_every_panel_has_a_title_description_and_queries(dashboard: dict[str, Any]) -> None:
    for panel in content_panels(dashboard):
        assert panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids, f"panel {panel['title']!r} has no target"
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['title']!r} repeats a refId"
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target.get("legendFormat"), f"{panel['title']} {target['refId']}"


def test_panel_ids_are_unique_and_the_grid_does_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_query_filters_by_provider_and_source(dashboard: dict[str, Any]) -> None:
    for target in targets(dashboard):
        for name, matchers in _SELECTOR.findall(target.expr):
            for wanted in FILTERS.get(name, (PROVIDER, SOURCE)):
                assert wanted in matchers, f"{name} lacks {wanted} in {target}"


def test_ranges_come_from_grafana(dashboard: dict[str, Any]) -> None:
    """Rates use $__rate_interval (never a fixed window); stats use $__range."""
    for target in targets(dashboard):
        for window in _RANGE.findall(target.expr):
            allowed = {"$__range"} if target.instant else {"$__rate_interval"}
            assert window in allowed, f"[{window}] in {target}"


def test_latency_row_has_p50_p95_p99_from_histograms(dashboard: dict[str, Any]) -> None:
    quantiles: dict[str, set[str]] = {}
    for target in targets(dashboard):
        for q, by, bucket in _QUANTILE.findall(target.expr):
            assert bucket.endswith("_bucket"), target
            assert "le" in [label.strip() for label in by.split(",")], target
            quantiles.setdefault(bucket, set()).add(q)
        if "histogram_quantile" in target.expr:
            assert _QUANTILE.search(target.expr), f"unexpected quantile shape in {target}"
    for family in ("meshbridge_request_duration_seconds", "meshbridge_time_to_first_byte_seconds"):
        assert {"0.5", "0.95", "0.99"} <= quantiles[f"{family}_bucket"], family
    assert "0.95" in quantiles["meshbridge_time_to_first_token_seconds_bucket"]


def test_every_documented_family_is_charted(dashboard: dict[str, Any]) -> None:
    charted = set().union(*(metric_names(t.expr) for t in targets(dashboard)))
    missing = {f for f, name in DOCUMENTED_FAMILIES.items() if name not in charted}
    assert not missing, f"no panel charts {sorted(missing)}"


def test_callers_success_is_charted_against_what_providers_served(
    dashboard: dict[str, Any],
) -> None:
    """Success is completed with no 5xx, on both sides; a name without any is 0, not absent."""
    (panel,) = [p for p in rows(dashboard)["Resilience"] if p["title"].startswith("Success ratio")]
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    families = [metric_names(t["expr"]) for t in panel["targets"]]
    assert families == [{"meshbridge_calls_total"}, {"meshbridge_requests_total"}]
    for target in panel["targets"]:
        assert 'outcome="completed", code!~"5.."' in target["expr"], target["refId"]
        assert " * 0\n" in target["expr"], f"{target['refId']}: no zero for a name without success"


def test_circuit_state_reads_as_closed_half_open_and_open(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in rows(dashboard)["Resilience"] if p["title"].startswith("Circuit state")]
    assert panel["type"] == "state-timeline"
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {value: option["text"] for value, option in mapping["options"].items()}
    assert texts == {"0": "closed", "0.5": "half-open", "1": "open"}
