"""Evaluation protocols, to the constant (docs/design.md §6): depth metrics, snippet ATE, full-trajectory
ATE / RPE (with evo) and KITTI's odometry metric.

- Depth: monodepth2's `evaluate_depth.py` / `compute_errors` on the Eigen split: disparity resized
  to the ground truth's size as cv2 does, depth = 1/disp, valid where 1e-3 < gt < 80, Garg crop,
  per-image median scaling, clamp to [1e-3, 80], seven metrics per image, averaged over images.
- Pose: SfMLearner's `compute_ate` on 5-frame snippets, chained from pairwise predictions as
  monodepth2 does; full trajectories Sim(3)-aligned for ATE / RPE (evo); KITTI's `t_rel` / `r_rel`
  as the odometry devkit's `evaluate_odometry.cpp` computes them.

Pose conventions are those of :mod:`masksfm.trajectory`: trajectories are (N, 4, 4) camera-to-world,
`rel_poses[i] = inv(P_i) @ P_{i+1}`. All functions take and return numpy (metrics as Python floats).
"""

from __future__ import annotations

import math

import numpy as np

from masksfm.trajectory import align_trajectory

# monodepth2's evaluation range (metres) for KITTI, and Garg et al.'s crop (ECCV 2016) as fractions
# of the ground truth's height and width; the bounds are truncated to integers as monodepth2 does.
MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # top, bottom, left, right

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")

SNIPPET_LENGTH = 5

# The KITTI odometry devkit's sub-sequence lengths (metres) and first-frame step (frames).
KITTI_SEGMENT_LENGTHS = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)
KITTI_STEP_FRAMES = 10


class EvaluationInputError(ValueError):
    """The data under evaluation is unusable (no valid ground-truth pixel, a non-finite or
    non-positive prediction, a prediction that is not an image).

    Raised for one array; the caller knows the file it came from and re-raises it as a
    :class:`~masksfm.errors.MasksfmError` naming that file.
    """


# --- depth ---------------------------------------------------------------------------------------


def garg_crop_bounds(height: int, width: int) -> tuple[int, int, int, int]:
    """Garg crop `(top, bottom, left, right)`: rows top <= r < bottom, cols left <= c < right.

    Truncated to integers as monodepth2's `.astype(np.int32)` does; (153, 371, 44, 1197) for
    KITTI's 375x1242.
    """
    top, bottom, left, right = GARG_CROP
    return int(top * height), int(bottom * height), int(left * width), int(right * width)


