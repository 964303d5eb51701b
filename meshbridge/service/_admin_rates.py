"""Request rate and error ratio per provider over the last minute, for the
admin page: differences between snapshots of the mesh's counters.

Rules of the ring:

1. Nothing is counted per request. The ring holds a few snapshots of
   :meth:`Mesh.traffic_state`'s counters, taken by the service's periodic
   sampler and by the page's own reads, at most one per ``step`` seconds:
   ``window / step + 2`` snapshots, whatever the traffic.
2. A rate is the difference between now and the oldest snapshot at most
   ``window`` seconds old, over the seconds between them (so over a little
   less than the window once the ring is full, over what there is before).
   With no snapshot at least :data:`MIN_SPAN` before now there is no rate
   (None), not a zero, nor a burst of a few milliseconds taken for a rate.
3. The error ratio is errors over requests in that span (None: no requests).
4. A counter that went down (a worker counts from zero after a restart)
   gives no rate for that provider until the ring has moved past it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from meshbridge import TrafficState

__all__ = ["Rate", "Rates"]

WINDOW: Final = 60.0
STEP: Final = 5.0
MIN_SPAN: Final = 1.0  # seconds: a shorter span says nothing about a rate per second


@dataclass(frozen=True, slots=True)
class Rate:
    """One provider's traffic over the span of a :class:`Rates` reading.

    Attributes:
        per_second: requests ended per second.
        error_ratio: the share of them that failed (None: none ended).
        seconds: the span it was measured over.
    """

    per_second: float
    error_ratio: float | None
    seconds: float


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float
    counts: Mapping[str, tuple[int, int]]  # provider -> (requests, errors)


def _counts(state: TrafficState) -> dict[str, tuple[int, int]]:
    return {name: (p.requests, p.errors) for name, p in state.providers.items()}


class Rates:
    """The ring of counter snapshots (see the module's rules).

    Args:
        window: seconds a rate looks back at most.
        step: the least seconds between two snapshots kept.
    """

    def __init__(self, window: float = WINDOW, step: float = STEP) -> None:
        self.window = window
        self.step = step
        self._ring: deque[_Snapshot] = deque(maxlen=int(window / step) + 2)

    def __len__(self) -> int:
        """Snapshots kept (at most ``window / step + 2``)."""
        return len(self._ring)

    def sample(self, state: TrafficState) -> None:
        """Keep ``state``'s counters, unless the last snapshot is under ``step`` old."""
        if self._ring and state.at - self._ring[-1].at < self.step:
            return
        self._ring.append(_Snapshot(state.at, _counts(state)))

    def over(self, state: TrafficState) -> dict[str, Rate | None]:
        """Each provider's rate from the oldest snapshot in the window to ``state``."""
        base = next((s for s in self._ring if state.at - s.at <= self.window), None)
        rates: dict[str, Rate | None] = dict.fromkeys(state.providers)
        if base is None or state.at - base.at < min(MIN_SPAN, self.window):
            return rates
        seconds = state.at - base.at
        for name, (requests, errors) in _counts(state).items():
            before = base.counts.get(name, (0, 0))
            ended, failed = requests - before[0], errors - before[1]
            if ended < 0 or failed < 0:
                continue  # rule 4
            ratio = failed / ended if ended else None
            rates[name] = Rate(ended / seconds, ratio, seconds)
        return rates
