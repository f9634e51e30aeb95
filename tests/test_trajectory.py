"""Trajectories: chaining, Sim(3) alignment, TUM / KITTI files (checked with evo's readers), plots."""

import numpy as np
import pytest
from PIL import Image

from masksfm import trajectory as tr
from masksfm.data.layout import read_poses, write_poses
from masksfm.errors import MasksfmError

from helpers import curved_drive, random_rotation, rot_y, similarity


class TestChaining:
    def test_known_chain(self):
        step = np.eye(4)
        step[2, 3] = 1.0  # one metre forward per frame, frame i+1 seen from frame i
        poses = tr.chain_relative_poses(np.tile(step, (4, 1, 1)))
        assert poses.shape == (5, 4, 4)
        np.testing.assert_array_equal(poses[0], np.eye(4))
        np.testing.assert_allclose(poses[:, :3, 3], [[0, 0, k] for k in range(5)])

    def test_direction_with_yaw(self):
        # Frame 1 is turned by +a and sits 1 m ahead of frame 0: its points map into frame 0 by T_rel[0].
        a = 0.3
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = rot_y(a), [0.0, 0.0, 1.0]
        poses = tr.chain_relative_poses(np.stack([T, T]))
        # Frame 2 is 1 m ahead of frame 1 along frame 1's z, which points along (sin a, 0, cos a) in frame 0.
        np.testing.assert_allclose(poses[2, :3, 3], [np.sin(a), 0.0, 1.0 + np.cos(a)], atol=1e-12)
        np.testing.assert_allclose(poses[2, :3, :3], rot_y(2 * a), atol=1e-12)

    def test_chaining_exact_relative_poses_reproduces_trajectory(self):
        gt = curved_drive(80)
        gt = similarity(gt, random_rotation(np.random.default_rng(3)), np.array([5.0, -2.0, 7.0]), 1.0)
        chained = tr.chain_relative_poses(tr.relative_poses(gt))
        # Up to the first pose: the chain starts at the identity.
        np.testing.assert_allclose(gt[0] @ chained, gt, atol=1e-9)

    def test_relative_matches_geometry_convention(self):
        # relative_poses is T_t2s = inv(P_s) @ P_t with t = i+1, s = i (docs/design.md §2).
        from masksfm.geometry import relative_pose

        gt = curved_drive(5)
        rel = tr.relative_poses(gt)
        for i in range(4):
            np.testing.assert_allclose(rel[i], relative_pose(gt[i + 1], gt[i]), atol=1e-12)

    def test_shape_check(self):
        with pytest.raises(ValueError, match=r"\(N, 4, 4\)"):
            tr.chain_relative_poses(np.zeros((3, 3, 4)))


class TestAlignment:
    def test_matches_evo(self):
        from evo.core.geometry import umeyama_alignment

        rng = np.random.default_rng(1)
        x = rng.normal(size=(30, 3))
        y = 2.5 * x @ random_rotation(rng).T + [1.0, 2.0, 3.0] + rng.normal(0, 0.05, (30, 3))
        R, t, s = tr.umeyama_alignment(x, y)
        R_evo, t_evo, s_evo = umeyama_alignment(x.T, y.T, True)
        np.testing.assert_allclose(R, R_evo, atol=1e-10)
        np.testing.assert_allclose(t, t_evo, atol=1e-10)
        assert s == pytest.approx(s_evo, rel=1e-10)

    def test_recovers_similarity(self):
        rng = np.random.default_rng(2)
        gt = curved_drive(40)
        R, t, s = random_rotation(rng), np.array([3.0, -1.0, 4.0]), 0.05
        pred = similarity(gt, R, t, s)
        np.testing.assert_allclose(tr.align_trajectory(pred, gt), gt, atol=1e-9)

    def test_collinear_where_evo_refuses(self):
        from evo.core.geometry import GeometryException, umeyama_alignment

        gt = np.zeros((10, 3))
        gt[:, 2] = np.arange(10.0)
        pred = 0.5 * gt[:, [2, 0, 1]] + 1.0  # the same line, half as long, along x, shifted
        with pytest.raises(GeometryException):
            umeyama_alignment(pred.T, gt.T, True)
        R, t, s = tr.umeyama_alignment(pred, gt)
        assert s == pytest.approx(2.0)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(s * pred @ R.T + t, gt, atol=1e-9)

    def test_without_scale(self):
        gt = curved_drive(30)
        pred = similarity(gt, random_rotation(np.random.default_rng(4)), np.zeros(3), 1.0)
        R, t, s = tr.umeyama_alignment(pred[:, :3, 3], gt[:, :3, 3], with_scale=False)
        assert s == 1.0
        np.testing.assert_allclose(pred[:, :3, 3] @ R.T + t, gt[:, :3, 3], atol=1e-9)


