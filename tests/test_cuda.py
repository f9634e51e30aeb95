"""The training step, the trainer and the evaluation on a CUDA GPU against the CPU (skipped without one).

The device-parametrised tests of geometry, losses, masks and networks check each function on CUDA; these
check what they make together: the objective's loss and gradients, the default arithmetic (bf16), and
the real command line training, resuming and evaluating with `--device cuda`."""

from __future__ import annotations

import copy

import pytest
import torch

from masksfm.checkpoints import load_checkpoint, unprefixed
from masksfm.cli import main
from masksfm.config import load_config
from masksfm.inference import run_eval_depth
from masksfm.model import build_model, use_training_arithmetic
from masksfm.objective import compute_objective

from helpers import SMALL, fixed_batch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

H, W = 64, 208


@pytest.fixture(scope="module")
def batch(synth_dataset):
    """Two real rendered snippets at 64x208, no augmentation (CPU tensors)."""
    return fixed_batch(synth_dataset, H, W)


def loss_and_gradient(model, batch, device, loss_config) -> tuple[float, torch.Tensor]:
    """The objective's loss on `batch` and the model's whole gradient as one float32 vector (on the CPU)."""
    on = {k: v.to(device) for k, v in batch.items()}
    model.zero_grad()
    result = compute_objective(model(on["images"]), on["images_raw"], on["K"], loss_config)
    result.loss.backward()
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return result.loss.item(), grad.cpu()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@pytest.fixture
def ieee_float32():
    """cuDNN's convolutions round float32 inputs to TF32 (10-bit mantissa) by default on Ampere and later
    GPUs, and cuBLAS's may: off here, so that the CUDA side computes in float32 as the CPU does. With the
    defaults, on an H100, the cosine with the default's ResNet-18 pose net (batch-normalised) was 0.998."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_objective_on_cuda_is_the_cpu_objective(batch, ieee_float32):
    """float32 on both: the same loss to 1e-4 and the same gradient direction (grid_sample's and the
    convolutions' kernels differ, so not bitwise)."""
    config = load_config(None, [f"data.height={H}", f"data.width={W}"])
    torch.manual_seed(0)
    model = build_model(config)
    on_cuda = copy.deepcopy(model).to("cuda")
    loss_cpu, grad_cpu = loss_and_gradient(model, batch, "cpu", config.loss)
    loss_cuda, grad_cuda = loss_and_gradient(on_cuda, batch, "cuda", config.loss)
    assert loss_cuda == pytest.approx(loss_cpu, rel=1e-4)
    assert cosine(grad_cpu, grad_cuda) > 0.9999
    assert grad_cuda.norm().item() == pytest.approx(grad_cpu.norm().item(), rel=1e-3)


def test_the_default_arithmetic_on_cuda_is_bf16_and_close_to_float32(batch):
    """`train.precision=auto` picks bf16 on a GPU that has it; the loss stays within 1 % of float32 and
    the gradient points the same way (cosine > 0.99)."""
    config = load_config(None, [f"data.height={H}", f"data.width={W}"])
    torch.manual_seed(0)
    fp32 = build_model(config).to("cuda")
    bf16 = copy.deepcopy(fp32)
    assert use_training_arithmetic(fp32, "fp32", torch.device("cuda")) == "fp32"
    assert use_training_arithmetic(bf16, config.train.precision, torch.device("cuda")) == "bf16"
    loss_fp32, grad_fp32 = loss_and_gradient(fp32, batch, "cuda", config.loss)
    loss_bf16, grad_bf16 = loss_and_gradient(bf16, batch, "cuda", config.loss)
    assert loss_bf16 == pytest.approx(loss_fp32, rel=1e-2)
    assert cosine(grad_fp32, grad_bf16) > 0.99


def _weights(run) -> tuple[dict[str, torch.Tensor], int]:
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    return unprefixed(tensors, "model"), meta["step"]


@pytest.mark.slow
def test_train_resume_and_evaluate_on_cuda(synth_dataset, tmp_path):
    """The real command line with --device cuda: 4 steps straight and 2 + 2 resumed end at the same
    weights up to CUDA's unordered atomic sums (the resumed steps' change within 5 % of the straight
    run's), and the run's depth evaluated on CUDA gives the CPU's metrics."""
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    main(["train", str(synth_dataset), "--out", str(straight), "--steps", "4", "--device", "cuda", *SMALL])
    main(["train", str(synth_dataset), "--out", str(halves), "--steps", "2", "--device", "cuda", *SMALL])
    at_two, step = _weights(halves)
    assert step == 2
    main(["train", str(synth_dataset), "--out", str(halves), "--steps", "4", "--resume", "--device", "cuda", *SMALL])
    (a, step_a), (b, step_b) = _weights(straight), _weights(halves)
    assert step_a == step_b == 4
    moved = sum((a[k].float() - at_two[k].float()).pow(2).sum() for k in a).sqrt()
    apart = sum((a[k].float() - b[k].float()).pow(2).sum() for k in a).sqrt()
    assert moved > 0 and apart < 0.05 * moved
    on_cuda = run_eval_depth(straight, synth_dataset, "test", device="cuda", progress=False)
    on_cpu = run_eval_depth(straight, synth_dataset, "test", device="cpu", progress=False)
    assert on_cuda["count"] == on_cpu["count"] > 0
    for metric in ("abs_rel", "rmse", "a1"):
        assert on_cuda[metric] == pytest.approx(on_cpu[metric], rel=2e-3, abs=1e-4), metric
