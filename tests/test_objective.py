"""The training objective on exact cases: the pairing, the mask strategies, the floor guard (docs/design.md §3, §4)."""

from __future__ import annotations

import pytest
import torch

from masksfm.config import MASK_MODES, load_config
from masksfm.data.dataset import SnippetDataset
from masksfm.data.layout import load_split
from masksfm.losses import depth_inconsistency
from masksfm.objective import (
    MASK_STRATEGIES,
    ModelOutput,
    Objective,
    batch_objective,
    compute_objective,
    floor_weights,
    mask_strategy,
    pair_frames,
    snippet_sources,
    target_frames,
)

from helpers import fixed_batch, mask_setting

H, W = 32, 104


@pytest.fixture(scope="module")
def still_snippet(synth_dataset):
    """A real rendered frame repeated as a 3-frame snippet (B = 1), its intrinsics, and a constant
    depth of 10 m at every scale: what a camera standing still before a wall would see."""
    item = SnippetDataset(load_split(synth_dataset, "train"), H, W, augment=False, seed=0)[0]
    frame = item["images_raw"][1]
    images = frame.expand(3, -1, -1, -1).unsqueeze(0).contiguous()
    disparities = [torch.full((3, 1, H >> s, W >> s), 0.1) for s in range(4)]
    return images, item["K"].unsqueeze(0), disparities


def outputs(disparities, poses, mode):
    explainability = [torch.ones(1, 2, H >> s, W >> s) * 0.5 for s in range(4)] if mode == "explainability" else None
    return ModelOutput(disparities, poses, explainability)


def test_pair_frames_pairs_each_target_with_its_sources_in_pose_order():
    frames = torch.arange(2 * 5).view(10, 1).float()  # B = 2 snippets of L = 5 frames, numbered
    target, source = pair_frames(frames, 5)
    assert target.flatten().tolist() == [2, 2, 2, 2, 7, 7, 7, 7]
    assert source.flatten().tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    images = torch.rand(6, 3, 4, 5)  # B = 2, L = 3: the shape after the frame axis is kept
    target, source = pair_frames(images, 3)
    assert target.shape == source.shape == (4, 3, 4, 5)
    assert torch.equal(target[3], images[4]) and torch.equal(source[3], images[5])


@pytest.mark.parametrize("mode", MASK_MODES)
def test_identical_frames_and_identity_pose_give_zero_photometric_error(mode, still_snippet):
    images, K, disparities = still_snippet
    cfg = load_config(None, mask_setting(mode)).loss
    still = compute_objective(outputs(disparities, torch.zeros(1, 2, 6), mode), images, K, cfg)
    # Not 0 to the bit: the pixel -> point -> pixel round trip in float32 lands ~1e-5 px off.
    assert still.terms["photometric"].item() == pytest.approx(0.0, abs=2e-5)
    assert still.terms["smoothness"].item() == 0.0  # a constant disparity has no gradient
    # The control: the same frames with the camera moving 0.5 m sideways do not match, except under
    # the auto-mask: unwarped, the frames match, so almost every pixel is dropped and weighs its
    # identity error plus the tie offset, 1e-5 at each of the 4 scales.
    moved = torch.tensor([[[0.5, 0, 0, 0, 0, 0], [-0.5, 0, 0, 0, 0, 0]]])
    photometric = compute_objective(outputs(disparities, moved, mode), images, K, cfg).terms["photometric"].item()
    if mode == "automask":
        assert photometric == pytest.approx(4e-5, rel=0.01)
    else:
        assert photometric > 1e-3


def test_floor_weights_exactly():
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)  # kept, dropped, out of view, kept
    in_view = torch.tensor([1.0, 1.0, 0.0, 1.0]).view(1, 1, 1, 4)
    assert floor_weights(mask, 0.25, in_view).flatten().tolist() == [1.0, 0.25, 0.0, 1.0]
    assert floor_weights(mask, 0.25).flatten().tolist() == [1.0, 0.25, 0.25, 1.0]
    assert floor_weights(mask, 0.0, in_view).flatten().tolist() == mask.flatten().tolist()
    assert floor_weights(mask, 1.0, in_view).flatten().tolist() == in_view.flatten().tolist()


