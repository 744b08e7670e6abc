"""Anima's text encoder where the runtime lacks it: Qwen3 (sized from the file) on ComfyUI's own Llama
code, tokenized twice (Qwen2 ids for the LLM, T5 ids + weights for the LLM adapter), and whether
core's own Anima text encoder can hold a given file."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from torch import nn

import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.text_encoders.llama as llama

from ..core.errors import ModelsmithError
from ..core.families import count_indexed
from .anima import native_anima_available


@dataclass
class Qwen3SmallConfig:
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    max_position_embeddings: int = 40960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    transformer_type: str = "llama"
    head_dim: int = 128
    rms_norm_add: bool = False
    mlp_activation: str = "silu"
    qkv_bias: bool = False
    rope_dims: object = None
    q_norm: str = "gemma3"
    k_norm: str = "gemma3"
    rope_scale: object = None
    final_norm: bool = True
    lm_head: bool = False


class Qwen3Small(llama.BaseLlama, nn.Module):
    """Qwen3 (0.6B by default; sizes from the config dict) on ComfyUI's Llama2_ implementation."""

    def __init__(self, config_dict, dtype, device, operations):
        super().__init__()
        # the runtime's own Qwen3-0.6B config where it has one (its Llama code reads what that config
        # defines, and newer releases add fields), else the pack's; sizes from the file either way
        base = getattr(llama, "Qwen3_06BConfig", None)
        config = base() if base is not None else Qwen3SmallConfig()
        fields = Qwen3SmallConfig.__dataclass_fields__
        for k, v in config_dict.items():
            if k in fields:
                setattr(config, k, v)
        self.num_layers = config.num_hidden_layers
        self.model = llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
        self.dtype = dtype

    def forward(self, input_ids, attention_mask=None, *args, **kwargs):
        # The empty prompt is one pad token with nothing unmasked. Current ComfyUI masks with a
        # finite minimum, so that lone token attends to itself; 0.3.75 masks with -inf, which gives
        # NaN everywhere. Unmasking a row that has no visible token gives upstream's result on both.
        if torch.is_tensor(attention_mask) and attention_mask.ndim == 2:
            empty = attention_mask.sum(dim=-1) == 0
            if bool(empty.any()):
                attention_mask = attention_mask.clone()
                attention_mask[empty] = 1
        return self.model(input_ids, attention_mask, *args, **kwargs)


def qwen3_config_from_sd(sd: dict, prefix: str = "") -> dict:
    emb = sd[prefix + "model.embed_tokens.weight"]
    head_dim = sd[prefix + "model.layers.0.self_attn.q_norm.weight"].shape[0]
    return {"vocab_size": emb.shape[0], "hidden_size": emb.shape[1],
            "intermediate_size": sd[prefix + "model.layers.0.mlp.gate_proj.weight"].shape[0],
            "num_hidden_layers": count_indexed(sd, prefix + "model.layers"), "head_dim": head_dim,
            "num_attention_heads": sd[prefix + "model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
            "num_key_value_heads": sd[prefix + "model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim}


def _tokenizer_dir(name):
    return os.path.join(os.path.dirname(os.path.realpath(comfy.sd1_clip.__file__)), "text_encoders", name)


class AnimaTokenizer:
    """Qwen2 ids (no start/end, pad 151643, weights 1) for the LLM and T5 ids (+weights) for the adapter."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        from transformers import Qwen2Tokenizer, T5TokenizerFast
        self.qwen3_06b = comfy.sd1_clip.SDTokenizer(
            _tokenizer_dir("qwen25_tokenizer"), pad_with_end=False, embedding_directory=embedding_directory,
            embedding_size=1024, embedding_key="qwen3_06b", tokenizer_class=Qwen2Tokenizer, has_start_token=False,
            has_end_token=False, pad_to_max_length=False, max_length=99999999, min_length=1, pad_token=151643,
            tokenizer_data=tokenizer_data)
        self.t5xxl = comfy.sd1_clip.SDTokenizer(
            _tokenizer_dir("t5_tokenizer"), pad_with_end=False, embedding_directory=embedding_directory,
            embedding_size=4096, embedding_key="t5xxl", tokenizer_class=T5TokenizerFast, has_start_token=False,
            pad_to_max_length=False, max_length=99999999, min_length=1, tokenizer_data=tokenizer_data)

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        qwen = self.qwen3_06b.tokenize_with_weights(text, return_word_ids, **kwargs)
        qwen = [[(t[0], 1.0) + tuple(t[2:]) for t in part] for part in qwen]
        return {"qwen3_06b": qwen, "t5xxl": self.t5xxl.tokenize_with_weights(text, return_word_ids, **kwargs)}

    def untokenize(self, token_weight_pair):
        return self.t5xxl.untokenize(token_weight_pair)

    def state_dict(self):
        return {}


class AnimaTextEncoder(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, config=None):
        clip_model = functools.partial(
            comfy.sd1_clip.SDClipModel, layer="last", textmodel_json_config=config or {}, special_tokens={"pad": 151643},
            layer_norm_hidden_state=False, model_class=Qwen3Small, enable_attention_masks=True,
            return_attention_masks=True)
        super().__init__(device=device, dtype=dtype, name="qwen3_06b", clip_model=clip_model, model_options=model_options)

    def encode_token_weights(self, token_weight_pairs):
        out = super().encode_token_weights(token_weight_pairs)
        t5 = token_weight_pairs["t5xxl"][0]
        extra = out[2] if len(out) > 2 else {}
        extra["t5xxl_ids"] = torch.tensor([0 if torch.is_tensor(t[0]) else t[0] for t in t5], dtype=torch.int)
        extra["t5xxl_weights"] = torch.tensor([t[1] for t in t5])
        return (out[0], out[1], extra)


# Qwen3-0.6B as core's Anima text encoder builds it (fixed sizes)
NATIVE_QWEN3 = {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                "head_dim": 128, "num_attention_heads": 16, "num_key_value_heads": 8}


def text_encoder_misfit(te_sd: dict) -> str | None:
    """None when core's Anima text encoder (Qwen3-0.6B, fixed sizes) can hold this file, else why not."""
    if not native_anima_available():
        return "this ComfyUI has no native Anima"
    cfg = qwen3_config_from_sd(te_sd)
    diff = [f"{k} {cfg[k]} (core: {v})" for k, v in NATIVE_QWEN3.items() if cfg.get(k) != v]
    return ("not the Qwen3-0.6B core builds: " + ", ".join(diff)) if diff else None


def load_text_encoder(te_sd: dict, embedding_directory=None):
    if "model.layers.0.self_attn.q_norm.weight" not in te_sd:
        raise ModelsmithError("not a Qwen3 text encoder (no model.layers.0.self_attn.q_norm.weight)")
    config = qwen3_config_from_sd(te_sd)
    target = comfy.supported_models_base.ClipTarget(AnimaTokenizer, functools.partial(AnimaTextEncoder, config=config))
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, parameters=sum(v.numel() for v in te_sd.values()))
    clip.load_sd({"qwen3_06b.transformer." + k: v for k, v in te_sd.items()}, full_model=True)
    return clip


