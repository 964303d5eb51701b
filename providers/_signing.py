"""The signed header that carries a caller's identity from one meshbridge to
another: the ``remote`` kind writes it, ``meshbridge serve`` checks it.

Pure: no I/O, no clock and no randomness of its own (the time and the nonce
are arguments), so every rule below is tested without a server.

The header, one line of ``;``-separated fields in this order::

    X-Meshbridge-Peer: v1;key=1;ts=1718000000;nonce=<base64url>;source=agents;
                       api-key-id=nightly;sig=<base64url>      (one line)

``source`` and ``api-key-id`` are percent-encoded and empty when the caller
has none. ``sig`` is HMAC-SHA256, under the secret of key id ``key``, of
these lines joined by ``\\n`` (each field as it stands in the header)::

    meshbridge-peer-v1, METHOD, path?query, source, api-key-id, key, ts, nonce

Rules of the signature:

1. Who is calling, not what they send. The method, the request target (path
   and query exactly as on the wire, never decoded or normalised), the
   Source, the API key id, the key id, the timestamp and the nonce are
   signed; the body is not (TLS protects it, so uploads can stream), nor are
   other headers.
2. A signature is good for ``MAX_SKEW`` seconds either side of its
   timestamp, and once: a verifier remembers every nonce it accepted for
   twice that window (:class:`NonceCache`, bounded), so a replay inside the
   window is caught and one outside it is expired.
3. Key ids name secrets, so a secret can rotate: a verifier accepts every key
   id it is configured with, a sender signs with one.
4. Every refusal has one reason from :data:`REASONS` (a bounded label), and
   checks run cheapest-first but the signature before the clock: what a
   forger learns is ``bad-signature``, never whether the time was right.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, unquote

from meshbridge import Source, check_api_key_id

__all__ = [
    "MAX_SKEW",
    "MIN_SECRET",
    "PEER_HEADER",
    "REASONS",
    "NonceCache",
    "SignatureError",
    "SignedIdentity",
    "check_identity",
    "check_key_id",
    "read_identity",
    "sign_identity",
]

PEER_HEADER: Final = "X-Meshbridge-Peer"
MAX_SKEW: Final = 30.0  # seconds a signature's timestamp may be off, either way
MAX_HEADER: Final = 2048  # characters; a longer header is malformed
MIN_SECRET: Final = 32  # bytes; shorter secrets are refused where they are configured

Reason = Literal["malformed", "unknown-key", "bad-signature", "expired", "replayed", "overloaded"]
REASONS: Final[tuple[Reason, ...]] = (
    "malformed",  # not a header of this format
    "unknown-key",  # a key id no peer is configured with
    "bad-signature",  # forged, or made for another method, path, query or identity
    "expired",  # the timestamp is more than MAX_SKEW seconds away
    "replayed",  # the nonce was accepted already
    "overloaded",  # the nonce cache is full of live nonces (refused, not a replay)
)

_VERSION: Final = "v1"
_FIELDS: Final = ("key", "ts", "nonce", "source", "api-key-id", "sig")
_KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SIG: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding
_TS: Final = re.compile(r"[0-9]{1,12}")


class SignatureError(ValueError):
    """A peer header that is refused; :attr:`reason` is one of :data:`REASONS`."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def check_key_id(key_id: str) -> str:
    """Validate a key id: 1 to 64 letters, digits, ``.``, ``_`` or ``-``.

    Raises:
        ValueError: it is not one (the message says what is expected).
    """
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"invalid key id {key_id!r}: expected 1 to 64 letters, digits, '.', '_' or '-'"
        )
    return key_id


@dataclass(frozen=True, slots=True)
class SignedIdentity:
    """A peer header read apart (see :func:`read_identity`); not yet checked."""

    key_id: str
    timestamp: int
    nonce: str
    source: Source | None
    api_key_id: str | None
    signature: str
    signed_fields: tuple[str, ...]  # key .. nonce exactly as they came, for the MAC


def _canonical(method: str, target: str, fields: tuple[str, ...]) -> bytes:
    key, ts, nonce, source, api_key_id = fields
    lines = ("meshbridge-peer-v1", method.upper(), target, source, api_key_id, key, ts, nonce)
    return "\n".join(lines).encode()


