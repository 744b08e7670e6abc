"""Precision formats: the torch reference against comfy-kitchen's eager backend, bit for bit."""
import pytest
import torch

ck = pytest.importorskip("comfy_kitchen.backends.eager.quantization", reason="comfy-kitchen is installed by make setup")
# each runtime has its own comfy-kitchen (0.2.40 reference on 0.3.75, 0.2.24 on 0.29, 0.2.31 on 0.33): every runtime
pytestmark = pytest.mark.runtime
from modelsmith.kernels import fp8, nvfp4  # noqa: E402


def _bits(t):
    """The raw bits, so NaN and -0.0 compare exactly."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(width)


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tiny = torch.full((32, 32), 1e-40)                     # float32 subnormals
    mixed = r(64, 64)
    mixed[::3] *= 1e-38
    mixed[1::5] *= 1e30
    blocks = torch.zeros(48, 64)
    blocks[:, ::16] = r(48, 4) * 100                        # one non-zero per 16-block
    ties = torch.tensor(nvfp4._MIDPOINTS + (0.0,) * 9).repeat(32, 2)  # exact rounding ties (x per_tensor=1/448 later)
    return {
        "random_bf16": (r(256, 512) * 2).bfloat16(), "random_fp16": r(128, 256).half(), "random_fp32": r(64, 128),
        "zeros": torch.zeros(32, 64), "huge": r(32, 64) * 1e37, "near_max": torch.full((16, 16), 3.3e38), "subnormal": tiny, "mixed_scales": mixed,
        "sparse_blocks": blocks, "neg_zero": -torch.zeros(16, 32), "ties": ties,
        "odd_rows": r(33, 64), "odd_both": r(45, 70), "single_row": r(1, 16),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_nvfp4_bit_identical_to_comfy_kitchen(name):
    x = CASES[name]
    pad = x.shape[0] % 16 != 0 or x.shape[1] % 16 != 0
    g = nvfp4.global_scale(x)
    q_ck, s_ck = ck.quantize_nvfp4(x, g, pad_16x=pad)
    q, s, g2 = nvfp4.quantize(x, g, pad_16x=pad)
    assert torch.equal(q, q_ck)
    assert torch.equal(_bits(s), _bits(s_ck)) and s.shape == s_ck.shape
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert torch.equal(_bits(nvfp4.dequantize(q, s, g2, dtype)), _bits(ck.dequantize_nvfp4(q_ck, g, s_ck, dtype)))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_bit_identical_to_comfy_kitchen(name, dtype):
    x = CASES[name]
    scale = fp8.per_tensor_scale(x, dtype)
    q, s = fp8.quantize(x, scale, dtype)
    assert torch.equal(_bits(q), _bits(ck.quantize_per_tensor_fp8(x, scale, dtype)))
    assert torch.equal(_bits(fp8.dequantize(q, s)), _bits(ck.dequantize_per_tensor_fp8(q, scale)))


def test_e2m1_fast_rounding_equals_the_definition():
    v = torch.linspace(-6, 6, 400_001)
    pts = torch.tensor(nvfp4._MIDPOINTS + nvfp4.E2M1_VALUES)
    near = torch.cat([pts, torch.nextafter(pts, torch.tensor(9.0)), torch.nextafter(pts, torch.tensor(-9.0))])
    v = torch.cat([v, near, -near, torch.tensor([0.0, -0.0, 1e-45, -1e-45])])
    assert torch.equal(nvfp4.e2m1_codes(v), nvfp4.e2m1_codes_search(v))


def test_nvfp4_round_trip_error_is_small():
    x = torch.randn(256, 256)
    q, s, g = nvfp4.quantize(x)
    y = nvfp4.dequantize(q, s, g, torch.float32)
    cos = torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0)
    assert cos > 0.99 and q.numel() + s.numel() < 0.57 * x.numel()  # 4.5 bits per value


def _kitchen(name):
    fn = getattr(ck, name, None)
    if fn is None:
        pytest.skip(f"this runtime's comfy-kitchen has no eager {name} to compare with (the other runtimes do)")
    return fn


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_tensorwise_bit_identical_to_comfy_kitchen(name):
    from modelsmith.kernels import int8
    x = CASES[name]
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        xd = x.to(dt)
        if not torch.isfinite(xd).all():
            continue  # out of the dtype's range: no weight holds such values
        q, s = int8.quantize(xd)
        q_ck, s_ck = _kitchen("quantize_int8_tensorwise")(xd)
        assert torch.equal(q, q_ck) and torch.equal(_bits(s), _bits(s_ck.float())), (name, dt)


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n].shape[1] % 32 == 0))
def test_mxfp8_bit_identical_to_comfy_kitchen(name):
    from modelsmith.kernels import mxfp8
    x = CASES[name]
    q, s = mxfp8.quantize(x)
    q_ck, s_ck = _kitchen("quantize_mxfp8")(x)
    assert torch.equal(_bits(q), _bits(q_ck)) and torch.equal(s, s_ck.view(torch.uint8)) and s.shape == s_ck.shape
    deq = _kitchen("dequantize_mxfp8")
    for dtype in (torch.bfloat16, torch.float32):
        assert torch.equal(_bits(mxfp8.dequantize(q, s, dtype)), _bits(deq(q_ck, s_ck, dtype)))


def test_fp8_of_small_fp16_weights_has_no_nan():
    """An fp16 weight of amax 0.13 in e5m2: 1/scale (~4e5) overflows fp16, so the product is taken in
    float32 (kitchen's eager turns the zeros into NaN here); every value comes back within e5m2's error."""
    w = (torch.randn(64, 128, generator=torch.Generator().manual_seed(3)) * 0.03).half()
    w[0, :8] = 0
    for dtype in (torch.float8_e5m2, torch.float8_e4m3fn):
        q, s = fp8.quantize(w, dtype=dtype)
        back = fp8.dequantize(q, s, torch.float32)
        assert torch.isfinite(back).all() and float((back - w.float()).norm() / w.float().norm()) < 0.1
