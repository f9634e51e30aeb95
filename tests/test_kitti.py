"""`prepare kitti-raw` and `prepare kitti-odometry` on small fake KITTI trees built here: tiny PNGs,
calibration files with known matrices, velodyne scans of a known wall, box and road."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksfm.cli import main
from masksfm.data import kitti, layout
from masksfm.errors import MasksfmError

# KITTI 2011_09_26's rectification and velodyne calibration; projection matrices at a tenth of
# KITTI's resolution (S_rect 124 x 38), with a 4th column as the real ones have (stereo baseline).
R_RECT_00 = np.array([9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01, -4.278459e-03,
                      7.402527e-03, 4.351614e-03, 9.999631e-01]).reshape(3, 3)
VELO_R = np.array([7.533745e-03, -9.999714e-01, -6.166020e-04, 1.480249e-02, 7.280733e-04, -9.998902e-01,
                   9.998621e-01, 7.523790e-03, 1.480755e-02]).reshape(3, 3)
VELO_T = np.array([-4.069766e-03, -7.631618e-02, -2.717806e-01])
SIZE = (38, 124)  # H, W of the fake raw images and of S_rect_02
P_RECT = {
    "2011_09_26": {"02": [[72.15377, 0, 60.95593, 4.485728], [0, 72.15377, 17.2854, 0.02163791],
                          [0, 0, 1, 0.002745884]],
                   "03": [[71.0, 0, 62.5, -33.95242], [0, 71.5, 18.0, 0.2199936], [0, 0, 1, 0.002729905]]},
    "2011_09_28": {"02": [[70.0, 0, 61.0, 4.4], [0, 70.5, 18.5, 0.02], [0, 0, 1, 0.0027]],
                   "03": [[69.0, 0, 60.0, -33.0], [0, 69.5, 17.5, 0.2], [0, 0, 1, 0.0027]]},
}
OUT_H, OUT_W = 16, 52
# Frames present in the fake drives. 0018's static frames (SfMLearner's list) in 0..63 are 0-2,
# 6-37, 43-57, which leaves three pieces; 2011_09_28_drive_0001's are 0-14.
DRIVES = {
    "2011_09_26/2011_09_26_drive_0001_sync": range(6),
    "2011_09_26/2011_09_26_drive_0018_sync": range(64),
    "2011_09_26/2011_09_26_drive_0002_sync": range(16),  # an Eigen test drive
    "2011_09_28/2011_09_28_drive_0001_sync": range(20),
}
SCANS = (0, 3, 6, 9, 12)  # velodyne scans of test drive 0002; frame 15 (also a test image) has none
# The test images of drive 0002 that have scans, in the published list's order.
EIGEN_FOUND = [f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{k:010d}.png" for k in (12, 3, 9, 0, 6)]
ANNOTATED = {12: "train", 15: "val", 3: "train"}  # test images with annotated depth, and its download folder
BENCHMARK_FOUND = [f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{k:010d}.png" for k in (12, 15, 3)]


def _numbers(values) -> str:
    return " ".join(f"{v:.9e}" for v in np.ravel(values))


def write_calibration(date_dir: Path, P: dict, size=SIZE) -> None:
    date_dir.mkdir(parents=True, exist_ok=True)
    (date_dir / "calib_cam_to_cam.txt").write_text("\n".join([
        "calib_time: 09-Jan-2012 13:57:47",
        "corner_dist: 9.950000e-02",
        f"R_rect_00: {_numbers(R_RECT_00)}",
        f"P_rect_00: {_numbers(np.hstack([np.array(P['02'])[:, :3], np.zeros((3, 1))]))}",
        f"S_rect_02: {size[1]:.6e} {size[0]:.6e}",
        f"R_rect_02: {_numbers(np.eye(3))}",
        f"P_rect_02: {_numbers(P['02'])}",
        f"S_rect_03: {size[1]:.6e} {size[0]:.6e}",
        f"P_rect_03: {_numbers(P['03'])}",
    ]) + "\n")
    (date_dir / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {_numbers(VELO_R)}\nT: {_numbers(VELO_T)}\n"
        "delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n")
    (date_dir / "calib_imu_to_velo.txt").write_text(f"R: {_numbers(np.eye(3))}\nT: 0 0 0\n")


def frame_pixels(drive: str, cam: str, frame: int) -> np.ndarray:
    seed = zlib.crc32(f"{drive} {cam} {frame}".encode())
    return np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def scan_points(frame: int) -> np.ndarray:
    """A wall at x = 10 + frame/2 m, a box face at x = 6 m in front of it, the road 1.73 m below the
    velodyne, and the mirror image of the wall behind the sensor (x < 0), which lands on the same
    pixels and must be dropped; reflectance random (it must not enter the projection)."""
    rng = np.random.default_rng(frame)
    y, z = np.meshgrid(np.arange(-6, 6.001, 0.05), np.arange(-1.7, 1.5001, 0.05))
    wall = np.stack([np.full(y.size, 10 + frame / 2), y.ravel(), z.ravel()], 1)
    y, z = np.meshgrid(np.arange(-1, 1.001, 0.05), np.arange(-0.5, 0.5001, 0.05))
    box = np.stack([np.full(y.size, 6.0), y.ravel(), z.ravel()], 1)
    x, y = np.meshgrid(np.arange(4, 40, 0.25), np.arange(-8, 8.001, 0.25))
    road = np.stack([x.ravel(), y.ravel(), np.full(x.size, -1.73)], 1)
    xyz = np.concatenate([wall, box, road, -wall])
    return np.hstack([xyz, rng.random((len(xyz), 1))]).astype(np.float32)


def reference_depth(points: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The published ground truth of a scan, written out point by point: drop x < 0, project with
    P_rect · R_rect_00 · [R | T], pixel = round − 1, keep the smallest forward distance x per pixel."""
    best: dict[tuple[int, int], float] = {}
    cam = R_RECT_00 @ (VELO_R @ points[:, :3].astype(np.float64).T + VELO_T[:, None])
    image = np.asarray(P) @ np.vstack([cam, np.ones(len(points))])
    for (x, _, _, _), (a, b, c) in zip(points, image.T):
        if x < 0:
            continue
        u, v = round(a / c) - 1, round(b / c) - 1
        if 0 <= u < SIZE[1] and 0 <= v < SIZE[0]:
            best[v, u] = min(best.get((v, u), np.inf), float(x))
    depth = np.zeros(SIZE, np.float32)
    for (v, u), x in best.items():
        depth[v, u] = x
    return depth