class TestFiles:
    def test_tum_parses_with_evo(self, tmp_path):
        from evo.tools.file_interface import read_tum_trajectory_file

        gt = similarity(curved_drive(25), random_rotation(np.random.default_rng(5)), np.array([1.0, 2.0, 3.0]), 1.0)
        stamps = 0.1 * np.arange(25) + 1000.0
        tr.write_tum(tmp_path / "t.txt", gt, stamps)
        traj = read_tum_trajectory_file(str(tmp_path / "t.txt"))
        np.testing.assert_allclose(np.stack(traj.poses_se3), gt, atol=1e-8)
        np.testing.assert_allclose(traj.timestamps, stamps, atol=1e-6)
        first = (tmp_path / "t.txt").read_text().splitlines()[0].split()
        assert len(first) == 8 and float(first[7]) >= 0  # t x y z qx qy qz qw, qw printed >= 0

    def test_tum_round_trip_and_default_stamps(self, tmp_path):
        gt = curved_drive(12)
        tr.write_tum(tmp_path / "t.txt", gt)
        poses, stamps = tr.read_tum(tmp_path / "t.txt")
        np.testing.assert_allclose(poses, gt, atol=1e-8)
        np.testing.assert_array_equal(stamps, np.arange(12.0))

    def test_kitti_written_by_layout_parses_with_evo(self, tmp_path):
        from evo.tools.file_interface import read_kitti_poses_file

        gt = curved_drive(15)
        write_poses(tmp_path / "poses.txt", gt)
        path = read_kitti_poses_file(str(tmp_path / "poses.txt"))
        np.testing.assert_allclose(np.stack(path.poses_se3), gt, atol=1e-8)
        np.testing.assert_allclose(read_poses(tmp_path / "poses.txt"), gt, atol=1e-8)

    def test_tum_bad_files(self, tmp_path):
        with pytest.raises(MasksfmError, match="missing"):
            tr.read_tum(tmp_path / "none.txt")
        (tmp_path / "seven.txt").write_text("0 1 2 3 0 0 0\n")
        with pytest.raises(MasksfmError, match="seven.txt.*8 numbers"):
            tr.read_tum(tmp_path / "seven.txt")
        (tmp_path / "zero.txt").write_text("0 1 2 3 0 0 0 0\n")
        with pytest.raises(MasksfmError, match="zero quaternions"):
            tr.read_tum(tmp_path / "zero.txt")
        (tmp_path / "text.txt").write_text("a b c d e f g h\n")
        with pytest.raises(MasksfmError, match="not a TUM trajectory"):
            tr.read_tum(tmp_path / "text.txt")


class TestPlot:
    def test_writes_png(self, tmp_path):
        gt = curved_drive(30)
        pred = similarity(gt, np.eye(3), np.zeros(3), 0.1)
        tr.plot_trajectories(tmp_path / "with_gt.png", gt, pred, title="seq 09")
        tr.plot_trajectories(tmp_path / "pred_only.png", None, pred)
        for name in ("with_gt.png", "pred_only.png"):
            with Image.open(tmp_path / name) as image:
                assert image.format == "PNG" and image.size == (600, 600)
