"""Evaluation protocols against cases worked out by hand (docs/design.md §6)."""

import math

import numpy as np
import pytest

from masksfm import evaluation as ev
from masksfm.trajectory import chain_relative_poses, relative_poses

from helpers import curved_drive, random_rotation, rot_y, similarity, straight_line


class TestDepthMetrics:
    def test_hand_computed(self):
        gt = np.array([[2.0, 4.0], [5.0, 10.0]])
        pred = np.array([[2.0, 5.0], [4.0, 8.0]])
        m = ev.depth_metrics(gt, pred, garg_crop=False, median_scaling=False)
        assert list(m) == ["abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"]
        assert all(type(v) is float for v in m.values())
        # errors gt - pred = 0, -1, 1, 2
        assert m["abs_rel"] == pytest.approx((0 + 1 / 4 + 1 / 5 + 2 / 10) / 4)
        assert m["sq_rel"] == pytest.approx((0 + 1 / 4 + 1 / 5 + 4 / 10) / 4)
        assert m["rmse"] == pytest.approx(math.sqrt(6 / 4))
        assert m["rmse_log"] == pytest.approx(math.log(1.25) * math.sqrt(3) / 2)
        # three pixels are off by exactly 1.25: "< 1.25" excludes them
        assert (m["a1"], m["a2"], m["a3"]) == (0.25, 1.0, 1.0)

    def test_garg_crop_bounds_kitti(self):
        # monodepth2: np.array([0.40810811 * 375, 0.99189189 * 375, 0.03594771 * 1242, 0.96405229 * 1242]).astype(np.int32)
        assert ev.garg_crop_bounds(375, 1242) == (153, 371, 44, 1197)
        # 0.99189189 * 370 = 366.9999993: truncated, not rounded
        assert ev.garg_crop_bounds(370, 1226) == (151, 366, 44, 1181)

    def test_garg_crop_edges(self):
        gt = np.full((375, 1242), 10.0)
        pred = gt.copy()
        pred[152, :] = pred[371, :] = pred[:, 43] = pred[:, 1197] = 30.0  # just outside: ignored
        m = ev.depth_metrics(gt, pred, median_scaling=False)
        assert m["abs_rel"] == 0.0 and m["a1"] == 1.0
        inside = gt.copy()
        inside[153, 500] = inside[370, 500] = inside[200, 44] = inside[200, 1196] = 30.0  # just inside: counted
        m = ev.depth_metrics(gt, inside, median_scaling=False)
        assert m["abs_rel"] == pytest.approx(4 * 2.0 / ((371 - 153) * (1197 - 44)))
        assert ev.depth_metrics(gt, pred, garg_crop=False, median_scaling=False)["abs_rel"] > 0

    def test_median_scaling_absorbs_scale(self):
        rng = np.random.default_rng(0)
        gt = rng.uniform(2.0, 70.0, (20, 30))
        m = ev.depth_metrics(gt, gt / 37.5, garg_crop=False)
        assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
        assert m["rmse"] == pytest.approx(0.0, abs=1e-10)
        assert m["a1"] == 1.0
        assert ev.depth_metrics(gt, gt / 37.5, garg_crop=False, median_scaling=False)["a3"] == 0.0

    def test_median_is_over_valid_pixels(self):
        gt = np.array([[1.0, 2.0, 3.0, 0.0, 90.0]])
        pred = np.array([[10.0, 20.0, 30.0, 1000.0, 1000.0]])  # invalid pixels would move the median
        assert ev.depth_metrics(gt, pred, garg_crop=False)["abs_rel"] == pytest.approx(0.0, abs=1e-12)

    def test_clamping(self):
        gt = np.full((1, 4), 50.0)
        pred = np.array([[100.0, 50.0, -3.0, 0.0]])
        m = ev.depth_metrics(gt, pred, garg_crop=False, median_scaling=False)
        # pred -> 80, 50, 1e-3, 1e-3
        assert m["abs_rel"] == pytest.approx((30 + 0 + 2 * (50 - 1e-3)) / 50 / 4)
        assert m["a1"] == 0.25

    def test_invalid_pixels_ignored(self):
        gt = np.array([[0.0, 1e-3, 80.0, 120.0, np.nan, 20.0]])
        pred = np.array([[7.0, 9.0, 1.0, 3.0, 5.0, 20.0]])
        m = ev.depth_metrics(gt, pred, garg_crop=False, median_scaling=False)
        assert m["abs_rel"] == 0.0 and m["rmse"] == 0.0 and m["a1"] == 1.0

    def test_no_valid_pixel_raises(self):
        gt = np.zeros((375, 1242))
        gt[:100] = 10.0  # above the Garg crop only
        with pytest.raises(ev.EvaluationInputError, match="no ground-truth depth"):
            ev.depth_metrics(gt, np.ones_like(gt))
        assert issubclass(ev.EvaluationInputError, ValueError)
        ev.depth_metrics(gt, np.ones_like(gt), garg_crop=False)  # fine without the crop

    def test_bad_prediction_raises(self):
        gt = np.full((4, 4), 10.0)
        pred = np.ones((4, 4))
        pred[0, 0] = np.nan
        with pytest.raises(ev.EvaluationInputError, match="non-finite"):
            ev.depth_metrics(gt, pred, garg_crop=False)
        with pytest.raises(ev.EvaluationInputError, match="median"):
            ev.depth_metrics(gt, np.zeros((4, 4)), garg_crop=False)
        with pytest.raises(ValueError, match="one shape"):
            ev.depth_metrics(gt, np.ones((4, 5)))

    def test_mean_metrics(self):
        a = {"abs_rel": 0.1, "a1": 1.0}
        b = {"a1": 0.5, "abs_rel": 0.3}
        m = ev.mean_metrics([a, b])
        assert m == {"abs_rel": pytest.approx(0.2), "a1": 0.75, "count": 2}
        assert type(m["count"]) is int
        with pytest.raises(ValueError):
            ev.mean_metrics([])


