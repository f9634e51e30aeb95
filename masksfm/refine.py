"""Test-time photometric pose refinement: direct image alignment of two frames against a depth map.

Given a target frame with its depth and a source frame, the pose T_t2s that makes the source,
warped into the target view, match the target best is found by robust Levenberg-Marquardt on
SE(3) (Lucas-Kanade's forward-compositional direct alignment, as in DVO / LSD-SLAM / DSO):

    r(p) = I_s(π(K_s, T · X_t(p))) − I_t(p)        over pixels p whose point lands in the source
                                                   view in front of the camera (z > 0)
    J(p) = ∇I_s(π(...)) · ∂π/∂X' · [I | −[X']×]    (left perturbation: T ← exp(δ) · T, δ = (v, ω))
    (JᵀWJ + λ·diag(JᵀWJ)) δ = −JᵀWr               W: Huber or Cauchy IRLS weights

coarse to fine over an image pyramid. A step is kept, per pair, only if it lowers the robust cost;
otherwise λ grows tenfold (and shrinks tenfold after a kept step).

Conventions are :mod:`masksfm.geometry`'s: `T_t2s` maps target-frame points to the source frame,
K in pixels with centres at integer coordinates. Depth may be in any unit: the translation comes
out in that unit. Everything is pure, batched over pairs and device-agnostic; the only Python loops
run over pyramid levels and iterations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from masksfm.config import MOTIONS  # the camera's motion model, as the pose net's (`model.motion`)
from masksfm.geometry import (
    MIN_PROJECTION_Z,
    _check,
    backproject,
    onto_vehicle_chord,
    pixels_to_grid,
    pose_vec_to_mat,
    project,
    scale_intrinsics,
    transform_points,
    vehicle_travel_basis,
)

# Cauchy is the default: its weight falls to 0 for large residuals, so occluded pixels (the street's
# parked cars, poles and facades moving across each other) stop pulling; with Huber they still pull
# and leave about twice the bias on the rendered street with true depth (bench/refine.py).
ROBUST_KINDS = ("huber", "cauchy")
# Residuals are in image intensity, [0, 1]. Beyond about 10/255 a difference is more likely an
# occlusion, a moving object or a depth error than a misalignment (DSO uses 9/255 for its Huber).
ROBUST_SCALE = 0.04
# Pyramid levels stop before an image side drops under this many pixels: a coarser level has too
# few pixels to constrain six degrees of freedom well.
MIN_LEVEL_SIDE = 8
LAMBDA_INIT = 1e-3
LAMBDA_MIN, LAMBDA_MAX = 1e-8, 1e7
# Added to the normal equations' diagonal (relative to its largest entry) so that a pair without
# any usable pixel (all out of view, a blank image) solves to δ = 0 instead of failing.
SINGULAR_EPS = 1e-9
# A level ends early once every pair's proposed step is this small (radians, and depth units) or
# its λ has grown to LAMBDA_MAX (ten rejected steps in a row: it sits at a minimum).
STEP_TOLERANCE = 1e-7
# ITU-R BT.601 luma weights for the greyscale residual.
LUMA = (0.299, 0.587, 0.114)


# --- SE(3) ---------------------------------------------------------------------------------------


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """The exponential map of se(3): twists (B, 6) = (v, ω) to transforms (B, 4, 4).

    exp(ξ) = [R(ω), V(ω)·v] with R Rodrigues' rotation and
    V = I + (1 − cos θ)/θ² [ω]× + (θ − sin θ)/θ³ [ω]×², θ = |ω|; Taylor series near θ = 0.
    """
    _check("xi", xi, (None, 6))
    v, w = xi[:, :3], xi[:, 3:]
    theta2 = (w * w).sum(1, keepdim=True)
    theta = theta2.sqrt()
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe)) / safe**2)
    b = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (safe - torch.sin(safe)) / safe**3)
    # V v = v + a (ω × v) + b (ω × (ω × v)): no 3x3 matrices needed.
    wv = torch.linalg.cross(w, v, dim=1)
    t = v + a * wv + b * torch.linalg.cross(w, wv, dim=1)
    return pose_vec_to_mat(torch.cat([t, w], dim=1))


# --- robust cost ---------------------------------------------------------------------------------


def robust_cost_and_weight(r: torch.Tensor, kind: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust cost ρ(r) and IRLS weight ρ'(r)/r of residuals, elementwise.

    Huber: ρ = r²/2 for |r| ≤ k, k(|r| − k/2) beyond; w = min(1, k/|r|).
    Cauchy: ρ = k²/2 · log(1 + (r/k)²); w = 1 / (1 + (r/k)²).
    """
    if kind == "huber":
        a = r.abs()
        cost = torch.where(a <= scale, 0.5 * r * r, scale * (a - 0.5 * scale))
        return cost, scale / torch.clamp(a, min=scale)
    if kind == "cauchy":
        q = (r / scale) ** 2
        return 0.5 * scale**2 * torch.log1p(q), 1.0 / (1.0 + q)
    raise ValueError(f"robust must be one of {ROBUST_KINDS}, got {kind!r}")


