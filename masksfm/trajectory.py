"""Camera trajectories: chaining pairwise poses, Sim(3) alignment, TUM files and top-view plots.

Conventions (docs/design.md §2): a trajectory is (N, 4, 4) camera-to-world poses P_i, KITTI style (x right,
y down, z forward, so the ground plane is x–z). A relative pose `T_rel[i] = inv(P_i) @ P_{i+1}` is
the pose of frame i+1 in frame i's camera, i.e. `T_t2s` with target t = i+1 and source s = i: it
maps points of frame i+1 into frame i. KITTI files are read and written by
:func:`masksfm.data.layout.read_poses` / :func:`~masksfm.data.layout.write_poses`; this module adds
the TUM format (`t x y z qx qy qz qw`, the quaternion scalar-last).

Everything here is numpy float64; heavy imports (scipy, matplotlib) stay inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from masksfm.errors import MasksfmError


def _check_poses(name: str, poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"{name} must have shape (N, 4, 4), got {poses.shape}")
    return poses


# --- chaining ------------------------------------------------------------------------------------


def chain_relative_poses(T_rel: np.ndarray) -> np.ndarray:
    """Camera-to-world poses from the relative poses between consecutive frames.

    `P_0 = I` and `P_{i+1} = P_i @ T_rel[i]`, the inverse of :func:`relative_poses`. A pose net that
    predicts `T_t2s` for target t and source t−1 gives `T_rel[t−1]` directly; one that predicts
    target t, source t+1 gives `inv(T_rel[t])`.

    Args:
        T_rel: (N-1, 4, 4) with `T_rel[i] = inv(P_i) @ P_{i+1}` (frame i+1 to frame i), metres.
    Returns:
        (N, 4, 4) camera-to-world poses, the first the identity.
    """
    T_rel = _check_poses("T_rel", T_rel)
    poses = np.empty((len(T_rel) + 1, 4, 4))
    poses[0] = np.eye(4)
    # A sequential scan: each pose depends on the previous one.
    for i, T in enumerate(T_rel):
        poses[i + 1] = poses[i] @ T
    return poses


def relative_poses(poses: np.ndarray) -> np.ndarray:
    """Relative poses between consecutive frames, `T_rel[i] = inv(P_i) @ P_{i+1}`.

    Args:
        poses: (N, 4, 4) camera-to-world poses.
    Returns:
        (N-1, 4, 4) relative poses (frame i+1 to frame i).
    """
    poses = _check_poses("poses", poses)
    return np.linalg.inv(poses[:-1]) @ poses[1:]


# --- Sim(3) alignment ----------------------------------------------------------------------------


def umeyama_alignment(source_xyz: np.ndarray, target_xyz: np.ndarray, with_scale: bool = True):
    """Least-squares similarity `target ≈ s·R·source + t` (Umeyama, PAMI 1991).

    The same estimate as `evo.core.geometry.umeyama_alignment`, without its refusal of collinear
    points: a straight drive, or a prediction at constant velocity, has a rank-1 covariance, and the
    alignment is then still optimal (only the roll about the line is arbitrary, which moves no
    point). With all source points equal, the scale is 0 (every point goes to the target centroid).

    Args:
        source_xyz: (N, 3) points to move (the prediction), any unit.
        target_xyz: (N, 3) reference points (ground truth), metres.
        with_scale: estimate s (Sim(3), 7 DoF); otherwise s = 1 (SE(3), 6 DoF).
    Returns:
        R: (3, 3) rotation; t: (3,) translation, metres; s: scale (float).
    """
    x = np.asarray(source_xyz, dtype=np.float64)
    y = np.asarray(target_xyz, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f"source_xyz and target_xyz must both have shape (N, 3), got {x.shape} and {y.shape}")
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    var_x = np.mean(np.sum(xc**2, axis=1))
    U, d, Vt = np.linalg.svd(yc.T @ xc / len(x))
    S = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2] = -1.0  # a rotation, never a reflection
    R = (U * S) @ Vt
    if with_scale:
        s = float(np.sum(d * S) / var_x) if var_x > 0 else 0.0
    else:
        s = 1.0
    t = mean_y - s * R @ mean_x
    return R, t, s


def align_trajectory(poses: np.ndarray, reference: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """Move a trajectory onto a reference by the Umeyama similarity of their positions.

    Rotations stay rotations: the scale goes into the positions only (as evo's `align` does).

    Args:
        poses: (N, 4, 4) camera-to-world poses to align (the prediction).
        reference: (N, 4, 4) camera-to-world reference poses (ground truth), metres.
        with_scale: Sim(3) (7 DoF) if True, SE(3) (6 DoF) otherwise.
    Returns:
        (N, 4, 4) aligned poses: rotation `R·R_i`, position `s·R·t_i + t`.
    """
    poses = _check_poses("poses", poses)
    reference = _check_poses("reference", reference)
    if len(poses) != len(reference):
        raise ValueError(f"poses and reference must have the same length, got {len(poses)} and {len(reference)}")
    R, t, s = umeyama_alignment(poses[:, :3, 3], reference[:, :3, 3], with_scale)
    aligned = poses.copy()
    aligned[:, :3, :3] = R @ poses[:, :3, :3]
    aligned[:, :3, 3] = s * poses[:, :3, 3] @ R.T + t
    return aligned


# --- TUM files -----------------------------------------------------------------------------------


def write_tum(path: Path, poses: np.ndarray, timestamps: np.ndarray | None = None) -> None:
    """Write camera-to-world poses as a TUM trajectory, one line `t x y z qx qy qz qw` per frame.

    Args:
        path: the text file to write.
        poses: (N, 4, 4) camera-to-world poses, metres (or the model's scale).
        timestamps: (N,) seconds; by default the frame index 0, 1, 2, ...
    """
    from scipy.spatial.transform import Rotation

    poses = _check_poses("poses", poses)
    stamps = np.arange(len(poses), dtype=np.float64) if timestamps is None else np.asarray(timestamps, np.float64)
    if stamps.shape != (len(poses),):
        raise ValueError(f"timestamps must have shape ({len(poses)},), got {stamps.shape}")
    quat = Rotation.from_matrix(poses[:, :3, :3]).as_quat()  # x y z w
    quat *= np.where(quat[:, 3:] < 0, -1.0, 1.0)  # q and -q are one rotation: print qw >= 0
    rows = np.column_stack([stamps, poses[:, :3, 3], quat])
    np.savetxt(path, rows, fmt=["%.6f"] + ["%.9e"] * 7)


def read_tum(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory (`t x y z qx qy qz qw` per line, `#` comments).

    Returns:
        poses: (N, 4, 4) camera-to-world poses (quaternions normalized);
        timestamps: (N,) as written.
    """
    from scipy.spatial.transform import Rotation

    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments="#")
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing trajectory file") from None
    except (ValueError, OSError) as error:
        raise MasksfmError(f"{path}: not a TUM trajectory ({error})") from None
    if rows.size == 0 or rows.shape[1] != 8:
        got = rows.shape[1] if rows.size else 0
        raise MasksfmError(f"{path}: expected 8 numbers per line (t x y z qx qy qz qw), got {got}")
    norms = np.linalg.norm(rows[:, 4:], axis=1)
    if not np.all(np.isfinite(rows)) or np.any(norms < 1e-9):
        raise MasksfmError(f"{path}: non-finite numbers or zero quaternions")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :3] = Rotation.from_quat(rows[:, 4:]).as_matrix()
    poses[:, :3, 3] = rows[:, 1:4]
    return poses, rows[:, 0].copy()


