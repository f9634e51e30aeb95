"""`masksfm predict`: depth maps, point clouds, metric scale and trajectories from a trained model.

What it writes is fixed by docs/design.md §1 ("What predict writes"), per input frame `<frame>` (the frame's
file stem; a video's frames are numbered by their index in the video, as `prepare video` does):
`depth/<frame>.png` (uint16, depth × 256, 0 = invalid), `depth/<frame>.npy` (float32 at the frame's
resolution), `color/<frame>.png` (colourised disparity), `points/<frame>.ply` with `--ply`; per
sequence `scale.txt` with `--camera-height`, and `trajectory.kitti.txt`, `trajectory.tum.txt`,
`trajectory.png` (and `cloud.ply` with `--ply`) with `--trajectory`. A prepared dataset (one
sub-folder per scene) gives one such set per scene in `DIR/<scene>/`.

The net runs at its training size (frames are resized as in training); its disparity is resized
back to each frame's size (bilinear, half-pixel centres, as the evaluation does) and inverted.

Metric scale (`--camera-height M`): a monocular net knows depth only up to scale. In each frame the
road plane is fitted robustly (RANSAC, then least squares on its inliers) to the 3-D points of the
lower part of the image; the camera stands `h` model units above it, so `M / h` turns the frame's
depth into metres. Frames without a plausible road plane take the median scale of the others.

Intrinsics (for point clouds and the road plane): a prepared scene's `cam.txt`, else `--intrinsics`,
else a horizontal field of view (`--fov`, default `masksfm.data.video.DEFAULT_FOV`, 70°, a phone's
main camera), each scaled to the size of the frame it serves.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from masksfm.data.layout import (
    FRAME_SUFFIXES,
    frame_stem,
    image_size,
    read_cam,
    read_image,
    write_image,
    write_poses,
)
from masksfm.errors import MasksfmError
from masksfm.geometry import backproject, crop_intrinsics, scale_intrinsics
from masksfm.progress import progress_bar

SAVE_KINDS = ("png16", "npy", "color")
# PIL reads these too; a prepared scene only ever holds FRAME_SUFFIXES.
IMAGE_SUFFIXES = FRAME_SUFFIXES + (".bmp", ".tif", ".tiff", ".webp")
# KITTI's depth PNG convention: uint16 = metres × 256, 0 = no depth; 65535 / 256 ≈ 256 m is the largest.
PNG16_SCALE = 256.0
PNG16_MAX = 65535
# The fused world-frame cloud keeps at most this many points of each frame (a regular pixel
# stride): neighbouring frames see the same surfaces, and a long video must not fill the memory.
FUSED_POINTS_PER_FRAME = 20_000

# Road plane (metric scale). The residual of a road point, |n·X + h|, is about h times the relative
# error of its depth (X_y = h·z/z on the road, and a depth error moves X along its ray), so the
# inlier threshold is a fraction of the candidate height: 5 % depth error, and a 15 cm kerb at
# 1.65 m (9 %) stays out of the road's inliers.
ROAD_ROWS = 0.4  # the lower 40 % of the image: where a forward-looking camera sees the road
ROAD_INLIER_THRESHOLD = 0.05
ROAD_MAX_TILT_DEG = 25.0  # between the plane's normal and the camera's up axis (−y)
ROAD_MIN_INLIER_RATIO = 0.2  # of the valid points of the lower part
ROAD_MIN_POINTS = 100
RANSAC_HYPOTHESES = 128
RANSAC_POINTS = 1024  # points drawn from the lower part (with replacement) to score the hypotheses
REFINE_ITERATIONS = 3


def warn(message: str) -> None:
    """Tell the user something went a way they may not expect (stderr, one line)."""
    print(f"masksfm: warning: {message}", file=sys.stderr)


# --- file formats --------------------------------------------------------------------------------


def write_depth_png16(path: Path, depth: np.ndarray) -> None:
    """Write depth as a 16-bit PNG, KITTI's convention: round(depth × 256), 0 = invalid, clipped at 65535.

    Args:
        path: the PNG file (its folder is created).
        depth: (H, W) depth, metres or model units; non-finite or ≤ 0 = invalid.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    # A positive depth under 1/512 would round to 0 and read back as "no depth": keep it at 1/256.
    value = np.clip(np.round(np.where(valid, depth, 0.0) * PNG16_SCALE), 1, PNG16_MAX)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(valid, value, 0).astype(np.uint16)).save(path)


