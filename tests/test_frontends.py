"""The web extension on the frontends users have, in headless Chromium: ComfyUI 0.33 with the frontend it
pins and with the newest on PyPI (comfyui-frontend-package 1.58.1, served with --front-end-root), each
in classic rendering and with Nodes 2.0 (Vue nodes, setting Comfy.VueNodes.Enabled). In every one:
the template browser shows every bundled template with its title and thumbnail, a node's report is
readable inside the node after a run, a user mistake shows the pack's sentence, and the Model Doctor
sidebar tab lists the models folder. The other runtimes run the same extension on their own pinned
frontends (tests/test_workflows.py, tests/test_doctor.py)."""
import json
import os
import shutil
import urllib.request

import pytest

import browser
from comfy_env import ROOT, comfy_version
from conftest import start_server, stop_server
from modelsmith.tools import workflows as wf

NEWEST = "1.58.1"
NEWEST_ROOT = ROOT / ".cache" / f"frontend-{NEWEST}" / "comfyui_frontend_package" / "static"

pytestmark = [
    pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.SKIP_REASON),
    pytest.mark.skipif(comfy_version() < (0, 33), reason="the frontend matrix runs on ComfyUI 0.33, the main target; "
                                                        "this runtime's own frontend is covered by test_workflows"),
]


@pytest.fixture(scope="module", params=["pinned", NEWEST])
def fe_server(request, comfy, tiny_files, tmp_path_factory):
    from test_workflows import EXPECTED_FILES
    import tiny_anima
    if request.param == NEWEST and not (NEWEST_ROOT / "index.html").exists():
        pytest.fail(f"frontend {NEWEST} is not installed at {NEWEST_ROOT} (make setup installs it)")
    d = tmp_path_factory.mktemp("fe_models")
    for sub in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings"):
        (d / sub).mkdir()
    anima = tiny_anima.save(d, blocks=2)
    for rel, (kind, key) in EXPECTED_FILES.items():
        dst = d / rel
        if not dst.exists():
            shutil.copy(tiny_files[key] if kind == "tiny" else anima[key], dst)
    extra = ["--front-end-root", str(NEWEST_ROOT)] if request.param == NEWEST else []
    srv = start_server(d, tmp_path_factory.mktemp("fe_out"), tmp_path_factory.mktemp("fe_log") / "comfyui.log",
                       extra_args=extra)
    srv.frontend = request.param
    yield srv
    stop_server(srv)


