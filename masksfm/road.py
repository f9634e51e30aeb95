"""The road plane under the camera, and the metric scale it gives (`masksfm predict --camera-height`).

A monocular net knows depth only up to scale. In each frame the road plane is fitted robustly
(RANSAC with MSAC scoring, then total least squares on its inliers) to the 3-D points of the lower
part of the image; the camera stands `h` model units above it, so `M / h` turns the frame's depth
into metres for a camera M metres above the road. Pure, batched (all frames at once), any device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from masksfm.geometry import backproject, crop_intrinsics

# Road plane (metric scale). The residual of a road point, |n·X + h|, is about h times the relative
# error of its depth (X_y = h·z/z on the road, and a depth error moves X along its ray), so the
# inlier threshold is a fraction of the candidate height: 5 % depth error, and a 15 cm kerb at
# 1.65 m (9 %) stays out of the road's inliers.
ROAD_ROWS = 0.4  # the lower 40 % of the image: where a forward-looking camera sees the road
ROAD_INLIER_THRESHOLD = 0.05
ROAD_MAX_TILT_DEG = 25.0  # between the plane's normal and the camera's up axis (−y)
ROAD_MIN_INLIER_RATIO = 0.2  # of the valid points of the lower part
ROAD_MIN_POINTS = 100
RANSAC_HYPOTHESES = 128
RANSAC_POINTS = 1024  # points drawn from the lower part (with replacement) to score the hypotheses
REFINE_ITERATIONS = 3


class RoadPlane(NamedTuple):
    """Road planes `n·X + h = 0` fitted per frame (camera frame: x right, y down, z forward).

    normal: (B, 3) unit normals, pointing up (n_y < 0).
    height: (B,) the camera centre's distance above the plane, depth's unit.
    inlier_ratio: (B,) fraction of the lower part's valid points on the plane.
    valid: (B,) bool, a plausible road was found (enough points and inliers, normal near vertical,
        camera above it).
    """

    normal: torch.Tensor
    height: torch.Tensor
    inlier_ratio: torch.Tensor
    valid: torch.Tensor


def _oriented_up(normal: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip normals (..., 3) to point up (−y) and give the plane offset h = −n·point."""
    normal = normal * torch.where(normal[..., 1:2] > 0, -1.0, 1.0).to(normal.dtype)
    return normal, -(normal * point).sum(-1)