def test_a_floor_of_one_weighs_every_pixel_as_the_unmasked_loss(synth_dataset):
    """With floor 1 lifting out-of-view pixels too, every pixel weighs 1 whatever the masks: the
    paper's normaliser Σe / (HW + 1) against the unmasked mean Σe / HW, at every scale (upsample)."""
    dataset = SnippetDataset(load_split(synth_dataset, "train"), H, W, augment=False, seed=0)
    images = torch.stack([dataset[i]["images_raw"] for i in range(2)])
    K = torch.stack([dataset[i]["K"] for i in range(2)])
    torch.manual_seed(0)
    disparities = [0.05 + 0.2 * torch.rand(6, 1, H >> s, W >> s) for s in range(4)]
    poses = torch.tensor([[[0.0, 0.0, -0.4, 0.0, 0.01, 0.0], [0.0, 0.0, 0.4, 0.0, -0.01, 0.0]]]).repeat(2, 1, 1)
    out = ModelOutput(disparities, poses, None)
    unmasked = compute_objective(out, images, K, load_config(None, ["loss.mask=none"]).loss)
    floored = compute_objective(out, images, K, load_config(None, ["loss.floor=1.0",
                                                                   "loss.floor_out_of_view=true"]).loss)
    assert 0 < floored.terms["mask_combined"] < 1  # the masks do drop pixels here
    expected = unmasked.terms["photometric"] * (H * W) / (H * W + 1)
    assert floored.terms["photometric"].item() == pytest.approx(expected.item(), rel=1e-5)
    halved = compute_objective(out, images, K, load_config(None, ["loss.floor=0.5"]).loss)
    assert halved.terms["photometric"] != pytest.approx(expected.item(), rel=1e-3)


def test_every_mask_mode_has_a_strategy():
    assert set(MASK_STRATEGIES) == set(MASK_MODES)
    assert [m for m, s in MASK_STRATEGIES.items() if s.explainability] == ["explainability"]
    assert {m for m, s in MASK_STRATEGIES.items() if s.geometric} == {"multimask", "multimask+automask"}
    assert {m for m, s in MASK_STRATEGIES.items() if not s.both_directions} == {"explainability", "automask"}
    for mode in MASK_MODES:  # the warm-up guard: geometric modes weigh every pixel, the others are unchanged
        expected = "none" if MASK_STRATEGIES[mode].geometric else mode
        assert mask_strategy(mode, use_masks=False).name == expected
        assert mask_strategy(mode).name == mode


@pytest.mark.parametrize("mode, bidirectional, warps_sources", [
    ("none", True, True), ("multimask", True, True), ("none", False, False), ("automask", True, False),
    ("explainability", True, False)])
def test_which_directions_are_warped(mode, bidirectional, warps_sources, synth_dataset):
    """A mode that warps both directions also reconstructs each source from the target, with the
    source's depth: its photometric term changes when only a source frame's depth does."""
    dataset = SnippetDataset(load_split(synth_dataset, "train"), H, W, augment=False, seed=0)
    images, K = dataset[0]["images_raw"].unsqueeze(0), dataset[0]["K"].unsqueeze(0)
    torch.manual_seed(0)
    disparities = [0.05 + 0.2 * torch.rand(3, 1, H >> s, W >> s) for s in range(4)]
    other = [d.clone() for d in disparities]
    for d in other:
        d[0] *= 2  # the first source frame only
    poses = torch.tensor([[[0.0, 0.0, -0.4, 0.0, 0.0, 0.0], [0.0, 0.0, 0.4, 0.0, 0.0, 0.0]]])
    cfg = load_config(None, [*mask_setting(mode), f"loss.bidirectional={str(bidirectional).lower()}",
                             "loss.smoothness_weight=0"]).loss
    a = compute_objective(outputs(disparities, poses, mode), images, K, cfg).terms["photometric"]
    b = compute_objective(outputs(other, poses, mode), images, K, cfg).terms["photometric"]
    assert (a != b) == warps_sources, (a, b)


def test_depth_inconsistency_exactly():
    projected = torch.tensor([10.0, 10.0, 5.0, 0.0]).view(1, 1, 1, 4)
    sampled = torch.tensor([10.0, 20.0, 15.0, 0.0]).view(1, 1, 1, 4)
    assert depth_inconsistency(projected, sampled).flatten().tolist() == pytest.approx([0.0, 1 / 3, 0.5, 0.0])
    # The same at any global scale: it measures the frames' depth scales against each other.
    assert torch.allclose(depth_inconsistency(7 * projected, 7 * sampled), depth_inconsistency(projected, sampled))


