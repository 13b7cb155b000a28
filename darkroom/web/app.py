"""The web application of `darkroom serve`: pages, the JSON API, pictures by sha256, metrics.

Read-only: nothing a request sends changes the store (the one write is the counts' bookkeeping that
`darkroom status` does as well: the overview folds the photos whose state just changed). Safe by
default:

- with ``DARKROOM_SERVE_TOKEN`` set (required by `darkroom serve` for any address but loopback),
  every route but the login form and the static files needs it: ``Authorization: Bearer TOKEN`` or
  the cookie the login form sets (an HMAC of the token, never the token itself; HttpOnly,
  SameSite=Strict);
- pictures are found by a sha256 checked to be 64 hex digits, in the store (SQL, the blob store by
  hash, or the files the ledger recorded for a photo held by reference): no part of a request's path
  reaches the filesystem;
- every page is a Jinja2 template with autoescape on; every response carries a
  Content-Security-Policy that allows scripts, styles and images from this server only and no
  inline script (the live overview and the docs page are static JavaScript files);
- the OpenAPI document's docs page is served here (``/docs``, rendered by ``static/docs.js``):
  nothing is loaded from a CDN, it works offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import redis as redis_lib
from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import MutableHeaders

from darkroom import __version__, catalog
from darkroom.settings import Settings
from darkroom.web import media, metrics, reads
from storage import ledger, results
from storage.db import make_engine, read_only, session_factory
from storage.stores import open_store
from worker import broker
from worker.queues import queue_depths

HERE = Path(__file__).resolve().parent
#: Every response's Content-Security-Policy: this server's scripts, styles and images only; no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: A picture's: no script at all, sandboxed; the inline style of the browser's own image viewer allowed.
PICTURE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"
#: The session cookie the login form sets.
COOKIE = "darkroom_session"
#: Pictures named by their content never change: cached for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
#: At most this long is spent bringing the image counts up to date on an overview or /api/status.
FOLD_SECONDS = 0.5
#: ... at most this often.
FOLD_EVERY = 2.0
#: Photos per gallery page unless asked.
GALLERY_PAGE = 100
OPEN_PATHS = ("/login", "/static/", "/favicon.ico")


def session_value(token: str) -> str:
    """What the login cookie holds: an HMAC of the token (the token never leaves in a cookie)."""
    return hmac.new(token.encode(), b"darkroom serve session", hashlib.sha256).hexdigest()


class State:
    """What the routes share: settings, sessions, the broker's client, pictures, the metrics registry."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.media = media.Media(settings, open_store(settings.blob_location))  # DARKROOM_BLOB_URL: a folder or a bucket
        self.primary_model = catalog.get("classify").model_key(settings)
        self._redis: redis_lib.Redis | None = None
        self._fold_lock = threading.Lock()
        self._folded = -FOLD_EVERY
        self._overview_lock = threading.Lock()
        self._overview: tuple[float, reads.Overview] | None = None
        self.registry = metrics.registry(metrics.LedgerCollector(self.read, self.queues, settings))

    def read(self):
        return read_only(self.sessions)

    @contextlib.contextmanager
    def read_one(self):
        """A session for a read of one statement. PostgreSQL: on a connection in autocommit, one
        round trip to the database instead of three (BEGIN, the read, ROLLBACK), for the hundred
        thumbnails of a gallery page; SQLite: :meth:`read` (a read there takes no lock anyway)."""
        engine = self.sessions.kw["bind"]
        if engine.dialect.name != "postgresql":
            with self.read() as session:
                yield session
            return
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, Session(bind=conn) as session:
            yield session

    def queues(self) -> dict[str, int] | str:
        try:
            if self._redis is None:  # a plain Redis, or the master the sentinels of a sentinel:// URL name
                self._redis = broker.for_settings(self.settings, socket_timeout=2, socket_connect_timeout=2)
            return queue_depths(self._redis)
        except (redis_lib.RedisError, OSError) as exc:
            return f"unreachable ({type(exc).__name__})"

    def overview(self) -> reads.Overview:
        """The overview, read at most every :data:`FOLD_EVERY` seconds however many pages poll it (its
        problem groups cost a few hundred milliseconds at a million photos)."""
        with self._overview_lock:
            if self._overview is None or time.monotonic() - self._overview[0] >= FOLD_EVERY:
                self.fold()
                with self.read() as s:
                    self._overview = (time.monotonic(), reads.overview(s, self.queues()))
            return self._overview[1]

    def fold(self) -> None:
        """Count the photos whose state changed a moment ago: one fold at a time in this process, at
        most every :data:`FOLD_EVERY` seconds, and only when a read finds photos to count (a fold
        is a write: however many pages poll, the workers are not held up)."""
        now = time.monotonic()
        if now - self._folded < FOLD_EVERY or not self._fold_lock.acquire(blocking=False):
            return
        try:
            self._folded = now
            with self.read() as s:
                waiting = reads.uncounted(s, most=1)
            if waiting:
                ledger.fold_pending(self.sessions, seconds=FOLD_SECONDS)
        finally:
            self._fold_lock.release()


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """The application for ``settings`` (its store, broker and token); ``sessions``: a session factory
    on the store (default: an engine made from the settings)."""
    state = State(settings, sessions or session_factory(make_engine(settings.db_url)))
    token = settings.serve_token.get_secret_value() if settings.serve_token else None
    app = FastAPI(title="Darkroom", version=__version__, docs_url=None, redoc_url=None,
                  description="The results of Darkroom's computer-vision tasks, read-only: photos (the Results JSON, "
                              "filtered and paged by keyset), the ledger's counts, and Prometheus metrics.")
    app.state.darkroom = state
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["duration"] = _duration
    env.filters["short"] = lambda text, n=80: text if text is None or len(text) <= n else text[: n - 1] + "…"
    templates = Jinja2Templates(env=env)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"version": __version__, "login": token is not None, **context},
                                          status_code=status_code)

    app.add_middleware(Guard, token=token)

    # --- pages ----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request):
        return page(request, "overview.html", view=state.overview(), states=reads.STATES)

    @app.get("/gallery", response_class=HTMLResponse, include_in_schema=False)
    def gallery_page(request: Request, status: str | None = None, label: str | None = None, model: str | None = None,
                     min_score: str | None = None, faces: str | None = None, since: str | None = None,
                     after: str | None = None, limit: int = Query(GALLERY_PAGE, ge=1, le=reads.MAX_PAGE)):
        form = {"status": status, "label": label, "model": model, "min_score": min_score, "faces": faces, "since": since}
        extra = {name: request.query_params.get(name) for name in reads.extra_filters()}
        try:
            if after and not media.valid_sha(after):
                raise reads.BadFilter("after is the sha256 of the last photo of the page before")
            score = _score(min_score)
            flt = reads.make_filter(status=status, label=label, min_score=score, model=model, faces=faces, since=since,
                                    **extra)
            with state.read() as s:
                images, next_after = reads.page(s, flt, after, limit)
                cells = reads.cells(s, images, state.primary_model)
                models = results.label_models(s)
        except reads.BadFilter as exc:
            return page(request, "gallery.html", status_code=400, error=str(exc), cells=[], form=form, extra=extra,
                        dates=reads.date_filters(), models=[], states=reads.STATES, next_url=None, first_url=None)
        given = {k: v for k, v in {**form, **extra}.items() if v}
        next_url = "/gallery?" + urlencode({**given, "after": next_after, "limit": limit}) if next_after else None
        first_url = "/gallery?" + urlencode(given) if after else None
        return page(request, "gallery.html", error=None, cells=cells, form=form, extra=extra, models=models,
                    dates=reads.date_filters(), states=reads.STATES, next_url=next_url, first_url=first_url)

    @app.get("/photos/{sha256}", response_class=HTMLResponse, include_in_schema=False)
    def photo_page(request: Request, sha256: str):
        sha = _sha(sha256)
        with state.read() as s:  # rendered in the session: the page reads the runs it loaded
            found = reads.photo(s, sha, settings)
            if found is None:
                return page(request, "error.html", status_code=404, message=f"no photo has the sha256 {sha}")
            return page(request, "photo.html", photo=found, r=found.result)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response((HERE / "static" / "placeholder.svg").read_bytes(), media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs_page(request: Request):
        return page(request, "docs.html")

    # --- login ----------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/"):  # noqa: A002 - the parameter's name in the URL
        return page(request, "login.html", login=False, next=_local(next), error=None)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token_given: Annotated[str, Form(alias="token")] = "",
              next: Annotated[str, Form()] = "/"):  # noqa: A002
        if token is None:
            return RedirectResponse(_local(next), status_code=303)
        if not hmac.compare_digest(token_given.encode(), token.encode()):
            time.sleep(0.5)  # a guess costs time
            return page(request, "login.html", login=False, status_code=401, next=_local(next), error="that is not the token")
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout():
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- pictures, by sha256 ---------------------------------------------------------------------

    @app.get("/thumbs/{sha256}", tags=["pictures"], summary="A photo's thumbnail (JPEG), cached for ever by its hash",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
    def thumb(request: Request, sha256: str):
        return _by_sha(request, sha256, state.read_one, state.media.thumb)

    @app.get("/images/{sha256}/preview", tags=["pictures"],
             summary=f"The original, at most {media.PREVIEW_SIDE} px on its longest side (JPEG)",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
    def preview(request: Request, sha256: str):
        return _by_sha(request, sha256, state.read, state.media.preview)

    @app.get("/images/{sha256}/artifacts/{kind}/{idx}", tags=["pictures"],
             summary="An image a task made: faces_boxed, face_crop, augmented, contact_sheet",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
    def artifact(request: Request, sha256: str, kind: str, idx: int):
        sha = _sha(sha256)
        if not media.KIND.match(kind) or idx < 0:
            raise HTTPException(404, "no such picture")
        with state.read() as s:
            pic = state.media.artifact(s, sha, kind, idx)
        if pic is None:
            raise HTTPException(404, f"the photo {sha} has no {kind} {idx}")
        return _send(request, pic)

    # --- the JSON API -----------------------------------------------------------------------------

    @app.get("/api/images", tags=["api"], summary="Photos' Results JSON, filtered, a keyset page at a time")
    def api_images(request: Request,
                   status: Annotated[str | None, Query(description="queued, running, done, failed or rejected")] = None,
                   label: Annotated[str | None, Query(description="one of the top labels, whole, any case")] = None,
                   min_score: Annotated[float | None, Query(ge=0, le=1, description="with label")] = None,
                   model: Annotated[str | None, Query(description="with label: the classifier key")] = None,
                   faces: Annotated[str | None, Query(description="N faces, or N+ for at least N")] = None,
                   since: Annotated[str | None, Query(description="registered at or after (ISO date or time)")] = None,
                   after: Annotated[str | None, Query(description="the sha256 of the previous page's last photo")] = None,
                   limit: Annotated[int, Query(ge=1, le=reads.MAX_PAGE)] = 100) -> dict[str, Any]:
        """The Results JSON objects (as `darkroom results --json` gives them) of up to ``limit`` photos
        matching every filter given, in registration order after ``after``; ``next_after`` is the
        ``after`` of the next page (null on the last page)."""
        extra = {name: request.query_params.get(name) for name in reads.extra_filters()}
        if after is not None and not media.valid_sha(after):
            raise HTTPException(400, "after is the sha256 (64 hex digits) of the previous page's last photo")
        try:
            flt = reads.make_filter(status=status, label=label, min_score=min_score, model=model, faces=faces,
                                    since=since, **extra)
            with state.read() as s:
                images, next_after = reads.page(s, flt, after, limit)
                items = reads.api_images(s, images, settings)
        except reads.BadFilter as exc:
            raise HTTPException(400, str(exc)) from None
        query = {k: v for k, v in request.query_params.items() if k != "after"}
        return {"items": items, "next_after": next_after,
                "next": "/api/images?" + urlencode({**query, "after": next_after}) if next_after else None}

    @app.get("/api/images/{sha256}", tags=["api"], summary="One photo's Results JSON")
    def api_image(sha256: str) -> dict[str, Any]:
        sha = _sha(sha256)
        with state.read() as s:
            found = results.find_images(s, [sha])
            if not found:
                raise HTTPException(404, f"no photo has the sha256 {sha}")
            return catalog.results_json(s, found, settings)[0]

    @app.get("/api/status", tags=["api"], summary="Counts per task and state, queues, throughput, problems")
    def api_status() -> dict[str, Any]:
        """What `darkroom status --json` says (counts of runs and photos, queue depths, the newest
        problems and problem groups), with the throughput over the last minutes and an ETA."""
        return state.overview().to_dict()

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics, read from the ledger now",
             response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(metrics.exposition(state.registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(DBAPIError)
    async def database_away(request: Request, exc: DBAPIError):
        """The database did not answer: 503, saying so (the type of error only: never the URL)."""
        message = f"the database did not answer ({type(exc.orig or exc).__name__}); try again in a moment"
        if "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api/"):
            return page(request, "error.html", status_code=503, message=message)
        return JSONResponse({"detail": message}, status_code=503)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception):
        detail = getattr(exc, "detail", None) or "not found"
        if "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api/"):
            return page(request, "error.html", status_code=404, message=detail)
        return JSONResponse({"detail": detail}, status_code=404)

    return app


class Guard:
    """The ASGI middleware every request passes: the token (when one is set: else a redirect to the
    login form for a page, 401 for anything else) and the security headers of every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                picture = headers.get("content-type", "").startswith("image/")
                headers["Content-Security-Policy"] = PICTURE_CSP if picture else CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
            await send(message)

        path = scope["path"]
        if self.token is not None and not path.startswith(OPEN_PATHS):
            request = Request(scope)
            if not _authorized(request, self.token):
                if "text/html" in request.headers.get("accept", ""):
                    response: Response = RedirectResponse("/login?" + urlencode({"next": _local(path)}), status_code=303)
                else:
                    response = JSONResponse({"detail": "a token is needed: Authorization: Bearer TOKEN, or log in at "
                                                       "/login"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


def _sha(text: str) -> str:
    """A sha256 from a request: 64 hex digits (any case), or 404 — before anything is looked up."""
    sha = text.lower()
    if not media.valid_sha(sha):
        raise HTTPException(404, "a photo is named by its sha256: 64 hex digits")
    return sha


def _score(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise reads.BadFilter(f"min score is a number from 0 to 1, not {text!r}") from None
    if not 0 <= value <= 1:
        raise reads.BadFilter(f"min score is a number from 0 to 1, not {text!r}")
    return value


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def _local(path: str) -> str:
    """A redirect target that stays on this server (a path, not //host or a URL)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _by_sha(request: Request, sha256: str, read: Any, fetch: Any) -> Response:
    """A photo's picture by its sha256 (validated first): ``fetch(session, sha)`` in a session of
    ``read()``; the placeholder when the photo has none to show, 404 when no photo has the hash."""
    sha = _sha(sha256)
    with read() as s:
        try:
            pic = fetch(s, sha)
        except media.NoOriginal:
            return _placeholder()
    if pic is None:
        raise HTTPException(404, f"no photo has the sha256 {sha}")
    return _send(request, pic)


def _send(request: Request, pic: media.Picture) -> Response:
    etag = f'"{pic.etag}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(pic.data, media_type=pic.mime, headers=headers)


def _placeholder() -> Response:
    """The picture of a photo that has none (rejected, or its original gone): not cached for long."""
    return Response((HERE / "static" / "placeholder.svg").read_bytes(), media_type="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=60"})


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
