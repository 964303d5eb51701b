"""What the ledger tests share: records to feed a ledger, and a ledger on
each dialect (SQLite in a temp dir; a database of the session's PostgreSQL)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshbridge import CallRecord, uuid7
from meshbridge.service import Ledger, LedgerConfig, LedgerReader, UsageFilter

__all__ = ["DIALECTS", "make_record", "new_ledger", "rows_in", "url_for"]

# The PostgreSQL variant starts a real server: an integration test.
DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


def make_record(**fields: Any) -> CallRecord:
    """A completed unary call, with ``fields`` instead of the defaults."""
    started = fields.pop("started", time.time())
    record = CallRecord(
        id=uuid7(started),
        started=started,
        duration=0.25,
        ttfb=0.05,
        ttft=0.04,
        source="agents",
        api_key_id="team-a",
        client="ci",
        peer=None,
        target="llm",
        provider="llm",
        attempts=1,
        fallback=False,
        reason=None,
        method="POST",
        path="/v1/chat/completions",
        status=200,
        outcome="completed",
        request_model="fake-small",
        response_model="fake-small",
        input_tokens=12,
        output_tokens=7,
        cached_input_tokens=4,
        reasoning_tokens=1,
        tool_calls=("get_weather",),
        trace_id=None,
        prompt=None,
    )
    return dataclasses.replace(record, **fields)


def url_for(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def new_ledger(
    url: str,
    tmp_path: Path,
    registry: CollectorRegistry | None = None,
    *,
    clock: Callable[[], float] = time.time,
    **settings: Any,
) -> Ledger:
    """A ledger on ``url`` whose spool is under ``tmp_path``."""
    config = LedgerConfig(url=url, **settings)
    registry = registry or CollectorRegistry()
    return Ledger(config, registry=registry, spool_base=tmp_path, clock=clock)


def rows_in(url: str) -> list[CallRecord]:
    """Every stored call, newest first."""
    reader = LedgerReader(LedgerConfig(url=url))
    try:
        found, cursor = reader.calls(UsageFilter(), limit=1000)
        while cursor is not None:
            page, cursor = reader.calls(UsageFilter(), limit=1000, cursor=cursor)
            found += page
        return found
    finally:
        reader.close()
