"""What several test files share: the real command line (in a subprocess or in-process) and the flags
of a small training run, a loss mask's settings, a fixed batch of rendered snippets, an mp4 encoder,
and camera trajectories with known geometry (camera-to-world, KITTI axes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The command line's flags for a small, quick training run on the suite's rendered set.
SMALL = ["--height", "64", "--width", "208", "--batch-size", "2", "--set", "data.workers=0",
         "--set", "train.val_every=1000", "--set", "train.log_every=1", "--set", "loss.warmup_steps=2"]

# The pose net without batch normalisation (SfMLearner's convolutions), for which 2 DDP processes
# compute what 1 does: the default ResNet-18 pose net normalises by each process's half of the batch.
DDP_EXACT = "model.pose_encoder=conv"


def mask_setting(mode: str) -> list[str]:
    """The overrides for `loss.mask=mode`: SfMLearner's explainability masks come from its own pose
    net's decoder (`model.pose_encoder=conv`; the default ResNet-18 pose net has none)."""
    return [f"loss.mask={mode}", *(["model.pose_encoder=conv"] if mode == "explainability" else [])]


def run_masksfm(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m masksfm ARGS` in a subprocess, output captured as text."""
    return subprocess.run([sys.executable, "-m", "masksfm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def fixed_batch(root: Path, height: int = 32, width: int = 104, indices=(0, 1)) -> dict[str, torch.Tensor]:
    """The train split's snippets `indices` without augmentation, at a small size, stacked (CPU tensors)."""
    from masksfm.data.dataset import SnippetDataset
    from masksfm.data.layout import load_split

    dataset = SnippetDataset(load_split(root, "train"), height, width, augment=False, seed=0)
    items = [dataset[i] for i in indices]
    return {k: torch.stack([item[k] for item in items]) for k in ("images", "images_raw", "K")}


def one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI in-process on `argv`, expect exit code 2 with one error line on stderr, return it."""
    from masksfm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("masksfm: error:")
    return err


def encode_mp4(path: Path, frames: list[np.ndarray], rate: int = 10) -> Path:
    """Write (H, W, 3) uint8 RGB frames as an MPEG-4 video at `rate` frames per second."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.bit_rate = 4_000_000
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rot_y(angle):
    """(..., 3, 3) rotations about the camera's y axis (yaw for a KITTI camera), radians."""
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    R = np.zeros(angle.shape + (3, 3))
    R[..., 0, 0], R[..., 0, 2], R[..., 1, 1], R[..., 2, 0], R[..., 2, 2] = c, s, 1.0, -s, c
    return R


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A (3, 3) rotation from a random unit quaternion."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def curved_drive(n: int = 60, seed: int = 0) -> np.ndarray:
    """A drive with random yaw, pitch wobble, 0.5–1.5 m steps and height changes: (n, 4, 4)."""
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    yaw = np.cumsum(rng.normal(0.0, 0.03, n))
    pitch = 0.02 * np.sin(np.arange(n) / 5.0)
    c, s = np.cos(pitch), np.sin(pitch)
    R_x = np.zeros((n, 3, 3))
    R_x[:, 0, 0], R_x[:, 1, 1], R_x[:, 1, 2], R_x[:, 2, 1], R_x[:, 2, 2] = 1.0, c, -s, s, c
    poses[:, :3, :3] = rot_y(yaw) @ R_x
    forward = poses[:, :3, 2]  # each camera's z axis in the world
    poses[:, :3, 3] = np.cumsum(forward * rng.uniform(0.5, 1.5, (n, 1)), axis=0)
    poses[:, 1, 3] += 0.3 * np.sin(np.arange(n) / 7.0)
    return poses


def straight_line(n: int, step: float = 1.0) -> np.ndarray:
    """n camera-to-world poses moving `step` metres per frame along z, no rotation."""
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = step * np.arange(n)
    return poses


def similarity(poses: np.ndarray, R: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """The poses moved by the similarity x -> s·R·x + t (rotations R·R_i)."""
    out = poses.copy()
    out[:, :3, :3] = R @ poses[:, :3, :3]
    out[:, :3, 3] = s * poses[:, :3, 3] @ R.T + t
    return out
