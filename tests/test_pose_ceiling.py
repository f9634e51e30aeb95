"""bench/pose_ceiling.py: the exact answers it trains the pose net on, and the real bench in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import pose_ceiling as pc  # noqa: E402

from masksfm.geometry import inverse_warp, pose_vec_to_mat  # noqa: E402


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "pose_ceiling.py"), "--threads", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def reconstruction_error(item: dict, depth: torch.Tensor, motion: torch.Tensor) -> float:
    """Mean |target − source warped into it| over the in-view pixels of an item's sources."""
    images, K = item["images_raw"], item["K"]
    center = images.shape[0] // 2
    sources = torch.cat([images[:center], images[center + 1:]])
    n = len(sources)
    warped, pixels = inverse_warp(sources, depth[center].expand(n, -1, -1, -1), pose_vec_to_mat(motion),
                                  K.expand(n, -1, -1))
    h, w = images.shape[-2:]
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] <= w - 1) & (pixels[:, 1] >= 0) & (pixels[:, 1] <= h - 1)
    return float((warped - images[center]).abs().mean(1)[inside].mean())


def test_the_true_depth_and_motion_reconstruct_each_augmented_target(synth_dataset):
    """The renderer's depth through an item's scale-and-crop and flip, and its true motions mirrored
    with it, warp its sources onto its target (a static scene but for one car) better than the same
    motions 0.8 or 1.25 times as far, than no motion, and than the depth mirrored the wrong way."""
    config = pc.pose_config(synth_dataset, steps=1, seed=0)
    items = pc.training_items(synth_dataset, config)
    by_flip = {}
    for epoch in range(4):
        for index in range(len(items)):
            augmentation = items.augmentation(epoch, index)
            if augmentation.scale > 1.05:
                by_flip.setdefault(augmentation.flip, (epoch, index))
    assert set(by_flip) == {False, True}
    for flip, (epoch, index) in by_flip.items():
        item = items[(epoch, index)]
        depth, motion = pc.true_depth(items, epoch, index), pc.true_motion(items, epoch, index)
        assert depth.shape == (3, 1, 64, 208) and motion.shape == (2, 6)

        def error_at(factor: float) -> float:
            scaled = motion.clone()
            scaled[:, :3] *= factor
            return reconstruction_error(item, depth, scaled)

        exact = error_at(1.0)
        assert exact < 0.9 * min(error_at(0.8), error_at(1.25)), (flip, exact)
        assert exact < 0.4 * error_at(0.0), (flip, exact)
        assert exact < 0.85 * reconstruction_error(item, depth.flip(-1), motion), (flip, exact)


def test_disparity_scales_match_the_depth_nets_sizes():
    full = torch.rand(2, 1, 65, 209) + 0.5
    scales = pc.disparity_scales(full)
    assert [tuple(s.shape[-2:]) for s in scales] == [(65, 209), (33, 105), (17, 53), (9, 27)]
    assert float(scales[3].mean()) == pytest.approx(float(full.mean()), rel=0.05)


@pytest.mark.slow
def test_pose_ceiling_bench_trains_both_ways_and_writes_its_figures(synth_dataset, tmp_path):
    out = run_bench(str(synth_dataset), "--steps", "2", "--json", str(tmp_path / "ceiling.json"))
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines()[2:]]
    assert [row[2].strip() for row in rows] == ["supervised", "true-depth"]
    figures = json.loads((tmp_path / "ceiling.json").read_text())
    assert [f["mode"] for f in figures] == ["supervised", "true-depth"]
    for f in figures:
        assert f["steps"] == 2 and f["ate5"] > 0 and f["guess"]["ate5"] > 0 and f["speed_spread"] >= 0
        assert f"{f['ate5'] / f['guess']['ate5']:.2f}" in out.stdout


def test_pose_ceiling_bench_trains_another_pose_net_with_set(synth_dataset, tmp_path):
    config = pc.pose_config(synth_dataset, 1, 0, ["model.pose_encoder=conv"])
    assert config.model.pose_encoder == "conv" and type(pc.build_model(config).pose_net.net).__name__ == "PoseNet"
    out = run_bench(str(synth_dataset), "--modes", "supervised", "--steps", "1", "--set", "model.pose_encoder=conv",
                    "--json", str(tmp_path / "conv.json"))
    assert out.returncode == 0, out.stderr
    assert "| supervised (model.pose_encoder=conv) |" in out.stdout
    assert json.loads((tmp_path / "conv.json").read_text())[0]["overrides"] == ["model.pose_encoder=conv"]


def test_pose_ceiling_bench_refuses_bad_input(synth_dataset, tmp_path):
    bad_mode = run_bench(str(synth_dataset), "--modes", "supervised,flow")
    assert bad_mode.returncode == 2 and "modes are supervised, true-depth" in bad_mode.stderr
    seeds = run_bench(str(synth_dataset), "--train-seeds", "0,1")
    assert seeds.returncode == 2 and "gives 2 seeds for 1 sets" in seeds.stderr
    key = run_bench(str(synth_dataset), "--set", "model.pose_net=conv", "--steps", "1")
    assert key.returncode == 2 and "pose_net" in key.stderr and len(key.stderr.strip().splitlines()) == 1, key.stderr
    relation = run_bench(str(synth_dataset), "--set", "loss.virtual_weight=0.1", "--steps", "1")
    assert relation.returncode == 2 and "without its relations; got loss.virtual_weight" in relation.stderr
    absent = run_bench(str(tmp_path / "nowhere"), "--steps", "1")
    assert absent.returncode == 2 and "nowhere" in absent.stderr and "Traceback" not in absent.stderr, absent.stderr
    # Training drives without the renderer's depth: one line naming the scene, no traceback.
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    for scene in (data / "train.txt").read_text().split():
        shutil.rmtree(data / scene / "depth")
    missing = run_bench(str(data), "--modes", "true-depth", "--steps", "1")
    assert missing.returncode == 2 and "has no true depth" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_the_pose_net_training_depends_on_its_seed_only(synth_dataset):
    """Whatever ran before, a training seed gives the same net (it starts from the trainer's weights for
    that seed, `torch.manual_seed` then `build_model`), and another seed another."""
    config = pc.pose_config(synth_dataset, steps=1, seed=3)
    first = pc.train_pose_net(synth_dataset, config, "supervised").state_dict()
    torch.rand(5)  # the global generator moved on
    again = pc.train_pose_net(synth_dataset, config, "supervised").state_dict()
    other = pc.train_pose_net(synth_dataset, pc.pose_config(synth_dataset, steps=1, seed=4), "supervised").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
