"""fp16 Anima (and Cosmos) without overflow: the residual stream in fp32, attention and MLP in fp16,
as forward hooks on one model instance (nothing patched globally)."""
from __future__ import annotations

import torch
from comfy.ldm.cosmos.predict2 import MiniTrainDIT


def _entering_block(dit):
    def hook(block, args):
        x = args[0]
        if block is dit.blocks[0]:
            # decided once per forward, by the first block: fp16 compute shows in the stream (older
            # ComfyUI) or, where the runtime itself widens the stream to fp32 (0.29), in the embedding
            emb = args[1] if len(args) > 1 and torch.is_tensor(args[1]) else x
            dit._ms_fp16_active = torch.float16 in (x.dtype, emb.dtype)
        if getattr(dit, "_ms_fp16_active", False) and x.dtype != torch.float32:
            return (x.float(),) + tuple(args[1:])
        return None
    hook._modelsmith = True
    return hook


def _to_fp16_when_active(dit):
    def hook(module, args):
        if not getattr(dit, "_ms_fp16_active", False):
            return None
        return tuple(a.to(torch.float16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    hook._modelsmith = True
    return hook


def _to_fp32_when_active(dit):
    def hook(module, args, output):
        if getattr(dit, "_ms_fp16_active", False) and torch.is_tensor(output):
            return output.float()
        return None
    hook._modelsmith = True
    return hook


# the fp32 stream is divided per token down to this magnitude before the final layer when larger
_FINAL_MAX = 2.0 ** 14


def _fits_fp16_before_final_layer(dit):
    """After the last block: tokens whose fp32 stream exceeds fp16's range are divided by a positive
    per-token factor. The final layer starts with a LayerNorm, which that division leaves unchanged
    (up to its eps), so a runtime that casts the stream to fp16 before the final layer (0.29 does)
    gets finite values instead of inf."""
    def hook(module, args, output):
        if not getattr(dit, "_ms_fp16_active", False) or not torch.is_tensor(output) or output.dtype != torch.float32:
            return None
        amax = output.abs().amax(dim=-1, keepdim=True)
        if not bool((amax > _FINAL_MAX).any()):
            return None
        return output / torch.where(amax > _FINAL_MAX, amax / _FINAL_MAX, torch.ones_like(amax))
    hook._modelsmith = True
    return hook


def enable_fp32_residual(dit: MiniTrainDIT, reinstall: bool = False) -> list:
    """Keep the Cosmos residual stream in fp32 whenever the model computes in fp16.

    When the stream enters the first block as fp16 (fp16 weights, or ComfyUI computing bf16/fp32
    weights in fp16), it is widened to fp32; self-attention, cross-attention and the MLP get their
    inputs in fp16 and hand back fp32, so the gated residual sums (which outgrow fp16's 65504 in
    real models) are done in fp32, and the final projection runs in fp16 on the normalised stream.
    In bf16 or fp32 the hooks do nothing. No values are clamped. The hooks live on this model
    instance only; returns their handles. `reinstall` first drops hooks carried over by a copy of
    a model (their closures point at the original)."""
    if reinstall:
        for m in dit.modules():
            for hooks in (m._forward_pre_hooks, m._forward_hooks):
                for k in [k for k, h in hooks.items() if getattr(h, "_modelsmith", False)]:
                    del hooks[k]
        dit.modelsmith_fp32_residual = False
    if getattr(dit, "modelsmith_fp32_residual", False):
        return []
    handles = []
    down, up = _to_fp16_when_active(dit), _to_fp32_when_active(dit)
    for block in dit.blocks:
        handles.append(block.register_forward_pre_hook(_entering_block(dit)))
        for part in (block.self_attn, block.cross_attn, block.mlp):
            handles.append(part.register_forward_pre_hook(down))
            handles.append(part.register_forward_hook(up))
    handles.append(dit.blocks[-1].register_forward_hook(_fits_fp16_before_final_layer(dit)))
    handles.append(dit.final_layer.linear.register_forward_pre_hook(down))
    dit.modelsmith_fp32_residual = True
    return handles