# --- images --------------------------------------------------------------------------------------


def _gradients(image: torch.Tensor) -> torch.Tensor:
    """Central differences (B, C, H, W) -> (B, 2C, H, W): d/du of every channel, then d/dv.

    Edges are replicated, so the border's difference is one-sided and halved: a pixel projecting
    there is rare and its gradient merely damped.
    """
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    du = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    dv = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return torch.cat([du, dv], dim=1)


def _half(image: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor):
    """One pyramid step: 2x2 area averages; depth averaged over its valid pixels only.

    A 2x2 average maps x to (x − 0.5)/2 whatever the parity of W (an odd last column is dropped),
    which is exactly `scale_intrinsics(K, 0.5, 0.5)`.
    """
    weight = F.avg_pool2d(valid.to(depth.dtype), 2)
    depth = F.avg_pool2d(depth * valid, 2) / weight.clamp(min=1e-12)
    return F.avg_pool2d(image, 2), depth, weight > 0


def _as_channels(image: torch.Tensor, channels: str) -> torch.Tensor:
    if channels == "grey":
        return (image * image.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True) if image.shape[1] == 3 else image
    if channels == "rgb":
        return image
    raise ValueError(f"channels must be 'grey' or 'rgb', got {channels!r}")


# --- one level -----------------------------------------------------------------------------------


def _linearise(T, points, valid_t, target, source_and_grad, K_s, need_jacobian: bool = True):
    """Residuals (and their Jacobian) of every pixel at pose T.

    Args:
        T: (B, 4, 4) T_t2s; points: (B, 3, H, W) target-frame points; valid_t: (B, 1, H, W) bool.
        target: (B, C, H, W); source_and_grad: (B, 3C, H, W) the source, its d/du, its d/dv.
        K_s: (B, 3, 3) the source camera's intrinsics.
    Returns:
        r: (B, C, N) residuals (N = H·W), 0 where invalid; valid: (B, 1, N) bool;
        J: (B, C, N, 6) ∂r/∂δ (None unless `need_jacobian`), 0 where invalid.
    """
    b, c, h, w = target.shape
    points_s = transform_points(T.to(points.dtype), points)
    pixels, z = project(points_s, K_s)
    u, v = pixels[:, 0:1], pixels[:, 1:2]
    valid = valid_t & (z > MIN_PROJECTION_Z) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    sampled = F.grid_sample(source_and_grad, pixels_to_grid(pixels), mode="bilinear", padding_mode="zeros",
                            align_corners=True).reshape(b, 3, c, h * w)
    valid = valid.reshape(b, 1, h * w)
    r = torch.where(valid, sampled[:, 0] - target.reshape(b, c, h * w), 0.0)
    if not need_jacobian:
        return r, valid, None
    # ∂p/∂X' = (K_s[:2] − p e_zᵀ)/z: rows (2, 3) per pixel; general K (skew included).
    X = points_s.reshape(b, 3, h * w)
    zc = X[:, 2:3].clamp(min=MIN_PROJECTION_Z)
    p = pixels.reshape(b, 2, h * w)
    dp = K_s[:, :2, :, None].expand(b, 2, 3, h * w).clone()
    dp[:, :, 2] -= p
    dp = dp / zc[:, None]  # (B, 2, 3, N)
    # The residual's gradient with respect to the point: a = I_u ∂u/∂X' + I_v ∂v/∂X', (B, C, 3, N).
    a = sampled[:, 1, :, None] * dp[:, None, 0] + sampled[:, 2, :, None] * dp[:, None, 1]
    # [I | −[X']×] turns it into the twist's: aᵀ(−[X']×) = (X' × a)ᵀ.
    rot = torch.linalg.cross(X[:, None].expand_as(a), a, dim=2)
    J = torch.cat([a, rot], dim=2).permute(0, 1, 3, 2)
    return r, valid, torch.where(valid[..., None], J, 0.0)


