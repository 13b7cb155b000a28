"""Time from a worker host's death to its runs being taken over, with the heartbeat settings of the
environment (DARKROOM_HEARTBEAT_SECONDS / _HEARTBEAT_TTL, default 10 / 30 s) and a reconciler that
turns every DARKROOM_RECONCILE_SECONDS (30 s), as the watcher's does.

    sudo .venv/bin/python scripts/takeover_time.py [--photos 6] [--first-turn 0]

A real `darkroom worker` runs in PID, mount and UTS namespaces of its own (a "host" this process
cannot see in /proc; needs root and unshare), on a private redis-server and a SQLite store in a temp
folder. Once it holds a run it is killed with -9, all of it; the reconciler's first turn comes
--first-turn seconds after the kill, then one every RECONCILE_SECONDS, until a turn takes the runs
over. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6, help="large photos to register (normalize runs)")
    parser.add_argument("--first-turn", type=float, default=0.0, help="seconds from the kill to the first turn")
    args = parser.parse_args()

    from PIL import Image

    from darkroom.settings import Settings
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate
    from tests import photos as pictures
    from tests import test_liveness as liveness
    from tests.harness import PrivateRedis
    from worker.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-takeover-"))
    redis = PrivateRedis(tmp / "redis")
    host = None
    try:
        settings = Settings(data_dir=tmp / "data", broker_url=redis.url(), tasks=["normalize"])
        migrate(make_engine(settings.db_url))
        registrar = Registrar(settings=settings, app=create_app(settings), roots=[])
        reconciler = Reconciler(registrar)
        reconciler.check()
        source = pictures.write_jpeg(pictures.shipped("astronaut"), tmp / "astronaut.jpg")
        paths = []
        for i in range(args.photos):
            paths.append(tmp / f"big-{i}.jpg")
            Image.open(source).resize((2400 + 8 * i, 2400)).save(paths[-1], quality=90)
        env = liveness._worker_env(registrar, tmp)
        for name in ("DARKROOM_HEARTBEAT_SECONDS", "DARKROOM_HEARTBEAT_TTL"):
            env.pop(name)
            if name in os.environ:
                env[name] = os.environ[name]
        host = liveness._in_namespace([sys.executable, "-m", "darkroom", "worker", "--concurrency", "1"], env,
                                      tmp / "worker.log")
        registrar.register_many(paths)
        while not any(r.status == "running" for r in liveness._runs(registrar)):
            if host.poll() is not None:
                raise SystemExit((tmp / "worker.log").read_text()[-3000:])
            time.sleep(0.02)
        liveness._kill(host)
        died = time.monotonic()
        turn = died + args.first_turn
        while True:
            time.sleep(max(0.0, turn - time.monotonic()))
            result = reconciler.check()
            if result.taken_over:
                break
            turn += settings.reconcile_seconds
        print(f"{result.taken_over} run(s) taken over {time.monotonic() - died:.1f} s after the kill "
              f"(heartbeat every {settings.heartbeat_seconds:g} s, TTL {settings.heartbeat_ttl:g} s, "
              f"reconciler every {settings.reconcile_seconds:g} s, first turn {args.first_turn:g} s after the kill)")
        registrar.close()
    finally:
        if host is not None:
            liveness._kill(host)
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
