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


def test_version(tmp_path: Path) -> None:
    result = shop(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("shop 0.")


def test_a_configuration_error_names_the_variable(tmp_path: Path) -> None:
    result = shop(tmp_path, "db", "upgrade", SHOP_ENV="prod")
    assert result.returncode == 2
    assert "SHOP_ENV" in result.stderr and "Traceback" not in result.stderr


def test_a_database_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    refused = "postgresql+asyncpg://shop:secret@127.0.0.1:1/shop"
    for args in (("db", "upgrade"), ("serve",), ("seed", "--demo")):
        result = shop(tmp_path, *args, SHOP_DATABASE_URL=refused)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("shop: the database at postgresql+asyncpg://shop:***@")
        assert "secret" not in result.stderr and "Traceback" not in result.stderr
    missing = f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'shop.db'}"
    result = shop(tmp_path, "db", "upgrade", SHOP_DATABASE_URL=missing)
    assert result.returncode == 1 and "no folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_are_quiet_unless_asked(tmp_path: Path) -> None:
    quiet = shop(tmp_path, "db", "upgrade")
    assert quiet.stderr == "" and quiet.stdout.strip() == "database schema is up to date"
    verbose = shop(tmp_path, "-v", "db", "upgrade")
    assert "INFO" in verbose.stderr


def test_a_memory_store_with_several_workers_is_refused(tmp_path: Path) -> None:
    result = shop(tmp_path, "serve", "--workers", "2", SHOP_SESSION_STORE="memory")
    assert result.returncode == 2
    assert "SHOP_SESSION_STORE=memory" in result.stderr and "--workers 2" in result.stderr


def test_make_run_takes_the_port_and_host() -> None:
    root = Path(__file__).resolve().parents[2]
    dry = subprocess.run(
        ["make", "-n", "run", "PORT=8123", "HOST=0.0.0.0"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "serve --host 0.0.0.0 --port 8123" in dry.stdout


def test_admin_create(tmp_path: Path) -> None:
    import sqlite3

    created = shop(
        tmp_path, "admin", "create", "--email", "Boss@Example.com", "--password", "x" * 12
    )
    assert created.returncode == 0 and "boss@example.com" in created.stdout
    again = shop(tmp_path, "admin", "create", "--email", "boss@example.com", "--password", "y" * 12)
    assert again.returncode == 0  # the same administrator, with the new password
    with sqlite3.connect(tmp_path / "shop.db") as database:
        rows = database.execute("SELECT email, role FROM users").fetchall()
    assert rows == [("boss@example.com", "admin")]
    refused = shop(tmp_path, "admin", "create", "--email", "boss", "--password", "x" * 12)
    assert refused.returncode == 2 and "email" in refused.stderr


#: imported by every Python process started with it on PYTHONPATH: a worker process (started
#: by uvicorn's supervisor with multiprocessing) takes 7 s to start, as on a crowded host
SLOW_WORKER = """
import sys, time
if "--multiprocessing-fork" in sys.argv:
    time.sleep(7)
"""


def test_workers_slower_to_start_than_uvicorns_5_s_are_waited_for(tmp_path: Path) -> None:
    """uvicorn's default restarts a worker that has not answered its supervisor within 5 s,
    and the restarted one starts over: on a busy host, a restart loop that never serves."""
    startup = tmp_path / "startup"
    startup.mkdir()
    (startup / "sitecustomize.py").write_text(SLOW_WORKER)
    env = shop_env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", PYTHONPATH=str(startup))
    server = shop_server(tmp_path, env, workers=2)
    server.start(timeout=45)
    try:
        for _ in range(10):
            assert httpx.get(server.health_url, timeout=5).status_code == 200
    finally:
        server.stop()
    log = server.log.read_text()
    assert "died" not in log and log.count("Started server process") == 2, log[-2000:]