def depth_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    garg_crop: bool = True,
    median_scaling: bool = True,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
) -> dict[str, float]:
    """The seven Eigen-split depth metrics of one image, as monodepth2 computes them.

    Pixels count where `min_depth < gt < max_depth` (and inside the Garg crop); the prediction is
    scaled by `median(gt) / median(pred)` over those pixels, then clamped to [min_depth, max_depth].
    abs_rel = mean(|gt − pred| / gt), sq_rel = mean((gt − pred)² / gt), rmse = sqrt(mean((gt −
    pred)²)), rmse_log = sqrt(mean((ln gt − ln pred)²)), a_k = fraction with
    max(gt / pred, pred / gt) < 1.25^k.

    Args:
        gt: (H, W) ground-truth depth, metres, 0 (or anything outside the range) = none.
        pred: (H, W) predicted depth at the same size (resizing is the caller's job), any scale
            when `median_scaling`, else metres.
        garg_crop: evaluate only inside Garg's crop (the KITTI Eigen protocol).
        median_scaling: per-image median scaling (monocular methods have no metric scale).
        min_depth, max_depth: evaluation range, metres.
    Returns:
        {abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3} as Python floats.
    Raises:
        EvaluationInputError: no valid ground-truth pixel; a non-finite prediction on a valid pixel;
            a non-positive median prediction (the scale is then undefined).
        ValueError: `gt` and `pred` are not 2-D arrays of one shape.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(f"gt and pred must be (H, W) arrays of one shape, got {gt.shape} and {pred.shape}")
    valid = (gt > min_depth) & (gt < max_depth)
    if garg_crop:
        top, bottom, left, right = garg_crop_bounds(*gt.shape)
        crop = np.zeros_like(valid)
        crop[top:bottom, left:right] = True
        valid &= crop
    if not valid.any():
        where = " inside the Garg crop" if garg_crop else ""
        raise EvaluationInputError(f"no ground-truth depth in ({min_depth}, {max_depth}) m{where}")
    gt, pred = gt[valid], pred[valid]
    if not np.all(np.isfinite(pred)):
        bad = np.count_nonzero(~np.isfinite(pred))
        raise EvaluationInputError(f"the prediction has {bad} non-finite values on valid pixels")
    if median_scaling:
        median = np.median(pred)
        if not median > 0:
            raise EvaluationInputError(f"the prediction's median depth is {median}: no scale matches the ground truth")
        pred = pred * (np.median(gt) / median)
    pred = np.clip(pred, min_depth, max_depth)

    ratio = np.maximum(gt / pred, pred / gt)
    error = gt - pred
    return {
        "abs_rel": float(np.mean(np.abs(error) / gt)),
        "sq_rel": float(np.mean(error**2 / gt)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25**2)),
        "a3": float(np.mean(ratio < 1.25**3)),
    }


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Average per-image metrics over images (the protocol's mean of per-image values).

    Args:
        per_image: one dict per image, all with the same keys (e.g. from :func:`depth_metrics`).
    Returns:
        The mean of each key as a Python float, and `count`, the number of images (int).
    """
    if not per_image:
        raise ValueError("mean_metrics needs at least one image's metrics")
    keys = list(per_image[0])
    if any(set(m) != set(keys) for m in per_image):
        raise ValueError("every image's metrics must have the same keys")
    table = np.array([[m[k] for k in keys] for m in per_image], dtype=np.float64)
    return {**{k: float(v) for k, v in zip(keys, table.mean(0))}, "count": len(per_image)}


def _as_image(name: str, array: np.ndarray) -> np.ndarray:
    image = np.asarray(array)
    while image.ndim > 2 and image.shape[0] == 1:  # (1, 1, h, w) / (1, h, w) as nets and .npy files give them
        image = image[0]
    if image.ndim != 2 or min(image.shape) < 1:
        raise EvaluationInputError(f"the {name} must be an (h, w) image, got shape {np.shape(array)}")
    return image.astype(np.float64 if image.dtype == np.float64 else np.float32)


def _resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    # cv2's INTER_LINEAR uses half-pixel centres, x_src = (x + 0.5)·w/W − 0.5, clamped at the
    # borders, and no antialiasing: exactly what monodepth2's evaluation does.
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def disp_to_depth_at(disp: np.ndarray, height: int, width: int) -> np.ndarray:
    """Predicted disparity to depth at the ground truth's size, as monodepth2's Eigen evaluation:
    resize the disparity (bilinear, half-pixel centres, `cv2.INTER_LINEAR`), then depth = 1/disp.

    Args:
        disp: (h, w) predicted disparity (1/depth, any scale); leading size-1 axes are dropped.
        height, width: the ground truth's size H, W, pixels.
    Returns:
        (H, W) depth, float32 (float64 for a float64 input), in 1/disp's scale.
    Raises:
        EvaluationInputError: not an image, or a disparity that is not positive and finite.
    """
    disp = _as_image("disparity", disp)
    bad = ~(np.isfinite(disp) & (disp > 0))
    if bad.any():
        raise EvaluationInputError(f"the disparity must be positive and finite; {np.count_nonzero(bad)} values are not")
    return 1.0 / _resize_linear(disp, height, width)