def fit_road_plane(
    depth: torch.Tensor,
    K: torch.Tensor,
    rows: float = ROAD_ROWS,
    inlier_threshold: float = ROAD_INLIER_THRESHOLD,
    max_tilt_deg: float = ROAD_MAX_TILT_DEG,
    min_inlier_ratio: float = ROAD_MIN_INLIER_RATIO,
    hypotheses: int = RANSAC_HYPOTHESES,
    seed: int = 0,
) -> RoadPlane:
    """Fit the road plane under the camera in each frame: RANSAC over point triples, then total least
    squares on the inliers of the best plane, all frames at once.

    Only planes whose normal lies within `max_tilt_deg` of the camera's up axis and that pass under
    the camera are hypotheses; a point is an inlier when `|n·X + h| < inlier_threshold · h` (scale-
    free: the depth's unit is unknown).

    Args:
        depth: (B, 1, H, W) z-depth, any unit; non-finite or ≤ 0 = invalid.
        K: (B, 3, 3) intrinsics, pixels.
        rows: the fraction of image rows, from the bottom, searched for the road.
        inlier_threshold: inlier distance as a fraction of the plane's height.
        max_tilt_deg: largest angle between the normal and the up axis, degrees.
        min_inlier_ratio: smallest fraction of the valid points on the plane for `valid`.
        hypotheses: RANSAC triples per frame.
        seed: seed of the random triples (the result is deterministic).
    Returns:
        A :class:`RoadPlane` of (B, ...) tensors in depth's dtype and device.
    """
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must have shape (B, 1, H, W), got {tuple(depth.shape)}")
    if K.shape != (depth.shape[0], 3, 3):
        raise ValueError(f"K must have shape ({depth.shape[0]}, 3, 3), got {tuple(K.shape)}")
    b, _, height, _ = depth.shape
    top = min(height - 1, int(height * (1.0 - rows)))
    depth = depth[:, :, top:]
    valid = torch.isfinite(depth) & (depth > 0)
    K = crop_intrinsics(K.to(depth.dtype), 0, top)
    points = backproject(torch.where(valid, depth, torch.zeros_like(depth)), K).flatten(2).transpose(1, 2)  # (B, N, 3)
    valid = valid.flatten(1)
    count = valid.sum(1)

    generator = torch.Generator(device=depth.device).manual_seed(seed)
    # Frames without valid points draw from all points (multinomial needs a positive weight) and
    # are marked invalid below.
    weights = torch.where(count[:, None] > 0, valid.to(depth.dtype), torch.ones_like(valid, dtype=depth.dtype))
    draw = torch.multinomial(weights, RANSAC_POINTS, replacement=True, generator=generator)
    sample = torch.gather(points, 1, draw[..., None].expand(-1, -1, 3))  # (B, M, 3)

    triples = torch.randint(0, RANSAC_POINTS, (b, hypotheses * 3), generator=generator, device=depth.device)
    p0, p1, p2 = torch.gather(sample, 1, triples[..., None].expand(-1, -1, 3)).view(b, hypotheses, 3, 3).unbind(2)
    cross = torch.linalg.cross(p1 - p0, p2 - p0)
    area = cross.norm(dim=-1)
    # Collinear or repeated points: no plane (relative to the triangle's sides, so any unit works).
    proper = area > 1e-6 * (p1 - p0).norm(dim=-1) * (p2 - p0).norm(dim=-1)
    normal, offset = _oriented_up(cross / area.clamp_min(torch.finfo(depth.dtype).tiny)[..., None], p0)
    cos_max = math.cos(math.radians(max_tilt_deg))
    plausible = proper & (-normal[..., 1] >= cos_max) & (offset > 0)
    # MSAC (Torr & Zisserman): the truncated squared residual, not the inlier count, so that of two
    # planes with as many inliers the one that fits them better wins; a count prefers a plane
    # tilted across the road onto a kerb.
    bound = (inlier_threshold * offset)[:, None]
    residual = sample @ normal.transpose(1, 2) + offset[:, None]  # (B, M, R)
    bound2 = bound.square().clamp_min(torch.finfo(depth.dtype).tiny)
    cost = (torch.minimum(residual.square(), bound2) / bound2).mean(1)
    cost = torch.where(plausible, cost, torch.full_like(cost, math.inf))
    best = cost.argmin(1)
    found = torch.isfinite(cost.gather(1, best[:, None])[:, 0])
    normal = normal[torch.arange(b, device=depth.device), best]
    offset = offset[torch.arange(b, device=depth.device), best]

    def on_plane(normal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        distance = ((points @ normal[..., None])[..., 0] + offset[:, None]).abs()
        return valid & (distance < inlier_threshold * offset[:, None])

    # Refined on every valid point of the lower part (the RANSAC sample only chose the plane).
    for _ in range(REFINE_ITERATIONS):
        inliers = on_plane(normal, offset)
        w = inliers.to(depth.dtype)[..., None]
        total = w.sum(1).clamp_min(1.0)
        centroid = (w * points).sum(1) / total
        centred = (points - centroid[:, None]) * w
        scatter = centred.transpose(1, 2) @ centred / total[..., None]
        # Total least squares: the normal is the direction of least spread of the inliers.
        refined, refined_offset = _oriented_up(torch.linalg.eigh(scatter)[1][..., 0], centroid)
        enough = inliers.sum(1) >= 3
        normal = torch.where(enough[:, None], refined, normal)
        offset = torch.where(enough, refined_offset, offset)

    ratio = on_plane(normal, offset).sum(1) / count.clamp_min(1)
    ok = ((count >= ROAD_MIN_POINTS) & found & (ratio >= min_inlier_ratio)
          & (-normal[:, 1] >= cos_max) & (offset > 0))
    return RoadPlane(normal, offset, ratio, ok)


def metric_scale(depth: torch.Tensor, K: torch.Tensor, camera_height: float,
                 **fit_options) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-frame factor that puts the camera `camera_height` metres above the fitted road plane.

    Args:
        depth: (B, 1, H, W) z-depth in the model's scale.
        K: (B, 3, 3) intrinsics, pixels.
        camera_height: the camera's height above the road, metres (KITTI: 1.65).
        fit_options: passed to :func:`fit_road_plane`.
    Returns:
        scale: (B,) metres per model unit (NaN where no road was found); valid: (B,) bool.
    """
    plane = fit_road_plane(depth, K, **fit_options)
    nan = torch.full_like(plane.height, math.nan)
    scale = torch.where(plane.valid, camera_height / plane.height.clamp_min(1e-12), nan)
    return scale, plane.valid
