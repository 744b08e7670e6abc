"""Damaged CLIP position ids (issue 27, point 1): AUTOMATIC1111's Add Difference merges before
2023-01-15 left `position_ids` as floats off an integer (0.99999, 75.99998), which tools that use the
stored ids truncate to the wrong position. Found by inspect and the Doctor, fixed by the Doctor's
`position-ids` fix (exact int64, every other tensor byte-identical) and by convert, never made by
the pack's merges. Conditioning is computed the way those tools do (Hugging Face's CLIPTextModel,
the stored ids loaded into its position buffer); ComfyUI rebuilds the ids and is not affected."""
from __future__ import annotations

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

pytestmark = pytest.mark.runtime  # transformers comes with a runtime's requirements (every runtime has it)


def _tf():
    import transformers
    return transformers

KEY = "cond_stage_model.transformer.text_model.embeddings.position_ids"
PREFIX = "cond_stage_model.transformer.text_model."


def _text_model(model):
    """The module holding `embeddings` (transformers 4 wraps it in `.text_model`, 5 does not)."""
    return getattr(model, "text_model", model)
CFG = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
           max_position_embeddings=77)


def _checkpoint(path, ids):
    torch.manual_seed(0)
    te = _text_model(_tf().CLIPTextModel(_tf().CLIPTextConfig(**CFG)))
    sd = {PREFIX + k: v.contiguous() for k, v in te.state_dict().items()}
    sd[KEY] = ids
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(32, 4, 3, 3)
    sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.randn(32, 768)
    safetensors.torch.save_file(sd, str(path), metadata={"note": "kept"})
    return path


def _conditioning(path):
    """The text encoder's output for a fixed prompt, with the file's stored position ids in use."""
    sd = safetensors.torch.load_file(str(path))
    model = _tf().CLIPTextModel(_tf().CLIPTextConfig(**CFG)).eval()
    te = _text_model(model)
    te.load_state_dict({k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX) and k != KEY}, strict=False)
    with torch.no_grad():
        te.embeddings.position_ids.copy_(sd[KEY])  # as A1111 loads them: a float id truncates
        return model(input_ids=torch.arange(77).reshape(1, 77) * 601 % 49408).last_hidden_state


@pytest.fixture
def files(tmp_path):
    healthy = _checkpoint(tmp_path / "healthy.safetensors", torch.arange(77).reshape(1, 77))
    bad = torch.arange(77, dtype=torch.float32).reshape(1, 77)
    bad[0, 1], bad[0, 76] = 0.99999, 75.99998
    damaged = _checkpoint(tmp_path / "damaged.safetensors", bad)
    return healthy, damaged


def test_inspect_names_the_positions_that_are_off(files):
    from modelsmith.core.inspect import inspect_file
    healthy, damaged = files
    assert "position_ids" not in inspect_file(healthy)
    rep = inspect_file(damaged)
    assert rep["position_ids"][KEY]["positions"] == [1, 76]
    assert any("positions 1 (stored 0.99999), 76 (stored 75.99998)" in w for w in rep["warnings"]), rep["warnings"]


def test_doctor_fix_writes_exact_ids_and_nothing_else_changes(files, tmp_path):
    from modelsmith.core import doctor
    from modelsmith.core.inspect import inspect_file
    healthy, damaged = files
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    target = folder / "damaged.safetensors"
    target.write_bytes(damaged.read_bytes())
    entry = next(e for e in doctor.scan({"checkpoints": [str(folder)]}) if e["id"] == "checkpoints/damaged.safetensors")
    assert [p["fix"] for p in entry["problems"] if p["code"] == "position-ids"] == ["position-ids"]
    out = doctor.apply_fix(entry, "position-ids")["output"]
    assert out.endswith("damaged-fixed-ids.safetensors") and target.read_bytes() == damaged.read_bytes()
    with safe_open(out, "pt") as f, safe_open(str(damaged), "pt") as g:
        assert f.metadata() == g.metadata() and set(f.keys()) == set(g.keys())
        for k in g.keys():
            if k == KEY:
                assert f.get_tensor(k).dtype == torch.int64 and torch.equal(f.get_tensor(k), torch.arange(77).reshape(1, 77))
            else:
                a, b = f.get_tensor(k), g.get_tensor(k)
                assert a.dtype == b.dtype and torch.equal(a, b), k
    assert "position_ids" not in inspect_file(out)
    ok, bad, fixed = _conditioning(healthy), _conditioning(damaged), _conditioning(out)
    assert torch.equal(fixed, ok) and not torch.allclose(bad, ok)


def test_convert_fixes_them_and_merges_never_make_them(files, tmp_path):
    from modelsmith.core.convert import run_convert
    from modelsmith.core.inspect import inspect_file
    from modelsmith.core.merge import Recipe, run_merge
    healthy, damaged = files
    conv = tmp_path / "converted.safetensors"
    run_convert(str(damaged), str(conv), dtype="fp16")
    t = safetensors.torch.load_file(str(conv))[KEY]
    assert t.dtype == torch.int64 and torch.equal(t, torch.arange(77).reshape(1, 77))
    for inputs in ([damaged, healthy], [healthy, damaged]):
        out = tmp_path / f"merged_{inputs[0].stem}.safetensors"
        run_merge(Recipe(method="weighted_sum", inputs=[str(p) for p in inputs], alpha=0.5), str(out))
        ids = safetensors.torch.load_file(str(out))[KEY]
        assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77).reshape(1, 77))
        assert "position_ids" not in inspect_file(out)
