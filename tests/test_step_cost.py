"""The cheaper training step (docs/design.md §3, "Arithmetic of a training step"): each lever computes the step it replaces.

channels_last and the shifted-sum box filter are exact up to float rounding: the same loss and
gradients to 1e-5. bf16 autocast is not exact: its loss and gradients stay close to float32's, and
the 600-step accuracy is measured by `bench/learning.py` (docs/results.md). torch.compile of the
photometric error gives the eager values, and falls back to eager where the compiler is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from masksfm.config import load_config
from masksfm.losses import box_mean3
from masksfm.model import build_model, channels_last_pays, native_bf16, use_training_arithmetic
from masksfm.objective import compute_objective

from helpers import fixed_batch

H, W = 64, 208
# The masks are thresholds of depths and errors, so the loss steps where float rounding flips one
# pixel's mask: on this batch a 1e-6 relative change of the disparities moves it by 1.7e-5 (measured
# on an AVX-512 CPU, where channels_last's rounding does flip one). Two forms of the same step agree
# within a few such steps.
LOSS_REL = 1e-4


@pytest.fixture(scope="module")
def batch(synth_dataset):
    """Two real rendered snippets (no augmentation) at 64x208."""
    return fixed_batch(synth_dataset, H, W, indices=(0, 3))


def loss_and_gradients(batch, precision: str | None) -> tuple[float, torch.Tensor]:
    """The default recipe's loss on `batch` and the flattened gradient of every weight, from the
    same initial weights; `precision=None` is the plain model (NCHW, float32), a precision the
    depth net channels_last in it."""
    config = load_config(None, [f"data.height={H}", f"data.width={W}"])
    torch.manual_seed(0)
    model = build_model(config)
    if precision is not None:
        use_training_arithmetic(model, precision, channels_last=True)
        assert model.depth_net.down[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    loss = compute_objective(model(batch["images"]), batch["images_raw"], batch["K"], config.loss).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_box_mean3_is_the_3x3_average():
    x = torch.rand(2, 5, 9, 11, dtype=torch.float64)
    assert torch.allclose(box_mean3(x), F.avg_pool2d(x, 3, stride=1), atol=1e-12)
    assert box_mean3(torch.full((1, 1, 3, 3), 2.0)).item() == pytest.approx(2.0)


def test_channels_last_gives_the_same_loss_and_gradients(batch):
    loss, grad = loss_and_gradients(batch, None)
    loss_cl, grad_cl = loss_and_gradients(batch, "fp32")
    assert loss_cl == pytest.approx(loss, rel=LOSS_REL)
    assert torch.allclose(grad_cl, grad, rtol=1e-3, atol=1e-5 * grad.abs().max().item())


def test_bf16_autocast_stays_close_to_float32(batch):
    loss, grad = loss_and_gradients(batch, None)
    loss_bf16, grad_bf16 = loss_and_gradients(batch, "bf16")
    assert loss_bf16 != loss  # the depth net did compute in bfloat16
    assert loss_bf16 == pytest.approx(loss, rel=2e-2)
    cosine = F.cosine_similarity(grad_bf16, grad, dim=0).item()
    assert cosine > 0.98, cosine


def test_bf16_model_outputs_float32_and_leaves_the_weights_float32(batch):
    config = load_config(None, [f"data.height={H}", f"data.width={W}"])
    model = build_model(config)
    use_training_arithmetic(model, "bf16")
    out = model(batch["images"])
    assert all(d.dtype == torch.float32 for d in out.disparities) and out.poses.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.depth_net.down[0][0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU flags from /proc/cpuinfo")
def test_auto_precision_is_bf16_only_where_the_cpu_has_it():
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    native = "avx512_bf16" in flags or "amx_tile" in flags
    assert native_bf16(torch.device("cpu")) == native
    model = build_model(load_config(None, []))
    assert use_training_arithmetic(model, "auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert (model.depth_autocast == torch.bfloat16) == native


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU flags from /proc/cpuinfo")
def test_the_depth_net_is_channels_last_where_that_pays():
    """bf16 and AVX-512 CPUs: channels_last; float32 on a CPU whose widest vectors are AVX2: NCHW
    (bench/train_step.py); `channels_last` overrides either way."""
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    cpu = torch.device("cpu")
    assert channels_last_pays(cpu, "bf16")
    assert channels_last_pays(cpu, "fp32") == ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)
    weight = lambda m: m.depth_net.down[0][0].weight  # noqa: E731
    model = build_model(load_config(None, []))
    precision = use_training_arithmetic(model, "auto", cpu)
    assert weight(model).is_contiguous(memory_format=torch.channels_last) == channels_last_pays(cpu, precision)
    for forced in (True, False):
        use_training_arithmetic(model, "fp32", cpu, channels_last=forced)
        assert weight(model).is_contiguous(memory_format=torch.channels_last) == forced
        assert weight(model).is_contiguous() != forced


def test_gradients_finite_finds_one_bad_element_among_millions():
    from masksfm.faults import gradients_finite

    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(1000, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    assert gradients_finite(model)
    for bad in (float("nan"), float("inf"), -float("inf")):
        model[0].weight.grad[517, 3] = bad
        assert not gradients_finite(model), bad
    model[0].weight.grad.fill_(3e37)  # every element finite, their sum beyond float32: skipped too
    assert not gradients_finite(model)


@pytest.mark.slow
def test_compiled_photometric_error_matches_eager_and_falls_back_without_a_compiler(tmp_path):
    """In subprocesses (compiling is process-wide): with the compiler, the eager values; with a
    compiler that does not exist, one warning and still the eager values."""
    script = (
        "import torch, masksfm.objective as o\n"
        "from masksfm.losses import photometric_error\n"
        "torch.manual_seed(0); x, y = torch.rand(2, 3, 20, 30), torch.rand(2, 3, 20, 30)\n"
        "o.use_compiled_photometric_error()\n"
        "print(float((o._photometric_error(x, y) - photometric_error(x, y)).abs().max()))\n"
        "print(o._photometric_error is photometric_error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHDYNAMO_DISABLE"}
    env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}
    compiled = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert compiled.returncode == 0, compiled.stderr
    difference, fell_back = compiled.stdout.split()
    assert float(difference) < 1e-5 and fell_back == "False"
    assert "warning" not in compiled.stderr

    broken = "import torch._inductor.config as c; c.cpp.cxx = ('/nonexistent/c++',)\n" + script
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "cache2")
    fallback = subprocess.run([sys.executable, "-c", broken], capture_output=True, text=True, env=env, timeout=300)
    assert fallback.returncode == 0, fallback.stderr
    difference, fell_back = fallback.stdout.split()
    assert float(difference) == 0.0 and fell_back == "True"
    warnings = [line for line in fallback.stderr.splitlines() if line.startswith("warning: torch.compile failed")]
    assert len(warnings) == 1


def test_source_depth_without_gradient_is_the_loss_with_the_sources_detached(batch):
    """`model.source_depth_grad=false`: the same disparities and loss, and exactly the gradient of
    the full model's loss with the sources' disparities detached (the depth net learns through
    the targets' depth only; the pose net as before)."""
    config = load_config(None, [f"data.height={H}", f"data.width={W}"])
    images, length = batch["images"], batch["images"].shape[1]
    is_target = (torch.arange(images.shape[0] * length) % length == length // 2).view(-1, 1, 1, 1)

    def loss_and_gradients_of(source_depth_grad: bool):
        torch.manual_seed(0)
        model = build_model(config)
        model.source_depth_grad = source_depth_grad
        out = model(images)
        if source_depth_grad:  # detach the sources by hand
            out = out._replace(disparities=[torch.where(is_target, d, d.detach()) for d in out.disparities])
        loss = compute_objective(out, batch["images_raw"], batch["K"], config.loss).loss
        loss.backward()
        return loss.item(), [p.grad for p in model.parameters()], out.disparities

    loss, grads, disparities = loss_and_gradients_of(True)
    loss_nograd, grads_nograd, disparities_nograd = loss_and_gradients_of(False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(disparities_nograd, disparities))
    assert loss_nograd == pytest.approx(loss, rel=1e-5)
    for g, g_nograd in zip(grads, grads_nograd):
        assert torch.allclose(g_nograd, g, rtol=1e-3, atol=1e-5 * g.abs().max().item())
    # ... and that differs from the full gradient: with model.source_depth_grad the sources' depth trains the depth net.
    torch.manual_seed(0)
    full = build_model(load_config(None, [f"data.height={H}", f"data.width={W}", "model.source_depth_grad=true"]))
    compute_objective(full(images), batch["images_raw"], batch["K"], config.loss).loss.backward()
    depth_grad = torch.cat([p.grad.flatten() for p in full.depth_net.parameters()])
    depth_grad_nograd = torch.cat([g.flatten() for g in grads_nograd[:len(list(full.depth_net.parameters()))]])
    assert not torch.allclose(depth_grad_nograd, depth_grad, rtol=1e-2)


def test_one_matrix_warp_and_matrix_upsampling_give_the_same_step(batch, monkeypatch):
    """The warp's one-matrix reprojection (`geometry.reproject`) and the upsampling as two matrix products
    (`layers.upsample_bilinear`, in the depth net and the loss) against the forms they replace
    (backproject -> transform_points -> project; F.interpolate): the same loss and gradients."""
    import masksfm.geometry as geometry
    import masksfm.networks.depth as depth_module
    import masksfm.objective as objective_module

    loss, grad = loss_and_gradients(batch, "fp32")

    def three_products(depth, T, K):
        return geometry.project(geometry.transform_points(T, geometry.backproject(depth, K)), K)

    def interpolate(x, size):
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    monkeypatch.setattr(geometry, "reproject", three_products)
    monkeypatch.setattr(depth_module, "upsample_bilinear", interpolate)
    monkeypatch.setattr(objective_module, "upsample_bilinear", interpolate)
    loss_before, grad_before = loss_and_gradients(batch, "fp32")
    assert loss == pytest.approx(loss_before, rel=LOSS_REL)
    # float32 rounding moves a sampling point by ~1e-5 px, which moves a few of bilinear sampling's
    # gradients more than the element-wise tolerance above; the gradient as a whole agrees to 1e-4 (asserted: 1e-3).
    assert (grad - grad_before).norm() <= 1e-3 * grad_before.norm()


def test_every_case_of_the_step_bench_is_a_valid_recipe():
    """`bench/train_step.py`'s cases (the levers, `--masks`) load as configurations: SfMLearner's mask
    needs its pose net's decoder (`make bench` ran `--masks` into that refusal after the default pose net
    changed)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import train_step

    for name, overrides in train_step.MASK_CASES:
        assert load_config(None, overrides).loss.mask == name.split()[0], name
    for name, _, _, overrides in train_step.LEVER_CASES:
        load_config(None, overrides)
