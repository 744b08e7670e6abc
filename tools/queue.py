"""The HTTP client for a running ComfyUI: queue an API prompt, follow it (websocket, else /history
polling), collect its images, and turn the server's errors into the pack's sentences."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ..core.errors import ModelsmithError
from ..core.names import DEFAULT_SERVER


def http_json(url, body=None, timeout=30):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read())
        except ValueError:
            detail = {}
        raise ModelsmithError(f"server refused the request ({e.code}): {_server_error(detail)}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ModelsmithError(f"cannot reach ComfyUI at {url}: {getattr(e, 'reason', e)}") from None


def _server_error(detail):
    err = detail.get("error", {})
    msg = err.get("message", "") if isinstance(err, dict) else str(err)
    for nid, ne in (detail.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            msg += f"\n  node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}"
    return msg or json.dumps(detail)[:500]


def _failure(kind: str, d: dict) -> str:
    if kind == "execution_interrupted":
        where = f" at node {d['node_id']} ({d.get('node_type')})" if d.get("node_id") else ""
        return f"the prompt was interrupted{where} (Cancel in the UI or POST /interrupt); nothing more ran"
    if d.get("node_id") is None:
        return "the prompt failed on the server without naming a node; see ComfyUI's console"
    return f"node {d.get('node_id')} ({d.get('node_type')}) failed: {d.get('exception_message', '').strip()}"


def queue(api: dict, server=DEFAULT_SERVER, out_dir=None, timeout=3600, progress=None) -> dict:
    """Queue a prompt, follow it (websocket when available, else /history polling), save images."""
    client_id = uuid.uuid4().hex
    res = http_json(f"{server}/prompt", {"prompt": api, "client_id": client_id})
    pid = res["prompt_id"]
    ws = None
    try:
        import websocket  # websocket-client
        ws = websocket.create_connection(server.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=5)
    except Exception:
        ws = None
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if ws is not None:
                try:
                    msg = ws.recv()
                    if isinstance(msg, str):
                        m = json.loads(msg)
                        if m.get("type") == "progress" and progress:
                            progress(m["data"].get("value", 0), m["data"].get("max", 1))
                        if m.get("type") in ("execution_error", "execution_interrupted") and \
                                m["data"].get("prompt_id") == pid:
                            raise ModelsmithError(_failure(m["type"], m["data"]))
                except ModelsmithError:
                    raise
                except Exception:
                    pass
            hist = http_json(f"{server}/history/{pid}")
            if pid in hist:
                status = hist[pid].get("status", {})
                if status.get("status_str") == "error":
                    msgs = [m for m in status.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
                    kind, d = msgs[0] if msgs else ("execution_error", {})
                    raise ModelsmithError(_failure(kind, d))
                if status.get("completed"):
                    return _collect(hist[pid], server, out_dir)
            if ws is None:
                time.sleep(0.3)
    finally:
        if ws is not None:
            ws.close()
    raise ModelsmithError(f"prompt {pid} did not finish in {timeout}s")


def _save_fetched(out_dir: str, name, data: bytes) -> str:
    """A fetched output written through the pack's writer: the server's file name must be a plain
    name (a string, not empty, not `.`/`..`, no folder part); an existing file is never replaced (the
    copy is numbered) and no link is followed."""
    from ..core.files import write_new_bytes
    if not isinstance(name, str) or not name or name in (".", "..") or "\0" in name \
            or os.path.basename(name.replace("\\", "/")) != name:
        raise ModelsmithError(f"the server named an output {str(name)[:80]!r}, which is not a plain file name; "
                              f"not written")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ModelsmithError(f"cannot create the output folder {out_dir} ({e.strerror})") from None
    stem, ext = os.path.splitext(name)
    for i in range(1000):
        path = os.path.join(out_dir, name if i == 0 else f"{stem}-{i}{ext}")
        try:
            return write_new_bytes(path, data)
        except ModelsmithError as e:
            if "exists" not in str(e) and "appeared while writing" not in str(e):
                raise
    raise ModelsmithError(f"{out_dir}: 1000 files named like {name} exist already; not written")


def _collect(entry, server, out_dir):
    saved = []
    for nid, out in entry.get("outputs", {}).items():
        for img in out.get("images", []):
            if out_dir:
                q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                            "type": img.get("type", "output")})
                with urllib.request.urlopen(f"{server}/view?{q}", timeout=60) as r:
                    data = r.read()
                saved.append(_save_fetched(out_dir, img.get("filename"), data))
    return {"outputs": entry.get("outputs", {}), "saved": saved}
