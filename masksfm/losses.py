"""Loss terms (docs/design.md §3): photometric error, SSIM, the masked mean, smoothness, depth normalisation,
and the baselines' pieces (SfMLearner's explainability regulariser, monodepth2's auto-mask).

Each function is pure, batched and device-agnostic; the trainer composes them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

from masksfm.geometry import pose_vec_to_mat, snippet_transforms, yaw_rotation

# SSIM stabilisers for images in [0, 1] (Wang et al. 2004; monodepth2 and the authors alike).
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_WEIGHT = 0.85  # a in e = (1 - a)·rho + a·s
GAUSS_WINDOW, GAUSS_SIGMA = 13, 1.5  # the authors' SSIM window (their ssim.py)
ROBUST_EPS, ROBUST_POWER = 0.01, 0.4  # the authors' robust penalty (|x| + 0.01)^0.4


def _ssim_from_moments(mu_x, mu_y, sigma_x, sigma_y, sigma_xy):
    return ((2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    )


def box_mean3(x: torch.Tensor) -> torch.Tensor:
    """Mean over 3x3 windows, without padding: (..., H, W) -> (..., H - 2, W - 2).

    Two passes of three shifted slices (rows, then columns). On the CPU this is about 2.4x faster
    than a depthwise convolution with a 1/9 kernel for SSIM's forward + backward, and under
    `torch.compile` the sums fuse into one loop (`bench/train_step.py --profile`, docs/results.md).
    """
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9


def reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """`F.pad(x, (1, 1, 1, 1), mode="reflect")` as copies of the second and second-to-last rows and
    columns: the same values; under torch.compile its backward is slices and sums that fuse with
    SSIM's, 5-10 % faster for the compiled photometric error than the padding op's (32 reconstructions at 128x416,
    one thread)."""
    x = torch.cat([x[..., 1:2], x, x[..., -2:-1]], dim=-1)
    return torch.cat([x[..., 1:2, :], x, x[..., -2:-1, :]], dim=-2)


def ssim_box3(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map over 3x3 box windows with reflection padding (monodepth2's form).

    Args:
        x, y: (B, C, H, W) images in [0, 1].
    Returns:
        (B, C, H, W) SSIM, 1 where the images agree.
    """
    x, y = reflect_pad1(x), reflect_pad1(y)
    mu_x, mu_y = box_mean3(x), box_mean3(y)
    sigma_x = box_mean3(x * x) - mu_x**2
    sigma_y = box_mean3(y * y) - mu_y**2
    sigma_xy = box_mean3(x * y) - mu_x * mu_y
    return _ssim_from_moments(mu_x, mu_y, sigma_x, sigma_y, sigma_xy)


