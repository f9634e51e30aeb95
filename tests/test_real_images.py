"""Real photographs with true geometry: the Middlebury 2014 "Motorcycle" pair that scikit-image ships
(`skimage.data.stereo_motorcycle()`, rectified left / right views, 500x741, and the left view's true
disparity with inf or NaN where it is unknown).

The pair is two cameras with one orientation, the right one 193.001 mm to the right of the left one:
a known pure-x pose between two real images. Its calibration (in the function's docstring, for these
down-sampled images): f = 994.978 px, left principal point (311.193, 254.877), and the right
camera's principal point doffs = 31.086 px further right. True depth is then z = f·B / (d + doffs).

masksfm's warp and masks take one K for both frames, so the pair is put on one canvas with one
principal point: the left view padded PAD columns on the left (an exact integer shift), the right
view resampled so that its principal point lands on the same canvas point (a shift of PAD − doffs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from masksfm.config import load_config
from masksfm.data import layout
from masksfm.evaluation import depth_metrics
from masksfm.geometry import inverse_warp, pixel_grid, pixels_to_grid
from masksfm.masks import compute_masks

FOCAL, BASELINE, DOFFS = 994.978, 0.193001, 31.086  # px, m, px
CX, CY = 311.193, 254.877  # the left camera's principal point, px
PAD = 32  # canvas columns added on the left: the right view's content starts at PAD − doffs = 0.914


@dataclass
class Pair:
    left: np.ndarray  # (H, W, 3) uint8
    right: np.ndarray  # (H, W, 3) uint8
    disparity: np.ndarray  # (H, W) float64 px, NaN where unknown
    depth: np.ndarray  # (H, W) float64 m, 0 where unknown
    K: torch.Tensor  # (1, 3, 3) the canvas's intrinsics
    T: torch.Tensor  # (1, 4, 4) left camera -> right camera


def canvas(image: torch.Tensor, shift: float, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) image -> (B, C, H, W + PAD) canvas whose column x' shows the image's column x' − shift
    (zeros outside the image)."""
    h, w = image.shape[-2:]
    grid = pixel_grid(h, w + PAD, dtype=image.dtype)[:, :2].clone()
    grid[:, 0] -= shift
    # pixels_to_grid normalises by the size of the grid's own image; the source is W wide, not W + PAD.
    grid[:, 0] *= (w + PAD - 1) / (w - 1)
    return F.grid_sample(image, pixels_to_grid(grid), mode=mode, padding_mode="zeros", align_corners=True)


@pytest.fixture(scope="module")
def pair() -> Pair:
    left, right, disparity = skdata.stereo_motorcycle()
    disparity = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float64)
    depth = np.nan_to_num(FOCAL * BASELINE / (disparity + DOFFS), nan=0.0)
    K = torch.tensor([[[FOCAL, 0.0, CX + PAD], [0.0, FOCAL, CY], [0.0, 0.0, 1.0]]])
    T = torch.eye(4)[None]
    T[0, 0, 3] = -BASELINE  # a left-camera point is B further left as seen from the right camera
    return Pair(left, right, disparity, depth, K, T)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) array -> (1, C, H, W) float32 tensor."""
    array = np.asarray(array, dtype=np.float32)
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)[None]


def left_right_check(disparity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visibility of each left pixel in the right view, from the disparity alone (no masksfm code).

    The right view's disparity is the left one's carried over (x_R = x − d, nearest column), the
    largest (nearest) winning; a left pixel is visible when it lands in the right image and its
    disparity is within 1 px of the right view's there (the usual left-right consistency check).

    Returns:
        lands: (H, W) bool, known disparity and landing inside the right image;
        front: (H, W) float64, the right view's disparity where the pixel lands, px (NaN: does not land).
        A pixel is visible where `lands & (d >= front − 1)`, occluded where it lands and is not.
    """
    h, w = disparity.shape
    known = np.isfinite(disparity)
    d = np.where(known, disparity, 0.0)
    column = np.floor(np.arange(w)[None] - d + 0.5).astype(int)
    lands = known & (column >= 0) & (column <= w - 1)
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    right = np.full((h, w), -np.inf)
    np.maximum.at(right, (rows[lands], column[lands]), d[lands])
    front = np.full((h, w), np.nan)
    front[lands] = right[rows[lands], column[lands]]
    return lands, front


def right_depth(pair: Pair) -> torch.Tensor:
    """The right view's true depth on the canvas, (1, 1, H, W + PAD): each left pixel's depth carried to
    where it lands (nearest wins); 0 (invalid) where no left pixel lands."""
    h, w = pair.depth.shape
    known = pair.depth > 0
    column = np.floor(np.arange(w)[None] + PAD - (np.nan_to_num(pair.disparity) + DOFFS) + 0.5).astype(int)
    lands = known & (column >= 0) & (column < w + PAD)
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    depth = np.full((h, w + PAD), np.inf)
    np.minimum.at(depth, (rows[lands], column[lands]), pair.depth[lands])
    return as_tensor(np.where(np.isfinite(depth), depth, 0.0))