class TestResizing:
    def test_disp_to_depth_half_pixel(self):
        # Upsampling [1, 2] to 4 pixels with half-pixel centres samples x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        depth = ev.disp_to_depth_at(np.array([[1.0, 2.0]]), 1, 4)
        np.testing.assert_allclose(depth, 1.0 / np.array([[1.0, 1.25, 1.75, 2.0]]))
        assert depth.dtype == np.float64

    def test_matches_torch_half_pixel_bilinear(self):
        import torch

        disp = np.random.default_rng(1).uniform(0.05, 1.0, (13, 41)).astype(np.float32)
        for size in ((37, 123), (5, 17)):  # up and down
            ref = torch.nn.functional.interpolate(torch.from_numpy(disp)[None, None], size=size, mode="bilinear",
                                                  align_corners=False, antialias=False)[0, 0].numpy()
            depth = ev.disp_to_depth_at(disp[None, None], *size)
            assert depth.shape == size and depth.dtype == np.float32
            np.testing.assert_allclose(1.0 / depth, ref, rtol=1e-5)
            np.testing.assert_allclose(ev.prediction_to_depth_at(1.0 / disp, *size, kind="depth"),
                                       torch.nn.functional.interpolate(torch.from_numpy(1.0 / disp)[None, None], size=size,
                                                                       mode="bilinear", align_corners=False)[0, 0].numpy(),
                                       rtol=1e-5)

    def test_bad_predictions(self):
        with pytest.raises(ev.EvaluationInputError, match="positive and finite; 1 values"):
            ev.disp_to_depth_at(np.array([[1.0, 0.0]]), 2, 4)
        with pytest.raises(ev.EvaluationInputError, match="image"):
            ev.disp_to_depth_at(np.ones((2, 3, 4)), 2, 4)
        with pytest.raises(ev.EvaluationInputError, match="non-finite"):
            ev.depth_at(np.array([[1.0, np.inf]]), 2, 4)
        with pytest.raises(ValueError, match="kind"):
            ev.prediction_to_depth_at(np.ones((2, 2)), 2, 2, kind="inverse")