def depth_at(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """A depth prediction resized to the ground truth's size (bilinear, half-pixel centres, as cv2),
    for methods that give depth rather than disparity (`--pred-kind depth`).

    Args:
        depth: (h, w) predicted depth (any scale); leading size-1 axes are dropped.
        height, width: the ground truth's size H, W, pixels.
    Returns:
        (H, W) depth, float32 (float64 for a float64 input).
    Raises:
        EvaluationInputError: not an image, or non-finite values.
    """
    depth = _as_image("depth", depth)
    if not np.all(np.isfinite(depth)):
        raise EvaluationInputError(f"the depth has {np.count_nonzero(~np.isfinite(depth))} non-finite values")
    return _resize_linear(depth, height, width)


def prediction_to_depth_at(pred: np.ndarray, height: int, width: int, kind: str = "disp") -> np.ndarray:
    """:func:`disp_to_depth_at` for `kind="disp"`, :func:`depth_at` for `kind="depth"`."""
    if kind == "disp":
        return disp_to_depth_at(pred, height, width)
    if kind == "depth":
        return depth_at(pred, height, width)
    raise ValueError(f"kind must be 'disp' or 'depth', got {kind!r}")


# --- 5-frame snippets (SfMLearner) -------------------------------------------------------------


def _snippet_ates(gt_xyz: np.ndarray, pred_xyz: np.ndarray) -> np.ndarray:
    """SfMLearner's ATE of a batch of snippets: (S, N, 3) and (S, N, 3) -> (S,)."""
    pred = pred_xyz + (gt_xyz[:, :1] - pred_xyz[:, :1])
    num = np.sum(gt_xyz * pred, axis=(1, 2))
    den = np.sum(pred**2, axis=(1, 2))
    # A prediction at the origin throughout fits equally badly at every scale: take 0, not 0/0.
    scale = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    residual = scale[:, None, None] * pred - gt_xyz
    return np.sqrt(np.sum(residual**2, axis=(1, 2))) / gt_xyz.shape[1]


def snippet_ate(gt_xyz: np.ndarray, pred_xyz: np.ndarray) -> float:
    """SfMLearner's absolute trajectory error of one snippet.

    The prediction is translated so the first positions coincide, scaled by the least-squares
    `s = sum(gt·pred) / sum(pred²)` (one scale for the snippet), and
    `ate = sqrt(sum(|s·pred − gt|²)) / N`: SfMLearner's formula, not an RMSE (that would divide by
    sqrt(N)). A prediction that is the origin throughout gets s = 0.

    Args:
        gt_xyz: (N, 3) ground-truth positions relative to the snippet's first frame, metres.
        pred_xyz: (N, 3) predicted positions relative to the snippet's first frame, any scale.
    Returns:
        The ATE, metres.
    """
    gt_xyz = np.asarray(gt_xyz, dtype=np.float64)
    pred_xyz = np.asarray(pred_xyz, dtype=np.float64)
    if gt_xyz.ndim != 2 or gt_xyz.shape[1] != 3 or gt_xyz.shape != pred_xyz.shape:
        raise ValueError(f"gt_xyz and pred_xyz must both have shape (N, 3), got {gt_xyz.shape} and {pred_xyz.shape}")
    return float(_snippet_ates(gt_xyz[None], pred_xyz[None])[0])


def snippets_from_relative(
    rel_poses: np.ndarray, gt_poses: np.ndarray, length: int = SNIPPET_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of every `length`-frame snippet (stride 1) of a sequence, in its first frame.

    The predicted snippet is the chain of the pairwise predictions inside it (monodepth2's
    adaptation of SfMLearner's protocol to a pairwise pose net): frame k of the snippet starting at
    i is at the translation of `rel_poses[i] @ ... @ rel_poses[i+k-1]`; the ground truth at that of
    `inv(P_i) @ P_{i+k}`. Only whole snippets are used (S = N − length + 1, none if N < length), as
    SfMLearner's test frames are those with a whole snippet around them.

    Args:
        rel_poses: (N-1, 4, 4) predicted relative poses, `rel_poses[i]` maps frame i+1's points into
            frame i (`T_t2s` with t = i+1, s = i; `inv` of what a net predicting t → t+1 gives).
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres.
        length: frames per snippet.
    Returns:
        gt_xyz: (S, length, 3) and pred_xyz: (S, length, 3); frame 0 of each is at the origin.
    """
    rel = np.asarray(rel_poses, dtype=np.float64)
    gt = np.asarray(gt_poses, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (4, 4) or rel.shape != (len(gt) - 1, 4, 4):
        raise ValueError(f"expected gt_poses (N, 4, 4) and rel_poses (N-1, 4, 4), got {gt.shape} and {rel.shape}")
    if length < 2:
        raise ValueError(f"a snippet needs at least 2 frames, got length={length}")
    count = max(len(gt) - length + 1, 0)
    gt_xyz = np.zeros((count, length, 3))
    pred_xyz = np.zeros((count, length, 3))
    if count == 0:
        return gt_xyz, pred_xyz
    starts = np.arange(count)
    gt_inv_first = np.linalg.inv(gt[starts])
    chain = np.broadcast_to(np.eye(4), (count, 4, 4))
    # A loop over the snippet's frames, vectorized over every snippet of the sequence.
    for k in range(1, length):
        chain = chain @ rel[starts + k - 1]
        pred_xyz[:, k] = chain[:, :3, 3]
        gt_xyz[:, k] = (gt_inv_first @ gt[starts + k])[:, :3, 3]
    return gt_xyz, pred_xyz


def snippet_ates(rel_poses: np.ndarray, gt_poses: np.ndarray, length: int = SNIPPET_LENGTH) -> np.ndarray:
    """:func:`snippet_ate` of every snippet of a sequence (see :func:`snippets_from_relative`).

    Args:
        rel_poses: (N-1, 4, 4) predicted relative poses, frame i+1 to frame i.
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres.
        length: frames per snippet (5 in the protocol).
    Returns:
        (S,) ATE per snippet, metres; empty when the sequence is shorter than a snippet.
    """
    gt_xyz, pred_xyz = snippets_from_relative(rel_poses, gt_poses, length)
    return _snippet_ates(gt_xyz, pred_xyz)


def snippet_steps(snippet_poses: np.ndarray) -> np.ndarray:
    """The steps between consecutive frames within each snippet: inv(P_k) @ P_{k+1} = T_{c→k} · inv(T_{c→k+1}).

    Args:
        snippet_poses: (C, L, 4, 4) T_{c→k} of each snippet, the identity at k = L//2
            (:func:`masksfm.inference.predict_snippet_poses`).
    Returns:
        (C, L − 1, 4, 4), element [j, k] the step from the snippet's frame k to frame k + 1.
    """
    return snippet_poses[:, :-1] @ np.linalg.inv(snippet_poses[:, 1:])


def own_snippet_ates(snippet_poses: np.ndarray, gt_poses: np.ndarray) -> np.ndarray:
    """:func:`snippet_ate` of each snippet from the one pose-net call that predicts it (SfMLearner's
    `test_pose.py`: the net's L-frame snippets as they are, nothing chained across calls).

    Args:
        snippet_poses: (N − L + 1, L, 4, 4) T_{c→k} of the snippet centred on c = L//2 + j, the
            identity at k = L//2 (:func:`masksfm.inference.predict_snippet_poses`).
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres.
    Returns:
        (N − L + 1,) ATE per snippet, metres.
    """
    length = snippet_poses.shape[1]
    rel = snippet_steps(snippet_poses)
    return np.array([snippet_ates(rel[j], gt_poses[j:j + length], length)[0] for j in range(len(snippet_poses))])


def rotation_angles(R: np.ndarray) -> np.ndarray:
    """Angles of rotation matrices, radians: (..., 3, 3) -> (...).

    atan2(|axis part|, cos) rather than arccos of the trace: accurate for the small angles of
    frame-to-frame errors, where arccos loses half the digits (KITTI's t_rel / r_rel keep the devkit's
    arccos, to the constant).
    """
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    sin = np.linalg.norm(np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                                   R[..., 1, 0] - R[..., 0, 1]], axis=-1), axis=-1) / 2.0
    return np.arctan2(sin, cos)


def relative_pose_errors(rel_poses: np.ndarray, gt_poses: np.ndarray) -> dict[str, float]:
    """Where a sequence's relative-pose error comes from: the direction of travel, its speed, the turn.

    Per consecutive pair, with t and R the prediction's translation and rotation, t* and R* the
    ground truth's (monocular scale is free, so the speed is compared up to one scale per sequence):
    - `direction_err`: mean angle between t and t*, degrees (the translation angular error of
      two-view geometry);
    - `speed_spread`: the coefficient of variation (std / mean) of |t| / |t*| over the pairs: 0 when
      the predicted speeds are the true ones up to one scale;
    - `rotation_err`: mean angle of R R*ᵀ, degrees.
    Pairs where either translation is zero have no direction and are left out of the first two.

    Args:
        rel_poses: (N-1, 4, 4) predicted relative poses, `inv(P_i) @ P_{i+1}`, any scale.
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres.
    Returns:
        {direction_err, speed_spread, rotation_err} as Python floats (NaN where no pair moves).
    """
    rel = np.asarray(rel_poses, dtype=np.float64)
    gt = np.asarray(gt_poses, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (4, 4) or rel.shape != (len(gt) - 1, 4, 4):
        raise ValueError(f"expected gt_poses (N, 4, 4) and rel_poses (N-1, 4, 4), got {gt.shape} and {rel.shape}")
    gt_rel = np.linalg.inv(gt[:-1]) @ gt[1:]
    t, t_gt = rel[:, :3, 3], gt_rel[:, :3, 3]
    norm, norm_gt = np.linalg.norm(t, axis=1), np.linalg.norm(t_gt, axis=1)
    moving = (norm > 0) & (norm_gt > 0)
    # atan2(|a x b|, a . b): accurate for the small angles that matter here, where arccos is not.
    a, b = t[moving], t_gt[moving]
    angle = np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1))
    ratio = norm[moving] / norm_gt[moving]
    turn_err = rotation_angles(rel[:, :3, :3] @ np.transpose(gt_rel[:, :3, :3], (0, 2, 1)))
    return {
        "direction_err": float(np.degrees(angle.mean())) if moving.any() else math.nan,
        "speed_spread": float(ratio.std() / ratio.mean()) if moving.any() else math.nan,
        "rotation_err": float(np.degrees(turn_err.mean())),
    }


# --- full trajectories -------------------------------------------------------------------------


def trajectory_metrics(gt_poses: np.ndarray, pred_poses: np.ndarray) -> dict[str, float]:
    """ATE and RPE of a whole trajectory after Sim(3) alignment, computed by evo.

    The prediction is Sim(3)-aligned to the ground truth (Umeyama on the positions, 7 DoF:
    :func:`masksfm.trajectory.align_trajectory`, which unlike evo's own `align` accepts a straight
    drive). Then, with evo's `metrics.APE` / `metrics.RPE`:
    - `ate_rmse`: RMSE of the position errors, metres;
    - `rpe_trans`: RMSE over consecutive frame pairs (delta = 1 frame) of the translation of the
      relative-pose error `inv(gt_i⁻¹ gt_{i+1}) · (pred_i⁻¹ pred_{i+1})`, metres;
    - `rpe_rot`: RMSE over the same pairs of that error's rotation angle, degrees.

    Args:
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres, N >= 2.
        pred_poses: (N, 4, 4) predicted camera-to-world poses, any scale.
    Returns:
        {ate_rmse, rpe_trans, rpe_rot} as Python floats.
    """
    from evo.core import metrics
    from evo.core.trajectory import PosePath3D

    gt = np.asarray(gt_poses, dtype=np.float64)
    pred = np.asarray(pred_poses, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (4, 4) or gt.shape != pred.shape or len(gt) < 2:
        raise ValueError(f"gt_poses and pred_poses must both be (N, 4, 4) with N >= 2, got {gt.shape} and {pred.shape}")
    reference = PosePath3D(poses_se3=list(gt))
    estimate = PosePath3D(poses_se3=list(align_trajectory(pred, gt, with_scale=True)))
    Rel, Stat = metrics.PoseRelation, metrics.StatisticsType

    def statistic(metric) -> float:
        metric.process_data((reference, estimate))
        return float(metric.get_statistic(Stat.rmse))

    return {
        "ate_rmse": statistic(metrics.APE(Rel.translation_part)),
        "rpe_trans": statistic(metrics.RPE(Rel.translation_part, delta=1, delta_unit=metrics.Unit.frames)),
        "rpe_rot": statistic(metrics.RPE(Rel.rotation_angle_deg, delta=1, delta_unit=metrics.Unit.frames)),
    }


def kitti_odometry_metrics(gt_poses: np.ndarray, pred_poses: np.ndarray, align: str = "sim3") -> dict[str, float] | None:
    """KITTI's odometry metric, as the devkit's `evaluate_odometry.cpp` computes it.

    Sub-sequences start every 10 frames; for each of the lengths 100, 200, ..., 800 m the last frame
    is the first whose ground-truth distance travelled from the start *exceeds* the length. For
    each, the error pose `inv(pred_first⁻¹ pred_last) · (gt_first⁻¹ gt_last)` gives
    t_err = ‖its translation‖ / length and r_err = its rotation angle / length; both are averaged
    over all sub-sequences (not per length first).

    The devkit aligns nothing, which suits metric (stereo, lidar) odometry. A monocular prediction
    has no metric scale, so by default it is first Sim(3)-aligned to the ground truth over the
    whole trajectory (Umeyama, 7 DoF, as monocular results are commonly reported; only the scale
    matters, since relative poses ignore a global rigid motion). `align="none"` is the devkit as is.

    Args:
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres.
        pred_poses: (N, 4, 4) predicted camera-to-world poses.
        align: "sim3" (default) or "none".
    Returns:
        {t_rel: mean t_err in %, r_rel: mean r_err in degrees per 100 m} (the devkit's printed
        units), or None when no sub-sequence fits (ground truth at most 100 m long).
    """
    gt = np.asarray(gt_poses, dtype=np.float64)
    pred = np.asarray(pred_poses, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (4, 4) or gt.shape != pred.shape:
        raise ValueError(f"gt_poses and pred_poses must both be (N, 4, 4), got {gt.shape} and {pred.shape}")
    if align == "sim3":
        pred = align_trajectory(pred, gt, with_scale=True)
    elif align != "none":
        raise ValueError(f"align must be 'sim3' or 'none', got {align!r}")

    steps = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    dist = np.concatenate([[0.0], np.cumsum(steps)])
    first = np.arange(0, len(gt), KITTI_STEP_FRAMES)
    lengths = np.asarray(KITTI_SEGMENT_LENGTHS)
    # The devkit's lastFrameFromSegmentLength: the first frame with dist > dist[first] + length.
    last = np.searchsorted(dist, dist[first][:, None] + lengths[None, :], side="right")
    keep = last < len(gt)
    if not keep.any():
        return None
    first_idx = np.broadcast_to(first[:, None], last.shape)[keep]
    last_idx, length = last[keep], np.broadcast_to(lengths, last.shape)[keep]

    delta_gt = np.linalg.inv(gt[first_idx]) @ gt[last_idx]
    delta_pred = np.linalg.inv(pred[first_idx]) @ pred[last_idx]
    error = np.linalg.inv(delta_pred) @ delta_gt
    t_err = np.linalg.norm(error[:, :3, 3], axis=1) / length
    cos = 0.5 * (np.trace(error[:, :3, :3], axis1=1, axis2=2) - 1.0)
    r_err = np.arccos(np.clip(cos, -1.0, 1.0)) / length
    return {"t_rel": float(100.0 * t_err.mean()), "r_rel": float(math.degrees(r_err.mean()) * 100.0)}
