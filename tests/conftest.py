"""Shared fixtures. Heavy things (a rendered dataset, a trained run) are session-scoped so the suite
renders and trains once (docs/design.md §7)."""

from __future__ import annotations

import os

import pytest
import torch

# No torch.compile in the suite (seconds per process and image size, in every CLI subprocess too):
# torch's own switch makes `train.compile` run the eager function. test_step_cost.py compiles on purpose.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every device test runs on the CPU, and on CUDA where a GPU exists (skipped otherwise)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A tiny rendered street dataset shared by the suite: 3 scenes x 10 frames, 64x208, one moving car."""
    from masksfm.data.synthetic import render_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    render_dataset(root, scenes=3, frames=10, height=64, width=208, seed=0, moving_cars=1, progress=False)
    return root


TINY_TRAIN_SETTINGS = [
    "optim.steps=6", "optim.batch_size=2", "data.height=64", "data.width=208", "data.workers=0",
    "train.val_every=3", "train.checkpoint_every=3", "train.log_every=1", "train.image_every=3",
    "loss.warmup_steps=2",
]


@pytest.fixture(scope="session")
def tiny_run(synth_dataset, tmp_path_factory):
    """One tiny real training run (6 steps) shared by the eval, predict and export tests: its folder."""
    from masksfm.config import load_config
    from masksfm.training import run_training

    run = tmp_path_factory.mktemp("runs") / "tiny"
    run_training(synth_dataset, run, load_config(None, TINY_TRAIN_SETTINGS), device="cpu", progress=False)
    return run
