"""Model tools: merges against in-memory references, convert/prune, atomic writes and faults."""
import hashlib
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import safetensors.torch as st

from modelsmith.core import blocks as blk
from modelsmith.core.errors import ModelsmithError
from modelsmith.core.inspect import inspect_file
from modelsmith.core.merge import Recipe, run_merge


@pytest.fixture(scope="module")
def sd1_trio(comfy, tmp_path_factory):
    import tiny
    d = tmp_path_factory.mktemp("merge_in")
    yield [tiny.save(d / f"m{i}.safetensors", "sd1", seed=10 + i) for i in range(3)]
    shutil.rmtree(d, ignore_errors=True)


def _load(p):
    return st.load_file(str(p))


def _f32(sd):
    """Floating tensors in float32: the merge computes in float32, then casts to the output dtype."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _cast(ref, out):
    """The reference rounded as the output was stored, in float32 for comparing."""
    return ref.to(out.dtype).float()


ULP = {torch.float32: 2e-6, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}


def _same(out, ref):
    """out equals the float32 reference up to one rounding in out's storage dtype."""
    return torch.allclose(out.float(), ref, rtol=ULP[out.dtype], atol=1e-6)


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def _merge(tmp_path, inputs, method, **kw):
    out = tmp_path / f"{method}_{len(list(tmp_path.iterdir()))}.safetensors"
    rep = run_merge(Recipe(method=method, inputs=[str(p) for p in inputs], **kw), str(out))
    return _load(out), rep, out


def _float_keys(sd):
    return [k for k, v in sd.items() if v.is_floating_point() and v.numel()]


def test_weighted_sum_and_add_difference(sd1_trio, tmp_path):
    A, B, C = (_f32(_load(p)) for p in sd1_trio)
    out, rep, path = _merge(tmp_path, sd1_trio[:2], "weighted_sum", alpha=0.3)
    for k in _float_keys(A):
        assert _same(out[k], A[k] * (1 - 0.3) + B[k] * 0.3), k
    assert rep["counts"]["merged"] == len(_float_keys(A))
    out, _, _ = _merge(tmp_path, sd1_trio, "add_difference", alpha=0.6)
    for k in _float_keys(A):
        assert torch.allclose(out[k].float(), _cast(A[k] + (B[k] - C[k]) * 0.6, out[k]), atol=1e-6), k
    meta = st.safe_open(str(path), "pt").metadata()
    assert meta["modelspec.merged_from"] == "m0.safetensors, m1.safetensors"
    assert Recipe.from_json(open(str(path) + ".recipe.json").read()).alpha == 0.3


def test_block_weights_per_block(sd1_trio, tmp_path):
    A, B, _ = (_f32(_load(p)) for p in sd1_trio)
    weights = blk.parse_block_weights("BASE:0.1,IN00:0.0,IN04:0.8,M00:0.25,OUT11:1.0", "sd1")
    out, _, _ = _merge(tmp_path, sd1_trio[:2], "weighted_sum", alpha=0.5, blocks=weights)
    seen = set()
    for k in _float_keys(A):
        b = blk.block_of(k, "sd1")
        seen.add(b)
        a = weights.get(b, 0.5)
        assert _same(out[k], A[k] * (1 - a) + B[k] * a), (k, b)
    assert {"BASE", "IN00", "IN04", "M00", "OUT11", "OUT05"} <= seen
    assert len(blk.block_names("sd1")) == 26 and len(blk.block_names("sdxl")) == 21
    assert len(blk.parse_block_weights(",".join(["0.5"] * 21), "sdxl")) == 21
    with pytest.raises(ValueError):
        blk.parse_block_weights("IN12:0.5", "sdxl")


def _ties_ref(a, b, c, alpha, density):
    ds = []
    for t in (a - c, b - c):
        flat = t.flatten()
        k = max(1, int(round(density * flat.numel())))
        kth = flat.abs().sort(descending=True).values[k - 1]
        keep = flat.abs() >= kth  # the top-k magnitudes, ties at the k-th kept
        ds.append(torch.where(keep, flat, torch.zeros_like(flat)))
    d = torch.stack(ds)
    elected = torch.sign(d.sum(0))
    out = torch.zeros_like(ds[0])
    for i in range(out.numel()):
        vals = [float(x) for x in d[:, i] if x != 0 and torch.sign(x) == elected[i]]
        out[i] = sum(vals) / len(vals) if vals else 0.0
    return (c.flatten() + alpha * out).reshape(a.shape)


