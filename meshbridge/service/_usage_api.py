"""The ledger over HTTP: ``GET /admin/api/calls`` and ``GET /admin/api/usage``,
JSON, behind the admin gate (``_admin_gate.py``).

Both take the filters ``since``, ``until`` (ISO 8601, or a span back from
now such as ``30m``, ``24h``, ``7d``), ``source``, ``key``, ``client``,
``provider``, ``model`` and ``outcome`` (``completed``, ``error``,
``cancelled``). ``/admin/api/calls`` pages with ``limit`` (1 to
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
                   "provider": "provider", "model": "model", "outcome": "outcome"}  # fmt: skip


def filter_of(params: Mapping[str, str], now: datetime | None = None) -> UsageFilter:
    """The filter of query parameters (or CLI options) named as in ``_FILTERS``.

    Raises:
        ValueError: a time that is neither ISO 8601 nor a span, or an unknown
            outcome (the message names it).
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

    async def calls(self, params: Mapping[str, str]) -> tuple[list[CallRecord], str | None]:
        """A page of calls for the query ``params`` (the filters, ``limit``,
        ``cursor``) and the cursor of the next page (None: the last).

        Raises:
            ValueError: a bad parameter (the message names it).
            LookupError: the ledger is off.
            Exception: the database's error.
        """
        where = filter_of(params)
        limit = params.get("limit", "100")
        if not limit.isdigit():
            raise ValueError(f"limit: expected a number of calls, got {limit[:32]!r}")
        cursor = params.get("cursor") or None
        found: tuple[list[CallRecord], str | None] = await self._run(
            lambda reader: reader.calls(where, limit=int(limit), cursor=cursor)
        )
        return found

    async def summary(self, params: Mapping[str, str]) -> list[UsageRow]:
        """The summary for the query ``params`` (the filters, ``group_by``).

        Raises:
            ValueError: a bad parameter (the message names it).
            LookupError: the ledger is off.
            Exception: the database's error.
        """
        where = filter_of(params)
        group_by = params.get("group_by") or None
        if group_by is not None and group_by not in GROUP_BY:
            raise ValueError(f"group_by: expected one of {', '.join(GROUP_BY)}, got {group_by!r}")
        rows: list[UsageRow] = await self._run(lambda reader: reader.summary(where, group_by))
        return rows

    @staticmethod
    def refusal(exc: Exception) -> web.Response:
        """The error response of what :meth:`calls` or :meth:`summary` raised."""
        if isinstance(exc, ValueError):
            return json_error(400, "invalid_request_error", str(exc))
        if isinstance(exc, LookupError):
            return json_error(404, "not_found", str(exc))
        # the database is down: say so, no traceback
        return json_error(503, "unavailable", f"the ledger's database: {type(exc).__name__}")

    async def _calls(self, request: web.Request) -> web.StreamResponse:
        try:
            page, after = await self.calls(request.query)
        except Exception as exc:
            return self.refusal(exc)
        return web.json_response({"calls": [call_json(r) for r in page], "next_cursor": after})

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        try:
            rows = await self.summary(request.query)
        except Exception as exc:
            return self.refusal(exc)
        group_by = request.query.get("group_by") or None
        return web.json_response({"group_by": group_by, "rows": [row_json(r) for r in rows]})
