"""Headless Debian Chromium on the real ComfyUI frontend, for the UI tests (Playwright drives it)."""
from __future__ import annotations

import contextlib
import os
import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "Debian chromium is not installed (make setup installs it as root)"
# a closed network: no background connections, no first-run or component updates
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")


@contextlib.contextmanager
def comfy_page(url: str, ready: str = "() => window.app && window.app.graph"):
    """A page with ComfyUI's frontend loaded and settled (the start-up workflow restored)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright
    os.makedirs(ARTIFACTS, exist_ok=True)
    # a fresh ComfyUI greets a new user with its template browser (a modal that keeps the keyboard
    # focus): tell the server the tour is done, as a returning user's settings say
    import urllib.request
    req = urllib.request.Request(url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, timeout=120000)
            page.wait_for_function(ready, timeout=120000)
            # The frontend restores its own start-up workflow a moment after app.graph exists; on a
            # slow machine that can land after (and replace) the first graph a test loads.
            try:
                page.wait_for_function("() => window.app.graph._nodes.length > 0", timeout=30000)
            except PlaywrightTimeout:
                pass
            page.keyboard.press("Escape")  # and close any dialog the start-up opened anyway
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=os.path.join(ARTIFACTS, name))
