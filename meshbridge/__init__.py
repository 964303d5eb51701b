"""meshbridge: an in-process service mesh for aiohttp.

Requests made through :meth:`Mesh.session` reach aiohttp apps registered in
the same process, chosen by provider name, with no socket, port or TLS, and
the same HTTP a caller would see over the network. Each request carries its
caller's :class:`Source` and delegated API key id beside it, where no header
can forge them, and is measured in Prometheus metrics.

This package is the core: it imports nothing from the provider kinds
(``meshbridge.providers``) or the service (``meshbridge.service``), which
build on it.
"""

from __future__ import annotations

from ._connector import MeshConnector
from ._estimate import Estimate, estimate_tokens
from ._exceptions import (
    ConfigError,
    MeshError,
    MeshNotRunning,
    MissingAPIKeyID,
    ProviderNotFound,
    StreamBroken,
)
from ._exchange import api_key_id_of, record_tokens, report_connect_failure, source_of
from ._limit_rules import LimitUse, Refusal, Ticket
from ._limit_store import InProcessStore, LimitCounter, LimitStore
from ._limiter import Limiter
from ._limits import CallIdentity, Limit, Price, TokenUsage
from ._mesh import Mesh
from ._policy import CircuitBreaker, Fault, Policy, Route
from ._record import CallRecord, LedgerSink, uuid7
from ._routing import check_name as check_provider_name
from ._source import Source, check_api_key_id, use_api_key_id, use_client, use_source
from ._state import ProviderState, RouteState, TrafficState
from ._synthetic import ERROR_BODY, ErrorBody

__all__ = [
    "ERROR_BODY",
    "CallIdentity",
    "CallRecord",
    "CircuitBreaker",
    "ConfigError",
    "ErrorBody",
    "Estimate",
    "Fault",
    "InProcessStore",
    "LedgerSink",
    "Limit",
    "LimitCounter",
    "LimitStore",
    "LimitUse",
    "Limiter",
    "Mesh",
    "MeshConnector",
    "MeshError",
    "MeshNotRunning",
    "MissingAPIKeyID",
    "Policy",
    "Price",
    "ProviderNotFound",
    "ProviderState",
    "Refusal",
    "Route",
    "RouteState",
    "Source",
    "StreamBroken",
    "Ticket",
    "TokenUsage",
    "TrafficState",
    "api_key_id_of",
    "check_api_key_id",
    "check_provider_name",
    "estimate_tokens",
    "record_tokens",
    "report_connect_failure",
    "source_of",
    "use_api_key_id",
    "use_client",
    "use_source",
    "uuid7",
]

__version__ = "0.1.0"