class TestSnippetATE:
    gt = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], dtype=np.float64)

    def test_identical_and_scaled(self):
        assert ev.snippet_ate(self.gt, self.gt) == 0.0
        assert ev.snippet_ate(self.gt, 0.013 * self.gt) == pytest.approx(0.0, abs=1e-12)
        assert ev.snippet_ate(self.gt, self.gt + [5.0, -5.0, 2.0]) == pytest.approx(0.0, abs=1e-12)

    def test_known_offset(self):
        pred = self.gt.copy()
        pred[4, 1] = 1.0
        # s = 30/31; residual x = -k/31 (k = 0..4), y of the last = 30/31
        expected = math.sqrt((1 + 4 + 9 + 16) / 31**2 + (30 / 31) ** 2) / 5
        assert ev.snippet_ate(self.gt, pred) == pytest.approx(expected, rel=1e-12)

    def test_zero_prediction(self):
        # Any scale fits a prediction at the origin equally: the error is |gt| / N, not NaN.
        assert ev.snippet_ate(self.gt, np.zeros((5, 3))) == pytest.approx(math.sqrt(30) / 5)

    def test_snippets_in_first_frame(self):
        # Cameras turned 90° (their z is world x), moving 1 m per frame along world x.
        gt = np.tile(np.eye(4), (7, 1, 1))
        gt[:, :3, :3] = rot_y(np.pi / 2)
        gt[:, 0, 3] = np.arange(7.0) + 10.0
        gt_xyz, pred_xyz = ev.snippets_from_relative(relative_poses(gt), gt)
        assert gt_xyz.shape == pred_xyz.shape == (3, 5, 3)
        expected = np.zeros((5, 3))
        expected[:, 2] = np.arange(5.0)  # straight ahead in each snippet's first camera
        np.testing.assert_allclose(gt_xyz, np.broadcast_to(expected, (3, 5, 3)), atol=1e-12)
        np.testing.assert_allclose(pred_xyz, gt_xyz, atol=1e-12)

    def test_exact_relative_poses_give_zero(self):
        gt = curved_drive(40)
        ates = ev.snippet_ates(relative_poses(gt), gt)
        assert ates.shape == (36,)
        np.testing.assert_allclose(ates, 0.0, atol=1e-12)
        # Scale and the direction of each relative pose: a scaled prediction is still perfect ...
        rel = relative_poses(gt)
        rel[:, :3, 3] *= 0.02
        np.testing.assert_allclose(ev.snippet_ates(rel, gt), 0.0, atol=1e-12)
        # ... but the inverse poses (the other direction) are not (a negative scale absorbs the
        # reversed translations; the rotations applied on the wrong side remain).
        assert ev.snippet_ates(np.linalg.inv(relative_poses(gt)), gt).mean() > 0.01

    def test_matches_per_snippet_formula(self):
        gt = curved_drive(12, seed=4)
        rel = relative_poses(similarity(gt, np.eye(3), np.zeros(3), 1.0))
        rel[:, :3, 3] += np.random.default_rng(0).normal(0, 0.1, (11, 3))
        gt_xyz, pred_xyz = ev.snippets_from_relative(rel, gt)
        batch = ev.snippet_ates(rel, gt)
        assert batch == pytest.approx([ev.snippet_ate(g, p) for g, p in zip(gt_xyz, pred_xyz)], rel=1e-12)
        assert np.all(batch > 0)

    def test_short_sequence(self):
        gt = straight_line(4)
        assert ev.snippet_ates(relative_poses(gt), gt).shape == (0,)


class TestOwnSnippetATE:
    """The net's own snippets, one call each (SfMLearner's test_pose), against chaining pairs across calls."""

    @staticmethod
    def snippet_poses(gt: np.ndarray, length: int, scales) -> np.ndarray:
        """T_{c→k} = inv(P_k) @ P_c of every snippet, each call's translations times its own scale."""
        half = length // 2
        out = np.stack([np.stack([np.linalg.inv(gt[k]) @ gt[c] for k in range(c - half, c + half + 1)])
                        for c in range(half, len(gt) - half)])
        out[:, :, :3, 3] *= np.asarray(scales, dtype=np.float64)[:, None, None]
        return out

    def test_exact_calls_score_zero_whatever_their_scale(self):
        from masksfm.inference import chain_snippet_poses

        gt = curved_drive(12, seed=3)
        exact = self.snippet_poses(gt, 5, np.ones(8))
        assert np.abs(ev.own_snippet_ates(exact, gt)).max() < 1e-12
        assert np.abs(ev.snippet_ates(chain_snippet_poses(exact), gt, 5)).max() < 1e-12
        # Each call at its own scale (a depth scale that changes from frame to frame): every snippet is
        # still exact up to its scale, but the chain mixes the calls' scales.
        scaled = self.snippet_poses(gt, 5, 1.0 + 0.2 * np.arange(8))
        assert ev.own_snippet_ates(scaled, gt).shape == (8,)
        assert np.abs(ev.own_snippet_ates(scaled, gt)).max() < 1e-12
        assert ev.snippet_ates(chain_snippet_poses(scaled), gt, 5).mean() > 0.01

    def test_chaining_reads_each_pair_from_the_nearest_snippet(self):
        from masksfm.inference import chain_snippet_poses

        gt = curved_drive(9, seed=1)
        scales = 1.0 + np.arange(7)  # call j (centre j + 1) at scale j + 1: a pair's scale names its call
        rel = chain_snippet_poses(self.snippet_poses(gt, 3, scales))
        true_rel = np.linalg.inv(gt[:-1]) @ gt[1:]
        ratio = np.linalg.norm(rel[:, :3, 3], axis=1) / np.linalg.norm(true_rel[:, :3, 3], axis=1)
        # Pair (i, i+1) from the snippet centred on i + 1 (call i), the last from the last snippet.
        assert ratio == pytest.approx([1, 2, 3, 4, 5, 6, 7, 7])


