"""The files `masksfm predict` writes: 16-bit depth PNGs (KITTI's convention) and coloured point
clouds (binary PLY), and the points of a depth map (docs/design.md §1, "What predict writes")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from masksfm.errors import MasksfmError
from masksfm.geometry import backproject

# KITTI's depth PNG convention: uint16 = metres × 256, 0 = no depth; 65535 / 256 ≈ 256 m is the largest.
PNG16_SCALE = 256.0
PNG16_MAX = 65535


def write_depth_png16(path: Path, depth: np.ndarray) -> None:
    """Write depth as a 16-bit PNG, KITTI's convention: round(depth × 256), 0 = invalid, clipped at 65535.

    Args:
        path: the PNG file (its folder is created).
        depth: (H, W) depth, metres or model units; non-finite or ≤ 0 = invalid.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    # A positive depth under 1/512 would round to 0 and read back as "no depth": keep it at 1/256.
    value = np.clip(np.round(np.where(valid, depth, 0.0) * PNG16_SCALE), 1, PNG16_MAX)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(valid, value, 0).astype(np.uint16)).save(path)


def read_depth_png16(path: Path) -> np.ndarray:
    """Read a 16-bit depth PNG written by :func:`write_depth_png16`: (H, W) float32 depth, 0 = invalid."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            value = np.array(image)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing depth PNG") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise MasksfmError(f"{path}: unreadable depth PNG ({error})") from None
    if value.ndim != 2 or value.dtype != np.uint16:
        raise MasksfmError(f"{path}: expected a 16-bit single-channel PNG, got {value.dtype} {value.shape}")
    return (value / PNG16_SCALE).astype(np.float32)


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Write a coloured point cloud as binary little-endian PLY: `x y z` float32, `red green blue` uchar.

    Args:
        path: the .ply file (its folder is created).
        points: (N, 3) coordinates, metres or model units.
        colors: (N, 3) uint8 RGB.
    """
    points, colors = np.asarray(points), np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be (N, 3), got {points.shape} and {colors.shape}")
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.astype(np.float32).T
    vertex["red"], vertex["green"], vertex["blue"] = colors.astype(np.uint8).T
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by masksfm predict\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(vertex.tobytes())


def depth_to_points(depth: np.ndarray, K: np.ndarray, rgb: np.ndarray,
                    stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The valid pixels of a depth map as coloured camera-frame points, in row-major pixel order.

    Args:
        depth: (H, W) z-depth, metres or model units; non-finite or ≤ 0 = invalid (skipped).
        K: (3, 3) intrinsics of this H x W image, pixels.
        rgb: (H, W, 3) uint8 colours.
        stride: keep every `stride`-th pixel in each direction.
    Returns:
        points: (N, 3) float32 camera-frame points (x right, y down, z forward); colors: (N, 3) uint8.
    """
    depth64 = torch.from_numpy(np.asarray(depth, dtype=np.float64))[None, None]
    points = backproject(depth64, torch.from_numpy(np.asarray(K, dtype=np.float64))[None])[0]
    points = points.permute(1, 2, 0).numpy()[::stride, ::stride]
    depth = np.asarray(depth)[::stride, ::stride]
    valid = np.isfinite(depth) & (depth > 0)
    return points[valid].astype(np.float32), np.asarray(rgb)[::stride, ::stride][valid]
