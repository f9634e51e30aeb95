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

Metric scale (`--camera-height M`): `masksfm.road` fits the road plane in each frame; frames
without a plausible road take the median scale of the others. The inputs are read by
`masksfm.data.inputs`, the files written by `masksfm.data.outputs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from masksfm.data.inputs import FrameSequence, open_input
from masksfm.data.layout import write_image, write_poses
from masksfm.data.outputs import depth_to_points, write_depth_png16, write_ply
from masksfm.errors import MasksfmError, warn
from masksfm.geometry import scale_intrinsics
from masksfm.progress import progress_bar
from masksfm.road import metric_scale

SAVE_KINDS = ("png16", "npy", "color")
# The fused world-frame cloud keeps at most this many points of each frame (a regular pixel
# stride): neighbouring frames see the same surfaces, and a long video must not fill the memory.
FUSED_POINTS_PER_FRAME = 20_000


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
                      progress: bool, refine: int | None, motion: str, flip: bool = False) -> dict:
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
        disp = predict_disparity(model.depth_net, x, device, batch_size, flip=flip)
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
        rel = predict_relative_poses(model.pose_net, frames, config.data.snippet_length, device, flip=flip)
        if refine is not None:  # before the metric scale: refined translations are in the depth net's unit
            rel = refine_relative_poses(model.depth_net, frames, rel, np.stack(net_K), device, batch_size,
                                        flip=flip, iterations=refine, motion=motion)
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
    refine_motion: str | None = None,
    flip: bool = False,
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
            depth net's depth, this many LM iterations per pyramid level (:mod:`masksfm.refine`),
            with the model's motion (`model.motion`), or `refine_motion` (free | vehicle | vehicle_vertical).
        flip: each depth map (and pose) the mean of the nets' reading of the frames and of their mirror
            images (:func:`masksfm.inference.predict_disparity`, :func:`masksfm.inference.read_poses`).
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
    if refine_motion is not None and refine is None:
        raise MasksfmError("--refine-motion is the motion --refine solves for: add --refine")
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
                                                      camera_height, batch_size, dev, progress, refine,
                                                      refine_motion or config.model.motion, flip)
    return summaries