def gaussian_window(size: int = GAUSS_WINDOW, sigma: float = GAUSS_SIGMA, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 2-D Gaussian window, (size, size)."""
    coords = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_gauss13(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map over 13x13 Gaussian windows (σ = 1.5) with zero padding, as the authors' code.

    Args:
        x, y: (B, C, H, W) images in [0, 1].
    Returns:
        (B, C, H, W) SSIM.
    """
    channels = x.shape[1]
    window = gaussian_window(device=x.device, dtype=x.dtype).expand(channels, 1, GAUSS_WINDOW, GAUSS_WINDOW)

    def blur(img):
        return F.conv2d(img, window, padding=GAUSS_WINDOW // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    return _ssim_from_moments(mu_x, mu_y, blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y)


def photometric_error(
    target: torch.Tensor, reconstruction: torch.Tensor, ssim: str = "box3", rho: str = "l1", alpha: float = SSIM_WEIGHT,
    per_channel: bool = False,
) -> torch.Tensor:
    """Per-pixel photometric error e = (1 − a)·rho(I − Î) + a·s(I, Î), averaged over channels.

    `ssim="box3"`: s = clamp((1 − SSIM)/2, 0, 1) (monodepth2); `"gauss13"`: s = 1 − SSIM (the
    authors). `rho="l1"`: |x|; `"robust"`: (|x| + 0.01)^0.4 (the authors).

    Args:
        target, reconstruction: (B, C, H, W) images (in the loss's range, `loss_image_range`).
        per_channel: return each channel's error instead of their mean (the authors' below-mean
            mask compares channels one by one).
    Returns:
        (B, 1, H, W) error, or (B, C, H, W) with `per_channel`.
    """
    diff = target - reconstruction
    if rho == "l1":
        penalty = diff.abs()
    elif rho == "robust":
        penalty = (diff.abs() + ROBUST_EPS) ** ROBUST_POWER
    else:
        raise ValueError(f"unknown rho {rho!r} (l1, robust)")
    if ssim == "box3":
        structure = ((1 - ssim_box3(target, reconstruction)) / 2).clamp(0, 1)
    elif ssim == "gauss13":
        structure = 1 - ssim_gauss13(target, reconstruction)
    else:
        raise ValueError(f"unknown ssim {ssim!r} (box3, gauss13)")
    error = (1 - alpha) * penalty + alpha * structure
    return error if per_channel else error.mean(dim=1, keepdim=True)


def masked_mean(error: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's masked term per image, `Σ M·e / (Σ M + 1)`; the plain mean without a mask.

    The +1 keeps a fully masked-out image at 0 instead of 0/0. With C channels of error and of
    mask (the per-channel below-mean mask), the sums run over channels too, as in the authors' code.

    Args:
        error: (B, C, H, W) per-pixel error, C = 1 or one per colour channel.
        mask: (B, C, H, W) weights in [0, 1] (same C as `error`), or None.
    Returns:
        (B,) loss per image.
    """
    if mask is None:
        return error.mean(dim=(1, 2, 3))
    return (mask * error).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1)


def depth_inconsistency(projected: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """SC-SfMLearner's geometric consistency (Bian et al., NeurIPS 2019), per pixel.

    A target pixel's 3-D point, moved into the source camera, lies at depth `projected` there; the
    source's own depth map, sampled where the point projects, says `sampled`. With consistent
    depth scales the two agree; `|projected − sampled| / (projected + sampled)` is their
    disagreement in [0, 1), the same at any global scale.

    Args:
        projected: (B, 1, H, W) z of the target's points in the source frame (model units).
        sampled: (B, 1, H, W) the source depth bilinearly sampled at those points' projections.
    Returns:
        (B, 1, H, W) the normalised difference.
    """
    return (projected - sampled).abs() / (projected + sampled).clamp(min=1e-6)


def velocity_change(T_t2s: torch.Tensor, length: int, eps: float = 1e-12) -> torch.Tensor:
    """The constant-velocity prior: how differently a snippet's camera moves from one frame to the next.

    The step from frame k to k + 1 is M_k = T_{t→k+1} · inv(T_{t→k}) (T_{t→t} = I); a camera moving
    at a constant velocity (a constant twist: straight or on a circle, at one speed) makes every
    M_k the same. The change between consecutive steps' translations, relative to their size, is
    |t(M_{k+1}) − t(M_k)|² / (|t(M_k)|² + |t(M_{k+1})|²), in [0, 2] and the same at any scale of the
    translations (the depth's scale is free). It covers the change of speed and of the direction of
    travel, not of the rotation.

    Args:
        T_t2s: (B·S, 4, 4) T_{t→s} for each of a snippet's S = L − 1 sources in snippet order (target skipped).
        length: L, odd, >= 3.
        eps: m², keeps two standing steps finite.
    Returns:
        (B, L − 2) the change between each pair of consecutive steps.
    """
    frames = snippet_transforms(T_t2s.view(-1, length - 1, 4, 4))  # (B, L, 4, 4) T_{t→k}
    R, t = frames[..., :3, :3], frames[..., :3, 3:]
    # t(M_k) = t_{k+1} − R_{k+1} R_kᵀ t_k: the translation of T_{t→k+1} · inv(T_{t→k}).
    steps = (t[:, 1:] - R[:, 1:] @ R[:, :-1].transpose(-1, -2) @ t[:, :-1]).squeeze(-1)  # (B, L − 1, 3)
    size = steps.pow(2).sum(-1)
    return (steps[:, 1:] - steps[:, :-1]).pow(2).sum(-1) / (size[:, 1:] + size[:, :-1] + eps)


def turn_inconsistency(rotation: torch.Tensor, turned_rotation: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """How far the pose net's rotation to a turned source is from its rotation to the source unturned,
    composed with the turn: a source's camera turned by `yaw` about its vertical axis makes
    T_t2s into R_y(yaw)ᵀ · T_t2s, exactly (`masksfm.geometry.turn_frames`).

    Both sides carry gradient: the term holds the difference of the two rotations to the turn, and
    leaves their common part to the photometric loss. (With the unturned side held fixed, the net
    chases its own moving output and drifts: measured, the rotation ran to hundreds of degrees.)

    Args:
        rotation: (N, 3) the pose net's axis-angle (radians) of T_t2s for the plain sources.
        turned_rotation: (N, 3) its axis-angle for the same sources turned.
        yaw: (N,) the turns, radians.
    Returns:
        (N,) the L1 distance of the axis-angle vectors, radians.
    """
    expected = yaw_rotation(yaw).transpose(-1, -2) @ axis_angle_to_rotation_matrix(rotation)
    return (turned_rotation - rotation_matrix_to_axis_angle(expected.contiguous())).abs().sum(-1)


def distance_log_ratio(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """|log(|a| + eps) − log(|b| + eps)| of translations a, b (N, 3) in model units: (N,), the same at
    any scale of the depth (the pose relations compare distances by it)."""
    return (torch.log(a.norm(dim=-1) + eps) - torch.log(b.norm(dim=-1) + eps)).abs()


def stride_inconsistency(poses: torch.Tensor, wide_poses: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the pose net's poses to sources two frames away are from its poses to the sources one
    frame away, applied twice: a camera at a constant velocity (a constant twist) makes
    T_{t→t±2} = T_{t→t±1}², twice the rotation and, on a straight path, twice the distance (a car's
    speed and turn change by a few per cent from one frame to the next: the relation is a prior, not
    an identity). The distances are compared by their ratio, so the term is the same at any scale of
    the depth (an absolute difference would pull the camera to a standstill: measured, the depth collapsed).

    Args:
        poses: (N, 6) `[t, axis-angle]` of T_{t→s}, s one frame from the target.
        wide_poses: (N, 6) the same for the source two frames away on the same side.
        eps: model units, keeps a standing camera's log finite.
    Returns:
        (the rotations' L1 distance (N,), radians; the absolute log-ratio of the distances (N,)).
    """
    T = pose_vec_to_mat(poses)
    twice = T @ T
    rotation = (wide_poses[:, 3:] - 2 * poses[:, 3:]).abs().sum(-1)
    return rotation, distance_log_ratio(wide_poses[:, :3], twice[:, :3, 3], eps)


def shift_inconsistency(forward: torch.Tensor, backward: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the pose net's two readings of one pair of neighbouring frames are from each other's
    inverse: the snippet centred on frame t gives T_{t→t+1}, the snippet centred on t + 1 gives
    T_{t+1→t}, and T_{t+1→t} = T_{t→t+1}⁻¹ exactly, whatever the drive (its rotation is the opposite
    axis-angle, its distance the same). The distances are compared by their ratio, as
    `stride_inconsistency`'s, so that a standing camera is no cheaper.

    Args:
        forward: (N, 6) `[t, axis-angle]` of T_{a→b} from the snippet centred on a.
        backward: (N, 6) the same of T_{b→a} from the snippet centred on b.
        eps: model units, keeps a standing camera's log finite.
    Returns:
        (the rotations' L1 distance (N,), radians; the absolute log-ratio of the distances (N,)).
    """
    rotation = (forward[:, 3:] + backward[:, 3:]).abs().sum(-1)
    return rotation, distance_log_ratio(forward[:, :3], backward[:, :3], eps)


def motion_reading_error(poses: torch.Tensor, T_t2s: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the pose net's reading of views rendered from a known motion is from that motion
    (`geometry.moved_views`): the rotations' axis-angles by their L1 distance, the distances by their
    log-ratio (the direction of travel is left to the model's motion and the photometric loss).

    Args:
        poses: (N, 6) `[t, axis-angle]` the pose net gives for the views.
        T_t2s: (N, 4, 4) the motions they were rendered from, the frame's camera to the view's.
        eps: model units, keeps a standing camera's log finite.
    Returns:
        (the rotations' L1 distance (N,), radians; the absolute log-ratio of the distances (N,)).
    """
    rotation = (poses[:, 3:] - rotation_matrix_to_axis_angle(T_t2s[:, :3, :3].contiguous())).abs().sum(-1)
    return rotation, distance_log_ratio(poses[:, :3], T_t2s[:, :3, 3], eps)


@torch.no_grad()
def below_mean_mask(
    error: torch.Tensor, mask: torch.Tensor, factor: float = 1.0, compare: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep only pixels whose error is below `factor` times the image's masked mean error.

    masksfm's form (factor 1, `compare` None) keeps about half the pixels. The authors' code
    (`--add-less-than-mean-mask`) sums the error's three colour channels against a one-channel mask
    in the numerator of the mean, so its threshold is exactly 3 × the masked mean of the
    channel-mean error, and it compares each channel's error with it: factor 3 with `compare` the
    per-channel error. That drops only outliers.

    Args:
        error: (B, 1, H, W) per-pixel error (the channel mean); mask: (B, 1, H, W) current weights.
        factor: the threshold is factor · masked_mean(error, mask), per image.
        compare: (B, C, H, W) the values held against the threshold; None: `error` itself.
    Returns:
        (B, C, H, W) mask · [compare < threshold] (C = 1 without `compare`), no gradient.
    """
    threshold = factor * masked_mean(error, mask).view(-1, 1, 1, 1)
    compare = error if compare is None else compare
    return mask * (compare < threshold).to(mask.dtype)


def loss_image_range(images: torch.Tensor, mode: str) -> torch.Tensor:
    """The images as the loss sees them: "unit" [0, 1] as loaded; "signed" [-1, 1], 2·I − 1.

    The authors normalise every image with mean 0.5 and std 0.5 before the nets and the loss see
    it. SSIM's constants C1, C2 and the robust penalty's ε do not scale with the range, so the range
    changes the balance of the SSIM and the robust term, the SSIM of flat regions most; zero padding
    (warp, Gaussian SSIM) then means mid-grey instead of black.

    Args:
        images: (..., H, W) in [0, 1].
        mode: unit | signed.
    Returns:
        the images in that range, same shape.
    """
    if mode == "unit":
        return images
    if mode == "signed":
        return 2 * images - 1
    raise ValueError(f"unknown image range {mode!r} (unit, signed)")


def edge_aware_smoothness(x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware first-order smoothness: mean |∂x| · exp(−|∂I|) along x plus the same along y,
    |∂I| averaged over the image's channels.

    Args:
        x: (B, 1, H, W) the map made smooth; image: (B, C, H, W) the frame at the same size.
    Returns:
        scalar.
    """
    grad_x = (x[..., :, :-1] - x[..., :, 1:]).abs()
    grad_y = (x[..., :-1, :] - x[..., 1:, :]).abs()
    grad_img_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(dim=1, keepdim=True)
    grad_img_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(dim=1, keepdim=True)
    return (grad_x * torch.exp(-grad_img_x)).mean() + (grad_y * torch.exp(-grad_img_y)).mean()


def smoothness_target(disp: torch.Tensor, mode: str) -> torch.Tensor:
    """What the smoothness term smooths.

    - "disparity_mean_normalised" (monodepth2): the disparity divided by its mean, so shrinking the
      disparity does not pay (a smaller scale would otherwise always be smoother).
    - "depth" (the authors, no `--use-disp`): the depth 1 / disp as it is, after any depth
      normalisation.

    Args:
        disp: (B, 1, H, W) disparity.
        mode: disparity_mean_normalised | depth.
    Returns:
        (B, 1, H, W).
    """
    if mode == "disparity_mean_normalised":
        return disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
    if mode == "depth":
        return 1.0 / disp
    raise ValueError(f"unknown smoothness target {mode!r} (disparity_mean_normalised, depth)")


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor, on: str = "disparity_mean_normalised") -> torch.Tensor:
    """Edge-aware first-order smoothness (`edge_aware_smoothness`) of `smoothness_target(disp, on)`;
    by default of the mean-normalised disparity (monodepth2).

    Args:
        disp: (B, 1, H, W) disparity; image: (B, 3, H, W) the frame at the same size.
        on: disparity_mean_normalised | depth.
    Returns:
        scalar.
    """
    return edge_aware_smoothness(smoothness_target(disp, on), image)


def logit_excess(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """The squared excess of disparity logits beyond ± `bound`, per pixel: relu(|x| − bound)².

    The disparity is 10·sigmoid(x) + 0.01; far out on the sigmoid's flat ends its gradient all but
    vanishes while Adam, which divides by the gradient's size, keeps stepping in the sign it last had,
    so a depth map pushed flat in the first steps stays flat. This holds the logits where the loss can
    still move them. Args: logits (any shape). Returns: the same shape, 0 inside the bound.
    """
    return torch.relu(logits.abs() - bound).square()


def normalize_disparity(disparities: list[torch.Tensor], mode: str, snippet_length: int) -> list[torch.Tensor]:
    """Depth normalisation (DN, Wang et al. CVPR 2018).

    - "none": unchanged.
    - "snippet": every disparity of a snippet (all frames, all scales) divided by one number, the
      mean of the snippet's finest-scale disparities, so its frames stay consistent with each other
      and with the pose.
    - "image_mean" / "image_max": each frame at each scale divided by its own mean / max, as the
      authors' code does (their README trains with max).

    Args:
        disparities: per scale, (B·L, 1, h, w) with the L frames of a snippet consecutive.
        mode: none | snippet | image_mean | image_max.
        snippet_length: L.
    Returns:
        the normalised disparities, same shapes.
    """
    if mode == "none":
        return disparities
    if mode == "snippet":
        finest = disparities[0]
        mean = finest.reshape(-1, snippet_length * finest[0].numel()).mean(dim=1)
        scale = mean.repeat_interleave(snippet_length).view(-1, 1, 1, 1)
        return [d / scale for d in disparities]
    if mode == "image_mean":
        return [d / d.mean(dim=(2, 3), keepdim=True) for d in disparities]
    if mode == "image_max":
        return [d / d.amax(dim=(2, 3), keepdim=True) for d in disparities]
    raise ValueError(f"unknown depth normalisation {mode!r} (none, snippet, image_mean, image_max)")


def explainability_regularizer(masks: list[torch.Tensor]) -> torch.Tensor:
    """SfMLearner's regulariser: cross-entropy of each explainability mask against 1, summed over scales.

    Without it the net would explain every pixel away (mask 0 everywhere).

    Args:
        masks: per scale, (B, S, h, w) in (0, 1).
    Returns:
        scalar.
    """
    return sum(F.binary_cross_entropy(m, torch.ones_like(m)) for m in masks)


def min_reprojection(errors: torch.Tensor) -> torch.Tensor:
    """monodepth2's per-pixel minimum over the sources.

    Args:
        errors: (B, S, H, W) target-direction photometric error for each source.
    Returns:
        (B, 1, H, W).
    """
    return errors.min(dim=1, keepdim=True).values


# monodepth2 adds 1e-5 noise to the identity error to break exact ties (e.g. flat sky); a
# deterministic tiny offset does the same without consuming random numbers.
IDENTITY_TIE_OFFSET = 1e-5


def _identity_min(identity: torch.Tensor) -> torch.Tensor:
    return identity.min(dim=1, keepdim=True).values + IDENTITY_TIE_OFFSET


@torch.no_grad()
def identity_automask(reprojection: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """monodepth2's auto-mask: keep pixels whose warped error beats the unwarped one.

    Pixels that move with the camera (a car ahead at the same speed, a static camera) look the
    same unwarped, so the warp cannot explain them; they are dropped.

    Args:
        reprojection: (B, S, H, W) error of each warped source; identity: (B, S, H, W) error of
            each source compared unwarped.
    Returns:
        (B, 1, H, W) float 0/1: min over sources of reprojection < min over sources of identity.
    """
    return (min_reprojection(reprojection) < _identity_min(identity)).to(reprojection.dtype)


def automasked_reprojection(reprojection: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """monodepth2's per-pixel loss: the minimum reprojection error where `identity_automask` keeps
    the pixel, else the (gradient-free) minimum identity error.

    Args:
        reprojection: (B, S, H, W) error of each warped source; identity: (B, S, H, W) error of
            each source compared unwarped.
    Returns:
        (B, 1, H, W) min(min over sources of reprojection, min over sources of identity).
    """
    return torch.minimum(min_reprojection(reprojection), _identity_min(identity))


def source_weight(num_sources: int, mode: str) -> int:
    """What multiplies a photometric term that is a mean over the (target, source) pairs.

    "mean" (masksfm): 1, the pairs averaged. "sum" (the authors): S, which turns that mean into the
    sum over a snippet's S sources of each source's mean (every pair weighs the same in the mean),
    so against the smoothness weight the photometric term counts S times as much.

    Args:
        num_sources: S = snippet length − 1.
        mode: mean | sum.
    Returns:
        1 or S.
    """
    if mode == "mean":
        return 1
    if mode == "sum":
        return num_sources
    raise ValueError(f"unknown combination of sources {mode!r} (mean, sum)")


def scale_weight(scale: int, base: float = 2.0) -> float:
    """Weight divisor of a loss term at `scale` (0 = finest): base^scale (2 for monodepth2, 2.3 the authors)."""
    return 1.0 / math.pow(base, scale)
