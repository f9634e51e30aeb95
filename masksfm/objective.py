"""The training objective of DESIGN §3 for a batch of snippets, composed from the pure functions.

For every (target, source) pair of a snippet, the target is reconstructed from the source with the
target's depth and T_t2s and, bidirectionally, the source from the target with the source's depth
and inv(T_t2s). All pairs and both directions go through one batched warp per scale. What weights
each pixel is `loss.mask`:

- `multimask` (the paper): the combined edge · overlap · blank mask of each frame, computed once
  per pair from the finest-scale depth, reused at every scale, with the paper's normaliser.
- `none`: every pixel, border padding.
- `explainability` (SfMLearner): the pose net's soft mask, target direction only, + regulariser.
- `automask` (monodepth2): per-pixel minimum over sources and the identity auto-mask, target only.
- `multimask+automask`: the paper's masks, times the auto-mask for what moves with the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from masksfm.config import LossConfig
from masksfm.geometry import (
    backproject,
    invert_pose,
    inverse_warp,
    pose_vec_to_mat,
    scale_intrinsics,
    transform_points,
)
from masksfm.losses import (
    below_mean_mask,
    depth_inconsistency,
    explainability_regularizer,
    masked_mean,
    min_reprojection,
    normalize_disparity,
    photometric_error,
    scale_weight,
    smoothness_loss,
)
from masksfm.masks import compute_masks
from masksfm.model import ModelOutput

MULTIMASK = ("multimask", "multimask+automask")


@dataclass
class Objective:
    """The loss of one batch, its terms (detached scalars) and, on request, pictures of sample 0."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    visuals: dict[str, torch.Tensor] | None = None


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def compute_objective(
    out: ModelOutput,
    images: torch.Tensor,
    K: torch.Tensor,
    cfg: LossConfig,
    use_masks: bool = True,
    with_visuals: bool = False,
) -> Objective:
    """The objective for B snippets of L frames.

    Args:
        out: the model's predictions for the snippets.
        images: (B, L, 3, H, W) frames in [0, 1] without colour jitter (what the loss compares).
        K: (B, 3, 3) intrinsics of the frames at (H, W).
        cfg: the loss configuration.
        use_masks: False during the warm-up guard: multimask modes use every pixel, border padding.
        with_visuals: also return pictures of sample 0 (target, warped source, masks).
    Returns:
        An `Objective`.
    """
    b, length, _, h, w = images.shape
    center = length // 2
    num_src = length - 1
    src_idx = [i for i in range(length) if i != center]
    geometric = cfg.mask in MULTIMASK and use_masks

    disparities = normalize_disparity(out.disparities, cfg.dn, length)[: cfg.num_scales]
    disp_full = [_resize(d, (h, w), "bilinear") for d in disparities]

    # Pairs flattened as (B·S): target t repeated per source, the source frames, T_t2s.
    T = pose_vec_to_mat(out.poses.reshape(b * num_src, 6)).to(images.dtype)
    T_inv = invert_pose(T)
    K_pairs = K.repeat_interleave(num_src, dim=0)

    def pair_frames(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B·L, ...) per-frame tensor -> (target per pair, source per pair), each (B·S, ...)."""
        x = x.view(b, length, *x.shape[1:])
        return x[:, center:center + 1].expand(-1, num_src, *x.shape[2:]).flatten(0, 1), x[:, src_idx].flatten(0, 1)

    masks_t = masks_s = None
    if geometric:
        depth_t0, depth_s0 = pair_frames(1.0 / disp_full[0].detach())
        masks_t, masks_s = compute_masks(depth_t0, depth_s0, T.detach(), K_pairs, cfg.repeats, cfg.overlap_tolerance)

    img_t, img_s = pair_frames(images.flatten(0, 1))
    bidirectional = cfg.bidirectional and cfg.mask in ("multimask", "multimask+automask", "none")
    # The floor guard (the default; README, "The collapse and its guard"). With the paper's 0/1
    # masks, a pixel the masks drop gets no photometric gradient, and which pixels drop depends on
    # the predicted depth: a pixel pushed too near leaves the view or hides its neighbours, then
    # stays wrong, and smoothness drags its neighbours after it, until the depth has collapsed to
    # near everywhere (measured: 2-3x worse than a constant depth after 600 steps from scratch; a
    # 300-step unmasked warm-up only delays it). Weighting dropped pixels by `floor` instead of 0
    # keeps them correctable, while the masks still halve the weight of what the geometry calls
    # occluded. Their error is then taken with border padding, as in the unmasked loss.
    # Out of view (the edge mask) is the exception (`loss.floor_out_of_view=false`, the default):
    # such a pixel has nothing to compare with, and half the weight on its border-padded error pulls
    # the bottom rows, out of view in the next frame, towards "far", where they stay in view
    # (measured, 600 steps: abs_rel of the bottom eighth 0.84 with the floor on them, 0.23 without).
    # A pixel pushed out of one source's view still learns from the other source.
    floor = cfg.floor if geometric and cfg.guard == "floor" else 0.0
    padding = "zeros" if geometric and floor == 0.0 else "border"
    # The masks of the warped pairs, in the batched warp's order (both directions when bidirectional).
    combined_pairs = in_view_pairs = None
    if geometric:
        def warped_pairs(key: str) -> torch.Tensor:
            return torch.cat([getattr(masks_t, key), getattr(masks_s, key)]) if bidirectional else getattr(masks_t, key)

        combined_pairs = warped_pairs("combined")
        if floor and not cfg.floor_out_of_view:
            in_view_pairs = warped_pairs("edge")
    photometric = images.new_zeros(())
    smoothness = images.new_zeros(())
    consistency = images.new_zeros(())
    # The depth scale consistency term (loss.consistency_weight) warps each pair's other depth map
    # along with its image: the multimask and unmasked modes, which warp both directions.
    consistent = cfg.consistency_weight > 0 and cfg.mask in ("multimask", "multimask+automask", "none")
    visuals = None

    for scale, disp in enumerate(disparities):
        if cfg.scales == "upsample":
            size, K_s, disp_s = (h, w), K_pairs, disp_full[scale]
        else:
            size = tuple(disp.shape[-2:])
            K_s, disp_s = scale_intrinsics(K_pairs, size[1] / w, size[0] / h), disp
        tgt = _resize(img_t, size, "area")
        src = _resize(img_s, size, "area")
        depth_t, depth_s = pair_frames(1.0 / disp_s)

        if bidirectional:
            warp_from = torch.cat([src, tgt])
            warp_depth = torch.cat([depth_t, depth_s])
            warp_T, warp_K = torch.cat([T, T_inv]), torch.cat([K_s, K_s])
            compare = torch.cat([tgt, src])
        else:
            warp_from, warp_depth, warp_T, warp_K, compare = src, depth_t, T, K_s, tgt
        if consistent:
            other_depth = torch.cat([depth_s, depth_t]) if bidirectional else depth_s
            warped, _ = inverse_warp(torch.cat([warp_from, other_depth], dim=1), warp_depth, warp_T, warp_K,
                                     padding_mode=padding)
            warped, sampled_depth = warped[:, :-1], warped[:, -1:]
            projected_depth = transform_points(warp_T, backproject(warp_depth, warp_K))[:, 2:3]
        else:
            warped, _ = inverse_warp(warp_from, warp_depth, warp_T, warp_K, padding_mode=padding)
        error = photometric_error(compare, warped, cfg.ssim, cfg.rho, cfg.ssim_weight)

        if cfg.mask == "automask" or (cfg.mask == "multimask+automask" and use_masks):
            identity = photometric_error(compare, warp_from, cfg.ssim, cfg.rho, cfg.ssim_weight)
        if cfg.mask == "automask":
            reprojection = error.view(b, num_src, size[0], size[1])
            identity_min = identity.view(b, num_src, size[0], size[1]).min(dim=1, keepdim=True).values + 1e-5
            term = torch.minimum(min_reprojection(reprojection), identity_min).mean()
        elif cfg.mask == "explainability":
            exp = out.explainability[scale]
            exp = exp if cfg.scales == "downsample" else _resize(exp, (h, w), "bilinear")
            term = (exp.flatten(0, 1).unsqueeze(1) * error).mean()
        else:
            mask = None
            if geometric:
                mask = _resize(combined_pairs, size, "nearest")
                if cfg.mask == "multimask+automask":
                    mask = mask * (error < identity + 1e-5).detach().to(mask.dtype)
                if floor:
                    lifted = 1.0 if in_view_pairs is None else _resize(in_view_pairs, size, "nearest")
                    mask = floor * lifted + (1 - floor) * mask
            if cfg.below_mean_mask:
                mask = below_mean_mask(error.detach(), torch.ones_like(error) if mask is None else mask)
            term = masked_mean(error, mask).mean()
            if consistent:
                inconsistency = depth_inconsistency(projected_depth, sampled_depth)
                consistency = consistency + cfg.consistency_weight * masked_mean(inconsistency, mask).mean()
        photometric = photometric + term

        img_frames = _resize(images.flatten(0, 1), tuple(disp.shape[-2:]), "area")
        weight = cfg.smoothness_weight * scale_weight(scale, cfg.smoothness_scale_base)
        smoothness = smoothness + weight * smoothness_loss(disp, img_frames)

        if with_visuals and scale == 0:
            visuals = {"target": tgt[0], "warped": warped[0], "disparity": disparities[0][center]}
            if masks_t is not None:
                visuals.update({f"mask_{k}": getattr(masks_t, k)[0] for k in ("edge", "overlap", "blank", "combined")})
            visuals = {k: v.detach() for k, v in visuals.items()}

    loss = photometric + smoothness + consistency
    terms = {"photometric": photometric.detach(), "smoothness": smoothness.detach()}
    if consistent:
        terms["consistency"] = consistency.detach()
    if cfg.mask == "explainability":
        regularizer = cfg.explainability_weight * explainability_regularizer(out.explainability[: cfg.num_scales])
        loss = loss + regularizer
        terms["explainability"] = regularizer.detach()
    if masks_t is not None:
        for key in ("edge", "overlap", "blank", "combined"):
            terms[f"mask_{key}"] = torch.cat([getattr(masks_t, key), getattr(masks_s, key)]).mean()
    terms["total"] = loss.detach()
    return Objective(loss, terms, visuals)
