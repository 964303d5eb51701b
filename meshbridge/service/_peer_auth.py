"""Requests signed by another meshbridge: ``[server.peers.NAME]`` and the
check of ``X-Meshbridge-Peer`` (the format is in ``meshbridge.providers``,
whose ``remote`` kind signs).

Each ``[server.peers.NAME]`` table is one key: a ``key_id`` (default ``"1"``)
and the secret in ``secret_env``. A request whose header names that key id
and is signed with that secret, for this method and target, within
``MAX_SKEW`` seconds and never before, comes from peer NAME, with the Source
and API key id it vouches for. Rotating a secret is a second table with a new
key id: both are accepted until the senders have moved to the new one.

Rules of the peer gate:

1. A header is a credential: a request that carries one is judged by it alone
   (no bearer token needed, none looked at); a refused header is a 401 that
   never reaches a provider, counted in
   ``meshbridge_peer_auth_failures_total{peer,reason}`` (``peer`` is a
   configured name or ``unknown``; ``reason`` one of ``REASONS``).
2. Only a valid signature spends a nonce, so a forger cannot use up the
   nonce cache; a full cache refuses with 503, never forgets a live nonce.
3. Nonces live in a :class:`NonceStore` (``_nonces.py``): this process's by
   default, the supervisor's under ``serve --workers``, so one signature is
   accepted once per server, whichever worker it reaches.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from meshbridge import Source
from meshbridge.providers import (
    MAX_SKEW,
    MIN_SECRET,
    PEER_HEADER,
    REASONS,
    OptionReader,
    SignatureError,
    check_identity,
    check_key_id,
    read_identity,
)

from ._http_guard import json_error
from ._nonces import LocalNonces, NoncesFull, NonceStore

__all__ = ["Caller", "PeerConfig", "PeerGate", "parse_peers"]

_NAME: Final = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
UNKNOWN: Final = "unknown"  # the peer label of a key id no peer has

Scope = Callable[[OptionReader, Collection[str] | None], frozenset[str] | None]


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Another meshbridge whose signed requests ``serve`` accepts, under one key id."""

    name: str
    key_id: str
    secret: str = field(repr=False)
    providers: frozenset[str] | None = None  # the providers it may use (None: all)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a gateway request is from, once the gate let it through."""

    name: str  # the client's name, or "peer:NAME"
    source: Source | None
    api_key_id: str | None
    providers: frozenset[str] | None  # the providers it may use (None: all)
    signed: bool = False  # by a peer: its Authorization header is its caller's own


def parse_peers(
    reader: OptionReader, providers: Collection[str] | None, scope: Scope
) -> tuple[PeerConfig, ...]:
    """The ``[server.peers.NAME]`` tables of ``reader`` (the ``server`` table);
    problems are recorded on it."""
    peers: list[PeerConfig] = []
    key_ids: dict[str, str] = {}
    for name, raw in (reader.table("peers") or {}).items():
        where = reader.key(f"peers.{name}")
        if not isinstance(raw, Mapping):
            reader.errors.append((where, "expected a table with secret_env (and key_id)"))
            continue
        peer = reader.child(raw, where)
        counted = len(peer.errors)
        if len(name) > 63 or not _NAME.fullmatch(name) or name == UNKNOWN:
            peer.error("", f"invalid peer name {name!r}: expected lower-case letters and digits, "
                       "words joined by single '-', at most 63 characters, not 'unknown' "
                       "(it is the peer label of meshbridge_peer_auth_failures_total)")  # fmt: skip
        secret = peer.env("secret_env", required=True)
        if secret and secret[1] and len(secret[1].encode()) < MIN_SECRET:
            peer.error("secret_env", f"the secret in {secret[0]} is {len(secret[1].encode())} "
                       f"bytes: expected at least {MIN_SECRET}")  # fmt: skip
        key_id = peer.string("key_id", "1")
        try:
            check_key_id(key_id)
        except ValueError as exc:
            peer.error("key_id", str(exc))
        else:
            if key_id in key_ids:
                peer.error("key_id", f"{key_id!r} is also server.peers.{key_ids[key_id]}'s: "
                           "each key id names one secret")  # fmt: skip
            key_ids.setdefault(key_id, name)
        allowed = scope(peer, providers)
        peer.check_unknown()
        if secret is not None and len(peer.errors) == counted:
            peers.append(PeerConfig(name, key_id, secret[1], allowed))
    return tuple(peers)


class PeerGate:
    """Checks ``X-Meshbridge-Peer`` headers against the configured peers and
    counts what it refuses (a collector of plain numbers, as the core's).

    Args:
        registry: where ``meshbridge_peer_auth_failures_total`` is served.
        peers: the peers of the running config (read on every request, so a
            reload applies at once).
        clock: the Unix time (``time.time``).
        nonces: where accepted nonces are remembered (a new :class:`LocalNonces`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        peers: Callable[[], Sequence[PeerConfig]],
        *,
        clock: Callable[[], float] = time.time,
        nonces: NonceStore | None = None,
    ) -> None:
        self._peers = peers
        self._clock = clock
        self.nonces = nonces if nonces is not None else LocalNonces(clock=clock)
        self.failures: dict[tuple[str, str], int] = {}
        registry.register(self)

    async def check(self, request: web.BaseRequest) -> Caller | web.Response:
        """The peer a signed request comes from, or the refusal to send."""
        name = UNKNOWN
        try:
            values = request.headers.getall(PEER_HEADER, [])
            if len(values) != 1:
                raise SignatureError("malformed", f"more than one {PEER_HEADER} header")
            identity = read_identity(values[0])
            found = [p for p in self._peers() if p.key_id == identity.key_id and p.secret]
            if not found:
                raise SignatureError("unknown-key", f"no peer has key id {identity.key_id!r}")
            peer = found[0]
            name = peer.name
            check_identity(identity, peer.secret.encode(), request.method, request.raw_path,
                           now=self._clock(), nonces=None)  # fmt: skip
            await self._spend(identity.key_id, identity.nonce, identity.timestamp + MAX_SKEW)
        except SignatureError as exc:
            key = (name, exc.reason)
            self.failures[key] = self.failures.get(key, 0) + 1
            message = f"{PEER_HEADER} refused ({exc.reason}): {exc}"
            if exc.reason == "overloaded":
                busy = json_error(503, "unavailable", message)
                busy.headers["Retry-After"] = "1"
                return busy
            denied = json_error(401, "authentication_error", message)
            denied.headers["WWW-Authenticate"] = 'Bearer realm="meshbridge"'
            return denied
        return Caller(f"peer:{peer.name}", identity.source, identity.api_key_id,
                      peer.providers, signed=True)  # fmt: skip

    async def _spend(self, key_id: str, nonce: str, expires: float) -> None:
        """Rule 2: a good signature spends its nonce, once."""
        try:
            first = await self.nonces.first_use(key_id, nonce, expires)
        except NoncesFull:
            raise SignatureError(
                "overloaded", "too many signed requests to remember, retry"
            ) from None
        except (OSError, TimeoutError):
            raise SignatureError("overloaded", "the nonce store cannot be reached, retry") from None
        if not first:
            raise SignatureError("replayed", "this signature was used already")

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str], int] = {
            (p.name, r): 0 for p in self._peers() for r in REASONS
        }
        counts.update(self.failures)
        if not counts:  # no peers and no refusal: a bearer-only server shows no family
            return
        family = self._family()
        for (peer, reason), value in sorted(counts.items()):
            family.add_metric([peer, reason], value)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "meshbridge_peer_auth_failures",
            "Signed peer requests refused, by peer (or unknown) and reason.",
            labels=["peer", "reason"],
        )
