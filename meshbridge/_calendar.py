"""Calendar periods of day and month budgets, in one time zone.

A day runs from midnight to midnight and a month from the 1st at midnight,
in the configured zone (``zoneinfo``: daylight saving time makes some days
23 or 25 hours long, and that is what they last). A period is named by its
date (``2025-06-14``) or month (``2025-06``); the name goes into the
counter's key, so a new period starts from zero on every worker at once,
with nothing to reset. Pure: the time is always passed in.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from typing import Final, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Calendar", "Period", "time_zone"]

DAY: Final = "day"
MONTH: Final = "month"


class Period(NamedTuple):
    """One day or month: its name and its bounds in seconds since the epoch."""

    name: str
    start: float
    end: float


def time_zone(name: str | tzinfo) -> tzinfo:
    """The zone named ``name`` (an IANA name such as ``Europe/Paris``; ``UTC``).

    Raises:
        ValueError: no such zone.
    """
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"unknown time zone {name!r}: expected an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def _midnight(day: date, zone: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


class Calendar:
    """The current day and month in one zone, remembered until they end."""

    __slots__ = ("_current", "zone")

    def __init__(self, zone: str | tzinfo = "UTC") -> None:
        self.zone = time_zone(zone)
        self._current: dict[str, Period] = {}

    def period(self, unit: str, now: float) -> Period:
        """The day (``unit="day"``) or month (``"month"``) that holds ``now``."""
        current = self._current.get(unit)
        if current is not None and current.start <= now < current.end:
            return current
        today = datetime.fromtimestamp(now, self.zone).date()
        if unit == DAY:
            first, after = today, today + timedelta(days=1)
            name = today.isoformat()
        elif unit == MONTH:
            first = today.replace(day=1)
            after = (first + timedelta(days=32)).replace(day=1)
            name = f"{today.year:04d}-{today.month:02d}"
        else:
            raise ValueError(f"unknown calendar period {unit!r}: expected 'day' or 'month'")
        period = Period(name, _midnight(first, self.zone), _midnight(after, self.zone))
        self._current[unit] = period
        return period
