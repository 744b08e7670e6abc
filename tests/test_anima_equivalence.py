"""Compat Anima == upstream Anima, stage by stage (tests/anima_reference.py builds the weights).

On every runtime the compat pipeline is compared with the reference file written from ComfyUI 0.29's
native Anima; on 0.29 the native stages are recomputed and compared with that file as well, and the
compat stages with the native ones in full. Tolerances (fp32): token ids and weights exactly equal;
sigmas 1e-6 relative; conditioning, adapter context, denoiser outputs and the 3-step sampled latent
1e-5 relative (relative L2 error of the whole tensor; per-token norms and fixed projections for the
stored conditioning). fp16 (weights and compute): 1e-2 relative to upstream's fp16 output.
"""
import pytest
import torch

import anima_reference as ref

FP32_TOL, SIGMA_TOL, FP16_TOL = 1e-5, 1e-6, 1e-2
MEASURED = {}


def rel(a, b):
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def reference():
    import safetensors.torch
    return safetensors.torch.load_file(ref.REFERENCE)


@pytest.fixture(scope="module")
def weights(comfy):
    return ref.dit_state_dict(), ref.te_state_dict()


def _native():
    from modelsmith.compat.anima import native_anima_available
    return native_anima_available()


@pytest.fixture(scope="module")
def compat_stages(weights):
    model, clip = ref.build("compat", *weights)
    out = ref.stages(model, clip, full=_native())
    out["den16"] = ref.fp16_denoiser(model, pack_residual=True)
    return out


@pytest.fixture(scope="module")
def native_stages(weights):
    if not _native():
        pytest.skip("native Anima only on current ComfyUI (0.29); here the compat stages are checked against the "
                    "reference file written from 0.29's native Anima")
    model, clip = ref.build("native", *weights)
    out = ref.stages(model, clip, full=True)
    out["den16"] = ref.fp16_denoiser(model, pack_residual=False)
    return out


@pytest.mark.parametrize("i", range(len(ref.PROMPTS)))
def test_token_ids_and_weights_equal_upstream(compat_stages, reference, i):
    for part in ("qwen", "t5", "t5w"):
        key = f"tok.{i}.{part}"
        assert torch.equal(compat_stages[key], reference[key]), (ref.PROMPTS[i][:60], part,
                                                                 compat_stages[key].tolist()[:40], reference[key].tolist()[:40])
    if i == 4:
        assert reference["tok.4.t5"].numel() > 512  # the long prompt really passes 512 T5 tokens


@pytest.mark.parametrize("stage", ["cond", "ctx"])
@pytest.mark.parametrize("i", range(len(ref.PROMPTS)))
def test_conditioning_and_adapter_context_match_upstream(compat_stages, reference, stage, i):
    for part in ("proj", "norm"):
        key = f"{stage}.{i}.{part}"
        assert compat_stages[key].shape == reference[key].shape, key
        assert torch.isfinite(compat_stages[key]).all(), key
        err = rel(compat_stages[key], reference[key])
        MEASURED[key] = err
        assert err < FP32_TOL, (key, err)


@pytest.mark.parametrize("stage", ["den", "den_odd", "sampled"])
def test_denoiser_and_sampled_latent_match_upstream(compat_stages, reference, stage):
    assert compat_stages[stage].shape == reference[stage].shape
    err = rel(compat_stages[stage], reference[stage])
    MEASURED[stage] = err
    assert err < FP32_TOL, (stage, err)


def test_model_sampling_matches_upstream(compat_stages, reference):
    assert torch.equal(compat_stages["shift_multiplier"], reference["shift_multiplier"])
    assert reference["shift_multiplier"].tolist() == [3.0, 1.0]
    err = rel(compat_stages["sigmas"], reference["sigmas"])
    MEASURED["sigmas"] = err
    assert compat_stages["sigmas"].shape == (31,) and err < SIGMA_TOL


def test_fp16_denoiser_matches_upstream_fp16(compat_stages, reference):
    assert torch.isfinite(compat_stages["den16"]).all()
    err = rel(compat_stages["den16"], reference["den16"])
    MEASURED["den16"] = err
    assert err < FP16_TOL, err


def test_native_0_29_reproduces_the_reference_and_compat_matches_it_in_full(compat_stages, native_stages, reference):
    """On 0.29: the stored reference is still what upstream computes, and the compat stages equal the
    native ones as whole tensors (full conditioning and context, not only projections)."""
    for key, val in reference.items():
        if key.startswith("tok.") or key == "shift_multiplier":
            assert torch.equal(native_stages[key], val), key
        else:
            tol = FP16_TOL if key == "den16" else FP32_TOL
            assert rel(native_stages[key], val) < tol, key
    for key in native_stages:
        if key.split(".")[0] in ("cond", "ctx") and key.count(".") == 1:
            err = rel(compat_stages[key], native_stages[key])
            MEASURED["full " + key] = err
            assert compat_stages[key].shape == native_stages[key].shape and err < FP32_TOL, (key, err)


@pytest.mark.runtime  # reports what the runtime stages above measured, where they ran
def test_zz_report_measured_differences():
    """Prints the measured relative differences per stage (pytest -s shows them)."""
    if not MEASURED:
        pytest.skip("no stage ran")
    worst = {}
    for k, v in MEASURED.items():
        stage = k.split(".")[0]
        worst[stage] = max(worst.get(stage, 0.0), v)
    print("\nAnima compat vs upstream, worst relative difference per stage: " +
          ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
