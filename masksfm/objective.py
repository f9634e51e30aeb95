"""The training objective of docs/design.md §3 for a batch of snippets, composed from the pure functions.

For every (target, source) pair of a snippet (`pair_frames`), the target is reconstructed from the
source with the target's depth and T_t2s and, for the modes that warp both directions, the source
from the target with the source's depth and inv(T_t2s). All pairs and directions go through one
batched warp per scale. What weights each pixel is the `loss.mask` mode, a `MaskStrategy`:

- `multimask` (the paper): the combined edge · overlap · blank mask of each pair, computed once per
  batch from the finest-scale depth, reused at every scale, with the paper's normaliser; pixels the
  masks drop keep the weight of the floor guard (`floor_weights`).
- `none`: every pixel, border padding.
- `explainability` (SfMLearner): the pose net's soft mask, target direction only, + regulariser.
- `automask` (monodepth2): per-pixel minimum over sources and the identity auto-mask, target only.
- `multimask+automask`: the paper's masks, times the auto-mask for what moves with the camera.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from masksfm.config import LossConfig
from masksfm.geometry import invert_pose, inverse_warp, moved_views, pose_vec_to_mat, reproject, scale_intrinsics, turn_frames
from masksfm.losses import (
    automasked_reprojection,
    below_mean_mask,
    depth_inconsistency,
    explainability_regularizer,
    identity_automask,
    logit_excess,
    loss_image_range,
    masked_mean,
    motion_reading_error,
    normalize_disparity,
    photometric_error,
    scale_weight,
    shift_inconsistency,
    smoothness_loss,
    source_weight,
    stride_inconsistency,
    turn_inconsistency,
    velocity_change,
)
from masksfm.masks import compute_masks
from masksfm.networks.layers import upsample_bilinear
from masksfm.networks.pose import POSE_SCALE

MASK_NAMES = ("edge", "overlap", "blank", "combined")


class ModelOutput(NamedTuple):
    """What the nets predict for a batch of snippets (B snippets of L frames, S = L − 1 sources).

    disparities: per scale, finest first, (B·L, 1, h, w), frames of a snippet consecutive.
    poses: (B, S, 6) [t, axis-angle] of T_t2s for each source in snippet order (target skipped).
    explainability: per scale (B, S, h, w) in (0, 1), or None.
    other_poses: per other snippet given to `SfMModel.forward`, (B, S, 6) the pose net's T_t2s there.
    disparity_logits: what the depth net passed through its activation to give `disparities`, same
        shapes (for `loss.logit_bound`), or None.
    """

    disparities: list[torch.Tensor]
    poses: torch.Tensor
    explainability: list[torch.Tensor] | None
    other_poses: tuple[torch.Tensor, ...] = ()
    disparity_logits: list[torch.Tensor] | None = None


@dataclass
class Objective:
    """The loss of one batch, its terms (detached scalars) and, on request, pictures of sample 0."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    visuals: dict[str, torch.Tensor] | None = None


