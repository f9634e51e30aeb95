"""KITTI raw and KITTI odometry -> the sequence-folder layout (docs/design.md §5), and the Eigen test ground truth.

What `prepare kitti-raw` reads (other parts of a KITTI download may be absent):

```
RAW/2011_09_26/calib_cam_to_cam.txt      P_rect_02, P_rect_03, R_rect_00, S_rect_02
RAW/2011_09_26/calib_velo_to_cam.txt     R, T (only for the Eigen test ground truth)
RAW/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png ...   (and image_03)
RAW/2011_09_26/2011_09_26_drive_0002_sync/velodyne_points/data/0000000069.bin   test scans
```

and writes one scene per drive and camera (`2011_09_26_drive_0001_sync_02`), frames resized with PIL's
bilinear filter (half-pixel centres, antialiased when shrinking: the resampler of
`masksfm.data.dataset.resize_and_crop`) and keeping KITTI's frame numbers, `cam.txt` from `P_rect_0x`
scaled by `scale_intrinsics`. The drives of the Eigen test scenes are left out; SfMLearner's static
frames are removed, and where they (or missing files) cut a drive, each piece is a scene of its own
(`..._02_0`, `..._02_1`, ...). `train.txt` / `val.txt` split the remaining drives by drive, seeded;
`test.txt` is empty: the Eigen test lives in `eigen_test/` (and `eigen_benchmark/` with `--annotated`).

The split lists ship in `masksfm/data/kitti_splits/` (SfMLearner's, MIT licence, see its README).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from masksfm.data import layout
from masksfm.data.prepare import MIN_SCENE_FRAMES, report, resize_frame, staged_output
from masksfm.errors import MasksfmError, warn
from masksfm.geometry import scale_intrinsics
from masksfm.progress import progress_bar

CAMERAS = ("02", "03")
DRIVE_PATTERN = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_(\d{4})_sync$")
# Share of the non-test drives that go to val; by drive, so val frames come from unseen streets.
VAL_FRACTION = 0.1
# Odometry sequences with public ground-truth poses, and SfMLearner's / the paper's split of them.
ODOMETRY_TRAIN = tuple(f"{k:02d}" for k in range(9))
ODOMETRY_TEST = ("09", "10")


# --- shipped split lists --------------------------------------------------------------------------


def _split_lines(name: str) -> list[str]:
    text = resources.files("masksfm.data").joinpath("kitti_splits", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def eigen_test_files() -> list[str]:
    """The 697 Eigen test images, `date/drive/image_02/data/frame.png`, in the published order."""
    return _split_lines("test_files_eigen.txt")


def eigen_test_scenes() -> frozenset[str]:
    """The 28 drives of the Eigen test images, as `2011_09_26_drive_0002` (no `_sync`)."""
    return frozenset(_split_lines("test_scenes_eigen.txt"))


def static_frames() -> frozenset[tuple[str, str]]:
    """SfMLearner's static frames (the car stands still) as (drive folder, frame stem) pairs."""
    return frozenset((drive, frame) for _, drive, frame in (line.split() for line in _split_lines("static_frames.txt")))


# --- calibration and velodyne files ---------------------------------------------------------------


