"""SHOP_FORWARDED_ALLOW_IPS: the proxies `shop serve` believes about the client, checked
before uvicorn sees them (it takes a malformed entry as a name that never matches)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shop.settings import Settings


def test_no_proxy_is_trusted_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_FORWARDED_ALLOW_IPS", raising=False)
    assert Settings(_env_file=None).forwarded_allow_ips == []


def test_addresses_and_networks_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_FORWARDED_ALLOW_IPS", " 10.0.0.0/8, 127.0.0.1,,2001:DB8::/32 ")
    settings = Settings(_env_file=None)
    assert settings.forwarded_allow_ips == ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("*", "every client"),
        ("proxy.internal", "does not appear to be"),
        ("10.0.0.1/8", "host bits set"),
        ("127.0.0.1, 10.0.0.300", "10.0.0.300"),
    ],
)
def test_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv("SHOP_FORWARDED_ALLOW_IPS", value)
    with pytest.raises(ValidationError, match=reason):
        Settings(_env_file=None)
