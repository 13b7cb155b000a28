"""docker-compose.yml, checked without a Docker engine: it parses, its services are the ones the
system needs, every command is a valid `darkroom` invocation, and every setting it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from darkroom.cli import app as cli_app
from darkroom.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    text = (ROOT / "docker-compose.yml").read_text()
    # Compose interpolation: ${VAR:?message} and ${VAR:-default} must be well-formed.
    for expr in re.findall(r"\$\{([^}]*)\}", text):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(?::?[-?].*)?", expr), expr
    return yaml.safe_load(text)


def _parse(args: list[str]) -> None:
    """Parse like `darkroom ARGS...` would, without running anything: raises on a bad invocation."""
    group = typer.main.get_command(cli_app)
    parent = group.context_class(group, info_name="darkroom")
    command = group.get_command(parent, args[0])
    if command is None:
        raise ValueError(f"No such command: {args[0]}")
    command.make_context(args[0], list(args[1:]), parent=parent)


def test_services_and_their_shape(compose):
    services = compose["services"]
    assert {"redis", "postgres", "producer", "worker-cpu", "worker-gpu"} <= set(services)
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("producer", "worker-cpu", "worker-gpu"):
        svc = services[name]
        assert "darkroom-data:/data" in svc["volumes"], name  # one data dir shared by all
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in svc
    assert services["producer"]["command"][:2] == ["watch", "/inbox"]
    assert "./inbox:/inbox" in services["producer"]["volumes"]
    assert services["worker-cpu"]["command"][services["worker-cpu"]["command"].index("--queues") + 1] == "cpu"
    assert services["worker-gpu"]["command"][services["worker-gpu"]["command"].index("--queues") + 1] == "gpu"
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]


def test_every_command_is_a_valid_darkroom_invocation(compose):
    entry = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["darkroom"]' in entry
    for name in ("producer", "worker-cpu", "worker-gpu"):
        _parse(compose["services"][name]["command"])
    health = compose["services"]["producer"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "darkroom"]
    _parse(health[2:])
    with pytest.raises(Exception, match="No such option"):
        _parse(["worker", "--no-such-option"])
    with pytest.raises(ValueError, match="No such command"):
        _parse(["wrok"])


def test_environment_names_are_settings_the_app_knows(compose):
    known = {f"DARKROOM_{name.upper()}" for name in Settings.model_fields}
    for name, svc in compose["services"].items():
        for key in svc.get("environment", {}):
            if key.startswith("DARKROOM_"):
                assert key in known, f"{name}: {key} is not a Darkroom setting"
    env = compose["services"]["producer"]["environment"]
    assert env["DARKROOM_BROKER_URL"].startswith("redis://redis:")
    assert env["DARKROOM_DATABASE_URL"].startswith("postgresql+psycopg://")
    # The password comes from the environment, never written into the file.
    assert "${POSTGRES_PASSWORD:?" in env["DARKROOM_DATABASE_URL"]


def test_the_celery_app_the_healthchecks_name_loads():
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
