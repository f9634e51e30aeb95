"""Camera model and SE(3): intrinsics updates, backproject, transform, project, pose vectors, warping.

Conventions (docs/design.md §2): camera x right, y down, z forward; depth is z-depth in metres; pixel
(u, v) has its centre at integer coordinates, u in [0, W-1]; `K` is 3x3 in those units;
`T_t2s` (4x4) maps points from the target camera frame to the source camera frame.

Every function here is pure, batched, differentiable and device-agnostic.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from kornia.geometry.transform import warp_perspective

# Points closer than this (metres, along z) are treated as on or behind the camera when projecting;
# SfMLearner clamps the same way so that the division never blows up.
MIN_PROJECTION_Z = 1e-3


def _check(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    """Raise a ValueError if `tensor` does not match `shape` (None = any size)."""
    if tensor.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(tensor.shape)}")


def _copy(K):
    return K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)


# --- intrinsics updates (exact; docs/design.md §2) -------------------------------------------------------


def scale_intrinsics(K, sx: float, sy: float):
    """Intrinsics of an image resized by factors (sx, sy) = (W'/W, H'/H).

    A half-pixel-centre resampler (PIL, cv2, area averaging) maps x to sx·(x + 0.5) − 0.5, so
    `fx' = sx·fx`, `cx' = sx·(cx + 0.5) − 0.5` (and likewise in y).

    Args:
        K: (..., 3, 3) tensor or array, pixels.
        sx, sy: scale factors.
    Returns:
        The updated (..., 3, 3) intrinsics, same type as `K`.
    """
    out = _copy(K)
    out[..., 0, :] = sx * K[..., 0, :]
    out[..., 1, :] = sy * K[..., 1, :]
    out[..., 0, 2] += 0.5 * sx - 0.5
    out[..., 1, 2] += 0.5 * sy - 0.5
    return out


def flip_intrinsics(K, width: int):
    """Intrinsics after a horizontal flip of an image `width` pixels wide: `cx' = W − 1 − cx`."""
    out = _copy(K)
    out[..., 0, 2] = width - 1 - K[..., 0, 2]
    return out


def crop_intrinsics(K, x0: float, y0: float):
    """Intrinsics after cropping the image at top-left corner (x0, y0): `cx' = cx − x0`, `cy' = cy − y0`."""
    out = _copy(K)
    out[..., 0, 2] = K[..., 0, 2] - x0
    out[..., 1, 2] = K[..., 1, 2] - y0
    return out


# --- points and pixels ---------------------------------------------------------------------------


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Homogeneous pixel coordinates [u, v, 1] of every pixel centre, shape (1, 3, H, W)."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([u, v, torch.ones_like(u)])[None]


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Lift every pixel to a 3-D point in its camera frame: X = D(p) · K⁻¹ [u, v, 1].

    Args:
        depth: (B, 1, H, W) z-depth, metres.
        K: (B, 3, 3) intrinsics, pixels.
    Returns:
        (B, 3, H, W) camera-frame points, metres.
    """
    _check("depth", depth, (None, 1, None, None))
    _check("K", K, (depth.shape[0], 3, 3))
    b, _, h, w = depth.shape
    rays = torch.linalg.inv(K) @ pixel_grid(h, w, depth.device, depth.dtype).reshape(1, 3, h * w)
    return rays.reshape(b, 3, h, w) * depth


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply rigid transforms: X' = R X + t.

    Args:
        T: (B, 4, 4) transforms.
        points: (B, 3, H, W) points, metres.
    Returns:
        (B, 3, H, W) transformed points.
    """
    _check("T", T, (points.shape[0], 4, 4))
    b, _, h, w = points.shape
    flat = T[:, :3, :3] @ points.reshape(b, 3, h * w) + T[:, :3, 3:]
    return flat.reshape(b, 3, h, w)


def project(points: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points to pixels: p = π(K X).

    Args:
        points: (B, 3, H, W) camera-frame points, metres.
        K: (B, 3, 3) intrinsics.
    Returns:
        pixels: (B, 2, H, W) (u, v), computed with z clamped to at least 1e-3 m so that points on
            or behind the camera land far away instead of dividing by zero;
        z: (B, 1, H, W) the unclamped depth of each point in this camera.
    """
    _check("points", points, (None, 3, None, None))
    _check("K", K, (points.shape[0], 3, 3))
    b, _, h, w = points.shape
    cam = (K @ points.reshape(b, 3, h * w)).reshape(b, 3, h, w)
    z = points[:, 2:3]
    pixels = cam[:, :2] / cam[:, 2:3].clamp(min=MIN_PROJECTION_Z)
    return pixels, z


