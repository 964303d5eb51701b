"""Every dashboard query and every rule, evaluated by a real Prometheus scraping two workloads.

The demo runs fake LLM providers with traffic from several sources, handler
errors, cancellations and a config reload; the resilience workload
(``_resilience.py``) runs providers that fail, hang and stall under traffic
policies, so retries, fallbacks, open circuits, rejections and timeouts keep
happening. Prometheus scrapes both every second with prometheus/alerts.yml
loaded. A query that fails or stays empty fails the test with the panel title
and the query.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from ._promql import (
    QUERY_RANGE_SECONDS,
    QUERY_STEP_SECONDS,
    Target,
    annotation_queries,
    label_values_query,
    load_dashboard,
    substitute,
    targets,
    template_variables,
)
from ._stack import Demo, Prometheus, PromQLError, run_tool, wait_for

# One worker runs them all: they share the session's demo and Prometheus.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ops")]

# How long the workload gets to produce every series the dashboard charts
# (time to first token, config reloads...). A bound, not an expectation.
DATA_TIMEOUT = 45


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every query variable set to All, as Grafana substitutes it (its allValue)."""
    return {
        name: variable["allValue"]
        for name, variable in template_variables(dashboard).items()
        if variable["type"] == "query"
    }


def variable_values(
    prometheus: Prometheus, dashboard: dict[str, Any], variables: dict[str, str], name: str
) -> list[str]:
    """What Grafana lists for a variable (it asks /api/v1/label/<label>/values)."""
    selector, label = label_values_query(template_variables(dashboard)[name])
    params = {"match[]": substitute(selector, variables)} if selector else {}
    values: list[str] = prometheus.api(f"label/{label}/values", **params)
    return values


@pytest.fixture(params=["All", "every value ticked"])
def selection(
    request: pytest.FixtureRequest,
    prometheus: Prometheus,
    dashboard: dict[str, Any],
    variables: dict[str, str],
) -> dict[str, str]:
    """The variables as Grafana substitutes them: All, or each value picked: (a|b|c)."""
    if request.param == "All":
        return variables
    return {
        name: "(" + "|".join(variable_values(prometheus, dashboard, variables, name)) + ")"
        for name in variables
    }


def has_value(series: list[dict[str, Any]]) -> bool:
    """Whether any point is a number Grafana can draw (not NaN, not infinite)."""
    points = [p for s in series for p in s.get("values", [s.get("value")]) if p]
    return any(math.isfinite(float(value)) for _, value in points)


def evaluate(prometheus: Prometheus, target: Target, query: str) -> list[dict[str, Any]]:
    if target.instant:
        return prometheus.query(query)
    return prometheus.query_range(query, seconds=QUERY_RANGE_SECONDS, step=QUERY_STEP_SECONDS)


@pytest.mark.parametrize("workload", ["demo", "resilience"])
def test_scrape_passes_promtool_check_metrics(
    request: pytest.FixtureRequest, promtool: str, workload: str
) -> None:
    scraped: Demo = request.getfixturevalue(workload)
    run_tool([promtool, "check", "metrics"], stdin=scraped.scrape())


# What the dashboard is tested against: the two workloads make each of these happen.
WORKLOAD = {
    "two providers": "count(count by (provider) (meshbridge_requests_total)) >= 2",
    "two sources": "count(count by (source) (meshbridge_requests_total)) >= 2",
    "errors": 'sum(meshbridge_requests_total{outcome="error"}) > 0',
    "cancellations": 'sum(meshbridge_requests_total{outcome="cancelled"}) > 0',
    "handler errors": "sum(meshbridge_handler_errors_total) > 0",
    "tokens": "sum(meshbridge_tokens_total) > 0",
    "a config reload": "sum(meshbridge_config_reloads_total) > 0",
    "retries": "sum(meshbridge_retries_total) > 0",
    "a fallback": "sum(meshbridge_fallbacks_total) > 0",
    "an open circuit": "max_over_time(meshbridge_circuit_state[2m]) == 1",
    "a circuit closing or half-open": 'sum(meshbridge_circuit_transitions_total{to!="open"}) > 0',
    "callers served by a fallback": 'sum(meshbridge_calls_total{target="primary", code="200"}) > 0',
    "callers' 5xx": 'sum(meshbridge_calls_total{code=~"5.."}) > 0',
    "rejections, circuit open": 'sum(meshbridge_rejected_total{reason="circuit-open"}) > 0',
    "rejections, overloaded": 'sum(meshbridge_rejected_total{reason="overloaded"}) > 0',
    "rejections, fault": 'sum(meshbridge_rejected_total{reason="fault"}) > 0',
    "timeouts, first byte": 'sum(meshbridge_timeouts_total{kind="first-byte-timeout"}) > 0',
    "timeouts, idle": 'sum(meshbridge_timeouts_total{kind="idle-timeout"}) > 0',
    "timeouts, total": 'sum(meshbridge_timeouts_total{kind="timeout"}) > 0',
    "a route split": "count(count by (provider) (meshbridge_route_requests_total)) >= 2",
    "calls rate-limited": 'sum(meshbridge_limited_total{reason="rate-limited"}) > 0',
    "a budget exhausted": 'sum(meshbridge_limited_total{reason="budget-exhausted"}) > 0',
    "a budget spent": 'min(meshbridge_limit_remaining{kind="tokens_per_day"}) == 0',
}


