"""Bundled workflows: API-format graphs <-> ComfyUI UI graphs and their validation against
/object_info (the HTTP client that queues them is tools/queue.py). Comfy-free.

The API twins in example_workflows/api/ are the source; the UI graphs in example_workflows/ are generated from them
with the server's /object_info (`python -m modelsmith workflows build`) plus a Note node each, and
`workflows check` proves the two still agree and that every node, widget value and link type exists.
"""
from __future__ import annotations

import json
import os

from ..core.errors import ModelsmithError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_DIR = os.path.join(HERE, "example_workflows")
API_DIR = os.path.join(WORKFLOW_DIR, "api")
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


# The template browser shows a workflow's file name as its title (and `<title>.jpg` as its thumbnail),
# so the UI graphs carry readable names; the CLI and the API twins keep the short ids.
TITLES = {
    "anima_t2i": "Anima - text to image",
    "anima_t2i_turbo": "Anima - turbo (8 steps, CFG 1)",
    "anima_fp16": "Anima - fp16 without overflow",
    "anima_fp8_nvfp4": "Anima - fp8 and nvfp4 weights",
    "sdxl_t2i": "SDXL - text to image",
    "sdxl_vpred_ztsnr_t2i": "SDXL - v-prediction and zero terminal SNR",
    "prompt_builder_to_sdxl": "Prompt Builder - Illustrious, NoobAI, Pony tags to SDXL",
    "inspect_model": "Inspect a model file",
    "merge_block_weights": "Merge checkpoints with block weights",
    "prune_convert_for_distribution": "Prune and convert for distribution",
    "quantize_and_save": "Quantize and save (fp8, nvfp4)",
    "any_model_t2i": "Any model - text to image",
}


def bundled() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(API_DIR) if f.endswith(".json"))


def ui_path(name: str) -> str:
    """The UI graph of a bundled workflow (its file name is the title the template browser shows)."""
    return os.path.join(WORKFLOW_DIR, f"{TITLES.get(name, name)}.json")