def build_raw(root: Path, drives=DRIVES, scans=SCANS) -> Path:
    for date, P in P_RECT.items():
        write_calibration(root / date, P)
    for drive, frames in drives.items():
        for cam in kitti.CAMERAS:
            for k in frames:
                path = root / drive / f"image_{cam}" / "data" / f"{k:010d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame_pixels(drive, cam, k)).save(path)
    for k in scans:
        path = root / "2011_09_26/2011_09_26_drive_0002_sync/velodyne_points/data" / f"{k:010d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        scan_points(k).tofile(path)
    return root


def annotated_depth(frame: int) -> np.ndarray:
    values = np.random.default_rng(100 + frame).integers(0, 80 * 256, SIZE).astype(np.uint16)
    values[::2] = 0
    return values


def build_annotated(root: Path) -> Path:
    for frame, folder in ANNOTATED.items():
        path = root / folder / "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02" / f"{frame:010d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(annotated_depth(frame)).save(path)
    return root


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return build_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    """One `prepare kitti-raw` run, in-process through the CLI; returns (out, stdout)."""
    annotated = build_annotated(tmp_path_factory.mktemp("annotated"))
    out = tmp_path_factory.mktemp("prepared") / "kitti"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["prepare", "kitti-raw", str(raw), str(out), "--height", str(OUT_H), "--width", str(OUT_W),
              "--annotated", str(annotated)])
    return out, stdout.getvalue()


def scaled(K, h0=SIZE[0], w0=SIZE[1]):
    """Hand-written half-pixel-centre scaling (docs/design.md §2) of a 3x4 projection's K."""
    K = np.array(K, dtype=np.float64)[:, :3]
    sx, sy = OUT_W / w0, OUT_H / h0
    return np.array([[sx * K[0, 0], 0, sx * (K[0, 2] + 0.5) - 0.5], [0, sy * K[1, 1], sy * (K[1, 2] + 0.5) - 0.5],
                     [0, 0, 1]])


