"""Traffic policies and routes in a config file.

::

    [providers.primary.policy]      # a provider's policy (see the README's table)
    retries = 2
    fallback = ["backup"]
    circuit_breaker = { failures = 5, interval = 10.0, open_for = 30.0 }

    [routes.chat]                   # a virtual name: callers use http://chat/...
    split = { primary = 90, canary = 10 }
    sticky = "api_key_id"

A key left out of a ``policy`` table is off (no timeout, no retries, no
breaker, no limit, no fault), except ``retry_on``, ``retry_backoff``,
``retry_budget``, ``retry_floor`` and ``replay_limit``, which have safe
defaults. Timeouts of 0 mean none. Errors are recorded on the reader, each
with its key path, like every other mistake in a config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from meshbridge import CircuitBreaker, Fault, Policy, Route
from meshbridge.providers import OptionReader

__all__ = ["check_names", "parse_policy", "parse_route"]

_STICKY: Final = ("api_key_id", "source")
_CONDITIONS: Final = ("connect-failure", "first-byte-timeout")  # of retry_on
_BREAKER_CONDITIONS: Final = (*_CONDITIONS, "timeout")  # of a circuit breaker's on
_MAX_SECONDS: Final = 86400.0


def _seconds(reader: OptionReader, key: str) -> float | None:
    value = reader.number(key, 0.0, maximum=_MAX_SECONDS)
    return value or None


def _conditions(
    reader: OptionReader,
    key: str,
    default: frozenset[int | str],
    names: tuple[str, ...] = _CONDITIONS,
) -> frozenset[int | str]:
    value = reader.value(key)
    if value is None:
        return default
    expected = f"an array of status codes (100 to 599) and of {', '.join(map(repr, names))}"
    if not isinstance(value, list):
        reader.error(key, f"expected {expected}")
        return default
    found: set[int | str] = set()
    for item in value:
        if isinstance(item, bool) or not (
            (isinstance(item, int) and 100 <= item <= 599) or item in names
        ):
            reader.error(key, f"expected {expected}, got {item!r}")
            return default
        found.add(item)
    return frozenset(found)


def _backoff(reader: OptionReader, default: tuple[float, float]) -> tuple[float, float]:
    value = reader.value("retry_backoff")
    if value is None:
        return default
    pair = value if isinstance(value, list) and len(value) == 2 else None
    if (
        pair is None
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        or not 0 < pair[0] <= pair[1] <= 3600
    ):
        reader.error(
            "retry_backoff", f"expected [base, cap] in seconds, 0 < base <= cap, got {value!r}"
        )
        return default
    return float(pair[0]), float(pair[1])


def _breaker(reader: OptionReader) -> CircuitBreaker | None:
    table = reader.table("circuit_breaker")
    if table is None:
        return None
    sub = reader.child(table, reader.key("circuit_breaker"))
    d = CircuitBreaker()
    breaker = CircuitBreaker(
        failures=sub.integer("failures", d.failures, minimum=1, maximum=1_000_000),
        interval=sub.number("interval", d.interval, exclusive=True, maximum=_MAX_SECONDS),
        open_for=sub.number("open_for", d.open_for, exclusive=True, maximum=_MAX_SECONDS),
        max_open_for=sub.number(
            "max_open_for", d.max_open_for, exclusive=True, maximum=_MAX_SECONDS
        ),
        half_open=sub.integer("half_open", d.half_open, minimum=1, maximum=10_000),
        on=_conditions(sub, "on", d.on, _BREAKER_CONDITIONS),
    )
    sub.check_unknown()
    return breaker


def _fault(reader: OptionReader) -> Fault | None:
    table = reader.table("fault")
    if table is None:
        return None
    sub = reader.child(table, reader.key("fault"))
    d = Fault()
    fault = Fault(
        delay=sub.number("delay", d.delay, maximum=_MAX_SECONDS),
        delay_ratio=sub.number("delay_ratio", d.delay_ratio, maximum=1.0),
        abort=sub.integer("abort", d.abort, minimum=400, maximum=599),
        abort_ratio=sub.number("abort_ratio", d.abort_ratio, maximum=1.0),
    )
    sub.check_unknown()
    return fault


def parse_policy(reader: OptionReader) -> Policy | None:
    """The policy in a ``[providers.NAME.policy]`` table (None when it cannot be made)."""
    d = Policy()
    max_in_flight = reader.integer("max_in_flight", 0, minimum=1, maximum=1_000_000)
    values = {
        "timeout": _seconds(reader, "timeout"),
        "first_byte_timeout": _seconds(reader, "first_byte_timeout"),
        "idle_timeout": _seconds(reader, "idle_timeout"),
        "retries": reader.integer("retries", d.retries, maximum=100),
        "retry_on": _conditions(reader, "retry_on", d.retry_on),
        "retry_backoff": _backoff(reader, d.retry_backoff),
        "retry_budget": reader.number("retry_budget", d.retry_budget, maximum=10.0),
        "retry_floor": reader.number("retry_floor", d.retry_floor, maximum=1e6),
        "replay_limit": reader.integer("replay_limit", d.replay_limit),
        "fallback": reader.strings("fallback"),
        "max_in_flight": max_in_flight or None,
        "fallback_on_overload": reader.boolean("fallback_on_overload", d.fallback_on_overload),
        "circuit_breaker": _breaker(reader),
        "fault": _fault(reader),
    }
    reader.check_unknown()
    # A bad key was read as its default and reported: the rest is still a
    # policy, so the names it uses are checked too (every error at once).
    try:
        return Policy(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        reader.error("", str(exc))
        return None


def parse_route(reader: OptionReader) -> Route | None:
    """The route in a ``[routes.NAME]`` table (None when invalid)."""
    split = reader.table("split")
    if split is None and not reader.has("split"):
        reader.error("split", "missing: expected a table of provider = weight")
    sticky = reader.string("sticky", "")
    if sticky and sticky not in _STICKY:
        reader.error("sticky", f"expected one of: {', '.join(_STICKY)}; got {sticky!r}")
        sticky = ""  # reported; the split is still checked
    weights: dict[str, int] = {}
    if split is not None:
        sub = reader.child(split, reader.key("split"))
        for name in split:
            weights[name] = sub.integer(name, 0, maximum=1_000_000)
        if split and not any(weights.values()):
            reader.error("split", "expected at least one weight above 0")
    reader.check_unknown()
    if split is None or not weights or not any(weights.values()):
        if split is not None and not split:
            reader.error("split", "expected at least one provider = weight")
        return None
    try:
        return Route(weights, sticky or None)
    except ValueError as exc:
        reader.error("", str(exc))
        return None


def check_names(
    providers: Mapping[str, object],
    policies: Mapping[str, Policy],
    routes: Mapping[str, Route],
    errors: list[tuple[str, str]],
) -> None:
    """Every name a policy or route uses must be a provider; routes are not
    providers. Each problem is recorded with its key path."""
    known = ", ".join(providers) or "none"
    for name, policy in policies.items():
        for i, fallback in enumerate(policy.fallback):
            if fallback not in providers:
                where = f"providers.{name}.policy.fallback[{i}]"
                errors.append((where, f"no provider named {fallback!r} (providers: {known})"))
            elif fallback == name:
                errors.append((f"providers.{name}.policy.fallback[{i}]", "falls back to itself"))
    for name, route in routes.items():
        if name in providers:
            errors.append((f"routes.{name}", "a route may not have a provider's name"))
        for provider in route.split:
            if provider not in providers:
                where = f"routes.{name}.split.{provider}"
                errors.append((where, f"no provider named {provider!r} (providers: {known})"))
