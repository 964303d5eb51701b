"""The limiter: limits and budgets per caller, checked before a call, settled after it.

The mesh asks :meth:`Limiter.admit` before a call reaches its provider and
calls :meth:`Limiter.settle` when it ends. The limiter decides; the store
(``_limit_store.py``) only counts, atomically.

Rules of the limiter:

1. A call that no limit matches costs one dictionary lookup
   (:meth:`Limiter.applies`) and is never counted.
2. Admission is all or nothing: every counter of every limit that matches is
   checked and charged in one store operation; a refused call consumes
   nothing.
3. A call is admitted while each counter's use (other calls' reservations
   included) is below its limit; it then adds its cost: one request, a
   concurrency lease, and its estimated tokens and spend (its reservation,
   at most the limit). So concurrent calls overshoot a token or spend limit
   by at most their reservations.
4. Settlement replaces the reservation with what the provider reported:
   input + output tokens, spend priced by the model that answered (else the
   one asked for); a call that reported nothing is debited its reservation.
   Its lease ends. Requests count when admitted, whatever the outcome.
   Settlement never raises.
5. A refusal names the limit that frees up last and when: a minute window
   when its oldest call in the way leaves it, a token bucket when its level
   is back above 0, a day or month budget when its period ends (exact, in
   the calendar's zone); a concurrency limit says 1 s, since nothing tells
   when a running call ends.
6. A failing store never fails a call unasked: ``on_store_failure="open"``
   admits unlimited (nothing reserved; tokens and spend are still debited at
   settlement if the store is back), ``"closed"`` refuses with 503
   ``store-unavailable``. The store is left alone for ``retry_interval``
   seconds after a failure, then tried again: recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import tzinfo
from typing import Final

from prometheus_client import CollectorRegistry

from ._estimate import DEFAULT_OUTPUT, Estimate, estimate_tokens
from ._limit_metrics import LimitMetrics
from ._limit_rules import Held, LimitUse, Plan, Refusal, Rules, Ticket
from ._limit_store import LEASE, TOTAL, WINDOW, InProcessStore, LimitStore
from ._limits import KINDS, CallIdentity, Limit, Price, TokenUsage, fmt_amount
from ._metrics import source_label
from ._reasons import Reason
from ._record import CallRecord

__all__ = ["Limiter"]

log = logging.getLogger("meshbridge")

STORE_UNAVAILABLE: Final = str(Reason.STORE_UNAVAILABLE)
FAILURE_MODES: Final = ("open", "closed")
CONCURRENCY_RETRY_AFTER: Final = 1.0
REFRESH_INTERVAL: Final = 5.0  # seconds between two refreshes of the remaining gauges
_MIN_WAIT: Final = 0.001
_NOTHING: Final = Estimate()


class Limiter:
    """Limits and budgets of the calls through a mesh.

    Args:
        limits: the limits (names unique).
        prices: model name -> :class:`Price`; ``"*"`` prices every model not
            listed; without it, such a model costs the highest listed prices.
        store: where the counters live (a new :class:`InProcessStore`);
            the limiter owns it and closes it in :meth:`aclose`.
        registry: where its metrics go (None: nowhere).
        time_zone: the zone of day and month budgets (an IANA name or a tzinfo).
        on_store_failure: ``"open"`` or ``"closed"`` (see the rules above).
        clock: seconds since the epoch (``time.time``), shared by every
            process that shares the store; tests pass their own.
        lease_seconds: how long a concurrency slot outlives a worker that
            died holding it (running calls renew theirs every third of it).
        retry_interval: seconds the store is left alone after a failure.
        default_output_tokens: what :meth:`estimate` reserves for a request
            that sets no output limit.

    Raises:
        ValueError: two limits share a name, a spend limit has no prices, or
            an argument is out of range.
    """

    def __init__(
        self,
        limits: Iterable[Limit],
        prices: Mapping[str, Price] | None = None,
        *,
        store: LimitStore | None = None,
        registry: CollectorRegistry | None = None,
        time_zone: str | tzinfo = "UTC",
        on_store_failure: str = "open",
        clock: Callable[[], float] = time.time,
        lease_seconds: float = 30.0,
        retry_interval: float = 1.0,
        default_output_tokens: int = DEFAULT_OUTPUT,
    ) -> None:
        if on_store_failure not in FAILURE_MODES:
            raise ValueError(
                f"on_store_failure: expected 'open' or 'closed', got {on_store_failure!r}"
            )
        for name, value in (("lease_seconds", lease_seconds), ("retry_interval", retry_interval)):
            if not value > 0:
                raise ValueError(f"{name}: expected seconds > 0, got {value!r}")
        self._rules = Rules(tuple(limits), prices or {}, time_zone, float(lease_seconds))
        self._store: LimitStore = store if store is not None else InProcessStore()
        self._sync = isinstance(self._store, InProcessStore)
        self._open = on_store_failure == "open"
        self._clock = clock
        self._lease_seconds = float(lease_seconds)
        self._retry_interval = float(retry_interval)
        self._default_output = default_output_tokens
        self._metrics = LimitMetrics(registry)
        if self._sync:  # the remaining gauges are read from the store at scrape time
            self._metrics.refresh = self._refresh_remaining
        for item in self._rules.shared(clock()):
            self._metrics.allowed[(item.rule.limit.name, item.rule.kind)] = item.rule.amount
        self._live: weakref.WeakValueDictionary[str, Ticket] = weakref.WeakValueDictionary()
        self._pending: set[asyncio.Task[None]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = False
        self._down_until = -math.inf
        self._calls = itertools.count()
        self._me = os.urandom(6).hex()  # call ids are unique across processes sharing a store

    def __repr__(self) -> str:
        return f"<Limiter limits={[limit.name for limit in self.limits]}>"

    @property
    def limits(self) -> tuple[Limit, ...]:
        return self._rules.limits

    @property
    def prices(self) -> Mapping[str, Price]:
        return self._rules.prices

    @property
    def store(self) -> LimitStore:
        return self._store

    @property
    def time_zone(self) -> tzinfo:
        return self._rules.calendar.zone

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Expose the limiter's metrics on ``registry`` (a mesh does this with
        its own when it takes a limiter that has none); once only."""
        self._metrics.register(registry)

    def unregister_metrics(self) -> None:
        """Take the limiter's metrics off the registry they are on."""
        self._metrics.unregister()

    def reconfigure(
        self,
        limits: Iterable[Limit],
        prices: Mapping[str, Price] | None = None,
        *,
        time_zone: str | tzinfo | None = None,
        on_store_failure: str | None = None,
    ) -> None:
        """Take new limits and prices (a config reload), in one step.

        The store and its counters stay: a counter is named by its limit and
        kind, so a limit that stays keeps what it counted, and calls already
        admitted settle on the counters they were admitted on.

        Raises:
            ValueError: as the constructor (nothing changes then).
        """
        if on_store_failure is not None and on_store_failure not in FAILURE_MODES:
            raise ValueError(
                f"on_store_failure: expected 'open' or 'closed', got {on_store_failure!r}"
            )
        zone = self._rules.calendar.zone if time_zone is None else time_zone
        rules = Rules(tuple(limits), prices or {}, zone, self._lease_seconds)
        self._rules = rules
        if on_store_failure is not None:
            self._open = on_store_failure == "open"
        self._metrics.allowed.clear()
        for item in rules.shared(self._clock()):
            self._metrics.allowed[(item.rule.limit.name, item.rule.kind)] = item.rule.amount
        remaining = self._metrics.remaining
        for key in [key for key in remaining if key not in self._metrics.allowed]:
            del remaining[key]  # a limit (or kind) that went away

    def applies(self, identity: CallIdentity) -> bool:
        """Whether any limit matches a call of ``identity``: when not, skip
        :meth:`admit` and :meth:`settle` altogether (rule 1)."""
        return bool(self._rules.matching(identity))

    def price(self, model: str | None) -> Price:
        """The price of ``model``: its own, that of its undated name
        (``gpt-4o`` for ``gpt-4o-2024-08-06``), ``"*"``'s, else the highest."""
        return self._rules.price(model)

    def estimate(
        self, method: str, path: str, body: bytes | None, content_length: int | None = None
    ) -> Estimate:
        """:func:`estimate_tokens` with this limiter's ``default_output_tokens``."""
        return estimate_tokens(
            method, path, body, content_length=content_length, default_output=self._default_output
        )

    # -- admission and settlement ---------------------------------------------------

    @property
    def synchronous(self) -> bool:
        """Whether its store is in this process: :meth:`admit_now` and a
        settlement cost no coroutine and no task."""
        return self._sync

    def plan(self, identity: CallIdentity) -> Plan | None:
        """What the limits that match ``identity`` ask of its calls (None: no
        limit matches: skip :meth:`admit` and :meth:`settle` altogether);
        ``plan.estimates``: whether an estimate (the body) is needed."""
        return self._rules.plan(identity)

    async def admit(
        self, identity: CallIdentity, estimate: Estimate | None = None
    ) -> Ticket | Refusal:
        """Check and charge every limit that matches the call (rules 2, 3, 5, 6).

        Args:
            identity: who makes the call.
            estimate: what it may use (:meth:`estimate`); None reserves no tokens.

        Returns:
            A :class:`Ticket` to settle when the call ends, or a :class:`Refusal`.
        """
        estimate = estimate or _NOTHING
        now = self._clock()
        call = f"{self._me}.{next(self._calls):x}"
        rules = self._rules.matching(identity)
        if not rules:
            return Ticket(call, identity, (), estimate.model, recorded=True)
        held = self._rules.admission(rules, estimate, now)
        if now < self._down_until:
            return self._unrecorded(call, identity, held, estimate.model, now)
        try:
            admitted, values = await self._store.admit(
                now, call, [(h.counter, h.reserved) for h in held]
            )
        except Exception as error:
            self._failed("admit", now, error)
            return self._unrecorded(call, identity, held, estimate.model, now)
        return self._admitted(identity, call, held, estimate, now, admitted, values)

    def admit_now(
        self, identity: CallIdentity, estimate: Estimate | None = None, plan: Plan | None = None
    ) -> Ticket | Refusal | None:
        """:meth:`admit` with the in-process store, without a coroutine (only
        when :attr:`synchronous`: the store never waits, nor fails); None:
        admitted, and nothing to settle (minute windows count at admission).
        ``plan``: :meth:`plan`'s, when the caller has it."""
        if plan is None:
            plan = self._rules.plan(identity)
            if plan is None:
                return None
        store = self._store
        assert isinstance(store, InProcessStore), "admit_now needs the in-process store"
        now = self._clock()
        windows = plan.windows
        if windows is not None:  # the common limit, on its fast path
            full = store.windows_now(now, windows)
            if full < 0:
                return None
            held = [
                Held(rule, counter, 1.0, 0.0)
                for rule, counter in zip(plan.rules, windows, strict=True)
            ]
            values = store.windows_waits(now, windows, full)
            return self._refuse(identity, held, values, now)
        estimate = estimate or _NOTHING
        call = f"{next(self._calls):x}"  # this process's counters only
        held = self._rules.admission(plan.rules, estimate, now)
        admitted, values = store.admit_now(now, call, [(h.counter, h.reserved) for h in held])
        return self._admitted(identity, call, held, estimate, now, admitted, values)

    def _admitted(
        self,
        identity: CallIdentity,
        call: str,
        held: list[Held],
        estimate: Estimate,
        now: float,
        admitted: bool,
        values: list[float],
    ) -> Ticket | Refusal:
        self._answered()
        if not admitted:
            return self._refuse(identity, held, values, now)
        if not self._sync:  # an in-process store's gauges are read at scrape time
            self._show(held, values)
        ticket = Ticket(call, identity, held, estimate.model, recorded=True)
        lease = False
        for item in held:
            kind = item.counter.kind
            if kind != WINDOW:  # a window counts the call at admission; the rest settle
                ticket.owes = True
            if kind == LEASE:
                lease = True
        if lease:  # renewed while the call runs
            self._live[call] = ticket
            if self._maintenance is None:
                self._start_maintenance()
        return ticket

    def _unrecorded(
        self,
        call: str,
        identity: CallIdentity,
        held: list[Held],
        model: str | None,
        now: float,
    ) -> Ticket | Refusal:
        if self._open:
            return Ticket(call, identity, held, model, recorded=False)
        limit = held[0].rule
        wait = max(self._down_until - now, _MIN_WAIT)
        self._metrics.refused(limit.limit.name, source_label(identity.source), STORE_UNAVAILABLE)
        message = "the limit store is unreachable and on_store_failure is closed"
        return Refusal(limit.limit.name, limit.kind, STORE_UNAVAILABLE, wait, 503, message)

    def _refuse(
        self, identity: CallIdentity, held: list[Held], waits: list[float], now: float
    ) -> Refusal:
        worst: tuple[Held, float] | None = None
        for item, wait in zip(held, waits, strict=True):
            if wait < 0:
                continue
            if item.counter.kind == LEASE:
                wait = CONCURRENCY_RETRY_AFTER
            elif item.counter.kind == TOTAL:
                wait = item.end - now
            wait = max(wait, _MIN_WAIT)
            if worst is None or wait > worst[1]:
                worst = (item, wait)
        item, wait = worst if worst is not None else (held[0], CONCURRENCY_RETRY_AFTER)
        rule = item.rule
        self._metrics.refused(rule.limit.name, source_label(identity.source), rule.spec.reason)
        message = (
            f"limit {rule.limit.name!r} allows {rule.kind} = {fmt_amount(rule.amount)}: "
            f"{rule.spec.reason}, retry after {math.ceil(wait)} s"
        )
        return Refusal(rule.limit.name, rule.kind, rule.spec.reason, wait, 429, message)

    async def settle(
        self, ticket: Ticket, usage: TokenUsage | None, model: str | None = None
    ) -> None:
        """Debit what the call used and end its lease (rule 4); never raises.

        Args:
            ticket: what :meth:`admit` gave; settling it twice does nothing.
            usage: the tokens the provider reported; None when it reported
                none (debited its reservation). Pass ``TokenUsage()`` for a
                call that never reached a provider.
            model: the model that answered (None: the one the request named).
        """
        if ticket.settled:
            return
        ticket.settled = True
        self._live.pop(ticket.call, None)
        try:
            now = self._clock()
            charges = self._rules.settlement(
                ticket.held, ticket.recorded, usage, model or ticket.model, now
            )
            if not charges or now < self._down_until:
                return
            try:
                values = await self._store.settle(now, ticket.call, [c for _, c in charges])
            except Exception as error:
                self._failed("settle", now, error)
                return
            self._answered()
            self._show([h for h, _ in charges], values)
        except Exception:  # a bug here must not fail the call it settles
            log.exception("settling the limits of a call failed")

    def settle_nowait(
        self, ticket: Ticket, usage: TokenUsage | None, model: str | None = None
    ) -> None:
        """:meth:`settle` without waiting: at once with the in-process store,
        else in a task of its own (:meth:`aclose` waits for it)."""
        if ticket.settled or not ticket.held:
            ticket.settled = True
            return
        if self._sync:
            self._settle_now(ticket, usage, model)
            return
        task = asyncio.get_running_loop().create_task(self.settle(ticket, usage, model))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _settle_now(self, ticket: Ticket, usage: TokenUsage | None, model: str | None) -> None:
        ticket.settled = True
        self._live.pop(ticket.call, None)
        store = self._store
        assert isinstance(store, InProcessStore)
        try:
            now = self._clock()
            charges = self._rules.settlement(
                ticket.held, ticket.recorded, usage, model or ticket.model, now
            )
            if charges:
                store.settle_now(now, ticket.call, [c for _, c in charges])
        except Exception:  # a bug here must not fail the call it settles
            log.exception("settling the limits of a call failed")

    # -- the store's health -----------------------------------------------------------

    def _failed(self, operation: str, now: float, error: BaseException) -> None:
        self._metrics.store_errors[operation] += 1
        self._down_until = now + self._retry_interval
        if self._metrics.store_up:
            self._metrics.store_up = 0
            what = "admitted without limits" if self._open else "refused (503)"
            log.warning(
                "the limit store failed (%s: %s): calls are %s until it answers again",
                operation,
                str(error) or type(error).__name__,
                what,
            )

    def _answered(self) -> None:
        if not self._metrics.store_up:
            self._metrics.store_up = 1
            log.warning("the limit store answers again: limits apply")

    def _show(self, held: Sequence[Held], values: Sequence[float]) -> None:
        """Keep the remaining gauges of shared limits (rule: no "*") current."""
        remaining = self._metrics.remaining
        for item, used in zip(held, values, strict=True):
            rule = item.rule
            if rule.shared:
                remaining[(rule.limit.name, rule.kind)] = max(0.0, rule.amount - used)

    def _refresh_remaining(self) -> None:
        store = self._store
        if not isinstance(store, InProcessStore):
            return
        shared = self._rules.shared(self._clock())
        self._show(shared, store.read_now(self._clock(), [item.counter for item in shared]))

    # -- background work ----------------------------------------------------------------

    def _start_maintenance(self) -> None:
        if self._maintenance is None and not self._closed:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain_forever())

    async def _maintain_forever(self) -> None:
        interval = min(self._lease_seconds / 3, REFRESH_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            await self.maintain()

    async def maintain(self) -> None:
        """Renew the leases of running calls and refresh the remaining gauges:
        what a background task does every few seconds once calls come (tests
        call it on their own clock). Never raises."""
        now = self._clock()
        if now < self._down_until:
            return
        leases = [
            (item.counter, ticket.call)
            for ticket in list(self._live.values())
            for item in ticket.held
            if item.counter.kind == LEASE
        ]
        shared = self._rules.shared(now)
        operation = "renew"
        try:
            if leases:
                await self._store.renew(now, leases)
            operation = "read"
            values = await self._store.read(now, [item.counter for item in shared])
        except Exception as error:
            self._failed(operation, now, error)
            return
        self._answered()
        self._show(shared, values)

    async def aclose(self, *, close_store: bool = True) -> None:
        """Stop the background task, finish pending settlements, close the store.

        Args:
            close_store: False to leave the store open, for a new limiter
                that takes it over (new limits on a config reload keep their
                counters: a counter is named by its limit and kind).
        """
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        pending = set(self._pending)
        while pending:  # settlements may still come while these finish
            await asyncio.gather(*pending)
            pending = {task for task in self._pending if not task.done()}
        if close_store:
            await self._store.aclose()

    # -- listing and seeding --------------------------------------------------------------

    async def usage(self) -> list[LimitUse]:
        """Every counter of every limit as it stands: one per kind of a limit
        without ``"*"``, one per caller seen in the current period otherwise.

        Raises:
            Exception: whatever the store raised (this is not a call's path).
        """
        now = self._clock()
        rows: list[tuple[Held, Mapping[str, str]]] = []
        for item in self._rules.shared(now):
            rows.append((item, {}))
        for limit in self.limits:
            if not limit.per_caller:
                continue
            for rule in self._rules.of(limit, {}):
                counter, end = self._rules.counter(rule, now)
                period = counter.key.rpartition("/")[2] if rule.spec.calendar else None
                for key in await self._store.keys(f"{limit.name}/{rule.kind}/"):
                    found = self._rules.caller(rule, key)
                    if found is not None and found[1] == period:
                        rows.append((Held(rule, counter._replace(key=key), 0.0, end), found[0]))
        values = await self._store.read(now, [item.counter for item, _ in rows])
        listed = []
        for (item, caller), used in zip(rows, values, strict=True):
            rule = item.rule
            period = item.counter.key.rpartition("/")[2] if rule.spec.calendar else None
            remaining = max(0.0, rule.amount - used)
            listed.append(LimitUse(rule.limit.name, rule.kind, caller, used, rule.amount,
                                   remaining, period, item.end or None))  # fmt: skip
        return listed

    def budgets_since(self) -> float | None:
        """When the longest current calendar period of its budgets began
        (seconds since the epoch): the calls to :meth:`replay` are those
        since then. None: no day or month budget."""
        now = self._clock()
        units = {
            KINDS[kind].period
            for limit in self.limits
            for kind in limit.kinds
            if KINDS[kind].calendar
        }
        starts = [self._rules.calendar.period(unit, now).start for unit in units]
        return min(starts) if starts else None

    async def replay(self, records: Iterable[CallRecord]) -> int:
        """Add past calls to the day and month budgets of the current periods.

        How budgets survive a restart with the in-process store: give it the
        calls a usage ledger recorded this month, before the first call.
        (A shared store keeps its budgets itself: replaying into it counts
        the calls twice.) ``input_tokens`` of a record counts every prompt
        token, cached ones included, as :class:`TokenUsage` does.

        Returns:
            How many records fell in a current period of some budget.
        """
        now = self._clock()
        charges, counted = self._rules.replayed(records, now)
        if charges:
            await self._store.settle(now, "replay", charges)
        return counted
