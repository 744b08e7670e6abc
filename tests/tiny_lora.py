"""Tiny LoRA / LyCORIS files in the key styles in circulation, and the weight change each should make.

style: kohya (lora_unet_*), diffusion_model (diffusion_model.*, PEFT lora_A/lora_B), net (net.*),
lycoris (lycoris_*). algo: lora (down/up/alpha), lokr (full Kronecker factors), loha (Hadamard of
two low-rank products, alpha). `expected_delta` is written from the formulas, not from ComfyUI.
"""
from __future__ import annotations

import torch


def _name(style: str, module: str) -> str:
    return {"kohya": "lora_unet_" + module.replace(".", "_"), "diffusion_model": "diffusion_model." + module,
            "net": "net." + module, "lycoris": "lycoris_" + module.replace(".", "_")}[style]


def make(style: str, algo: str, modules: dict, seed: int = 0, rank: int = 4, alpha: float = 2.0) -> dict:
    """modules: {dotted module path: (out_features, in_features)} -> {tensor name: tensor}."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, (out_f, in_f) in modules.items():
        p = _name(style, module)
        if algo == "lora":
            down, up = torch.randn(rank, in_f, generator=g) * 0.1, torch.randn(out_f, rank, generator=g) * 0.1
            if style == "diffusion_model":
                sd[p + ".lora_A.weight"], sd[p + ".lora_B.weight"] = down, up
            else:
                sd[p + ".lora_down.weight"], sd[p + ".lora_up.weight"] = down, up
            sd[p + ".alpha"] = torch.tensor(alpha)
        elif algo == "lokr":
            sd[p + ".lokr_w1"] = torch.randn(2, 2, generator=g) * 0.1
            sd[p + ".lokr_w2"] = torch.randn(out_f // 2, in_f // 2, generator=g) * 0.1
        elif algo == "loha":
            for i in (1, 2):
                sd[p + f".hada_w{i}_a"] = torch.randn(out_f, rank, generator=g) * 0.3
                sd[p + f".hada_w{i}_b"] = torch.randn(rank, in_f, generator=g) * 0.3
            sd[p + ".alpha"] = torch.tensor(alpha)
    return sd


def expected_delta(sd: dict, style: str, algo: str, module: str, strength: float = 1.0) -> torch.Tensor:
    p = _name(style, module)
    if algo == "lora":
        down = sd.get(p + ".lora_down.weight", sd.get(p + ".lora_A.weight"))
        up = sd.get(p + ".lora_up.weight", sd.get(p + ".lora_B.weight"))
        scale = float(sd[p + ".alpha"]) / down.shape[0] if p + ".alpha" in sd else 1.0
        return strength * scale * (up @ down)
    if algo == "lokr":  # full factors: no rank, so alpha does not scale it
        return strength * torch.kron(sd[p + ".lokr_w1"], sd[p + ".lokr_w2"])
    w1 = sd[p + ".hada_w1_a"] @ sd[p + ".hada_w1_b"]
    w2 = sd[p + ".hada_w2_a"] @ sd[p + ".hada_w2_b"]
    return strength * float(sd[p + ".alpha"]) / sd[p + ".hada_w1_b"].shape[0] * (w1 * w2)