def read_depth_png16(path: Path) -> np.ndarray:
    """Read a 16-bit depth PNG written by :func:`write_depth_png16`: (H, W) float32 depth, 0 = invalid."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            value = np.array(image)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing depth PNG") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise MasksfmError(f"{path}: unreadable depth PNG ({error})") from None
    if value.ndim != 2 or value.dtype != np.uint16:
        raise MasksfmError(f"{path}: expected a 16-bit single-channel PNG, got {value.dtype} {value.shape}")
    return (value / PNG16_SCALE).astype(np.float32)


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Write a coloured point cloud as binary little-endian PLY: `x y z` float32, `red green blue` uchar.

    Args:
        path: the .ply file (its folder is created).
        points: (N, 3) coordinates, metres or model units.
        colors: (N, 3) uint8 RGB.
    """
    points, colors = np.asarray(points), np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be (N, 3), got {points.shape} and {colors.shape}")
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.astype(np.float32).T
    vertex["red"], vertex["green"], vertex["blue"] = colors.astype(np.uint8).T
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by masksfm predict\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(vertex.tobytes())


def depth_to_points(depth: np.ndarray, K: np.ndarray, rgb: np.ndarray,
                    stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The valid pixels of a depth map as coloured camera-frame points, in row-major pixel order.

    Args:
        depth: (H, W) z-depth, metres or model units; non-finite or ≤ 0 = invalid (skipped).
        K: (3, 3) intrinsics of this H x W image, pixels.
        rgb: (H, W, 3) uint8 colours.
        stride: keep every `stride`-th pixel in each direction.
    Returns:
        points: (N, 3) float32 camera-frame points (x right, y down, z forward); colors: (N, 3) uint8.
    """
    depth64 = torch.from_numpy(np.asarray(depth, dtype=np.float64))[None, None]
    points = backproject(depth64, torch.from_numpy(np.asarray(K, dtype=np.float64))[None])[0]
    points = points.permute(1, 2, 0).numpy()[::stride, ::stride]
    depth = np.asarray(depth)[::stride, ::stride]
    valid = np.isfinite(depth) & (depth > 0)
    return points[valid].astype(np.float32), np.asarray(rgb)[::stride, ::stride][valid]


# --- metric scale from the road plane ------------------------------------------------------------


class RoadPlane(NamedTuple):
    """Road planes `n·X + h = 0` fitted per frame (camera frame: x right, y down, z forward).

    normal: (B, 3) unit normals, pointing up (n_y < 0).
    height: (B,) the camera centre's distance above the plane, depth's unit.
    inlier_ratio: (B,) fraction of the lower part's valid points on the plane.
    valid: (B,) bool, a plausible road was found (enough points and inliers, normal near vertical,
        camera above it).
    """

    normal: torch.Tensor
    height: torch.Tensor
    inlier_ratio: torch.Tensor
    valid: torch.Tensor


def _oriented_up(normal: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip normals (..., 3) to point up (−y) and give the plane offset h = −n·point."""
    normal = normal * torch.where(normal[..., 1:2] > 0, -1.0, 1.0).to(normal.dtype)
    return normal, -(normal * point).sum(-1)


def fit_road_plane(
    depth: torch.Tensor,
    K: torch.Tensor,
    rows: float = ROAD_ROWS,
    inlier_threshold: float = ROAD_INLIER_THRESHOLD,
    max_tilt_deg: float = ROAD_MAX_TILT_DEG,
    min_inlier_ratio: float = ROAD_MIN_INLIER_RATIO,
    hypotheses: int = RANSAC_HYPOTHESES,
    seed: int = 0,
) -> RoadPlane:
    """Fit the road plane under the camera in each frame: RANSAC over point triples, then total least
    squares on the inliers of the best plane, all frames at once.

    Only planes whose normal lies within `max_tilt_deg` of the camera's up axis and that pass under
    the camera are hypotheses; a point is an inlier when `|n·X + h| < inlier_threshold · h` (scale-
    free: the depth's unit is unknown).

    Args:
        depth: (B, 1, H, W) z-depth, any unit; non-finite or ≤ 0 = invalid.
        K: (B, 3, 3) intrinsics, pixels.
        rows: the fraction of image rows, from the bottom, searched for the road.
        inlier_threshold: inlier distance as a fraction of the plane's height.
        max_tilt_deg: largest angle between the normal and the up axis, degrees.
        min_inlier_ratio: smallest fraction of the valid points on the plane for `valid`.
        hypotheses: RANSAC triples per frame.
        seed: seed of the random triples (the result is deterministic).
    Returns:
        A :class:`RoadPlane` of (B, ...) tensors in depth's dtype and device.
    """
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must have shape (B, 1, H, W), got {tuple(depth.shape)}")
    if K.shape != (depth.shape[0], 3, 3):
        raise ValueError(f"K must have shape ({depth.shape[0]}, 3, 3), got {tuple(K.shape)}")
    b, _, height, _ = depth.shape
    top = min(height - 1, int(height * (1.0 - rows)))
    depth = depth[:, :, top:]
    valid = torch.isfinite(depth) & (depth > 0)
    K = crop_intrinsics(K.to(depth.dtype), 0, top)
    points = backproject(torch.where(valid, depth, torch.zeros_like(depth)), K).flatten(2).transpose(1, 2)  # (B, N, 3)
    valid = valid.flatten(1)
    count = valid.sum(1)

    generator = torch.Generator(device=depth.device).manual_seed(seed)
    # Frames without valid points draw from all points (multinomial needs a positive weight) and
    # are marked invalid below.
    weights = torch.where(count[:, None] > 0, valid.to(depth.dtype), torch.ones_like(valid, dtype=depth.dtype))
    draw = torch.multinomial(weights, RANSAC_POINTS, replacement=True, generator=generator)
    sample = torch.gather(points, 1, draw[..., None].expand(-1, -1, 3))  # (B, M, 3)

    triples = torch.randint(0, RANSAC_POINTS, (b, hypotheses * 3), generator=generator, device=depth.device)
    p0, p1, p2 = torch.gather(sample, 1, triples[..., None].expand(-1, -1, 3)).view(b, hypotheses, 3, 3).unbind(2)
    cross = torch.linalg.cross(p1 - p0, p2 - p0)
    area = cross.norm(dim=-1)
    # Collinear or repeated points: no plane (relative to the triangle's sides, so any unit works).
    proper = area > 1e-6 * (p1 - p0).norm(dim=-1) * (p2 - p0).norm(dim=-1)
    normal, offset = _oriented_up(cross / area.clamp_min(torch.finfo(depth.dtype).tiny)[..., None], p0)
    cos_max = math.cos(math.radians(max_tilt_deg))
    plausible = proper & (-normal[..., 1] >= cos_max) & (offset > 0)
    # MSAC (Torr & Zisserman): the truncated squared residual, not the inlier count, so that of two
    # planes with as many inliers the one that fits them better wins; a count prefers a plane
    # tilted across the road onto a kerb.
    bound = (inlier_threshold * offset)[:, None]
    residual = sample @ normal.transpose(1, 2) + offset[:, None]  # (B, M, R)
    bound2 = bound.square().clamp_min(torch.finfo(depth.dtype).tiny)
    cost = (torch.minimum(residual.square(), bound2) / bound2).mean(1)
    cost = torch.where(plausible, cost, torch.full_like(cost, math.inf))
    best = cost.argmin(1)
    found = torch.isfinite(cost.gather(1, best[:, None])[:, 0])
    normal = normal[torch.arange(b, device=depth.device), best]
    offset = offset[torch.arange(b, device=depth.device), best]

    def on_plane(normal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        distance = ((points @ normal[..., None])[..., 0] + offset[:, None]).abs()
        return valid & (distance < inlier_threshold * offset[:, None])

    # Refined on every valid point of the lower part (the RANSAC sample only chose the plane).
    for _ in range(REFINE_ITERATIONS):
        inliers = on_plane(normal, offset)
        w = inliers.to(depth.dtype)[..., None]
        total = w.sum(1).clamp_min(1.0)
        centroid = (w * points).sum(1) / total
        centred = (points - centroid[:, None]) * w
        scatter = centred.transpose(1, 2) @ centred / total[..., None]
        # Total least squares: the normal is the direction of least spread of the inliers.
        refined, refined_offset = _oriented_up(torch.linalg.eigh(scatter)[1][..., 0], centroid)
        enough = inliers.sum(1) >= 3
        normal = torch.where(enough[:, None], refined, normal)
        offset = torch.where(enough, refined_offset, offset)

    ratio = on_plane(normal, offset).sum(1) / count.clamp_min(1)
    ok = ((count >= ROAD_MIN_POINTS) & found & (ratio >= min_inlier_ratio)
          & (-normal[:, 1] >= cos_max) & (offset > 0))
    return RoadPlane(normal, offset, ratio, ok)


def metric_scale(depth: torch.Tensor, K: torch.Tensor, camera_height: float,
                 **fit_options) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-frame factor that puts the camera `camera_height` metres above the fitted road plane.

    Args:
        depth: (B, 1, H, W) z-depth in the model's scale.
        K: (B, 3, 3) intrinsics, pixels.
        camera_height: the camera's height above the road, metres (KITTI: 1.65).
        fit_options: passed to :func:`fit_road_plane`.
    Returns:
        scale: (B,) metres per model unit (NaN where no road was found); valid: (B,) bool.
    """
    plane = fit_road_plane(depth, K, **fit_options)
    nan = torch.full_like(plane.height, math.nan)
    scale = torch.where(plane.valid, camera_height / plane.height.clamp_min(1e-12), nan)
    return scale, plane.valid


# --- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSequence:
    """Frames that belong together (one image, a folder, a video, one prepared scene).

    Attributes:
        label: the input it comes from, for messages.
        frames: a callable yielding (stem, (H, W, 3) uint8 RGB) in temporal order.
        count: the number of frames, or None when unknown before decoding (some videos).
        K: (3, 3) intrinsics at `K_size`, or None: from `fov` at each frame's size.
        K_size: (H, W) the size `K` is for (None: every frame's size, as for a video's `--intrinsics`).
        fov: horizontal field of view, degrees, when `K` is None.
        scene: the sub-folder of the output (a scene of a prepared dataset), or None.
    """

    label: str
    frames: Callable[[], Iterator[tuple[str, np.ndarray]]]
    count: int | None
    K: np.ndarray | None = None
    K_size: tuple[int, int] | None = None
    fov: float | None = None
    scene: str | None = None

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        """(3, 3) intrinsics of a frame of this sequence of size (height, width), pixels."""
        if self.K is None:
            from masksfm.data.video import intrinsics_from_fov

            return intrinsics_from_fov(self.fov, height, width)
        if self.K_size is None or tuple(self.K_size) == (height, width):
            return self.K
        h0, w0 = self.K_size
        return scale_intrinsics(self.K, width / w0, height / h0)


def _natural_key(path: Path) -> list:
    """`img2.png` before `img10.png`, as `prepare video` orders a folder."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _images(paths: list[Path]) -> Callable[[], Iterator[tuple[str, np.ndarray]]]:
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise MasksfmError(f"{paths[0].parent}: two images named '{duplicate}' (outputs are named by the file stem)")
    return lambda: ((p.stem, read_image(p)) for p in paths)


def _scene_sequence(folder: Path, scene: str | None, K_given: np.ndarray | None, size_given) -> FrameSequence:
    frames = sorted((f for f in folder.iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file()),
                    key=lambda f: f.name)  # the layout's order (docs/design.md §5)
    if not frames:
        raise MasksfmError(f"{folder}: a scene folder (it has cam.txt) without frames")
    if K_given is None:
        K, size = read_cam(folder / "cam.txt"), image_size(frames[0])
    else:
        K, size = K_given, size_given or image_size(frames[0])
    return FrameSequence(str(folder), _images(frames), len(frames), K=K, K_size=size, scene=scene)


def _video_sequence(path: Path, K_given: np.ndarray | None, fov: float) -> FrameSequence:
    from masksfm.data.video import open_frames

    try:
        source = open_frames(path)
    except MasksfmError as error:
        raise MasksfmError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a readable video "
                           f"({str(error).removeprefix(f'{path}: ')})") from None
    used = []

    def frames():
        # The decoder can be iterated once; open the file again for a second pass.
        nonlocal source
        if used:
            source = open_frames(path)
        used.append(True)
        return ((frame_stem(index), rgb) for index, rgb in source.frames)

    return FrameSequence(str(path), frames, source.total, K=K_given, K_size=None, fov=fov)


def open_input(path: Path, intrinsics: str | None = None, fov: float | None = None) -> list[FrameSequence]:
    """What `masksfm predict` reads from INPUT: an image, a folder of images, a video, a prepared
    scene (a folder with cam.txt) or a prepared dataset (sub-folders with cam.txt, one per scene).

    Args:
        path: the input.
        intrinsics: "fx,fy,cx,cy" in the input's pixels (overrides a scene's cam.txt), or None.
        fov: horizontal field of view, degrees, for inputs without intrinsics (default 70°).
    Returns:
        One :class:`FrameSequence` per sequence (several for a dataset, in name order).
    Raises:
        MasksfmError: missing input, not an image nor a readable video, a folder without images.
    """
    from masksfm.data.video import DEFAULT_FOV, intrinsics_from_fov, parse_intrinsics

    path = Path(path)
    K_given = parse_intrinsics(intrinsics) if intrinsics is not None else None
    if fov is not None:
        intrinsics_from_fov(fov, 1, 1)  # checks the angle before any work
    fov = DEFAULT_FOV if fov is None else fov
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            size = image_size(path)
            return [FrameSequence(str(path), _images([path]), 1, K=K_given,
                                  K_size=size if K_given is not None else None, fov=fov)]
        return [_video_sequence(path, K_given, fov)]
    if not path.is_dir():
        raise MasksfmError(f"{path}: no such image, video or folder")
    if (path / "cam.txt").is_file():
        return [_scene_sequence(path, None, K_given, None)]
    images = sorted((f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()), key=_natural_key)
    if images:
        size = image_size(images[0])
        return [FrameSequence(str(path), _images(images), len(images), K=K_given,
                              K_size=size if K_given is not None else None, fov=fov)]
    scenes = sorted((d for d in path.iterdir() if d.is_dir() and (d / "cam.txt").is_file()), key=lambda d: d.name)
    if scenes:
        return [_scene_sequence(d, d.name, K_given, None) for d in scenes]
    raise MasksfmError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}), no cam.txt and no scene folders in it")


