"""The sequence-folder layout: round trips of every file kind, and one test per validation error."""

import json

import numpy as np
import pytest
from PIL import Image

from masksfm.data import layout as L
from masksfm.errors import MasksfmError

K = np.array([[120.5, 0.0, 31.5], [0.0, 121.25, 11.5], [0.0, 0.0, 1.0]])


def random_frames(n=3, h=24, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def poses(n):
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, 2, 3] = np.arange(n) * 0.75  # driving forward along z
    out[:, 0, 3] = np.linspace(0, 0.1, n)
    return out


@pytest.fixture
def scene_dir(tmp_path):
    """A valid three-frame scene with poses and depth."""
    depths = [np.full((24, 64), 5.0 + i, np.float32) for i in range(3)]
    return L.write_scene(tmp_path, "scene_a", random_frames(), K, poses=poses(3), depths=depths)


class TestImages:
    def test_png_round_trip_exact(self, tmp_path):
        rgb = random_frames(1)[0]
        L.write_image(tmp_path / "a.png", rgb)
        back = L.read_image(tmp_path / "a.png")
        assert back.dtype == np.uint8 and back.shape == (24, 64, 3) and back.flags.writeable
        assert np.array_equal(back, rgb)

    def test_jpg_round_trip_close(self, tmp_path):
        # A smooth image: JPEG at quality 95 keeps it within a few grey levels.
        u = np.linspace(0, 255, 64)
        rgb = np.stack([np.broadcast_to(u, (24, 64)), np.full((24, 64), 100.0), np.broadcast_to(u[::-1], (24, 64))], -1)
        rgb = rgb.round().astype(np.uint8)
        L.write_image(tmp_path / "sub" / "a.jpg", rgb)
        back = L.read_image(tmp_path / "sub" / "a.jpg")
        assert back.shape == rgb.shape
        assert np.abs(back.astype(int) - rgb).mean() < 2.0

    def test_grey_and_rgba_become_rgb(self, tmp_path):
        grey = np.arange(24 * 64, dtype=np.uint8).reshape(24, 64)
        Image.fromarray(grey).save(tmp_path / "grey.png")
        rgb = L.read_image(tmp_path / "grey.png")
        assert rgb.shape == (24, 64, 3) and all(np.array_equal(rgb[..., c], grey) for c in range(3))
        rgba = np.dstack([random_frames(1)[0], np.full((24, 64), 7, np.uint8)])
        Image.fromarray(rgba).save(tmp_path / "rgba.png")
        assert np.array_equal(L.read_image(tmp_path / "rgba.png"), rgba[..., :3])

    def test_missing_image(self, tmp_path):
        with pytest.raises(MasksfmError, match=r"nothere\.png: missing image"):
            L.read_image(tmp_path / "nothere.png")

    def test_corrupt_image(self, tmp_path):
        (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
        with pytest.raises(MasksfmError, match=r"junk\.png: unreadable or corrupt"):
            L.read_image(tmp_path / "junk.png")

    def test_truncated_image(self, tmp_path):
        L.write_image(tmp_path / "t.png", random_frames(1)[0])
        data = (tmp_path / "t.png").read_bytes()
        (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
        with pytest.raises(MasksfmError, match=r"t\.png: unreadable or corrupt"):
            L.read_image(tmp_path / "t.png")


class TestCamAndPoses:
    def test_cam_round_trip(self, tmp_path):
        L.write_cam(tmp_path / "cam.txt", K)
        assert np.array_equal(L.read_cam(tmp_path / "cam.txt"), K)

    def test_poses_round_trip(self, tmp_path):
        P = poses(5)
        L.write_poses(tmp_path / "poses.txt", P)
        back = L.read_poses(tmp_path / "poses.txt")
        assert back.shape == (5, 4, 4) and np.allclose(back, P, atol=1e-9)
        assert len((tmp_path / "poses.txt").read_text().splitlines()) == 5

    def test_single_pose_file(self, tmp_path):
        L.write_poses(tmp_path / "poses.txt", poses(1))
        assert L.read_poses(tmp_path / "poses.txt").shape == (1, 4, 4)


class TestDatasetInfoAndSplits:
    def test_info_round_trip(self, tmp_path):
        L.write_dataset_info(tmp_path, "synthetic", seed=np.int64(3), size=np.array([128, 416]), note="x")
        info = L.read_dataset_info(tmp_path)
        assert info == {"kind": "synthetic", "seed": 3, "size": [128, 416], "note": "x"}

    def test_missing_info_reads_as_unknown(self, tmp_path):
        assert L.read_dataset_info(tmp_path) == {"kind": "unknown"}

    def test_missing_root(self, tmp_path):
        with pytest.raises(MasksfmError, match="nowhere: not a data folder"):
            L.read_dataset_info(tmp_path / "nowhere")

    def test_corrupt_info(self, tmp_path):
        (tmp_path / "dataset.json").write_text('{"kind": "synth')
        with pytest.raises(MasksfmError, match=r"dataset\.json: unreadable or corrupt JSON"):
            L.read_dataset_info(tmp_path)

    def test_info_without_kind(self, tmp_path):
        (tmp_path / "dataset.json").write_text(json.dumps(["synthetic"]))
        with pytest.raises(MasksfmError, match=r'dataset\.json: expected a JSON object with a string "kind"'):
            L.read_dataset_info(tmp_path)

    def test_split_round_trip_and_blank_lines(self, tmp_path, scene_dir):
        L.write_scene(tmp_path, "scene_b", random_frames(2), K)
        L.write_split(tmp_path, "train", ["scene_a", "scene_b"])
        assert L.read_split(tmp_path, "train") == ["scene_a", "scene_b"]
        (tmp_path / "val.txt").write_text("\n  scene_b  \n\n")
        assert L.read_split(tmp_path, "val") == ["scene_b"]
        L.write_split(tmp_path, "test", [])
        assert L.read_split(tmp_path, "test") == []

    def test_missing_split(self, tmp_path):
        with pytest.raises(MasksfmError, match=r"val\.txt: missing split file"):
            L.read_split(tmp_path, "val")

    def test_split_names_missing_scene(self, tmp_path, scene_dir):
        L.write_split(tmp_path, "train", ["scene_a", "scene_gone"])
        with pytest.raises(MasksfmError, match=r"train\.txt: names scene 'scene_gone'"):
            L.read_split(tmp_path, "train")

    def test_load_split(self, tmp_path, scene_dir):
        L.write_split(tmp_path, "train", ["scene_a"])
        scenes = L.load_split(tmp_path, "train")
        assert [s.name for s in scenes] == ["scene_a"] and len(scenes[0]) == 3

    def test_load_empty_split(self, tmp_path):
        L.write_split(tmp_path, "test", [])
        with pytest.raises(MasksfmError, match=r"test\.txt: the split 'test' names no scenes"):
            L.load_split(tmp_path, "test")
        assert L.load_split(tmp_path, "test", allow_empty=True) == []


class TestScene:
    def test_write_then_read(self, scene_dir):
        scene = L.read_scene(scene_dir)
        assert scene.name == "scene_a" and scene.path == scene_dir
        assert [f.name for f in scene.frames] == ["000000.png", "000001.png", "000002.png"]
        assert scene.stems == ("000000", "000001", "000002")
        assert len(scene) == 3 and scene.size == (24, 64)
        assert scene.K.dtype == np.float64 and np.array_equal(scene.K, K)
        assert scene.poses.shape == (3, 4, 4) and np.allclose(scene.poses, poses(3))
        for i, frame in enumerate(random_frames()):
            assert np.array_equal(scene.read_frame(i), frame)
        depth = scene.read_depth(2)
        assert depth.dtype == np.float32 and depth.shape == (24, 64) and np.all(depth == 7.0)
        assert scene.has_depth

    def test_optional_files_absent(self, tmp_path):
        scene = L.read_scene(L.write_scene(tmp_path, "bare", random_frames(2), K))
        assert scene.poses is None and not scene.has_depth
        assert scene.read_depth(0) is None and scene.read_visibility(1, 0) is None and scene.read_moving(0) is None

    def test_visibility_and_moving_round_trip(self, scene_dir):
        rng = np.random.default_rng(1)
        visibility = rng.integers(0, 2, (24, 64)).astype(np.uint8)
        moving = rng.random((24, 64)) < 0.3
        L.write_visibility(scene_dir, 1, 0, visibility)
        L.write_moving(scene_dir, "000002", moving)
        assert (scene_dir / "visibility" / "000001_000000.npy").is_file()
        scene = L.read_scene(scene_dir)
        back = scene.read_visibility(1, 0)
        assert back.dtype == np.uint8 and np.array_equal(back, visibility)
        assert scene.read_visibility(0, 1) is None
        stored = np.asarray(Image.open(scene_dir / "moving" / "000002.png"))
        assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 255}
        assert np.array_equal(scene.read_moving(2), moving)

    def test_kitti_names_sorted_temporally(self, tmp_path):
        scene_dir = tmp_path / "2011_09_26_drive_0001_sync_02"
        frames = random_frames(3)
        for number, frame in zip([123, 9, 40], frames):
            L.write_image(scene_dir / f"{number:010d}.png", frame)
        L.write_cam(scene_dir / "cam.txt", K)
        L.write_depth(scene_dir, "0000000040", np.ones((24, 64)))
        scene = L.read_scene(scene_dir)
        assert scene.stems == ("0000000009", "0000000040", "0000000123")
        assert np.array_equal(scene.read_frame(0), frames[1])
        assert scene.read_depth(1) is not None and scene.read_depth(0) is None

    def test_jpg_frames(self, tmp_path):
        scene = L.read_scene(L.write_scene(tmp_path, "j", random_frames(2), K, suffix=".jpg"))
        assert [f.name for f in scene.frames] == ["000000.jpg", "000001.jpg"]
        assert scene.read_frame(1).shape == (24, 64, 3)

    def test_no_frames(self, tmp_path):
        (tmp_path / "empty").mkdir()
        L.write_cam(tmp_path / "empty" / "cam.txt", K)
        with pytest.raises(MasksfmError, match="empty: no frames"):
            L.read_scene(tmp_path / "empty")

    def test_not_a_folder(self, tmp_path):
        with pytest.raises(MasksfmError, match="ghost: not a scene folder"):
            L.read_scene(tmp_path / "ghost")

    def test_missing_cam(self, scene_dir):
        (scene_dir / "cam.txt").unlink()
        with pytest.raises(MasksfmError, match=r"cam\.txt: missing intrinsics file"):
            L.read_scene(scene_dir)

    def test_cam_not_3x3(self, scene_dir):
        (scene_dir / "cam.txt").write_text("1 0 0\n0 1 0\n")
        with pytest.raises(MasksfmError, match=r"cam\.txt: expected a 3x3 intrinsics matrix"):
            L.read_scene(scene_dir)

    def test_cam_not_numbers(self, scene_dir):
        (scene_dir / "cam.txt").write_text("1 0 0\n0 one 0\n0 0 1\n")
        with pytest.raises(MasksfmError, match=r"cam\.txt: not a 3x3 matrix of numbers"):
            L.read_scene(scene_dir)

    @pytest.mark.parametrize("row", [0, 1])
    def test_cam_nonpositive_focal(self, scene_dir, row):
        bad = K.copy()
        bad[row, row] = -bad[row, row] if row else 0.0
        L.write_cam(scene_dir / "cam.txt", bad)
        with pytest.raises(MasksfmError, match=r"cam\.txt: focal lengths must be positive"):
            L.read_scene(scene_dir)

    def test_frames_of_different_sizes(self, scene_dir):
        L.write_image(scene_dir / "000003.png", np.zeros((24, 60, 3), np.uint8))
        with pytest.raises(MasksfmError, match=r"000003\.png: frame size 60x24 differs from 000000\.png's 64x24"):
            L.read_scene(scene_dir)

    def test_corrupt_frame_header(self, scene_dir):
        (scene_dir / "000001.png").write_bytes(b"\x89PNG garbage")
        with pytest.raises(MasksfmError, match=r"000001\.png: unreadable or corrupt image"):
            L.read_scene(scene_dir)

    def test_poses_of_wrong_count(self, scene_dir):
        L.write_poses(scene_dir / "poses.txt", poses(4))
        with pytest.raises(MasksfmError, match=r"poses\.txt: 4 poses for 3 frames"):
            L.read_scene(scene_dir)

    def test_bad_poses_file(self, scene_dir):
        (scene_dir / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1\n" * 3)
        with pytest.raises(MasksfmError, match=r"poses\.txt: expected 12 numbers per line"):
            L.read_scene(scene_dir)

    def test_duplicate_stems(self, scene_dir):
        L.write_image(scene_dir / "000001.jpg", random_frames(1)[0])
        with pytest.raises(MasksfmError, match="two frames named '000001'"):
            L.read_scene(scene_dir)

    def test_depth_of_wrong_shape(self, scene_dir):
        np.save(scene_dir / "depth" / "000001.npy", np.ones((12, 32), np.float32))
        with pytest.raises(MasksfmError, match=r"000001\.npy: expected an array of shape \(24, 64\)"):
            L.read_scene(scene_dir).read_depth(1)

    def test_corrupt_depth(self, scene_dir):
        (scene_dir / "depth" / "000000.npy").write_bytes(b"\x93NUMPY junk")
        with pytest.raises(MasksfmError, match=r"000000\.npy: unreadable or corrupt \.npy"):
            L.read_scene(scene_dir).read_depth(0)

    def test_pickled_depth_is_refused(self, scene_dir):
        # An object array can only be stored by pickling; loading it would run code from the file.
        np.save(scene_dir / "depth" / "000000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        with pytest.raises(MasksfmError, match=r"000000\.npy: unreadable or corrupt \.npy"):
            L.read_scene(scene_dir).read_depth(0)

    def test_integer_depth_is_refused(self, scene_dir):
        np.save(scene_dir / "depth" / "000000.npy", np.ones((24, 64), np.int32))
        with pytest.raises(MasksfmError, match=r"000000\.npy: expected floating-point depth"):
            L.read_scene(scene_dir).read_depth(0)

    def test_write_scene_checks_counts(self, tmp_path):
        with pytest.raises(ValueError, match="4 poses for 3 frames"):
            L.write_scene(tmp_path, "x", random_frames(3), K, poses=poses(4))