def read_calib_file(path: Path) -> dict[str, np.ndarray | str]:
    """Read a KITTI calibration file: `key: numbers` lines (`calib_time: ...` stays a string).

    Returns:
        key -> 1-D float64 array of the line's numbers, or the raw string where they are not numbers.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing calibration file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MasksfmError(f"{path}: unreadable calibration file ({error})") from None
    calib: dict[str, np.ndarray | str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        try:
            calib[key.strip()] = np.array(value.split(), dtype=np.float64)
        except ValueError:
            calib[key.strip()] = value.strip()
    return calib


def calib_array(calib: dict, key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """One numeric entry of a calibration file, reshaped; a missing or malformed one names the file."""
    value = calib.get(key)
    if value is None:
        raise MasksfmError(f"{path}: no '{key}' entry")
    size = int(np.prod(shape))
    if isinstance(value, str):
        raise MasksfmError(f"{path}: '{key}' must be {size} numbers, got '{value[:60]}'")
    if value.size != size or not np.all(np.isfinite(value)):
        got = f"{value.size} numbers" if value.size != size else "non-finite values"
        raise MasksfmError(f"{path}: '{key}' must be {size} numbers, got {got}")
    return value.reshape(shape)


def intrinsics_from_projection(P: np.ndarray, path: Path, key: str) -> np.ndarray:
    """K = the left 3x3 of a rectified projection matrix (its 4th column is the stereo baseline term)."""
    K = np.array(P[:, :3], dtype=np.float64)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or np.any(K[2] != (0.0, 0.0, 1.0)):
        raise MasksfmError(f"{path}: '{key}' is not a rectified projection matrix (need fx, fy > 0, last row 0 0 1 t)")
    return K


def load_velodyne_points(path: Path) -> np.ndarray:
    """Read a velodyne scan (float32 N x 4: forward, left, up, reflectance) as homogeneous points.

    The reflectance column is replaced by 1 (monodepth2's convention, docs/design.md §5).

    Returns:
        (N, 4) float64 [x, y, z, 1], metres, velodyne frame.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing velodyne scan") from None
    except OSError as error:
        raise MasksfmError(f"{path}: unreadable velodyne scan ({error})") from None
    if raw.size % 4:
        raise MasksfmError(f"{path}: not a velodyne scan (size is not a multiple of 4 float32 values)")
    points = raw.reshape(-1, 4).astype(np.float64)
    points[:, 3] = 1.0
    return points


def velodyne_to_image(cam_to_cam: dict, velo_to_cam: dict, cam: str = "02",
                      paths: tuple[Path, Path] = (Path("calib_cam_to_cam.txt"), Path("calib_velo_to_cam.txt"))
                      ) -> np.ndarray:
    """The velodyne-to-image projection `P_rect_0x · R_rect_00 · T_velo_to_cam`.

    Args:
        cam_to_cam, velo_to_cam: parsed calibration files (:func:`read_calib_file`).
        cam: "02" or "03".
        paths: the two files, for error messages.
    Returns:
        (3, 4) float64 matrix taking homogeneous velodyne points (metres) to homogeneous pixels.
    """
    P_rect = calib_array(cam_to_cam, f"P_rect_{cam}", (3, 4), paths[0])
    R_rect = np.eye(4)
    R_rect[:3, :3] = calib_array(cam_to_cam, "R_rect_00", (3, 3), paths[0])
    T_velo_to_cam = np.eye(4)
    T_velo_to_cam[:3, :3] = calib_array(velo_to_cam, "R", (3, 3), paths[1])
    T_velo_to_cam[:3, 3] = calib_array(velo_to_cam, "T", (3,), paths[1])
    return P_rect @ R_rect @ T_velo_to_cam


def project_velodyne(points: np.ndarray, P_velo_to_image: np.ndarray, size: tuple[int, int],
                     velodyne_depth: bool = True) -> np.ndarray:
    """Sparse depth map of a velodyne scan, monodepth2's `generate_depth_map` (docs/design.md §5).

    Points with forward x < 0 are dropped; pixel = round(u) − 1, round(v) − 1 (KITTI's MATLAB
    indexing, kept so the ground truth is the published one), kept inside the image; where several
    points hit one pixel the closest wins; negative depth → 0. Unlike monodepth2, duplicates are
    found per pixel exactly (its `sub2ind` also merges a row's last column with the next row's
    first, outside the Garg crop).

    Args:
        points: (N, 4) homogeneous velodyne points, metres.
        P_velo_to_image: (3, 4) projection (:func:`velodyne_to_image`).
        size: (H, W) of the image, from `S_rect_02`.
        velodyne_depth: store the point's forward distance x in the velodyne frame, as the published
            Eigen ground truth does (monodepth2's `export_gt_depth.py` and SfMLearner pass
            `vel_depth=True`); False stores the projective depth (third coordinate) instead.
    Returns:
        (H, W) float32 depth, metres, 0 = no point.
    """
    height, width = size
    points = points[points[:, 0] >= 0]
    image = points @ P_velo_to_image.T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(image[:, 0] / image[:, 2]) - 1
        v = np.round(image[:, 1] / image[:, 2]) - 1
    depth = points[:, 0] if velodyne_depth else image[:, 2]
    inside = (u >= 0) & (v >= 0) & (u < width) & (v < height)
    flat = v[inside].astype(np.int64) * width + u[inside].astype(np.int64)
    closest = np.full(height * width, np.inf)
    np.minimum.at(closest, flat, depth[inside])
    closest[~np.isfinite(closest) | (closest < 0)] = 0.0
    return closest.reshape(height, width).astype(np.float32)


def image_size_from_calib(cam_to_cam: dict, path: Path, cam: str = "02") -> tuple[int, int]:
    """(H, W) of the rectified images from `S_rect_0x`, which KITTI stores as (width, height)."""
    width, height = calib_array(cam_to_cam, f"S_rect_{cam}", (2,), path)
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise MasksfmError(f"{path}: 'S_rect_{cam}' must be a positive integer width and height, got {width} {height}")
    return int(height), int(width)


def generate_depth_map(calib_dir: Path, velodyne_path: Path, cam: str = "02",
                       velodyne_depth: bool = True) -> np.ndarray:
    """Eigen-style ground truth of one frame: its velodyne scan projected into camera `cam` at full
    resolution (`S_rect_02`), as :func:`project_velodyne`.

    Args:
        calib_dir: the date folder holding `calib_cam_to_cam.txt` and `calib_velo_to_cam.txt`.
        velodyne_path: the frame's `.bin` scan.
    Returns:
        (H, W) float32 depth, metres, 0 = no point.
    """
    cam_path, velo_path = Path(calib_dir) / "calib_cam_to_cam.txt", Path(calib_dir) / "calib_velo_to_cam.txt"
    cam_to_cam, velo_to_cam = read_calib_file(cam_path), read_calib_file(velo_path)
    P = velodyne_to_image(cam_to_cam, velo_to_cam, cam, (cam_path, velo_path))
    size = image_size_from_calib(cam_to_cam, cam_path)
    return project_velodyne(load_velodyne_points(velodyne_path), P, size, velodyne_depth)


def read_annotated_depth(path: Path) -> np.ndarray:
    """KITTI's annotated depth (Uhrig et al.): a 16-bit PNG, depth × 256, 0 = none.

    Returns:
        (H, W) float32 depth, metres, 0 = none.
    """
    try:
        with Image.open(path) as image:
            values = np.array(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise MasksfmError(f"{path}: unreadable or corrupt annotated depth map ({error})") from None
    if values.ndim != 2 or values.dtype.kind not in "iu" or values.dtype.itemsize < 2:
        raise MasksfmError(f"{path}: expected a 16-bit single-channel depth PNG, got {values.dtype} {values.shape}")
    return (values.astype(np.float32) / 256.0).astype(np.float32)


# --- frames -------------------------------------------------------------------------------------


def list_frames(folder: Path) -> list[Path]:
    """Frame files (png / jpg) of a folder, sorted by name (= temporal order for KITTI's numbers)."""
    return sorted((f for f in folder.iterdir() if f.suffix.lower() in layout.FRAME_SUFFIXES and f.is_file()),
                  key=lambda f: f.name)


def contiguous_pieces(frames: list[Path]) -> list[list[Path]]:
    """Cut a list of numbered frames where the numbers jump (removed or missing frames)."""
    pieces: list[list[Path]] = []
    previous = None
    for frame in frames:
        number = int(frame.stem) if frame.stem.isdigit() else None
        if not pieces or number is None or previous is None or number != previous + 1:
            pieces.append([])
        pieces[-1].append(frame)
        previous = number
    return pieces


class _SizeCheck:
    """All frames of a scene must have the size its intrinsics were scaled for."""

    def __init__(self, first: Path):
        self.first = first
        self.size = layout.image_size(first)

    def __call__(self, frame: Path, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != self.size:
            raise MasksfmError(f"{frame}: size {rgb.shape[1]}x{rgb.shape[0]} differs from {self.first.name}'s "
                               f"{self.size[1]}x{self.size[0]} (all frames of a sequence must match)")


def write_resized_scene(scene_dir: Path, frames: Iterable[Path], K: np.ndarray, height: int, width: int,
                        suffix: str = ".png", bar=None) -> np.ndarray:
    """Write frames resized to (height, width), keeping their stems, and `cam.txt` for that size.

    Streams: one frame in memory at a time.

    Args:
        frames: source frame files, temporal order, all the size of the first.
        K: (3, 3) intrinsics of the source frames, pixels.
        bar: a tqdm bar to advance per frame, or None.
    Returns:
        (3, 3) intrinsics of the written frames.
    """
    frames = list(frames)
    check = _SizeCheck(frames[0])
    scene_dir.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        rgb = layout.read_image(frame)
        check(frame, rgb)
        layout.write_image(scene_dir / f"{frame.stem}{suffix}", resize_frame(rgb, height, width))
        if bar is not None:
            bar.update()
    h0, w0 = check.size
    K_out = scale_intrinsics(np.asarray(K, dtype=np.float64), width / w0, height / h0)
    layout.write_cam(scene_dir / "cam.txt", K_out)
    return K_out


# --- progress -------------------------------------------------------------------------------------


def _iterate(items: list, desc: str, unit: str, progress: bool):
    with progress_bar(len(items), desc, unit, enabled=progress, leave=False) as bar:
        for item in items:
            yield item
            bar.update()


# --- KITTI raw ------------------------------------------------------------------------------------


def drive_id(drive: str) -> str:
    """`2011_09_26_drive_0001_sync` -> `2011_09_26_drive_0001`, as the Eigen scene list names drives."""
    return drive[: -len("_sync")] if drive.endswith("_sync") else drive


def find_drives(raw: Path) -> list[Path]:
    """The drive folders `RAW/<date>/<date>_drive_NNNN_sync` that hold `image_02` or `image_03`, sorted."""
    raw = Path(raw)
    if not raw.is_dir():
        raise MasksfmError(f"{raw}: not a KITTI raw folder (missing or not a directory)")
    drives = []
    for date in sorted(p for p in raw.iterdir() if p.is_dir()):
        for drive in sorted(p for p in date.iterdir() if p.is_dir()):
            match = DRIVE_PATTERN.match(drive.name)
            if match and match.group(1) == date.name and any((drive / f"image_{c}").is_dir() for c in CAMERAS):
                drives.append(drive)
    if not drives:
        raise MasksfmError(f"{raw}: no KITTI drives found (expected "
                           f"{raw}/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png ...)")
    return drives


def split_drives(names: list[str], seed: int, val_fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """Split drives into train / val: round(val_fraction · N) drives to val (at least one when
    val_fraction > 0 and N ≥ 2), drawn with `seed`.

    Returns:
        (train, val), each sorted.
    """
    n = len(names)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(names[k] for k in order[:n_val])
    return sorted(set(names) - set(val)), val


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in layout.FRAME_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _annotated_path(annotated: Path, date: str, drive: str, stem: str) -> Path | None:
    """Where KITTI's depth annotation of an image may be: the download's `train/` / `val/` folders,
    flat, or inside the raw tree (monodepth2's layout)."""
    tail = Path(drive) / "proj_depth" / "groundtruth" / "image_02" / f"{stem}.png"
    for base in (annotated / "train", annotated / "val", annotated, annotated / date):
        if (base / tail).is_file():
            return base / tail
    return None


class _Calibrations:
    """Calibration files per date, read once."""

    def __init__(self, raw: Path):
        self.raw = raw
        self._cache: dict[str, dict] = {}

    def read(self, date: str, name: str) -> tuple[dict, Path]:
        path = self.raw / date / name
        if path not in self._cache:
            self._cache[path] = read_calib_file(path)
        return self._cache[path], path

    def intrinsics(self, date: str, cam: str) -> np.ndarray:
        calib, path = self.read(date, "calib_cam_to_cam.txt")
        return intrinsics_from_projection(calib_array(calib, f"P_rect_{cam}", (3, 4), path), path, f"P_rect_{cam}")

    def velodyne_projection(self, date: str) -> tuple[np.ndarray, tuple[int, int]]:
        cam_to_cam, cam_path = self.read(date, "calib_cam_to_cam.txt")
        velo_to_cam, velo_path = self.read(date, "calib_velo_to_cam.txt")
        P = velodyne_to_image(cam_to_cam, velo_to_cam, "02", (cam_path, velo_path))
        return P, image_size_from_calib(cam_to_cam, cam_path)


class _TestSplitWriter:
    """Writes a test split folder entry by entry: `files.txt`, `images/000000.png` at the prepared
    size and `depth/000000.npy` at full resolution (one full-resolution map in memory at a time)."""

    def __init__(self, root: Path, height: int, width: int):
        self.root, self.height, self.width = root, height, width
        self.lines: list[str] = []

    def add(self, line: str, image: Path, depth: np.ndarray) -> None:
        stem = layout.frame_stem(len(self.lines))
        layout.write_image(self.root / "images" / f"{stem}.png",
                           resize_frame(layout.read_image(image), self.height, self.width))
        (self.root / "depth").mkdir(parents=True, exist_ok=True)
        np.save(self.root / "depth" / f"{stem}.npy", depth.astype(np.float32), allow_pickle=False)
        self.lines.append(line)

    def close(self) -> int:
        if self.lines:
            (self.root / "files.txt").write_text("".join(f"{line}\n" for line in self.lines), encoding="utf-8")
        return len(self.lines)


def prepare_eigen_test(raw: Path, out: Path, height: int, width: int, annotated: Path | None = None,
                       calibrations: _Calibrations | None = None, progress: bool = True) -> dict[str, int]:
    """Write `out/eigen_test/` (and `out/eigen_benchmark/` with `annotated`) for the Eigen test
    images found under `raw`; missing ones are counted and skipped.

    An image counts as found when its file and (for `eigen_test`) its velodyne scan are there; the
    ground truth is :func:`project_velodyne` at `S_rect_02` size, float32 metres, 0 = none.
    `files.txt` lists the found images relative to `raw`, in the published list's order.

    Returns:
        counts: `eigen_test` (written), `missing_images`, `missing_scans`, `eigen_benchmark` (written;
        only with `annotated`).
    """
    raw, out = Path(raw), Path(out)
    calibrations = calibrations or _Calibrations(raw)
    test = _TestSplitWriter(out / "eigen_test", height, width)
    benchmark = _TestSplitWriter(out / "eigen_benchmark", height, width)
    missing_images = missing_scans = 0
    lines = eigen_test_files()
    for line in _iterate(lines, "eigen test", "image", progress):
        date, drive, camera, _, name = Path(line).parts
        stem = Path(name).stem
        image = _find_image(raw / date / drive / camera / "data", stem)
        if image is None:
            missing_images += 1
            continue
        relative = image.relative_to(raw).as_posix()
        size = layout.image_size(image)
        scan = raw / date / drive / "velodyne_points" / "data" / f"{stem}.bin"
        if scan.is_file():
            P, gt_size = calibrations.velodyne_projection(date)
            if size != gt_size:
                raise MasksfmError(f"{image}: size {size[1]}x{size[0]} differs from S_rect_02 "
                                   f"{gt_size[1]}x{gt_size[0]} "
                                   f"of {raw / date / 'calib_cam_to_cam.txt'}")
            test.add(relative, image, project_velodyne(load_velodyne_points(scan), P, gt_size))
        else:
            missing_scans += 1
        path = None if annotated is None else _annotated_path(Path(annotated), date, drive, stem)
        if path is not None:
            depth = read_annotated_depth(path)
            if depth.shape != size:
                raise MasksfmError(f"{path}: size {depth.shape[1]}x{depth.shape[0]} differs from its image {image}")
            benchmark.add(relative, image, depth)
    counts = {"eigen_test": test.close(), "missing_images": missing_images, "missing_scans": missing_scans}
    if annotated is not None:
        counts["eigen_benchmark"] = benchmark.close()
    return counts


def _write_drive(drive: Path, root: Path, K_of: dict[str, np.ndarray], static: frozenset, height: int, width: int,
                 suffix: str, counts: dict, progress: bool) -> list[str]:
    """Write one drive's scenes (each camera; cut where static or missing frames leave a gap)."""
    names = []
    for cam in CAMERAS:
        folder = drive / f"image_{cam}" / "data"
        if not folder.is_dir():
            continue
        frames = list_frames(folder)
        kept = [f for f in frames if (drive.name, f.stem) not in static]
        counts["static_frames"] += len(frames) - len(kept)
        pieces = contiguous_pieces(kept)
        with progress_bar(len(kept), f"{drive.name} {cam}", "frame", progress, leave=False) as bar:
            for k, piece in enumerate(pieces):
                if len(piece) < MIN_SCENE_FRAMES:
                    counts["short_pieces"] += 1
                    bar.update(len(piece))
                    continue
                name = f"{drive.name}_{cam}" + (f"_{k}" if len(pieces) > 1 else "")
                write_resized_scene(root / name, piece, K_of[cam], height, width, suffix, bar)
                names.append(name)
                counts["frames"] += len(piece)
    return names


def prepare_kitti_raw(raw: Path, out: Path, height: int = 128, width: int = 416, annotated: Path | None = None,
                      seed: int = 0, val_fraction: float = VAL_FRACTION, suffix: str = ".png",
                      progress: bool = True) -> dict:
    """KITTI raw -> training scenes (both colour cameras) + the Eigen test ground truth, in `out`.

    See the module docstring for what is read and written. The dataset is built beside `out` and
    moved into place when complete.

    Args:
        raw: the KITTI raw root (holds `2011_09_26/` ...).
        out: the dataset folder.
        height, width: size of the written frames, pixels.
        annotated: KITTI's annotated depth download (Uhrig et al.) -> also `eigen_benchmark/`.
        seed: seed of the train / val split by drive.
        val_fraction: share of the non-test drives that go to val.
        suffix: `.png` or `.jpg` for the training frames.
        progress: progress bars and a summary on stdout.
    Returns:
        A summary: drive / scene / frame counts and the Eigen counts of :func:`prepare_eigen_test`.
    """
    from masksfm import __version__

    raw, out = Path(raw), Path(out)
    if height < 1 or width < 1:
        raise MasksfmError(f"prepare kitti-raw: height and width must be positive, got {height}x{width}")
    if not 0 <= val_fraction < 1:
        raise MasksfmError(f"prepare kitti-raw: the val fraction must be in [0, 1), got {val_fraction}")
    if annotated is not None and not Path(annotated).is_dir():
        raise MasksfmError(f"{annotated}: annotated depth folder missing or not a directory")
    drives = find_drives(raw)
    test_scenes = eigen_test_scenes()
    train_drives = [d for d in drives if drive_id(d.name) not in test_scenes]
    train_names, val_names = split_drives([d.name for d in train_drives], seed, val_fraction)
    calibrations = _Calibrations(raw)
    static = static_frames()
    scenes: dict[str, list[str]] = {}
    counts = {"frames": 0, "static_frames": 0, "short_pieces": 0}
    with staged_output(out, "kitti-raw") as partial:
        with progress_bar(len(train_drives), "drives", "drive", progress) as bar:
            for drive in train_drives:
                K_of = {cam: calibrations.intrinsics(drive.parent.name, cam) for cam in CAMERAS
                        if (drive / f"image_{cam}").is_dir()}
                scenes[drive.name] = _write_drive(drive, partial, K_of, static, height, width, suffix, counts, progress)
                if not scenes[drive.name]:
                    warn(f"{drive}: no usable frames (all static, or pieces under {MIN_SCENE_FRAMES} frames)")
                bar.update()
        layout.write_split(partial, "train", [s for d in train_names for s in scenes[d]])
        layout.write_split(partial, "val", [s for d in val_names for s in scenes[d]])
        layout.write_split(partial, "test", [])
        eigen = prepare_eigen_test(raw, partial, height, width, annotated, calibrations, progress)
        summary = {
            "drives": len(drives), "test_drives_left_out": len(drives) - len(train_drives),
            "train_drives": len(train_names), "val_drives": len(val_names),
            "scenes": sum(len(v) for v in scenes.values()), **counts, **eigen,
        }
        layout.write_dataset_info(
            partial, "kitti-raw", height=height, width=width, source=str(raw.resolve()), cameras=list(CAMERAS),
            seed=seed, val_fraction=val_fraction, resampler="PIL bilinear (half-pixel centres, antialiased)",
            eigen_depth="velodyne forward distance x (monodepth2 / SfMLearner vel_depth=True)", version=__version__,
            **summary,
        )
    total = len(eigen_test_files())
    report(progress, f"kitti-raw: {summary['scenes']} scenes, {summary['frames']} frames from "
                     f"{summary['train_drives']} train + {summary['val_drives']} val drives "
                     f"({summary['test_drives_left_out']} Eigen test drives left out, "
                     f"{summary['static_frames']} static frames removed) -> {out}")
    report(progress, f"eigen_test: {eigen['eigen_test']} of {total} test images found, {total - eigen['eigen_test']} "
                     f"missing ({eigen['missing_images']} images not in RAW, {eigen['missing_scans']} without a "
                     "velodyne scan)")
    if annotated is not None:
        report(progress, f"eigen_benchmark: {eigen['eigen_benchmark']} test images with annotated depth "
                         "(652 when complete)")
    if eigen["eigen_test"] == 0:
        warn(f"{raw}: none of the {total} Eigen test images (with velodyne scans) found; "
             "`eval depth --split eigen` will have nothing to evaluate")
    return summary


# --- KITTI odometry --------------------------------------------------------------------------------


def _odometry_sequence(root: Path, poses_dir: Path, name: str) -> tuple[np.ndarray, list[Path], np.ndarray | None]:
    """K from `calib.txt`'s P2, the frames of `image_2`, and the poses (None, with a warning, when absent)."""
    calib_path = root / name / "calib.txt"
    K = intrinsics_from_projection(calib_array(read_calib_file(calib_path), "P2", (3, 4), calib_path), calib_path, "P2")
    frames = list_frames(root / name / "image_2")
    if not frames:
        raise MasksfmError(f"{root / name / 'image_2'}: no frames")
    pose_path = poses_dir / f"{name}.txt"
    if not pose_path.exists():
        warn(f"{pose_path}: missing; sequence {name} is written without poses.txt")
        return K, frames, None
    poses = layout.read_poses(pose_path)
    if len(poses) != len(frames):
        raise MasksfmError(f"{pose_path}: {len(poses)} poses for {len(frames)} frames in {root / name / 'image_2'}")
    return K, frames, poses


def prepare_kitti_odometry(odometry: Path, out: Path, height: int = 128, width: int = 416, suffix: str = ".png",
                           progress: bool = True) -> dict:
    """KITTI odometry -> one scene per sequence, named `NN`, with `poses.txt`, in `out`.

    Reads `sequences/NN/image_2/*.png`, `sequences/NN/calib.txt` (`P2`) and `poses/NN.txt`.
    Sequences 00–08 go to train, 09–10 to test (SfMLearner's split; val is empty); 11–21 have no
    public poses and are skipped. The poses are camera 0's, used for camera 2 as SfMLearner does:
    camera 2 sits 6 cm beside camera 0 with the same orientation, so their relative motions differ
    by (R − I)·t, millimetres per frame.

    Args:
        odometry: the KITTI odometry root (holds `sequences/` and `poses/`).
        out: the dataset folder.
        height, width: size of the written frames, pixels.
        suffix: `.png` or `.jpg`.
        progress: progress bars and a summary on stdout.
    Returns:
        A summary: sequence and frame counts, the train / test names.
    """
    from masksfm import __version__

    odometry, out = Path(odometry), Path(out)
    if height < 1 or width < 1:
        raise MasksfmError(f"prepare kitti-odometry: height and width must be positive, got {height}x{width}")
    root = odometry / "sequences"
    if not root.is_dir():
        raise MasksfmError(f"{odometry}: not a KITTI odometry folder (no sequences/ folder)")
    sequences = sorted(p.name for p in root.iterdir() if re.fullmatch(r"\d{2}", p.name) and (p / "image_2").is_dir())
    usable = [s for s in sequences if s in ODOMETRY_TRAIN + ODOMETRY_TEST]
    skipped = [s for s in sequences if s not in usable]
    if not usable:
        raise MasksfmError(f"{root}: no sequence 00–10 with an image_2 folder found")
    if skipped:
        warn(f"{root}: sequences {', '.join(skipped)} have no public ground-truth poses; skipped")
    train = [s for s in usable if s in ODOMETRY_TRAIN]
    test = [s for s in usable if s in ODOMETRY_TEST]
    frames_written = 0
    with staged_output(out, "kitti-odometry") as partial:
        with progress_bar(len(usable), "sequences", "seq", progress) as bar:
            for name in usable:
                K, frames, poses = _odometry_sequence(root, odometry / "poses", name)
                with progress_bar(len(frames), f"sequence {name}", "frame", progress, leave=False) as frame_bar:
                    write_resized_scene(partial / name, frames, K, height, width, suffix, frame_bar)
                if poses is not None:
                    layout.write_poses(partial / name / "poses.txt", poses)
                frames_written += len(frames)
                bar.update()
        layout.write_split(partial, "train", train)
        layout.write_split(partial, "val", [])
        layout.write_split(partial, "test", test)
        summary = {"sequences": len(usable), "frames": frames_written, "train": train, "test": test,
                   "skipped": skipped}
        layout.write_dataset_info(partial, "kitti-odometry", height=height, width=width,
                                  source=str(odometry.resolve()), camera="image_2",
                                  poses="camera 0's poses (poses/NN.txt), used for camera 2",
                                  resampler="PIL bilinear (half-pixel centres, antialiased)", version=__version__,
                                  **summary)
    report(progress, f"kitti-odometry: {len(usable)} sequences, {frames_written} frames -> {out} "
                     f"(train {' '.join(train) or '-'}; test {' '.join(test) or '-'})")
    if not train:
        warn(f"{out}: no training sequence (00–08) found; train.txt is empty")
    return summary
