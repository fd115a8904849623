from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shop import settings as settings_module
from shop.settings import Settings


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_defaults_follow_the_contract() -> None:
    settings = make()
    assert settings.database_url == "sqlite+aiosqlite:///./shop.db"
    assert settings.session_store == "sql"
    assert settings.cookie_secure is True
    assert (settings.session_idle_timeout, settings.session_absolute_timeout) == (1800, 43200)
    assert settings.payment_gateway == "fake"


def test_secret_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_SECRET_KEYS", "first-key, second-key ,")
    assert Settings(_env_file=None).signing_keys() == ["first-key", "second-key"]  # type: ignore[call-arg]


def test_production_requires_secret_keys() -> None:
    with pytest.raises(ValidationError, match="needs SHOP_SECRET_KEYS"):
        make(env="production")


def test_production_refuses_insecure_cookies() -> None:
    with pytest.raises(ValidationError, match="SHOP_COOKIE_SECURE=false"):
        make(env="production", secret_keys=["k" * 40], cookie_secure=False)


def test_production_refuses_short_keys() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        make(env="production", secret_keys=["short"])


def test_development_key_is_generated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "DEV_SECRET_FILE", tmp_path / "key")
    first = make().signing_keys()
    assert first == make().signing_keys()
    assert len(first[0]) >= 32
    assert (tmp_path / "key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_timeouts_must_be_positive_numbers(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SHOP_SESSION_IDLE_TIMEOUT", value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("email", ["admin@x.test", "admin@localhost", "not an e-mail"])
def test_the_admin_email_follows_the_log_in_forms_rule(email: str) -> None:
    """An administrator created with an address the log-in form refuses could never log in."""
    with pytest.raises(ValidationError, match="admin_email"):
        make(admin_email=email)


def test_the_admin_email_is_kept_lower_cased_like_every_users() -> None:
    assert make(admin_email="Admin@Example.COM").admin_email == "admin@example.com"


POOLER = "postgresql+asyncpg://shop@pgbouncer:6432/shop"
DIRECT = "postgresql+asyncpg://shop@/shop?host=db1:5432&host=db2:5432&target_session_attrs=primary"


def test_transaction_pooling_needs_postgres_through_asyncpg() -> None:
    with pytest.raises(
        ValidationError, match="SHOP_DB_TRANSACTION_POOLING=true needs a postgresql"
    ):
        make(db_transaction_pooling=True)


def test_transaction_pooling_with_the_sql_cache_needs_a_direct_url() -> None:
    with pytest.raises(ValidationError, match="set SHOP_DATABASE_DIRECT_URL"):
        make(database_url=POOLER, db_transaction_pooling=True)
    # without the cache, or with the Redis store, nothing needs a session of its own
    make(database_url=POOLER, db_transaction_pooling=True, session_cache=False)
    make(database_url=POOLER, db_transaction_pooling=True, session_store="redis")


def test_migrations_and_the_feed_go_past_the_pooler() -> None:
    pooled = make(database_url=POOLER, db_transaction_pooling=True, database_direct_url=DIRECT)
    assert pooled.direct_database_url == DIRECT
    assert make(database_url=POOLER).direct_database_url == POOLER


def test_sentinels_are_comma_separated_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_REDIS_SENTINELS", "10.0.0.1:26379, sentinel-b:26380,")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_sentinel_addresses() == [("10.0.0.1", 26379), ("sentinel-b", 26380)]


@pytest.mark.parametrize("value", ["sentinel-a", "sentinel-a:port", ":26379"])
def test_a_sentinel_without_host_and_port_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SHOP_REDIS_SENTINELS", value)
    with pytest.raises(ValidationError, match="is not host:port"):
        Settings(_env_file=None)  # type: ignore[call-arg]
