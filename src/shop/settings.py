"""The shop's configuration: SHOP_* environment variables (and a .env file), read once."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .fields import Email

logger = logging.getLogger("shop")

DEV_SECRET_FILE = Path(".shop-secret-key")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    #: how `shop serve` writes its logs: ``text`` for a person (development's default), ``json``
    #: (one object per line) for a log pipeline (production's default); see :mod:`shop.logs`
    log_format: Literal["text", "json"] = Field(
        default_factory=lambda data: "json" if data.get("env") == "production" else "text"
    )
    database_url: str = "sqlite+aiosqlite:///./shop.db"
    #: ``database_url`` is a pooler in transaction mode (PgBouncer's ``pool_mode = transaction``):
    #: no prepared statement is kept past its transaction
    db_transaction_pooling: bool = False
    #: the database reached past any pooler, for what needs a server session of its own: schema
    #: migrations and the web-session cache's LISTEN. With several hosts
    #: (``?host=a:5432&host=b:5432&target_session_attrs=primary``) it follows a failover.
    #: Unset: ``database_url``.
    database_direct_url: str | None = None
    session_store: Literal["sql", "redis", "memory"] = "sql"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Redis Sentinels (``host:port``, comma-separated) that name the Redis master of
    #: ``redis_sentinel_service``; when set, ``redis_url`` gives only the database number,
    #: user and password
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_service: str = "mymaster"
    #: key prefix in Redis, so several shops (or test runs) can share one server
    redis_prefix: str = "shop:"
    secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cookie_secure: bool = True
    session_idle_timeout: int = Field(1800, gt=0)
    session_absolute_timeout: int = Field(43200, gt=0)
    #: validated as the log-in form validates it, so the administrator can always log in
    admin_email: Email | None = None
    admin_password: SecretStr | None = None
    payment_gateway: str = "fake"
    #: ISO 4217 code the storefront shows prices in (amounts are kept in its cents)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    #: seconds the HTTP gateway client waits for each answer
    payment_gateway_timeout: float = Field(5.0, gt=0, le=60)
    fake_gateway_latency_ms: int = Field(0, ge=0)
    max_body_size: int = Field(1024 * 1024, gt=0)
    db_pool_size: int = Field(10, gt=0)
    #: answer web-session reads from memory, kept fresh by a change feed (LISTEN/NOTIFY on
    #: PostgreSQL, a change log on SQLite, pub/sub on Redis)
    session_cache: bool = True
    #: run transfers at this isolation level (PostgreSQL); None = the database's default
    transfer_isolation: Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] | None = None
    #: failed log-ins counted within ``login_failure_window`` before a 429 (services/throttle.py):
    #: for one e-mail from one client address (guessing one password),
    login_max_failures_per_email_and_address: int = Field(5, gt=0)
    #: for one e-mail from every address (guessing it from many),
    login_max_failures_per_email: int = Field(50, gt=0)
    #: from one address for every e-mail (trying many accounts)
    login_max_failures_per_address: int = Field(100, gt=0)
    login_failure_window: int = Field(900, gt=0)
    #: proxies whose X-Forwarded-For / X-Forwarded-Proto `shop serve` believes: addresses and
    #: networks (CIDR), comma-separated; empty trusts none, and the client is the peer
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cookie_host_prefix: bool = False
    reconcile_min_age: int = Field(300, ge=0)

    @field_validator("secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("forwarded_allow_ips", "redis_sentinels", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _host_and_port(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{item!r} is not host:port")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: list[str]) -> list[str]:
        """Checked here: uvicorn takes a malformed entry as a literal that never matches."""
        return [trusted_proxy(item) for item in value]

    @model_validator(mode="after")
    def _pooler_needs_postgres(self) -> Settings:
        if self.db_transaction_pooling:
            if not self.database_url.startswith("postgresql+asyncpg://"):
                raise ValueError(
                    "SHOP_DB_TRANSACTION_POOLING=true needs a postgresql+asyncpg:// "
                    "SHOP_DATABASE_URL (the pooler's address)."
                )
            if self.session_store == "sql" and self.session_cache and not self.database_direct_url:
                raise ValueError(
                    "SHOP_DB_TRANSACTION_POOLING=true: the web-session cache listens for "
                    "changes on a connection of its own, which a pooler in transaction mode "
                    "cannot give; set SHOP_DATABASE_DIRECT_URL to the database itself (or "
                    "SHOP_SESSION_CACHE=false)."
                )
        return self

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env == "production":
            if not self.secret_keys:
                raise ValueError("SHOP_ENV=production needs SHOP_SECRET_KEYS (comma-separated).")
            if any(len(key.get_secret_value()) < 32 for key in self.secret_keys):
                raise ValueError("SHOP_SECRET_KEYS: each key needs at least 32 characters.")
            if not self.cookie_secure:
                raise ValueError("SHOP_ENV=production refuses SHOP_COOKIE_SECURE=false.")
        return self

    @property
    def direct_database_url(self) -> str:
        """Where migrations and the cache's LISTEN go: past any pooler."""
        return self.database_direct_url or self.database_url

    def redis_sentinel_addresses(self) -> list[tuple[str, int]]:
        pairs = (item.rpartition(":") for item in self.redis_sentinels)
        return [(host, int(port)) for host, _, port in pairs]

    def signing_keys(self) -> list[str]:
        """The key ring; in development a key generated once and kept in a local file."""
        if self.secret_keys:
            return [key.get_secret_value() for key in self.secret_keys]
        if DEV_SECRET_FILE.exists():
            return [DEV_SECRET_FILE.read_text().strip()]
        key = secrets.token_urlsafe(48)
        DEV_SECRET_FILE.write_text(key + "\n")
        DEV_SECRET_FILE.chmod(0o600)
        logger.warning(
            "SHOP_SECRET_KEYS is not set: generated a development key in %s. "
            "Set SHOP_SECRET_KEYS in production.",
            DEV_SECRET_FILE,
        )
        return [key]


def trusted_proxy(item: str) -> str:
    """An address or a network (``10.0.0.0/8``) a proxy may connect from, in its usual form."""
    if item == "*":
        raise ValueError(
            "'*' would let every client choose its own address (and escape the per-address "
            "log-in limit); list the proxies' addresses or networks"
        )
    try:
        if "/" in item:
            return str(ipaddress.ip_network(item))
        return str(ipaddress.ip_address(item))
    except ValueError as exc:  # "... does not appear to be an IPv4 or IPv6 address"
        raise ValueError(f"not an IP address or network (CIDR): {exc}") from None