def reproject(depth_t: torch.Tensor, T_t2s: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where every target pixel lands in the source: `project(transform_points(T, backproject(D, K)), K)`.

    K (R K⁻¹ p D + t) = (K R K⁻¹ p) D + K t: one 3x3 matrix per pair applied to the pixel grid, then
    the depth and one offset, instead of three matrix products over the image (the training step's
    warp, forward and backward; `bench/train_step.py --profile`). K's last row must be (0, 0, 1), as
    intrinsics' is, so that the third row is the point's depth in the source camera.

    Args:
        depth_t: (B, 1, H, W) target z-depth, metres.
        T_t2s: (B, 4, 4) target-to-source transforms.
        K: (B, 3, 3) intrinsics shared by both frames.
    Returns:
        pixels: (B, 2, H, W) (u, v) in the source, with z clamped as `project` does;
        z: (B, 1, H, W) the unclamped depth of each point in the source camera, metres.
    """
    _check("depth_t", depth_t, (None, 1, None, None))
    _check("T_t2s", T_t2s, (depth_t.shape[0], 4, 4))
    _check("K", K, (depth_t.shape[0], 3, 3))
    b, _, h, w = depth_t.shape
    rotation = K @ T_t2s[:, :3, :3] @ torch.linalg.inv(K)
    rays = (rotation @ pixel_grid(h, w, depth_t.device, depth_t.dtype).reshape(1, 3, h * w)).reshape(b, 3, h, w)
    cam = rays * depth_t + (K @ T_t2s[:, :3, 3:]).reshape(b, 3, 1, 1)
    z = cam[:, 2:3]
    return cam[:, :2] / z.clamp(min=MIN_PROJECTION_Z), z


def pixels_to_grid(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates (B, 2, H, W) to a `grid_sample` grid (B, H, W, 2) for align_corners=True.

    x_norm = 2u/(W−1) − 1, y_norm = 2v/(H−1) − 1 (docs/design.md §2).
    """
    h, w = pixels.shape[-2:]
    scale = pixels.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)]).view(1, 2, 1, 1)
    return (pixels * scale - 1.0).permute(0, 2, 3, 1)


