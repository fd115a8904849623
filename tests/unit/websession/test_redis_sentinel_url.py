"""RedisStore.from_sentinels: the host comes from the Sentinels, the rest from ``url``."""

from __future__ import annotations

import pytest

from fastapi_atomic.websession.stores.redis import RedisStore


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://shop:s3cret@/2", {"db": 2, "username": "shop", "password": "s3cret"}),
        ("redis://:s3cret@/0", {"db": 0, "password": "s3cret"}),
        ("redis:///5", {"db": 5}),
    ],
)
async def test_the_urls_database_and_credentials_reach_the_masters_connections(
    url: str, expected: dict[str, object]
) -> None:
    store = RedisStore.from_sentinels([("127.0.0.1", 26379)], "shop", url=url)
    try:
        kwargs = store.redis.connection_pool.connection_kwargs
        assert {key: kwargs.get(key) for key in expected} == expected
        if "username" not in expected:
            assert kwargs.get("username") is None
    finally:
        await store.redis.aclose()


async def test_without_a_url_the_master_is_database_0_without_credentials() -> None:
    store = RedisStore.from_sentinels([("127.0.0.1", 26379)], "shop")
    try:
        kwargs = store.redis.connection_pool.connection_kwargs
        assert kwargs.get("db", 0) == 0
        assert kwargs.get("password") is None and kwargs.get("username") is None
    finally:
        await store.redis.aclose()
