"""prometheus/: the scrape config, the rules and their promtool unit tests."""

from __future__ import annotations

import re

import pytest

from ._stack import PROMETHEUS_DIR, run_tool

# One worker runs them all: they share the session's demo and Prometheus.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ops")]

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"

REQUIRED_ALERTS = {
    "MeshbridgeDown",
    "MeshbridgeHighErrorRatio",
    "MeshbridgeSlowTimeToFirstByte",
    "MeshbridgeProviderNotCompleting",
    "MeshbridgeCircuitOpen",
    "MeshbridgeRetryStorm",
    "MeshbridgeCallerErrors",
    "MeshbridgeBudgetNearlySpent",
    "MeshbridgeLimitStoreDown",
}


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\w+)\s*$", RULES.read_text(), re.M)


def test_config_is_valid(promtool: str) -> None:
    """Also checks the rule files it names."""
    run_tool([promtool, "check", "config", str(CONFIG)])


def test_rules_are_valid(promtool: str) -> None:
    run_tool([promtool, "check", "rules", str(RULES)])


def test_alert_unit_tests_pass(promtool: str) -> None:
    run_tool([promtool, "test", "rules", str(RULE_TESTS)], cwd=PROMETHEUS_DIR)


def test_the_required_alerts_exist() -> None:
    names = alert_names()
    assert len(names) == len(set(names)), "an alert name is used twice"
    assert set(names) >= REQUIRED_ALERTS


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert has a unit test case where it fires and one where it stays silent."""
    cases = re.split(r"^\s*- eval_time:", RULE_TESTS.read_text(), flags=re.M)[1:]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        name = re.search(r"^\s*alertname:\s*(\w+)\s*$", case, re.M)
        if name is None:
            continue
        if re.search(r"^\s*exp_alerts:\s*\[\]\s*$", case, re.M):
            silent.add(name[1])
        elif re.search(r"^\s*- exp_labels:", case, re.M):
            firing.add(name[1])
    names = set(alert_names())
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_the_scrape_job_is_the_one_the_alerts_watch() -> None:
    assert re.search(r"^\s*- job_name:\s*meshbridge\s*$", CONFIG.read_text(), re.M)
    assert 'up{job="meshbridge"}' in RULES.read_text()