def pair_frames(x: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-frame tensor as per-pair tensors: the target and the source of each (target, source) pair.

    Pair b·S + s is snippet b's target (frame L // 2) with its s-th source (the other frames in
    snippet order), the order of `ModelOutput.poses` flattened.

    Args:
        x: (B·L, ...) per frame, the L frames of a snippet consecutive.
        length: L.
    Returns:
        (target of each pair, source of each pair), each (B·S, ...).
    """
    center, num_src = length // 2, length - 1
    x = x.view(-1, length, *x.shape[1:])
    sources = [i for i in range(length) if i != center]
    return x[:, center:center + 1].expand(-1, num_src, *x.shape[2:]).flatten(0, 1), x[:, sources].flatten(0, 1)


def target_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """A per-frame tensor's target frames (frame L // 2 of each snippet).

    Args:
        x: (B·L, ...) per frame, the L frames of a snippet consecutive.
        length: L.
    Returns:
        (B, ...).
    """
    return x.view(-1, length, *x.shape[1:])[:, length // 2]


def floor_weights(mask: torch.Tensor, floor: float, in_view: torch.Tensor | None = None) -> torch.Tensor:
    """The floor guard: a pixel the masks drop weighs `floor` instead of 0; a kept pixel still weighs 1.

    With 0/1 masks a dropped pixel gets no photometric gradient, and which pixels drop depends on
    the predicted depth, so a depth pushed wrong can stay wrong until it collapses (docs/design.md §4); the
    floor keeps such pixels correctable. A pixel out of view (`in_view` 0) has nothing to compare
    with and is not lifted: it keeps the mask's weight.

    Args:
        mask: (N, 1, H, W) mask weights in [0, 1].
        floor: the weight of a dropped pixel, in [0, 1].
        in_view: (N, 1, H, W) 0/1, 1 where the pixel lands inside the other view; None: every pixel.
    Returns:
        (N, 1, H, W) floor·in_view + (1 − floor)·mask.
    """
    lifted = 1.0 if in_view is None else in_view
    return floor * lifted + (1 - floor) * mask


@dataclass
class Reconstruction:
    """One scale's warped pairs (target direction first, then the reverse one if warped), N of them."""

    scale: int
    snippets: int  # B
    error: torch.Tensor  # (N, 1, h, w) photometric error of each reconstruction
    compare: torch.Tensor  # (N, 3, h, w) the frames reconstructed
    unwarped: torch.Tensor  # (N, 3, h, w) the frames warped into them, as they are (the identity auto-mask's)
    warped: torch.Tensor  # (N, 3, h, w) the reconstructions
    masks: torch.Tensor | None = None  # (N, 1, h, w) the paper's combined mask of each pair
    in_view: torch.Tensor | None = None  # (N, 1, h, w) the edge mask, where the floor spares out-of-view pixels
    explainability: torch.Tensor | None = None  # (B, S, h, w) the pose net's mask at this scale
    depth_inconsistency: torch.Tensor | None = None  # (N, 1, h, w) with loss.consistency_weight: `depth_inconsistency`
    channel_error: torch.Tensor | None = None  # (N, 3, h, w) each channel's error (`error` is their mean), per-channel below-mean mask only


# The photometric error the objective uses: `losses.photometric_error`, or its torch.compile'd twin
# once `use_compiled_photometric_error` was called (train.compile; process-wide).
_photometric_error: Callable[..., torch.Tensor] = photometric_error


def use_compiled_photometric_error() -> None:
    """Compile the photometric error with torch.compile (inductor) for the rest of the process.

    It is most of the objective's time and a chain of elementwise operations that inductor fuses
    into a few loops (forward and backward ~3x faster on the CPU; `bench/train_step.py`). Compiling
    needs a C++ compiler (CPU) or Triton (CUDA) and takes seconds per image size; where it fails, one
    warning says so and the eager function serves from then on, with the same values.
    """
    global _photometric_error
    if _photometric_error is not photometric_error:
        return
    compiled = torch.compile(photometric_error, dynamic=False)

    def compiled_or_eager(*args, **kwargs):
        global _photometric_error
        try:
            return compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: eager computes the same values
            text = str(error).strip()
            message = text.splitlines()[0][:200] if text else type(error).__name__
            print(f"warning: torch.compile failed ({message}); the photometric error runs eagerly", file=sys.stderr)
            _photometric_error = photometric_error
            return photometric_error(*args, **kwargs)

    _photometric_error = compiled_or_eager


def _masked_term(error: torch.Tensor, weights: torch.Tensor | None, cfg: LossConfig,
                 channel_error: torch.Tensor | None = None) -> torch.Tensor:
    if cfg.below_mean_mask:
        compare = None if channel_error is None else channel_error.detach()
        weights = below_mean_mask(error.detach(), torch.ones_like(error) if weights is None else weights,
                                  cfg.below_mean_factor, compare)
        if channel_error is not None:  # the weights are per channel, so is the mean (the authors' normaliser)
            error = channel_error
    return masked_mean(error, weights).mean()


