"""The shop deployed over several hosts, for tests and by hand: a fresh PostgreSQL database,
N `shop serve --workers 2` on distinct loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux
routes all of 127/8 to lo, so each is a host of its own as far as sockets go), the card
gateway simulator, and Debian's nginx in front, round-robin over the hosts with keep-alive
connections to them. The hosts share the database, the web-session store (SQL, or Redis under
a key prefix of the deployment's own) and the signing keys, as hosts behind one proxy must.

Everything is the caller's own: the database is created under a unique name and dropped, the
Redis keys under the prefix deleted, the processes stopped (their workers too) and the
temporary files left in the caller's directory, however the caller ends.

By hand (Ctrl-C stops it and cleans up)::

    .venv/bin/python tests/support/deployment.py [--store redis] [--hosts 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from postgres_admin import create_database, drop_database
from redis import Redis
from serving import ADMIN, SHOP, Process, base_url, fake_gateway, shop_env
from sqlalchemy.engine import make_url

NGINX = "/usr/sbin/nginx"
NGINX_MISSING = "nginx is not installed (apt-get install nginx)"
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: what nginx's connections to the hosts come from: the one proxy the hosts believe
PROXY_ADDRESS = "127.0.0.1"


@dataclass
class Host:
    """One `shop serve` on an address of its own."""

    address: str
    port: int
    process: Process

    @property
    def netloc(self) -> str:
        """As nginx names it in ``$upstream_addr``."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return base_url(self.process)

    def worker_pids(self) -> set[int]:
        """The worker processes: the children of `shop serve` that hold its listening socket
        (not multiprocessing's resource tracker, a child too)."""
        assert self.process.process is not None
        listening = _socket_inode((self.address, self.port), ("0.0.0.0", 0))
        return {
            pid
            for pid in _children(self.process.process.pid)
            if listening is not None and _holds(pid, listening)
        }

    def worker_serving(self, response: httpx.Response) -> int | None:
        """The pid of the worker at the other end of the (still open) connection that brought
        ``response``, sent straight to this host: which process answered, seen from the
        kernel's socket table, since no answer names its process."""
        stream = response.extensions["network_stream"]
        client = stream.get_extra_info("client_addr")
        inode = _socket_inode((self.address, self.port), (client[0], client[1]))
        if inode is None:
            return None
        return next((pid for pid in self.worker_pids() if _holds(pid, inode)), None)


@dataclass
class Deployment:
    url: str  #: nginx: where clients go
    hosts: list[Host]
    gateway_url: str
    database_url: str
    store: str
    redis_prefix: str | None
    proxy: Process
    workdir: Path
    env: dict[str, str] = field(repr=False)

    def charges(self) -> list[dict[str, int | str]]:
        """Every charge the card gateway made: ``{idempotency_key, amount}``."""
        response = httpx.get(f"{self.gateway_url}/v1/charges", timeout=10)
        response.raise_for_status()
        result: list[dict[str, int | str]] = response.json()
        return result


def nginx_missing() -> bool:
    return not os.access(NGINX, os.X_OK)


@contextlib.contextmanager
def deployment(
    workdir: Path,
    *,
    store: str = "sql",
    hosts: int = 2,
    workers: int = 2,
    gateway_latency_ms: int = 0,
    postgres_url: str = POSTGRES_URL,
    redis_url: str = REDIS_URL,
    **settings: str,
) -> Iterator[Deployment]:
    """Bring a deployment up in ``workdir``; take it down, and everything it made, at the end.

    ``settings`` are more SHOP_* variables for every host."""
    if nginx_missing():
        raise RuntimeError(NGINX_MISSING)
    with contextlib.ExitStack() as cleanup:
        database_url = _database(postgres_url, cleanup)
        redis_prefix = None
        extra = dict(settings)
        if store == "redis":
            redis_prefix = f"test:deploy:{uuid.uuid4().hex[:10]}:"
            cleanup.callback(_delete_keys, redis_url, redis_prefix)
            extra |= {"SHOP_REDIS_URL": redis_url, "SHOP_REDIS_PREFIX": redis_prefix}

        gateway = fake_gateway(workdir, gateway_latency_ms)
        cleanup.callback(gateway.kill)  # one process, no state worth a drain
        env = shop_env(
            database_url,
            SHOP_SESSION_STORE=store,
            SHOP_PAYMENT_GATEWAY=base_url(gateway),
            SHOP_ADMIN_EMAIL=ADMIN["email"],
            SHOP_ADMIN_PASSWORD=ADMIN["password"],
            # hosts x workers pools share one PostgreSQL with whoever else is testing
            SHOP_DB_POOL_SIZE="5",
            **extra,
        )
        _shop(["db", "upgrade"], env, workdir)  # once, before any host starts

        servers = []
        for number in range(hosts):
            address = f"127.0.0.{number + 2}"
            port = _free_port(address)
            command = [SHOP, "serve", "--host", address, "--port", str(port)]
            command += ["--workers", str(workers), "--forwarded-allow-ips", PROXY_ADDRESS]
            process = Process(command, env, workdir, f"http://{address}:{port}/healthz")
            process.log = workdir / f"host-{address}.log"
            cleanup.callback(_stop_with_workers, process)
            servers.append(Host(address, port, process))

        proxy_port = _free_port(PROXY_ADDRESS)
        config = _nginx_config(workdir / "nginx", proxy_port, [host.netloc for host in servers])
        proxy = Process(
            [NGINX, "-p", str(config.parent), "-c", str(config), "-e", "error.log"],
            env,
            workdir,
            f"http://{PROXY_ADDRESS}:{proxy_port}/healthz",
        )
        proxy.log = workdir / "nginx.log"
        cleanup.callback(proxy.stop)  # SIGTERM: nginx's fast shutdown

        # One host after the other: uvicorn kills a worker that does not answer its health
        # check within 5 s, and a worker busy importing the shop on a crowded CPU may not.
        with ThreadPoolExecutor(1) as pool:
            gateway_started = pool.submit(gateway.start)
            for host in servers:
                host.process.start(timeout=60)
                _wait_for_workers(host, workers)  # it answers once one worker is up
            gateway_started.result()
        proxy.start()
        yield Deployment(
            base_url(proxy),
            servers,
            base_url(gateway),
            database_url,
            store,
            redis_prefix,
            proxy,
            workdir,
            env,
        )


