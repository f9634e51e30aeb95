"""Pictures for people: colourised disparity and mask overlays (TensorBoard, predict, the demo report)."""

from __future__ import annotations

import numpy as np


def colorize_disparity(disp: np.ndarray, vmax: float | None = None, cmap: str = "magma") -> np.ndarray:
    """Disparity (H, W) -> uint8 RGB (H, W, 3), near = bright.

    The range is [min, 95th percentile] as monodepth2 shows it, so a few very near pixels do not
    wash out the rest; non-finite or non-positive values are black.
    """
    import matplotlib

    disp = np.asarray(disp, dtype=np.float64)
    valid = np.isfinite(disp) & (disp > 0)
    out = np.zeros(disp.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return out
    lo = disp[valid].min()
    hi = vmax if vmax is not None else np.percentile(disp[valid], 95)
    scaled = np.clip((disp - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = matplotlib.colormaps[cmap](scaled)[..., :3]
    out[valid] = (255 * rgb[valid]).astype(np.uint8)
    return out


def overlay_mask(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.55) -> np.ndarray:
    """Tint the pixels where mask == 0 (dropped) over an RGB image; (H, W, 3) uint8 -> same."""
    out = image.astype(np.float32).copy()
    dropped = np.asarray(mask) < 0.5
    out[dropped] = (1 - alpha) * out[dropped] + alpha * np.asarray(color, dtype=np.float32)
    return out.round().clip(0, 255).astype(np.uint8)
