"""The sequence-folder layout (DESIGN §5): what `synth` and `prepare` write and `train` / `eval` read.

```
DATA/dataset.json           {"kind": "synthetic" | "kitti-raw" | "kitti-odometry" | "video", ...}
DATA/train.txt val.txt test.txt
DATA/<scene>/000000.png ... frames; cam.txt; poses.txt; depth/*.npy; visibility/*.npy; moving/*.png
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from masksfm.errors import MasksfmError


def read_cam(path: Path) -> np.ndarray:
    """Read `cam.txt`: a 3x3 intrinsics matrix, 3 lines of 3 numbers, positive focal lengths.

    Returns:
        (3, 3) float64, pixels of the frames as stored.
    """
    path = Path(path)
    try:
        K = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing intrinsics file") from None
    except (ValueError, OSError) as error:
        raise MasksfmError(f"{path}: not a 3x3 matrix of numbers ({error})") from None
    if K.shape != (3, 3):
        raise MasksfmError(f"{path}: expected a 3x3 intrinsics matrix, got shape {K.shape[0]}x{K.shape[1]}")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MasksfmError(f"{path}: focal lengths must be positive and finite (fx={K[0, 0]}, fy={K[1, 1]})")
    return K


def write_cam(path: Path, K: np.ndarray) -> None:
    """Write a 3x3 intrinsics matrix as `cam.txt`."""
    np.savetxt(path, np.asarray(K, dtype=np.float64).reshape(3, 3), fmt="%.10g")


def read_poses(path: Path) -> np.ndarray:
    """Read a KITTI-style trajectory: one line per frame, 12 numbers, the 3x4 camera-to-world matrix.

    Returns:
        (N, 4, 4) float64 camera-to-world poses.
    """
    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing poses file") from None
    except (ValueError, OSError) as error:
        raise MasksfmError(f"{path}: not a KITTI pose file ({error})") from None
    if rows.size == 0 or rows.shape[1] != 12:
        raise MasksfmError(f"{path}: expected 12 numbers per line (a 3x4 matrix), got {rows.shape[1] if rows.size else 0}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :4] = rows.reshape(-1, 3, 4)
    return poses


def write_poses(path: Path, poses: np.ndarray) -> None:
    """Write (N, 4, 4) camera-to-world poses as a KITTI-style trajectory (12 numbers per line)."""
    poses = np.asarray(poses, dtype=np.float64)
    np.savetxt(path, poses[:, :3, :4].reshape(len(poses), 12), fmt="%.9e")
