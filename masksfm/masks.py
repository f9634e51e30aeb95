"""The paper's geometric masks: edge, overlap, blank, and repeated masking (docs/design.md §4).

For a target frame t and a source frame s with depths D_t, D_s, relative pose T_t2s and shared
intrinsics K, every target pixel is projected into the source and every source pixel into the
target. From those two projections:

- **edge**: the pixel lands inside the other image and in front of its camera;
- **overlap**: among the pixels landing on the same pixel of the other image, the one(s) whose
  point is nearest to the other camera; the rest are occluded there;
- **blank**: the pixel is covered by at least one pixel of the other image projected back (each
  projected pixel covers the four pixels around where it lands);
- **combined** = edge · overlap · blank; repeated masking recomputes blank from the other frame's
  pixels that are still kept, k more rounds, both frames at once.

Everything is computed without gradient and vectorized with scatter operations over the flattened
batch, so it runs the same on CPU and CUDA with no Python loop over samples, pixels or cells.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from masksfm.geometry import backproject, invert_pose, project, transform_points

# A projected pixel counts as inside the other image within this margin (pixels), so that an
# identity pose does not drop the border pixels to round-off.
EDGE_EPS = 1e-3
# A point must be at least this far in front of the other camera (metres).
MIN_Z = 1e-3
# Distances equal within this relative tolerance are ties: all of them are kept.
TIE_RTOL = 1e-6


class Masks(NamedTuple):
    """The masks of one frame, each a (B, 1, H, W) float tensor of 0/1 in the depth's dtype."""

    edge: torch.Tensor
    overlap: torch.Tensor
    blank: torch.Tensor
    combined: torch.Tensor


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: depth is finite and positive. Invalid pixels are in no mask."""
    return torch.isfinite(depth) & (depth > 0)


def project_into_other(depth: torch.Tensor, T: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project every pixel of one frame into the other frame.

    Args:
        depth: (B, 1, H, W) z-depth, metres; invalid values are replaced by 1 (callers mask them).
        T: (B, 4, 4) transform from this frame's camera to the other's.
        K: (B, 3, 3) intrinsics.
    Returns:
        pixels: (B, 2, H, W) landing point in the other image, pixels;
        points: (B, 3, H, W) the point in the other camera's frame, metres.
    """
    safe = torch.where(valid_depth(depth), depth, torch.ones_like(depth))
    points = transform_points(T, backproject(safe, K))
    pixels, _ = project(points, K)
    return pixels, points


