"""Prepare a model for publishing, as the seed guide advises: fp16, EMA pruned, safetensors, a file
name without spaces or non-ASCII characters, ModelSpec metadata, and a Hugging Face model card.

`publish(model, outdir)` writes into `outdir` (created; never overwriting a file there) the converted
model and a README.md whose YAML front matter Hugging Face reads (license, base_model where the
family's registry record knows it, tags, pipeline_tag) and whose body gives the family, variant,
prediction / ZTSNR, the recommended settings from the registry, the files with their sha256, and for
v-prediction models what A1111 / Forge / ComfyUI users need. It returns the upload command
(`hf upload ...`), which it never runs."""
from __future__ import annotations

import json
import os

from . import registry
from .errors import ModelsmithError
from .files import safe_filename, write_new_text

# Hugging Face licence ids a model card may name (the common ones for image models)
LICENSES = ("creativeml-openrail-m", "openrail++", "other", "apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0",
            "cc-by-nc-sa-4.0", "flux-1-dev-non-commercial-license", "stabilityai-ai-community")


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid YAML flow scalar


def model_card(report: dict, *, title: str, license: str, files: list[tuple[str, int, str]]) -> str:
    """The README.md of a published model: YAML front matter, then markdown."""
    fam, variant, pred, ztsnr = report.get("family"), report.get("variant"), report.get("prediction"), report.get("ztsnr")
    rec = registry.get(fam)
    tags = ["text-to-image", "safetensors", "modelsmith"] + ([fam] if rec else [])
    if pred == "v":
        tags.append("v-prediction")
    if ztsnr:
        tags.append("zero-terminal-snr")
    base = (rec.variants.get(variant, {}).get("base_model") or rec.base_model) if rec else None
    front = ["---", f"license: {license}"]
    if base:
        front.append(f"base_model: {base}")
    front += ["pipeline_tag: text-to-image", "tags:"]
    front += [f"- {t}" for t in tags]
    front.append("---")
    settings = registry.settings(fam, variant, pred)
    body = [f"# {title}", "",
            f"- Family: {rec.label if rec else fam}" + (f" ({variant})" if variant else ""),
            f"- Prediction: {pred or 'unknown'}" + (" with zero terminal SNR (ztsnr)" if ztsnr else ""),
            f"- Stored as: {report.get('precision')}, safetensors" + (", EMA pruned" if not report.get("ema") else ""),
            "", "## Recommended settings", "",
            "| setting | value |", "| --- | --- |"]
    body += [f"| {k} | {v} |" for k, v in settings.items()]
    if pred == "v":
        body += ["", "## v-prediction", "",
                 "This is a v-prediction model" + (" trained with zero terminal SNR" if ztsnr else "") + ". The file "
                 "carries the `v_pred`" + (" and `ztsnr`" if ztsnr else "") + " marker keys: ComfyUI (and "
                 "Modelsmith's loaders) read them by themselves. In AUTOMATIC1111 / Forge use a version that "
                 "reads them (A1111 1.8+ / Forge) or set the v-prediction option"
                 + (" and zero terminal SNR (rescale CFG ~0.7)" if ztsnr else "") + "; an eps sampler gives gray "
                 "or noisy images."]
    body += ["", "## Files", "", "| file | size | sha256 |", "| --- | --- | --- |"]
    body += [f"| {name} | {size / 1e9:.2f} GB | `{sha}` |" if size >= 1e8 else f"| {name} | {size / 1e6:.1f} MB | `{sha}` |"
             for name, size, sha in files]
    body += ["", "Prepared with Modelsmith (fp16, EMA pruned, safetensors, ModelSpec metadata)."]
    return "\n".join(front) + "\n\n" + "\n".join(body) + "\n"


def publish(src: str, outdir: str, *, title: str | None = None, license: str = "other", repo: str | None = None,
            progress=None) -> dict:
    """Write `outdir/<safe name>.safetensors` and `outdir/README.md`; returns {"folder", "model", "card",
    "sha256", "upload"}. Refuses a pickle the guard refuses, and never replaces a file."""
    from .convert import run_convert
    from .doctor import sha256_file
    from .inspect import inspect_file
    if license not in LICENSES:
        raise ModelsmithError(f"license must be a Hugging Face licence id: {', '.join(LICENSES)}")
    report = inspect_file(src)  # a pickle is read in the limited child; a refused one stops here
    if not report["components"].get("denoiser"):
        raise ModelsmithError(f"{os.path.basename(src)}: no denoiser in this file; publish a model checkpoint")
    stem = os.path.splitext(os.path.basename(src))[0]
    title = title or stem
    name = safe_filename(title.replace(" ", "_")) + ".safetensors"
    os.makedirs(outdir, exist_ok=True)
    model_path, card_path = os.path.join(outdir, name), os.path.join(outdir, "README.md")
    for p in (model_path, card_path):
        if os.path.lexists(p):
            raise ModelsmithError(f"{p} exists already; publish never overwrites (choose another folder)")
    run_convert(src, model_path, dtype="fp16", ema="drop" if report.get("ema") else "keep", title=title,
                progress=progress, extra_metadata={"modelspec.license": license})
    out_report = inspect_file(model_path)
    sha = sha256_file(model_path)
    card = model_card(out_report, title=title, license=license, files=[(name, os.path.getsize(model_path), sha)])
    write_new_text(card_path, card)
    target = repo or f"<your-name>/{os.path.splitext(name)[0]}"
    return {"folder": outdir, "model": model_path, "card": card_path, "sha256": sha,
            "upload": f"hf upload {target} {outdir} . --repo-type model"}
