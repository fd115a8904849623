"""Signed session ids: only cookies we issued, under a key we still trust, are accepted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapi_atomic.exceptions import ConfigurationError
from fastapi_atomic.websession import KeyRing
from fastapi_atomic.websession.signing import new_session_id, store_key

RING = KeyRing(["current-key-0123456789", "retiring-key-0123456789"])
SESSION_ID = new_session_id()
COOKIE = RING.sign(SESSION_ID)


def test_round_trip() -> None:
    assert RING.unsign(COOKIE) == (SESSION_ID, False)


def test_ids_have_256_bits_and_are_never_stored_as_is() -> None:
    assert len(SESSION_ID) == 43
    assert new_session_id() != SESSION_ID
    assert store_key(SESSION_ID) != SESSION_ID and len(store_key(SESSION_ID)) == 64


def test_a_retiring_key_still_verifies_and_asks_for_re_signing() -> None:
    old_cookie = KeyRing(["retiring-key-0123456789"]).sign(SESSION_ID)
    assert RING.unsign(old_cookie) == (SESSION_ID, True)


def test_a_removed_key_no_longer_verifies() -> None:
    assert KeyRing(["another-key-0123456789"]).unsign(COOKIE) is None


@given(st.integers(min_value=0, max_value=len(COOKIE) - 1), st.integers(min_value=1, max_value=255))
@settings(max_examples=300)
def test_any_changed_byte_is_rejected(position: int, delta: int) -> None:
    raw = bytearray(COOKIE.encode())
    raw[position] = (raw[position] + delta) % 256
    tampered = raw.decode("latin-1")
    assert tampered == COOKIE or RING.unsign(tampered) is None


@pytest.mark.parametrize(
    "cookie", ["", ".", COOKIE[:-1], COOKIE + "A", COOKIE * 50, COOKIE.replace(".", ""), "x" * 87]
)
def test_malformed_cookies_are_rejected(cookie: str) -> None:
    assert RING.unsign(cookie) is None


def test_an_empty_key_ring_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        KeyRing([])


def test_signatures_do_not_change_between_releases() -> None:
    """A cookie signed by an earlier release must still verify after an upgrade."""
    cookie = (
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.SVhme_CV54YGMR7urArK3dSkSTiX3PxlwC77WJtSnEo"
    )
    assert KeyRing(["a fixed test key"]).sign("A" * 43) == cookie
    assert KeyRing(["new key", "a fixed test key"]).unsign(cookie) == ("A" * 43, True)
