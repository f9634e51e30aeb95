"""Loss terms against cases whose answer is known exactly."""

import math

import numpy as np
import pytest
import torch

from masksfm import losses as L


def textured(batch=2, channels=3, h=20, w=28, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, h, w, generator=g, dtype=dtype)


class TestSSIM:
    @pytest.mark.parametrize("fn", [L.ssim_box3, L.ssim_gauss13])
    def test_self_similarity_is_one(self, fn, device):
        x = textured().to(device)
        assert torch.allclose(fn(x, x), torch.ones_like(x), atol=1e-12)

    def test_box3_matches_direct_computation(self):
        x, y = textured(1, 1, 6, 7, seed=1), textured(1, 1, 6, 7, seed=2)
        ours = L.ssim_box3(x, y)[0, 0]
        xp = np.pad(x[0, 0].numpy(), 1, mode="reflect")
        yp = np.pad(y[0, 0].numpy(), 1, mode="reflect")
        for r, c in [(0, 0), (2, 3), (5, 6)]:
            a, b = xp[r:r + 3, c:c + 3], yp[r:r + 3, c:c + 3]
            mx, my = a.mean(), b.mean()
            vx, vy, cxy = (a * a).mean() - mx**2, (b * b).mean() - my**2, (a * b).mean() - mx * my
            ref = (2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
            assert np.isclose(ours[r, c].item(), ref, atol=1e-12)

    def test_gauss13_matches_direct_computation(self):
        # Direct double loop over a 13x13 Gaussian window (sigma 1.5) with zero padding.
        x, y = textured(1, 1, 9, 11, seed=3), textured(1, 1, 9, 11, seed=4)
        ours = L.ssim_gauss13(x, y)[0, 0]
        k = np.arange(13) - 6
        g = np.exp(-(k**2) / (2 * 1.5**2))
        g = np.outer(g, g) / np.outer(g, g).sum()
        xp, yp = np.pad(x[0, 0].numpy(), 6), np.pad(y[0, 0].numpy(), 6)
        for r, c in [(0, 0), (4, 5), (8, 10)]:
            a, b = xp[r:r + 13, c:c + 13], yp[r:r + 13, c:c + 13]
            mx, my = (g * a).sum(), (g * b).sum()
            vx, vy = (g * a * a).sum() - mx**2, (g * b * b).sum() - my**2
            cxy = (g * a * b).sum() - mx * my
            ref = (2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
            assert np.isclose(ours[r, c].item(), ref, atol=1e-12)

    def test_gaussian_window(self):
        w = L.gaussian_window(dtype=torch.float64)
        assert w.shape == (13, 13) and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        assert w[6, 6] == w.max() and torch.allclose(w, w.T)


class TestPhotometricError:
    @pytest.mark.parametrize("ssim,rho", [("box3", "l1"), ("gauss13", "robust")])
    def test_identical_images(self, ssim, rho):
        x = textured()
        e = L.photometric_error(x, x, ssim=ssim, rho=rho)
        assert e.shape == (2, 1, 20, 28)
        # L1 of identical images is 0; the robust penalty bottoms out at 0.15 * 0.01^0.4.
        floor = 0.0 if rho == "l1" else 0.15 * 0.01**0.4
        assert torch.allclose(e, torch.full_like(e, floor), atol=1e-12)

    @pytest.mark.parametrize("ssim,rho", [("box3", "l1"), ("gauss13", "robust")])
    def test_grows_with_noise(self, ssim, rho):
        x = textured()
        g = torch.Generator().manual_seed(5)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
        errors = [L.photometric_error(x, (x + s * noise).clamp(0, 1), ssim, rho).mean().item() for s in (0.0, 0.02, 0.1, 0.3)]
        assert all(a < b for a, b in zip(errors, errors[1:])), errors

    def test_exact_value_l1_only(self):
        x = torch.zeros(1, 3, 4, 4)
        y = torch.full((1, 3, 4, 4), 0.2)
        assert torch.allclose(L.photometric_error(x, y, alpha=0.0), torch.full((1, 1, 4, 4), 0.2))

    def test_unknown_variant(self):
        with pytest.raises(ValueError, match="rho"):
            L.photometric_error(textured(), textured(), rho="l2")


class TestMaskedMean:
    def test_paper_normaliser(self):
        e = torch.arange(8, dtype=torch.float64).view(2, 1, 2, 2)
        m = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64).view(2, 1, 2, 2)
        assert torch.allclose(L.masked_mean(e, m), torch.tensor([(0 + 1) / 3, 7 / 2], dtype=torch.float64))

    def test_fully_masked_out_is_zero_not_nan(self):
        e = torch.rand(3, 1, 5, 5, requires_grad=True)
        loss = L.masked_mean(e, torch.zeros(3, 1, 5, 5)).mean()
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(e.grad).all()

    def test_no_mask_is_plain_mean(self):
        e = torch.rand(2, 1, 3, 3)
        assert torch.allclose(L.masked_mean(e), e.mean(dim=(1, 2, 3)))

    def test_below_mean_mask(self):
        e = torch.tensor([1.0, 2.0, 3.0, 10.0]).view(1, 1, 2, 2)
        m = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)
        # masked mean = 6 / 4 = 1.5: keeps only the pixel with error 1
        assert L.below_mean_mask(e, m).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


    def test_below_mean_factor_on_a_four_pixel_error(self):
        e = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).view(1, 1, 1, 4)
        m = torch.ones_like(e)
        # masked mean = (0.1 + 0.2 + 0.3 + 0.4) / (4 + 1) = 0.2
        assert L.below_mean_mask(e, m).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
        assert L.below_mean_mask(e, m, factor=1.75).flatten().tolist() == [1.0, 1.0, 1.0, 0.0]  # 0.35
        assert L.below_mean_mask(e, m, factor=3.0).flatten().tolist() == [1.0, 1.0, 1.0, 1.0]  # 0.6

    def test_authors_per_channel_form_by_hand(self):
        # Two pixels with channel errors A = (0.1, 0.2, 0.3), B = (0.9, 0.3, 0.3): channel means 0.2, 0.5.
        channels = torch.tensor([[0.1, 0.9], [0.2, 0.3], [0.3, 0.3]], dtype=torch.float64).view(1, 3, 1, 2)
        e = channels.mean(dim=1, keepdim=True)
        m = torch.ones_like(e)
        # The authors' threshold: every channel's error summed over a one-channel mask, (0.6 + 1.5) / (2 + 1) = 0.7,
        # = 3 x masked_mean(e) = 3 x 0.7 / 3. Only B's first channel (0.9) is at or above it.
        kept = L.below_mean_mask(e, m, factor=3.0, compare=channels)
        assert kept.shape == (1, 3, 1, 2)
        assert kept.view(3, 2).tolist() == [[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        # Their normaliser sums the kept channel errors over the kept channel count + 1: 1.2 / 6.
        assert L.masked_mean(channels, kept).item() == pytest.approx(0.2, abs=1e-15)
        # masksfm's form on the same pixels keeps A only (0.2 < 0.7 / 3).
        assert L.below_mean_mask(e, m).flatten().tolist() == [1.0, 0.0]


class TestImageRange:
    def test_exact(self):
        x = torch.tensor([0.0, 0.25, 1.0])
        assert L.loss_image_range(x, "unit") is x
        assert L.loss_image_range(x, "signed").tolist() == [-1.0, -0.5, 1.0]
        with pytest.raises(ValueError, match="image range"):
            L.loss_image_range(x, "byte")

    def test_ssim_and_robust_balance_by_hand(self):
        # Flat patches 0.5 and 0.6 (27x27, the centre's 13x13 window inside): no variance, so SSIM is its
        # luminance term (2 mx my + C1) / (mx^2 + my^2 + C1); the robust term is (|d| + 0.01)^0.4.
        a, b = torch.full((1, 3, 27, 27), 0.5, dtype=torch.float64), torch.full((1, 3, 27, 27), 0.6, dtype=torch.float64)

        def error(mode):
            x, y = L.loss_image_range(a, mode), L.loss_image_range(b, mode)
            return L.photometric_error(x, y, "gauss13", "robust")[0, 0, 13, 13].item()

        unit = 0.15 * 0.11**0.4 + 0.85 * (1 - (2 * 0.5 * 0.6 + 1e-4) / (0.5**2 + 0.6**2 + 1e-4))
        signed = 0.15 * 0.21**0.4 + 0.85 * (1 - (2 * 0.0 * 0.2 + 1e-4) / (0.0**2 + 0.2**2 + 1e-4))
        assert error("unit") == pytest.approx(unit, abs=1e-9)
        assert error("signed") == pytest.approx(signed, abs=1e-9)


class TestSourceWeight:
    def test_exact(self):
        assert [L.source_weight(s, "mean") for s in (2, 4)] == [1, 1]
        assert [L.source_weight(s, "sum") for s in (2, 4)] == [2, 4]
        with pytest.raises(ValueError, match="sources"):
            L.source_weight(2, "max")


class TestSmoothness:
    def test_constant_disparity_is_smooth(self):
        assert L.smoothness_loss(torch.full((2, 1, 8, 8), 0.3), textured(2, 3, 8, 8)).item() == 0.0

    def test_scale_invariant_and_edge_aware(self):
        disp = torch.linspace(0.1, 1.0, 16).view(1, 1, 1, 16).expand(1, 1, 8, 16).contiguous()
        flat = torch.zeros(1, 3, 8, 16)
        assert torch.isclose(L.smoothness_loss(disp, flat), L.smoothness_loss(3 * disp, flat))
        edges = flat.clone()
        edges[..., ::2] = 1.0  # strong image gradients everywhere along x
        assert L.smoothness_loss(disp, edges) < L.smoothness_loss(disp, flat)

    def test_exact_value(self):
        disp = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]])  # mean 2 -> rows [0.5, 1.5]: |grad x| = 1, grad y = 0
        img = torch.zeros(1, 3, 2, 2)
        assert torch.isclose(L.smoothness_loss(disp, img), torch.tensor(1.0))


    def test_depth_of_a_known_ramp(self):
        # Depth 1, 2, 3, 4 along x (disparity 1, 1/2, 1/3, 1/4), the same in both rows; a flat image.
        disp = (1.0 / torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).expand(1, 1, 2, 4).contiguous()
        flat = torch.zeros(1, 3, 2, 4, dtype=torch.float64)
        # |d depth / dx| = 1 everywhere, 0 along y.
        assert L.smoothness_loss(disp, flat, on="depth").item() == pytest.approx(1.0, abs=1e-12)
        # The mean-normalised disparity: steps 1/2, 1/6, 1/12 (mean 1/4) over the mean 25/48 (+ 1e-7): 12/25.
        assert L.smoothness_loss(disp, flat).item() == pytest.approx(0.25 / (25 / 48 + 1e-7), abs=1e-12)
        # An image edge between columns 1 and 2 (|dI| = 1 in every channel) weighs that step by exp(-1).
        edge = flat.clone()
        edge[..., 2:] = 1.0
        assert L.smoothness_loss(disp, edge, on="depth").item() == pytest.approx((2 + math.exp(-1)) / 3, abs=1e-12)
        # Depth is not scale-free: twice the depth, twice the term.
        assert L.smoothness_loss(disp / 2, flat, on="depth").item() == pytest.approx(2.0, abs=1e-12)
        with pytest.raises(ValueError, match="smoothness target"):
            L.smoothness_target(disp, "log_depth")


