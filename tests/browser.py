"""Open a local HTML file in headless Chromium and list what is wrong with it, for the report tests.

Playwright for Python drives the system's Chromium (Debian's `chromium` package) through
`executable_path`: `playwright install` would download a browser, and the tests run offline.
$RAYCAT_CHROMIUM overrides the browser's path.

What a reader would notice, and how it is caught:
- a console error (a failed fetch, a CSP violation): the page's "console" events of type error;
- an uncaught exception: "pageerror" events (they never reach "console");
- a broken image: `complete && naturalWidth > 0` for every <img>. A bad `data:` image logs nothing,
  so only this check sees it;
- a missing part: each required element id.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

VIEWPORT = {"width": 1280, "height": 800}
# Playwright itself adds --headless, --no-sandbox (needed as root), --disable-dev-shm-usage and a
# temporary profile; these keep a test run from touching the network or the GPU.
ARGS = ["--disable-gpu", "--disable-quic", "--disable-background-networking", "--disable-component-update"]

BROKEN_IMAGES_JS = """() => [...document.images]
    .filter(i => !i.complete || i.naturalWidth === 0)
    .map(i => (i.getAttribute('src') || '').slice(0, 80))"""
MISSING_IDS_JS = "ids => ids.filter(id => !document.getElementById(id))"


def chromium_path() -> str:
    return os.environ.get("RAYCAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def missing() -> str | None:
    """Why pages can't be checked here (no Playwright, no Chromium), or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed (pip install playwright; no `playwright install` needed)"
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return f"no Chromium at {path} (apt-get install chromium, or set RAYCAT_CHROMIUM)"
    return None


def launch(playwright):
    """A headless Chromium from a running `sync_playwright()`; share it across pages (the sync API
    can't be nested, and a launch costs about a second)."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=ARGS)


def check_page(html_path, png_path, required_ids=(), *, browser=None, timeout_ms: int = 15_000) -> list[str]:
    """Load `html_path` at 1280x800, save a full-page screenshot to `png_path`, and return the
    problems found (empty: the page is fine). With `browser` (from `launch`) no browser is started."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = launch(p)
            try:
                return check_page(html_path, png_path, required_ids, browser=b, timeout_ms=timeout_ms)
            finally:
                b.close()
    problems: list[str] = []
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.on("console", lambda m: m.type == "error" and problems.append(
            f"console error: {m.text} ({m.location.get('url', '')[:80]}:{m.location.get('lineNumber', '')})"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
        problems += [f"broken image: {src}" for src in page.evaluate(BROKEN_IMAGES_JS)]
        problems += [f"missing element id: {i}" for i in page.evaluate(MISSING_IDS_JS, list(required_ids))]
        page.screenshot(path=str(png_path), full_page=True, timeout=timeout_ms)
    finally:
        page.close()
    return problems