def _identity_error(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    return _photometric_error(rec.compare, rec.unwarped, cfg.ssim, cfg.rho, cfg.ssim_weight)


def _guarded(weights: torch.Tensor, rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    floor = guard_floor(cfg)
    return floor_weights(weights, floor, rec.in_view) if floor else weights


def _every_pixel(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    return _masked_term(rec.error, None, cfg, rec.channel_error)


def _multimask(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    return _masked_term(rec.error, _guarded(rec.masks, rec, cfg), cfg, rec.channel_error)


def _multimask_automask(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    # Each pair on its own (a "source" dimension of 1), as the paper's masks are per pair.
    moving = identity_automask(rec.error, _identity_error(rec, cfg))
    return _masked_term(rec.error, _guarded(rec.masks * moving, rec, cfg), cfg, rec.channel_error)


def _explainability(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    return (rec.explainability.flatten(0, 1).unsqueeze(1) * rec.error).mean()


def _automask(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    batch_shape = (rec.snippets, -1, *rec.error.shape[-2:])
    return automasked_reprojection(rec.error.view(batch_shape), _identity_error(rec, cfg).view(batch_shape)).mean()


@dataclass(frozen=True)
class MaskStrategy:
    """What one `loss.mask` mode does."""

    name: str
    term: Callable[[Reconstruction, LossConfig], torch.Tensor]  # one scale's photometric term, a scalar
    geometric: bool = False  # weighs pixels by the paper's masks (and so the floor guard applies)
    both_directions: bool = False  # with loss.bidirectional, also reconstructs each source from the target
    explainability: bool = False  # needs the pose net's explainability decoder, and adds its regulariser


MASK_STRATEGIES = {
    strategy.name: strategy
    for strategy in (
        MaskStrategy("multimask", _multimask, geometric=True, both_directions=True),
        MaskStrategy("none", _every_pixel, both_directions=True),
        MaskStrategy("explainability", _explainability, explainability=True),
        MaskStrategy("automask", _automask),
        MaskStrategy("multimask+automask", _multimask_automask, geometric=True, both_directions=True),
    )
}


def mask_strategy(mode: str, use_masks: bool = True) -> MaskStrategy:
    """The strategy of `loss.mask` = `mode`; during the warm-up guard (`use_masks` False) the
    geometric modes use every pixel, as `none`."""
    strategy = MASK_STRATEGIES[mode]
    return strategy if use_masks or not strategy.geometric else MASK_STRATEGIES["none"]


def guard_floor(cfg: LossConfig) -> float:
    """The weight of dropped pixels under `cfg`'s guard for a geometric mode (0: no floor)."""
    return cfg.floor if cfg.guard == "floor" else 0.0


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return upsample_bilinear(x, size)
    return F.interpolate(x, size=size, mode=mode)


@dataclass
class _Pairs:
    """What the warps of every scale share: the pairs' frames, poses and intrinsics at full size,
    and the masks, in the batched warp's order (target direction, then the reverse one if warped)."""

    snippets: int
    length: int
    target: torch.Tensor  # (B·S, 3, H, W)
    source: torch.Tensor  # (B·S, 3, H, W)
    T: torch.Tensor  # (B·S, 4, 4) T_t2s, or (2·B·S, 4, 4) with inv(T_t2s) after it when both directions
    K: torch.Tensor  # (B·S, 3, 3) at (H, W)
    both_directions: bool
    padding: str
    masks: torch.Tensor | None = None
    in_view: torch.Tensor | None = None
    consistency: bool = False  # also warp the other depth map (loss.consistency_weight > 0)
    _frames: dict = field(default_factory=dict)

    def frames(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The frames reconstructed, the frames warped into them and their intrinsics at `size`, in the
        warp's order: computed once per size, so the 4 upsampled scales share one copy."""
        if size not in self._frames:
            h, w = self.target.shape[-2:]
            K = self.K if size == (h, w) else scale_intrinsics(self.K, size[1] / w, size[0] / h)
            tgt, src = _resize(self.target, size, "area"), _resize(self.source, size, "area")
            if self.both_directions:
                self._frames[size] = torch.cat([tgt, src]), torch.cat([src, tgt]), torch.cat([K, K])
            else:
                self._frames[size] = tgt, src, K
        return self._frames[size]


def consistency_term(rec: Reconstruction, cfg: LossConfig) -> torch.Tensor:
    """One scale's depth scale consistency (SC-SfMLearner), weighted as the photometric term's pixels:
    by the paper's masks under the floor guard where the mode uses them, every pixel otherwise."""
    weights = None if rec.masks is None else _guarded(rec.masks, rec, cfg)
    return cfg.consistency_weight * masked_mean(rec.depth_inconsistency, weights).mean()


def _reconstruct(pairs: _Pairs, scale: int, disp: torch.Tensor, disp_full: torch.Tensor, cfg: LossConfig,
                 explainability: torch.Tensor | None) -> Reconstruction:
    """Warp every pair at one scale: at full size (`loss.scales=upsample`) or at the scale's own."""
    if cfg.scales == "upsample":
        disp_s = disp_full
        explainability = None if explainability is None else _resize(explainability, disp_full.shape[-2:], "bilinear")
    else:
        disp_s = disp
    size = tuple(disp_s.shape[-2:])
    compare, unwarped, K_w = pairs.frames(size)
    depth_t, depth_s = pair_frames(1.0 / disp_s, pairs.length)
    depth = torch.cat([depth_t, depth_s]) if pairs.both_directions else depth_t
    inconsistency = None
    if pairs.consistency:
        # The other frame's depth map is warped along with its image (one more channel, one warp).
        other_depth = torch.cat([depth_s, depth_t]) if pairs.both_directions else depth_s
        warped, _ = inverse_warp(torch.cat([unwarped, other_depth], dim=1), depth, pairs.T, K_w,
                                 padding_mode=pairs.padding)
        warped, sampled = warped[:, :-1], warped[:, -1:]
        inconsistency = depth_inconsistency(reproject(depth, pairs.T, K_w)[1], sampled)
    else:
        warped, _ = inverse_warp(unwarped, depth, pairs.T, K_w, padding_mode=pairs.padding)
    channel_error = None
    if cfg.below_mean_mask and cfg.below_mean_per_channel:
        channel_error = _photometric_error(compare, warped, cfg.ssim, cfg.rho, cfg.ssim_weight, per_channel=True)
        error = channel_error.mean(dim=1, keepdim=True)
    else:
        error = _photometric_error(compare, warped, cfg.ssim, cfg.rho, cfg.ssim_weight)
    return Reconstruction(
        scale, pairs.snippets, error, compare, unwarped, warped, depth_inconsistency=inconsistency,
        channel_error=channel_error,
        masks=None if pairs.masks is None else _resize(pairs.masks, size, "nearest"),
        in_view=None if pairs.in_view is None else _resize(pairs.in_view, size, "nearest"),
        explainability=explainability)


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
        images: (B, L, 3, H, W) frames in [0, 1] without colour jitter (what the loss compares, in the
            range of `loss.image_range`).
        K: (B, 3, 3) intrinsics of the frames at (H, W).
        cfg: the loss configuration.
        use_masks: False during the warm-up guard: multimask modes use every pixel, border padding.
        with_visuals: also return pictures of sample 0 (target, warped source, masks).
    Returns:
        An `Objective`.
    """
    strategy = mask_strategy(cfg.mask, use_masks)
    images = loss_image_range(images, cfg.image_range)
    b, length, _, h, w = images.shape
    num_src = length - 1
    disparities = normalize_disparity(out.disparities, cfg.dn, length)[: cfg.num_scales]
    disp_full = [_resize(d, (h, w), "bilinear") for d in disparities]

    T = pose_vec_to_mat(out.poses.reshape(b * num_src, 6)).to(images.dtype)
    K_pairs = K.repeat_interleave(num_src, dim=0)
    both = cfg.bidirectional and strategy.both_directions
    floor = guard_floor(cfg) if strategy.geometric else 0.0
    img_t, img_s = pair_frames(images.flatten(0, 1), length)
    # Without the floor a masked-out pixel samples zeros; with it, its error counts, so border
    # padding as in the unmasked loss.
    pairs = _Pairs(b, length, img_t, img_s, torch.cat([T, invert_pose(T)]) if both else T, K_pairs, both,
                   padding="zeros" if strategy.geometric and floor == 0.0 else "border",
                   consistency=cfg.consistency_weight > 0 and strategy.both_directions)
    masks_t = masks_s = None
    if strategy.geometric:
        depth_t, depth_s = pair_frames(1.0 / disp_full[0].detach(), length)
        masks_t, masks_s = compute_masks(depth_t, depth_s, T.detach(), K_pairs, cfg.repeats, cfg.overlap_tolerance)

        def warped_order(key: str) -> torch.Tensor:
            return torch.cat([getattr(masks_t, key), getattr(masks_s, key)]) if both else getattr(masks_t, key)

        pairs.masks = warped_order("combined")
        if floor and not cfg.floor_out_of_view:
            pairs.in_view = warped_order("edge")

    photometric = images.new_zeros(())
    smoothness = images.new_zeros(())
    consistency = images.new_zeros(())
    visuals = None
    for scale, disp in enumerate(disparities):
        explainability = out.explainability[scale] if strategy.explainability else None
        rec = _reconstruct(pairs, scale, disp, disp_full[scale], cfg, explainability)
        photometric = photometric + source_weight(num_src, cfg.combine_sources) * strategy.term(rec, cfg)
        if pairs.consistency:
            consistency = consistency + consistency_term(rec, cfg)

        img_frames = _resize(images.flatten(0, 1), tuple(disp.shape[-2:]), "area")
        smooth_disp = disp
        if cfg.smoothness_frames == "target":
            smooth_disp, img_frames = target_frames(disp, length), target_frames(img_frames, length)
        weight = cfg.smoothness_weight * scale_weight(scale, cfg.smoothness_scale_base)
        smoothness = smoothness + weight * smoothness_loss(smooth_disp, img_frames, cfg.smoothness_on)

        if with_visuals and scale == 0:
            # Pictures in [0, 1] whatever range the loss compares in.
            unit = (lambda x: x) if cfg.image_range == "unit" else (lambda x: (x + 1) / 2)
            visuals = {"target": unit(rec.compare[0]), "warped": unit(rec.warped[0]),
                       "disparity": disparities[0][length // 2]}
            if masks_t is not None:
                visuals.update({f"mask_{k}": getattr(masks_t, k)[0] for k in MASK_NAMES})
            visuals = {k: v.detach() for k, v in visuals.items()}

    loss = photometric + smoothness + consistency
    terms = {"photometric": photometric.detach(), "smoothness": smoothness.detach()}
    if pairs.consistency:
        terms["consistency"] = consistency.detach()
    if cfg.logit_bound > 0 and out.disparity_logits is not None:
        bound = cfg.logit_bound_weight * sum(logit_excess(x, cfg.logit_bound).mean()
                                             for x in out.disparity_logits[: cfg.num_scales])
        loss = loss + bound
        terms["logit_bound"] = bound.detach()
    if cfg.velocity_weight > 0:
        velocity = cfg.velocity_weight * velocity_change(T, length).mean()
        loss = loss + velocity
        terms["velocity"] = velocity.detach()
    if strategy.explainability:
        regularizer = cfg.explainability_weight * explainability_regularizer(out.explainability[: cfg.num_scales])
        loss = loss + regularizer
        terms["explainability"] = regularizer.detach()
    if masks_t is not None:
        for key in MASK_NAMES:
            terms[f"mask_{key}"] = torch.cat([getattr(masks_t, key), getattr(masks_s, key)]).mean()
    terms["total"] = loss.detach()
    return Objective(loss, terms, visuals)


def snippet_sources(images: torch.Tensor) -> torch.Tensor:
    """The sources of snippets (B, L, ...): every frame but the middle one, (B, L − 1, ...)."""
    center = images.shape[1] // 2
    return torch.cat([images[:, :center], images[:, center + 1:]], dim=1)


def middle_frames(images: torch.Tensor, length: int) -> torch.Tensor:
    """The middle `length` frames of snippets (B, L', ...)."""
    start = (images.shape[1] - length) // 2
    return images[:, start:start + length]


def turned_sources(images: torch.Tensor, K: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """The sources of snippets (B, L, 3, H, W) with intrinsics K (B, 3, 3), each turned by turns
    (B, L − 1) radians about its camera's vertical axis (`geometry.turn_frames`): (B, L − 1, 3, H, W)."""
    sources = snippet_sources(images)
    num_src = sources.shape[1]
    turned = turn_frames(sources.flatten(0, 1), K.repeat_interleave(num_src, dim=0), turns.flatten())
    return turned.unflatten(0, sources.shape[:2])


def add_pose_consistency(objective: Objective, out: ModelOutput, cfg: LossConfig, turns: torch.Tensor | None,
                         stride_factor: float = 1.0, shift_factor: float = 1.0) -> None:
    """Add the pose net's consistency terms to the objective and its terms, each with rotations in the
    net's output units (÷ POSE_SCALE) plus distances' log-ratios: `loss.stride_weight` × `stride_factor`
    × the mean `stride_inconsistency` (`stride`; the wide snippet's poses are the first of
    `out.other_poses`), `loss.shift_weight` × `shift_factor` × the mean `shift_inconsistency` over the
    snippet's pairs with its neighbours, its distances' term, and its rotations' with
    `loss.shift_rotation` (`shift`; the snippets shifted one frame back and forward come next), and
    `loss.turn_weight` × the mean `turn_inconsistency` (`turn`; the turned sources' poses are the last,
    `turns` (B, S) radians)."""
    added = {}
    others = list(out.other_poses)
    if cfg.stride_weight > 0:
        rotation, distance = stride_inconsistency(out.poses.reshape(-1, 6), others.pop(0).reshape(-1, 6))
        added["stride"] = stride_factor * cfg.stride_weight * (rotation.mean() / POSE_SCALE + distance.mean())
    if cfg.shift_weight > 0:
        # Sources in snippet order: the one before the target is S/2 − 1, the one after S/2. The snippet
        # centred one frame back reads the pair target → its next frame (our target) at S/2; the one
        # centred one frame forward reads its previous frame (our target) at S/2 − 1.
        back, forward = others.pop(0), others.pop(0)
        half = out.poses.shape[1] // 2
        ours = torch.cat([out.poses[:, half - 1], out.poses[:, half]])
        theirs = torch.cat([back[:, half], forward[:, half - 1]])
        rotation, distance = shift_inconsistency(ours, theirs)
        rotation = rotation.mean() / POSE_SCALE if cfg.shift_rotation else 0.0
        added["shift"] = shift_factor * cfg.shift_weight * (rotation + distance.mean())
    if turns is not None:
        inconsistency = turn_inconsistency(out.poses[..., 3:].reshape(-1, 3), others.pop(0)[..., 3:].reshape(-1, 3),
                                           turns.flatten())
        added["turn"] = cfg.turn_weight * inconsistency.mean() / POSE_SCALE
    for name, term in added.items():
        objective.loss = objective.loss + term
        objective.terms[name] = term.detach()
    if added:
        objective.terms["total"] = objective.loss.detach()


def add_virtual_motion(objective: Objective, out: ModelOutput, read_poses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       images: torch.Tensor, K: torch.Tensor, virtual: tuple[torch.Tensor, torch.Tensor], weight: float) -> None:
    """Add the pose net's reading of known motions to the objective (`loss.virtual_weight`, term
    `virtual`): each snippet's target re-rendered with the depth net's depth (`geometry.moved_views`,
    without gradient) from a camera moved u × as far as the pose net reads the real source to be, in
    its direction, and turned about its vertical axis; the pose net reads (target, views) as a snippet
    of its own and must give those motions (`losses.motion_reading_error`: rotations in the net's
    output units, ÷ POSE_SCALE, plus the distances' log-ratio). A net that reads its distances from
    what the frames look like rather than from how far they moved reads every u alike.

    Args:
        objective: the batch's objective, its loss and terms added to in place.
        out: the model's output on `images` (its finest disparities and its poses, read without gradient).
        read_poses: the pose net, (targets (B, 3, H, W), sources (B, S, 3, H, W)) -> (B, S, 6).
        images: (B, L, 3, H, W) the snippets as the nets see them; K: (B, 3, 3).
        virtual: (scales (B, S), yaws (B, S) radians), `random_virtual_motion`.
        weight: `loss.virtual_weight`.
    """
    scales, yaws = virtual
    b, length = images.shape[:2]
    num_src = length - 1
    target = images[:, length // 2]
    with torch.no_grad():
        depth = 1.0 / out.disparities[0].unflatten(0, (b, length))[:, length // 2]
        T = pose_vec_to_mat(out.poses.reshape(-1, 6))
        # The real source's camera centre in the target's camera, -Rᵀt, moved u times as far.
        centre = -(T[:, :3, :3].transpose(-1, -2) @ T[:, :3, 3:])[..., 0] * scales.reshape(-1, 1)
        views, T_t2v = moved_views(target.repeat_interleave(num_src, 0), depth.repeat_interleave(num_src, 0),
                                   centre, yaws.flatten(), K.repeat_interleave(num_src, 0))
    poses = read_poses(target, views.unflatten(0, (b, num_src)))
    rotation, distance = motion_reading_error(poses.reshape(-1, 6), T_t2v)
    term = weight * (rotation.mean() / POSE_SCALE + distance.mean())
    objective.loss = objective.loss + term
    objective.terms["virtual"] = term.detach()
    objective.terms["total"] = objective.loss.detach()


def random_virtual_motion(batch: int, num_sources: int, spread: float, degrees: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, yaws), each (batch, num_sources), of `add_virtual_motion`'s moved cameras: scales
    uniform in 1 ± `spread`, yaws in ± `degrees` (radians), drawn from `seed` alone (float32, CPU)."""
    generator = torch.Generator().manual_seed(seed)
    uniform = 2 * torch.rand(2, batch, num_sources, generator=generator, dtype=torch.float64) - 1
    return (1 + spread * uniform[0]).float(), (uniform[1] * math.radians(degrees)).float()


def item_length(snippet_length: int, cfg: LossConfig) -> int:
    """Frames per training item: the snippet's; with `loss.stride_weight` twice the snippet less one
    (the snippet in the middle, its every-other-frame twin over the whole item); with
    `loss.shift_weight` at least the snippet and one frame on each side (its neighbours' snippets)."""
    length = snippet_length
    if cfg.stride_weight > 0:
        length = max(length, 2 * snippet_length - 1)
    if cfg.shift_weight > 0:
        length = max(length, snippet_length + 2)
    return length


def random_turns(batch: int, num_sources: int, degrees: float, seed: int) -> torch.Tensor:
    """(batch, num_sources) turns of the sources (`loss.turn_weight`), radians, uniform in ± `degrees`,
    drawn from `seed` alone (float32, CPU)."""
    generator = torch.Generator().manual_seed(seed)
    limit = math.radians(degrees)
    return ((2 * torch.rand(batch, num_sources, generator=generator, dtype=torch.float64) - 1) * limit).float()


def batch_objective(net: Callable[..., ModelOutput], images: torch.Tensor, images_raw: torch.Tensor, K: torch.Tensor,
                    cfg: LossConfig, snippet_length: int, turns: torch.Tensor | None = None,
                    stride_factor: float = 1.0, shift_factor: float = 1.0, use_masks: bool = True,
                    with_visuals: bool = False, virtual: tuple[torch.Tensor, torch.Tensor] | None = None) -> Objective:
    """The objective of a training batch: the model on its items, `compute_objective`, and the pose
    net's relations (`add_pose_consistency`): what the trainer's step and `bench/train_step.py` compute.

    Args:
        net: the model (`SfMModel`, or its DDP wrapper): called as `net(images)`, or
            `net(images, other_snippets)` when the relations need the pose net on more snippets.
        images, images_raw: (B, F, 3, H, W) the items as the nets and the loss see them, F =
            `item_length(snippet_length, cfg)`.
        K: (B, 3, 3) intrinsics at (H, W).
        cfg: the loss configuration.
        snippet_length: L, the snippet the loss is on (the items' middle L frames).
        turns: (B, L − 1) radians for `loss.turn_weight` (`random_turns`), else None.
        stride_factor, shift_factor: multiply `loss.stride_weight`, `loss.shift_weight` (0 before their
            `from_step`).
        use_masks, with_visuals: as for `compute_objective`.
        virtual: (scales, yaws) (B, L − 1) for `loss.virtual_weight` (`random_virtual_motion`), else None.
    """
    other_snippets = []
    center = snippet_length // 2
    if cfg.stride_weight > 0:
        # The items span twice the snippet: its middle is the snippet, every other frame the wide one.
        wide = middle_frames(images, 2 * snippet_length - 1)[:, ::2]
        other_snippets.append((wide[:, center], snippet_sources(wide)))
    if cfg.shift_weight > 0:
        around = middle_frames(images, snippet_length + 2)
        for shifted in (around[:, :snippet_length], around[:, 2:]):
            other_snippets.append((shifted[:, center], snippet_sources(shifted)))
    images, images_raw = (middle_frames(x, snippet_length) for x in (images, images_raw))
    if turns is not None:
        other_snippets.append((images[:, center], turned_sources(images, K, turns)))
    out = net(images, tuple(other_snippets)) if other_snippets else net(images)
    objective = compute_objective(out, images_raw, K, cfg, use_masks=use_masks, with_visuals=with_visuals)
    add_pose_consistency(objective, out, cfg, turns, stride_factor, shift_factor)
    if virtual is not None:
        model = getattr(net, "module", net)  # the pose net itself, not a DDP wrapper's forward
        add_virtual_motion(objective, out, lambda t, s: model._poses(t, s)[0], images, K, virtual, cfg.virtual_weight)
    return objective