class TestRelativePoseErrors:
    def test_exact_and_scaled_predictions_have_no_error(self):
        gt = curved_drive(30)
        rel = relative_poses(gt)
        rel[:, :3, 3] *= 0.05  # one monocular scale for the whole sequence
        errors = ev.relative_pose_errors(rel, gt)
        assert set(errors) == {"direction_err", "speed_spread", "rotation_err"}
        assert errors == pytest.approx({"direction_err": 0.0, "speed_spread": 0.0, "rotation_err": 0.0}, abs=1e-6)

    def test_known_direction_speed_and_turn(self):
        # Straight ahead 1 m per frame; the prediction heads 2° to the side, turns 0.5° per frame
        # and alternates 0.9 and 1.1 times one speed: std / mean of the ratios = 0.1 exactly.
        gt = straight_line(9)
        rel = relative_poses(gt)
        heading = np.radians(2.0)
        speeds = np.tile([0.9, 1.1], 4) * 3.0
        rel[:, :3, 3] = speeds[:, None] * np.array([np.sin(heading), 0.0, np.cos(heading)])
        rel[:, :3, :3] = rot_y(np.radians(0.5))
        errors = ev.relative_pose_errors(rel, gt)
        assert errors["direction_err"] == pytest.approx(2.0, rel=1e-9)
        assert errors["speed_spread"] == pytest.approx(0.1, rel=1e-9)
        assert errors["rotation_err"] == pytest.approx(0.5, rel=1e-9)

    def test_constant_speed_guess_on_a_curve(self):
        # The guess (straight ahead, no turn) misses every pair's true heading and turn by exactly them.
        gt = curved_drive(20, seed=3)
        truth = relative_poses(gt)
        guess = np.tile(np.eye(4), (19, 1, 1))
        guess[:, 2, 3] = 1.0
        errors = ev.relative_pose_errors(guess, gt)
        t = truth[:, :3, 3]
        heading = np.degrees(np.arccos(t[:, 2] / np.linalg.norm(t, axis=1)))
        turn = np.degrees(np.arccos((np.trace(truth[:, :3, :3], axis1=1, axis2=2) - 1) / 2))
        assert errors["direction_err"] == pytest.approx(heading.mean(), rel=1e-6)
        assert errors["rotation_err"] == pytest.approx(turn.mean(), rel=1e-6)
        inverse_speed = 1.0 / np.linalg.norm(t, axis=1)
        assert errors["speed_spread"] == pytest.approx(inverse_speed.std() / inverse_speed.mean(), rel=1e-9)

    def test_standing_pairs_are_left_out_of_direction_and_speed(self):
        gt = straight_line(5)
        gt[3:, 2, 3] = gt[2, 2, 3]  # the camera stops after frame 2
        rel = relative_poses(gt)
        errors = ev.relative_pose_errors(rel, gt)
        assert errors["direction_err"] == pytest.approx(0.0, abs=1e-9) and errors["speed_spread"] == pytest.approx(0.0)
        with pytest.raises(ValueError, match="rel_poses"):
            ev.relative_pose_errors(rel[:-1], gt)


class TestTrajectoryMetrics:
    def test_similarity_is_perfect(self):
        gt = curved_drive(60)
        pred = similarity(gt, random_rotation(np.random.default_rng(7)), np.array([4.0, 1.0, -2.0]), 0.03)
        m = ev.trajectory_metrics(gt, pred)
        assert set(m) == {"ate_rmse", "rpe_trans", "rpe_rot"}
        assert all(type(v) is float for v in m.values())
        assert max(m.values()) < 1e-8

    def test_straight_drive(self):
        # evo's own alignment refuses collinear positions; ours aligns them.
        gt = straight_line(30, 1.2)
        m = ev.trajectory_metrics(gt, similarity(gt, np.eye(3), np.zeros(3), 7.0))
        assert max(m.values()) < 1e-9

    def test_position_noise_magnitude(self):
        sigma = 0.05
        gt = curved_drive(2000, seed=1)
        pred = gt.copy()
        pred[:, :3, 3] += np.random.default_rng(2).normal(0, sigma, (2000, 3))
        m = ev.trajectory_metrics(gt, pred)
        # Isotropic noise: |e| has RMS sqrt(3)·σ; a frame-to-frame difference has RMS sqrt(6)·σ.
        assert m["ate_rmse"] == pytest.approx(math.sqrt(3) * sigma, rel=0.05)
        assert m["rpe_trans"] == pytest.approx(math.sqrt(6) * sigma, rel=0.05)
        assert m["rpe_rot"] < 1e-9

    def test_rotation_noise_magnitude(self):
        sigma_deg = 0.5
        gt = curved_drive(2000, seed=3)
        noise = np.deg2rad(np.random.default_rng(4).normal(0, sigma_deg, 2000))
        pred = gt.copy()
        pred[:, :3, :3] = gt[:, :3, :3] @ rot_y(noise)
        m = ev.trajectory_metrics(gt, pred)
        assert m["rpe_rot"] == pytest.approx(math.sqrt(2) * sigma_deg, rel=0.05)
        assert m["ate_rmse"] < 1e-9


