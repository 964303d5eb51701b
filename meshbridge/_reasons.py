"""The names of what the mesh decides, one spelling each.

A reason is what the caller reads in ``x-meshbridge-reason`` when the mesh
answers itself, and the same word labels the metric that counts it
(``meshbridge_rejected_total{reason}``, ``meshbridge_timeouts_total{kind}``,
``meshbridge_retries_total{reason}``): one event, one name, wherever it is
seen. Conditions are the outcomes besides statuses that a policy's
``retry_on`` and a breaker's ``on`` can name.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Reason"]


class Reason(StrEnum):
    """Why the mesh answered, refused, cut or retried."""

    # answered by the mesh (x-meshbridge-reason), and counted as rejections
    CIRCUIT_OPEN = "circuit-open"  # the breaker refused the attempt
    OVERLOADED = "overloaded"  # max_in_flight reached
    FAULT = "fault"  # an injected fault
    UNAVAILABLE = "unavailable"  # the provider is not running
    RATE_LIMITED = "rate-limited"  # a per-caller limit's window is full
    BUDGET_EXHAUSTED = "budget-exhausted"  # a per-caller budget is spent
    STORE_UNAVAILABLE = "store-unavailable"  # the limits' store is down, and closed
    # time limits (the 504 of a call answered before its head is "timeout")
    TIMEOUT = "timeout"  # the call's whole timeout
    FIRST_BYTE_TIMEOUT = "first-byte-timeout"  # no response head in time
    IDLE_TIMEOUT = "idle-timeout"  # too long between two chunks
    # conditions besides statuses
    CONNECT_FAILURE = "connect-failure"  # the provider (or its upstream) was unreachable
