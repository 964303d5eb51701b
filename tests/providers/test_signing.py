"""The signed identity header between meshbridge peers: pure, on a given clock."""

from __future__ import annotations

import pytest

from meshbridge import Source
from meshbridge.providers import (
    MAX_SKEW,
    NonceCache,
    SignatureError,
    check_identity,
    read_identity,
    sign_identity,
)

SECRET = b"s" * 32
NOW = 1_718_000_000.0
NONCE = "n0nce-n0nce-n0nce-1"


def signed(
    *,
    secret: bytes = SECRET,
    method: str = "POST",
    target: str = "/billing/v1/chat/completions?x=1",
    source: str | None = "agents",
    api_key_id: str | None = "team; a=b ü",
    now: float = NOW,
    nonce: str = NONCE,
) -> str:
    return sign_identity(secret, "k-2024.06", method, target, source, api_key_id,
                         now=now, nonce=nonce)  # fmt: skip


def check(
    value: str,
    *,
    method: str = "POST",
    target: str = "/billing/v1/chat/completions?x=1",
    now: float = NOW,
    nonces: NonceCache | None = None,
) -> None:
    check_identity(read_identity(value), SECRET, method, target, now=now,
                   nonces=nonces if nonces is not None else NonceCache())  # fmt: skip


def reason(value: str, **kwargs: object) -> str:
    with pytest.raises(SignatureError) as caught:
        check(value, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_a_signed_header_reads_back_the_identity_it_vouches_for() -> None:
    value = signed()
    assert value.startswith("v1;key=k-2024.06;ts=1718000000;nonce=n0nce-n0nce-n0nce-1;")
    assert value.isascii()  # an API key id of any printable text travels percent-encoded
    identity = read_identity(value)
    assert (identity.source, identity.api_key_id) == (Source("agents"), "team; a=b ü")
    assert type(identity.source) is Source
    assert (identity.key_id, identity.timestamp) == ("k-2024.06", 1_718_000_000)
    check(value)


def test_a_caller_without_source_or_key_id_is_signed_as_such() -> None:
    identity = read_identity(signed(source=None, api_key_id=None))
    assert (identity.source, identity.api_key_id) == (None, None)


@pytest.mark.parametrize(
    "change",
    [
        {"method": "GET"},
        {"target": "/billing/v1/chat/completions?x=2"},
        {"target": "/other/v1/chat/completions?x=1"},
        {"target": "/billing/v1/chat/completions"},
        {"target": "/billing/v1/chat%2Fcompletions?x=1"},  # the raw target, never decoded
    ],
)
def test_a_signature_made_for_another_request_is_refused(change: dict[str, str]) -> None:
    assert reason(signed(), **change) == "bad-signature"


def test_a_forged_or_altered_header_is_refused() -> None:
    assert reason(signed(secret=b"x" * 32)) == "bad-signature"
    assert reason(signed().replace("source=agents", "source=batch")) == "bad-signature"
    assert reason(signed().replace("ts=1718000000", "ts=1718000001")) == "bad-signature"


def test_timestamps_are_good_for_max_skew_either_way() -> None:
    check(signed(now=NOW - MAX_SKEW))
    check(signed(now=NOW + MAX_SKEW))
    assert reason(signed(now=NOW - MAX_SKEW - 1)) == "expired"
    assert reason(signed(now=NOW + MAX_SKEW + 1)) == "expired"


def test_a_nonce_is_accepted_once_within_its_window_then_forgotten() -> None:
    nonces = NonceCache()
    value = signed()
    check(value, nonces=nonces)
    assert reason(value, nonces=nonces) == "replayed"
    assert reason(value, nonces=nonces, now=NOW + MAX_SKEW) == "replayed"
    # past twice the skew it is forgotten, and its timestamp alone refuses it
    check(signed(nonce="another-nonce-000", now=NOW + 2 * MAX_SKEW), nonces=nonces,
          now=NOW + 2 * MAX_SKEW)  # fmt: skip
    assert len(nonces) == 1
    assert reason(value, nonces=nonces, now=NOW + 2 * MAX_SKEW) == "expired"


def test_a_full_nonce_cache_refuses_rather_than_forgets_a_live_nonce() -> None:
    nonces = NonceCache(capacity=2)
    check(signed(nonce="first-nonce-00000"), nonces=nonces)
    check(signed(nonce="second-nonce-0000"), nonces=nonces)
    assert reason(signed(nonce="third-nonce-00000"), nonces=nonces) == "overloaded"
    later = NOW + 2 * MAX_SKEW
    check(signed(nonce="third-nonce-00000", now=later), nonces=nonces, now=later)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "v2;key=1;ts=1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=;sig=" + "A" * 43,
        "v1;ts=1;key=1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=;sig=" + "A" * 43,
        "v1;key=1;ts=-1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=;sig=" + "A" * 43,
        "v1;key=1;ts=1;nonce=short;source=;api-key-id=;sig=" + "A" * 43,
        "v1;key=1;ts=1;nonce=n0nce-n0nce-n0nce-1;source=Agents;api-key-id=;sig=" + "A" * 43,
        "v1;key=1;ts=1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=%ff;sig=" + "A" * 43,
        "v1;key=1;ts=1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=;sig=short",
        "v1;key=a b;ts=1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=;sig=" + "A" * 43,
        "v1;key=1;ts=1;nonce=n0nce-n0nce-n0nce-1;source=;api-key-id=;sig=" + "A" * 43 + ";x=1",
        signed() + "x" * 2048,
    ],
)
def test_a_header_not_of_the_format_is_malformed(value: str) -> None:
    with pytest.raises(SignatureError) as caught:
        read_identity(value)
    assert caught.value.reason == "malformed"


def test_key_ids_and_nonces_are_checked_when_signing() -> None:
    with pytest.raises(ValueError, match="invalid key id"):
        sign_identity(SECRET, "a key", "GET", "/", None, None, now=NOW, nonce=NONCE)
    with pytest.raises(ValueError, match="invalid nonce"):
        sign_identity(SECRET, "1", "GET", "/", None, None, now=NOW, nonce="short")
