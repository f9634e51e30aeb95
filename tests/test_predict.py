"""`masksfm predict`: file formats read back exactly, the road-plane scale on exact geometry and on
the rendered street's true depth, and the command on every kind of input with the shared tiny run."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from masksfm.cli import main
from masksfm.data.layout import read_cam, read_image, read_scene, write_image
from masksfm.data.outputs import depth_to_points, read_depth_png16, write_depth_png16, write_ply
from masksfm.errors import MasksfmError
from masksfm.road import fit_road_plane, metric_scale

from helpers import encode_mp4, one_line_error, run_masksfm

CAMERA_HEIGHT = 1.65  # the synthetic street's camera (docs/design.md §5)


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A minimal binary PLY reader, independent of the writer: (N, 3) float32 points, (N, 3) uint8 colours."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    count = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    properties = [tuple(line.split()[1:]) for line in header if line.startswith("property")]
    assert properties == [("float", "x"), ("float", "y"), ("float", "z"),
                          ("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    assert len(data) == end + 15 * count
    vertex = np.frombuffer(data, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)], count=count, offset=end)
    return vertex["xyz"], vertex["rgb"]


def plane_depth(normal, height: float, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Exact z-depth of the plane n·X + h = 0 seen through K; 0 (invalid) where a ray misses it."""
    h, w = size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # z = 1
    along = rays @ np.asarray(normal, np.float64)
    t = np.where(along < -1e-9, -height / np.where(along < -1e-9, along, -1.0), 0.0)
    return np.where(t < 200, t, 0.0)


def kitti_K(height: int = 128, width: int = 416) -> np.ndarray:
    return np.array([[0.58 * width, 0, (width - 1) / 2], [0, 1.92 * height, (height - 1) / 2], [0, 0, 1]])


def tilt(pitch_deg: float, roll_deg: float) -> np.ndarray:
    """The up normal (−y) seen from a camera pitched and rolled by these angles."""
    p, r = math.radians(pitch_deg), math.radians(roll_deg)
    n = np.array([0.0, -1.0, 0.0])
    Rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    Rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return Rz @ Rx @ n


# --- file formats --------------------------------------------------------------------------------


class TestPng16:
    def test_round_trip_within_half_a_step(self, tmp_path):
        rng = np.random.default_rng(0)
        depth = rng.uniform(0.5, 250.0, (7, 11)).astype(np.float32)
        depth[0, 0], depth[0, 1], depth[0, 2] = 0.0, np.nan, -3.0  # invalid
        path = tmp_path / "d.png"
        write_depth_png16(path, depth)
        back = read_depth_png16(path)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # an independent 16-bit reader
        assert raw.dtype == np.uint16 and np.array_equal(raw / 256.0, back.astype(np.float64))
        assert back[0, 0] == back[0, 1] == back[0, 2] == 0
        valid = np.isfinite(depth) & (depth > 0)
        assert np.abs(back - depth)[valid].max() <= 0.5 / 256 + 1e-4

    def test_clip_and_tiny_values(self, tmp_path):
        path = tmp_path / "d.png"
        write_depth_png16(path, np.array([[1000.0, 1e-4, 255.99, 1.0]]))
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        # Beyond 65535/256 m: clipped; a positive depth under a step stays valid (1, not 0).
        assert raw.tolist() == [[65535, 1, 65533, 256]]

    def test_corrupt_file_is_a_user_error(self, tmp_path):
        path = tmp_path / "d.png"
        path.write_bytes(b"not a png")
        with pytest.raises(MasksfmError, match="d.png"):
            read_depth_png16(path)


class TestPly:
    def test_round_trip(self, tmp_path):
        rng = np.random.default_rng(1)
        points = rng.normal(size=(50, 3)).astype(np.float32)
        colors = rng.integers(0, 256, (50, 3)).astype(np.uint8)
        write_ply(tmp_path / "c.ply", points, colors)
        xyz, rgb = read_ply(tmp_path / "c.ply")
        assert np.array_equal(xyz, points) and np.array_equal(rgb, colors)

    def test_points_reproject_onto_their_pixels(self):
        K = kitti_K(12, 20)
        depth = np.random.default_rng(2).uniform(1, 30, (12, 20)).astype(np.float32)
        depth[3, 4] = 0  # invalid: skipped
        rgb = np.random.default_rng(3).integers(0, 256, (12, 20, 3)).astype(np.uint8)
        points, colors = depth_to_points(depth, K, rgb)
        assert len(points) == 12 * 20 - 1
        uvw = points.astype(np.float64) @ K.T
        v, u = np.nonzero(depth > 0)
        assert np.allclose(uvw[:, 0] / uvw[:, 2], u, atol=1e-4) and np.allclose(uvw[:, 1] / uvw[:, 2], v, atol=1e-4)
        assert np.allclose(points[:, 2], depth[depth > 0]) and np.array_equal(colors, rgb[depth > 0])


