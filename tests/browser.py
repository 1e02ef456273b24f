"""Open a report in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser
download) and record what a person's browser would: console messages, page errors, every request,
dialogs (alert/confirm: a script that ran), and the DOM's view of clusters and images. Tests that
open a page use the `chromium` fixture (tests/conftest.py): it skips them where Chromium is absent
and fails them instead under SCALECLUST_REQUIRE_BROWSER=1, as CI runs."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Visit:
    console: list[str] = field(default_factory=list)  # "type: text"
    errors: list[str] = field(default_factory=list)  # uncaught page errors
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # data-cluster of every rendered section
    images: list[dict[str, Any]] = field(default_factory=list)  # src, naturalWidth, complete
    load_seconds: float = 0.0
    dom: dict[str, Any] = field(default_factory=dict)


def visit(index: Path, screenshot: Path | None = None, then: Callable[[Any], dict[str, Any]] | None = None) -> Visit:
    """Load `index` from file://, wait until the page's script has rendered, and collect a Visit.
    `then(page)` runs afterwards (clicks, typing, DOM queries); what it returns is kept in Visit.dom."""
    from playwright.sync_api import sync_playwright

    seen = Visit()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: seen.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        page.on("request", lambda r: seen.requests.append(r.url))
        page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))
        started = time.perf_counter()
        page.goto(index.resolve().as_uri(), wait_until="load", timeout=120_000)
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=120_000)
        seen.load_seconds = time.perf_counter() - started
        seen.sections = page.eval_on_selector_all("section.cluster", "els => els.map(e => e.dataset.cluster)")
        seen.images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({src: e.getAttribute('src'), naturalWidth: e.naturalWidth, complete: e.complete}))")
        if then is not None:
            seen.dom = then(page)
        page.wait_for_timeout(300)  # let any late script (an onerror handler) fire before we look
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=False)
        browser.close()
    return seen