class TestDepthNormalization:
    def test_snippet_mean_is_one_and_shared(self):
        B, Lf = 2, 3
        disps = [torch.rand(B * Lf, 1, 8, 8) + 0.1, torch.rand(B * Lf, 1, 4, 4) + 0.1]
        out = L.normalize_disparity(disps, "snippet", Lf)
        finest = out[0].view(B, -1).mean(dim=1)
        assert torch.allclose(finest, torch.ones(B))
        ratio = disps[1] / out[1]
        assert torch.allclose(ratio[:Lf], ratio[0].expand_as(ratio[:Lf]))  # one factor per snippet
        assert not torch.allclose(ratio[0], ratio[Lf])

    def test_image_modes(self):
        d = [torch.rand(4, 1, 6, 6) + 0.1]
        assert torch.allclose(L.normalize_disparity(d, "image_mean", 2)[0].mean(dim=(2, 3)), torch.ones(4, 1))
        assert torch.allclose(L.normalize_disparity(d, "image_max", 2)[0].amax(dim=(2, 3)), torch.ones(4, 1))
        assert L.normalize_disparity(d, "none", 2)[0] is d[0]


class TestBaselines:
    def test_explainability_regularizer(self):
        ones = [torch.full((2, 2, 4, 4), 1.0 - 1e-7)]
        halves = [torch.full((2, 2, 4, 4), 0.5)]
        assert L.explainability_regularizer(ones) < 1e-5
        assert torch.isclose(L.explainability_regularizer(halves), torch.tensor(np.log(2), dtype=torch.float32))

    def test_min_reprojection_and_automask(self):
        reproj = torch.tensor([[[[0.2, 0.5]], [[0.4, 0.1]]]])  # (B=1, S=2, H=1, W=2)
        identity = torch.tensor([[[[0.3, 0.05]], [[0.9, 0.9]]]])
        assert L.min_reprojection(reproj).flatten().tolist() == pytest.approx([0.2, 0.1])
        # pixel 0: 0.2 < 0.3 kept; pixel 1: 0.1 > 0.05 (looks the same unwarped) dropped
        assert L.identity_automask(reproj, identity).flatten().tolist() == [1.0, 0.0]
        # monodepth2's per-pixel loss: the kept pixel's reprojection error, the dropped one's identity error
        assert L.automasked_reprojection(reproj, identity).flatten().tolist() == pytest.approx([0.2, 0.05 + 1e-5])

    def test_scale_weight(self):
        assert L.scale_weight(0) == 1.0 and L.scale_weight(2) == 0.25
        assert L.scale_weight(1, 2.3) == pytest.approx(1 / 2.3)