def test_ties_matches_reference(sd1_trio, tmp_path):
    A, B, C = (_f32(_load(p)) for p in sd1_trio)
    out, _, _ = _merge(tmp_path, sd1_trio, "ties", alpha=1.0, density=0.3)
    checked = 0
    for k in _float_keys(A):
        if A[k].numel() <= 2048:  # the reference is an element loop
            assert torch.allclose(out[k].float(), _cast(_ties_ref(A[k], B[k], C[k], 1.0, 0.3), out[k]), atol=1e-5), k
            checked += 1
    assert checked > 20


def test_dare_with_fixed_seed(sd1_trio, tmp_path):
    A, B, C = (_f32(_load(p)) for p in sd1_trio)
    out1, _, _ = _merge(tmp_path, sd1_trio, "dare", alpha=0.5, drop=0.7, seed=42)
    out2 = run_merge(Recipe(method="dare", inputs=[str(p) for p in sd1_trio], alpha=0.5, drop=0.7, seed=42),
                     str(tmp_path / "dare2.safetensors"))
    out2 = _load(tmp_path / "dare2.safetensors")
    kept = total = 0
    for k in _float_keys(A):
        assert torch.equal(out1[k], out2[k]), k
        full = _cast(A[k] + 0.5 * (B[k] - C[k]) / 0.3, out1[k])
        is_kept = torch.isclose(out1[k].float(), full, atol=1e-5)
        is_dropped = torch.isclose(out1[k].float(), _cast(A[k], out1[k]), atol=1e-7)
        assert (is_kept | is_dropped).all(), k
        kept += int((is_kept & ~is_dropped).sum())
        total += A[k].numel()
    assert 0.27 < kept / total < 0.33
    out3, _, _ = _merge(tmp_path, sd1_trio, "dare", alpha=0.5, drop=0.7, seed=43)
    assert any(not torch.equal(out1[k], out3[k]) for k in _float_keys(A))


def test_slerp_matches_reference(sd1_trio, tmp_path):
    import math
    A, B, _ = (_f32(_load(p)) for p in sd1_trio)
    out, _, _ = _merge(tmp_path, sd1_trio[:2], "slerp", alpha=0.4)
    for k in _float_keys(A)[:50]:
        a, b = A[k].double().flatten(), B[k].double().flatten()
        cos = float(a @ b / (a.norm() * b.norm()))
        om = math.acos(max(-1.0, min(1.0, cos)))
        if abs(om) < 1e-4:
            ref = a * 0.6 + b * 0.4
        else:
            ref = (math.sin(0.6 * om) * a + math.sin(0.4 * om) * b) / math.sin(om)
        tol = 1e-5 if out[k].dtype == torch.float32 else 2e-3  # the output is stored in A's dtype
        assert torch.allclose(out[k].double().flatten(), ref, atol=tol), k