def devkit_reference(gt, pred):
    """A line-by-line transcription of evaluate_odometry.cpp's calcSequenceErrors + saveStats."""
    dist = [0.0]
    for i in range(1, len(gt)):
        dist.append(dist[i - 1] + np.linalg.norm(gt[i - 1, :3, 3] - gt[i, :3, 3]))
    t_errs, r_errs = [], []
    for first in range(0, len(gt), 10):
        for length in (100, 200, 300, 400, 500, 600, 700, 800):
            last = next((i for i in range(first, len(dist)) if dist[i] > dist[first] + length), -1)
            if last == -1:
                continue
            error = np.linalg.inv(np.linalg.inv(pred[first]) @ pred[last]) @ (np.linalg.inv(gt[first]) @ gt[last])
            d = 0.5 * (error[0, 0] + error[1, 1] + error[2, 2] - 1.0)
            r_errs.append(math.acos(max(min(d, 1.0), -1.0)) / length)
            t_errs.append(np.linalg.norm(error[:3, 3]) / length)
    return 100 * np.mean(t_errs), math.degrees(np.mean(r_errs)) * 100


class TestKittiOdometry:
    def test_scale_drift_on_straight_line(self):
        # 300 m at 1 m per frame. 100 m segments end 101 frames on (dist must exceed the length):
        # starts 0..190 (20); 200 m: starts 0..90 (10). t_err = 1% of the 101 or 201 m travelled.
        gt = straight_line(301)
        pred = gt.copy()
        pred[:, :3, 3] *= 1.01
        m = ev.kitti_odometry_metrics(gt, pred, align="none")
        assert m["t_rel"] == pytest.approx(100 * (20 * 0.01 * 101 / 100 + 10 * 0.01 * 201 / 200) / 30, rel=1e-9)
        assert m["r_rel"] == pytest.approx(0.0, abs=1e-9)
        # A constant scale error is what the Sim(3) alignment removes.
        assert ev.kitti_odometry_metrics(gt, pred)["t_rel"] == pytest.approx(0.0, abs=1e-9)

    def test_constant_yaw_rate(self):
        omega = 1e-3  # rad per frame, in the prediction only
        gt = straight_line(301)
        pred = gt.copy()
        pred[:, :3, :3] = rot_y(omega * np.arange(301))
        expected = math.degrees(omega * (20 * 101 / 100 + 10 * 201 / 200) / 30) * 100
        for align in ("none", "sim3"):
            assert ev.kitti_odometry_metrics(gt, pred, align=align)["r_rel"] == pytest.approx(expected, rel=1e-9)

    def test_too_short(self):
        gt = straight_line(101)  # exactly 100 m: no segment exceeds 100 m
        assert ev.kitti_odometry_metrics(gt, gt) is None
        gt = straight_line(102)
        assert ev.kitti_odometry_metrics(gt, gt) == {"t_rel": 0.0, "r_rel": 0.0}

    def test_matches_devkit_transcription(self):
        gt = curved_drive(700, seed=5)  # about 700 m: every length up to 600 m appears
        rng = np.random.default_rng(6)
        rel = relative_poses(gt)
        rel[:, :3, 3] *= rng.uniform(0.95, 1.05, (699, 1))
        rel[:, :3, :3] = rel[:, :3, :3] @ rot_y(rng.normal(0, 2e-3, 699))
        pred = chain_relative_poses(rel)
        m = ev.kitti_odometry_metrics(gt, pred, align="none")
        t_rel, r_rel = devkit_reference(gt, gt[0] @ pred)
        assert m["t_rel"] == pytest.approx(t_rel, rel=1e-9)
        assert m["r_rel"] == pytest.approx(r_rel, rel=1e-9)
        assert m["t_rel"] > 0.1 and m["r_rel"] > 0.01

    def test_bad_align(self):
        with pytest.raises(ValueError, match="align"):
            ev.kitti_odometry_metrics(straight_line(5), straight_line(5), align="scale")
