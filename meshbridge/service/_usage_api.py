"""The ledger over HTTP: ``GET /admin/api/calls`` and ``GET /admin/api/usage``,
JSON, behind the admin gate (``_admin_gate.py``).

Both take the filters ``since``, ``until`` (ISO 8601, or a span back from
now such as ``30m``, ``24h``, ``7d``), ``source``, ``key``, ``client``,
``provider`` and ``model``. ``/admin/api/calls`` pages with ``limit`` (1 to
1000, default 100) and ``cursor`` (the ``next_cursor`` of the page before);
``/admin/api/usage`` groups with ``group_by``. A bad parameter is a 400
naming it. Queries run in a thread, a few at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from meshbridge import CallRecord

from ._admin_gate import AdminGate, Handler
from ._http_guard import json_error
from ._ledger_config import LedgerConfig
from ._ledger_query import GROUP_BY, LedgerReader, UsageFilter, UsageRow, parse_when

__all__ = ["UsageAPI", "call_json", "filter_of", "row_json"]

Query = Callable[[LedgerReader], Any]  # run in a thread with the service's reader
_AT_ONCE: Final = 4  # queries running together; more wait their turn
_FILTERS: Final = {"source": "source", "key": "api_key_id", "client": "client",
                   "provider": "provider", "model": "model"}  # fmt: skip


def filter_of(params: Mapping[str, str], now: datetime | None = None) -> UsageFilter:
    """The filter of query parameters (or CLI options) named as in ``_FILTERS``.

    Raises:
        ValueError: a time that is neither ISO 8601 nor a span (the message names it).
    """
    now = now or datetime.now(UTC)
    since, until = params.get("since"), params.get("until")
    return UsageFilter(
        since=parse_when(since, now, "since") if since else None,
        until=parse_when(until, now, "until") if until else None,
        **{field: params[name] for name, field in _FILTERS.items() if params.get(name)},
    )


def call_json(record: CallRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["started"] = datetime.fromtimestamp(record.started, UTC).isoformat()
    data["tool_calls"] = list(record.tool_calls)
    return data


def row_json(row: UsageRow) -> dict[str, Any]:
    return dataclasses.asdict(row)


class UsageAPI:
    """The usage endpoints of one service.

    Args:
        ledger: the running ``[ledger]`` config (None: the ledger is off).
        gate: who may call them.
    """

    def __init__(self, ledger: Callable[[], LedgerConfig | None], gate: AdminGate) -> None:
        self._ledger = ledger
        self._gate = gate
        self._reader: LedgerReader | None = None
        self._turns = asyncio.Semaphore(_AT_ONCE)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/admin/api/calls", self._gate.protect(self._calls)),
            ("GET", "/admin/api/usage", self._gate.protect(self._usage)),
        ]

    async def close(self) -> None:
        if self._reader is not None:
            await asyncio.to_thread(self._reader.close)
            self._reader = None

    async def _run(self, query: Query) -> Any:
        config = self._ledger()
        if config is None:
            raise LookupError("the usage ledger is off ([ledger] enabled = false)")
        async with self._turns:
            if self._reader is None:
                self._reader = await asyncio.to_thread(LedgerReader, config)
            return await asyncio.to_thread(query, self._reader)

    async def _answer(
        self, params: Mapping[str, str], query_for: Callable[[UsageFilter], Query]
    ) -> Any:
        """The answer of the query ``query_for`` makes of the filters in
        ``params``, or the error response (400 names a bad parameter)."""
        try:
            return await self._run(query_for(filter_of(params)))
        except ValueError as exc:
            return json_error(400, "invalid_request_error", str(exc))
        except LookupError as exc:
            return json_error(404, "not_found", str(exc))
        except Exception as exc:  # the database is down: say so, no traceback
            return json_error(503, "unavailable", f"the ledger's database: {type(exc).__name__}")

    async def _calls(self, request: web.Request) -> web.StreamResponse:
        params = request.query

        def query(where: UsageFilter) -> Query:
            limit = params.get("limit", "100")
            if not limit.isdigit():
                raise ValueError(f"limit: expected a number of calls, got {limit[:32]!r}")
            cursor = params.get("cursor") or None
            return lambda reader: reader.calls(where, limit=int(limit), cursor=cursor)

        found = await self._answer(params, query)
        if isinstance(found, web.Response):
            return found
        page, after = found
        return web.json_response({"calls": [call_json(r) for r in page], "next_cursor": after})

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        params = request.query
        group_by = params.get("group_by") or None

        def query(where: UsageFilter) -> Query:
            if group_by is not None and group_by not in GROUP_BY:
                raise ValueError(
                    f"group_by: expected one of {', '.join(GROUP_BY)}, got {group_by!r}"
                )
            return lambda reader: reader.summary(where, group_by)

        rows = await self._answer(params, query)
        if isinstance(rows, web.Response):
            return rows
        return web.json_response({"group_by": group_by, "rows": [row_json(r) for r in rows]})
