"""Prompt-tag builder nodes: Anima / Illustrious / NoobAI / Pony prompts in trained order."""
from __future__ import annotations

from ..core import prompt as P
from ..core.errors import ModelsmithError
from . import common

_CONV = (list(P.CONVENTIONS), {"default": "anima", "tooltip": "Whose tag order and spelling to follow."})


def _text(tooltip, default="", multiline=False):
    return ("STRING", {"default": default, "multiline": multiline, "tooltip": tooltip})


def _encode(clip, text):
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens)


class ModelsmithAnimaPrompt:
    DESCRIPTION = ("Builds a prompt in the order the model learned: quality/meta/year/safety, count, character, "
                   "series, artist, general tags, then natural language; with the matching negative preset.")
    CATEGORY = "modelsmith/prompt"
    RETURN_TYPES = ("STRING", "STRING", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative", "positive_cond", "negative_cond")
    FUNCTION = "build"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "convention": _CONV,
            "quality": _text("Quality tags, e.g. masterpiece, best quality.", "masterpiece, best quality"),
            "score": _text("Score tags (score_9, score_8_up, ...).", ""),
            "period": _text("newest / recent / mid / early / old, or 'year 2024'.", ""),
            "rating": (["safe", "sensitive", "nsfw", "explicit", "none"], {"default": "safe",
                       "tooltip": "Safety tag; respelled per convention (Pony: rating_*)."}),
            "count": _text("1girl, 1boy, 1other, 2girls, no humans ...", "1girl"),
            "character": _text("Character tags.", ""),
            "series": _text("Series (copyright) tags.", ""),
            "artist": _text("Artist names; Anima gets one '@' each.", ""),
            "general": _text("General tags.", "", multiline=True),
            "description": _text("Natural-language description (placed last).", "", multiline=True),
        }, "optional": {"clip": ("CLIP", {"tooltip": "Connect to also get CONDITIONING outputs."})},
            "hidden": common.HIDDEN_GRAPH}

    def build(self, convention, quality, score, period, rating, count, character, series, artist, general,
              description, clip=None, prompt=None, unique_id=None):
        if clip is None and common.outputs_used(prompt, unique_id) & {2, 3}:
            raise ModelsmithError("Prompt Builder: its CONDITIONING outputs are used but no CLIP is connected; "
                                  "connect the model's CLIP to the builder's clip input")
        fields = dict(quality=", ".join(x for x in (quality, score) if x.strip()), period=period,
                      rating="" if rating == "none" else rating, count=count, character=character, series=series,
                      artist=artist, general=general)
        pos = P.build(convention, description=description, **fields)
        neg = P.negative(convention)
        # what the convention respelled or dropped, as the CLI shows it
        typed = ", ".join(v for v in fields.values() if v and v.strip())
        notes = [n for n in P.conversion_notes(typed, convention)]
        if convention == "anima":  # the guide's fixes for Anima's common complaints
            notes += P.anima_advice(pos)
        pc = nc = None
        if clip is not None:
            pc, nc = _encode(clip, pos), _encode(clip, neg)
        shown = [pos, neg] + (["notes:\n" + "\n".join(notes)] if notes else [])
        return {"ui": {"text": shown}, "result": (pos, neg, pc, nc)}


class ModelsmithTagNormalize:
    DESCRIPTION = "Cleans and reorders any tag prompt for a convention (weights, escapes and sentences kept)."
    CATEGORY = "modelsmith/prompt"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "notes")
    FUNCTION = "normalize"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": _text("Any comma-separated prompt.", "", multiline=True), "convention": _CONV}}

    def normalize(self, text, convention):
        out = P.normalize(text, convention)
        notes = "\n".join(P.conversion_notes(text, convention))
        return {"ui": {"text": [out]}, "result": (out, notes)}


class ModelsmithNegativePreset:
    DESCRIPTION = "The recommended negative prompt of a convention (Anima's official negative among them)."
    CATEGORY = "modelsmith/prompt"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("negative",)
    FUNCTION = "preset"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"convention": _CONV}}

    def preset(self, convention):
        return (P.negative(convention),)


NODE_CLASS_MAPPINGS = {
    "ModelsmithAnimaPrompt": ModelsmithAnimaPrompt,
    "ModelsmithTagNormalize": ModelsmithTagNormalize,
    "ModelsmithNegativePreset": ModelsmithNegativePreset,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ModelsmithAnimaPrompt": "Prompt Builder: Anima / Illustrious / Pony (Modelsmith)",
    "ModelsmithTagNormalize": "Normalize Tag Prompt (Modelsmith)",
    "ModelsmithNegativePreset": "Negative Prompt Preset (Modelsmith)",
}