class TestCalibrationAndProjection:
    def test_read_calib_file(self, raw):
        calib = kitti.read_calib_file(raw / "2011_09_26" / "calib_cam_to_cam.txt")
        assert calib["calib_time"] == "09-Jan-2012 13:57:47"
        assert np.allclose(calib["P_rect_02"].reshape(3, 4), P_RECT["2011_09_26"]["02"])

    def test_depth_map_matches_point_by_point_reference(self, raw):
        P = np.array(P_RECT["2011_09_26"]["02"])
        points = scan_points(3)
        scan = raw / "2011_09_26/2011_09_26_drive_0002_sync/velodyne_points/data/0000000003.bin"
        depth = kitti.generate_depth_map(raw / "2011_09_26", scan)
        assert depth.shape == SIZE and depth.dtype == np.float32
        assert np.array_equal(depth, reference_depth(points, P))
        # Analytic: every pixel holds the wall (11.5 m), the box (6 m) or a road point (4-40 m).
        values = set(np.unique(depth[depth > 0]).tolist())
        assert {11.5, 6.0} <= values and values <= {11.5, 6.0} | {float(x) for x in np.arange(4, 40, 0.25)}
        # The box wins where it covers the wall: a 2 m x 1 m face 5.7 m before camera 2 spans ~25 x 12 px
        # around pixel (60, 16).
        assert np.all(depth[12:21, 52:68] == 6.0)

    def test_points_behind_are_dropped_and_reflectance_ignored(self, raw):
        P_velo = kitti.velodyne_to_image(*(kitti.read_calib_file(raw / "2011_09_26" / name)
                                           for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt")))
        points = kitti.load_velodyne_points(raw / "2011_09_26/2011_09_26_drive_0002_sync/velodyne_points/data/"
                                            "0000000000.bin")
        assert np.all(points[:, 3] == 1.0)
        behind = points[points[:, 0] < 0]
        pixels = behind @ P_velo.T
        u, v = np.round(pixels[:, 0] / pixels[:, 2]) - 1, np.round(pixels[:, 1] / pixels[:, 2]) - 1
        inside = (u >= 0) & (u < SIZE[1]) & (v >= 0) & (v < SIZE[0])
        assert np.count_nonzero(inside) > 1000  # the mirrored wall would land on the wall's pixels ...
        depth = kitti.project_velodyne(points, P_velo, SIZE)
        # ... where, kept, its negative x would win and be zeroed; dropped, the wall's 10 m is there.
        assert np.mean(depth[v[inside].astype(int), u[inside].astype(int)] > 0) > 0.95

    def test_projective_depth_option(self):
        # Camera axes (right, down, forward) = (-left, -up, forward), f = 10, c = 5, and a third row
        # offset of 0.5 m: the point 4 m ahead projects to u = v = 20 / 4.5 -> pixel round(4.44) - 1 = 3.
        P = np.array([[5.0, -10, 0, 0], [5, 0, -10, 0], [1, 0, 0, 0.5]])
        points = np.array([[4.0, 0, 0, 1]])
        for velodyne_depth, expected in ((True, 4.0), (False, 4.5)):
            depth = kitti.project_velodyne(points, P, (8, 8), velodyne_depth)
            assert depth[3, 3] == expected and np.count_nonzero(depth) == 1

    def test_malformed_calibration_names_file_and_key(self, tmp_path):
        path = tmp_path / "calib_cam_to_cam.txt"
        path.write_text("P_rect_02: 1 2 3\n")
        with pytest.raises(MasksfmError, match=r"calib_cam_to_cam.txt: 'P_rect_02' must be 12 numbers"):
            kitti.calib_array(kitti.read_calib_file(path), "P_rect_02", (3, 4), path)


class TestPrepareKittiRaw:
    def test_valid_layout(self, prepared):
        out, _ = prepared
        assert layout.read_dataset_info(out).items() >= {"kind": "kitti-raw", "height": OUT_H, "width": OUT_W}.items()
        train = layout.load_split(out, "train")
        val = layout.load_split(out, "val")
        assert layout.read_split(out, "test") == []
        assert all(scene.size == (OUT_H, OUT_W) for scene in train + val)
        assert not out.with_name(out.name + ".partial").exists()

    def test_scenes_static_frames_and_test_drives(self, prepared):
        out, _ = prepared
        scenes = {name: [f.stem for f in layout.read_scene(out / name).frames]
                  for name in layout.read_split(out, "train") + layout.read_split(out, "val")}
        expected = {}
        for cam in kitti.CAMERAS:
            expected[f"2011_09_26_drive_0001_sync_{cam}"] = range(6)
            expected[f"2011_09_26_drive_0018_sync_{cam}_0"] = range(3, 6)
            expected[f"2011_09_26_drive_0018_sync_{cam}_1"] = range(38, 43)
            expected[f"2011_09_26_drive_0018_sync_{cam}_2"] = range(58, 64)
            expected[f"2011_09_28_drive_0001_sync_{cam}"] = range(15, 20)
        assert scenes == {name: [f"{k:010d}" for k in frames] for name, frames in expected.items()}
        assert not list(out.glob("2011_09_26_drive_0002*"))  # the Eigen test drive is left out

    def test_intrinsics_are_scaled_p_rect(self, prepared):
        out, _ = prepared
        for date, drive in (("2011_09_26", "2011_09_26_drive_0001_sync"), ("2011_09_28", "2011_09_28_drive_0001_sync")):
            for cam in kitti.CAMERAS:
                K = layout.read_cam(out / f"{drive}_{cam}" / "cam.txt")
                assert np.allclose(K, scaled(P_RECT[date][cam]), rtol=1e-9, atol=1e-9), (drive, cam)

    def test_frames_are_resized_sources(self, prepared, raw):
        out, _ = prepared
        written = layout.read_image(out / "2011_09_26_drive_0018_sync_03_1" / "0000000040.png")
        source = Image.fromarray(frame_pixels("2011_09_26/2011_09_26_drive_0018_sync", "03", 40))
        assert np.array_equal(written, np.asarray(source.resize((OUT_W, OUT_H), Image.Resampling.BILINEAR)))

    def test_split_by_drive(self, prepared):
        out, _ = prepared
        drive_of = {name: name[: len("2011_09_26_drive_0001_sync")] for name in layout.read_split(out, "train")
                    + layout.read_split(out, "val")}
        train = {drive_of[n] for n in layout.read_split(out, "train")}
        val = {drive_of[n] for n in layout.read_split(out, "val")}
        assert not train & val and len(val) == 1 and len(train | val) == 3

    def test_split_drives_seeded(self):
        names = [f"d{k:03d}" for k in range(40)]
        train, val = kitti.split_drives(names, seed=3)
        assert len(val) == 4 and sorted(train + val) == names
        assert kitti.split_drives(names, seed=3) == (train, val)
        assert any(kitti.split_drives(names, seed=s)[1] != val for s in range(4, 8))
        assert kitti.split_drives(["a"], 0) == (["a"], [])
        assert kitti.split_drives(["a", "b"], 0, val_fraction=0.0) == (["a", "b"], [])

    def test_eigen_ground_truth(self, prepared):
        out, stdout = prepared
        root = out / "eigen_test"
        assert (root / "files.txt").read_text().splitlines() == EIGEN_FOUND
        P = np.array(P_RECT["2011_09_26"]["02"])
        for k, line in enumerate(EIGEN_FOUND):
            frame = int(Path(line).stem)
            depth = np.load(root / "depth" / f"{k:06d}.npy")
            assert depth.dtype == np.float32 and depth.shape == SIZE
            assert np.array_equal(depth, reference_depth(scan_points(frame), P))
            assert 10 + frame / 2 in depth  # the wall, at its analytic distance
            image = layout.read_image(root / "images" / f"{k:06d}.png")
            source = Image.fromarray(frame_pixels("2011_09_26/2011_09_26_drive_0002_sync", "02", frame))
            assert np.array_equal(image, np.asarray(source.resize((OUT_W, OUT_H), Image.Resampling.BILINEAR)))
        assert ("eigen_test: 5 of 697 test images found, 692 missing (691 images not in RAW, 1 without a velodyne "
                "scan)") in stdout

    def test_eigen_benchmark(self, prepared):
        out, stdout = prepared
        root = out / "eigen_benchmark"
        assert (root / "files.txt").read_text().splitlines() == BENCHMARK_FOUND
        for k, line in enumerate(BENCHMARK_FOUND):
            depth = np.load(root / "depth" / f"{k:06d}.npy")
            assert np.array_equal(depth, annotated_depth(int(Path(line).stem)).astype(np.float32) / 256)
            assert layout.read_image(root / "images" / f"{k:06d}.png").shape == (OUT_H, OUT_W, 3)
        assert "eigen_benchmark: 3 test images" in stdout

    def test_rerun_replaces_same_kind_and_refuses_others(self, tmp_path, capsys):
        small = build_raw(tmp_path / "raw", {"2011_09_26/2011_09_26_drive_0001_sync": range(3)}, scans=())
        out = tmp_path / "out"
        for suffix in (".png", ".jpg"):
            kitti.prepare_kitti_raw(small, out, OUT_H, OUT_W, suffix=suffix, progress=False)
        assert layout.read_split(out, "train") + layout.read_split(out, "val") == [
            "2011_09_26_drive_0001_sync_02", "2011_09_26_drive_0001_sync_03"]
        frames = layout.read_scene(out / "2011_09_26_drive_0001_sync_02").frames
        assert [f.name for f in frames] == [f"{k:010d}.jpg" for k in range(3)]  # the rerun replaced the first
        assert "none of the 697 Eigen test images" in capsys.readouterr().err
        other = tmp_path / "mine"
        other.mkdir()
        (other / "notes.txt").write_text("precious")
        with pytest.raises(MasksfmError, match="refusing to overwrite"):
            kitti.prepare_kitti_raw(small, other, OUT_H, OUT_W, progress=False)
        assert (other / "notes.txt").read_text() == "precious"


class TestKittiRawErrors:
    """A user's mistake: one line on stderr naming the file, exit 2."""

    def _cli(self, capsys, *args):
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", "kitti-raw", *map(str, args), "--height", "8", "--width", "24"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    def small_raw(self, root: Path) -> Path:
        return build_raw(root, {"2011_09_26/2011_09_26_drive_0001_sync": range(3)}, scans=())

    def test_missing_calibration_subprocess(self, tmp_path):
        raw = self.small_raw(tmp_path / "raw")
        (raw / "2011_09_26" / "calib_cam_to_cam.txt").unlink()
        command = [sys.executable, "-m", "masksfm", "prepare", "kitti-raw", str(raw), str(tmp_path / "o")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip() == (f"masksfm: error: {raw / '2011_09_26' / 'calib_cam_to_cam.txt'}: "
                                         "missing calibration file")
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()

    def test_malformed_calibration(self, tmp_path, capsys):
        raw = self.small_raw(tmp_path / "raw")
        path = raw / "2011_09_26" / "calib_cam_to_cam.txt"
        path.write_text(path.read_text().replace("P_rect_03: ", "P_rect_03: 1 "))
        assert f"{path}: 'P_rect_03' must be 12 numbers" in self._cli(capsys, raw, tmp_path / "o")

    def test_corrupt_image(self, tmp_path, capsys):
        raw = self.small_raw(tmp_path / "raw")
        image = raw / "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000001.png"
        image.write_bytes(image.read_bytes()[:40])
        assert f"{image}: unreadable or corrupt image" in self._cli(capsys, raw, tmp_path / "o")
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()

    def test_no_drives(self, tmp_path, capsys):
        (tmp_path / "raw" / "2011_09_26").mkdir(parents=True)
        assert f"{tmp_path / 'raw'}: no KITTI drives found" in self._cli(capsys, tmp_path / "raw", tmp_path / "o")

    def test_bad_val_fraction(self, tmp_path, capsys):
        raw = self.small_raw(tmp_path / "raw")
        assert "val fraction must be in [0, 1)" in self._cli(capsys, raw, tmp_path / "o", "--val-fraction", "1.5")


# --- odometry ---------------------------------------------------------------------------------------

ODO_SIZE = (20, 62)  # H, W
ODO_FRAMES = 6


def odometry_poses(sequence: int) -> np.ndarray:
    """A gentle drive: yaw turning slowly, moving forward about a metre per frame."""
    rng = np.random.default_rng(sequence)
    poses = np.tile(np.eye(4), (ODO_FRAMES, 1, 1))
    yaw = np.cumsum(rng.normal(0, 0.02, ODO_FRAMES))
    poses[:, 0, 0] = poses[:, 2, 2] = np.cos(yaw)
    poses[:, 0, 2], poses[:, 2, 0] = np.sin(yaw), -np.sin(yaw)
    poses[:, :3, 3] = np.cumsum(rng.normal([0, 0, 1], 0.1, (ODO_FRAMES, 3)), axis=0)
    return poses


def odometry_P2(sequence: int) -> np.ndarray:
    return np.array([[71.8856 + sequence, 0, 30.7, 4.538], [0, 71.8856 + sequence, 9.5, -0.011], [0, 0, 1, 0.0038]])


@pytest.fixture(scope="module")
def odometry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odometry")
    for sequence in (0, 1, 9, 10, 11):
        folder = root / "sequences" / f"{sequence:02d}"
        (folder / "image_2").mkdir(parents=True)
        for k in range(ODO_FRAMES):
            pixels = np.random.default_rng([sequence, k]).integers(0, 256, (*ODO_SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "image_2" / f"{k:06d}.png")
        P0 = odometry_P2(sequence) * [1, 1, 1, 0]
        (folder / "calib.txt").write_text("".join(f"{key}: {_numbers(P)}\n" for key, P in
                                                  (("P0", P0), ("P1", P0), ("P2", odometry_P2(sequence)),
                                                   ("P3", P0), ("Tr", np.eye(4)[:3]))))
        if sequence <= 10:
            (root / "poses").mkdir(exist_ok=True)
            np.savetxt(root / "poses" / f"{sequence:02d}.txt", odometry_poses(sequence)[:, :3].reshape(-1, 12),
                       fmt="%e")
    return root


class TestPrepareKittiOdometry:
    def test_layout_poses_intrinsics_splits(self, odometry, tmp_path, capsys):
        out = tmp_path / "odo"
        main(["prepare", "kitti-odometry", str(odometry), str(out), "--height", str(OUT_H), "--width", str(OUT_W)])
        assert "sequences 11 have no public ground-truth poses; skipped" in capsys.readouterr().err
        assert layout.read_dataset_info(out)["kind"] == "kitti-odometry"
        assert layout.read_split(out, "train") == ["00", "01"]
        assert layout.read_split(out, "test") == ["09", "10"]
        assert layout.read_split(out, "val") == []
        for scene in layout.load_split(out, "train") + layout.load_split(out, "test"):
            sequence = int(scene.name)
            given = np.loadtxt(odometry / "poses" / f"{scene.name}.txt")
            assert np.array_equal(scene.poses[:, :3].reshape(-1, 12), given)
            assert np.allclose(scene.K, scaled(odometry_P2(sequence), *ODO_SIZE), rtol=1e-9, atol=1e-9)
            assert scene.stems == tuple(f"{k:06d}" for k in range(ODO_FRAMES))
            assert scene.size == (OUT_H, OUT_W)
        assert not (out / "11").exists()

    def test_pose_count_mismatch(self, odometry, tmp_path):
        broken = tmp_path / "odo"
        shutil.copytree(odometry, broken)
        poses = broken / "poses" / "09.txt"
        poses.write_text("".join(poses.read_text().splitlines(keepends=True)[:-1]))
        with pytest.raises(MasksfmError, match=re.escape(f"{poses}: 5 poses for 6 frames")):
            kitti.prepare_kitti_odometry(broken, tmp_path / "out", OUT_H, OUT_W, progress=False)

    def test_not_an_odometry_folder(self, tmp_path):
        with pytest.raises(MasksfmError, match="no sequences/ folder"):
            kitti.prepare_kitti_odometry(tmp_path, tmp_path / "out", progress=False)
