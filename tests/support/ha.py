"""A high-availability data stack for failover tests, made of the machine's own Debian packages:
a PostgreSQL primary with a synchronous streaming standby, PgBouncer in transaction pooling in
front of either, and a Redis master with a replica watched by three Sentinels.

Every part is the caller's own process, on free 127.0.0.1 ports (unix sockets, where any, in
the caller's directory), its files in the directory the caller gives; the machine's own
PostgreSQL (5432) and Redis (6379) are never touched. Each part is a context manager whose
exit kills whatever it started, however far its start got, and removes nothing outside that
directory.

PostgreSQL and PgBouncer refuse to run as root: run as root (as in CI containers), they run as
the ``postgres`` OS user on directories handed over to it, so the caller's directory must be
reachable by that user; pytest's ``tmp_path`` is not (``/tmp/pytest-of-root`` is 0700), and
``temporary_workdir()`` makes one that is.

    with temporary_workdir() as workdir, PostgresPair(workdir) as pair:
        pair.kill_primary()
        pair.promote()
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from redis import Redis
from redis.exceptions import RedisError

PGBOUNCER = "/usr/sbin/pgbouncer"
PATRONI = shutil.which("patroni") or "/usr/bin/patroni"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: who runs PostgreSQL and PgBouncer when we are root: both refuse to run as root
OS_USER = "postgres"
#: sun_path's size, less its NUL: a longer socket path cannot be bound
_SOCKET_PATH_MAX = 107

T = TypeVar("T")


# --- what is installed ----------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has a server in it."""
    found = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/postgres")
        if path.parent.name == "bin" and path.parent.parent.name.isdigit()
    ]
    return max(found, key=lambda bindir: int(bindir.parent.name), default=None)


def _os_user_missing() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"the {OS_USER} OS user is not there (it comes with postgresql-common)"
    return None


def postgres_missing() -> str | None:
    """Why a PostgresPair cannot run here, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL server is not installed (apt-get install postgresql)"
    return _os_user_missing()


def pgbouncer_missing() -> str | None:
    if not os.access(PGBOUNCER, os.X_OK):
        return "pgbouncer is not installed (apt-get install pgbouncer)"
    return _os_user_missing()


def redis_missing() -> str | None:
    if not os.access(REDIS_SERVER, os.X_OK):
        return "redis-server is not installed (apt-get install redis-server)"
    return None


@contextlib.contextmanager
def temporary_workdir(prefix: str = "ha-") -> Iterator[Path]:
    """A fresh directory that the ``postgres`` OS user can reach, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o711)  # others may pass through it, not list it
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- processes --------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1: all bound at once, so none comes twice
    (serving.free_port, called ``count`` times, could)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _as_os_user() -> dict[str, Any]:
    """subprocess arguments that run a program as OS_USER when we are root. Popen's own
    user switch rather than `runuser`, which would stay in between as the parent: the pid we
    get is the program's own."""
    if os.geteuid() != 0:
        return {}
    return {"user": OS_USER, "group": OS_USER, "extra_groups": []}