def _set(url, setting, value):
    req = urllib.request.Request(f"{url}/settings/{setting}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()


def _pack_category(srv) -> str:
    """The name the template browser lists the pack's templates under (its folder in custom_nodes)."""
    listed = srv.get("/workflow_templates")
    return next(k for k, v in listed.items() if set(wf.TITLES.values()) <= set(v))


@pytest.mark.parametrize("renderer", ["classic", "nodes2"])
def test_extension_on_the_frontend(fe_server, renderer):
    from test_workflows import _load_in_ui, shows_the_pack_s_error
    srv = fe_server
    _set(srv.url, "Comfy.VueNodes.Enabled", renderer == "nodes2")
    tag = f"{srv.frontend}_{renderer}"
    with browser.comfy_page(srv.url) as page:
        version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")
        if srv.frontend == NEWEST:
            assert version == NEWEST
        vue = page.evaluate("() => window.app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')")
        assert vue is (renderer == "nodes2")
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # 1. the template browser: every bundled template under the pack's name, with its thumbnail
        page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        category = _pack_category(srv)
        page.get_by_text(category, exact=True).last.click()
        titles = sorted(wf.TITLES.values())
        page.wait_for_function("""(titles) => titles.every(t => [...document.querySelectorAll('img')]
                                   .some(i => i.alt === t && i.complete && i.naturalWidth > 0))""",
                               arg=titles, timeout=60000)
        text = page.inner_text("body")
        assert all(t in text for t in titles), [t for t in titles if t not in text]
        browser.shot(page, f"templates_{tag}.png")
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)

        # 2. a node's report, readable inside the node after a run
        info = srv.get("/object_info")
        api = {"1": {"class_type": "ModelsmithTagNormalize", "inputs": {
            "text": "masterpiece, newest, year 2023, safe, 1girl, smile", "convention": "pony"}}}
        _load_in_ui(page, wf.api_to_ui(api, info), "report")
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        page.wait_for_function("""() => [...document.querySelectorAll('textarea.modelsmith-report')].some(a => {
                                     const r = a.getBoundingClientRect();
                                     return a.value.includes('rating_safe') && r.width > 100 && r.height > 20; })""",
                               timeout=90000)
        # the report lies inside its node's box on screen
        inside = page.evaluate("""() => { const a = document.querySelector('textarea.modelsmith-report');
            const r = a.getBoundingClientRect(); const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const el = document.elementFromPoint(x, y);
            return !!el && (el === a || a.contains(el)); }""")
        assert inside, "the report text area is covered by something else"
        browser.shot(page, f"report_{tag}.png")

        # 3. a user mistake: the pack's sentence, not a Python error
        shows_the_pack_s_error(page, info, f"error_{tag}.png")
        page.keyboard.press("Escape")

        # 4. the Model Doctor sidebar tab
        page.locator(".side-bar-button", has_text="Model Doctor").first.click()
        page.wait_for_selector(".modelsmith-doctor tr.modelsmith-doctor-row", timeout=60000)
        ids = page.evaluate("() => [...document.querySelectorAll('.modelsmith-doctor tr.modelsmith-doctor-row')]"
                            ".map(r => r.dataset.id)")
        assert "diffusion_models/anima-base-v1.0.safetensors" in ids and "vae/qwen_image_vae.safetensors" in ids
        browser.shot(page, f"doctor_{tag}.png")
        # ... with its summary, its disk picture and a button to the full page, which opens wide
        assert page.locator(".modelsmith-doctor .modelsmith-doctor-summary").count() == 1
        assert page.locator(".modelsmith-doctor .modelsmith-doctor-space").count() == 2
        with page.expect_popup() as popup:
            page.locator(".modelsmith-doctor button.modelsmith-doctor-open-page").click()
        full = popup.value
        full.wait_for_selector(".modelsmith-doctor[data-layout='page'] tr.modelsmith-doctor-row", timeout=60000)
        assert full.evaluate("() => document.querySelector('.modelsmith-doctor-table').getBoundingClientRect().width") > 1000
        browser.shot(full, f"doctor_page_{tag}.png")
        full.close()
        assert not [e for e in errors if "modelsmith" in e.lower()], errors

        # the extension adds nothing to the page outside the frontend's own containers and no globals
        stray = page.evaluate("""() => ({
            body: [...document.body.children].filter(e => /modelsmith/i.test(e.id + ' ' + e.className)).length,
            globals: Object.keys(window).filter(k => /modelsmith/i.test(k)) })""")
        assert stray == {"body": 0, "globals": []}, stray

        # 5. every template loads without a node covering another (issue 26, point 7): on both frontends,
        # each in one renderer (pinned classic, newest Nodes 2.0), so both renderers are measured too
        if (srv.frontend == NEWEST) == (renderer == "nodes2"):
            page.keyboard.press("Escape")
            templates_do_not_overlap(page, tag)


# the node rectangles of the graph on screen: Vue nodes (Nodes 2.0) from their DOM boxes, classic
# nodes from the graph (title bar included), both after the frontend has sized them
_RECTS = """() => {
  const vue = [...document.querySelectorAll('[data-node-id]')];
  if (vue.length) return vue.map(e => { const r = e.getBoundingClientRect();
    return {id: e.dataset.nodeId, title: e.innerText.split('\\n')[0], x: r.left, y: r.top, w: r.width, h: r.height}; });
  const th = (window.LiteGraph && window.LiteGraph.NODE_TITLE_HEIGHT) || 30;
  return window.app.graph._nodes.map(n => ({id: String(n.id), title: n.title, x: n.pos[0], y: n.pos[1] - th,
                                            w: n.size[0], h: n.size[1] + th}));
}"""


def _overlaps(rects, margin=1.0):
    out = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            if (a["x"] + margin < b["x"] + b["w"] and b["x"] + margin < a["x"] + a["w"]
                    and a["y"] + margin < b["y"] + b["h"] and b["y"] + margin < a["y"] + a["h"]):
                out.append((a["title"], b["title"]))
    return out


def templates_do_not_overlap(page, tag):
    """Every bundled template, loaded as a user opens it: after the frontend has laid its widgets out
    (a Prompt Builder grows to fit its fields), no node covers another."""
    from test_workflows import _load_in_ui
    bad = {}
    for name in wf.bundled():
        with open(wf.ui_path(name)) as f:
            ui = json.load(f)
        _load_in_ui(page, ui, name)
        page.wait_for_timeout(800)  # DOM widgets measure themselves after the first frames
        rects = page.evaluate(_RECTS)
        assert len(rects) == len(ui["nodes"]), (name, len(rects))
        hits = _overlaps(rects)
        if hits:
            bad[name] = hits
            browser.shot(page, f"overlap_{tag}_{name}.png")
    assert not bad, bad
