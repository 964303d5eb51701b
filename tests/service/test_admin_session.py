"""The admin page's session cookie, on times the test chooses: it stands for
an admin token without holding it, expires, and ends when the token changes."""

from __future__ import annotations

from meshbridge.service._admin_session import SESSION_SECONDS, session_valid, signed

TOKEN, OTHER = b"the-admin-token-0001", b"another-admin-token"
NOW = 1_750_000_000.0


def test_a_session_holds_no_token_and_is_valid_until_it_expires() -> None:
    value = signed(TOKEN, NOW)
    assert TOKEN.decode() not in value
    assert session_valid(value, [OTHER, TOKEN], NOW)
    assert session_valid(value, [TOKEN], NOW + SESSION_SECONDS - 1)
    assert not session_valid(value, [TOKEN], NOW + SESSION_SECONDS)


def test_a_changed_token_ends_its_sessions() -> None:
    value = signed(TOKEN, NOW)
    assert not session_valid(value, [OTHER], NOW)
    assert not session_valid(value, [], NOW)


def test_a_session_whose_expiry_was_moved_or_whose_mac_was_changed_is_refused() -> None:
    version, expires, mac = signed(TOKEN, NOW).split(".")
    later = str(int(expires) + 86400)
    assert not session_valid(f"{version}.{later}.{mac}", [TOKEN], NOW)
    flipped = mac[:-1] + ("1" if mac[-1] == "0" else "0")
    assert not session_valid(f"{version}.{expires}.{flipped}", [TOKEN], NOW)
    for garbage in ("", "v1", "v1..", "v2.1.x", f"v1.-{expires}.{mac}", "v1.1e9.x", "v1.é.é"):
        assert not session_valid(garbage, [TOKEN], NOW), garbage