def parse_save(text: str | Iterable[str]) -> frozenset[str]:
    """`--save png16,npy,color` -> the set of outputs (at least one)."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SAVE_KINDS]
    if unknown or not names:
        raise MasksfmError(f"--save: expected a comma list of {', '.join(SAVE_KINDS)}, got '{text}'")
    return frozenset(names)


# --- the run -------------------------------------------------------------------------------------


class _UnitFrames:
    """uint8 frames (N, 3, h, w) read as float in [0, 1] one slice at a time: a long video's frames
    at the net's size take a quarter of the memory they would as floats, and the pose net only ever
    reads one snippet."""

    def __init__(self, frames: torch.Tensor):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index) -> torch.Tensor:
        return self.frames[index].float() / 255.0


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _FrameWriter:
    """Writes one frame's files, and keeps a subsample of its points for the fused cloud."""

    def __init__(self, folder: Path, save: frozenset[str], ply: bool, fuse: bool):
        self.folder, self.save, self.ply, self.fuse = folder, save, ply, fuse
        self.cloud: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def write(self, stem: str, rgb: np.ndarray, disp: np.ndarray, scale: float, K: np.ndarray) -> None:
        from masksfm.evaluation import disp_to_depth_at
        from masksfm.visualize import colorize_disparity

        height, width = rgb.shape[:2]
        depth = (disp_to_depth_at(disp, height, width) * np.float32(scale)).astype(np.float32)
        if "png16" in self.save:
            write_depth_png16(self.folder / "depth" / f"{stem}.png", depth)
        if "npy" in self.save:
            (self.folder / "depth").mkdir(parents=True, exist_ok=True)
            np.save(self.folder / "depth" / f"{stem}.npy", depth, allow_pickle=False)
        if "color" in self.save:
            write_image(self.folder / "color" / f"{stem}.png", colorize_disparity(1.0 / depth))
        if self.ply:
            write_ply(self.folder / "points" / f"{stem}.ply", *depth_to_points(depth, K, rgb))
        if self.fuse:
            stride = max(1, math.ceil(math.sqrt(height * width / FUSED_POINTS_PER_FRAME)))
            self.cloud[stem] = depth_to_points(depth, K, rgb, stride)