def inverse_warp(
    img_s: torch.Tensor,
    depth_t: torch.Tensor,
    T_t2s: torch.Tensor,
    K: torch.Tensor,
    padding_mode: str = "zeros",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct the target view by sampling the source image where each target pixel lands.

    Args:
        img_s: (B, C, H, W) source image.
        depth_t: (B, 1, H, W) target depth, metres.
        T_t2s: (B, 4, 4) target-to-source transform.
        K: (B, 3, 3) intrinsics shared by both frames.
        padding_mode: `grid_sample` padding ("zeros", "border").
    Returns:
        warped: (B, C, H, W) the source resampled into the target view (bilinear);
        pixels: (B, 2, H, W) where each target pixel projects in the source, pixels.
    """
    _check("img_s", img_s, (depth_t.shape[0], None, depth_t.shape[2], depth_t.shape[3]))
    pixels, _ = reproject(depth_t, T_t2s, K)
    warped = F.grid_sample(img_s, pixels_to_grid(pixels), mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return warped, pixels


# --- poses -------------------------------------------------------------------------------------


def pose_vec_to_mat(vec: torch.Tensor) -> torch.Tensor:
    """6-vectors [tx, ty, tz, rx, ry, rz] to 4x4 transforms.

    The rotation is an axis-angle vector (direction = axis, norm = angle in radians), which has no
    gimbal lock and no order convention to get wrong; kornia's Rodrigues formula handles the
    small-angle limit.

    Args:
        vec: (B, 6), translation in metres then axis-angle in radians.
    Returns:
        (B, 4, 4) transforms.
    """
    _check("vec", vec, (None, 6))
    T = torch.zeros(vec.shape[0], 4, 4, device=vec.device, dtype=vec.dtype)
    T[:, :3, :3] = axis_angle_to_rotation_matrix(vec[:, 3:])
    T[:, :3, 3] = vec[:, :3]
    T[:, 3, 3] = 1.0
    return T


def mirror_pose_vec(vec: torch.Tensor) -> torch.Tensor:
    """The 6-vector of a motion seen in horizontally mirrored images: S·T·S with S = diag(−1, 1, 1).

    Mirroring negates x, so the translation becomes (−tx, ty, tz) and the axis-angle, a pseudovector,
    (rx, −ry, −rz): a turn to the left becomes a turn to the right. Its own inverse.

    Args:
        vec: (..., 6) `[tx, ty, tz, rx, ry, rz]`, translation then axis-angle (radians).
    Returns:
        (..., 6) the mirrored motion's parameters (exact).
    """
    return vec * vec.new_tensor([-1.0, 1.0, 1.0, 1.0, -1.0, -1.0])


def mat_to_pose_vec(T: torch.Tensor) -> torch.Tensor:
    """4x4 transforms (B, 4, 4) to 6-vectors [tx, ty, tz, rx, ry, rz] (axis-angle), (B, 6)."""
    _check("T", T, (None, 4, 4))
    return torch.cat([T[:, :3, 3], rotation_matrix_to_axis_angle(T[:, :3, :3].contiguous())], dim=1)


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4), using Rᵀ instead of a general matrix inverse."""
    R_inv = T[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_inv
    out[..., :3, 3:] = -R_inv @ T[..., :3, 3:]
    out[..., 3, 3] = 1.0
    return out


def snippet_transforms(T_t2s: torch.Tensor) -> torch.Tensor:
    """A snippet's T_{t→s} for its sources, with the target's own (the identity) put in its place.

    Args:
        T_t2s: (B, L − 1, 4, 4) for the sources in snippet order (the target, frame L // 2, skipped).
    Returns:
        (B, L, 4, 4) T_{t→k} for every frame k of the snippet.
    """
    centre = (T_t2s.shape[1] + 1) // 2
    identity = torch.eye(4, dtype=T_t2s.dtype, device=T_t2s.device).expand(T_t2s.shape[0], 1, 4, 4)
    return torch.cat([T_t2s[:, :centre], identity, T_t2s[:, centre:]], dim=1)


def vehicle_chord(R: torch.Tensor) -> torch.Tensor:
    """Where a car's camera at the target sees the source's camera centre, in the source's frame.

    A camera fixed to a car and looking ahead travels in its horizontal plane along a circular arc
    tangent to its optical axis (non-holonomic planar motion; the model of Scaramuzza's 1-point
    visual odometry), so the source's centre lies on the chord from the target at half the heading
    change: direction d = (sin ψ/2, 0, cos ψ/2) in the target's frame, ψ the yaw of the source's
    optical axis there (Rᵀ e_z). On that path the translation of T_t2s is a multiple of u = R d.

    Args:
        R: (B, 3, 3) rotations of T_t2s.
    Returns:
        (B, 3) unit u = R d; ψ carries no gradient (u's gradient is R's).
    """
    _check("R", R, (None, 3, 3))
    half_turn = 0.5 * torch.atan2(R[:, 2, 0], R[:, 2, 2]).detach()
    chord = torch.stack([torch.sin(half_turn), torch.zeros_like(half_turn), torch.cos(half_turn)], dim=1)
    return (R @ chord[..., None])[..., 0]


def vehicle_travel_basis(R: torch.Tensor, vertical: bool = False) -> torch.Tensor:
    """The directions a car's camera may travel in, in the source's frame: (B, 3, k) orthonormal columns.

    k = 1: the chord u = R d of :func:`vehicle_chord` (a camera looking along the car's heading on
    level ground). With `vertical`, k = 2: also w = R e_y, the target camera's vertical axis, so the
    travel may tilt up or down from the chord (a camera pitched to the road, the suspension, a slope)
    but never sideways. u ⊥ w since d ⊥ e_y.

    Args:
        R: (B, 3, 3) rotations of T_t2s.
    Returns:
        (B, 3, k); ψ carries no gradient (the columns' gradient is R's).
    """
    u = vehicle_chord(R)
    if not vertical:
        return u[..., None]
    return torch.stack([u, R[:, :, 1]], dim=2)


def onto_vehicle_chord(T: torch.Tensor, vertical: bool = False) -> torch.Tensor:
    """Transforms T_t2s (B, 4, 4) with their translation replaced by its part along
    :func:`vehicle_travel_basis`: t' = (t·u) u (the source's centre projected onto the chord), with
    `vertical` t' = (t·u) u + (t·w) w (onto the vertical plane through the chord); rotations kept."""
    _check("T", T, (None, 4, 4))
    basis = vehicle_travel_basis(T[:, :3, :3], vertical)
    out = T.clone()
    along = (T[:, :3, 3, None] * basis).sum(1, keepdim=True)  # (B, 1, k): t's part along each column
    out[:, :3, 3] = (along * basis).sum(2)
    return out


def yaw_rotation(yaw: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) about the camera's vertical (y) axis by `yaw` (...,) radians: axis-angle (0, yaw, 0)."""
    c, s, zero, one = torch.cos(yaw), torch.sin(yaw), torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).unflatten(-1, (3, 3))


def turn_frames(frames: torch.Tensor, K: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Frames as their cameras would see them turned by `yaw` about their own vertical axes.

    A rotation about the camera centre moves every pixel by the homography K·Rᵀ·K⁻¹ whatever the
    depth, so the turn is exact but for the strip that enters at the border (replicated) and the
    bilinear resampling; the turned camera's camera-to-world pose is P · R_y(yaw), so a pose T_t2s
    to a turned source becomes R_y(yaw)ᵀ · T_t2s.

    Args:
        frames: (N, C, H, W).
        K: (N, 3, 3) their intrinsics, pixels (pixel centres at integers).
        yaw: (N,) radians.
    Returns:
        (N, C, H, W) the turned frames.
    """
    K = K.double()
    H = K @ yaw_rotation(yaw.to(K)).transpose(-1, -2) @ torch.linalg.inv(K)
    return warp_perspective(frames, H.to(frames.dtype), tuple(frames.shape[-2:]), padding_mode="border",
                            align_corners=True)


def moved_views(frames: torch.Tensor, depth: torch.Tensor, centre: torch.Tensor, yaw: torch.Tensor,
                K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames as cameras moved to `centre` and turned by `yaw` about their vertical axes would see
    them, rendered from each frame and its depth (`loss.virtual_weight`: motions the pose net must read).

    The moved camera's pose in the frame's camera is T_{v→f} = [R_y(yaw) | centre]. Each of its pixels
    samples the frame where the point at the frame's depth there, less centre_z, lands: a point's depth
    seen from a camera moved by `centre` is its depth less centre_z (the turn ignored), and a pixel sees
    about the point the frame's pixel there sees to first order in the motion (exact for a plane facing
    the camera, without the turn). Pixels the frame does not show repeat its border; depths are held at
    a tenth of the frame's at least (the points the camera passes or nearly reaches).

    Args:
        frames: (N, C, H, W).
        depth: (N, 1, H, W) their depth, in any unit.
        centre: (N, 3) the moved camera's centre in the frame's camera, in the depth's unit.
        yaw: (N,) radians.
        K: (N, 3, 3) the intrinsics, pixels.
    Returns:
        views: (N, C, H, W);
        T_f2v: (N, 4, 4) the frame's camera to the moved one's, inv(T_{v→f}): the T_t2s a pose net
            reading (frame, view) should give.
    """
    T_v2f = torch.eye(4, dtype=depth.dtype, device=depth.device).repeat(len(depth), 1, 1)
    T_v2f[:, :3, :3] = yaw_rotation(yaw.to(depth))
    T_v2f[:, :3, 3] = centre.to(depth)
    # A point the camera passes (depth below centre_z) would be behind it: held at a tenth of its depth in front.
    depth_v = torch.maximum(depth - centre[:, 2].to(depth).view(-1, 1, 1, 1), 0.1 * depth)
    views, _ = inverse_warp(frames, depth_v, T_v2f, K.to(depth), padding_mode="border")
    return views, invert_pose(T_v2f)


def relative_pose(cam_to_world_t, cam_to_world_s):
    """T_t2s from two camera-to-world poses (KITTI trajectory style): inv(P_s) @ P_t.

    Works on (..., 4, 4) tensors or numpy arrays.
    """
    if isinstance(cam_to_world_t, torch.Tensor):
        return invert_pose(cam_to_world_s) @ cam_to_world_t
    return np.linalg.inv(cam_to_world_s) @ cam_to_world_t
