"""Model Doctor's routes on the ComfyUI server (the page is web/doctor.js).

  GET  /modelsmith/doctor              the scan of ComfyUI's model folders (incremental, cached)
  POST /modelsmith/doctor/hash         {"id"}: sha256 / AutoV2 of one file, as a job
  POST /modelsmith/doctor/fix          {"id", "action", "replace"}: one fix, as a job
  GET  /modelsmith/doctor/jobs/{job}   a job's state, progress and result

A request names a file only by an id the last scan produced (folder kind + name in that folder);
no path from a request is ever opened. Files behind links that leave the model folders are listed
as refused and never read. Fixes write next to the file, inside its folder.
"""
from __future__ import annotations

import json
import os
import threading
import uuid

import folder_paths

from ..core import doctor
from ..core.errors import ModelsmithError

_LOCK = threading.Lock()
_STATE = {"entries": {}, "jobs": {}}


def model_folders() -> dict:
    out = {}
    for kind in doctor.KINDS + tuple(doctor.ALIASES):
        if kind in folder_paths.folder_names_and_paths:
            paths = folder_paths.get_folder_paths(kind)
            target = out.setdefault(doctor.ALIASES.get(kind, kind), [])
            target += [p for p in paths if p not in target]
    return out


def cache_path() -> str:
    return os.path.join(folder_paths.get_user_directory(), "modelsmith", "doctor.json")


_VERDICTS: dict = {}  # (path, size, mtime_ns) -> what the running core does with that Anima file


def core_verdict(entry: dict) -> dict | None:
    """compat.core_probe's verdict on a scanned Anima file (the running core asked, header only),
    remembered while the file is unchanged; None where it cannot be asked (a pickle)."""
    from ..compat.core_probe import anima_verdict_for_file
    try:
        st = os.stat(entry["path"])
    except OSError:
        return None
    key = (entry["path"], st.st_size, st.st_mtime_ns)
    if key not in _VERDICTS:
        try:
            _VERDICTS[key] = anima_verdict_for_file(entry["path"])
        except ModelsmithError:
            _VERDICTS[key] = None
    return _VERDICTS[key]


def run_scan() -> list[dict]:
    entries = doctor.scan(model_folders(), doctor.Cache(cache_path()), runtime=core_verdict)
    with _LOCK:
        _STATE["entries"] = {e["id"]: e for e in entries}
    return entries


def public(e: dict) -> dict:
    return {k: v for k, v in e.items() if k not in ("path", "root")}


def _job(fn) -> str:
    jid = uuid.uuid4().hex
    job = {"state": "running", "done": 0, "total": 1, "result": None, "error": None}
    with _LOCK:
        _STATE["jobs"][jid] = job

    def progress(done, total):
        job["done"], job["total"] = done, max(total, 1)

    def run():
        try:
            job["result"] = fn(progress)
            job["state"] = "done"
        except ModelsmithError as e:
            job["error"], job["state"] = str(e), "failed"
        except Exception as e:  # noqa: BLE001 - a job reports every failure as text, the server goes on
            job["error"], job["state"] = f"{type(e).__name__}: {e}", "failed"
    threading.Thread(target=run, name="modelsmith-doctor", daemon=True).start()
    return jid


def _entry(body) -> dict:
    fid = body.get("id") if isinstance(body, dict) else None
    with _LOCK:
        e = _STATE["entries"].get(fid) if isinstance(fid, str) else None
    if e is None:
        raise ModelsmithError("unknown file id: scan first, and pick a file the scan listed")
    if e.get("outside"):  # listed so the user sees it, never read or written
        raise ModelsmithError(f"{e['id']}: {e.get('error')}")
    return e


def register() -> bool:
    """Add the routes to the running server; False when there is none (in-process use)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    srv = getattr(PromptServer, "instance", None)
    if srv is None or getattr(srv, "_modelsmith_doctor", False):
        return False
    routes = srv.routes

    async def _run_blocking(fn, *a):
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(None, fn, *a)

    @routes.get("/modelsmith/doctor")
    async def get_scan(request):
        entries = await _run_blocking(run_scan)
        return web.json_response({"files": [public(e) for e in entries], "fixes": list(doctor.FIXES),
                                  "summary": doctor.summary(entries)})

    async def _post(request, make):
        from ..core.safetensors_io import MAX_JSON_DEPTH, json_depth
        text = await request.text()  # aiohttp bounds the body size (client_max_size)
        if len(text) > 65536 or json_depth(text) > MAX_JSON_DEPTH:
            return web.json_response({"error": "send a small JSON object ({\"id\": ...})"}, status=400)
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            return web.json_response({"error": "send a JSON object"}, status=400)
        try:
            e = _entry(body)
            return web.json_response({"job": _job(make(e, body))})
        except ModelsmithError as err:
            return web.json_response({"error": str(err)}, status=400)

    @routes.post("/modelsmith/doctor/hash")
    async def post_hash(request):
        def make(e, body):
            def fn(progress):
                digest = doctor.sha256_file(e["path"], progress)
                cache = doctor.Cache(cache_path())
                st = os.stat(e["path"])
                cache.put(e["path"], st, sha256=digest)
                cache.save()
                return {"sha256": digest, "autov2": doctor.autov2(digest)}
            return fn
        return await _post(request, make)

    @routes.post("/modelsmith/doctor/fix")
    async def post_fix(request):
        def make(e, body):
            action = body.get("action")
            if action not in doctor.FIXES:
                raise ModelsmithError(f"unknown fix {action!r}")

            def fn(progress):
                res = doctor.apply_fix(e, action, replace=bool(body.get("replace")), progress=progress)
                return {"action": action, "output": os.path.basename(res["output"]),
                        **({"note": res["note"]} if res.get("note") else {})}
            return fn
        return await _post(request, make)

    @routes.get("/modelsmith/doctor/jobs/{job}")
    async def get_job(request):
        with _LOCK:
            job = _STATE["jobs"].get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "unknown job"}, status=404)
        return web.json_response(job)

    srv._modelsmith_doctor = True
    return True
