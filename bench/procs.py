"""Processes, memory and the machine, read from /proc (psutil when installed)."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children()]
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def status_kb(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``); None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of ``pid`` since it started (VmHWM), in MiB."""
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024.0


def rss_mb(pid: int) -> float | None:
    kb = status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024.0


def worker_children_peak_rss(pid: int) -> dict[int, float]:
    """pid -> peak RSS (MiB) of each child of a Celery worker's main process."""
    out = {}
    for child in children(pid):
        peak = peak_rss_mb(child)
        if peak is not None:
            out[child] = round(peak, 1)
    return out


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int | None:
    """Stop a process started with ``start_new_session=True`` (its whole group), waiting for it."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(30)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def gpus() -> list[str]:
    """GPUs TensorFlow sees (imports TensorFlow)."""
    try:
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception as exc:  # noqa: BLE001
        return [f"unknown ({type(exc).__name__})"]


def redis_db_url(base: str, db: int) -> str:
    """``base`` (redis://host:port[/n]) with its database set to ``db``; db 0 is refused."""
    if db == 0:
        raise ValueError("the benchmark never uses (or flushes) Redis database 0; pick another")
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{db}"))


def flush_redis(url: str) -> None:
    import redis

    parts = urlsplit(url)
    db = int((parts.path or "/0").lstrip("/") or 0)
    if db == 0:
        raise ValueError("refusing to flush Redis database 0")
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    client.ping()
    client.flushdb()
    client.close()


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def base_env() -> dict[str, str]:
    """The environment for the systems' subprocesses: no DARKROOM_* from the caller, quiet TF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARKROOM_", "NAIVE_"))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _proc_cpu_ticks(pid: int, with_children: bool = True) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rfind(")") + 2:].split()
    # fields[11..14] = utime, stime, cutime, cstime (man 5 proc: fields 14-17)
    values = [int(v) for v in fields[11:15]]
    return sum(values) if with_children else values[0] + values[1]


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    parts = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def _own_ticks() -> int:
    """CPU ticks of this process and every process it started (reaped ones included, via cutime)."""
    me = os.getpid()
    return _proc_cpu_ticks(me) + sum(_proc_cpu_ticks(pid) for pid in descendants(me))


class ForeignLoad:
    """How much of the machine's CPU processes outside this benchmark used during a window
    (another test suite, a build...): a fraction of all cores, 0 on a quiet machine."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        try:
            self._busy, self._total = _machine_ticks()
            self._own = _own_ticks()
        except (OSError, ValueError):
            self._total = None

    def stop(self) -> float | None:
        if self._total is None:
            return None
        try:
            busy, total = _machine_ticks()
            own = _own_ticks()
        except (OSError, ValueError):
            return None
        if total <= self._total:
            return None
        foreign = (busy - self._busy) - (own - self._own)
        return round(max(0.0, foreign / (total - self._total)), 3)