def _wait_for_workers(host: Host, workers: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while host.process.log.read_text().count("Application startup complete.") < workers:
        if time.monotonic() > deadline:
            log = host.process.log.read_text()[-2000:]
            raise RuntimeError(f"{host.netloc}: {workers} workers not up in {timeout} s:\n{log}")
        time.sleep(0.1)


def _shop(arguments: list[str], env: dict[str, str], cwd: Path) -> None:
    subprocess.run([SHOP, *arguments], env=env, cwd=cwd, check=True, timeout=120)


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _database(postgres_url: str, cleanup: contextlib.ExitStack) -> str:
    """A new, empty database on the server of ``postgres_url``, dropped at cleanup."""
    name = f"deploy_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_database(postgres_url, name))
    cleanup.callback(lambda: asyncio.run(drop_database(postgres_url, name)))
    return url


def _delete_keys(redis_url: str, prefix: str) -> None:
    """The deployment's Redis keys, and only those."""
    with Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def _socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket ``local`` <-> ``remote`` in /proc/net/tcp."""

    def parse(field: str) -> tuple[str, int]:
        address, port = field.split(":")
        return socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)

    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        columns = line.split()
        if parse(columns[1]) == local and parse(columns[2]) == remote:
            return int(columns[9])
    return None


def _holds(pid: int, inode: int) -> bool:
    """Whether process ``pid`` has the socket ``inode`` open."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return True
    return False


def _stop_with_workers(process: Process) -> None:
    """SIGTERM to `shop serve`, which drains its workers; any worker left then is killed,
    so that none outlives the deployment holding its port."""
    if process.process is None:
        return
    workers: set[int] = set()
    with contextlib.suppress(OSError):
        workers = _children(process.process.pid)
    process.stop()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _nginx_config(directory: Path, port: int, upstreams: list[str]) -> Path:
    """nginx as the test's own process: in the foreground, every file it writes in
    ``directory``; round-robin over ``upstreams``, keep-alive connections to them. Each answer
    names the host that served it (``X-Upstream``)."""
    directory.mkdir()
    servers = "\n".join(f"        server {upstream};" for upstream in upstreams)
    # The master runs as root in CI containers: its workers would then be `nobody`, who cannot
    # enter the test's private temporary directory.
    user = "user root root;" if os.geteuid() == 0 else ""
    config = directory / "nginx.conf"
    config.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    log_format upstream '$remote_addr "$request" $status $upstream_addr';
    access_log {directory}/access.log upstream;
    upstream shop {{
{servers}
        keepalive 16;
    }}
    server {{
        listen {PROXY_ADDRESS}:{port};
        location / {{
            proxy_pass http://shop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
""")
    return config


def main() -> None:
    """Bring a deployment up and keep it until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sql", "redis"], default="sql")
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gateway-latency-ms", type=int, default=0)
    arguments = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="shop-deployment-") as workdir,
        deployment(
            Path(workdir),
            store=arguments.store,
            hosts=arguments.hosts,
            workers=arguments.workers,
            gateway_latency_ms=arguments.gateway_latency_ms,
        ) as shop,
    ):
        print(f"shop:     {shop.url}  (administrator {ADMIN['email']} / {ADMIN['password']})")
        for host in shop.hosts:
            print(f"host:     {host.url}  log {host.process.log}")
        print(f"gateway:  {shop.gateway_url}  (GET /v1/charges lists the charges)")
        print(f"database: {make_url(shop.database_url).database}  sessions: {shop.store}")
        print("Ctrl-C stops everything and removes the database.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