def _own(path: Path) -> Path:
    """Hand ``path`` (made by us) over to OS_USER, and check that OS_USER can reach it."""
    if os.geteuid() == 0:
        shutil.chown(path, OS_USER, OS_USER)
        reachable = subprocess.run(["test", "-w", str(path)], check=False, **_as_os_user())
        if reachable.returncode != 0:
            raise RuntimeError(
                f"the {OS_USER} OS user cannot reach {path}: one of the directories above it "
                "is closed to others (pytest's tmp_path is); use ha.temporary_workdir()"
            )
    return path


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables: nothing may redirect a client elsewhere."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def _run(
    args: list[str | Path], log: Path, *, as_os_user: bool = True, timeout: float = 120
) -> None:
    """Run a command to its end, its output appended to ``log``; the log's tail if it fails."""
    with log.open("ab") as output:
        result = subprocess.run(
            [str(arg) for arg in args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=_clean_env(),
            timeout=timeout,
            check=False,
            **(_as_os_user() if as_os_user else {}),
        )
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed ({result.returncode}):\n{_tail(log)}")


def _tail(log: Path, size: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-size:]
    return ""


def _wait_for(
    what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> T:
    """``check()``'s first truthy answer; exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as error:
            last = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s (last error: {last!r})")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    """Running, and not a zombie (PID 1 of a container may never reap what it inherits)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids_in(directory: Path) -> list[int]:
    """The live processes whose working directory is ``directory``: every process of a
    PostgreSQL cluster works in its data directory, so these are the cluster's."""
    found = []
    target = str(directory.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(proc / "cwd") == target and _alive(int(proc.name)):
                found.append(int(proc.name))
    return found


@dataclass
class Daemon:
    """A server in the foreground, as our child in a session of its own (a Ctrl-C meant for
    the test does not reach it: the test's cleanup stops it), its output in ``log``."""

    args: list[str]
    log: Path
    as_os_user: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=_clean_env(),
                cwd=self.log.parent,
                start_new_session=True,
                **(_as_os_user() if self.as_os_user else {}),
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_running(self) -> None:
        if not self.running():
            raise RuntimeError(f"{self.args} exited:\n{_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or said goodbye to."""
        if self.running():
            assert self.process is not None
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)


class _Stack:
    """start() under an ExitStack that unwinds what it began if it fails; stop() unwinds it
    all (safe to call twice); ``with`` does both."""

    _cleanup: contextlib.ExitStack | None = None

    def _start(self, stack: contextlib.ExitStack) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        with contextlib.ExitStack() as stack:
            self._start(stack)
            self._cleanup = stack.pop_all()
        return self

    def stop(self) -> None:
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --- PostgreSQL: a primary and a synchronous standby ------------------------------------------


@dataclass
class PostgresNode:
    """One PostgreSQL server: a data directory, a port."""

    name: str
    datadir: Path
    port: int
    log: Path

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split("\n")[0])
        return None


@dataclass
class PostgresPair(_Stack):
    """A primary and a streaming standby that it waits for on each commit
    (``synchronous_standby_names = 'standby'``): what a commit returned for is on the standby,
    so a failover loses nothing committed.

    ``primary`` and ``standby`` keep their names after ``promote()``, which makes the standby
    the one to write to (and returns its port)."""

    workdir: Path
    database: str = "shop"
    primary: PostgresNode = field(init=False)
    standby: PostgresNode = field(init=False)
    bindir: Path = field(init=False)
    base: Path = field(init=False)

    @property
    def primary_port(self) -> int:
        return self.primary.port

    @property
    def standby_port(self) -> int:
        return self.standby.port

    def url(self, port: int, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{port}/{self.database}"

    def multihost_url(self, driver: str = "postgresql+asyncpg") -> str:
        """Both servers in one URL: a client tries each, in order, and keeps the first that
        takes writes (SQLAlchemy's multihost form; every host needs its port)."""
        hosts = "&".join(f"host=127.0.0.1:{node.port}" for node in (self.primary, self.standby))
        return f"{driver}://postgres@/{self.database}?{hosts}&target_session_attrs=primary"

    def psql(self, port: int, sql: str, database: str | None = None) -> str:
        """Run ``sql`` (one statement, autocommit) on the server at ``port``; its output,
        unaligned, tuples only."""
        return _psql(self.bindir, port, database or self.database, sql)

    def kill_primary(self) -> None:
        """The primary crashes: SIGKILL to its postmaster, and to its children, which would
        otherwise go on their own a moment later (a host that dies takes them all at once)."""
        pid = self.primary.postmaster_pid()
        if pid is not None and pid in _pids_in(self.primary.datadir):  # not a stale pid
            os.kill(pid, signal.SIGKILL)
        for child in _pids_in(self.primary.datadir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _wait_for("the primary's processes to end", lambda: not _pids_in(self.primary.datadir), 10)

    def promote(self, timeout: float = 30) -> int:
        """Make the standby the primary; its port once it takes writes.

        It asks for no synchronous standby of its own: its configuration says
        ``synchronous_standby_names = ''`` from the start (a standby ignores the setting), so
        its commits do not wait for a standby it does not have, from its very first one. An
        ALTER SYSTEM and reload after promotion would leave a moment in which a commit could
        hang forever."""
        promote: list[str | Path] = [self.bindir / "pg_ctl", "promote", "-w"]
        promote += ["-t", str(int(timeout)), "-D", self.standby.datadir]
        _run(promote, self.standby.log.with_suffix(".pg_ctl.log"))
        _wait_for(
            "the promoted standby to take writes",
            lambda: self.psql(self.standby.port, "SELECT pg_is_in_recovery()") == "f",
            timeout,
        )
        names = self.psql(self.standby.port, "SHOW synchronous_standby_names")
        if names:
            raise RuntimeError(f"the new primary waits for standby {names!r}: commits would hang")
        return self.standby.port

    def wait_replayed(self, timeout: float = 10) -> None:
        """Until the standby has applied all the primary wrote so far: a synchronous commit
        waits for the standby to have the commit on disk, not to have applied it, so a read
        on the standby right after may not see it yet."""
        lsn = self.psql(self.primary.port, "SELECT pg_current_wal_lsn()")
        _wait_for(
            "the standby to replay the primary's WAL",
            lambda: (
                self.psql(self.standby.port, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") == "t"
            ),
            timeout,
        )

    # -- start and stop --

    def _start(self, stack: contextlib.ExitStack) -> None:
        bindir, missing = postgres_bindir(), postgres_missing()
        if bindir is None or missing:
            raise RuntimeError(missing)
        self.bindir = bindir
        self.base = _own(Path(tempfile.mkdtemp(prefix="postgres-", dir=self.workdir)))
        sockets = self.base / "sockets"
        sockets.mkdir()
        socket_dir = str(_own(sockets)) if _socket_fits(sockets) else ""  # else TCP only
        primary_port, standby_port = free_ports(2)
        self.primary = PostgresNode(
            "primary", self.base / "primary", primary_port, self.base / "primary.log"
        )
        self.standby = PostgresNode(
            "standby", self.base / "standby", standby_port, self.base / "standby.log"
        )

        _run(
            [
                self.bindir / "initdb",
                "-D", self.primary.datadir,
                "-U", "postgres",
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            self.base / "initdb.log",
        )  # fmt: skip
        _append(
            self.primary.datadir / "postgresql.conf",
            f"""
# the test harness (tests/support/ha.py)
listen_addresses = '127.0.0.1'
port = {primary_port}
unix_socket_directories = '{socket_dir}'
max_connections = 100
shared_buffers = 16MB
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
synchronous_commit = on
synchronous_standby_names = 'standby'
# what a killed postmaster wrote is still in the OS page cache: fsync guards against the
# machine going down, which no test does
fsync = off
""",
        )
        (self.primary.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        self._pg_ctl_start(self.primary, stack)
        # No standby yet to wait for: this one commit is the primary's alone.
        _psql(
            self.bindir,
            primary_port,
            "postgres",
            "SET synchronous_commit = local",
            f'CREATE DATABASE "{self.database}"',
        )

        _run(
            [
                self.bindir / "pg_basebackup",
                "-D", self.standby.datadir,
                "-d", f"host=127.0.0.1 port={primary_port} user=postgres application_name=standby",
                "-R",
                "-X", "stream",
                "-c", "fast",
                "--no-sync",
            ],
            self.base / "pg_basebackup.log",
        )  # fmt: skip
        _append(
            self.standby.datadir / "postgresql.conf",
            f"""
# the standby: these override the primary's settings above, copied with its files
port = {standby_port}
cluster_name = 'standby'
# ignored while a standby; once promoted, nothing to wait for (see PostgresPair.promote)
synchronous_standby_names = ''
""",
        )
        self._pg_ctl_start(self.standby, stack)
        _wait_for(
            "the standby to stream synchronously",
            lambda: (
                self.psql(
                    primary_port,
                    "SELECT sync_state FROM pg_stat_replication "
                    "WHERE application_name = 'standby' AND state = 'streaming'",
                )
                == "sync"
            ),
            30,
        )

    def _pg_ctl_start(self, node: PostgresNode, stack: contextlib.ExitStack) -> None:
        stack.callback(self._stop_node, node)
        _run(
            [self.bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", node.datadir, "-l", node.log],
            node.log.with_suffix(".pg_ctl.log"),
        )

    def _stop_node(self, node: PostgresNode) -> None:
        """Immediate shutdown, whatever the server's state (running, killed, half-started);
        SIGKILL for any process of it still there after. pg_ctl only while the postmaster is
        there: it signals the pid in postmaster.pid, which, once the postmaster is dead, may
        be another process's by now."""
        if node.postmaster_pid() in _pids_in(node.datadir):
            stop: list[str | Path] = [
                self.bindir / "pg_ctl",
                "stop",
                "-m",
                "immediate",
                "-w",
                "-t",
                "20",
            ]
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run([*stop, "-D", node.datadir], node.log.with_suffix(".pg_ctl.log"), timeout=30)
        for pid in _pids_in(node.datadir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            _wait_for(f"the {node.name}'s processes to end", lambda: not _pids_in(node.datadir), 10)


def _socket_fits(directory: Path) -> bool:
    return len(f"{directory}/.s.PGSQL.65535.lock") <= _SOCKET_PATH_MAX


def _append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


def _psql(bindir: Path, port: int, database: str, *statements: str, header: bool = False) -> str:
    """psql as a client, over TCP, the statements in one session; its output, unaligned,
    stripped: the rows only, or with ``header`` the column names first."""
    command = [str(bindir / "psql"), "-X", "-q", "-A", "-v", "ON_ERROR_STOP=1"]
    command += ["-P", "footer=off"] if header else ["-t"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", database]
    for statement in statements:
        command += ["-c", statement]
    result = subprocess.run(
        command, capture_output=True, text=True, env=_clean_env(), timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql on port {port}: {statements}: {result.stderr.strip()}")
    return result.stdout.strip()


# --- PgBouncer ----------------------------------------------------------------------------------


@dataclass
class PgBouncer(_Stack):
    """PgBouncer in transaction pooling on a port of its own, in front of database
    ``database`` at ``backend_host:backend_port``; trust, user postgres, who also runs the
    admin console (database ``pgbouncer``)."""

    workdir: Path
    backend_port: int
    database: str = "shop"
    backend_host: str = "127.0.0.1"
    pool_size: int = 20
    port: int = field(default_factory=lambda: free_ports(1)[0])
    directory: Path = field(init=False)
    daemon: Daemon = field(init=False)

    @property
    def ini(self) -> Path:
        return self.directory / "pgbouncer.ini"

    def url(self, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{self.database}"

    def admin(self, command: str) -> list[dict[str, str]]:
        """A command on the admin console (RELOAD, SHOW SERVERS, ...); the rows it shows."""
        bindir = postgres_bindir()
        assert bindir is not None
        lines = _psql(bindir, self.port, "pgbouncer", command, header=True).splitlines()
        if not lines:
            return []
        columns = lines[0].split("|")
        return [dict(zip(columns, line.split("|"), strict=True)) for line in lines[1:]]

    def retarget(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        """Send the database's clients to the server at ``host:port`` from their next
        transaction on; clients stay connected. RELOAD picks the new address up and marks
        the server connections to the old one for closing (RECONNECT does the same for an
        unchanged address); this waits until none is left."""
        old = (self.backend_host, self.backend_port)
        self.backend_host, self.backend_port = host, port
        self._write_ini()
        self.admin("RELOAD")
        self.admin(f"RECONNECT {self.database}")

        def retargeted() -> bool:
            databases = self.admin("SHOW DATABASES")
            target = next(row for row in databases if row["name"] == self.database)
            servers = self.admin("SHOW SERVERS")
            return (target["host"], int(target["port"])) == (host, port) and not any(
                (row["addr"], int(row["port"])) == old for row in servers
            )

        _wait_for(f"PgBouncer to leave {old[0]}:{old[1]}", retargeted, timeout)

    def restart(self) -> None:
        """A crash and a start on the same port: every client connection is cut."""
        self.daemon.kill()
        self._launch()

    def _write_ini(self) -> None:
        socket_dir = str(self.directory) if _socket_fits(self.directory) else ""
        self.ini.write_text(f"""\
[databases]
{self.database} = host={self.backend_host} port={self.backend_port} dbname={self.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {socket_dir}
auth_type = trust
auth_file = {self.directory / "userlist.txt"}
admin_users = postgres
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {self.directory / "pgbouncer.log"}
# retry a server that failed a second later, not 15 (the default)
server_login_retry = 1
server_connect_timeout = 5
""")

    def _launch(self) -> None:
        self.daemon.start()

        def ready() -> bool:
            self.daemon.check_running()
            return bool(self.admin("SHOW VERSION"))

        try:
            _wait_for("PgBouncer to answer", ready, 20)
        except Exception:
            self.daemon.kill()
            raise

    def _start(self, stack: contextlib.ExitStack) -> None:
        missing = pgbouncer_missing() or postgres_missing()  # its admin console takes psql
        if missing:
            raise RuntimeError(missing)
        self.directory = _own(Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=self.workdir)))
        (self.directory / "userlist.txt").write_text('"postgres" ""\n')
        self._write_ini()
        for path in self.directory.iterdir():
            _own(path)
        self.daemon = Daemon(
            [PGBOUNCER, str(self.ini)], self.directory / "pgbouncer.out", as_os_user=True
        )
        stack.callback(lambda: self.daemon.kill())
        self._launch()


# --- PostgreSQL under Patroni: two nodes and an etcd member ----------------------------------


@functools.cache
def patroni_missing() -> str | None:
    """Why a PatroniCluster cannot run here, or None. Debian's patroni takes its etcd v3
    client from python3-etcd, a package apt may have left out (patroni depends on any one of
    several DCS clients): the import is tried with the interpreter patroni runs on."""
    if not (os.access(PATRONI, os.X_OK) and os.access(ETCD, os.X_OK)):
        return "patroni or etcd is not installed (apt-get install patroni etcd-server python3-etcd)"
    interpreter = Path(PATRONI).read_text(errors="replace").partition("\n")[0].removeprefix("#!")
    check = subprocess.run(
        [*interpreter.split(), "-c", "import patroni.dcs.etcd3"],
        capture_output=True,
        env=_clean_env(),
        timeout=30,
        check=False,
    )
    if check.returncode != 0:
        error = check.stderr.decode(errors="replace").strip().rpartition("\n")[2]
        return f"patroni cannot talk to etcd v3: {error} (apt-get install python3-etcd)"
    return postgres_missing()


@dataclass
class PatroniNode:
    """One Patroni and the PostgreSQL it runs: a directory, a port, a REST API port."""

    name: str
    directory: Path
    port: int
    api_port: int
    daemon: Daemon = field(repr=False)

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class PatroniCluster(_Stack):
    """Two PostgreSQL servers run by Patroni, which keeps its leader key in one etcd member
    (its v3 API: etcd 3.4 turns the v2 API off by default) and fails over by itself when the
    leader goes.

    The settings, and why:

    - ``synchronous_mode: true``: the leader waits on each commit for the other node, and
      Patroni promotes only the node its ``/sync`` key names as that synchronous standby, so a
      failover loses nothing a commit returned for. Not ``synchronous_mode_strict``: with one
      node left, strict mode makes the new leader wait on every commit for a standby it will
      never have (``synchronous_standby_names = '*'``), so writes would not come back after a
      failover. Not strict, a leader whose standby has gone stops waiting for it, but only
      after taking it off ``/sync``: the standby, now behind, can no longer be promoted.
    - ``ttl`` 5, ``loop_wait`` 1, ``retry_timeout`` 2 s (Patroni's defaults: 30, 10, 10): a
      dead leader's key outlives it by ``ttl`` less the time since its last refresh (every
      ``loop_wait``), then the other node, woken by its watch on the key, promotes itself: a
      failover in about 5 s. Debian 12's Patroni (3.0) enforces no bounds (later releases
      document ``ttl`` >= 20 and ``retry_timeout`` >= 3: a failover would take some 20 s);
      the rule its documentation gives, ``loop_wait + 2 * retry_timeout <= ttl``, is kept, so
      a leader whose etcd requests are slow but retried within ``retry_timeout`` keeps its
      key; and etcd's shortest lease (2 s with its default heartbeat) is below ``ttl``.
    - ``watchdog`` off: no /dev/watchdog here, and nothing would be gained in one machine;
      its ``safety_margin`` -1 only stops the warning Patroni logs on every loop when its
      default margin (5 s) leaves less than two loops of the ``ttl``.
    - ``use_slots`` (the default): the leader keeps WAL for the other node while it is away.
    - ``--checkpoint=fast`` for pg_basebackup: a replica is made at once, not after a spread
      checkpoint.
    - ``fsync = off``: what a killed server wrote is still in the OS page cache; fsync guards
      against the machine going down, which no test does (as in PostgresPair).
    - trust for 127.0.0.1 (replication too) and the local socket, which is in the node's own
      directory; everything on 127.0.0.1, on free ports.

    Patroni runs PostgreSQL as its own user: run as root, both run as the ``postgres`` OS
    user. The database ``database`` is made on the first node once it leads, before the
    second node copies it."""

    workdir: Path
    database: str = "shop"
    ttl: int = 5
    loop_wait: int = 1
    retry_timeout: int = 2
    nodes: list[PatroniNode] = field(init=False, default_factory=list)
    bindir: Path = field(init=False)
    base: Path = field(init=False)
    etcd: Daemon = field(init=False)
    etcd_port: int = field(init=False)
    #: the node kill_leader_host() killed, if it did
    killed: PatroniNode | None = field(init=False, default=None)

    def url(self, port: int, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{port}/{self.database}"

    def multihost_url(self, driver: str = "postgresql+asyncpg") -> str:
        """Both nodes in one URL: a client tries each, in order, and keeps the first that
        takes writes (SQLAlchemy's multihost form; every host needs its port)."""
        hosts = "&".join(f"host=127.0.0.1:{node.port}" for node in self.nodes)
        return f"{driver}://postgres@/{self.database}?{hosts}&target_session_attrs=primary"

    def psql(self, port: int, sql: str, database: str | None = None) -> str:
        """Run ``sql`` (one statement, autocommit) on the server at ``port``; its output,
        unaligned, tuples only."""
        return _psql(self.bindir, port, database or self.database, sql)

    def node(self, name: str) -> PatroniNode:
        return next(node for node in self.nodes if node.name == name)

    def members(self) -> list[dict[str, Any]]:
        """The cluster as the first live Patroni's REST API shows it (GET /cluster): each
        member's name, role (leader, sync_standby, replica), state, port."""
        for node in self.nodes:
            if node.daemon.running():
                with contextlib.suppress(OSError, ValueError):
                    return list(_get_json(f"{node.api}/cluster")["members"])
        raise RuntimeError("no Patroni answers")

    def leader(self) -> PatroniNode:
        """The node that holds the leader key."""
        leaders = [member["name"] for member in self.members() if member["role"] == "leader"]
        if not leaders:
            raise RuntimeError("no node holds the leader key")
        return self.node(leaders[0])

    def kill_leader_host(self) -> PatroniNode:
        """The leader's host dies: SIGKILL to its Patroni and to every PostgreSQL process of
        it at once (killing PostgreSQL alone, Patroni would start it again where it was, and
        keep the leader key). The node killed."""
        node = self.leader()
        self.killed = node
        _kill_node(node)
        return node

    def wait_for_new_leader(self, timeout: float = 30) -> int:
        """The port of the node that leads after ``kill_leader_host()`` (or any leader, if
        none was killed), once Patroni calls it the primary and it takes writes."""

        def new_leader() -> int | None:
            for node in self.nodes:
                if node is self.killed or not node.daemon.running():
                    continue
                with contextlib.suppress(OSError, RuntimeError):
                    _get_json(f"{node.api}/primary")  # 200 only on the running primary
                    if self.psql(node.port, "SELECT pg_is_in_recovery()") == "f":
                        return node.port
            return None

        return _wait_for("a new Patroni leader that takes writes", new_leader, timeout, 0.1)

    def wait_replayed(self, timeout: float = 10) -> None:
        """Until every live replica has applied all the leader wrote so far: a synchronous
        commit waits for the standby to have it on disk, not to have applied it."""
        leader = self.leader()
        lsn = self.psql(leader.port, "SELECT pg_current_wal_lsn()")

        def replayed(port: int) -> bool:
            return self.psql(port, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") == "t"

        for node in self.nodes:
            if node is not leader and node.daemon.running():
                _wait_for(
                    f"{node.name} to replay the leader's WAL",
                    functools.partial(replayed, node.port),
                    timeout,
                )

    # -- start and stop --

    def _start(self, stack: contextlib.ExitStack) -> None:
        bindir, missing = postgres_bindir(), patroni_missing()
        if bindir is None or missing:
            raise RuntimeError(missing)
        self.bindir = bindir
        self.base = _own(Path(tempfile.mkdtemp(prefix="patroni-", dir=self.workdir)))
        scope = self.base.name  # the cluster's keys in etcd: /service/<scope>/
        etcd_port, peer_port, *ports = free_ports(6)
        self.etcd_port = etcd_port

        etcd_dir = self.base / "etcd"
        etcd_dir.mkdir()
        peer = f"http://127.0.0.1:{peer_port}"
        client = f"http://127.0.0.1:{etcd_port}"
        self.etcd = Daemon(
            [
                ETCD,
                "--name", "etcd",
                "--data-dir", str(etcd_dir / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"etcd={peer}",
                "--initial-cluster-state", "new",
                "--initial-cluster-token", scope,
            ],
            etcd_dir / "etcd.log",
        )  # fmt: skip
        stack.callback(lambda: self.etcd.kill())
        self.etcd.start()

        def etcd_healthy() -> bool:
            self.etcd.check_running()
            return str(_get_json(f"{client}/health").get("health")) == "true"

        _wait_for("etcd to answer", etcd_healthy, 20)

        for number, (port, api_port) in enumerate(
            zip(ports[::2], ports[1::2], strict=True), start=1
        ):
            name = f"node{number}"
            directory = self.base / name
            sockets = directory / "sockets"
            sockets.mkdir(parents=True)
            _own(directory)
            _own(sockets)
            config = directory / "patroni.yml"
            config.write_text(
                json.dumps(  # YAML's flow style: JSON is YAML
                    self._config(scope, name, directory, port, api_port, etcd_port, sockets),
                    indent=2,
                )
            )
            _own(config)
            daemon = Daemon([PATRONI, str(config)], directory / "patroni.log", as_os_user=True)
            self.nodes.append(PatroniNode(name, directory, port, api_port, daemon))

        first, second = self.nodes
        stack.callback(_kill_node, first)
        first.daemon.start()
        _wait_for(f"{first.name} to bootstrap and lead", lambda: self._leads(first), 60, 0.2)
        # The only node yet: nothing to wait for, and Patroni asks for no synchronous standby.
        _psql(self.bindir, first.port, "postgres", f'CREATE DATABASE "{self.database}"')

        stack.callback(_kill_node, second)
        second.daemon.start()
        _wait_for(
            f"{second.name} to stream as the synchronous standby",
            lambda: self._sync_standby(first, second),
            60,
            0.2,
        )

    def _config(
        self,
        scope: str,
        name: str,
        directory: Path,
        port: int,
        api_port: int,
        etcd_port: int,
        sockets: Path,
    ) -> dict[str, Any]:
        socket_dir = str(sockets) if _socket_fits(sockets) else ""  # else TCP only
        return {
            "scope": scope,
            "name": name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{api_port}",
                "connect_address": f"127.0.0.1:{api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": self.retry_timeout,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": False,
                    "postgresql": {
                        "use_pg_rewind": False,
                        "use_slots": True,
                        "parameters": {
                            "max_connections": 100,
                            "max_wal_senders": 5,
                            "max_replication_slots": 5,
                            "wal_level": "replica",
                            "hot_standby": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "no-sync"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{port}",
                "connect_address": f"127.0.0.1:{port}",
                "data_dir": str(directory / "data"),
                "bin_dir": str(self.bindir),
                "pgpass": str(directory / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                },
                "parameters": {
                    "unix_socket_directories": socket_dir,
                    "shared_buffers": "16MB",
                    "fsync": "off",
                },
                "pg_hba": [
                    "local all all trust",
                    "local replication all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "basebackup": [{"checkpoint": "fast"}],
            },
            "watchdog": {"mode": "off", "safety_margin": -1},
        }

    def _leads(self, node: PatroniNode) -> bool:
        node.daemon.check_running()
        _get_json(f"{node.api}/primary")
        return _psql(self.bindir, node.port, "postgres", "SELECT pg_is_in_recovery()") == "f"

    def _sync_standby(self, leader: PatroniNode, standby: PatroniNode) -> bool:
        """Patroni names ``standby`` the synchronous standby (``/sync``), and the leader's
        PostgreSQL sees it streaming as one."""
        for node in (leader, standby):
            node.daemon.check_running()
        roles = {member["name"]: member["role"] for member in self.members()}
        state = _psql(
            self.bindir,
            leader.port,
            "postgres",
            "SELECT sync_state FROM pg_stat_replication "
            f"WHERE application_name = '{standby.name}' AND state = 'streaming'",
        )
        return roles.get(standby.name) == "sync_standby" and state == "sync"


def _kill_node(node: PatroniNode) -> None:
    """SIGKILL to a node's Patroni (its process group: anything it forked) and to every
    PostgreSQL process in its data directory (Patroni starts the postmaster in a session of
    its own), all before waiting for any."""
    pids = _pids_in(node.datadir)
    if node.daemon.running():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.daemon.pid, signal.SIGKILL)
    for pid in pids + _pids_in(node.datadir):  # and any the postmaster forked meanwhile
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.daemon.kill()  # reaps it
    with contextlib.suppress(TimeoutError):
        _wait_for(f"{node.name}'s processes to end", lambda: not _pids_in(node.datadir), 10)


def _get_json(url: str, timeout: float = 2) -> dict[str, Any]:
    """GET ``url``'s JSON; an HTTPError (an OSError) for any status but 200."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return dict(json.load(response))


# --- Redis: a master, a replica, three Sentinels -----------------------------------------------


@dataclass
class RedisSentinels(_Stack):
    """A Redis master and its replica, watched by three Sentinels (quorum 2) that fail over
    a second after the master stops answering. No persistence: what the replica has is all."""

    workdir: Path
    service_name: str = "ha"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    directory: Path = field(init=False)
    servers: dict[int, Daemon] = field(init=False, default_factory=dict)
    sentinel_daemons: list[Daemon] = field(init=False, default_factory=list)
    sentinel_ports: list[int] = field(init=False, default_factory=list)
    killed: tuple[str, int] | None = field(init=False, default=None)

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.sentinel_ports]

    def master_address(self) -> tuple[str, int]:
        """The master, as the first Sentinel that answers names it."""
        for address in self.sentinels:
            with contextlib.suppress(RedisError), _client(address) as sentinel:
                found = sentinel.sentinel_get_master_addr_by_name(self.service_name)
                if found:
                    return str(found[0]), int(found[1])
        raise RuntimeError(f"no Sentinel names a master for {self.service_name!r}")

    def kill_master(self) -> tuple[str, int]:
        """SIGKILL the current master's redis-server; its address."""
        address = self.master_address()
        self.servers[address[1]].kill()
        self.killed = address
        return address

    def wait_for_failover(self, timeout: float = 15) -> tuple[str, int]:
        """The new master's address, once it says it is a master (ROLE) and every Sentinel
        names it, in a settled state: while a Sentinel still flags the master down or the
        failover in progress, Sentinel clients (redis-py's ``master_for``) refuse its
        answer, though GET-MASTER-ADDR-BY-NAME names the new master already. "The old
        master" is the one ``kill_master()`` killed, or else the current one."""
        old = self.killed or self.master_address()
        unsettled = {"s_down", "o_down", "failover_in_progress", "disconnected"}

        def new_master() -> tuple[str, int] | None:
            named = set()
            for address in self.sentinels:
                with _client(address) as sentinel:
                    state = sentinel.sentinel_master(self.service_name)
                flags = state["flags"]  # a string in RESP2, a set in RESP3
                flags = set(flags.split(",")) if isinstance(flags, str) else set(flags)
                if "master" not in flags or flags & unsettled:
                    return None
                named.add((str(state["ip"]), int(state["port"])))
            if len(named) != 1 or old in named:
                return None
            (candidate,) = named
            with _client(candidate) as server:
                return candidate if server.execute_command("ROLE")[0] == "master" else None

        return _wait_for(f"a Sentinel failover away from {old}", new_master, timeout, 0.1)

    def _server(self, port: int, *extra: str) -> Daemon:
        data = self.directory / f"redis-{port}"
        data.mkdir()
        daemon = Daemon(
            [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(data),
                "--save", "",
                "--appendonly", "no",
                # a replica's full sync starts at once, not after 5 s waiting for others
                "--repl-diskless-sync-delay", "0",
                *extra,
            ],
            data / "redis.log",
        )  # fmt: skip
        self.servers[port] = daemon
        daemon.start()
        return daemon

    def _start(self, stack: contextlib.ExitStack) -> None:
        missing = redis_missing()
        if missing:
            raise RuntimeError(missing)
        self.directory = Path(tempfile.mkdtemp(prefix="redis-", dir=self.workdir))
        master_port, replica_port, *self.sentinel_ports = free_ports(5)
        stack.callback(self._kill_all)

        master = self._server(master_port)
        _wait_for("the Redis master", lambda: _ping(master, master_port), 10)
        replica = self._server(replica_port, "--replicaof", "127.0.0.1", str(master_port))

        def replicating() -> bool:
            _ping(replica, replica_port)
            with _client(("127.0.0.1", replica_port)) as client:
                return bool(client.info("replication")["master_link_status"] == "up")

        _wait_for("the Redis replica to sync", replicating, 10)

        for port in self.sentinel_ports:
            home = self.directory / f"sentinel-{port}"
            home.mkdir()
            conf = home / "sentinel.conf"  # Sentinel rewrites it: its state lives there
            conf.write_text(f"""\
port {port}
bind 127.0.0.1
dir {home}
sentinel monitor {self.service_name} 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds {self.service_name} {self.down_after_ms}
sentinel failover-timeout {self.service_name} {self.failover_timeout_ms}
sentinel parallel-syncs {self.service_name} 1
""")
            daemon = Daemon([REDIS_SERVER, str(conf), "--sentinel"], home / "sentinel.log")
            self.sentinel_daemons.append(daemon)
            daemon.start()

        def all_see_everyone() -> bool:
            for daemon, address in zip(self.sentinel_daemons, self.sentinels, strict=True):
                daemon.check_running()
                with _client(address) as sentinel:
                    state = sentinel.sentinel_master(self.service_name)
                    if not (
                        state["is_master"]
                        and not state["is_sdown"]
                        and state["num-slaves"] == 1
                        and state["num-other-sentinels"] == len(self.sentinels) - 1
                    ):
                        return False
            return True

        # Sentinels find the replica from the master's INFO, each other from hellos sent
        # every 2 s: a failover needs a majority of Sentinels that know each other.
        _wait_for(
            "the Sentinels to see the master, the replica and each other", all_see_everyone, 20
        )

    def _kill_all(self) -> None:
        for daemon in [*self.sentinel_daemons, *self.servers.values()]:
            daemon.kill()


def _client(address: tuple[str, int]) -> Redis:
    return Redis(
        host=address[0],
        port=address[1],
        socket_timeout=2,
        socket_connect_timeout=2,
        decode_responses=True,
    )


def _ping(daemon: Daemon, port: int) -> bool:
    daemon.check_running()
    with _client(("127.0.0.1", port)) as client:
        return bool(client.ping())
