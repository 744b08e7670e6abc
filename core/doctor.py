"""Model Doctor: the whole models folder at a glance, from the tensors, with one-step fixes.

A scan walks the model folders (checkpoints, diffusion_models/unet, text_encoders/clip, vae, loras),
inspects every model file from its header (core/inspect.py) and lists, per file, what it is and what
is wrong with it, each problem with a one-line why and the fix that applies. Scans are incremental:
a file's summary is cached by (path, size, mtime) in a small JSON file in the user directory, so a
rescan stats the files and inspects only what changed. Hashes (sha256 and Civitai's AutoV2, its first
10 hex digits) are computed on demand and cached the same way, never recomputed on a rescan.

Security: files are addressed by an id (folder kind + name relative to its root) that the scan itself
made; a path from a request is never opened. Symlinks that lead out of the model folders are listed as
refused and never read; fixes write only next to the file, inside the same folder, atomically, and
never replace the original unless asked.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time

from . import registry
from .errors import ModelsmithError
from .families import CORE_ANIMA
from .files import safe_filename, write_new_text

KINDS = ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras")
# ComfyUI's legacy folder names that hold the same kinds
ALIASES = {"unet": "diffusion_models", "clip": "text_encoders"}
MODEL_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
CACHE_VERSION = 9
_SUMMARY_KEYS = ("position_ids", "text_encoder", "vae", "not_opened", "vae_mismatch", "family", "variant", "layout",
                 "precision", "quantization", "unquantized_layers", "quantization_quality", "prediction", "ztsnr",
                 "ema", "params",
                 "kind", "components", "modelspec", "lora")  # not `warnings`: problems say what matters, and the
# sentences, repeated in every entry, made up most of the cache file a rescan parses
_DETAIL_KEYS = ("blocks", "width", "adapter_blocks", "text_encoder", "core_adapter_fits", "comfyui_loads_whole_since",
                "extra_modules")


def file_id(kind: str, rel: str) -> str:
    return f"{kind}/{rel}"


class Cache:
    """{path: {size, mtime_ns, summary, sha256}} in a JSON file, written atomically."""

    def __init__(self, path: str | None):
        self.path = path
        self.data = {}
        self.dirty = False
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    raw = json.load(f)
                if isinstance(raw, dict) and raw.get("version") == CACHE_VERSION and isinstance(raw.get("files"), dict):
                    self.data = raw["files"]
            except (OSError, ValueError, RecursionError):
                self.data = {}  # a damaged cache is rebuilt, never trusted

    def get(self, path, st):
        e = self.data.get(path)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            return e
        return None

    def put(self, path, st, **fields):
        e = self.get(path, st) or {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        e.update(fields)
        self.data[path] = e
        self.dirty = True
        return e

    def keep_only(self, seen: set, roots) -> None:
        """Forget files under `roots` that a scan of them did not see (deleted or moved), so the cache
        holds the library as it is, not every file it ever held."""
        prefixes = tuple(os.path.join(r, "") for r in roots)
        gone = [p for p in self.data if p.startswith(prefixes) and p not in seen]
        for p in gone:
            del self.data[p]
        self.dirty = self.dirty or bool(gone)

    def save(self):
        if not self.path or not self.dirty:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            write_new_text(self.path, json.dumps({"version": CACHE_VERSION, "files": self.data}), overwrite=True)
            self.dirty = False
        except ModelsmithError:
            pass  # a cache that cannot be written only costs time


def _summary(report: dict) -> dict:
    out = {k: report.get(k) for k in _SUMMARY_KEYS if report.get(k) is not None}
    d = report.get("details") or {}
    out["details"] = {k: d[k] for k in _DETAIL_KEYS if k in d}
    out["format"] = (report.get("file") or {}).get("format")
    return out


def _walk(root: str):
    """(relative name, path, lstat) of every model file under root; links are reported, not followed."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            rel = os.path.join(rel_dir, e.name) if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not e.name.startswith("."):
                    stack.append(rel)
            elif e.name.lower().endswith(MODEL_EXTS) and not e.name.startswith("."):
                yield rel, e.path, st