# --- plots ---------------------------------------------------------------------------------------


def plot_trajectories(
    path_png: Path,
    gt_poses: np.ndarray | None,
    pred_poses: np.ndarray,
    title: str = "trajectory (top view)",
) -> None:
    """Draw the top view (x right, z forward) of a predicted trajectory, and of the ground truth.

    With ground truth the prediction is first Sim(3)-aligned to it (a monocular prediction has no
    metric scale), so both are drawn in metres; without, the prediction is drawn as it is.

    Args:
        path_png: the PNG file to write.
        gt_poses: (N, 4, 4) ground-truth camera-to-world poses, metres, or None.
        pred_poses: (N, 4, 4) predicted camera-to-world poses.
        title: the figure's title.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    pred_poses = _check_poses("pred_poses", pred_poses)
    figure = Figure(figsize=(6, 6), dpi=100)
    axes = figure.add_subplot()
    if gt_poses is not None:
        gt_poses = _check_poses("gt_poses", gt_poses)
        pred_poses = align_trajectory(pred_poses, gt_poses)
        axes.plot(gt_poses[:, 0, 3], gt_poses[:, 2, 3], color="black", lw=1.5, label="ground truth")
    label = "prediction (Sim(3)-aligned)" if gt_poses is not None else "prediction"
    axes.plot(pred_poses[:, 0, 3], pred_poses[:, 2, 3], color="tab:red", lw=1.5, label=label)
    axes.plot(pred_poses[0, 0, 3], pred_poses[0, 2, 3], "o", color="tab:red", ms=5)
    if gt_poses is not None:
        axes.plot(gt_poses[0, 0, 3], gt_poses[0, 2, 3], "o", color="black", ms=5, label="start")
    unit = " (m)" if gt_poses is not None else ""
    axes.set_xlabel("x" + unit)
    axes.set_ylabel("z" + unit)
    axes.set_aspect("equal", adjustable="datalim")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path_png)
