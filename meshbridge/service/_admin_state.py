"""What the admin page shows, as plain JSON-ready values: the config as
loaded (``/admin/api/config``) and the live state (``/admin/api/live``).
The page renders these very dicts, so a script reads what a person sees.

Rules of the state:

1. Read-only: it reads the reloader, the mesh's :meth:`traffic_state`, the
   limiter's ``usage()`` and (under ``--workers``) the merged metrics; it
   changes none of them.
2. No secret leaves: upstreams and every option value that holds a URL are
   shown without their credentials (user, password and query replaced by
   ``***``); tokens are never part of it (the config keeps them out of its
   ``describe()``).
3. Times are ISO 8601 in UTC; durations are seconds.
4. What cannot be read (a limit store that does not answer in time, a
   sibling worker that is restarting) is said in the answer, and the rest is
   still shown.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from meshbridge import Limit, LimitUse, Mesh, Policy, TrafficState

from ._admin_rates import Rates
from ._reload import Reloader

__all__ = ["AdminState", "WorkerFamilies", "redacted"]

WorkerFamilies = Callable[[], Awaitable[list[Metric]]]  # the merged /metrics of --workers
_LIMITS_TIMEOUT: Final = 2.0  # seconds for the limit store to answer
_CREDENTIALS: Final = re.compile(r"(?<=//)[^/?#@]*@")
_QUERY: Final = re.compile(r"\?[^#]*")
_DEFAULT: Final = Policy()
_POLICY_FIELDS: Final = ("timeout", "first_byte_timeout", "idle_timeout", "retries",
                         "retry_budget", "retry_floor", "replay_limit", "max_in_flight",
                         "fallback_on_overload")  # fmt: skip


def redacted(value: str) -> str:
    """``value`` with a URL's credentials and query hidden (rule 2)."""
    if "://" not in value:
        return value
    return _QUERY.sub("?***", _CREDENTIALS.sub("***@", value), count=1)


