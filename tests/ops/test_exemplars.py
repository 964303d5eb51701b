"""Exemplars: the latency histograms carry trace ids, Prometheus stores them,
and Grafana's latency panels link them to the traces.

The live check uses the traced resilience workload (``_resilience.py``) and
the suite's real Prometheus, run with ``--enable-feature=exemplar-storage``
and scraping OpenMetrics (its preferred format), as docker-compose.yml runs it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from ._promql import load_dashboard, panels
from ._stack import REPO, Demo, Prometheus, http_get, wait_for

# One worker runs them all: they share the session's demo and Prometheus.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ops")]

LATENCY = ("meshbridge_request_duration_seconds", "meshbridge_time_to_first_byte_seconds")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def test_every_latency_panel_shows_exemplars() -> None:
    latency = [
        panel
        for panel in panels(load_dashboard())
        if any(f"{name}_bucket" in t["expr"] for t in panel.get("targets", ()) for name in LATENCY)
    ]
    assert len(latency) >= 4
    for panel in latency:
        assert [t["refId"] for t in panel["targets"] if t.get("exemplar")] == ["A"], panel["title"]


def test_the_provisioned_datasource_links_exemplar_trace_ids_to_traces() -> None:
    text = (REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    destinations = text.split("exemplarTraceIdDestinations:", 1)[1]
    # the label our exemplars carry (meshbridge/_otel.py)
    assert re.search(r"^\s*- name: trace_id$", destinations, re.M)
    assert re.search(r"^\s*datasourceUid: \S+$", destinations, re.M)


def test_docker_compose_prometheus_stores_exemplars() -> None:
    assert "--enable-feature=exemplar-storage" in (REPO / "docker-compose.yml").read_text()


@pytest.mark.parametrize("family", LATENCY)
def test_prometheus_stores_the_trace_id_of_a_traced_request_as_an_exemplar(
    prometheus: Prometheus, resilience: Demo, family: str
) -> None:
    def stored() -> set[str] | None:
        end = time.time()
        series: list[dict[str, Any]] = prometheus.api(
            "query_exemplars",
            query=f'{family}_bucket{{job="meshbridge"}}',
            start=str(end - 60),
            end=str(end),
        )
        ids = {e["labels"].get("trace_id", "") for s in series for e in s["exemplars"]}
        status, body = http_get(f"{resilience.url}/trace-ids")
        assert status == 200, body
        ours = ids & set(json.loads(body))
        return ours or None

    ours = wait_for(f"an exemplar of {family} with one of our trace ids", stored, timeout=30)
    assert all(TRACE_ID.match(trace_id) for trace_id in ours)