def _predict_sequence(model, config, sequence: FrameSequence, folder: Path, save: frozenset[str], ply: bool,
                      trajectory: bool, camera_height: float | None, batch_size: int, device: torch.device,
                      progress: bool, refine: int | None = None) -> dict:
    from masksfm.inference import frames_to_tensor, predict_disparity, predict_relative_poses
    from masksfm.refine import refine_relative_poses
    from masksfm.trajectory import chain_relative_poses, plot_trajectories, write_tum

    height, width = config.data.height, config.data.width
    writer = _FrameWriter(folder, save, ply, fuse=ply and trajectory)
    stems: list[str] = []
    net_frames: list[torch.Tensor] = []
    scales: dict[str, tuple[float, float]] = {}  # stem -> (scale, fitted camera height in model units)
    pending = []  # frames without a road plane: written once the median scale of the others is known
    intrinsics: dict[str, np.ndarray] = {}
    net_K: list[np.ndarray] = []  # each frame's intrinsics at the net's size
    bar = progress_bar(sequence.count, f"predict {Path(sequence.label).name}", "frame", enabled=progress)
    for batch in _batches(sequence.frames(), batch_size):
        x = torch.cat([frames_to_tensor(rgb[None], height, width) for _, rgb in batch])
        disp = predict_disparity(model.depth_net, x, device, batch_size)
        if trajectory:
            net_frames.append((x * 255).round().to(torch.uint8))
        for stem, rgb in batch:
            if stem in intrinsics:
                raise MasksfmError(f"{sequence.label}: two frames named '{stem}'")
            intrinsics[stem] = sequence.intrinsics(*rgb.shape[:2])
            net_K.append(scale_intrinsics(intrinsics[stem], width / rgb.shape[1], height / rgb.shape[0]))
            stems.append(stem)
        if camera_height is not None:
            # The plane is fitted at the net's size (cheaper, and the same geometry): the frame's K
            # follows the resize that frames_to_tensor made.
            K_net = torch.from_numpy(np.stack([
                scale_intrinsics(intrinsics[stem], width / rgb.shape[1], height / rgb.shape[0]) for stem, rgb in batch
            ])).to(disp.dtype)
            scale, valid = metric_scale(1.0 / disp, K_net, camera_height)
        for k, (stem, rgb) in enumerate(batch):
            if camera_height is None:
                writer.write(stem, rgb, disp[k, 0].numpy(), 1.0, intrinsics[stem])
            elif valid[k]:
                scales[stem] = (float(scale[k]), camera_height / float(scale[k]))
                writer.write(stem, rgb, disp[k, 0].numpy(), float(scale[k]), intrinsics[stem])
            else:
                pending.append((stem, rgb, disp[k, 0].numpy()))
        bar.update(len(batch))
    bar.close()
    if not stems:
        raise MasksfmError(f"{sequence.label}: no frames decoded")

    summary: dict = {"frames": len(stems), "out": str(folder)}
    if camera_height is not None:
        if not scales:
            raise MasksfmError(f"{sequence.label}: no road plane found in any of its {len(stems)} frames, so "
                               f"--camera-height cannot set the scale (it needs a road in the lower part of the image)")
        median = float(np.median([s for s, _ in scales.values()]))
        if pending:
            warn(f"{sequence.label}: no road plane found in {len(pending)} of {len(stems)} frames "
                 f"({', '.join(s for s, *_ in pending[:5])}{', ...' if len(pending) > 5 else ''}); "
                 f"they use the median scale of the others, {median:.6g}")
        for stem, rgb, disp_k in pending:
            scales[stem] = (median, math.nan)
            writer.write(stem, rgb, disp_k, median, intrinsics[stem])
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# metres per model unit for a camera {camera_height:g} m above the road; "
                 "fitted height in model units (nan: no road found, the median scale is used)",
                 "# frame scale height"]
        lines += [f"{stem} {scales[stem][0]:.9g} {scales[stem][1]:.9g}" for stem in stems]
        (folder / "scale.txt").write_text("\n".join(lines) + "\n")
        summary.update(scale_median=median, frames_without_road=len(pending))

    if trajectory:
        if len(stems) < config.data.snippet_length:  # a video's length is known only once decoded
            raise MasksfmError(f"{sequence.label}: --trajectory needs a sequence of at least "
                               f"{config.data.snippet_length} frames (the pose net's snippet), got {len(stems)}")
        frames = _UnitFrames(torch.cat(net_frames))
        rel = predict_relative_poses(model.pose_net, frames, config.data.snippet_length, device)
        if refine is not None:  # before the metric scale: refined translations are in the depth net's unit
            rel = refine_relative_poses(model.depth_net, frames, rel, np.stack(net_K), device, batch_size,
                                        iterations=refine)
        if camera_height is not None:
            # One scale for the whole path: per-frame scales would bend it with their noise.
            rel[:, :3, 3] *= summary["scale_median"]
        poses = chain_relative_poses(rel)
        folder.mkdir(parents=True, exist_ok=True)
        write_poses(folder / "trajectory.kitti.txt", poses)
        write_tum(folder / "trajectory.tum.txt", poses)
        unit = "m" if camera_height is not None else "model units"
        plot_trajectories(folder / "trajectory.png", None, poses,
                          title=f"{Path(sequence.label).name}: predicted trajectory, top view ({unit})")
        if ply:
            world = [points @ poses[i, :3, :3].T.astype(np.float32) + poses[i, :3, 3].astype(np.float32)
                     for i, points in enumerate(writer.cloud[stem][0] for stem in stems)]
            colors = [writer.cloud[stem][1] for stem in stems]
            write_ply(folder / "cloud.ply", np.concatenate(world), np.concatenate(colors))
        summary["trajectory_length"] = float(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).sum())
    return summary