@pytest.mark.parametrize("mode", ["none", "multimask"])
def test_the_consistency_term_sees_a_source_at_another_depth_scale(mode, still_snippet):
    """A still camera before a wall 10 m away: with every frame at 10 m the depth maps agree (term 0);
    with the sources at 20 m every pixel disagrees by |10 − 20| / 30 = 1/3, in both directions, at
    each of the 4 scales."""
    images, K, disparities = still_snippet
    cfg = load_config(None, [*mask_setting(mode), "loss.consistency_weight=0.5", "loss.floor_out_of_view=true"]).loss
    still = torch.zeros(1, 2, 6)
    agree = compute_objective(outputs(disparities, still, mode), images, K, cfg)
    assert agree.terms["consistency"].item() == pytest.approx(0.0, abs=1e-5)
    far_sources = [d.clone() for d in disparities]
    for d in far_sources:
        d[[0, 2]] = 0.05  # frames 0 and 2 of the snippet (the sources) at 20 m
    disagree = compute_objective(outputs(far_sources, still, mode), images, K, cfg)
    # masked_mean's +1 in the denominator: Σ w·e / (Σ w + 1) with every weight 1 (nothing is
    # masked for a still camera), so (1/3) · HW / (HW + 1) per pixel grid.
    expected = 0.5 * sum((1 / 3) * (H * W) / (H * W + (mode == "multimask")) for _ in range(4))
    assert disagree.terms["consistency"].item() == pytest.approx(expected, rel=1e-4)
    # Off by default: no term, no extra warp.
    assert "consistency" not in compute_objective(outputs(far_sources, still, mode), images, K,
                                                  load_config(None, mask_setting(mode)).loss).terms


def test_the_velocity_prior_adds_its_term_to_the_loss(still_snippet):
    """`loss.velocity_weight` adds weight x `velocity_change` of the pose net's poses, and only that:
    steps of 1 m then 1.2 m straight ahead change by 0.2² / (1 + 1.2²)."""
    from masksfm.losses import velocity_change
    from masksfm.geometry import pose_vec_to_mat

    images, K, disparities = still_snippet
    poses = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.2, 0.0, 0.0, 0.0]]])  # T_t2s
    plain = compute_objective(outputs(disparities, poses, "multimask"), images, K, load_config(None, []).loss)
    assert "velocity" not in plain.terms
    prior = compute_objective(outputs(disparities, poses, "multimask"), images, K,
                              load_config(None, ["loss.velocity_weight=0.5"]).loss)
    assert prior.terms["velocity"].item() == pytest.approx(0.5 * 0.2**2 / (1 + 1.2**2), rel=1e-5)
    assert prior.terms["velocity"].item() == pytest.approx(
        0.5 * velocity_change(pose_vec_to_mat(poses[0]), 3).item(), rel=1e-6)
    assert prior.loss.item() == pytest.approx(plain.loss.item() + prior.terms["velocity"].item(), rel=1e-6)


def test_target_frames():
    frames = torch.arange(2 * 5).view(10, 1).float()  # B = 2 snippets of L = 5 frames, numbered
    assert target_frames(frames, 5).flatten().tolist() == [2, 7]
    assert target_frames(torch.rand(6, 1, 4, 5), 3).shape == (2, 1, 4, 5)