class TestVelocityChange:
    """The constant-velocity prior on exact motions: T_{t→s} from camera-to-world poses as the data has them."""

    @staticmethod
    def snippet_poses(cam_to_world: torch.Tensor) -> torch.Tensor:
        """(L, 4, 4) camera-to-world poses of one snippet -> (L − 1, 4, 4) T_{t→s} = inv(P_s) · P_t."""
        from masksfm.geometry import relative_pose

        length = len(cam_to_world)
        centre = cam_to_world[length // 2]
        return torch.stack([relative_pose(centre, cam_to_world[k]) for k in range(length) if k != length // 2])

    @staticmethod
    def pose(yaw: float, x: float, z: float) -> torch.Tensor:
        c, s = math.cos(yaw), math.sin(yaw)
        return torch.tensor([[c, 0, s, x], [0, 1, 0, 0], [-s, 0, c, z], [0, 0, 0, 1]], dtype=torch.float64)

    def test_a_constant_twist_has_no_change(self):
        """On a circle at one speed (yaw 2° a frame, radius 25 m), 5 frames: every step alike, 0."""
        radius, turn = 25.0, math.radians(2.0)
        circle = torch.stack([self.pose(k * turn, radius * (1 - math.cos(k * turn)), radius * math.sin(k * turn))
                              for k in range(5)])
        change = L.velocity_change(self.snippet_poses(circle), 5)
        assert change.shape == (1, 3)
        assert change.abs().max().item() < 1e-12

    def test_a_change_of_speed_and_of_direction(self):
        straight = torch.stack([self.pose(0.0, 0.0, z) for z in (0.0, 1.0, 2.2)])  # steps of 1 m then 1.2 m
        assert L.velocity_change(self.snippet_poses(straight), 3).item() == pytest.approx(0.2**2 / (1 + 1.2**2), rel=1e-12)
        sideways = torch.stack([self.pose(0.0, 0.0, 0.0), self.pose(0.0, 0.0, 1.0), self.pose(0.0, 1.0, 1.0)])
        assert L.velocity_change(self.snippet_poses(sideways), 3).item() == pytest.approx(1.0, rel=1e-12)  # |(1,0,−1)|² / 2

    def test_the_same_at_any_scale_and_per_snippet(self):
        a = self.snippet_poses(torch.stack([self.pose(0.01 * k, 0.1 * k**2, 0.9 * k + 0.05 * k**2) for k in range(3)]))
        b = self.snippet_poses(torch.stack([self.pose(0.0, 0.0, z) for z in (0.0, 1.0, 2.2)]))
        scaled = a.clone()
        scaled[:, :3, 3] *= 7.0
        change = L.velocity_change(torch.cat([a, scaled, b]), 3)  # B = 3 snippets
        assert change.shape == (3, 1)
        assert change[0].item() > 0.01
        assert change[1].item() == pytest.approx(change[0].item(), rel=1e-9)
        assert change[2].item() == pytest.approx(0.2**2 / (1 + 1.2**2), rel=1e-12)

    def test_it_reaches_the_pose_vectors(self):
        from masksfm.geometry import pose_vec_to_mat

        vec = torch.tensor([[0.0, 0.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.1, 1.2, 0.0, 0.02, 0.0]], requires_grad=True)
        L.velocity_change(pose_vec_to_mat(vec), 3).sum().backward()
        assert vec.grad[:, :3].abs().sum() > 0


def test_reflect_pad1_is_reflection_padding():
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    assert torch.equal(L.reflect_pad1(x), torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))


class TestTurnInconsistency:
    """The pose net's rotation to a turned source against R_y(yaw)ᵀ · its rotation to the source unturned."""

    def test_zero_for_the_exact_composition_of_camera_poses(self):
        # Two camera-to-world poses; the source's camera turned by 0.7°: T_t2s from the poses themselves.
        from masksfm.geometry import mat_to_pose_vec, pose_vec_to_mat, relative_pose

        yaw = math.radians(0.7)
        P_t = pose_vec_to_mat(torch.tensor([[0.3, 0.0, 1.0, 0.01, 0.02, -0.01]], dtype=torch.float64))[0]
        P_s = pose_vec_to_mat(torch.tensor([[0.1, 0.05, 2.0, 0.0, -0.03, 0.02]], dtype=torch.float64))[0]
        turn = pose_vec_to_mat(torch.tensor([[0.0, 0.0, 0.0, 0.0, yaw, 0.0]], dtype=torch.float64))[0]
        plain = mat_to_pose_vec(relative_pose(P_t, P_s)[None])[:, 3:]
        turned = mat_to_pose_vec(relative_pose(P_t, P_s @ turn)[None])[:, 3:]
        inconsistency = L.turn_inconsistency(plain, turned, torch.tensor([yaw], dtype=torch.float64))
        assert inconsistency.item() < 1e-12
        assert L.turn_inconsistency(plain, plain, torch.tensor([yaw], dtype=torch.float64)).item() > 0.9 * yaw

    def test_a_net_that_ignores_the_turn_misses_it_whole_and_both_sides_learn(self):
        rotation = torch.zeros(2, 3, requires_grad=True)
        turned = torch.zeros(2, 3, requires_grad=True)
        yaw = torch.tensor([0.01, -0.02])
        inconsistency = L.turn_inconsistency(rotation, turned, yaw)
        assert torch.allclose(inconsistency, yaw.abs(), atol=1e-7)
        inconsistency.sum().backward()
        assert turned.grad[:, 1].tolist() == pytest.approx([1.0, -1.0])
        assert rotation.grad[:, 1].tolist() == pytest.approx([-1.0, 1.0], abs=1e-3)


class TestStrideInconsistency:
    """The pose net's poses two frames away against its poses one frame away applied twice."""

    @staticmethod
    def vec(T: torch.Tensor) -> torch.Tensor:
        from masksfm.geometry import mat_to_pose_vec

        return mat_to_pose_vec(T[None])

    def test_zero_on_a_circle_at_one_speed(self):
        # Yaw 2° a frame on a 25 m radius: T_{t→t+2} is T_{t→t+1} twice, exactly.
        pose = TestVelocityChange.pose
        radius, turn = 25.0, math.radians(2.0)
        at = [pose(k * turn, radius * (1 - math.cos(k * turn)), radius * math.sin(k * turn)) for k in range(3)]
        from masksfm.geometry import relative_pose

        one, two = self.vec(relative_pose(at[0], at[1])), self.vec(relative_pose(at[0], at[2]))
        rotation, distance = L.stride_inconsistency(one, two)
        assert rotation.item() < 1e-12 and distance.item() < 1e-9

    def test_a_speed_change_and_a_turn_missed_at_any_scale(self):
        one = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
        two = torch.tensor([[0.0, 0.0, 2.2, 0.0, 0.01, 0.0]], dtype=torch.float64)  # 1 m, then 1.2 m; turned 0.01 rad
        rotation, distance = L.stride_inconsistency(one, two)
        assert rotation.item() == pytest.approx(0.01, rel=1e-12)
        assert distance.item() == pytest.approx(math.log(2.2 / 2.0), rel=1e-5)
        scaled = torch.cat([0.01 * one[:, :3], one[:, 3:]], dim=1), torch.cat([0.01 * two[:, :3], two[:, 3:]], dim=1)
        assert L.stride_inconsistency(*scaled)[1].item() == pytest.approx(distance.item(), rel=1e-3)


class TestShiftInconsistency:
    vec = staticmethod(TestStrideInconsistency.vec)

    def test_zero_for_a_pair_read_both_ways(self):
        # Any two camera poses: T_{b→a} is T_{a→b}⁻¹, whatever the motion (here a turn, a climb, a side step).
        from masksfm.geometry import relative_pose

        pose = TestVelocityChange.pose
        a, b = pose(0.1, 0.3, 2.0), pose(0.13, -0.2, 3.1)
        b[1, 3] = 0.05
        rotation, distance = L.shift_inconsistency(self.vec(relative_pose(a, b)), self.vec(relative_pose(b, a)))
        assert rotation.item() < 1e-12 and distance.item() < 1e-9

    def test_a_speed_and_a_turn_that_disagree_at_any_scale(self):
        forward = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.02, 0.0]], dtype=torch.float64)
        backward = torch.tensor([[0.0, 0.0, -1.1, 0.0, -0.01, 0.0]], dtype=torch.float64)  # 1.1 m back, turned 0.01 rad
        rotation, distance = L.shift_inconsistency(forward, backward)
        assert rotation.item() == pytest.approx(0.01, rel=1e-9)
        assert distance.item() == pytest.approx(math.log(1.1), rel=1e-5)
        scaled = [torch.cat([0.01 * v[:, :3], v[:, 3:]], dim=1) for v in (forward, backward)]
        assert L.shift_inconsistency(*scaled)[1].item() == pytest.approx(distance.item(), rel=1e-3)


def test_logit_excess_is_zero_inside_the_bound_and_quadratic_beyond():
    logits = torch.tensor([-9.0, -6.0, -1.0, 0.0, 5.9, 6.0, 8.5], requires_grad=True)
    excess = L.logit_excess(logits, 6.0)
    assert excess.tolist() == pytest.approx([9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.25])
    excess.sum().backward()
    # Gradient descent moves each logit beyond the bound back towards it, and leaves the others alone.
    assert logits.grad.tolist() == pytest.approx([-6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0])