def run_predict(
    run: Path,
    input: Path,
    out: Path,
    save: str | Iterable[str] = SAVE_KINDS,
    ply: bool = False,
    trajectory: bool = False,
    camera_height: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    intrinsics: str | None = None,
    fov: float | None = None,
    progress: bool = True,
    refine: int | None = None,
) -> dict:
    """`masksfm predict`: depth (and point clouds, metric scale, trajectories) for every frame of INPUT.

    Args:
        run: run folder or checkpoint file.
        input: image, folder of images, video, prepared scene or prepared dataset (see :func:`open_input`).
        out: the output folder (docs/design.md §1 "What predict writes"; a dataset's scenes in `out/<scene>/`).
        save: which of png16, npy, color to write (comma list or names).
        ply: a coloured point cloud per frame (and `cloud.ply` in the world frame with `trajectory`).
        trajectory: chain the pose net's predictions into a trajectory (KITTI, TUM, plot).
        camera_height: metres above the road: write metric depth and `scale.txt`.
        batch_size: frames per forward pass.
        device: cpu, cuda, cuda:N or None (cuda when available).
        intrinsics: "fx,fy,cx,cy" in the input's pixels; fov: horizontal field of view, degrees.
        progress: a progress bar on stderr.
        refine: with `trajectory`, refine the pose net's relative poses photometrically against the
            depth net's depth, this many LM iterations per pyramid level (:mod:`masksfm.refine`).
    Returns:
        A summary per sequence (keyed by its label): frames, out, and the scale / trajectory figures.
    """
    from masksfm.model import load_model, pick_device

    save = parse_save(save)
    if camera_height is not None and not (camera_height > 0 and math.isfinite(camera_height)):
        raise MasksfmError(f"--camera-height must be a positive number of metres, got {camera_height}")
    if batch_size < 1:
        raise MasksfmError(f"--batch-size must be a positive integer, got {batch_size}")
    if refine is not None and not trajectory:
        raise MasksfmError("--refine refines the poses of --trajectory: add --trajectory")
    sequences = open_input(input, intrinsics, fov)
    dev = pick_device(device)
    model, config, _ = load_model(run, dev)
    length = config.data.snippet_length
    if trajectory:
        for sequence in sequences:
            if sequence.count is not None and sequence.count < length:
                raise MasksfmError(f"{sequence.label}: --trajectory needs a sequence of at least {length} frames "
                                   f"(the pose net's snippet), got {sequence.count}")
    out = Path(out)
    summaries = {}
    for sequence in sequences:
        folder = out / sequence.scene if sequence.scene is not None else out
        summaries[sequence.label] = _predict_sequence(model, config, sequence, folder, save, ply, trajectory,
                                                      camera_height, batch_size, dev, progress, refine)
    return summaries