def _mac(secret: bytes, message: bytes) -> str:
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_identity(
    secret: bytes,
    key_id: str,
    method: str,
    target: str,
    source: str | None,
    api_key_id: str | None,
    *,
    now: float,
    nonce: str,
) -> str:
    """The header value vouching for ``source`` and ``api_key_id`` on one request.

    Args:
        secret: the shared secret of ``key_id``.
        key_id: the verifier's name for ``secret``.
        method: the request's method.
        target: the request's target as it goes on the wire (``/path?query``,
            percent-encoded as sent).
        source: the caller's Source, or None.
        api_key_id: the caller's API key id, or None.
        now: the current Unix time.
        nonce: a fresh random value (``secrets.token_urlsafe(16)``).
    """
    if not _NONCE.fullmatch(nonce):
        raise ValueError("invalid nonce: expected 16 to 64 base64url characters")
    fields = (
        check_key_id(key_id),
        str(int(now)),
        nonce,
        quote(source or "", safe=""),
        quote(api_key_id or "", safe=""),
    )
    signature = _mac(secret, _canonical(method, target, fields))
    pairs = zip(_FIELDS, (*fields, signature), strict=True)
    return ";".join([_VERSION, *(f"{name}={value}" for name, value in pairs)])


def read_identity(value: str) -> SignedIdentity:
    """Read a header apart, checking its form only.

    Raises:
        SignatureError: ``malformed``, saying which part is wrong (never
            echoing more than the field's name).
    """
    parts = value.split(";") if len(value) <= MAX_HEADER else []
    if len(parts) != 1 + len(_FIELDS) or parts[0] != _VERSION:
        raise SignatureError("malformed", f"expected {_VERSION};key=...;...;sig=...")
    raw: list[str] = []
    for part, name in zip(parts[1:], _FIELDS, strict=True):
        given, sep, field = part.partition("=")
        if given != name or not sep:
            raise SignatureError("malformed", f"expected the field {name}= next")
        raw.append(field)
    key, ts, nonce, source, api_key_id, sig = raw
    for name, field, pattern in (
        ("key", key, _KEY_ID),
        ("ts", ts, _TS),
        ("nonce", nonce, _NONCE),
        ("sig", sig, _SIG),
    ):
        if not pattern.fullmatch(field):
            raise SignatureError("malformed", f"the field {name} is malformed")
    try:
        source_text = unquote(source, errors="strict")
        key_text = unquote(api_key_id, errors="strict")
        checked_source = Source(source_text) if source_text else None
        checked_key = check_api_key_id(key_text) if key_text else None
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("malformed", "the source or api-key-id is malformed") from None
    return SignedIdentity(
        key, int(ts), nonce, checked_source, checked_key, sig, (key, ts, nonce, source, api_key_id)
    )


def check_identity(
    identity: SignedIdentity,
    secret: bytes,
    method: str,
    target: str,
    *,
    now: float,
    nonces: NonceCache | None,
) -> None:
    """Check a header read by :func:`read_identity` against the request it came
    with; on success its nonce is remembered in ``nonces`` (None: the caller
    checks the nonce itself, in a store shared by several processes, say).

    Raises:
        SignatureError: ``bad-signature``, ``expired``, ``replayed`` or
            ``overloaded`` (in that order of checking).
    """
    expected = _mac(secret, _canonical(method, target, identity.signed_fields))
    if not hmac.compare_digest(expected, identity.signature):
        raise SignatureError("bad-signature", "the signature does not match this request")
    if abs(now - identity.timestamp) > MAX_SKEW:
        raise SignatureError("expired", f"the timestamp is more than {MAX_SKEW:g} s away")
    if nonces is not None:
        nonces.remember(identity.nonce, now)


class NonceCache:
    """The nonces accepted in the last ``2 * MAX_SKEW`` seconds, at most
    ``capacity`` of them.

    A nonce accepted at time t carries a timestamp within ``MAX_SKEW`` of t,
    so after ``t + 2 * MAX_SKEW`` its timestamp alone refuses it: it is
    forgotten then. Entries are kept in the order they came, which is also
    the order they expire in, so forgetting is cheap. When the cache is full
    of live nonces a new one is refused (``overloaded``) rather than an old
    one forgotten early, which would let it be replayed.
    """

    def __init__(self, capacity: int = 250_000, window: float = 2 * MAX_SKEW) -> None:
        self.capacity = capacity
        self.window = window
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, nonce: str, now: float) -> None:
        """Record ``nonce`` as used.

        Raises:
            SignatureError: ``replayed`` if it was used already, ``overloaded``
                if the cache is full of nonces still in their window.
        """
        self._forget(now)
        if nonce in self._seen:
            raise SignatureError("replayed", "this signature was used already")
        if len(self._seen) >= self.capacity:
            raise SignatureError("overloaded", "too many signed requests to remember, retry")
        self._seen[nonce] = now + self.window

    def _forget(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now:
                return
            del seen[oldest]
