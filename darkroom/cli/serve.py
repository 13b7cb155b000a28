"""`darkroom serve`: the web view of the store (:mod:`darkroom.web`) under uvicorn.

Binds 127.0.0.1 by default. Any other address needs DARKROOM_SERVE_TOKEN (every page, the API and
the metrics then ask for it); without it the command refuses to start, saying so in one line.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from darkroom.cli.common import fail, read_settings, sessions


def register(app: typer.Typer) -> None:
    app.command()(serve)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs DARKROOM_SERVE_TOKEN.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8800,
) -> None:
    """A read-only web view of the store: the overview (counts, queues, throughput and ETA, problems;
    live), the gallery (thumbnails, filters, keyset pages), each photo's results, the JSON API
    (/api/images, /api/status; OpenAPI at /openapi.json, docs at /docs) and Prometheus /metrics.
    With DARKROOM_SERVE_TOKEN set, pages ask for it (Authorization: Bearer TOKEN, or the login form)."""
    import uvicorn

    from darkroom.web import create_app

    settings = read_settings()
    if settings.serve_token is None and not is_loopback(host):
        raise fail(f"serving on {host} needs DARKROOM_SERVE_TOKEN (a bearer token, also the login form's); "
                   "set it, or serve on 127.0.0.1")
    if settings.serve_token is not None and not settings.serve_token.get_secret_value().strip():
        raise fail("DARKROOM_SERVE_TOKEN is empty: set a token (e.g. `openssl rand -hex 24`), or unset it on 127.0.0.1")
    factory = sessions(settings)
    app = create_app(settings, factory)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"darkroom serve: http://{shown}:{port}/ (API docs /docs, metrics /metrics; Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False, proxy_headers=False)
