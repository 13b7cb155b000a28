"""Making sure the services Darkroom needs answer: Redis, started locally by `darkroom up` when allowed."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from darkroom.settings import Settings, mask_url

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class ServiceError(RuntimeError):
    """A service is missing or refuses us; the message says what to do."""


def redis_answers(url: str, timeout: float = 2.0, *, master_name: str = "mymaster") -> bool:
    """Whether Redis (or, with a sentinel:// URL, the master the sentinels name) answers at ``url``."""
    from worker.broker import connect

    try:
        connect(url, master_name=master_name, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        return True
    except redis.AuthenticationError as exc:
        raise ServiceError(f"Redis at {mask_url(url)} refused the credentials ({exc}); "
                           "check the user name and password in DARKROOM_BROKER_URL") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ServiceError(f"Redis at {mask_url(url)} needs a password: put it in DARKROOM_BROKER_URL "
                               "as redis://:PASSWORD@host:port/0") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def ensure_redis(settings: Settings) -> subprocess.Popen | None:
    """Return when Redis answers at the broker URL; start a local ``redis-server`` if allowed.

    Returns the ``redis-server`` process when this call started one (the caller stops it), else None.
    """
    url = settings.redis_url
    if redis_answers(url, master_name=settings.sentinel_master):
        return None
    from worker.broker import is_sentinel

    if is_sentinel(url):
        raise ServiceError(f"no Redis master named {settings.sentinel_master!r} answers through the sentinels at "
                           f"{mask_url(url)}; check that they run and monitor it, or set DARKROOM_BROKER_URL and "
                           "DARKROOM_SENTINEL_MASTER")
    parts = urlsplit(url)
    if not settings.start_local_redis or parts.hostname not in LOCAL_HOSTS:
        raise ServiceError(f"no Redis answers at {mask_url(url)}; start it, or point DARKROOM_BROKER_URL at one")
    server = shutil.which("redis-server") or _install_redis()
    data = (settings.data_dir / "redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = parts.port or 6379
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
           "--appendonly", "yes", "--save", "", "--logfile", str(data / "redis.log")]
    if parts.password:
        # The password goes in a private config file: on the command line `ps` would show it.
        conf = data / "redis.conf"
        conf.write_text(f"requirepass {parts.password}\n")
        conf.chmod(0o600)
        cmd.insert(1, str(conf))
    log.info("starting a local redis-server on port %s (data in %s)", port, data)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if redis_answers(url, timeout=0.5):
            return proc
        if proc.poll() is not None:
            raise ServiceError(f"redis-server exited with code {proc.returncode}; see {data / 'redis.log'}")
        time.sleep(0.1)
    proc.terminate()
    raise ServiceError(f"redis-server did not answer on port {port} within 15 s; see {data / 'redis.log'}")


def _install_redis() -> str:
    apt = shutil.which("apt-get")
    if os.geteuid() == 0 and apt:
        log.info("redis-server is not installed; installing Debian's package redis-server")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([apt, "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL)
        done = subprocess.run([apt, "install", "-y", "-q", "redis-server"], env=env, stdout=subprocess.DEVNULL)
        server = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
        if done.returncode == 0 and server:
            return server
        raise ServiceError("installing redis-server with apt-get failed; install it by hand and run again")
    raise ServiceError(
        "no Redis answers and redis-server is not installed. Install it "
        "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis), "
        "or set DARKROOM_BROKER_URL to a Redis you have"
    )


def stop_redis(proc: subprocess.Popen | None, url: str) -> None:
    if proc is None:
        return
    from worker.broker import connect

    try:
        connect(url, socket_timeout=5).shutdown(nosave=False)
    except (redis.ConnectionError, redis.ResponseError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
