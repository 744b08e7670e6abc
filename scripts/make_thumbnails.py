"""Render the template browser's thumbnail (`example_workflows/<title>.jpg`) of every bundled workflow: each UI
graph is loaded into the real ComfyUI frontend in headless Chromium, fitted to the view and shot.

    .venv-0.29/bin/python scripts/make_thumbnails.py      (starts its own server on a free port)
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

FIT = """() => {
  const nodes = window.app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const c = window.app.canvas, el = c.canvas;
  const w = el.clientWidth, h = el.clientHeight;
  const scale = Math.min(w / (x1 - x0 + 80), h / (y1 - y0 + 80), 1.2);
  c.ds.scale = scale;
  c.ds.offset = [-x0 + (w / scale - (x1 - x0)) / 2, -y0 + (h / scale - (y1 - y0)) / 2];
  c.setDirty(true, true);
}"""


def main():
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from conftest import start_server, stop_server
    from modelsmith.tools import workflows as wf
    tmp = tempfile.mkdtemp()
    models = os.path.join(tmp, "models")
    for sub in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings"):
        os.makedirs(os.path.join(models, sub))
    from test_workflows import EXPECTED_FILES  # the file names the workflows name: present, so no red outlines
    for rel in EXPECTED_FILES:
        open(os.path.join(models, rel), "wb").close()
    srv = start_server(models, os.path.join(tmp, "out"), os.path.join(tmp, "comfyui.log"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(srv.url, timeout=120000)
            page.wait_for_function("() => window.app && window.app.graph", timeout=120000)
            page.wait_for_timeout(3000)
            for name in wf.bundled():
                with open(wf.ui_path(name)) as f:
                    ui = json.load(f)
                page.evaluate("async (g) => { await window.app.loadGraphData(g); }", ui)
                page.wait_for_timeout(800)
                page.evaluate(FIT)
                page.wait_for_timeout(500)
                # the canvas's own pixels: the graph without the app's panels, toasts and dialogs
                url = page.evaluate("() => { window.app.canvas.draw(true, true); "
                                    "return window.app.canvas.canvas.toDataURL('image/png'); }")
                img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
                img.thumbnail((640, 400))
                out = os.path.splitext(wf.ui_path(name))[0] + ".jpg"
                img.save(out, "JPEG", quality=72, optimize=True)
                print(f"wrote {out} ({os.path.getsize(out)} bytes)")
            browser.close()
    finally:
        stop_server(srv)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