def edge_mask(pixels: torch.Tensor, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """M_edg: the pixel lands inside the other image and in front of its camera.

    Inside means `-ε <= x <= W-1+ε` and `-ε <= y <= H-1+ε` with ε = 1e-3 px, and z > 1e-3 m.

    Args:
        pixels: (B, 2, H, W) landing points in the other image (same size as this one).
        points: (B, 3, H, W) the points in the other camera's frame.
        valid: (B, 1, H, W) bool, this frame's valid depth.
    Returns:
        (B, 1, H, W) bool.
    """
    h, w = pixels.shape[-2:]
    x, y = pixels[:, 0:1], pixels[:, 1:2]
    inside = (x >= -EDGE_EPS) & (x <= w - 1 + EDGE_EPS) & (y >= -EDGE_EPS) & (y <= h - 1 + EDGE_EPS)
    return inside & (points[:, 2:3] > MIN_Z) & valid


def _flat_index(cells_x: torch.Tensor, cells_y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Index of pixel (x, y) of sample b in the flattened (B·H·W) batch; shapes (B, 1, H, W)."""
    batch = torch.arange(cells_x.shape[0], device=cells_x.device).view(-1, 1, 1, 1)
    return (batch * height + cells_y) * width + cells_x


def overlap_mask(pixels: torch.Tensor, points: torch.Tensor, edge: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """M_ove: keep, among the pixels landing on the same pixel of the other image, the nearest.

    The cell of a landing point is its nearest pixel, `floor(p + 0.5)` (the authors use `floor(p)`,
    which shifts every cell by half a pixel and lets round-off split an identity warp). Distance is
    Euclidean, ‖X‖ in the other camera's frame. A pixel is kept when its distance is at most
    (1 + tolerance) times its cell's minimum (ties within 1e-6 relative are always kept).
    tolerance = 0 is the paper; a small tolerance keeps neighbours of one surface that contract into
    one cell when the other frame is farther away (docs/design.md §4).

    Args:
        pixels: (B, 2, H, W) landing points in the other image.
        points: (B, 3, H, W) the points in the other camera's frame, metres.
        edge: (B, 1, H, W) bool, the edge mask (only in-bounds pixels compete; 0 outside it).
        tolerance: relative distance tolerance τ >= 0.
    Returns:
        (B, 1, H, W) bool.
    """
    b, _, h, w = pixels.shape
    cells = torch.floor(pixels + 0.5).long()
    cell_x = cells[:, 0:1].clamp(0, w - 1)
    cell_y = cells[:, 1:2].clamp(0, h - 1)
    # Pixels outside the edge mask scatter into a spare slot at the end, so no boolean indexing
    # (and no host-device synchronisation) is needed.
    spare = b * h * w
    index = torch.where(edge, _flat_index(cell_x, cell_y, h, w), spare).flatten()
    # Squared distances order the same way and are far cheaper on CPU than Tensor.norm(dim=1).
    distance_sq = (points * points).sum(dim=1, keepdim=True)
    nearest_sq = torch.full((spare + 1,), float("inf"), device=pixels.device, dtype=distance_sq.dtype)
    nearest_sq.scatter_reduce_(0, index, distance_sq.flatten(), reduce="amin", include_self=True)
    factor = ((1.0 + tolerance) * (1.0 + TIE_RTOL)) ** 2
    return edge & (distance_sq <= nearest_sq[index].view(b, 1, h, w) * factor)


def blank_mask(pixels_from_other: torch.Tensor, marks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """M_bla: 1 where at least one pixel of the other frame lands nearby; 0 = blank.

    Every marking pixel of the other frame covers the four pixels around its landing point,
    `floor(p) + {(0,0), (1,0), (0,1), (1,1)}`, those inside the image (never wrapping around, which
    the authors' negative indices do).

    Args:
        pixels_from_other: (B, 2, H, W) where each pixel of the *other* frame lands in this one.
        marks: (B, 1, H, W) bool, which pixels of the other frame mark (in-bounds, or kept).
        valid: (B, 1, H, W) bool, this frame's valid depth.
    Returns:
        (B, 1, H, W) bool, this frame's blank mask (1 = covered).
    """
    b, _, h, w = pixels_from_other.shape
    base = torch.floor(pixels_from_other).long()
    x0, y0 = base[:, 0:1], base[:, 1:2]
    # Whether column x0 / x0+1 and row y0 / y0+1 lie inside the image; corners combine them.
    x_in = ((x0 >= 0) & (x0 < w), (x0 >= -1) & (x0 < w - 1))
    y_in = ((y0 >= 0) & (y0 < h), (y0 >= -1) & (y0 < h - 1))
    corner = _flat_index(x0.clamp(-1, w - 1), y0.clamp(-1, h - 1), h, w)
    spare = b * h * w
    covered = torch.zeros(spare + 1, dtype=torch.bool, device=pixels_from_other.device)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        inside = marks & x_in[dx] & y_in[dy]
        covered[torch.where(inside, corner + (dy * w + dx), spare).flatten()] = True
    return covered[:spare].view(b, 1, h, w) & valid


def repeated_masking(
    edge_t: torch.Tensor,
    overlap_t: torch.Tensor,
    edge_s: torch.Tensor,
    overlap_s: torch.Tensor,
    pixels_t2s: torch.Tensor,
    pixels_s2t: torch.Tensor,
    valid_t: torch.Tensor,
    valid_s: torch.Tensor,
    repeats: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blank and combined masks of both frames, with `repeats` extra rounds of repeated masking.

    Round 0: each frame's blank mask is marked by the other frame's in-bounds pixels (its edge
    mask). Each further round recomputes each frame's blank mask from the other frame's pixels whose
    *current* combined mask is 1, then both combined masks; both frames update at once from the
    previous round (the authors use 3 extra rounds).

    Args:
        edge_t, overlap_t, edge_s, overlap_s: (B, 1, H, W) bool masks of each frame.
        pixels_t2s: (B, 2, H, W) target pixels landing in the source; pixels_s2t the reverse.
        valid_t, valid_s: (B, 1, H, W) bool valid depth.
        repeats: number of extra rounds k >= 0.
    Returns:
        (blank_t, blank_s, combined_t, combined_s), each (B, 1, H, W) bool.
    """
    marks_t, marks_s = edge_t, edge_s
    for _ in range(repeats + 1):
        blank_t = blank_mask(pixels_s2t, marks_s, valid_t)
        blank_s = blank_mask(pixels_t2s, marks_t, valid_s)
        marks_t = edge_t & overlap_t & blank_t
        marks_s = edge_s & overlap_s & blank_s
    return blank_t, blank_s, marks_t, marks_s


@torch.no_grad()
def compute_masks(
    depth_t: torch.Tensor,
    depth_s: torch.Tensor,
    T_t2s: torch.Tensor,
    K: torch.Tensor,
    repeats: int = 0,
    overlap_tolerance: float = 0.0,
) -> tuple[Masks, Masks]:
    """The edge, overlap, blank and combined masks of a target and a source frame (docs/design.md §4).

    Args:
        depth_t: (B, 1, H, W) target z-depth, metres; <= 0 or non-finite = invalid.
        depth_s: (B, 1, H, W) source z-depth, metres.
        T_t2s: (B, 4, 4) transform from the target camera frame to the source camera frame.
        K: (B, 3, 3) intrinsics shared by both frames, pixels.
        repeats: extra rounds of repeated masking (0 = none; the authors use 3).
        overlap_tolerance: τ, relative distance tolerance of the overlap mask (0 = the paper).
    Returns:
        (masks_t, masks_s): a `Masks` for each frame, (B, 1, H, W) floats of 0/1 in depth's dtype.
    """
    if depth_t.shape != depth_s.shape or depth_t.dim() != 4 or depth_t.shape[1] != 1:
        raise ValueError(f"depth_t and depth_s must both be (B, 1, H, W), got {tuple(depth_t.shape)} and {tuple(depth_s.shape)}")
    if repeats < 0 or overlap_tolerance < 0:
        raise ValueError(f"repeats and overlap_tolerance must be >= 0, got {repeats} and {overlap_tolerance}")
    T_t2s = T_t2s.to(depth_t.dtype)
    K = K.to(depth_t.dtype)
    valid_t, valid_s = valid_depth(depth_t), valid_depth(depth_s)
    pixels_t2s, points_t2s = project_into_other(depth_t, T_t2s, K)
    pixels_s2t, points_s2t = project_into_other(depth_s, invert_pose(T_t2s), K)

    edge_t = edge_mask(pixels_t2s, points_t2s, valid_t)
    edge_s = edge_mask(pixels_s2t, points_s2t, valid_s)
    overlap_t = overlap_mask(pixels_t2s, points_t2s, edge_t, overlap_tolerance)
    overlap_s = overlap_mask(pixels_s2t, points_s2t, edge_s, overlap_tolerance)
    blank_t, blank_s, combined_t, combined_s = repeated_masking(
        edge_t, overlap_t, edge_s, overlap_s, pixels_t2s, pixels_s2t, valid_t, valid_s, repeats
    )

    dtype = depth_t.dtype
    masks_t = Masks(edge_t.to(dtype), overlap_t.to(dtype), blank_t.to(dtype), combined_t.to(dtype))
    masks_s = Masks(edge_s.to(dtype), overlap_s.to(dtype), blank_s.to(dtype), combined_s.to(dtype))
    return masks_t, masks_s