# --- the road plane ------------------------------------------------------------------------------


class TestRoadPlane:
    @pytest.mark.parametrize("pitch, roll", [(0.0, 0.0), (4.0, -2.0), (-8.0, 5.0)])
    def test_exact_plane(self, pitch, roll, device):
        K = kitti_K()
        normal = tilt(pitch, roll)
        depth = plane_depth(normal, CAMERA_HEIGHT, K, (128, 416))
        plane = fit_road_plane(torch.from_numpy(depth)[None, None].to(device),
                                 torch.from_numpy(K)[None].to(device))
        assert plane.valid.item()
        assert plane.height.item() == pytest.approx(CAMERA_HEIGHT, rel=1e-6)
        assert np.allclose(plane.normal[0].cpu().numpy(), normal, atol=1e-6)
        assert plane.inlier_ratio.item() == pytest.approx(1.0)

    def test_scale_of_a_scaled_depth_with_a_wall_and_a_kerb(self):
        # A road, a pavement 15 cm higher beyond 4 m on the right, a wall 5 m on the left: the road
        # covers half of the lower image and wins; the pavement is too far above it to join its inliers.
        K = kitti_K()
        road = plane_depth([0, -1, 0], CAMERA_HEIGHT, K, (128, 416))
        pavement = plane_depth([0, -1, 0], CAMERA_HEIGHT - 0.15, K, (128, 416))
        ray_x = (np.arange(416) - K[0, 2]) / K[0, 0]  # X / z along each column
        depth = np.where(ray_x * pavement > 4.0, pavement, road)
        wall = np.broadcast_to(-5.0 / np.where(ray_x < 0, ray_x, -1.0), depth.shape)
        depth = np.where(ray_x * depth < -5.0, wall, depth)
        unit = 7.3  # the model's unknown unit: metres per unit
        scale, valid = metric_scale(torch.from_numpy(depth / unit)[None, None], torch.from_numpy(K)[None],
                                      CAMERA_HEIGHT)
        assert valid.item() and scale.item() == pytest.approx(unit, rel=1e-3)

    def test_true_street_depth(self, synth_dataset):
        """The rendered street's exact depth in an unknown unit: the scale comes back within 1 %."""
        unit = 3.7
        for scene_dir in sorted(d for d in synth_dataset.iterdir() if (d / "cam.txt").is_file()):
            scene = read_scene(scene_dir)
            depth = torch.from_numpy(np.stack([scene.read_depth(i) for i in range(len(scene))]))[:, None]
            K = torch.from_numpy(scene.K).float().expand(len(scene), 3, 3)
            scale, valid = metric_scale(depth / unit, K, CAMERA_HEIGHT)
            assert valid.all(), scene.name
            assert torch.allclose(scale, torch.full_like(scale, unit), rtol=0.01), (scene.name, scale)

    def test_noisy_depth(self):
        # 3 % multiplicative noise on every pixel: a few percent of scale error at most.
        K = kitti_K()
        depth = plane_depth(tilt(2.0, 1.0), CAMERA_HEIGHT, K, (128, 416))
        noisy = depth * np.random.default_rng(4).uniform(0.97, 1.03, depth.shape)
        scale, valid = metric_scale(torch.from_numpy(noisy / 2.0)[None, None], torch.from_numpy(K)[None],
                                      CAMERA_HEIGHT)
        assert valid.item() and scale.item() == pytest.approx(2.0, rel=0.02)

    def test_no_road(self):
        # A wall straight ahead (constant depth) and an empty map: nothing plausible below the camera.
        K = torch.from_numpy(kitti_K()).expand(2, 3, 3)
        depth = torch.stack([torch.full((1, 128, 416), 10.0), torch.zeros(1, 128, 416)]).double()
        plane = fit_road_plane(depth, K)
        assert not plane.valid.any()

    def test_batch_and_shapes(self):
        K = kitti_K(64, 208)
        depth = np.stack([plane_depth([0, -1, 0], h, K, (64, 208)) for h in (1.0, 2.0, 3.0)])[:, None]
        plane = fit_road_plane(torch.from_numpy(depth), torch.from_numpy(K).expand(3, 3, 3))
        assert plane.normal.shape == (3, 3) and plane.height.shape == plane.valid.shape == (3,)
        assert torch.allclose(plane.height, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        with pytest.raises(ValueError, match="depth"):
            fit_road_plane(torch.from_numpy(depth)[:, 0], torch.from_numpy(K).expand(3, 3, 3))


# --- the command ---------------------------------------------------------------------------------


def frames_of(out: Path, kind: str, suffix: str) -> list[str]:
    return sorted(p.stem for p in (out / kind).glob(f"*{suffix}"))




@pytest.fixture(scope="module")
def scene_dir(synth_dataset) -> Path:
    return sorted(d for d in synth_dataset.iterdir() if (d / "cam.txt").is_file())[0]


@pytest.fixture(scope="module")
def full_prediction(tiny_run, scene_dir, tmp_path_factory) -> Path:
    """Every output of a prepared scene: depth in three formats, clouds, trajectory."""
    out = tmp_path_factory.mktemp("predict") / "out"
    main(["predict", str(tiny_run), str(scene_dir), "--out", str(out), "--ply", "--trajectory", "--batch-size", "4"])
    return out


class TestPredictScene:
    def test_every_file(self, full_prediction, scene_dir):
        stems = list(read_scene(scene_dir).stems)
        assert frames_of(full_prediction, "depth", ".npy") == stems
        assert frames_of(full_prediction, "depth", ".png") == stems
        assert frames_of(full_prediction, "color", ".png") == stems
        assert frames_of(full_prediction, "points", ".ply") == stems
        for name in ("trajectory.kitti.txt", "trajectory.tum.txt", "trajectory.png", "cloud.ply"):
            assert (full_prediction / name).is_file(), name
        assert not (full_prediction / "scale.txt").exists()

    def test_depth_formats_agree(self, full_prediction, scene_dir):
        scene = read_scene(scene_dir)
        for stem in scene.stems:
            depth = np.load(full_prediction / "depth" / f"{stem}.npy")
            assert depth.dtype == np.float32 and depth.shape == scene.size
            assert np.all(np.isfinite(depth)) and depth.min() > 0
            png = read_depth_png16(full_prediction / "depth" / f"{stem}.png")
            assert np.abs(png - depth).max() <= 1 / 256
            color = read_image(full_prediction / "color" / f"{stem}.png")
            assert color.shape == (*scene.size, 3)

    def test_depth_is_the_nets_inverse_disparity(self, full_prediction, scene_dir, tiny_run):
        # Frames at the training size: depth = 1 / disp_0, no resampling in between.
        from masksfm.model import load_model

        model, config, _ = load_model(tiny_run)
        scene = read_scene(scene_dir)
        assert scene.size == (config.data.height, config.data.width)
        frame = torch.from_numpy(scene.read_frame(3)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            expected = 1 / model.depth_net(frame)[0][0, 0].numpy()
        assert np.allclose(np.load(full_prediction / "depth" / f"{scene.stems[3]}.npy"), expected, rtol=1e-5)

    def test_ply_reprojects_onto_pixels(self, full_prediction, scene_dir):
        scene = read_scene(scene_dir)
        stem = scene.stems[2]
        depth = np.load(full_prediction / "depth" / f"{stem}.npy")
        points, colors = read_ply(full_prediction / "points" / f"{stem}.ply")
        assert len(points) == depth.size
        uvw = points.astype(np.float64) @ read_cam(scene_dir / "cam.txt").T
        v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
        assert np.allclose(uvw[:, 0] / uvw[:, 2], u.ravel(), atol=1e-3)
        assert np.allclose(uvw[:, 1] / uvw[:, 2], v.ravel(), atol=1e-3)
        assert np.allclose(points[:, 2], depth.ravel(), rtol=1e-6)
        assert np.array_equal(colors, scene.read_frame(2).reshape(-1, 3))

    def test_trajectory_parses_with_evo(self, full_prediction, scene_dir):
        from evo.tools import file_interface

        n = len(read_scene(scene_dir))
        kitti = file_interface.read_kitti_poses_file(str(full_prediction / "trajectory.kitti.txt"))
        tum = file_interface.read_tum_trajectory_file(str(full_prediction / "trajectory.tum.txt"))
        assert kitti.num_poses == tum.num_poses == n
        assert np.allclose(kitti.positions_xyz, tum.positions_xyz, atol=1e-6)
        assert np.allclose(kitti.poses_se3[0], np.eye(4))
        assert np.allclose(tum.timestamps, np.arange(n))

    def test_fused_cloud_in_the_world_frame(self, full_prediction, scene_dir):
        from masksfm.data.layout import read_poses

        scene = read_scene(scene_dir)
        poses = read_poses(full_prediction / "trajectory.kitti.txt")
        cloud, _ = read_ply(full_prediction / "cloud.ply")
        pixels = scene.size[0] * scene.size[1]  # under FUSED_POINTS_PER_FRAME: every pixel of every frame
        assert len(cloud) == len(scene) * pixels
        # The last frame's points, moved back into its camera, are its own cloud.
        last, _ = read_ply(full_prediction / "points" / f"{scene.stems[-1]}.ply")
        back = (cloud[-pixels:].astype(np.float64) - poses[-1, :3, 3]) @ poses[-1, :3, :3]
        assert np.allclose(back, last, atol=1e-3 * np.abs(last).max())


class TestPredictInputs:
    def test_save_subset_and_other_frame_size(self, tiny_run, scene_dir, tmp_path):
        # A folder of plain images at another size: depth comes back at each image's own size.
        folder = tmp_path / "images"
        for i in range(2):
            frame = read_image(sorted(scene_dir.glob("*.png"))[i])
            write_image(folder / f"img{i}.jpg", cv2.resize(frame, (300, 90), interpolation=cv2.INTER_AREA))
        out = tmp_path / "out"
        main(["predict", str(tiny_run), str(folder), "--out", str(out), "--save", "npy"])
        assert frames_of(out, "depth", ".npy") == ["img0", "img1"]
        assert not (out / "color").exists() and not list((out / "depth").glob("*.png"))
        assert np.load(out / "depth" / "img0.npy").shape == (90, 300)

    def test_single_image(self, tiny_run, scene_dir, tmp_path):
        image = sorted(scene_dir.glob("*.png"))[0]
        main(["predict", str(tiny_run), str(image), "--out", str(tmp_path / "out"), "--ply"])
        assert frames_of(tmp_path / "out", "depth", ".npy") == [image.stem]
        points, _ = read_ply(tmp_path / "out" / "points" / f"{image.stem}.ply")
        assert len(points) == 64 * 208

    def test_flip_writes_the_mirror_averaged_depth_and_trajectory(self, tiny_run, scene_dir, tmp_path):
        """`predict --flip --trajectory` on the scene's first 5 frames at the net's size: the depth is
        1 / the flip-averaged disparity, the trajectory the chain of the flip-averaged poses."""
        from masksfm.data.layout import read_poses
        from masksfm.inference import frames_to_tensor, predict_disparity, predict_relative_poses
        from masksfm.model import load_model
        from masksfm.trajectory import chain_relative_poses

        folder = tmp_path / "frames"
        frames = [read_image(path) for path in sorted(scene_dir.glob("*.png"))[:5]]
        for i, frame in enumerate(frames):
            write_image(folder / f"{i:06d}.png", frame)
        out = tmp_path / "out"
        main(["predict", str(tiny_run), str(folder), "--out", str(out), "--save", "npy", "--trajectory", "--flip"])
        model, config, _ = load_model(tiny_run)
        x, cpu = frames_to_tensor(np.stack(frames), config.data.height, config.data.width), torch.device("cpu")
        disparity = predict_disparity(model.depth_net, x, cpu, flip=True)[2, 0].numpy()
        assert np.allclose(np.load(out / "depth" / "000002.npy"), 1.0 / disparity, rtol=1e-5)
        flipped = chain_relative_poses(predict_relative_poses(model.pose_net, x, config.data.snippet_length, cpu, flip=True))
        plain = chain_relative_poses(predict_relative_poses(model.pose_net, x, config.data.snippet_length, cpu))
        written = read_poses(out / "trajectory.kitti.txt")
        assert np.allclose(written, flipped, atol=1e-6) and not np.allclose(written, plain, atol=1e-6)

    def test_dataset_goes_to_scene_folders(self, tiny_run, synth_dataset, tmp_path):
        main(["predict", str(tiny_run), str(synth_dataset), "--out", str(tmp_path / "out"), "--save", "npy",
              "--batch-size", "16"])
        scenes = sorted(d.name for d in synth_dataset.iterdir() if (d / "cam.txt").is_file())
        assert sorted(d.name for d in (tmp_path / "out").iterdir()) == scenes
        for name in scenes:
            assert frames_of(tmp_path / "out" / name, "depth", ".npy") == list(read_scene(synth_dataset / name).stems)

    def test_video(self, tiny_run, scene_dir, tmp_path):
        frames = [read_image(p) for p in sorted(scene_dir.glob("*.png"))[:5]]
        clip = encode_mp4(tmp_path / "clip.mp4", frames)
        out = tmp_path / "out"
        main(["predict", str(tiny_run), str(clip), "--out", str(out), "--save", "npy", "--trajectory", "--fov", "80"])
        assert frames_of(out, "depth", ".npy") == [f"{i:06d}" for i in range(5)]
        assert np.load(out / "depth" / "000000.npy").shape == (64, 208)
        assert np.loadtxt(out / "trajectory.kitti.txt").shape == (5, 12)


class TestRefine:
    @pytest.mark.slow
    def test_refined_trajectory_through_the_command(self, tiny_run, scene_dir, tmp_path):
        """`predict --trajectory --refine 3` in a real process, on the scene's first 6 frames at twice
        the net's size (cam.txt scaled): the trajectory is the chain of
        `refine_relative_poses` on the frames at the net's size with cam.txt scaled back, with the
        model's motion (a car's camera: every refined pair on its chord), and not the pose net's own."""
        from masksfm.data.layout import read_poses, write_cam
        from masksfm.geometry import scale_intrinsics, vehicle_chord
        from masksfm.inference import frames_to_tensor, predict_relative_poses
        from masksfm.model import load_model
        from masksfm.refine import refine_relative_poses
        from masksfm.trajectory import chain_relative_poses

        scene = read_scene(scene_dir)
        big = tmp_path / "big"
        frames = [cv2.resize(scene.read_frame(i), (416, 128), interpolation=cv2.INTER_LINEAR) for i in range(6)]
        for i, frame in enumerate(frames):
            write_image(big / f"{i:06d}.png", frame)
        write_cam(big / "cam.txt", scale_intrinsics(scene.K, 2.0, 2.0))
        out = tmp_path / "out"
        result = run_masksfm("predict", tiny_run, big, "--out", out, "--save", "npy", "--trajectory", "--refine", "3",
                             timeout=600)
        assert result.returncode == 0, result.stderr
        model, config, _ = load_model(tiny_run)
        x = frames_to_tensor(np.stack(frames), config.data.height, config.data.width)
        rel = predict_relative_poses(model.pose_net, x, config.data.snippet_length, torch.device("cpu"))
        assert config.model.motion == "vehicle"
        refined = refine_relative_poses(model.depth_net, x, rel, scene.K, iterations=3, motion="vehicle")
        written = read_poses(out / "trajectory.kitti.txt")
        steps = torch.from_numpy(np.linalg.inv(written[:-1]) @ written[1:])  # T_t2s, target i+1 and source i: on its chord
        chord = vehicle_chord(steps[:, :3, :3])
        assert torch.linalg.cross(steps[:, :3, 3], chord, dim=1).norm(dim=1).max() < 1e-4 * steps[:, :3, 3].norm(dim=1).min()
        assert np.allclose(written, chain_relative_poses(refined), atol=1e-4)
        assert not np.allclose(written, chain_relative_poses(rel), atol=1e-2)


class TestMetricScale:
    def test_scale_file_and_metric_depth(self, tiny_run, scene_dir, full_prediction, tmp_path):
        out = tmp_path / "out"
        main(["predict", str(tiny_run), str(scene_dir), "--out", str(out), "--save", "npy", "--camera-height", "1.65"])
        rows = [line.split() for line in (out / "scale.txt").read_text().splitlines() if not line.startswith("#")]
        assert [r[0] for r in rows] == list(read_scene(scene_dir).stems)
        for stem, scale, height in rows:
            model_scale = np.load(full_prediction / "depth" / f"{stem}.npy")
            metric = np.load(out / "depth" / f"{stem}.npy")
            assert np.allclose(metric, model_scale * float(scale), rtol=1e-5)
            if height != "nan":  # a fitted frame: the camera stands 1.65 m above its road
                assert float(scale) * float(height) == pytest.approx(1.65, rel=1e-6)

    def test_true_depth_through_the_command(self, tiny_run, scene_dir, tmp_path, monkeypatch):
        """The whole path with a perfect net: the rendered depth in a unit of 1/3.7 m comes back in metres."""
        import masksfm.inference

        scene = read_scene(scene_dir)
        unit = 3.7
        truth = [scene.read_depth(i) for i in range(len(scene))]
        queue = [torch.from_numpy(unit / np.where(d > 0, d, 1000.0))[None] for d in truth]  # sky: far away

        def perfect(depth_net, frames, device, batch_size=8, flip=False):
            return torch.stack([queue.pop(0) for _ in range(len(frames))]).float()

        monkeypatch.setattr(masksfm.inference, "predict_disparity", perfect)
        out = tmp_path / "out"
        main(["predict", str(tiny_run), str(scene_dir), "--out", str(out), "--save", "npy", "--camera-height", "1.65"])
        scales = np.loadtxt(out / "scale.txt", usecols=1)
        assert np.allclose(scales, unit, rtol=0.01)
        for stem, gt in zip(scene.stems, truth):
            metric = np.load(out / "depth" / f"{stem}.npy")
            valid = gt > 0
            assert np.median(np.abs(metric[valid] - gt[valid]) / gt[valid]) < 0.01


class TestBadInput:

    def test_not_an_image(self, tiny_run, tmp_path, capsys):
        notes = tmp_path / "notes.txt"
        notes.write_text("hello\n")
        assert "notes.txt" in one_line_error(["predict", str(tiny_run), str(notes), "--out", str(tmp_path / "o")], capsys)

    def test_corrupt_image(self, tiny_run, tmp_path, capsys):
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        assert "bad.png" in one_line_error(["predict", str(tiny_run), str(bad), "--out", str(tmp_path / "o")], capsys)

    def test_empty_folder(self, tiny_run, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        assert "empty" in one_line_error(["predict", str(tiny_run), str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                                   capsys)

    def test_unreadable_video(self, tiny_run, tmp_path, capsys):
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
        assert "clip.mp4" in one_line_error(["predict", str(tiny_run), str(clip), "--out", str(tmp_path / "o")], capsys)

    def test_trajectory_of_one_image(self, tiny_run, scene_dir, tmp_path, capsys):
        image = sorted(scene_dir.glob("*.png"))[0]
        err = one_line_error(["predict", str(tiny_run), str(image), "--out", str(tmp_path / "o"), "--trajectory"], capsys)
        assert "--trajectory" in err and not (tmp_path / "o").exists()

    def test_bad_flags(self, tiny_run, scene_dir, tmp_path, capsys):
        out = str(tmp_path / "o")
        assert "--save" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out, "--save", "png,npy"],
                                    capsys)
        assert "--intrinsics" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out,
                                           "--intrinsics", "1,2,3"], capsys)
        assert "--camera-height" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out,
                                              "--camera-height", "-1"], capsys)
        assert "--refine" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out, "--trajectory",
                                             "--refine", "0"], capsys)
        assert "--trajectory" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out, "--refine"],
                                                capsys)
        assert "add --refine" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out, "--trajectory",
                                                 "--refine-motion", "free"], capsys)
        assert "invalid choice" in one_line_error(["predict", str(tiny_run), str(scene_dir), "--out", out,
                                                   "--trajectory", "--refine", "--refine-motion", "boat"], capsys)

    def test_one_line_from_a_real_process(self, tiny_run, tmp_path):
        (tmp_path / "empty").mkdir()
        result = run_masksfm("predict", tiny_run, tmp_path / "empty", "--out", tmp_path / "o", timeout=120)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "empty" in result.stderr


def test_a_folder_of_netpbm_images_is_read_as_rgb(tmp_path):
    """.ppm and .pgm (Middlebury's and many SLAM sets' formats) are inputs; grey frames become RGB."""
    from PIL import Image

    from masksfm.data.inputs import open_input

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    colour = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "frame2.pgm")
    Image.fromarray(colour).save(tmp_path / "frame10.ppm")
    (sequence,) = open_input(tmp_path)
    assert sequence.count == 2
    (stem_a, a), (stem_b, b) = sequence.frames()
    assert (stem_a, stem_b) == ("frame2", "frame10")  # natural order
    np.testing.assert_array_equal(a, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(b, colour)
