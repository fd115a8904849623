"""The `shop` command as an operator uses it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from serving import SHOP, shop_env, shop_server


def shop(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOP, *args],
        cwd=workdir,
        env=shop_env(f"sqlite+aiosqlite:///{workdir / 'shop.db'}", **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_upgrade_and_seed_are_idempotent(tmp_path: Path) -> None:
    assert shop(tmp_path, "db", "upgrade").returncode == 0
    assert shop(tmp_path, "db", "upgrade").stdout.strip() == "database schema is up to date"
    first = shop(tmp_path, "seed", "--demo")
    assert first.returncode == 0 and "created product MUG-001" in first.stdout
    again = shop(tmp_path, "seed", "--demo")
    assert again.stdout.strip() == "demo data already present"


def test_sessions_purge_deletes_expired_sessions(tmp_path: Path) -> None:
    env = {"SHOP_SESSION_IDLE_TIMEOUT": "1"}
    assert shop(tmp_path, "seed", "--demo").returncode == 0
    server = shop_server(tmp_path, shop_env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", **env))
    server.start()
    try:
        base = server.health_url.removesuffix("/healthz")
        login = httpx.post(
            f"{base}/api/session", json={"email": "demo@example.com", "password": "demo-password"}
        )
        assert login.status_code == 200
    finally:
        server.stop()
    import time

    time.sleep(1.2)
    purged = shop(tmp_path, "sessions", "purge", **env)
    assert purged.returncode == 0
    assert purged.stdout.strip() == "1 expired web sessions deleted"
    assert shop(tmp_path, "sessions", "purge", **env).stdout.startswith("0 ")


def test_production_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    result = subprocess.run(
        [SHOP, "serve", "--port", "1"],
        cwd=tmp_path,
        env={
            **shop_env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"),
            "SHOP_ENV": "production",
            "SHOP_SECRET_KEYS": "",
            "SHOP_COOKIE_SECURE": "true",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "needs SHOP_SECRET_KEYS" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_refuses_insecure_cookies(tmp_path: Path) -> None:
    result = shop(tmp_path, "serve", SHOP_ENV="production", SHOP_COOKIE_SECURE="false")
    assert result.returncode == 2
    assert "SHOP_COOKIE_SECURE=false" in result.stderr


def test_reconcile_refuses_the_in_process_simulator(tmp_path: Path) -> None:
    result = shop(tmp_path, "payments", "reconcile")
    assert result.returncode == 2
    assert "shop fake-gateway" in result.stderr
