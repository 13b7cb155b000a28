"""`darkroom serve` in a real browser: Debian's Chromium, headless, driven through Playwright for
Python (its own browser download cannot work here), against `darkroom serve` started as a user starts
it, on a free port, beside `darkroom up` (a real worker, the cheap tasks normalize and phash).

The walk: the overview's counts change by themselves (its static script polls /api/status) while the
worker processes a photo dropped into the inbox; then overview -> gallery -> filter by label -> the
photo -> its boxed image, checking that every picture really loaded (natural width > 0), that no
Content-Security-Policy violation or script error happened, and that the photo named like an XSS
attack shows as text and opens no dialog. Screenshots go to test-artifacts/web/ (git-ignored;
DARKROOM_TEST_ARTIFACTS elsewhere).

Skipped when Chromium or Playwright is missing, except under CI (CI set), where it fails.
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.harness import ROOT, Darkroom, free_port, missing, stop
from tests.test_web import XSS, fill_store

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("DARKROOM_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web"

pytestmark = pytest.mark.e2e


def wait_for_http(url: str, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"darkroom serve exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered at {url} after {timeout} s")


def loaded(page, selector: str) -> list[int]:
    """The natural widths of the images ``selector`` finds, once each has finished loading."""
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(img => img.complete)", arg=selector, timeout=30_000)
    return page.eval_on_selector_all(selector, "imgs => imgs.map(img => img.naturalWidth)")


def test_click_through_the_pages_while_a_worker_runs(tmp_path, redis_url):
    if not Path(CHROMIUM).exists():
        missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python (pip install playwright)")
    from tests import photos as pictures

    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    store = fill_store(tmp_path, db_url, redis_url)
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize,phash")
    assert dr.inbox == store.inbox and dr.data == store.settings.data_dir
    port = free_port()
    serve = dr.start("serve", "--port", str(port), name="serve")
    up = dr.start("up", str(dr.inbox), name="up")
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    dialogs: list[str] = []
    try:
        wait_for_http(base + "/static/style.css", serve)
        dr.wait_for_log("for new files", up, timeout=120)  # the start-up scan is done
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # The overview: 5 photos done; a photo dropped now is counted without reloading the page.
            page.goto(base + "/")
            assert page.text_content('[data-image="done"]') == "5"
            assert page.text_content('[data-run="normalize:done"]') == "5"
            page.screenshot(path=str(ARTIFACTS / "1-overview-before.png"), full_page=True)
            pictures.write_jpeg(np.ascontiguousarray(pictures.shipped("coffee")[::-1]), dr.inbox / "dropped.jpg")
            page.wait_for_function("() => document.querySelector('[data-image=\"done\"]').textContent === '6'",
                                   timeout=120_000)
            assert page.text_content('[data-run="normalize:done"]') == "6"
            assert page.text_content('[data-run="phash:done"]') == "6"
            page.screenshot(path=str(ARTIFACTS / "2-overview-after-a-drop.png"), full_page=True)

            # The gallery: every thumbnail loaded, the XSS name shown as text.
            page.click("#nav-gallery")
            page.wait_for_selector("#grid .cell")
            widths = loaded(page, "#grid img")
            assert len(widths) == 7 and all(w > 0 for w in widths), widths
            assert page.locator(".cell .name", has_text=XSS).count() == 1
            page.screenshot(path=str(ARTIFACTS / "3-gallery.png"), full_page=True)

            # Filtered by a label: the astronaut alone.
            page.fill('input[name="label"]', "suit")
            page.click("#apply")
            page.wait_for_url("**/gallery?*label=suit*")
            assert page.locator("#grid .cell").count() == 1
            assert all(w > 0 for w in loaded(page, "#grid img"))
            page.screenshot(path=str(ARTIFACTS / "4-gallery-label-suit.png"), full_page=True)

            # The photo: its preview, its boxed image and face crop loaded; then the boxed image itself.
            page.click("#grid .cell a")
            page.wait_for_selector("#boxed")
            widths = loaded(page, "img")
            assert widths and all(w > 0 for w in widths), widths
            assert page.text_content("h1").endswith("astronaut.jpg") and "suit" in page.text_content("body")
            page.screenshot(path=str(ARTIFACTS / "5-photo.png"), full_page=True)
            page.click("#boxed-link")
            page.wait_for_load_state()
            assert "/artifacts/faces_boxed/0" in page.url
            assert page.evaluate("() => document.images[0].naturalWidth") == 512
            page.screenshot(path=str(ARTIFACTS / "6-boxed.png"))

            # The API docs, served by this server alone.
            page.goto(base + "/docs")
            page.wait_for_selector("body[data-docs-loaded=true]")
            assert page.locator(".api-op").count() >= 5
            page.screenshot(path=str(ARTIFACTS / "7-docs.png"), full_page=True)
            browser.close()
    finally:
        for proc in (up, serve):
            if proc.poll() is None:
                stop(proc)
    assert not dialogs, dialogs
    assert not problems, problems  # no CSP violation, no script error
    assert {p.name for p in ARTIFACTS.iterdir()} >= {
        "1-overview-before.png", "2-overview-after-a-drop.png", "3-gallery.png", "4-gallery-label-suit.png",
        "5-photo.png", "6-boxed.png", "7-docs.png"}


def test_the_login_form_lets_a_browser_in_and_its_cookie_carries_the_pictures(tmp_path, redis_url):
    """With DARKROOM_SERVE_TOKEN set: the browser is sent to the login form, a wrong token is refused,
    the right one lets it in, and the cookie carries the thumbnails' requests and the overview's polls."""
    if not Path(CHROMIUM).exists():
        missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python (pip install playwright)")

    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    fill_store(tmp_path, db_url, redis_url)
    token = "browser-token-" + os.urandom(8).hex()
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize,phash", serve_token=token)
    port = free_port()
    serve = dr.start("serve", "--port", str(port), name="serve")
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    try:
        wait_for_http(base + "/static/style.css", serve)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page()
            page.goto(base + "/gallery")
            assert "/login" in page.url
            page.fill('input[name="token"]', "wrong")
            page.click("form.login button")
            assert "not the token" in page.text_content("body")
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.fill('input[name="token"]', token)
            page.click("form.login button")
            page.wait_for_url(base + "/gallery")
            widths = loaded(page, "#grid img")
            assert len(widths) == 6 and all(w > 0 for w in widths), widths
            page.screenshot(path=str(ARTIFACTS / "8-gallery-after-login.png"), full_page=True)
            page.click("#nav-overview")
            page.wait_for_function("() => document.body.dataset.refreshed !== undefined", timeout=30_000)
            assert token not in page.content()
            browser.close()
    finally:
        stop(serve)
    assert not failed, failed
