"""NF4 dequantization against bitsandbytes itself, and bitsandbytes files through inspect and convert."""
import json

import pytest
import torch

bnb_f = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is installed by make setup (dev requirement)")


def _bnb_generic_dequantize(q, st):
    """bitsandbytes' own generic NF4 dequantization, the definition of its format. Its AVX-512 CPU
    kernel (picked by `dequantize_4bit` on CPUs that have AVX-512) disagrees with it whenever a row
    does not divide into whole blocks, e.g. 96-long rows in 64-blocks, so the test does not depend on
    which CPU it runs on."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code
    absmax = st.absmax
    if st.nested:
        absmax = bnb_f.dequantize_blockwise(st.absmax, st.state2) + st.offset
    return _dequantize_4bit_compute(q.reshape(-1).view(torch.uint8), absmax.float(), _get_4bit_code("nf4", q.device),
                                    st.blocksize, st.shape, st.dtype)


@pytest.mark.parametrize("shape", [(64, 96), (33, 50), (7,)])
@pytest.mark.parametrize("blocksize", [64, 128])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nf4_matches_bitsandbytes(shape, blocksize, nested, dtype):
    from modelsmith.kernels import nf4
    g = torch.Generator().manual_seed(sum(shape) + blocksize)
    w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
    q, st = bnb_f.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    ref = _bnb_generic_dequantize(q, st)
    d = {("w.weight." + k): v for k, v in st.as_dict(packed=True).items()}
    d["w.weight"] = q
    out = nf4.dequantize_layer(d.__getitem__, "w.weight")
    assert out.dtype == dtype and out.shape == w.shape
    # bitsandbytes rounds the code to `dtype` before scaling; we scale in fp32: one rounding apart
    torch.testing.assert_close(out.float(), ref.float(), rtol=2 ** -7, atol=1e-6)
    assert (out.float() - w.float()).abs().max() <= 0.2 * w.float().abs().max()


def test_nf4_rejects_other_quant_types_and_short_data():
    from modelsmith.kernels import nf4
    bad = torch.tensor(list(json.dumps({"quant_type": "fp4", "blocksize": 64, "shape": [4]}).encode()), dtype=torch.uint8)
    with pytest.raises(ValueError, match="only nf4"):
        nf4.read_state(bad)
    with pytest.raises(ValueError, match="needs"):
        nf4.dequantize(torch.zeros(2, dtype=torch.uint8), torch.ones(1), (8,))


def test_bitsandbytes_file_inspects_and_converts(tmp_path, tiny_files):
    import safetensors.torch
    from modelsmith.core.convert import run_convert
    from modelsmith.core.inspect import inspect_file
    sd = safetensors.torch.load_file(str(tiny_files["sdxl"]))
    target = next(k for k in sd if k.endswith("attn2.to_q.weight"))
    original = sd[target].clone()
    q, st = bnb_f.quantize_4bit(original.to(torch.bfloat16), blocksize=64, quant_type="nf4", compress_statistics=True)
    sd[target] = q
    for k, v in st.as_dict(packed=True).items():
        sd[f"{target}.{k}"] = v
    bnb_file = tmp_path / "tiny_sdxl_nf4.safetensors"
    safetensors.torch.save_file(sd, str(bnb_file))
    rep = inspect_file(bnb_file)
    assert rep["family"] == "sdxl" and rep["precision"] == "mixed"
    assert any("NF4" in w for w in rep["warnings"])
    out = tmp_path / "tiny_sdxl_fp16.safetensors"
    run_convert(str(bnb_file), str(out), dtype="fp16")
    conv = safetensors.torch.load_file(str(out))
    assert not any(k.startswith(target + ".") for k in conv)
    assert conv[target].dtype == torch.float16 and conv[target].shape == original.shape
    err = (conv[target].float() - original).abs().max()
    assert err <= 0.2 * original.abs().max(), err
    assert inspect_file(out)["precision"] == "fp16"