def test_merge_refuses_different_families(sd1_trio, tiny_files, tmp_path):
    with pytest.raises(ModelsmithError, match="different families"):
        run_merge(Recipe(method="weighted_sum", inputs=[str(sd1_trio[0]), str(tiny_files["sdxl"])]),
                  str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


def test_ztsnr_with_eps_warns_and_drops_marker(tiny_files, tmp_path):
    out, rep, path = _merge(tmp_path, [tiny_files["sdxl_vpred_ztsnr"], tiny_files["sdxl"]], "weighted_sum")
    assert any("ZTSNR" in w for w in rep["warnings"])
    assert "ztsnr" not in out and "v_pred" in out
    run_merge(Recipe(method="weighted_sum", inputs=[str(tiny_files["sdxl_vpred_ztsnr"]), str(tiny_files["sdxl"])],
                         keep_ztsnr=True), str(tmp_path / "keep.safetensors"))
    assert "ztsnr" in _load(tmp_path / "keep.safetensors")


def test_cli_merge_and_recipe_replay(sd1_trio, tmp_path):
    out = tmp_path / "cli merge.safetensors"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "merge", *map(str, sd1_trio[:2]), str(out),
                        "--method", "weighted_sum", "--alpha", "0.25", "--blocks", "IN00:1.0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    written = tmp_path / "cli_merge.safetensors"  # safe name: no spaces
    assert written.exists() and "%" in r.stderr
    replay = tmp_path / "replay.safetensors"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "merge", "--recipe", str(written) + ".recipe.json",
                        str(replay)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = _load(written), _load(replay)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sd1_with_ema(comfy, tmp_path_factory):
    """An SD1-shaped checkpoint ComfyUI's stock loader accepts (320 channels, 768 context), with EMA,
    a tiny VAE and training state, as a .ckpt pickle."""
    import tiny
    from modelsmith.compat import sized
    from modelsmith.core.convert import ema_key
    cfg = dict(tiny.SD1_UNET, model_channels=320, channel_mult=[1], num_res_blocks=[1], transformer_depth=[1],
               transformer_depth_output=[1, 1], context_dim=768)
    p, _ = sized.build_model("sd1", cfg, dtype=torch.float32)
    tiny.randomize(p.model.diffusion_model, 7)
    sd = {"model.diffusion_model." + k: v.detach().clone() for k, v in p.model.diffusion_model.state_dict().items()}
    for k, v in list(sd.items()):
        sd[ema_key(k)] = v + 0.5
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    vae = tiny._tiny_vae(1).first_stage_model.state_dict()
    sd.update({"first_stage_model." + k: v.clone() for k, v in vae.items()})
    d = tmp_path_factory.mktemp("convert_in")
    path = d / "sd1 with ema.ckpt"
    torch.save({"state_dict": sd, "global_step": 1234, "optimizer_states": [{"state": {}}]}, path)
    yield path
    shutil.rmtree(d, ignore_errors=True)


def test_convert_emaonly_fp16_loads_in_stock_loader(comfy, sd1_with_ema, models_dir):
    src = torch.load(sd1_with_ema, weights_only=True)["state_dict"]
    out = models_dir / "checkpoints" / "sd1_emaonly_fp16.safetensors"
    before = _sha(sd1_with_ema)
    r = subprocess.run([sys.executable, "-m", "modelsmith", "convert", str(sd1_with_ema), str(out), "--dtype", "fp16",
                        "--ema", "only", "--vae", "strip"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _sha(sd1_with_ema) == before
    sd = _load(out)
    assert not any(k.startswith(("model_ema.", "first_stage_model.")) for k in sd)
    assert all(v.dtype == torch.float16 for k, v in sd.items() if k.startswith("model.diffusion_model."))
    k = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(sd[k], (src[k] + 0.5).half())  # the EMA values
    rep = inspect_file(out)
    assert (rep["family"], rep["precision"], rep["ema"]) == ("sd1", "fp16", False)
    meta = st.safe_open(str(out), "pt").metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.title"] == "sd1_emaonly_fp16" and meta["modelspec.resolution"] == "512x512"
    # hash_sha256 covers the tensor data after the header
    raw = open(out, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert meta["modelspec.hash_sha256"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    import nodes
    model, clip, vae = nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(out.name)[:3]
    assert model is not None and type(model.model).__name__ == "BaseModel"


def test_convert_refuses_overwrite_and_bad_names(sd1_with_ema, tmp_path):
    from modelsmith.core.convert import run_convert
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(ModelsmithError, match="exists"):
        run_convert(sd1_with_ema, out)
    assert out.read_bytes() == b"keep me"


KILL_SCRIPT = r"""
import os, signal, sys
from modelsmith.core.convert import run_convert
def progress(done, total):
    if done == total // 2:
        os.kill(os.getpid(), signal.SIGKILL)
run_convert(sys.argv[1], sys.argv[2], dtype="fp16", ema="drop", progress=progress)
"""


def test_kill_mid_write_leaves_no_output(sd1_with_ema, tmp_path):
    out = tmp_path / "killed.safetensors"
    before = _sha(sd1_with_ema)
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(sd1_with_ema), str(out)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL
    assert not out.exists()
    assert _sha(sd1_with_ema) == before
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(n.endswith(".partial") for n in leftovers)  # only the temp name, never the final one


def _small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    return mnt if r.returncode == 0 else None


def test_full_disk_gives_clear_error_and_no_file(sd1_with_ema, tmp_path, monkeypatch):
    from modelsmith.core import stream
    from modelsmith.core.convert import run_convert
    mnt = _small_fs(tmp_path)
    try:
        if mnt is not None:  # a real 2 MB tmpfs: the free-space check refuses before writing
            with pytest.raises(ModelsmithError, match="disk space"):
                run_convert(sd1_with_ema, mnt / "o.safetensors")
            assert list(mnt.iterdir()) == []
        # ENOSPC in the middle of writing (the free-space check passed, the disk filled meanwhile)
        monkeypatch.setattr(stream, "check_free_space", lambda *a, **k: None)
        target = (mnt or tmp_path) / "o2.safetensors"
        if mnt is None:
            real_write = stream.AtomicWriter._write
            calls = {"n": 0}

            def failing(self, data):
                calls["n"] += 1
                if calls["n"] > 5:
                    self.f.write = lambda d: (_ for _ in ()).throw(OSError(28, "No space left on device"))
                return real_write(self, data)
            monkeypatch.setattr(stream.AtomicWriter, "_write", failing)
        with pytest.raises(ModelsmithError, match="disk full"):
            run_convert(sd1_with_ema, target)
        assert not target.exists()
        assert not [p for p in target.parent.iterdir() if p.name.endswith(".partial")]
    finally:
        if mnt is not None:
            subprocess.run(["umount", str(mnt)])


def test_output_paths_are_confined():
    from modelsmith.core.stream import check_output_path
    with pytest.raises(ModelsmithError, match="outside"):
        check_output_path("/tmp/allowed/../etc/x.safetensors", allowed_roots=["/tmp/allowed"])
    with pytest.raises(ModelsmithError, match="outside"):
        check_output_path("/etc/x.safetensors", allowed_roots=["/tmp/allowed"])


def test_merge_node_in_process_and_path_tricks(run_graph, tiny_files, output_dir):
    g = {"1": {"class_type": "ModelsmithMergeCheckpoints", "inputs": {
        "model_a": "tiny_sdxl.safetensors", "model_b": "tiny_sdxl_nomarker.safetensors", "model_c": "none",
        "method": "weighted_sum", "alpha": 0.5, "block_weights": "BASE:0,IN00:1", "density": 0.2, "drop": 0.9,
        "seed": 0, "dtype": "fp16", "output_name": "node merge", "destination": "output/checkpoints",
        "overwrite": False}}}
    executor, _ = run_graph(g)
    path = executor.history_result["outputs"]["1"]["text"][0].splitlines()[0].split(" ", 1)[1]
    assert path == str(output_dir / "checkpoints" / "node_merge.safetensors")
    rep = inspect_file(path)
    assert (rep["family"], rep["precision"]) == ("sdxl", "fp16")
    import nodes
    node = nodes.NODE_CLASS_MAPPINGS["ModelsmithMergeCheckpoints"]()
    for bad in ("../escape", "/tmp/abs", "..", "sub/dir"):
        with pytest.raises(Exception, match="plain file name"):
            node.merge("tiny_sdxl.safetensors", "tiny_sdxl_nomarker.safetensors", "none", "weighted_sum", 0.5, "",
                       0.2, 0.9, "fp16", bad, "output/checkpoints", False)
    # a taken name is numbered as ComfyUI's save nodes do; the first file keeps its bytes
    first = (output_dir / "checkpoints" / "node_merge.safetensors").read_bytes()
    again = node.merge("tiny_sdxl.safetensors", "tiny_sdxl_nomarker.safetensors", "none", "weighted_sum", 0.5, "",
                       0.2, 0.9, "fp16", "node merge", "output/checkpoints", False)
    assert again["result"][0] == str(output_dir / "checkpoints" / "node_merge_00001.safetensors")
    assert (output_dir / "checkpoints" / "node_merge.safetensors").read_bytes() == first
    text = again["ui"]["text"][0]
    assert "tensors: " in text and "merged" in text and "{" not in text  # reads as text, not a Python dict


def test_cli_names_agree_with_the_registries():
    from modelsmith.core import merge, names, prompt
    from modelsmith.tools import queue
    assert tuple(sorted(merge.METHODS)) == names.MERGE_METHODS
    from modelsmith.core import quantize
    assert tuple(quantize.FORMATS) == names.QUANTIZE_FORMATS
    assert prompt.CONVENTIONS == names.CONVENTIONS and queue.DEFAULT_SERVER == names.DEFAULT_SERVER


def test_convert_node_over_http(server, output_dir):
    g = {"1": {"class_type": "ModelsmithConvertCheckpoint", "inputs": {
        "ckpt_name": "tiny_sd1.safetensors", "dtype": "bf16", "ema": "drop", "vae": "strip",
        "output_name": "http_convert", "destination": "output/checkpoints", "overwrite": False}}}
    hist = server.queue_and_wait(g)
    assert hist["status"]["status_str"] == "success", hist["status"]
    rep = inspect_file(output_dir / "checkpoints" / "http_convert.safetensors")
    assert (rep["family"], rep["precision"], rep["components"]["vae"]) == ("sd1", "bf16", False)


def test_missing_keys_and_shape_mismatch_follow_the_rule(sd1_trio, tmp_path):
    a_sd = _load(sd1_trio[0])
    b_sd = _load(sd1_trio[1])
    gone = "model.diffusion_model.out.2.bias"
    reshaped = "model.diffusion_model.input_blocks.0.0.weight"
    b_sd.pop(gone)
    b_sd[reshaped] = torch.zeros(32, 9, 3, 3)  # an inpaint-shaped first conv
    b_sd["only.in.b"] = torch.ones(3)
    b_path = tmp_path / "b_mod.safetensors"
    st.save_file(b_sd, str(b_path))
    out, rep, _ = _merge(tmp_path, [sd1_trio[0], b_path], "weighted_sum", alpha=0.5)
    assert torch.equal(out[gone], a_sd[gone]) and torch.equal(out[reshaped], a_sd[reshaped])
    assert "only.in.b" not in out
    assert rep["counts"]["missing_in_b"] == 1 and rep["counts"]["shape_mismatch"] == 1 and rep["counts"]["only_in_b"] == 1
    assert any("copied from A" in w for w in rep["warnings"]) and any("kept from A" in w for w in rep["warnings"])


def test_dit_block_names():
    """DiT families take core's merge-node names, counted from the file; the pack's earlier Anima /
    Cosmos names (B03) are still read as aliases."""
    assert blk.block_of("net.blocks.3.mlp.layer1.weight", "anima") == "blocks.3"
    assert blk.block_of("net.llm_adapter.blocks.0.cross_attn.q_proj.weight", "anima") == "llm_adapter"
    assert blk.block_of("net.x_embedder.proj.1.weight", "cosmos-predict2") == "x_embedder"
    assert blk.block_of("net.something_else", "anima") == "BASE"
    keys = [f"net.blocks.{i}.mlp.layer1.weight" for i in range(32)] + ["net.llm_adapter.embed.weight",
                                                                        "net.x_embedder.proj.1.weight"]
    names = blk.block_names("anima", keys)
    assert names == ["BASE", "x_embedder", *[f"blocks.{i}" for i in range(32)], "llm_adapter"]
    assert "llm_adapter" not in blk.block_names("cosmos-predict2", keys)
    assert blk.parse_block_weights("B31:0.5,blocks.0:0.25", "anima", keys) == {"blocks.31": 0.5, "blocks.0": 0.25}
    assert blk.block_of("first_stage_model.decoder.conv_in.weight", "sdxl") == "VAE"
    assert blk.block_of("model.diffusion_model.time_embed.0.weight", "sdxl") == "BASE"
    assert blk.block_of("input_blocks.4.1.proj_in.weight", "sdxl") == "IN04"  # a diffusion-model file: no prefix
    flux = ["img_in.weight", "double_blocks.0.img_attn.qkv.weight", "double_blocks.1.img_attn.qkv.weight",
            "single_blocks.0.linear1.weight", "final_layer.linear.weight", "txt_in.weight"]
    assert blk.block_names("flux1", flux) == ["BASE", "img_in", "txt_in", "double_blocks.0", "double_blocks.1",
                                              "single_blocks.0", "final_layer"]
    assert blk.block_of("double_blocks.10.img_mod.lin.weight", "flux1") == "double_blocks.10"
    with pytest.raises(ValueError, match="unknown block 'double_blocks.2'"):
        blk.parse_block_weights("double_blocks.2:0.5", "flux1", flux)


def test_convert_bakes_in_a_vae(sd1_with_ema, tmp_path):
    from modelsmith.core.convert import run_convert
    import tiny
    vae_sd = tiny._tiny_vae(5).first_stage_model.state_dict()
    vae_file = tmp_path / "vae.safetensors"
    st.save_file({k: v.contiguous() for k, v in vae_sd.items()}, str(vae_file))
    out = tmp_path / "baked.safetensors"
    run_convert(sd1_with_ema, out, dtype="fp16", ema="drop", vae=str(vae_file))
    sd = _load(out)
    k = "first_stage_model.decoder.conv_in.weight"
    assert torch.equal(sd[k], vae_sd["decoder.conv_in.weight"].half())
    assert inspect_file(out)["components"]["vae"] is True
    with pytest.raises(ModelsmithError, match="not a VAE"):
        run_convert(sd1_with_ema, tmp_path / "bad.safetensors", vae=str(sd1_trio_path(tmp_path)))


def sd1_trio_path(tmp_path):
    p = tmp_path / "not_a_vae.safetensors"
    st.save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(p))
    return p


def test_slerp_coefficients_are_float64_exact():
    """SLERP's angle and norms in float64: on 4 M elements the result equals a float64 reference to
    float32 rounding (a float32 dot product was ~1e-4 off)."""
    from modelsmith.core.merge import slerp
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4_000_000, generator=g) * 0.02
    b = a * 0.6 + torch.randn(4_000_000, generator=g) * 0.02
    got = slerp(a, b, None, 0.3)
    a64, b64 = a.double(), b.double()
    omega = torch.arccos((a64 @ b64) / (a64.norm() * b64.norm()))
    ref = (torch.sin(0.7 * omega) * a64 + torch.sin(0.3 * omega) * b64) / torch.sin(omega)
    assert got.dtype == torch.float32
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-6