@pytest.fixture(scope="module")
def moving_snippets(synth_dataset):
    """Two real 3-frame snippets, random disparities and a forward motion: frames that do not match."""
    dataset = SnippetDataset(load_split(synth_dataset, "train"), H, W, augment=False, seed=0)
    images = torch.stack([dataset[i]["images_raw"] for i in range(2)])
    K = torch.stack([dataset[i]["K"] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    disparities = [0.05 + 0.2 * torch.rand(6, 1, H >> s, W >> s, generator=g) for s in range(4)]
    poses = torch.tensor([[[0.0, 0.0, -0.4, 0.0, 0.01, 0.0], [0.0, 0.0, 0.4, 0.0, -0.01, 0.0]]]).repeat(2, 1, 1)
    return images, K, disparities, poses


@pytest.mark.parametrize("mode", ["multimask", "none", "explainability", "multimask+automask"])
def test_summed_sources_weigh_the_photometric_term_by_their_count(mode, moving_snippets):
    images, K, disparities, poses = moving_snippets
    explainability = [torch.full((2, 2, H >> s, W >> s), 0.5) for s in range(4)] if mode == "explainability" else None
    out = ModelOutput(disparities, poses, explainability)
    mean, summed = (compute_objective(out, images, K,
                                      load_config(None, [*mask_setting(mode), f"loss.combine_sources={how}"]).loss)
                    for how in ("mean", "sum"))
    assert summed.terms["photometric"].item() == pytest.approx(2 * mean.terms["photometric"].item(), rel=1e-6)
    assert summed.terms["smoothness"] == mean.terms["smoothness"]


def test_smoothness_on_the_targets_depth_by_hand():
    """Flat grey frames; the target's depth a ramp 1, 2, ... along x, the sources' constant. The
    authors' term, depth of the target only at the finest scale: mean |d depth / dx| = 1. Over every
    frame, the sources' 0 counts too: 1/3."""
    h, w = 8, 12
    images = torch.full((1, 3, 3, h, w), 0.5)
    K = torch.tensor([[[10.0, 0, 5.5], [0, 10.0, 3.5], [0, 0, 1]]])
    depth = torch.arange(1.0, w + 1).expand(h, w)
    disp0 = torch.stack([torch.full((h, w), 0.5), 1 / depth, torch.full((h, w), 0.5)]).unsqueeze(1)
    disparities = [disp0] + [torch.full((3, 1, h >> s, w >> s), 0.5) for s in range(1, 4)]
    out = ModelOutput(disparities, torch.zeros(1, 2, 6), None)
    base = ["loss.num_scales=1", "loss.smoothness_weight=1", "loss.smoothness_on=depth", "loss.image_range=signed"]
    target = compute_objective(out, images, K, load_config(None, base + ["loss.smoothness_frames=target"]).loss)
    every = compute_objective(out, images, K, load_config(None, base + ["loss.smoothness_frames=all"]).loss)
    assert target.terms["smoothness"].item() == pytest.approx(1.0, rel=1e-6)
    assert every.terms["smoothness"].item() == pytest.approx(1 / 3, rel=1e-6)


def test_the_signed_range_is_the_unit_loss_of_2i_minus_1(moving_snippets):
    """`loss.image_range=signed` compares (and warps, and takes the smoothness edges of) 2·I − 1;
    the pictures stay in [0, 1]."""
    images, K, disparities, poses = moving_snippets
    out = outputs(disparities, poses, "multimask")
    signed = compute_objective(out, images, K, load_config(None, ["loss.image_range=signed"]).loss, with_visuals=True)
    by_hand = compute_objective(out, 2 * images - 1, K, load_config(None, []).loss)
    unit = compute_objective(out, images, K, load_config(None, []).loss, with_visuals=True)
    for term in ("photometric", "smoothness"):
        assert signed.terms[term].item() == pytest.approx(by_hand.terms[term].item(), rel=1e-6)
    assert signed.terms["photometric"].item() != pytest.approx(unit.terms["photometric"].item(), rel=1e-2)
    assert torch.allclose(signed.visuals["target"], unit.visuals["target"], atol=1e-6)


def test_the_per_channel_below_mean_mask_normalises_over_channels(moving_snippets):
    """With a threshold nothing reaches (factor 1e9) every pixel is kept, so the term is the paper's
    normaliser: Σe / (HW + 1) per image on the channel mean, Σ_c Σe_c / (3HW + 1) per channel. Every
    pair has the same HW, so the two differ by the factor 3HW / (3HW + 1) · (HW + 1) / HW."""
    images, K, disparities, poses = moving_snippets
    base = ["loss.mask=none", "loss.num_scales=1", "loss.below_mean_mask=true", "loss.below_mean_factor=1e9"]
    channel_mean, per_channel = (compute_objective(outputs(disparities, poses, "none"), images, K,
                                                   load_config(None, base + [f"loss.below_mean_per_channel={flag}"]).loss)
                                 for flag in ("false", "true"))
    n = H * W
    ratio = (3 * n / (3 * n + 1)) * ((n + 1) / n)
    assert per_channel.terms["photometric"].item() == pytest.approx(channel_mean.terms["photometric"].item() * ratio,
                                                                     rel=1e-6)
    # The authors' factor 3 drops only outliers; masksfm's 1 about half.
    authors = compute_objective(outputs(disparities, poses, "none"), images, K, load_config(None, [
        "loss.mask=none", "loss.num_scales=1", "loss.below_mean_mask=true", "loss.below_mean_factor=3",
        "loss.below_mean_per_channel=true"]).loss)
    ours = compute_objective(outputs(disparities, poses, "none"), images, K, load_config(None, [
        "loss.mask=none", "loss.num_scales=1", "loss.below_mean_mask=true"]).loss)
    assert ours.terms["photometric"] < authors.terms["photometric"] <= per_channel.terms["photometric"]


def test_the_authors_below_mean_mask_by_hand():
    """A still camera (the warp is the identity), L1 only: each pixel's error is the colour difference
    of the frames. The sources differ from the grey target by (0.3, 0, 0) on the left half and
    (0.1, 0.1, 0.1) on the right: a channel mean of 0.1 everywhere, so the authors' threshold is
    3 · 0.1 · n / (n + 1) for n pixels, just under 0.3. It drops the left half's red channel only;
    the term is the kept channel errors over their count + 1: 0.1 · 3n/2 / (2n/2 + 3n/2 + 1)."""
    h, w = 8, 12
    n = h * w
    target = torch.full((3, h, w), 0.5)
    source = target.clone()
    source[0, :, : w // 2] += 0.3
    source[:, :, w // 2:] += 0.1
    images = torch.stack([source, target, source]).unsqueeze(0)
    K = torch.tensor([[[10.0, 0, 5.5], [0, 10.0, 3.5], [0, 0, 1]]])
    out = ModelOutput([torch.full((3, 1, h >> s, w >> s), 0.1) for s in range(4)], torch.zeros(1, 2, 6), None)
    cfg = load_config(None, ["loss.mask=none", "loss.num_scales=1", "loss.ssim_weight=0", "loss.bidirectional=false",
                             "loss.below_mean_mask=true", "loss.below_mean_factor=3",
                             "loss.below_mean_per_channel=true"]).loss
    expected = 0.1 * (3 * n / 2) / (n + 3 * n / 2 + 1)
    assert compute_objective(out, images, K, cfg).terms["photometric"].item() == pytest.approx(expected, rel=1e-4)
    # masksfm's form: the mean 0.1 · n / (n + 1) is under every pixel's 0.1: nothing kept, the term is 0.
    cfg.below_mean_factor, cfg.below_mean_per_channel = 1.0, False
    assert compute_objective(out, images, K, cfg).terms["photometric"].item() == pytest.approx(0.0, abs=1e-6)


def test_the_batch_objective_is_the_model_and_compute_objective_with_the_relations(synth_dataset):
    """`batch_objective` (the trainer's step): without relations, exactly `compute_objective` of the
    model's output; with the strides, the loss on the items' middle frames plus the stride term, and
    the stride term scaled by `stride_factor`; with the turns, plus the turn term; with the shifts, plus
    the shift term from the snippets centred one frame back and forward."""
    from masksfm.model import build_model
    from masksfm.objective import item_length, middle_frames, random_turns

    config = load_config(None, [f"data.height={H}", f"data.width={W}", "loss.stride_weight=0.1"])
    assert item_length(3, config.loss) == 5 and item_length(3, load_config(None).loss) == 3
    dataset = SnippetDataset(load_split(synth_dataset, "train"), H, W, 5, augment=False, seed=0)
    items = [dataset[i] for i in (0, 2)]
    wide = {k: torch.stack([item[k] for item in items]) for k in ("images", "images_raw", "K")}
    torch.manual_seed(0)
    model = build_model(config).eval()  # batch norm on running statistics: calls with other sources agree
    narrow = {k: middle_frames(wide[k], 3) if k != "K" else wide[k] for k in wide}
    with torch.no_grad():
        plain = compute_objective(model(narrow["images"]), narrow["images_raw"], narrow["K"], config.loss)
        default_cfg = load_config(None, [f"data.height={H}", f"data.width={W}"]).loss
        same = batch_objective(model, narrow["images"], narrow["images_raw"], narrow["K"], default_cfg, 3)
        assert torch.equal(same.loss, compute_objective(model(narrow["images"]), narrow["images_raw"], narrow["K"],
                                                        default_cfg).loss)
        strided = batch_objective(model, wide["images"], wide["images_raw"], wide["K"], config.loss, 3)
        assert strided.terms["photometric"] == pytest.approx(plain.terms["photometric"].item(), rel=1e-5)
        assert strided.terms["stride"] > 0
        assert strided.loss.item() == pytest.approx(plain.loss.item() + strided.terms["stride"].item(), rel=1e-5)
        off = batch_objective(model, wide["images"], wide["images_raw"], wide["K"], config.loss, 3, stride_factor=0.0)
        assert off.terms["stride"] == 0 and off.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5)
        turns = random_turns(2, 2, 1.0, seed=0)
        assert turns.abs().max() <= torch.pi / 180 and torch.equal(turns, random_turns(2, 2, 1.0, seed=0))
        turned_cfg = load_config(None, [f"data.height={H}", f"data.width={W}", "loss.turn_weight=0.1"]).loss
        turned = batch_objective(model, narrow["images"], narrow["images_raw"], narrow["K"], turned_cfg, 3, turns)
        assert turned.terms["turn"] > 0
        assert turned.loss.item() == pytest.approx(plain.loss.item() + turned.terms["turn"].item(), rel=1e-5)
        # The shifts: the snippets centred one frame back and forward read the target's pairs the other way.
        shift_cfg = load_config(None, [f"data.height={H}", f"data.width={W}", "loss.shift_weight=0.1",
                                       "loss.shift_rotation=true"]).loss
        assert item_length(3, shift_cfg) == 5 and item_length(5, shift_cfg) == 7
        shifted = batch_objective(model, wide["images"], wide["images_raw"], wide["K"], shift_cfg, 3)
        ours = model(narrow["images"]).poses
        back, forward = model(wide["images"][:, :3]).poses, model(wide["images"][:, 2:]).poses
        rotation = torch.cat([(ours[:, 0, 3:] + back[:, 1, 3:]), (ours[:, 1, 3:] + forward[:, 0, 3:])]).abs().sum(-1)
        size = lambda poses: poses[..., :3].norm(dim=-1) + 1e-6  # noqa: E731 (model units; the term's eps)
        distance = torch.cat([(size(ours[:, 0]) / size(back[:, 1])).log(),
                              (size(ours[:, 1]) / size(forward[:, 0])).log()]).abs()
        expected = 0.1 * (rotation.mean() / 0.01 + distance.mean())
        assert shifted.terms["shift"].item() == pytest.approx(expected.item(), rel=1e-3)
        assert shifted.loss.item() == pytest.approx(plain.loss.item() + shifted.terms["shift"].item(), rel=1e-5)
        late = batch_objective(model, wide["images"], wide["images_raw"], wide["K"], shift_cfg, 3, shift_factor=0.0)
        assert late.terms["shift"] == 0
        shift_cfg.shift_rotation = False
        speed = batch_objective(model, wide["images"], wide["images_raw"], wide["K"], shift_cfg, 3)
        assert speed.terms["shift"].item() == pytest.approx(0.1 * distance.mean().item(), rel=1e-3)


def test_the_pose_net_reads_the_other_snippets_in_a_batch_of_their_own_when_asked(synth_dataset):
    """In training mode (batch statistics) the training snippets' poses depend on what else is in the
    pose net's batch: `model.joint_pose_batch=false` gives them exactly the poses of a call without the
    other snippets, and the other snippets those of a call on them alone."""
    from masksfm.model import build_model

    dataset = SnippetDataset(load_split(synth_dataset, "train"), H, W, 5, augment=False, seed=0)
    wide = torch.stack([dataset[i]["images"] for i in (0, 2)])
    narrow, back = wide[:, 1:4], wide[:, :3]
    others = ((back[:, 1], snippet_sources(back)),)
    for joint in (True, False):
        torch.manual_seed(0)
        config = load_config(None, [f"data.height={H}", f"data.width={W}", f"model.joint_pose_batch={joint}"])
        model = build_model(config).train()
        with torch.no_grad():
            alone, back_alone = model(narrow).poses, model(back).poses
            out = model(narrow, others)
        assert torch.equal(out.poses, alone) is not joint
        assert torch.equal(out.other_poses[0], back_alone) is not joint


def test_the_logit_bound_gives_a_saturated_depth_net_its_gradient_back(synth_dataset):
    """A ResNet-18 depth net pushed far out on the sigmoid (every disparity at its maximum, as it
    collapses from scratch) gets no gradient from the photometric loss; with `loss.logit_bound` the
    loss pulls its logits back, and inside the bound the term is 0."""
    from masksfm.model import build_model

    batch = fixed_batch(synth_dataset, H, W)
    torch.manual_seed(0)
    config = load_config(None, [f"data.height={H}", f"data.width={W}", "model.depth=resnet18"])
    model = build_model(config).train()
    bias = [conv.bias for conv in model.depth_net.dispconv]

    def bias_gradient(cfg):
        model.zero_grad()
        batch_objective(model, batch["images"], batch["images_raw"], batch["K"], cfg, 3).loss.backward()
        return torch.stack([b.grad for b in bias]).flatten()

    plain = bias_gradient(config.loss)
    assert plain.abs().min() > 0  # an unsaturated net: the loss moves every scale's output
    bounded_cfg = load_config(None, ["loss.logit_bound=1000"]).loss
    assert torch.equal(bias_gradient(bounded_cfg), plain)  # nothing beyond a bound of 1000: the same gradient
    with torch.no_grad():
        for b in bias:
            b.fill_(40.0)
    assert bias_gradient(config.loss).abs().max() < 1e-9  # saturated: the gradient is gone
    bounded_cfg.logit_bound = 6.0
    out = model(batch["images"])
    assert all((x > 6).all() for x in out.disparity_logits)
    assert (bias_gradient(bounded_cfg) > 1e-3).all()  # gradient descent lowers every scale's logits


def test_the_virtual_motions_are_read_against_the_cameras_they_were_rendered_from(synth_dataset):
    """`loss.virtual_weight`: a reader that gives exactly the moved cameras' motions (computed here from
    the net's poses: the source's centre -Rᵀt moved u times as far, turned by the yaw) costs nothing; one
    that reads every view as the real source (a net blind to how far the camera moved) pays the mean
    |log u| and the rotations' difference; the real pose net's reading trains the pose net and not the depth net."""
    import numpy as np

    from masksfm.geometry import pose_vec_to_mat, yaw_rotation
    from masksfm.model import build_model
    from masksfm.objective import add_virtual_motion, random_virtual_motion

    batch = fixed_batch(synth_dataset, H, W)
    config = load_config(None, [f"data.height={H}", f"data.width={W}", "loss.virtual_weight=0.1"])
    torch.manual_seed(0)
    model = build_model(config).train()
    out = model(batch["images"])
    scales, yaws = random_virtual_motion(2, 2, 0.5, 0.5, seed=3)
    assert torch.equal(scales, random_virtual_motion(2, 2, 0.5, 0.5, seed=3)[0])
    assert ((scales - 1).abs() <= 0.5).all() and (yaws.abs() <= np.radians(0.5)).all() and yaws.abs().min() > 0
    T = pose_vec_to_mat(out.poses.detach().reshape(-1, 6).double())
    T_v2f = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    T_v2f[:, :3, :3] = yaw_rotation(yaws.flatten().double())
    T_v2f[:, :3, 3] = -(T[:, :3, :3].transpose(1, 2) @ T[:, :3, 3:])[..., 0] * scales.flatten().double()[:, None]
    moved = torch.linalg.inv(T_v2f)
    exact = torch.cat([moved[:, :3, 3], torch.stack([torch.zeros(4), -yaws.flatten(), torch.zeros(4)], 1)], 1)

    def term(reader) -> torch.Tensor:
        objective = compute_objective(out, batch["images_raw"], batch["K"], config.loss)
        before = objective.loss.detach()
        add_virtual_motion(objective, out, reader, batch["images"], batch["K"], (scales, yaws), 0.1)
        assert objective.loss.detach() == pytest.approx((before + objective.terms["virtual"]).item(), rel=1e-6)
        return objective.terms["virtual"]

    assert term(lambda target, views: exact.float().view(2, 2, 6)) < 1e-5
    turned = (out.poses.detach().reshape(-1, 6)[:, 3:] - exact[:, 3:].float()).abs().sum(-1)
    blind = 0.1 * (scales.log().abs().mean() + turned.mean() / 0.01)
    assert term(lambda target, views: out.poses.detach()).item() == pytest.approx(blind.item(), rel=1e-3)
    alone = Objective(torch.zeros(()), {})  # the term by itself, for its gradient
    add_virtual_motion(alone, out, lambda t, s: model._poses(t, s)[0], batch["images"], batch["K"], (scales, yaws), 1.0)
    # The moved cameras come from the net's poses without gradient: the real reading is the photometric loss's.
    assert torch.autograd.grad(alone.loss, out.poses, retain_graph=True, allow_unused=True)[0] is None
    alone.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.depth_net.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.pose_net.parameters())
