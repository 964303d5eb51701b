"""The Usage dashboard: every panel's SQL run against a real PostgreSQL that
the ledger filled, with Grafana's macros expanded as its PostgreSQL
datasource expands them, and the answers checked against the calls made."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from meshbridge.service import Ledger, LedgerConfig

from ..postgres import PostgresServer
from ..service.ledger_helpers import make_record
from ._stack import REPO

pytestmark = pytest.mark.integration

USAGE = REPO / "grafana" / "dashboards" / "usage.json"
DATASOURCE = REPO / "grafana" / "provisioning" / "datasources" / "ledger.yaml"
DAY = datetime(2025, 3, 1, tzinfo=UTC)
FROM, TO = DAY - timedelta(days=1), DAY + timedelta(days=3)

_TIME_FILTER = re.compile(r"\$__timeFilter\((\w+)\)")
_TIME_GROUP = re.compile(r"\$__timeGroupAlias\((\w+),\s*'(\d+)([hd])'\)")
_SECONDS = {"h": 3600, "d": 86400}


def _group(match: re.Match[str]) -> str:
    step = int(match[2]) * _SECONDS[match[3]]
    return f'floor(extract(epoch from {match[1]})/{step})*{step} AS "time"'


def expand(sql: str) -> str:
    """Grafana's PostgreSQL macros, as its datasource expands them."""
    sql = _TIME_FILTER.sub(
        lambda m: f"{m[1]} BETWEEN '{FROM.isoformat()}' AND '{TO.isoformat()}'", sql
    )
    sql = _TIME_GROUP.sub(_group, sql)
    assert "$" not in sql, f"a macro or variable the test does not expand: {sql}"
    return sql


def dashboard_panels() -> dict[str, dict[str, Any]]:
    panels = json.loads(USAGE.read_text())["panels"]
    return {p["title"]: p for p in panels}


@pytest.fixture(scope="module")
def ledger_url(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ledger database with known calls: team-a makes 3 (one failing, one
    slow), team-b 1 through a peer, and an in-process call without a key."""
    url = postgres_server.new_database()
    records = [
        make_record(started=DAY.timestamp() + 60, api_key_id="team-a", client="ci",
                    input_tokens=10, output_tokens=5, response_model="fake-small"),
        make_record(started=DAY.timestamp() + 120, api_key_id="team-a", client="ci",
                    status=503, reason="fault", input_tokens=None, output_tokens=None),
        make_record(started=DAY.timestamp() + 86400 + 60, api_key_id="team-a", client="ci",
                    duration=42.0, input_tokens=100, output_tokens=50,
                    response_model="fake-large"),
        make_record(started=DAY.timestamp() + 3600, api_key_id="team-b", client=None,
                    peer="edge", input_tokens=1, output_tokens=2),
        make_record(started=DAY.timestamp() + 7200, api_key_id=None, client=None,
                    input_tokens=3, output_tokens=4),
        make_record(started=(DAY + timedelta(days=30)).timestamp(), api_key_id="later"),
    ]  # fmt: skip

    async def fill() -> None:
        config = LedgerConfig(url=url, retention_days=0)
        base = tmp_path_factory.mktemp("spool")
        ledger = Ledger(config, registry=CollectorRegistry(), spool_base=base)
        await ledger.start()
        for record in records:
            ledger.record(record)
        await ledger.aclose()

    asyncio.run(fill())
    return url


def run(url: str, panel: dict[str, Any]) -> list[tuple[Any, ...]]:
    (target,) = panel["targets"]
    assert target["rawQuery"] is True
    with psycopg.connect(url) as connection:
        return connection.execute(expand(target["rawSql"])).fetchall()


def test_every_panel_reads_the_ledger_datasource_by_its_provisioned_uid() -> None:
    (datasource,) = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    usage = json.loads(USAGE.read_text())
    (variable,) = usage["templating"]["list"]
    assert variable["current"]["value"] == datasource["uid"]
    assert variable["query"] == datasource["type"] == "grafana-postgresql-datasource"
    assert set(dashboard_panels()) == {
        "Leaderboard by API key",
        "Leaderboard by client",
        "Tokens per model per day",
        "Error ratio per API key",
        "Slowest calls",
    }
    for panel in dashboard_panels().values():
        for target in panel["targets"]:
            assert target["datasource"] == {"type": datasource["type"], "uid": "${ledger}"}


def test_the_key_leaderboard_counts_calls_errors_and_tokens(ledger_url: str) -> None:
    rows = run(ledger_url, dashboard_panels()["Leaderboard by API key"])
    found = {row[0]: row[1:5] for row in rows}
    assert list(found) == ["team-a", "(none)", "team-b"]  # most calls first; "later" out of range
    assert found["team-a"] == (3, 1, 110, 55)
    assert found["team-b"] == (1, 0, 1, 2)
    assert rows[0][5] == pytest.approx(0.25 + 0.9 * (42.0 - 0.25))  # p95 of 0.25, 0.25, 42


def test_the_client_leaderboard_names_peers_and_in_process_callers(ledger_url: str) -> None:
    rows = run(ledger_url, dashboard_panels()["Leaderboard by client"])
    assert {row[0]: row[1] for row in rows} == {"ci": 3, "peer:edge": 1, "(in-process)": 1}


def test_tokens_per_model_per_day(ledger_url: str) -> None:
    rows = run(ledger_url, dashboard_panels()["Tokens per model per day"])
    day = DAY.timestamp()
    assert [(int(t), model, int(tokens)) for t, model, tokens in rows] == [
        (day, "fake-small", 15 + 0 + 3 + 7),
        (day + 86400, "fake-large", 150),
    ]


def test_error_ratio_per_key_per_hour(ledger_url: str) -> None:
    rows = run(ledger_url, dashboard_panels()["Error ratio per API key"])
    ratios = {(int(t) - int(DAY.timestamp()), key): float(r) for t, key, r in rows}
    assert ratios[(0, "team-a")] == 0.5  # one of its two calls in that hour got a 503
    assert ratios[(3600, "team-b")] == 0.0
    assert all(0 <= r <= 1 for r in ratios.values())


def test_slowest_calls_come_first(ledger_url: str) -> None:
    rows = run(ledger_url, dashboard_panels()["Slowest calls"])
    assert len(rows) == 5
    assert rows[0][1:4] == (42.0, "team-a", "ci")
    assert [row[1] for row in rows] == sorted((row[1] for row in rows), reverse=True)