def iso(seconds: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC (rule 3)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _number(value: float) -> float | int:
    return int(value) if math.isfinite(value) and value == int(value) else value


def _conditions(values: frozenset[int | str]) -> list[int | str]:
    return sorted(values, key=lambda v: (isinstance(v, str), str(v)))


def policy_json(policy: Policy) -> dict[str, Any]:
    """The settings of ``policy`` that differ from a default one."""
    shown: dict[str, Any] = {}
    for field in _POLICY_FIELDS:
        value = getattr(policy, field)
        if value != getattr(_DEFAULT, field):
            shown[field] = value
    if policy.retry_on != _DEFAULT.retry_on:
        shown["retry_on"] = _conditions(policy.retry_on)
    if policy.retry_backoff != _DEFAULT.retry_backoff:
        shown["retry_backoff"] = list(policy.retry_backoff)
    if policy.fallback:
        shown["fallback"] = list(policy.fallback)
    breaker = policy.circuit_breaker
    if breaker is not None:
        shown["circuit_breaker"] = {
            "failures": breaker.failures,
            "interval": breaker.interval,
            "open_for": breaker.open_for,
            "max_open_for": breaker.max_open_for,
            "half_open": breaker.half_open,
            "on": _conditions(breaker.on),
        }
    if policy.fault is not None:
        fault = policy.fault
        shown["fault"] = {"delay": fault.delay, "delay_ratio": fault.delay_ratio,
                          "abort": fault.abort, "abort_ratio": fault.abort_ratio}  # fmt: skip
    return shown


def policy_summary(policy: Policy) -> str:
    """One line of the policy for the page: ``retries 1 · fallback local · ...``."""
    parts = []
    for field, label in (("timeout", "timeout"), ("first_byte_timeout", "first byte"),
                         ("idle_timeout", "idle")):  # fmt: skip
        value = getattr(policy, field)
        if value is not None:
            parts.append(f"{label} {value:g}s")
    if policy.retries:
        parts.append(f"retries {policy.retries}")
    if policy.fallback:
        parts.append(f"fallback {', '.join(policy.fallback)}")
    if policy.max_in_flight is not None:
        parts.append(f"max in flight {policy.max_in_flight}")
    breaker = policy.circuit_breaker
    if breaker is not None:
        parts.append(f"breaker {breaker.failures} in {breaker.interval:g}s, "
                     f"open {breaker.open_for:g}s, {breaker.half_open} "
                     f"probe{'s' if breaker.half_open != 1 else ''}")  # fmt: skip
    if policy.fault is not None:
        parts.append("faults injected")
    return " · ".join(parts) or "defaults"


def _limit_json(limit: Limit) -> dict[str, Any]:
    return {
        "name": limit.name,
        "match": dict(limit.match),
        "amounts": {kind: _number(limit.amount(kind) or 0) for kind in limit.kinds},
    }


def _use_json(use: LimitUse) -> dict[str, Any]:
    return {
        "limit": use.limit,
        "kind": use.kind,
        "caller": dict(use.caller),
        "used": _number(use.used),
        "allowed": _number(use.allowed),
        "remaining": _number(use.remaining),
        "period": use.period,
        "resets": iso(use.resets),
    }


def workers_json(families: list[Metric]) -> list[dict[str, Any]]:
    """Each worker's up, in-flight and policy-admitted counts from the merged metrics."""
    rows: dict[str, dict[str, Any]] = {}
    sums = {"meshbridge_requests_in_flight": "in_flight", "meshbridge_policy_in_flight": "admitted"}
    for family in families:
        for sample in family.samples:
            worker = sample.labels.get("worker")
            if worker is None:
                continue
            row = rows.setdefault(worker, {"worker": int(worker), "up": False,
                                           "in_flight": 0, "admitted": 0})  # fmt: skip
            if sample.name == "meshbridge_workers_up":
                row["up"] = sample.value == 1.0
            elif sample.name in sums:
                row[sums[sample.name]] += int(sample.value)
    return sorted(rows.values(), key=lambda row: row["worker"])


class AdminState:
    """The admin page's data of one service.

    Args:
        reloader: the service's reloader (the config in use, its reloads).
        rates: the ring the rates over the last minute come from.
        worker: the index of this worker under ``serve --workers`` (None: one process).
        worker_families: the merged metrics of every worker (None: one process).
    """

    def __init__(
        self,
        reloader: Reloader,
        rates: Rates,
        *,
        worker: Callable[[], int | None] = lambda: None,
        worker_families: Callable[[], WorkerFamilies | None] = lambda: None,
    ) -> None:
        self.reloader = reloader
        self.rates = rates
        self._worker = worker
        self._worker_families = worker_families

    @property
    def mesh(self) -> Mesh:
        return self.reloader.mesh

    def sample(self) -> TrafficState:
        """A snapshot of the mesh, kept in the ring if it is time (``_admin_rates.py``)."""
        state = self.mesh.traffic_state()
        self.rates.sample(state)
        return state

    def config_json(self) -> dict[str, Any]:
        """The config as loaded, and its reloads (``/admin/api/config``)."""
        reloader = self.reloader
        config = reloader.config
        providers = []
        for name, provider in config.providers.items():
            shown = {key: redacted(value) for key, value in provider.describe().items()}
            upstream = shown.pop("upstream", "")
            models = [m for m in shown.pop("models", "").split(",") if m]
            policy = provider.policy
            providers.append({
                "name": name,
                "kind": provider.kind,
                "upstream": upstream,
                "models": models,
                "options": shown,
                "require_api_key_id": provider.require_api_key_id,
                "policy": policy_json(policy) if policy is not None else None,
                "policy_summary": policy_summary(policy) if policy is not None else None,
            })  # fmt: skip
        routes = [{"name": name, "split": dict(route.weights), "sticky": route.sticky}
                  for name, route in config.routes.items()]  # fmt: skip
        failure = reloader.last_failure
        failed = None
        if failure is not None:
            current = failure.at >= reloader.loaded_at
            failed = {"at": iso(failure.at), "error": failure.error, "current": current}
        return {
            "path": str(config.path),
            "loaded_at": iso(reloader.loaded_at),
            "generation": reloader.generation,
            "reloads": {"success": reloader.successes, "failure": reloader.failures},
            "last_failed_reload": failed,
            "worker": self._worker(),
            "providers": providers,
            "routes": routes,
            "limits": [_limit_json(limit) for limit in config.limits.limits],
        }

    async def live_json(self) -> dict[str, Any]:
        """What the mesh does right now (``/admin/api/live``)."""
        state = self.sample()
        rates = self.rates.over(state)
        providers = []
        for name, p in state.providers.items():
            rate = rates.get(name)
            providers.append({
                "name": name,
                "in_flight": p.in_flight,
                "requests": p.requests,
                "errors": p.errors,
                "rejected": p.rejected,
                "requests_per_second": round(rate.per_second, 3) if rate else None,
                "error_ratio": round(rate.error_ratio, 4)
                if rate and rate.error_ratio is not None else None,
                "window_seconds": round(rate.seconds, 1) if rate else None,
                "circuit": p.circuit,
                "next_probe_seconds": round(p.next_probe, 1) if p.circuit == "open" else None,
                "circuit_opened": p.circuit_opened,
                "admitted": p.admitted,
                "max_in_flight": p.max_in_flight,
            })  # fmt: skip
        routes = [{"name": r.name, "split": dict(r.split), "sticky": r.sticky,
                   "chosen": dict(r.chosen)} for r in state.routes.values()]  # fmt: skip
        limits, limits_error = await self._limits()
        workers, workers_error = await self._workers()
        reloader = self.reloader
        return {
            "at": iso(datetime.now(UTC).timestamp()),
            "worker": self._worker(),
            "config": {
                "generation": reloader.generation,
                "reloads": {"success": reloader.successes, "failure": reloader.failures},
            },
            "providers": providers,
            "routes": routes,
            "limits": limits,
            "limits_error": limits_error,
            "workers": workers,
            "workers_error": workers_error,
        }

    async def _limits(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        limiter = self.mesh.limiter
        if limiter is None:
            return None, None
        try:
            async with asyncio.timeout(_LIMITS_TIMEOUT):
                uses = await limiter.usage()
        except TimeoutError:
            return None, f"the limit store did not answer within {_LIMITS_TIMEOUT:g}s"
        except Exception as exc:  # the store is down: say so, show the rest (rule 4)
            return None, f"the limit store: {type(exc).__name__}"
        return [_use_json(use) for use in uses], None

    async def _workers(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        families = self._worker_families()
        if families is None:
            return None, None
        try:
            return workers_json(await families()), None
        except Exception as exc:  # rule 4
            return None, f"the workers' metrics: {type(exc).__name__}"
