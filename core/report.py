"""The inspection report as text: what `modelsmith inspect` prints and the Inspect node shows."""
from __future__ import annotations


def format_report(r: dict) -> str:
    rows = [("file", r.get("file", {}).get("path", "")), ("family", r["family"]), ("variant", r["variant"] or "-"),
            ("layout", r["layout"] or "-"), ("precision", r["precision"] or "-")]
    if r.get("quantization"):
        counts = {**r["quantization"], **(r.get("unquantized_layers") or {})}
        rows.append(("quantized", ", ".join(f"{fmt} {n}" for fmt, n in counts.items()) + " layers"))
        qq = r.get("quantization_quality")
        if qq:
            rows.append(("quality", f"output error mean {qq.get('mean_error')}, worst {qq.get('worst_error')} "
                                    f"({qq.get('worst_layer')})"))
    rows += [
            ("prediction", r["prediction"] or "-"), ("ztsnr", "yes" if r["ztsnr"] else "no"),
            ("ema", "yes" if r["ema"] else "no"), ("params", f"{r['params'] / 1e6:,.1f} M"),
            ("denoiser", "yes" if r["components"].get("denoiser") else "no"),
            ("vae", "yes" if r["components"].get("vae") else "no"),
            ("text encoders", ", ".join(r["components"].get("text_encoders") or []) or "-")]
    rec = r.get("recommended") or {}
    rows.append(("recommended", ", ".join(f"{k} {v}" for k, v in rec.items())))
    d = r.get("details") or {}
    if r["family"] == "anima" and d.get("blocks"):
        rows.append(("anima", f"{d['blocks']} blocks, {d.get('width')} wide; LLM adapter {d.get('adapter_blocks')} blocks "
                              f"reading {d.get('text_encoder')}; loaded whole by ComfyUI's stock loaders in: "
                              + (d.get("comfyui_loads_whole_since") or "none (use Modelsmith's Anima loader)")))
    if r.get("lora"):
        from .lora import describe
        rows.append(("lora", describe(r["lora"])))
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for w in r.get("warnings", []):
        out.append(f"{'warning'.ljust(width)}  {w}")
    return "\n".join(out)