def _on_path(J: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The Jacobian (B, C, N, 6) of a twist (v, ω) reduced to (B, C, N, k + 3) of (s, ω) with v = basis·s,
    basis (B, 3, k) the directions a car's camera may travel in (`geometry.vehicle_travel_basis`):
    k + 3 unknowns, 4 along the chord, 5 with vertical travel."""
    return torch.cat([J[..., :3] @ basis[:, None].to(J.dtype), J[..., 3:]], dim=-1)


def _level(T, points, valid_t, target, source, K_s, iterations, robust, robust_scale, motion: str = "free"):
    """LM iterations at one pyramid level (arguments as for :func:`_linearise`); the refined T.

    With a car's `motion` (`vehicle`, `vehicle_vertical`), T stays on the car's path: the step solves
    for the distance along the current chord (and up it, with `vehicle_vertical`) and the rotation,
    and the new pose is put back onto its own path (the chord turns with the heading) before its
    cost is compared."""
    vehicle, vertical = motion != "free", motion == "vehicle_vertical"
    source_and_grad = torch.cat([source, _gradients(source)], dim=1)
    r, valid, J = _linearise(T, points, valid_t, target, source_and_grad, K_s)
    # λ starts afresh at each level: a finer level's cost is another function.
    lam = torch.full((len(T),), LAMBDA_INIT, dtype=torch.float64, device=T.device)
    for _ in range(iterations):
        _, weight = robust_cost_and_weight(r, robust, robust_scale)
        basis = vehicle_travel_basis(T[:, :3, :3], vertical) if vehicle else None
        Jp = _on_path(J, basis) if vehicle else J  # (B, C, N, P): P = 4, 5 or 6 unknowns
        WJ = (Jp * weight[..., None]).flatten(1, 2)  # (B, C·N, P)
        Jf = Jp.flatten(1, 2)
        # Normal equations in float64: the 6x6 system is tiny, and float32 loses the rotation
        # block against the translation block when depth is large.
        H = (WJ.transpose(1, 2) @ Jf).double()
        g = (WJ.transpose(1, 2) @ r.flatten(1, 2)[..., None]).double()
        diag = torch.diagonal(H, dim1=1, dim2=2)
        floor = SINGULAR_EPS * diag.amax(1, keepdim=True).clamp(min=1e-30)
        A = H + torch.diag_embed(lam[:, None] * diag + floor)
        delta = -torch.linalg.solve(A, g)[..., 0]
        if vehicle:
            k = basis.shape[2]
            twist = torch.cat([(basis.to(delta.dtype) @ delta[:, :k, None])[..., 0], delta[:, k:]], dim=1)
            T_new = onto_vehicle_chord(se3_exp(twist.to(T.dtype)) @ T, vertical)
        else:
            T_new = se3_exp(delta.to(T.dtype)) @ T
        r_new, valid_new, J_new = _linearise(T_new, points, valid_t, target, source_and_grad, K_s)
        # Compare both poses on the pixels valid at both: a step must not win by pushing pixels
        # out of view.
        both = valid & valid_new
        cost_old = torch.where(both, robust_cost_and_weight(r, robust, robust_scale)[0], 0.0).flatten(1).sum(1)
        cost_new = torch.where(both, robust_cost_and_weight(r_new, robust, robust_scale)[0], 0.0).flatten(1).sum(1)
        accept = cost_new < cost_old
        T = torch.where(accept[:, None, None], T_new, T)
        r = torch.where(accept[:, None, None], r_new, r)
        valid = torch.where(accept[:, None, None], valid_new, valid)
        J = torch.where(accept[:, None, None, None], J_new, J)
        lam = torch.where(accept, lam / 10, lam * 10).clamp(LAMBDA_MIN, LAMBDA_MAX)
        if bool(((delta.abs().amax(1) < STEP_TOLERANCE) | (lam >= LAMBDA_MAX)).all()):
            break  # every pair has converged (or cannot move): one sync per iteration, not per pair
    return T


@torch.no_grad()
def refine_pose(
    target: torch.Tensor,
    source: torch.Tensor,
    depth_t: torch.Tensor,
    K: torch.Tensor,
    T_init: torch.Tensor,
    iterations: int = 10,
    levels: int = 4,
    robust: str = "cauchy",
    robust_scale: float = ROBUST_SCALE,
    channels: str = "grey",
    K_source: torch.Tensor | None = None,
    motion: str = "free",
) -> torch.Tensor:
    """Refine target-to-source poses by robust photometric alignment against the target's depth.

    Args:
        target, source: (B, 3, H, W) images in [0, 1] (or (B, 1, H, W) greyscale).
        depth_t: (B, 1, H, W) the target's z-depth, any unit; pixels with a depth that is not
            finite and positive are left out (0 masks a pixel).
        K: (B, 3, 3) the target's intrinsics (and the source's, unless `K_source`), pixels.
        T_init: (B, 4, 4) initial T_t2s, translation in depth's unit.
        iterations: LM iterations per pyramid level (a rejected step counts).
        levels: pyramid levels, finest included; fewer when the image gets too small.
        robust: "huber" or "cauchy"; robust_scale: its k, in intensity units.
        channels: "grey" (one residual per pixel, BT.601 luma) or "rgb" (one per channel).
        K_source: (B, 3, 3) the source's intrinsics when they differ (a stereo rig), else None.
        motion: "free" (any rigid motion, 6 unknowns), "vehicle" (a car's camera, as
            `model.motion=vehicle`: T_init is put onto the chord of :func:`masksfm.geometry.vehicle_chord`
            and every step keeps it there; 4 unknowns, the distance along the chord and the rotation)
            or "vehicle_vertical" (the chord's vertical plane, as `model.motion=vehicle_vertical`: 5
            unknowns, the travel along the chord and up it, and the rotation).
    Returns:
        (B, 4, 4) refined T_t2s, T_init's dtype and device. A pair whose cost no step lowers keeps
        its T_init exactly (with a car's motion, T_init on its path).
    """
    _check("target", target, (None, None, None, None))
    b, _, h, w = target.shape
    _check("source", source, tuple(target.shape))
    _check("depth_t", depth_t, (b, 1, h, w))
    _check("K", K, (b, 3, 3))
    _check("T_init", T_init, (b, 4, 4))
    if K_source is not None:
        _check("K_source", K_source, (b, 3, 3))
    if robust not in ROBUST_KINDS:
        raise ValueError(f"robust must be one of {ROBUST_KINDS}, got {robust!r}")
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    if iterations < 0 or levels < 1:
        raise ValueError(f"iterations must be >= 0 and levels >= 1, got {iterations} and {levels}")
    dtype = target.dtype
    image_t, image_s = _as_channels(target, channels), _as_channels(source.to(dtype), channels)
    valid = torch.isfinite(depth_t) & (depth_t > 0)
    depth = torch.where(valid, depth_t.to(dtype), 1.0)
    K_t = K.to(dtype)
    K_s = K_t if K_source is None else K_source.to(dtype)
    pyramid = [(image_t, image_s, depth, valid, K_t, K_s)]
    while len(pyramid) < levels and min(pyramid[-1][0].shape[-2:]) >= 2 * MIN_LEVEL_SIDE:
        image_t, image_s, depth, valid, K_t, K_s = pyramid[-1]
        image_t, depth, valid = _half(image_t, depth, valid)
        pyramid.append((image_t, F.avg_pool2d(image_s, 2), depth, valid,
                        scale_intrinsics(K_t, 0.5, 0.5), scale_intrinsics(K_s, 0.5, 0.5)))
    # composed in its own dtype: float64 poses stay float64 with float32 images
    T = T_init if motion == "free" else onto_vehicle_chord(T_init, vertical=motion == "vehicle_vertical")
    for image_t, image_s, depth, valid, K_t, K_s in reversed(pyramid):
        T = _level(T, backproject(depth, K_t), valid, image_t, image_s, K_s, iterations, robust, robust_scale,
                   motion)
    return T


# --- a sequence ----------------------------------------------------------------------------------


@torch.no_grad()
def refine_sequence(frames, depths, rel, K, device: torch.device | str = "cpu", batch_size: int = 8, **options):
    """Refine the relative poses of a sequence photometrically, pair by consecutive pair, in batches.

    Pair i has target frame i+1 and source frame i: rel[i] = inv(P_i) @ P_{i+1} = T_{(i+1)→i} is
    exactly its T_t2s (the convention of :func:`masksfm.inference.predict_relative_poses` and
    :func:`masksfm.evaluation.snippets_from_relative`).

    Args:
        frames: (N, 3, h, w) in [0, 1] (a tensor, or anything whose slices are one).
        depths: (N, 1, h, w) z-depth of the frames, any unit (a tensor, or anything whose slices
            are one); the refined translations come out in that unit.
        rel: (N − 1, 4, 4) relative poses, numpy array or tensor.
        K: (3, 3) or (N, 3, 3) intrinsics of the frames, pixels (numpy array or tensor).
        device: where the refinement is computed.
        batch_size: pairs per batch.
        options: passed to :func:`refine_pose` (iterations, levels, robust, motion, ...).
    Returns:
        (N − 1, 4, 4) refined relative poses in `rel`'s convention, type and dtype.
    """
    device = torch.device(device)
    as_numpy = isinstance(rel, np.ndarray)
    rel_t = torch.as_tensor(rel)
    n = len(frames)
    _check("rel", rel_t, (n - 1, 4, 4))
    K_all = torch.as_tensor(K, dtype=torch.float32)
    K_all = K_all.expand(n, 3, 3) if K_all.dim() == 2 else K_all
    _check("K", K_all, (n, 3, 3))
    out = []
    for start in range(0, n - 1, batch_size):
        stop = min(start + batch_size, n - 1)  # pairs start..stop-1: sources start..stop-1, targets one later
        targets = slice(start + 1, stop + 1)
        T = refine_pose(frames[targets].to(device), frames[start:stop].to(device), depths[targets].to(device),
                        K_all[targets].to(device), rel_t[start:stop].to(device), **options)
        out.append(T.cpu())
    refined = torch.cat(out).to(rel_t.dtype)
    return refined.numpy() if as_numpy else refined


class _NetDepth:
    """The depth net's depth (1 / finest disparity) of frames, computed slice by slice on demand
    (with `flip`, from the disparity averaged with the mirrored frames')."""

    def __init__(self, depth_net: torch.nn.Module, frames, device: torch.device, batch_size: int, flip: bool = False):
        self.depth_net, self.frames, self.device, self.batch_size, self.flip = depth_net, frames, device, batch_size, flip

    def __getitem__(self, index: slice) -> torch.Tensor:
        from masksfm.inference import predict_disparity

        return 1.0 / predict_disparity(self.depth_net, self.frames[index], self.device, self.batch_size, flip=self.flip)


def refine_relative_poses(depth_net: torch.nn.Module, frames, rel, K, device: torch.device | str = "cpu",
                          batch_size: int = 8, flip: bool = False, **options):
    """:func:`refine_sequence` against the depth net's depth of each target frame (with `flip`, the
    depth of `--flip`: its disparity averaged with the mirrored frame's, mirrored back).

    The depth is used as the net gives it: the pose net's translations are in the depth net's unit
    (they were trained together), so the refined ones stay in that unit.

    Args:
        depth_net: the depth net (its finest disparity is 1/depth).
        frames: (N, 3, h, w) in [0, 1] at the net's size (a tensor, or anything whose slices are one).
        rel, K, device, batch_size, options: as for :func:`refine_sequence` (K at the net's size).
    Returns:
        (N − 1, 4, 4) refined relative poses in `rel`'s convention, type and dtype.
    """
    device = torch.device(device)
    return refine_sequence(frames, _NetDepth(depth_net, frames, device, batch_size, flip), rel, K, device,
                           batch_size, **options)