def on_canvas(pair: Pair) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The left view, its depth and the right view on the canvas, each (1, C, H, W + PAD)."""
    left = F.pad(as_tensor(pair.left), (PAD, 0))
    depth = F.pad(as_tensor(pair.depth), (PAD, 0))
    right = canvas(as_tensor(pair.right), PAD - DOFFS)
    return left, depth, right


class TestWarp:
    def test_true_depth_and_pose_reconstruct_the_left_view(self, pair):
        left, depth, right = on_canvas(pair)
        warped, pixels = inverse_warp(right, torch.where(depth > 0, depth, 1.0), pair.T, pair.K)
        # Where the right view's column x_R = x' − PAD + doffs lies in the right image.
        x_right = pixels[0, 0, :, PAD:].numpy() - PAD + DOFFS
        known = pair.depth > 0
        scored = known & (x_right >= 0) & (x_right <= pair.left.shape[1] - 1)
        assert scored.mean() > 0.8

        def mae(a: torch.Tensor) -> float:
            return float((a[0, :, :, PAD:] - left[0, :, :, PAD:]).abs().mean(0).numpy()[scored].mean())

        identity = float(np.abs(pair.right.astype(float) - pair.left).mean(-1)[known].mean())
        warp = mae(warped)
        print(f"mean absolute error, grey levels: identity {identity:.1f}, warp with true depth {warp:.1f}")
        assert identity > 30 and warp < 10 and warp < 0.25 * identity
        # The landing points are the disparity's, to the float's precision: x_R = x − d.
        expected = np.arange(pair.left.shape[1])[None] - pair.disparity
        assert np.abs(x_right - expected)[scored].max() < 1e-3
        # doffs matters: the right view not re-centred (its own principal point) reconstructs nothing.
        unaligned, _ = inverse_warp(F.pad(as_tensor(pair.right), (PAD, 0)), torch.where(depth > 0, depth, 1.0),
                                    pair.T, pair.K)
        assert mae(unaligned) > 3 * warp


class TestMasks:
    @pytest.mark.parametrize("tau", [0.0, None], ids=["paper-tau0", "default-tau"])
    def test_masks_from_true_geometry_against_the_left_right_check(self, pair, tau):
        """The combined mask of the left view from its true depth, the right view's and the true pose
        drops the pixels the disparity says are occluded in the right view and keeps the visible ones."""
        tau = load_config(None).loss.overlap_tolerance if tau is None else tau
        _, depth, _ = on_canvas(pair)
        masks_left, _ = compute_masks(depth, right_depth(pair), pair.T, pair.K, repeats=0, overlap_tolerance=tau)
        kept = masks_left.combined[0, 0, :, PAD:].numpy() > 0.5
        lands, front = left_right_check(pair.disparity)
        d = np.nan_to_num(pair.disparity)
        visible = lands & (d >= front - 1)
        occluded = lands & ~visible
        # How much nearer the occluder is: the ratio of distances is that of (disparity + doffs).
        far_behind = occluded & ((front + DOFFS) / (d + DOFFS) > 1.12)
        assert occluded.sum() > 10_000  # the motorcycle hides real parts of the wall: 5 % of the pixels
        recall = (kept & visible).sum() / visible.sum()
        precision = (kept & visible).sum() / kept.sum()
        dropped = (~kept & occluded).sum() / occluded.sum()
        dropped_far = (~kept & far_behind).sum() / far_behind.sum()
        print(f"tau {tau}: visible kept {recall:.4f}, precision {precision:.4f}, occluded dropped {dropped:.4f} "
              f"(hidden by a surface over 12 % nearer: {dropped_far:.4f})")
        assert not (kept & (pair.depth == 0)).any()
        # Nothing kept that leaves the right image, but for the canvas's sub-pixel margin at its border
        # (the right view starts 0.914 px into the canvas; the check rounds to the nearest column).
        assert (kept & ~lands).sum() < 0.001 * kept.sum()
        assert recall > 0.97 and precision > 0.99 and dropped_far > 0.95
        # τ keeps what a surface less than τ nearer hides (neighbours of one surface, docs/design.md §4).
        assert dropped > (0.95 if tau == 0 else 0.88)


class TestDepthEvaluation:
    def test_metrics_ignore_unknown_ground_truth(self, pair):
        gt = np.where(pair.depth > 0, pair.depth, np.inf)
        gt[:10] = np.nan  # both kinds of unknown
        assert np.isfinite(gt).mean() > 0.9
        exact = depth_metrics(gt, 3.7 * np.nan_to_num(pair.depth, nan=1.0) + 1e-9, garg_crop=False)
        assert exact["abs_rel"] < 1e-6 and exact["a1"] == 1.0
        flat = depth_metrics(gt, np.ones_like(gt), garg_crop=False)
        assert 0.1 < flat["abs_rel"] < 1 and flat["a1"] < 1

    def test_eval_depth_command(self, pair, tmp_path):
        """`masksfm eval depth` of a prediction folder against ground truth with unknown pixels, one
        frame whose ground truth is all unknown (skipped, not an error)."""
        data, predictions = tmp_path / "data", tmp_path / "pred"
        scene = data / "motorcycle"
        layout.write_image(scene / "000000.png", pair.left)
        layout.write_image(scene / "000001.png", pair.left)
        layout.write_cam(scene / "cam.txt", np.array([[FOCAL, 0, CX], [0, FOCAL, CY], [0, 0, 1]]))
        (scene / "depth").mkdir()
        np.save(scene / "depth" / "000000.npy", np.where(pair.depth > 0, pair.depth, np.inf).astype(np.float32))
        np.save(scene / "depth" / "000001.npy", np.full(pair.depth.shape, np.nan, np.float32))
        for split, names in (("train", []), ("val", []), ("test", ["motorcycle"])):
            layout.write_split(data, split, names)
        layout.write_dataset_info(data, "stereo-left")
        predictions.mkdir()
        guess = np.where(pair.depth > 0, pair.depth, 4.0).astype(np.float32)  # metric, right where known
        for k in range(2):
            np.save(predictions / f"{k:06d}.npy", guess)
        result = subprocess.run([sys.executable, "-m", "masksfm", "eval", "depth", str(predictions), str(data),
                                 "--pred-kind", "depth", "--scaling", "none", "--json", str(tmp_path / "m.json")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics["count"] == 1 and metrics["abs_rel"] < 1e-6 and metrics["a1"] == 1.0