def load_api(name_or_path: str) -> dict:
    path = name_or_path if os.path.isfile(name_or_path) else os.path.join(API_DIR, f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise ModelsmithError(f"no workflow {name_or_path!r}; bundled: {', '.join(bundled())}")
    with open(path) as f:
        data = json.load(f)
    return data.get("prompt", data)


def _is_link(v):
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _spec(info, name):
    """(type, options) of an input from /object_info."""
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            spec = info["input"][section][name]
            return spec[0], (spec[1] if len(spec) > 1 else {})
    return None, None


def _input_order(info):
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return order.get("required", []) + order.get("optional", [])


def _is_widget(type_, options):
    return isinstance(type_, list) or type_ in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _type_name(type_):
    """A slot's type as the UI graph names it: a list of choices (an output core passes to a combo input,
    like a sampler name) is a COMBO."""
    return "COMBO" if isinstance(type_, list) else type_


def _has_control(name, type_, options):
    return type_ == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed"))


NODE_WIDTH = 340
COLUMN = 540  # column pitch: a node widens to fit its widest widget (a Prompt Builder, Model Compute Dtype ~460 px)


def node_height(info: dict) -> int:
    """The height a node of this type takes once a frontend has laid out its widgets, estimated on
    the taller of the two renderers (Nodes 2.0 rows are about 36 px, a multiline text box about 110),
    so that a template's nodes never grow over each other (tests/test_frontends.py measures it)."""
    links, widgets, texts = 0, 0, 0
    for name in _input_order(info):
        type_, opts = _spec(info, name)
        if _is_widget(type_, opts):
            widgets += 1 + int(_has_control(name, type_, opts))
            texts += int(type_ == "STRING" and bool(opts.get("multiline")))
        else:
            links += 1
    slots = max(links, len(info.get("output") or []))  # inputs on the left, outputs on the right
    return 40 + 26 * slots + 36 * widgets + 110 * texts


def api_to_ui(api: dict, object_info: dict, note: str = "") -> dict:
    """A UI graph (LiteGraph 0.4) for an API prompt, laid out left to right by dependency depth."""
    depth = {}

    def d(nid):
        if nid not in depth:
            depth[nid] = 0
            ins = [v for v in api[nid]["inputs"].values() if _is_link(v)]
            depth[nid] = 1 + max((d(v[0]) for v in ins), default=-1)
        return depth[nid]
    for nid in api:
        d(nid)
    nodes, links, link_id = [], [], 0
    out_links = {}
    column_y = {}  # the next free height in each column
    for nid in sorted(api, key=lambda n: (depth[n], int(n))):
        node = api[nid]
        info = object_info[node["class_type"]]
        height = node_height(info)
        y = column_y.get(depth[nid], 60)
        column_y[depth[nid]] = y + height + 70  # room for the title bar and a gap
        inputs, widgets = [], []
        for name in _input_order(info):
            type_, opts = _spec(info, name)
            value = node["inputs"].get(name)
            if _is_link(value):
                link_id += 1
                links.append([link_id, int(value[0]), value[1], int(nid), len(inputs),
                              _type_name(object_info[api[value[0]]["class_type"]]["output"][value[1]])])
                out_links.setdefault((value[0], value[1]), []).append(link_id)
                entry = {"name": name, "type": type_ if isinstance(type_, str) else "COMBO", "link": link_id}
                if _is_widget(type_, opts):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif _is_widget(type_, opts):
                widgets.append(value if value is not None else opts.get("default"))
                if _has_control(name, type_, opts):
                    widgets.append("fixed")
            elif value is None and name in info["input"].get("optional", {}):
                inputs.append({"name": name, "type": type_, "link": None})
            else:
                inputs.append({"name": name, "type": type_, "link": None})
        outputs = [{"name": (info.get("output_name") or info["output"])[i], "type": _type_name(t), "links": [], "slot_index": i}
                   for i, t in enumerate(info["output"])]
        ui_node = {"id": int(nid), "type": node["class_type"], "pos": [40 + COLUMN * depth[nid], y],
                   "size": [NODE_WIDTH, height], "flags": {}, "order": len(nodes), "mode": 0, "inputs": inputs,
                   "outputs": outputs, "properties": {"Node name for S&R": node["class_type"]},
                   "widgets_values": widgets}
        title = (node.get("_meta") or {}).get("title")
        if title and title != info.get("display_name"):
            ui_node["title"] = title  # a title of its own, as the user named it
        nodes.append(ui_node)
    by_id = {n["id"]: n for n in nodes}
    for (src, slot), ids in out_links.items():
        by_id[int(src)]["outputs"][slot]["links"] = ids
    next_id = max(by_id) + 1
    if note:
        nodes.append({"id": next_id, "type": "Note", "pos": [40, -260], "size": [520, 220], "flags": {}, "order": len(nodes),
                      "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [note]})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"modelsmith": True}, "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt a UI graph queues (virtual nodes dropped)."""
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in _input_order(info):
            type_, opts = _spec(info, name)
            if _is_widget(type_, opts) and name not in linked:
                if not values and name in info["input"].get("optional", {}):
                    continue  # a graph saved before this optional input existed: ComfyUI uses its default
                inputs[name] = values.pop(0)
                if _has_control(name, type_, opts):
                    values.pop(0)
            if name in linked:
                l = links[linked[name]]
                inputs[name] = [str(l[1]), l[2]]
        # as ComfyUI's own "Export (API)" writes it: clients address nodes by this title
        title = node.get("title") or info.get("display_name") or node["type"]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return api


def validate_ui(ui: dict, object_info: dict) -> list[str]:
    """Problems of a UI graph against /object_info (empty when it is sound)."""
    errors = []
    nodes = {n["id"]: n for n in ui["nodes"]}
    for n in ui["nodes"]:
        if n["type"] in VIRTUAL_NODES:
            continue
        if n["type"] not in object_info:
            errors.append(f"node {n['id']}: unknown node type {n['type']}")
    if errors:
        return errors
    try:
        api = ui_to_api(ui, object_info)
    except (IndexError, KeyError) as e:
        return [f"widgets do not match the node inputs ({e})"]
    for nid, node in api.items():
        info = object_info[node["class_type"]]
        for name, value in node["inputs"].items():
            type_, opts = _spec(info, name)
            if _is_link(value):
                continue
            if isinstance(type_, list) and value not in type_:
                errors.append(f"node {nid} {node['class_type']}.{name}: {value!r} is not one of its choices")
            elif type_ in ("INT", "FLOAT"):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    errors.append(f"node {nid} {node['class_type']}.{name}: {value!r} is not a number")
                elif ("min" in opts and value < opts["min"]) or ("max" in opts and value > opts["max"]):
                    errors.append(f"node {nid} {node['class_type']}.{name}: {value} outside [{opts.get('min')}, {opts.get('max')}]")
            elif type_ == "BOOLEAN" and not isinstance(value, bool):
                errors.append(f"node {nid} {node['class_type']}.{name}: {value!r} is not a boolean")
            elif type_ == "STRING" and not isinstance(value, str):
                errors.append(f"node {nid} {node['class_type']}.{name}: {value!r} is not text")
        for section in ("required",):
            for name in info["input"].get(section, {}):
                if name not in node["inputs"]:
                    errors.append(f"node {nid} {node['class_type']}: required input {name} is missing")
    for l in ui["links"]:
        lid, src, slot, dst, dslot, type_ = l
        if src not in nodes or dst not in nodes:
            errors.append(f"link {lid}: a node is missing")
            continue
        out_type = _type_name(object_info[nodes[src]["type"]]["output"][slot])
        in_entry = nodes[dst]["inputs"][dslot]
        in_type = _spec(object_info[nodes[dst]["type"]], in_entry["name"])[0]
        in_type = "COMBO" if isinstance(in_type, list) else in_type
        if out_type != type_ or (in_type != out_type and in_type != "*"):
            errors.append(f"link {lid}: {nodes[src]['type']} gives {out_type}, {nodes[dst]['type']}.{in_entry['name']} takes {in_type}")
    return errors


def apply_sets(api: dict, sets: list[str], object_info: dict | None = None) -> dict:
    """--set node.input=value (value parsed as JSON when it can be, else taken as text). The node id
    must be one of the workflow's and the input one its node has (from /object_info when given, else
    the inputs the workflow sets): a typo is an error, never a silently unchanged job."""
    api = json.loads(json.dumps(api))
    for s in sets:
        key, eq, raw = s.partition("=")
        nid, dot, name = key.partition(".")
        if not eq or not dot or nid not in api:
            raise ModelsmithError(f"--set {s!r}: use NODE.INPUT=VALUE with a node id of the workflow ({', '.join(api)})")
        ctype = api[nid].get("class_type")
        info = (object_info or {}).get(ctype)
        known = set(api[nid].get("inputs", {}))
        if info:
            known |= {k for sec in ("required", "optional") for k in (info.get("input", {}).get(sec) or {})}
        if name not in known:
            raise ModelsmithError(f"--set {s!r}: node {nid} ({ctype}) has no input {name!r}; its inputs are "
                                  f"{', '.join(sorted(known))}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        api[nid]["inputs"][name] = value
    return api


_ANIMA_FILES = ("Files: ComfyUI/models/diffusion_models/anima-base-v1.0.safetensors (or anima-preview*), "
                "ComfyUI/models/text_encoders/qwen_3_06b_base.safetensors, ComfyUI/models/vae/qwen_image_vae.safetensors.\n")
NOTES = {
    "anima_t2i": _ANIMA_FILES + "Recommended: ~1 MP (1024x1024, 896x1152, 832x1216, 768x1344), 30 steps, CFG 4, "
                 "er_sde / simple, flow shift 3. Prompt order: quality/meta/year/safety, count, character, series, "
                 "@artist, general tags, then natural language.",
    "anima_t2i_turbo": _ANIMA_FILES + "Turbo (LoRA or model): the sampler's turbo switch uses 8 steps at CFG 1 "
                       "(8-12 steps, CFG 1 per the model card). Pick the Turbo LoRA (models/loras/anima-turbo-lora*) "
                       "in turbo_lora, or load a turbo model; with neither the sampler's report says so.",
    "anima_fp16": _ANIMA_FILES + "fp16 for GPUs without fast bf16: the loader's dtype fp16 keeps the residual stream "
                  "in fp32 (no overflow, no clamping). Otherwise as the base workflow: 30 steps, CFG 4, er_sde/simple.",
    "anima_fp8_nvfp4": _ANIMA_FILES + "Smaller and, on fp8 GPUs (RTX 40xx / SM 8.9+), faster: Model Compute Dtype "
                       "quantizes the loaded model's linear weights to fp8_e4m3fn (1 byte/param) or nvfp4 (~0.56 "
                       "byte/param; native on RTX 50xx / SM 10+, dequantized elsewhere). The anima preset keeps "
                       "blocks.0, block 1's AdaLN, the final layer, llm_adapter and the embedders in high precision; "
                       "LoRAs still apply. Otherwise as the base workflow: 30 steps, CFG 4, er_sde/simple.",
    "sdxl_t2i": "File: ComfyUI/models/checkpoints/sd_xl_base_1.0.safetensors (any SDXL eps checkpoint).\n"
                "Recommended: 1024x1024 or another SDXL bucket, ~25 steps, CFG 5-7 (0 = auto 6). The SDXL VAE "
                "overflows in fp16: the Modelsmith VAE Decode retries in bf16/fp32 and reports it.",
    "any_model_t2i": "File: any checkpoint or diffusion model in ComfyUI/models/checkpoints or diffusion_models (SD1, "
                     "SD2, SDXL, SD3/3.5, FLUX.1, FLUX.2, Qwen-Image, Z-Image, Lumina 2, Cosmos-Predict2, Anima). The "
                     "loader finds its text encoders (models/text_encoders) and VAE (models/vae) by their headers, "
                     "with the right CLIP type; a missing one stops it with the files to get. Settings for KSampler "
                     "gives core's KSampler the family's recommended steps, CFG, sampler, scheduler, latent and shift.",
    "quantize_and_save": "File: a diffusion model in ComfyUI/models/diffusion_models (here Anima) or a checkpoint. "
                         "Writes fp8 (scaled, loads in ComfyUI 0.3.x and later) or nvfp4 (current ComfyUI) in "
                         "ComfyUI's native format where a loader lists it (destination auto): a diffusion model "
                         "into ComfyUI/models/diffusion_models (load it with Load Diffusion Model), a checkpoint into "
                         "ComfyUI/models/checkpoints (Load Checkpoint). The family preset keeps sensitive layers "
                         "(Anima: blocks.0, blocks.1 AdaLN, final layer, llm_adapter, embedders) in high precision.",
    "sdxl_vpred_ztsnr_t2i": "File: ComfyUI/models/checkpoints/ a v-prediction + ZTSNR SDXL model (e.g. NoobAI-XL "
                            "V-Pred). No yaml needed: v_pred/ztsnr markers are read; the sampler forces v+ztsnr for "
                            "files without them. Recommended: CFG <= 5 (0 = auto 4.5) with CFG rescale 0.7, euler ancestral (as set here).",
    "prompt_builder_to_sdxl": "File: ComfyUI/models/checkpoints/illustriousXL_v01.safetensors (Illustrious/NoobAI). "
                              "The prompt builder orders and spells tags as the model learned; the negative preset "
                              "comes with it. Recommended: 1024x1024, ~25 steps, CFG 5-7.",
    "inspect_model": "Put any checkpoint in ComfyUI/models/checkpoints or diffusion_models (unet). The node reads "
                     "only the header: family, layout, precision, prediction, ZTSNR, EMA, components, recommended "
                     "settings and warnings.",
    "merge_block_weights": "Files: two checkpoints of the same family in ComfyUI/models/checkpoints. Block weights: "
                           "SD1 26 (BASE, IN00-IN11, M00, OUT00-OUT11), SDXL 21 (BASE, IN00-IN08, M00, OUT00-OUT08, "
                           "VAE); unlisted blocks use alpha. Streams tensor by tensor; writes to "
                           "ComfyUI/output/checkpoints with the recipe JSON beside it.",
    "prune_convert_for_distribution": "File: a checkpoint in ComfyUI/models/checkpoints (.safetensors or .ckpt, read "
                                      "through the allowlist). Writes fp16, EMA dropped (or 'only' for emaonly), "
                                      "ModelSpec metadata with hash, ASCII file name without spaces.",
}


def build_all(object_info: dict, names=None) -> list[str]:
    """Write example_workflows/<name>.json (UI graph) from each API twin. Returns the paths written."""
    written = []
    for name in names or bundled():
        ui = api_to_ui(load_api(name), object_info, NOTES.get(name, ""))
        path = ui_path(name)
        with open(path, "w") as f:
            json.dump(ui, f, indent=1)
        written.append(path)
    return written


def check_all(object_info: dict) -> dict:
    """name -> problems (UI graph against /object_info, and the API twin against the UI graph)."""
    report = {}
    for name in bundled():
        problems = []
        path = ui_path(name)
        if not os.path.isfile(path):
            report[name] = ["no UI graph (run: python -m modelsmith workflows build)"]
            continue
        with open(path) as f:
            ui = json.load(f)
        problems += validate_ui(ui, object_info)
        if not problems and ui_to_api(ui, object_info) != load_api(name):
            problems.append("the API twin differs from the UI graph")
        if not any(n["type"] == "Note" for n in ui["nodes"]):
            problems.append("no Note node")
        report[name] = problems
    return report
