"""Training snippets: exact intrinsics through resize / crop / flip, colour jitter, reproducible and
resumable sharded batches. The frames are ramps whose values encode their pixel coordinates, so
where a pixel lands can be read off the augmented image."""

from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from masksfm.data import layout as L
from masksfm.data.dataset import (
    Augmentation,
    ColourJitter,
    SnippetBatchSampler,
    SnippetDataset,
    augment_snippet,
    colour_jitter,
    draw_augmentation,
    make_loader,
    resize_and_crop,
    turn_about_vertical,
)
from masksfm.errors import MasksfmError
from masksfm.geometry import flip_intrinsics, scale_intrinsics

H0, W0 = 30, 40  # stored frames
H, W = 24, 32  # training size
K0 = np.array([[35.0, 0.0, 19.2], [0.0, 36.0, 14.7], [0.0, 0.0, 1.0]])
SLOPE_U, SLOPE_V, OFFSET = 3.0, 4.0, 20.0


def ramp_frame(frame_id: int) -> np.ndarray:
    """R = 3u + 20, G = 4v + 20 (the pixel's coordinates), B = 10·frame + 50 (which frame)."""
    v, u = np.mgrid[0:H0, 0:W0].astype(np.float64)
    rgb = np.stack([SLOPE_U * u + OFFSET, SLOPE_V * v + OFFSET, np.full_like(u, 10 * frame_id + 50)], -1)
    return rgb.round().astype(np.uint8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Scenes of 5, 4 and 2 frames (the last too short for a 3-frame snippet) and a train split."""
    root = tmp_path_factory.mktemp("data")
    for name, n in (("a", 5), ("b", 4), ("c", 2)):
        L.write_scene(root, name, [ramp_frame(i) for i in range(n)], K0)
    L.write_split(root, "train", ["a", "b", "c"])
    L.write_split(root, "short", ["c"])
    return root


@pytest.fixture(scope="module")
def scenes(data_root):
    return L.load_split(data_root, "train")


def source_coordinates(K_out: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel, the stored-frame pixel on the same ray (x mirrored when flipped)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.linalg.inv(K_out) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    if flip:
        rays[0] *= -1
    pixels = K0 @ rays
    return (pixels[0] / pixels[2]).reshape(H, W), (pixels[1] / pixels[2]).reshape(H, W)


def landing_error(image: torch.Tensor, K_out: torch.Tensor, flip: bool) -> float:
    """Largest distance (stored pixels) between where the image's values say a pixel came from and
    where K says it came from, over pixels well inside the stored frame."""
    rgb = image.permute(1, 2, 0).double().numpy() * 255
    u_seen, v_seen = (rgb[..., 0] - OFFSET) / SLOPE_U, (rgb[..., 1] - OFFSET) / SLOPE_V
    u_k, v_k = source_coordinates(K_out.double().numpy(), flip)
    # The resampling filter is cut at the frame border; compare where it is whole.
    inside = (u_k > 2) & (u_k < W0 - 3) & (v_k > 2) & (v_k < H0 - 3)
    assert inside.mean() > 0.5
    return float(max(np.abs(u_seen - u_k)[inside].max(), np.abs(v_seen - v_k)[inside].max()))


class TestGeometry:
    def test_plain_resize_intrinsics_and_pixels(self):
        frames = np.stack([ramp_frame(0), ramp_frame(1)])
        images, images_raw, K = augment_snippet(frames, K0, H, W, None)
        assert images.shape == (2, 3, H, W) and images.dtype == torch.float32 and images is images_raw
        assert K.dtype == torch.float32
        assert torch.equal(K, torch.from_numpy(scale_intrinsics(K0, W / W0, H / H0)).float())
        expected = np.array(Image.fromarray(frames[1]).resize((W, H), Image.Resampling.BILINEAR))
        assert torch.equal(images[1], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
        assert landing_error(images[0], K, flip=False) < 0.25

    @pytest.mark.parametrize("scale, crop", [(1.15, (0.0, 0.0)), (1.15, (1.0, 1.0)), (1.08, (0.7, 0.3))])
    def test_scale_and_crop_lands_where_K_says(self, scale, crop):
        frames = ramp_frame(0)[None]
        images, _, K = augment_snippet(frames, K0, H, W, Augmentation(scale=scale, crop=crop))
        assert images.shape == (1, 3, H, W)
        assert landing_error(images[0], K, flip=False) < 0.25
        # A crop that moved nothing would pass too: check that this one moved what it should.
        plain = augment_snippet(frames, K0, H, W, None)[2]
        assert K[0, 0] > plain[0, 0] * (scale - 0.05)
        if crop == (1.0, 1.0):
            assert K[0, 2] < plain[0, 2] - 1 and K[1, 2] < plain[1, 2] - 1

    def test_crop_offsets_exact(self):
        frames = ramp_frame(0)[None]
        # scale 1.25 of 24x32 is 30x40 = the stored size: no resampling, a pure crop of 6 rows, 8 columns.
        out, K = resize_and_crop(frames, K0, H, W, scale=1.25, crop=(1.0, 0.5))
        assert np.array_equal(out[0], frames[0, 3:3 + H, 8:8 + W])
        assert np.array_equal(K, np.array([[35.0, 0.0, 11.2], [0.0, 36.0, 11.7], [0.0, 0.0, 1.0]]))

    def test_independent_x_and_y_scale_exact(self):
        frames = ramp_frame(0)[None]
        # x enlarged 1.25 (24x32 -> 40 wide = stored, no resampling), y not (30 -> 24 rows), crop at the right:
        # fx = 35, cx = 19.2 - 8; fy = 36 * 0.8, cy = 0.8 * (14.7 + 0.5) - 0.5.
        out, K = resize_and_crop(frames, K0, H, W, scale=1.25, crop=(1.0, 0.0), scale_y=1.0)
        assert np.allclose(K, np.array([[35.0, 0.0, 11.2], [0.0, 28.8, 11.66], [0.0, 0.0, 1.0]]), atol=1e-12)
        assert np.array_equal(out[0, ..., 0], frames[0, :H, 8:8 + W, 0])  # R encodes u: columns 8.. as stored
        images, _, K_t = augment_snippet(frames, K0, H, W, Augmentation(scale=1.1, crop=(0.3, 0.6), scale_y=1.0))
        assert landing_error(images[0], K_t, flip=False) < 0.25
        # x to round(32 * 1.1) = 35 columns, y to 24 rows: the aspect changed.
        assert (K_t[0, 0].item(), K_t[1, 1].item()) == (pytest.approx(35.0 * 35 / W0), pytest.approx(36.0 * H / H0))

    def test_flip_mirrors_and_updates_cx(self):
        frames = ramp_frame(0)[None]
        plain, _, K_plain = augment_snippet(frames, K0, H, W, None)
        flipped, _, K_flip = augment_snippet(frames, K0, H, W, Augmentation(flip=True))
        assert torch.equal(flipped, plain.flip(-1))
        assert K_flip[0, 2] == W - 1 - K_plain[0, 2]
        assert torch.equal(K_flip, torch.from_numpy(flip_intrinsics(K_plain.double().numpy(), W)).float())
        assert landing_error(flipped[0], K_flip, flip=True) < 0.25
        assert landing_error(flipped[0], K_flip, flip=False) > 5  # the check can tell a flip apart


class TestColourJitter:
    """PIL rounds each step to uint8: exact answers hold to one grey level."""

    def frames(self):
        pixels = [[255, 0, 0], [128, 128, 128], [51, 153, 230], [230, 204, 26]]
        return np.array(pixels, np.uint8).reshape(1, 2, 2, 3)

    def test_identity(self):
        assert np.array_equal(colour_jitter(self.frames(), ColourJitter()), self.frames())

    def test_brightness_exact(self):
        y = colour_jitter(self.frames(), ColourJitter(brightness=1.2)).astype(int)
        assert np.abs(y[0, 0, 1] - 154).max() <= 1  # 128 · 1.2
        assert y[0, 1, 1, 0] == 255  # 230 · 1.2 clipped

    def test_contrast_zero_is_mean_luma_per_frame(self):
        x = np.concatenate([self.frames(), self.frames() // 3])
        y = colour_jitter(x, ColourJitter(contrast=0.0)).astype(int)
        luma = (x.astype(float) @ [0.299, 0.587, 0.114]).mean(axis=(1, 2))
        assert np.abs(y - luma.reshape(2, 1, 1, 1)).max() <= 1
        assert abs(luma[0] - luma[1]) > 10  # one mean per frame, not one for the snippet

    def test_saturation_zero_is_grey(self):
        y = colour_jitter(self.frames(), ColourJitter(saturation=0.0)).astype(int)
        assert np.abs(y[0, 0, 0] - 76).max() <= 1  # luma of pure red: 0.299 · 255
        assert np.array_equal(y[..., 0], y[..., 1]) and np.array_equal(y[..., 1], y[..., 2])

    def test_hue_third_turn_red_to_green_grey_kept(self):
        y = colour_jitter(self.frames(), ColourJitter(hue=1 / 3)).astype(int)
        assert np.abs(y[0, 0, 0] - [0, 255, 0]).max() <= 1
        assert np.abs(y[0, 0, 1] - 128).max() <= 1
        back = colour_jitter(y.astype(np.uint8), ColourJitter(hue=-1 / 3)).astype(int)
        assert np.abs(back[0, 0, 0] - [255, 0, 0]).max() <= 1  # negative shifts wrap

    def test_order_is_honoured(self):
        red = np.array([255, 0, 0], np.uint8).reshape(1, 1, 1, 3)
        bright_first = colour_jitter(red, ColourJitter(brightness=2.0, saturation=0.0, order=(0, 2, 1, 3)))
        grey_first = colour_jitter(red, ColourJitter(brightness=2.0, saturation=0.0, order=(2, 0, 1, 3)))
        assert np.abs(bright_first.astype(int) - 76).max() <= 1
        assert np.abs(grey_first.astype(int) - 152).max() <= 1

    def test_draws_in_range(self):
        draws = [draw_augmentation(np.random.default_rng([7, i])) for i in range(400)]
        assert all(1.0 <= d.scale <= 1.15 and all(0 <= c < 1 for c in d.crop) for d in draws)
        jitters = [d.jitter for d in draws if d.jitter is not None]
        assert 0.4 < len(jitters) / 400 < 0.6 and 0.4 < np.mean([d.flip for d in draws]) < 0.6
        for j in jitters:
            assert all(0.8 <= f <= 1.2 for f in (j.brightness, j.contrast, j.saturation)) and abs(j.hue) <= 0.1
            assert sorted(j.order) == [0, 1, 2, 3]


    def test_authors_draws_no_jitter_and_a_y_factor_of_its_own(self):
        for i in range(200):
            rng_args = [7, i]
            ours = draw_augmentation(np.random.default_rng(rng_args))
            theirs = draw_augmentation(np.random.default_rng(rng_args), colour_jitter=False, independent_scale=True)
            assert ours.scale_y is None and theirs.jitter is None and 1.0 <= theirs.scale_y <= 1.15
            # The other choices are the same numbers: the y factor is drawn last.
            assert (theirs.scale, theirs.crop, theirs.flip) == (ours.scale, ours.crop, ours.flip)
        assert theirs.scale_y != theirs.scale

    def test_sources_turns_are_drawn_last_and_spare_the_target(self):
        for i in range(100):
            plain = draw_augmentation(np.random.default_rng([7, i]))
            turned = draw_augmentation(np.random.default_rng([7, i]), length=5, source_yaw=1.5)
            assert plain.yaw == () and (turned.scale, turned.crop, turned.flip) == (plain.scale, plain.crop, plain.flip)
            assert len(turned.yaw) == 5 and turned.yaw[2] == 0.0
            assert all(0 < abs(a) <= np.radians(1.5) for k, a in enumerate(turned.yaw) if k != 2)


def test_a_turned_frame_is_what_the_turned_camera_renders():
    # The renderer's view from P · R_y(1°) against the view from P turned by the homography: equal to
    # resampling (1.3 / 255 on average away from the entering strip), where the view itself differs by 11.8.
    from masksfm.data.synthetic import Camera, kitti_intrinsics, make_scene, make_trajectory, render_view
    from masksfm.geometry import pose_vec_to_mat

    rng = np.random.default_rng(1)
    pose, scene = make_trajectory(rng, 1)[0], make_scene(rng, 200.0)
    K = kitti_intrinsics(128, 416)
    angle = np.radians(1.0)
    R = pose_vec_to_mat(torch.tensor([[0, 0, 0, 0, angle, 0]], dtype=torch.float64))[0].numpy()
    view, truth = (render_view(scene.at(0), Camera(P, K, 128, 416)).rgb for P in (pose, pose @ R))

    def error(image):
        return np.abs(image[:, 10:-10].astype(float) - truth[:, 10:-10].astype(float)).mean()

    assert error(turn_about_vertical(view, K, angle)) < 2.0
    assert error(turn_about_vertical(view, K, -angle)) > 10 and error(view) > 10


class TestSnippetDataset:
    def test_items_shapes_and_order(self, scenes):
        ds = SnippetDataset(scenes, H, W, augment=False)
        assert len(ds) == 3 + 2  # windows of 3 in 5 and 4 frames; the 2-frame scene gives none
        item = ds[4]
        assert item["images"].shape == (3, 3, H, W) and item["images"].dtype == torch.float32
        assert item["images_raw"].shape == (3, 3, H, W)
        assert item["K"].shape == (3, 3) and item["K"].dtype == torch.float32
        assert 0.0 <= item["images"].min() and item["images"].max() <= 1.0
        assert item["index"] == 4
        scene, frame_ids = ds.snippet(4)
        assert scene.name == "b" and list(frame_ids) == [1, 2, 3]
        # Blue encodes the frame number: the snippet holds frames 1, 2, 3 of scene b, target in the middle.
        blue = (item["images"][:, 2].mean(dim=(1, 2)) * 255).round()
        assert blue.tolist() == [60.0, 70.0, 80.0]

    def test_longer_snippets(self, scenes):
        ds = SnippetDataset(scenes, H, W, snippet_length=5, augment=False)
        assert len(ds) == 1 and ds[0]["images"].shape[0] == 5

    def test_snippets_every_other_frame(self, scenes, data_root):
        # strides (1, 2): the consecutive windows first, then every window of frames 2 apart (only
        # scene a, 5 frames, holds one: frames 0, 2, 4); blue encodes the frame read.
        ds = SnippetDataset(scenes, H, W, augment=False, strides=(1, 2))
        assert len(ds) == 3 + 2 + 1
        assert [list(ds.snippet(i)[1]) for i in (0, 4)] == [[0, 1, 2], [1, 2, 3]]
        scene, frame_ids = ds.snippet(5)
        assert scene.name == "a" and list(frame_ids) == [0, 2, 4]
        blue = (ds[5]["images"][:, 2].mean(dim=(1, 2)) * 255).round()
        assert blue.tolist() == [50.0, 70.0, 90.0]
        with pytest.raises(MasksfmError, match="the 7 frames a snippet needs"):
            SnippetDataset(L.load_split(data_root, "train"), H, W, strides=(3,))
        with pytest.raises(MasksfmError, match="positive frame spacings"):
            SnippetDataset(scenes, H, W, strides=(0,))

    def test_snippets_spaced_unevenly(self, scenes):
        # strides (1, 2) with uneven_strides: after the even windows (1, 1) and (2, 2), the windows one
        # frame before the target and two after it, then two before and one after, scene by scene.
        ds = SnippetDataset(scenes, H, W, augment=False, strides=(1, 2), uneven_strides=True)
        assert len(ds) == (3 + 2 + 1) + 3 + 3
        assert [(ds.snippet(i)[0].name, ds.snippet(i)[1]) for i in range(6, 12)] == [
            ("a", [0, 1, 3]), ("a", [1, 2, 4]), ("b", [0, 1, 3]), ("a", [0, 2, 3]), ("a", [1, 3, 4]), ("b", [0, 2, 3])]
        blue = (ds[7]["images"][:, 2].mean(dim=(1, 2)) * 255).round()
        assert blue.tolist() == [60.0, 70.0, 90.0]
        # 5-frame snippets: two sources on each side, each side at its own spacing.
        long = SnippetDataset(scenes, H, W, snippet_length=5, augment=False, strides=(1, 2), uneven_strides=True)
        assert len(long) == 1 and long.snippet(0)[1] == [0, 1, 2, 3, 4]
        assert len(SnippetDataset(scenes, H, W, augment=False, uneven_strides=True)) == 3 + 2  # one spacing: nothing uneven

    def test_too_short_split(self, data_root):
        with pytest.raises(MasksfmError, match="short.txt: too-short sequences.*the longest has 2 frames"):
            SnippetDataset(L.load_split(data_root, "short"), H, W, source=str(data_root / "short.txt"))
        with pytest.raises(MasksfmError, match=f"{data_root}: too-short sequences"):
            SnippetDataset(L.load_split(data_root, "short"), H, W)

    def test_bad_snippet_length(self, scenes):
        with pytest.raises(MasksfmError, match="snippet length must be odd"):
            SnippetDataset(scenes, H, W, snippet_length=4)

    def test_augmented_pixels_land_where_K_says(self, scenes):
        ds = SnippetDataset(scenes, H, W, seed=3)
        flips = []
        for index in range(len(ds)):
            item = ds[(1, index)]
            flip = ds.augmentation(1, index).flip
            assert landing_error(item["images_raw"][1], item["K"], flip) < 0.25
            assert landing_error(item["images_raw"][1], item["K"], not flip) > 5
            flips.append(flip)
            # Frames of a snippet share one geometry: the ramps are the same in every frame.
            assert torch.equal(item["images_raw"][0, :2], item["images_raw"][2, :2])
        assert 0 < sum(flips) < len(ds)  # both branches exercised

    def test_sources_turn_and_the_target_does_not(self, scenes):
        plain = SnippetDataset(scenes, H, W, seed=3)
        turned = SnippetDataset(scenes, H, W, seed=3, source_yaw=2.0)
        item, reference = turned[(1, 0)], plain[(1, 0)]
        assert torch.equal(item["images_raw"][1], reference["images_raw"][1]) and torch.equal(item["K"], reference["K"])
        for source in (0, 2):
            assert not torch.equal(item["images_raw"][source], reference["images_raw"][source])

    def test_jitter_changes_colour_only(self, scenes):
        ds = SnippetDataset(scenes, H, W, seed=0)
        keys = [(e, i) for e in range(2) for i in range(len(ds))]
        jitters = [ds.augmentation(*key).jitter for key in keys]
        assert 0 < sum(j is not None for j in jitters) < len(keys)
        for key, jitter in zip(keys, jitters):
            item = ds[key]
            if jitter is None:
                assert torch.equal(item["images"], item["images_raw"])
            else:
                frames = (item["images_raw"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                expected = torch.from_numpy(colour_jitter(frames, jitter)).permute(0, 3, 1, 2).float() / 255
                assert torch.equal(item["images"], expected)
                assert not torch.allclose(item["images"], item["images_raw"], atol=1e-3)

    def test_one_jitter_for_the_whole_snippet(self):
        frames = np.stack([ramp_frame(0)] * 3)
        augmentation = Augmentation(jitter=ColourJitter(0.9, 1.1, 0.8, 0.05, (3, 1, 0, 2)))
        images, images_raw, _ = augment_snippet(frames, K0, H, W, augmentation)
        assert not torch.allclose(images, images_raw, atol=1e-3)
        assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])

    def test_augmentation_follows_seed_epoch_index(self, scenes):
        ds = SnippetDataset(scenes, H, W, seed=5)
        a, b = ds[(2, 3)], ds[(2, 3)]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["K"], b["K"])
        ds.set_epoch(2)
        assert torch.equal(ds[3]["images"], a["images"])
        other_epochs = [ds[(e, 3)]["K"] for e in range(3, 8)]
        assert not all(torch.equal(K, a["K"]) for K in other_epochs)
        other_seeds = [SnippetDataset(scenes, H, W, seed=s)[(2, 3)]["K"] for s in range(6, 11)]
        assert not all(torch.equal(K, a["K"]) for K in other_seeds)


class TestSnippetBatchSampler:
    def test_epochs_are_permutations_without_the_remainder(self):
        sampler = SnippetBatchSampler(num_items=10, batch_size=3, seed=0, max_steps=6)
        assert len(sampler) == 6 and sampler.steps_per_epoch == 3
        batches = list(sampler)
        for epoch in (0, 1):
            pairs = [p for batch in batches[3 * epoch:3 * epoch + 3] for p in batch]
            assert {e for e, _ in pairs} == {epoch} and len({i for _, i in pairs}) == 9
        assert [i for _, i in batches[0]] != [i for _, i in batches[3]]

    def test_ranks_share_the_global_batch(self):
        one = SnippetBatchSampler(50, 4, seed=1, max_steps=30)
        two = [SnippetBatchSampler(50, 4, seed=1, rank=r, world_size=2, max_steps=30) for r in (0, 1)]
        for full, share0, share1 in zip(one, *two):
            assert len(share0) == len(share1) == 2 and share0 + share1 == full

    def test_start_step_resumes_exactly(self):
        everything = list(SnippetBatchSampler(11, 2, seed=4, max_steps=20))
        assert list(SnippetBatchSampler(11, 2, seed=4, start_step=7, max_steps=20)) == everything[7:]

    def test_start_step_skips_without_work(self):
        far = SnippetBatchSampler(11, 2, seed=4, start_step=10**12)
        batch = next(iter(far))
        assert len(batch) == 2 and batch[0][0] == 10**12 // 5

    def test_seed_changes_order(self):
        assert list(SnippetBatchSampler(20, 4, 0, max_steps=5)) != list(SnippetBatchSampler(20, 4, 1, max_steps=5))

    def test_bad_sizes(self):
        with pytest.raises(MasksfmError, match="batch size 3 must be a positive multiple of the process count 2"):
            SnippetBatchSampler(10, 3, 0, rank=0, world_size=2)
        with pytest.raises(MasksfmError, match="4 training snippets are fewer than the batch size 8"):
            SnippetBatchSampler(4, 8, 0)


class TestLoader:
    def batches(self, scenes, n, batch_size=2, **kwargs):
        ds = SnippetDataset(scenes, H, W, seed=7)
        kwargs.setdefault("max_steps", kwargs.get("start_step", 0) + n)
        return list(islice(make_loader(ds, batch_size, **kwargs), n))

    def test_same_seed_same_bytes_any_workers(self, scenes):
        inline = self.batches(scenes, 5, seed=0, workers=0)
        pooled = self.batches(scenes, 5, seed=0, workers=2)
        assert inline[0]["images"].shape == (2, 3, 3, H, W) and inline[0]["K"].shape == (2, 3, 3)
        for a, b in zip(inline, pooled):
            assert all(torch.equal(a[key], b[key]) for key in ("images", "images_raw", "K", "index", "epoch"))
        other = self.batches(scenes, 5, seed=1, workers=0)
        assert not all(torch.equal(a["images"], b["images"]) for a, b in zip(inline, other))

    def test_two_ranks_make_the_one_rank_batch(self, scenes):
        whole = self.batches(scenes, 4, seed=2, workers=0)
        shares = [self.batches(scenes, 4, seed=2, workers=0, rank=r, world_size=2) for r in (0, 1)]
        for full, s0, s1 in zip(whole, *shares):
            assert torch.equal(torch.cat([s0["images"], s1["images"]]), full["images"])
            assert torch.equal(torch.cat([s0["K"], s1["K"]]), full["K"])

    def test_resume_from_step(self, scenes):
        whole = self.batches(scenes, 6, seed=3, workers=0)
        resumed = self.batches(scenes, 3, seed=3, workers=0, start_step=3, max_steps=None)
        assert len(resumed) == 3
        for a, b in zip(whole[3:], resumed):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])

    def test_batch_larger_than_data(self, scenes, data_root):
        with pytest.raises(MasksfmError, match="5 training snippets are fewer than the batch size 8"):
            self.batches(scenes, 1, seed=0, workers=0, batch_size=8)