@pytest.mark.parametrize("what", list(WORKLOAD))
def test_the_workload_exercises(prometheus: Prometheus, what: str) -> None:
    expr = WORKLOAD[what]
    wait_for(f"{what} ({expr})", lambda: prometheus.query(expr) or None, timeout=DATA_TIMEOUT)


def test_every_panel_target_returns_data(
    prometheus: Prometheus, dashboard: dict[str, Any], selection: dict[str, str]
) -> None:
    """Each target as Grafana sends it: a range query (instant for stats)."""
    pending = {target: substitute(target.expr, selection) for target in targets(dashboard)}
    for target, query in pending.items():
        assert "$" not in query, f"unsubstituted variable in {target}"
    errors: dict[Target, str] = {}
    deadline = time.monotonic() + DATA_TIMEOUT
    while pending:
        for target, query in list(pending.items()):
            try:
                series = evaluate(prometheus, target, query)
            except PromQLError as exc:
                errors[target] = f"error: {exc}"
                del pending[target]
                continue
            if has_value(series):
                del pending[target]
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    failures = [f"{target}\n    -> {reason}" for target, reason in errors.items()]
    failures += [f"{target}\n    -> empty (no drawable point)" for target in pending]
    assert not failures, "\n".join(failures)


def test_variables_list_the_workload_providers_and_sources(
    prometheus: Prometheus, dashboard: dict[str, Any], variables: dict[str, str]
) -> None:
    """The variable queries, asked the way Grafana asks them."""
    for name in ("provider", "source"):
        values = variable_values(prometheus, dashboard, variables, name)
        assert len(values) >= 2, f"variable {name}: {values}"


def test_annotations_evaluate(
    prometheus: Prometheus, dashboard: dict[str, Any], variables: dict[str, str]
) -> None:
    """Annotations mark rare events: they may be empty, never an error."""
    for name, expr in annotation_queries(dashboard).items():
        try:
            prometheus.query_range(
                substitute(expr, variables), seconds=QUERY_RANGE_SECONDS, step=QUERY_STEP_SECONDS
            )
        except PromQLError as exc:
            pytest.fail(f"annotation {name!r}: {expr}\n    -> {exc}", pytrace=False)


def test_every_rule_evaluates_without_error(prometheus: Prometheus) -> None:
    """Prometheus evaluates each rule cleanly, and each expression answers a query.

    Alerts that are silent on a healthy workload may return nothing here; the
    promtool unit tests prove that they fire.
    """

    def evaluated() -> list[dict[str, Any]] | None:
        rules = prometheus.rules()
        return rules if all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for("every rule to be evaluated once", evaluated, timeout=30)
    assert {r["group"] for r in rules} == {"meshbridge.rules", "meshbridge.alerts"}
    failures = [
        f"{r['name']}: {r['query']}\n    -> {r['health']}: {r.get('lastError')}"
        for r in rules
        if r["health"] != "ok"
    ]
    for rule in rules:
        try:
            prometheus.query(rule["query"])
        except PromQLError as exc:
            failures.append(f"{rule['name']}: {rule['query']}\n    -> {exc}")
    assert not failures, "\n".join(failures)


def test_recording_rules_record(prometheus: Prometheus) -> None:
    """On the demo's workload every recording rule has a value."""
    records = [r["name"] for r in prometheus.rules() if r["type"] == "recording"]
    assert records
    deadline = time.monotonic() + DATA_TIMEOUT
    while (empty := [r for r in records if not prometheus.query(r)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(1)
    assert not empty, f"recording rules without a value: {empty}"