def _inside(path: str, roots) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def scan(folders: dict, cache: Cache | None = None, runtime=None) -> list[dict]:
    """Every model file of the given {kind: [root, ...]} folders, with its summary and problems.
    `runtime(entry)`: what the running ComfyUI does with an Anima file (compat.core_probe's verdict,
    or None); without it (the CLI) the header-only facts speak."""
    from .inspect import inspect_file
    cache = cache or Cache(None)
    roots_real = [os.path.realpath(r) for rs in folders.values() for r in rs if os.path.isdir(r)]
    entries = []
    for kind, roots in folders.items():
        kind = ALIASES.get(kind, kind)
        for root in roots:
            if not os.path.isdir(root):
                continue
            for rel, path, lst in _walk(root):
                entry = {"id": file_id(kind, rel), "kind": kind, "name": rel, "path": path, "root": root,
                         "size": lst.st_size}
                if stat.S_ISLNK(lst.st_mode):
                    if not _inside(path, roots_real):
                        entry.update(status="refused", outside=True,
                                     error="a link that leads out of the model folders; not read")
                        entries.append(entry)
                        continue
                try:
                    st = os.stat(path) if stat.S_ISLNK(lst.st_mode) else lst  # a plain file: its lstat is its stat
                except OSError as e:
                    entry.update(status="error", error=f"cannot read it ({e.strerror})")
                    entries.append(entry)
                    continue
                entry["size"] = st.st_size
                entry["identity"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
                hit = cache.get(path, st)
                if hit and "summary" in hit:
                    summary, err = hit["summary"], hit.get("error")
                else:
                    try:  # a pickle is listed from the static pre-scan only: a scan never unpickles
                        summary, err = _summary(inspect_file(path, open_pickles=False)), None
                    except ModelsmithError as e:
                        summary, err = None, str(e).replace(path + ": ", "")
                    except (OSError, ValueError, RuntimeError) as e:
                        summary, err = None, f"could not be inspected ({type(e).__name__}: {str(e)[:160]})"
                    hit = cache.put(path, st, summary=summary, error=err)
                entry.update(status="refused" if err and "refused to load" in err else ("error" if err else "ok"),
                             summary=summary, error=err, sha256=hit.get("sha256"))
                entries.append(entry)
    cache.keep_only({e["path"] for e in entries}, [r for rs in folders.values() for r in rs])
    relist(entries, runtime)
    cache.save()
    return entries


def relist(entries: list[dict], runtime=None) -> None:
    """(Re)compute every entry's problems; what one file's problems depend on in the others (the
    models present, equal hashes) is gathered once, so this is linear in the number of files."""
    ctx = {"models": {((e["summary"].get("family")), (e["summary"].get("details") or {}).get("blocks"))
                      for e in entries if e.get("summary") and (e["summary"].get("components") or {}).get("denoiser")},
           "hashes": {}, "runtime": runtime}
    for e in entries:
        if e.get("sha256"):
            ctx["hashes"].setdefault(e["sha256"], []).append(e["id"])
    _match_companions(entries)
    for e in entries:
        e["problems"] = problems(e, ctx)


def _match_companions(entries: list[dict]) -> None:
    """What can run: each denoiser's text encoders and VAE found in the library (entry["companions"],
    or entry["missing"] with what to get), and for each text encoder / VAE the models that use it
    (entry["used_by"]). The registry says what each family needs; the files say what they are."""
    from .companions import companion_files, to_get
    tes, vaes = companion_files(entries)
    for e in entries:
        e.pop("companions", None)
        e.pop("missing", None)
        e.pop("used_by", None)
    for group in list(tes.values()) + list(vaes.values()):
        for c in group:
            c["used_by"] = []
    for e in entries:
        s = e.get("summary") or {}
        comps = s.get("components") or {}
        rec = registry.get(s.get("family"))
        if not comps.get("denoiser") or rec is None or s.get("kind") == "lora":
            continue
        found, missing = {}, []
        baked = set(comps.get("text_encoders") or [])
        for te in registry.text_encoders(rec.id, s.get("variant")):
            if te in baked:
                continue
            if te in tes:
                found[te] = [c["id"] for c in tes[te]]
                for c in tes[te]:
                    c["used_by"].append(e["id"])
            else:
                missing.append(to_get(te))
        if not comps.get("vae"):
            if rec.vae_signature in vaes:
                found["vae"] = [c["id"] for c in vaes[rec.vae_signature]]
                for c in vaes[rec.vae_signature]:
                    c["used_by"].append(e["id"])
            else:
                missing.append(f"{rec.vae} in models/vae")
        e["companions"] = found
        if missing:
            e["missing"] = missing


def _p(code, why, fix=None):
    return {"code": code, "why": why, **({"fix": fix} if fix else {})}


_SPACE = re.compile(r"\s")


def problems(entry: dict, ctx: dict) -> list[dict]:
    """The problems of one scanned file, each {code, why, fix?} (fix: an action `apply_fix` takes)."""
    out = []
    name = os.path.basename(entry["name"])
    if entry.get("status") == "refused":
        out.append(_p("refused", entry.get("error") or "refused"))
    elif entry.get("status") == "error":
        out.append(_p("unreadable", entry.get("error") or "unreadable"))
    if not name.isascii() or _SPACE.search(name):
        out.append(_p("name", "spaces or non-ASCII characters in the name break scripts and some loaders",
                      "rename"))
    s = entry.get("summary")
    if not s:
        return out
    if s.get("format") == "pickle":
        out.append(_p("pickle", "a pickle checkpoint (not opened: a scan never unpickles): other tools may run code "
                      "hidden in it; convert reads it in a limited child process and writes safetensors", "convert"))
    has_denoiser = (s.get("components") or {}).get("denoiser")
    spec = s.get("modelspec") or {}
    pred = s.get("prediction")
    meta_pred = {"v": "v", "v_prediction": "v", "epsilon": "eps", "eps": "eps"}.get(str(spec.get("prediction_type", "")).lower())
    if has_denoiser and registry.is_unet(s.get("family")) and meta_pred == "v" and pred == "eps":
        out.append(_p("vpred-markers", "its metadata says v-prediction but it has no v_pred marker: ComfyUI samples it "
                      "as eps and the images come out gray or noisy", "markers"))
    elif has_denoiser and meta_pred and pred in ("eps", "v") and meta_pred != pred:
        out.append(_p("markers-contradict", f"its markers say {pred} but its metadata says {meta_pred}"))
    arch = spec.get("architecture")
    named = registry.from_modelspec(arch) if isinstance(arch, str) else None
    if has_denoiser and named and named != s.get("family"):
        out.append(_p("metadata-lies", f"its metadata says {arch} but the tensors are {s.get('family')}"))
    place = _misplaced(entry.get("kind"), s)
    if place:
        out.append(_p("misplaced", place))
    if s.get("vae_mismatch"):
        out.append(_p("vae-mismatch", "its baked-in VAE belongs to another family: images come out broken; load "
                      "a VAE of its family or convert with one baked in"))
    if s.get("position_ids"):
        out.append(_p("position-ids", "damaged CLIP position_ids (an AUTOMATIC1111 Add Difference merge from before "
                      "2023-01-15): A1111, Forge and diffusers weaken or ignore those token positions", "position-ids"))
    if s.get("ema"):
        out.append(_p("ema", "EMA weights kept: about twice the size, and sampling uses only one copy", "prune"))
    if has_denoiser and s.get("precision") == "fp32":
        out.append(_p("fp32", "stored in fp32: half the size in fp16 with no visible difference", "fp16"))
    d = s.get("details") or {}
    if s.get("family") == "anima" and has_denoiser:
        core = ctx["runtime"](entry) if ctx.get("runtime") else None
        if core is not None and not core.get("loads_whole"):
            out.append(_p("anima-core", core["sentence"]))
        elif core is None and d.get("comfyui_loads_whole_since") != CORE_ANIMA["native_since"]:
            since = d.get("comfyui_loads_whole_since")
            out.append(_p("anima-core", f"a {d.get('blocks')}-block Anima: ComfyUI's stock loaders load it whole "
                          + (f"in {since}" if since else "in no version") + "; Modelsmith's Anima loader "
                          "loads it on any ComfyUI"))
    if entry.get("missing"):
        out.append(_p("missing-companion", "cannot run yet: get " + " and ".join(entry["missing"])))
    if entry.get("used_by") == [] and s.get("kind") in ("text-encoder", "vae"):
        serves = (s.get("text_encoder") or s.get("vae") or {}).get("serves") or []
        out.append(_p("unused", "no model in this library uses it" + (f" (it serves {', '.join(serves)})" if serves else "")))
    lora = s.get("lora")
    if lora and lora.get("family") not in (None, "unknown"):
        models = ctx["models"]
        fits = [m for m in models if _lora_fits(lora, m)]
        if models and not fits:
            out.append(_p("lora-orphan", f"made for {lora.get('targets') or lora.get('family')}; no model here matches it"))
    if s.get("kind") == "vae" and "sdxl" in name.lower() and "fp16" not in name.lower():  # the SDXL VAE by its name
        out.append(_p("vae-fp16", "the SDXL VAE overflows to NaN in fp16: decode in bf16/fp32 or use "
                      "sdxl-vae-fp16-fix"))
    if entry.get("sha256"):
        dups = [i for i in ctx["hashes"].get(entry["sha256"], []) if i != entry["id"]]
        if dups:
            out.append(_p("duplicate", "the same bytes as " + ", ".join(dups)))
    return out


# where each kind of file belongs, and the loader that lists that folder
_HOME = {"vae": ("vae", "VAELoader"), "lora": ("loras", "LoraLoader"), "text-encoder": ("text_encoders", "CLIPLoader"),
         "diffusion-model": ("diffusion_models", "Load Diffusion Model (UNETLoader)"),
         "checkpoint": ("checkpoints", "Load Checkpoint")}


def _misplaced(folder: str | None, s: dict) -> str | None:
    """Why a file sits in a folder whose loader cannot use it (a VAE, LoRA, text encoder or denoiser-
    only file in checkpoints/, a LoRA among the VAEs, ...), or None."""
    if not folder or s.get("not_opened"):
        return None
    what = s.get("kind") if s.get("kind") in ("vae", "lora", "text-encoder") else s.get("layout")
    if what == "diffusers" or what not in _HOME:
        return None
    home, loader = _HOME[what]
    ok = {"checkpoints": ("checkpoint",), "diffusion_models": ("diffusion-model", "checkpoint"), "vae": ("vae",),
          "loras": ("lora",), "text_encoders": ("text-encoder",)}.get(folder)
    if ok is None or what in ok:
        return None
    label = {"diffusion-model": "a denoiser-only file", "checkpoint": "a full checkpoint", "vae": "a VAE",
             "lora": "a LoRA", "text-encoder": "a text encoder"}[what]
    return f"{label} in {folder}/: the loaders of that folder cannot use it; move it to models/{home}/ ({loader})"


def _lora_fits(lora, model) -> bool:
    family, blocks = model
    if family not in (registry.lora_fits(lora["family"]) or (lora["family"],)):
        return False
    if lora["family"] == "anima" and blocks and lora.get("max_block") is not None:
        return lora["max_block"] < blocks and (not lora.get("anima_depth") or lora["anima_depth"] == blocks)
    return True


# ----------------------------------------------------------------------------------------------
# Hashes

def sha256_file(path: str, progress=None, chunk=8 << 20) -> str:
    h = hashlib.sha256()
    # opened without blocking and checked before a byte is read: a FIFO or device is refused at once
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ModelsmithError(f"{os.path.basename(path)}: not a regular file (a pipe, socket or device); not hashed")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    total = st.st_size
    done = 0
    with os.fdopen(fd, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            done += len(b)
            if progress:
                progress(done, total)
    return h.hexdigest()


def autov2(sha256: str) -> str:
    """Civitai's AutoV2 short hash: the first 10 hex digits of the file's sha256, upper case."""
    return sha256[:10].upper()


def file_hash(path: str, cache: Cache, progress=None) -> str:
    st = os.stat(path)
    hit = cache.get(path, st)
    if hit and hit.get("sha256"):
        return hit["sha256"]
    digest = sha256_file(path, progress)
    cache.put(path, st, sha256=digest)
    cache.save()
    return digest


# ----------------------------------------------------------------------------------------------
# Fixes: each writes a new file next to the original (atomically), the original untouched unless asked

# what a fix frees, as a share of the file's size: fp16 halves an fp32 file, pruning drops the EMA copy
_FREES = {"fp32": 0.5, "ema": 0.5}
# problems after which the model does not run (or runs wrong) as it is
CANNOT_RUN = ("refused", "unreadable", "vae-mismatch", "vpred-markers", "anima-core", "lora-orphan", "missing-companion")


def summary(entries: list[dict]) -> dict:
    """The Model Doctor's page head: files, total size, the space its fixes would free (fp16 of fp32
    files, pruning EMA, a duplicate's bytes), problems by kind, the models that cannot run as they
    are, and where the disk space goes by family and by precision."""
    by_kind, by_family, by_precision, cannot = {}, {}, {}, []
    total = frees = 0
    seen_hashes = set()
    for e in entries:
        size = e.get("size") or 0
        total += size
        s = e.get("summary") or {}
        kind = s.get("kind")
        fam = kind if kind in ("vae", "text-encoder", "lora", "pickle") else (s.get("family") or kind or "other")
        by_family[fam] = by_family.get(fam, 0) + size
        prec = s.get("precision") or "-"
        by_precision[prec] = by_precision.get(prec, 0) + size
        freed = 0.0
        for p in e.get("problems", []):
            by_kind[p["code"]] = by_kind.get(p["code"], 0) + 1
            freed = max(freed, _FREES.get(p["code"], 0.0))
            if p["code"] == "duplicate":
                if e.get("sha256") in seen_hashes:
                    freed = 1.0
                seen_hashes.add(e.get("sha256"))
        frees += int(size * freed)
        if any(p["code"] in CANNOT_RUN for p in e.get("problems", [])):
            cannot.append(e["id"])
    order = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
    return {"files": len(entries), "total_bytes": total, "freeable_bytes": frees,
            "with_problems": sum(1 for e in entries if e.get("problems")), "problems_by_kind": order(by_kind),
            "cannot_run": cannot, "by_family": order(by_family), "by_precision": order(by_precision)}


FIXES = ("convert", "markers", "prune", "fp16", "rename", "position-ids")


def fix_output(path: str, action: str) -> str:
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    if action == "rename":
        return os.path.join(folder, safe_filename(name))
    suffix = {"convert": "", "markers": "-vpred", "prune": "-pruned", "fp16": "-fp16", "position-ids": "-fixed-ids"}[action]
    return os.path.join(folder, safe_filename(stem + suffix) + ".safetensors")


def apply_fix(entry: dict, action: str, *, replace: bool = False, progress=None) -> dict:
    """Run one fix on a scanned file. `replace`: the result takes the original's place (the original is
    removed only after the new file is complete). Returns {"output", "action"}."""
    if action not in FIXES:
        raise ModelsmithError(f"unknown fix {action!r}; fixes are {', '.join(FIXES)}")
    offered = {p.get("fix") for p in entry.get("problems", [])}
    if (entry.get("summary") or {}).get("not_opened"):  # a pickle a scan did not open: every rewrite reads it
        offered |= {"convert", "prune", "fp16"}            # in the limited child; what it holds decides there
    if action not in offered:
        raise ModelsmithError(f"{entry['name']}: '{action}' does not apply to this file (its problems offer "
                              f"{', '.join(sorted(x for x in offered if x)) or 'no fix'})")
    src = entry["path"]
    out = fix_output(src, action)
    fd = _open_as_scanned(entry)
    try:
        return _apply_fix(entry, action, src, out, _fd_path(fd, src), replace, progress)
    finally:
        os.close(fd)


def _same(entry, st) -> bool:
    ident = entry.get("identity")
    return ident is not None and [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] == list(ident)


def _open_as_scanned(entry) -> int:
    """The scanned file, opened now: refused when a link is anywhere in its path below its model
    folder, when it left the folder, or when it is not the very file the scan saw (device, inode,
    size, modification time). What is read afterwards is read through this descriptor."""
    path, root = entry["path"], entry.get("root")
    name = entry["name"]
    if root is None or not _inside(path, [os.path.realpath(root)]):
        raise ModelsmithError(f"{name}: not inside its model folder any more; rescan")
    rel = os.path.relpath(path, root)
    cur = root
    for part in rel.split(os.sep):
        cur = os.path.join(cur, part)
        try:
            if stat.S_ISLNK(os.lstat(cur).st_mode):
                raise ModelsmithError(f"{name}: a link is in its path ({os.path.relpath(cur, root)}); fixes only "
                                      f"touch plain files inside the model folders")
        except FileNotFoundError:
            raise ModelsmithError(f"{name}: gone since the scan; rescan") from None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ModelsmithError(f"{name}: cannot open it ({e.strerror}); rescan") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not _same(entry, st):
        os.close(fd)
        raise ModelsmithError(f"{name}: changed since the scan (another file now has its name, or it was "
                              f"modified); nothing was read or written. Rescan and try again.")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def _fd_path(fd: int, path: str) -> str:
    """A path that opens exactly this descriptor's file (Linux: /proc/PID/fd/N), else the path."""
    p = f"/proc/{os.getpid()}/fd/{fd}"
    return p if os.path.exists(p) else path


def _apply_fix(entry, action, src, out, read_path, replace, progress):
    from .convert import run_convert
    if action == "rename":
        if os.path.basename(out) == os.path.basename(src):
            raise ModelsmithError(f"{entry['name']}: the name is already safe")
        try:
            os.link(src, out)  # fails if the new name exists: never clobbers
        except FileExistsError:
            raise ModelsmithError(f"{os.path.basename(out)} exists already; not renamed") from None
        os.unlink(src)
        return {"output": out, "action": action}
    if replace:  # written under a name of its own first; the original goes only once the result is complete
        out = os.path.splitext(out)[0] + f".modelsmith-{int(time.time())}.safetensors"
    if action == "convert":
        run_convert(read_path, out, dtype=None, ema="keep", progress=progress)
    elif action == "prune":
        run_convert(read_path, out, dtype=None, ema="drop", progress=progress)
    elif action == "fp16":
        run_convert(read_path, out, dtype="fp16", ema="keep", progress=progress)
    elif action == "markers":
        add_vpred_markers(read_path, out, ztsnr=False, progress=progress)
    elif action == "position-ids":
        from .convert import fix_position_ids
        fix_position_ids(read_path, out, progress=progress)
    if replace:
        return _take_the_place(entry, src, out, action)
    return {"output": out, "action": action}


def _take_the_place(entry, src, out, action) -> dict:
    """The finished result takes the original's place, losing nothing: another file of the target
    name is never replaced, and an original that changed while the fix ran (a newer file of the same
    name) is kept, the result staying under its own name."""
    final = src if src.endswith(".safetensors") else os.path.splitext(src)[0] + ".safetensors"
    try:
        unchanged = _same(entry, os.lstat(src))
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        return {"output": out, "action": action, "kept": src,
                "note": f"{os.path.basename(src)} changed while the fix ran; the newer file was kept and the "
                        f"result is {os.path.basename(out)}"}
    if final == src:
        os.replace(out, final)
    else:
        try:
            os.link(out, final)  # never clobbers: fails when the target name exists
        except FileExistsError:
            return {"output": out, "action": action, "kept": final,
                    "note": f"{os.path.basename(final)} exists already and was not replaced; the result is "
                            f"{os.path.basename(out)} and {os.path.basename(src)} was kept"}
        os.unlink(out)
        os.unlink(src)
    return {"output": final, "action": action}


def add_vpred_markers(src: str, out: str, *, ztsnr: bool = False, progress=None) -> str:
    """A copy of a safetensors checkpoint with the empty `v_pred` (and `ztsnr`) marker tensors ComfyUI
    and A1111 read, plus `modelspec.prediction_type` = v; tensors streamed, never all in memory. (The
    header cannot grow in place without moving all the data, and rewriting the original in place would
    not be atomic, so this is always a streaming copy.)"""
    import torch
    from .stream import AtomicWriter, Reader
    with Reader(src) as r:
        entries = {k: (r.info(k)[0], r.info(k)[1]) for k in r.keys()}
        meta = dict(r.metadata or {})
        for m in ("v_pred",) + (("ztsnr",) if ztsnr else ()):
            entries.setdefault(m, ("F32", (0,)))
        meta["modelspec.prediction_type"] = "v"
        keys = list(entries)
        with AtomicWriter(out, entries, meta) as w:
            for i, k in enumerate(keys):
                w.add(k, r.get(k) if k in r else torch.zeros(0))
                if progress:
                    progress(i + 1, len(keys))
    return out
