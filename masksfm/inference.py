"""From a trained model to numbers and files: disparity of frames, relative poses of a sequence,
and the depth / pose evaluations of `masksfm eval` (docs/design.md §6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from masksfm.data.dataset import resize_and_crop
from masksfm.data.layout import Scene, load_split, read_image
from masksfm.evaluation import (
    MAX_DEPTH,
    MIN_DEPTH,
    EvaluationInputError,
    depth_metrics,
    mean_metrics,
    own_snippet_ates,
    prediction_to_depth_at,
    snippet_ates,
    snippet_steps,
)
from masksfm.errors import MasksfmError
from masksfm.geometry import pose_vec_to_mat, scale_intrinsics, snippet_transforms
from masksfm.networks.pose import mirror_mean
from masksfm.progress import progress_bar


def frames_to_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 frames (N, H0, W0, 3) -> float (N, 3, height, width) in [0, 1], resized as in training."""
    if frames.shape[1:3] != (height, width):
        frames, _ = resize_and_crop(frames, np.eye(3), height, width)
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def predict_disparity(depth_net: torch.nn.Module, frames: torch.Tensor, device: torch.device, batch_size: int = 8,
                      flip: bool = False) -> torch.Tensor:
    """Finest-scale disparity of frames already at the net's size.

    With `flip`, the mean of the disparity of each frame and of its mirror image mirrored back (the
    test-time flip of monodepth2's post-processing, without its ramps at the borders, which are for
    the occlusions of stereo training).

    Args:
        frames: (N, 3, h, w) in [0, 1].
    Returns:
        (N, 1, h, w) disparity on the CPU (depth = 1 / disparity, in the model's own scale).
    """
    depth_net.eval()

    def disparity(x):
        disp = depth_net(x)[0]
        return 0.5 * (disp + depth_net(x.flip(-1))[0].flip(-1)) if flip else disp

    out = [disparity(frames[i:i + batch_size].to(device)).cpu() for i in range(0, len(frames), batch_size)]
    return torch.cat(out)


def _spread(count: int, limit: int | None) -> list[int]:
    if limit is None or count <= limit:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


@dataclass(frozen=True)
class DepthItem:
    """One test image of a depth evaluation: where it comes from, its pixels, its ground truth."""

    label: str  # the file, for messages
    read_image: Callable[[], np.ndarray]  # uint8 (H0, W0, 3)
    read_gt: Callable[[], np.ndarray | None]  # float32 (H, W) depth in metres, 0 = none


def scene_items(scenes: Sequence[Scene]) -> list[DepthItem]:
    """Every frame of the scenes, in split order then frame order."""
    return [DepthItem(str(scene.frames[i]), partial(scene.read_frame, i), partial(scene.read_depth, i))
            for scene in scenes for i in range(len(scene))]


def eigen_items(data: Path, split: str) -> list[DepthItem]:
    """The prepared Eigen test images (`DATA/eigen_test/` or `DATA/eigen_benchmark/`, docs/design.md §5)."""
    folder = Path(data) / ("eigen_test" if split == "eigen" else "eigen_benchmark")
    listing = folder / "files.txt"
    if not listing.is_file():
        raise MasksfmError(f"{listing}: missing (run `masksfm prepare kitti-raw` on KITTI raw data first)")
    count = len([line for line in listing.read_text().splitlines() if line.strip()])
    if count == 0:
        raise MasksfmError(f"{listing}: lists no test image")
    items = []
    for k in range(count):
        image, gt = folder / "images" / f"{k:06d}.png", folder / "depth" / f"{k:06d}.npy"
        items.append(DepthItem(str(image), partial(read_image, image), partial(_read_gt, gt)))
    return items


def _read_gt(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as error:
        raise MasksfmError(f"{path}: cannot read ground-truth depth ({error})") from None


def refuse_video_without_truth(data: Path, split: str, what: str) -> None:
    """A split of a dataset `prepare video` wrote is empty: a clip has no ground truth. Say that, not
    only that the split names no scenes."""
    from masksfm.data.layout import read_dataset_info, read_split

    if read_dataset_info(data).get("kind") == "video" and not read_split(data, split):
        raise MasksfmError(f"{data}: prepared from a video, which has no ground-truth {what} to evaluate against "
                           f"(its {split} split is empty); `masksfm predict` writes the model's depth and trajectory")


def depth_items(data: Path, split: str) -> list[DepthItem]:
    """The test images of `--split`: a split file of the layout, or eigen / eigen_benchmark."""
    if split in ("eigen", "eigen_benchmark"):
        return eigen_items(data, split)
    return scene_items(load_split(data, split))


Predictor = Callable[[list[int], list[DepthItem]], list[np.ndarray]]


def model_predictor(depth_net: torch.nn.Module, height: int, width: int, device: torch.device,
                    flip: bool = False) -> Predictor:
    """Disparities of a model for a batch of items (frames resized to the net's size as in training;
    with `flip`, averaged with the mirrored frames', :func:`predict_disparity`)."""

    def predict(indices: list[int], items: list[DepthItem]) -> list[np.ndarray]:
        # Frames are resized one by one: test images of one split may differ in size (KITTI drives).
        frames = torch.cat([frames_to_tensor(item.read_image()[None], height, width) for item in items])
        return [d[0].numpy() for d in predict_disparity(depth_net, frames, device, flip=flip)]

    return predict


def folder_predictor(folder: Path) -> Predictor:
    """Someone else's predictions: `folder/000000.npy` ... one per test image, in the split's order."""

    def predict(indices: list[int], items: list[DepthItem]) -> list[np.ndarray]:
        out = []
        for k in indices:
            path = Path(folder) / f"{k:06d}.npy"
            if not path.is_file():
                raise MasksfmError(f"{path}: missing prediction for test image {k} ({items[indices.index(k)].label})")
            out.append(_read_gt(path))
        return out

    return predict


def evaluate_depth_items(
    items: Sequence[DepthItem],
    predict: Predictor,
    kind: str = "disp",
    garg_crop: bool = False,
    median_scaling: bool = True,
    max_images: int | None = None,
    progress: bool = False,
    batch_size: int = 8,
) -> dict[str, float]:
    """Depth metrics over test items (docs/design.md §6): each prediction (disparity or depth, any size) is
    resized to its ground truth's size and scored with `depth_metrics`; mean over images + `count`.

    Images whose ground truth has no valid pixel are skipped; `max_images` spreads that many
    evenly over the items.
    """
    chosen = _spread(len(items), max_images)
    bar = progress_bar(len(chosen), "eval depth", "img", enabled=progress)
    per_image = []
    for start in range(0, len(chosen), batch_size):
        indices = chosen[start:start + batch_size]
        batch = [items[k] for k in indices]
        for item, pred in zip(batch, predict(indices, batch)):
            gt = item.read_gt()
            if gt is None:
                raise MasksfmError(f"{item.label}: no ground-truth depth for this frame")
            if not ((gt > MIN_DEPTH) & (gt < MAX_DEPTH)).any():
                continue  # e.g. a frame of sky only: no metric is defined
            try:
                depth = prediction_to_depth_at(pred, *gt.shape, kind=kind)
                per_image.append(depth_metrics(gt, depth, garg_crop=garg_crop, median_scaling=median_scaling))
            except EvaluationInputError as error:
                raise MasksfmError(f"{item.label}: {error}") from None
        bar.update(len(batch))
    bar.close()
    if not per_image:
        raise MasksfmError("no test image with valid ground-truth depth")
    return mean_metrics(per_image)


def evaluate_depth(depth_net: torch.nn.Module, scenes: Sequence[Scene], height: int, width: int,
                   device: torch.device, max_images: int | None = None, garg_crop: bool = False) -> dict[str, float]:
    """Median-scaled depth metrics of a model on scenes with ground truth (the trainer's validation)."""
    return evaluate_depth_items(scene_items(scenes), model_predictor(depth_net, height, width, device),
                                garg_crop=garg_crop, max_images=max_images)


@torch.no_grad()
def read_poses(pose_net: torch.nn.Module, target: torch.Tensor, sources: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """The pose net's T_t2s for a batch of snippets, (B, S, 6) `[t, axis-angle]`.

    With `flip`, the mean of its reading of the frames and of the same frames mirrored (mirrored back:
    :func:`masksfm.networks.pose.mirror_mean`), the test-time flip that monodepth2's post-processing
    applies to depth; the nets train on mirrored snippets half the time, so both readings are in
    their experience. The mean of two motions along a car's path (a mirrored path is one) is on it to
    second order in the difference of their turns: within 1e-4 of the distance for turns a degree apart.

    Args:
        target: (B, 3, H, W); sources: (B, S, 3, H, W), in [0, 1].
    """

    def call(target, sources):
        out = pose_net(target, sources)
        return out[0] if isinstance(out, tuple) else out

    return mirror_mean(call, target, sources) if flip else call(target, sources)


@torch.no_grad()
def predict_snippet_poses(pose_net: torch.nn.Module, frames: torch.Tensor, snippet_length: int,
                          device: torch.device, batch_size: int = 16, flip: bool = False) -> np.ndarray:
    """The pose net's own output for every snippet of a sequence, one call per snippet.

    Every frame c with a full snippet of L frames around it is a target; the net gives T_{c→s} for
    its sources (with `flip`, averaged with its reading of the mirrored snippet: :func:`read_poses`).

    Args:
        frames: (N, 3, h, w) in [0, 1] at the net's size, N >= snippet_length.
    Returns:
        (N − L + 1, L, 4, 4) float64, element [j, k] = T_{c→(c − L//2 + k)} for the centre
        c = L//2 + j (the identity at k = L//2).
    """
    n, half = len(frames), snippet_length // 2
    if n < snippet_length:
        raise MasksfmError(f"a sequence of {n} frames is shorter than the {snippet_length}-frame snippet")
    pose_net.eval()
    centers = list(range(half, n - half))
    snippet_poses = []
    for start in range(0, len(centers), batch_size):
        chunk = centers[start:start + batch_size]
        snippets = torch.stack([frames[c - half:c + half + 1] for c in chunk]).to(device)
        sources = torch.cat([snippets[:, :half], snippets[:, half + 1:]], dim=1)
        poses = read_poses(pose_net, snippets[:, half], sources, flip)
        T = pose_vec_to_mat(poses.reshape(-1, 6).double()).view(len(chunk), snippet_length - 1, 4, 4).cpu()
        snippet_poses.append(snippet_transforms(T))
    return torch.cat(snippet_poses).numpy()


def chain_snippet_poses(snippet_poses: np.ndarray) -> np.ndarray:
    """Relative poses between consecutive frames of a sequence from its snippets' poses.

    The pair (i, i+1) is read from the snippet centred nearest to i+1 that contains both frames:
    `inv(P_i) @ P_{i+1}` = T_{(i+1)→i} = T_{c→i} · inv(T_{c→(i+1)}).

    Args:
        snippet_poses: (N − L + 1, L, 4, 4), :func:`predict_snippet_poses`.
    Returns:
        (N − 1, 4, 4) float64, element i = inv(P_i) @ P_{i+1} (camera-to-world convention of
        `masksfm.trajectory.chain_relative_poses`).
    """
    length = snippet_poses.shape[1]
    half, n = length // 2, len(snippet_poses) + length - 1
    centres = np.clip(np.arange(1, n), half, n - 1 - half)
    pairs = np.arange(n - 1)
    return snippet_steps(snippet_poses)[centres - half, pairs - centres + half]


def predict_relative_poses(pose_net: torch.nn.Module, frames: torch.Tensor, snippet_length: int,
                           device: torch.device, batch_size: int = 16, flip: bool = False) -> np.ndarray:
    """Relative poses between consecutive frames of a sequence, from a snippet pose net:
    :func:`chain_snippet_poses` of :func:`predict_snippet_poses`, (N − 1, 4, 4) float64."""
    return chain_snippet_poses(predict_snippet_poses(pose_net, frames, snippet_length, device, batch_size, flip))


def is_prediction_folder(run: Path) -> bool:
    """`RUN` of `eval depth` is someone else's predictions when it is a folder of .npy files
    without a checkpoints/ folder."""
    run = Path(run)
    return run.is_dir() and not (run / "checkpoints").is_dir() and any(run.glob("*.npy"))


def run_eval_depth(run: Path, data: Path, split: str = "test", crop: str | None = None, pred_kind: str = "disp",
                   device: str | None = None, progress: bool = True, median_scaling: bool = True,
                   flip: bool = False) -> dict[str, float]:
    """`masksfm eval depth`: the seven metrics and `count` of a run (or a prediction folder) on a split.

    The Garg crop is the default only for `kitti-raw` data (docs/design.md §6). `median_scaling=False` scores
    metric depth as it is (e.g. `predict --camera-height` output). `flip`: a model's disparity averaged with
    that of the mirrored frame (:func:`predict_disparity`).
    """
    from masksfm.data.layout import read_dataset_info
    from masksfm.model import load_model, pick_device

    if not Path(data).is_dir():
        raise MasksfmError(f"{data}: no such dataset folder")
    kind = read_dataset_info(data).get("kind")
    garg = (crop or ("garg" if kind == "kitti-raw" else "none")) == "garg"
    if split not in ("eigen", "eigen_benchmark"):
        refuse_video_without_truth(data, split, "depth")
    items = depth_items(data, split)
    if is_prediction_folder(run):
        if flip:
            raise MasksfmError(f"{run}: --flip reads frames with a model; a folder of predictions has none")
        predict, kind_of_prediction = folder_predictor(run), pred_kind
    else:
        dev = pick_device(device)
        model, config, _ = load_model(run, dev)
        predictor = model_predictor(model.depth_net, config.data.height, config.data.width, dev, flip)
        predict, kind_of_prediction = predictor, "disp"
    return evaluate_depth_items(items, predict, kind=kind_of_prediction, garg_crop=garg, median_scaling=median_scaling,
                                progress=progress)


def sequence_frames(scene: Scene, height: int, width: int) -> torch.Tensor:
    """All frames of a scene at the net's size, (N, 3, height, width) in [0, 1]."""
    return torch.cat([frames_to_tensor(scene.read_frame(i)[None], height, width) for i in range(len(scene))])


def sequence_pose_results(scene: Scene, rel: np.ndarray, folder: Path | None = None,
                          snippet_poses: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Pose metrics of one sequence from its predicted relative poses (inv(P_i) @ P_{i+1}).

    Returns the 5-frame snippet ATEs and a dict with `ate_mean`, `ate_std` (5-frame snippets),
    `ate3_mean`, `ate3_std` (3-frame snippets; both chained from the consecutive pairs),
    with `snippet_poses` (:func:`predict_snippet_poses`) `ate_own_mean`, `ate_own_std` and
    `snippet_length` (the net's own L-frame snippets, one call each: `own_snippet_ates`), `ate_rmse`,
    `rpe_trans`, `rpe_rot` (full trajectory, Sim(3)-aligned), where the frame-to-frame error comes from
    (`direction_err`, `speed_spread`, `rotation_err`: :func:`masksfm.evaluation.relative_pose_errors`)
    and, when the drive is over 100 m, KITTI's `t_rel`, `r_rel`. With `folder`, the trajectory (in the
    ground truth's world frame) is written there in KITTI and TUM formats with a plot.
    """
    from masksfm.data.layout import write_poses
    from masksfm.evaluation import kitti_odometry_metrics, relative_pose_errors, trajectory_metrics
    from masksfm.trajectory import chain_relative_poses, plot_trajectories, write_tum

    trajectory = scene.poses[0] @ chain_relative_poses(rel)
    result = snippet_summary([(rel, scene.poses)], None if snippet_poses is None else [(snippet_poses, scene.poses)])
    result.update(trajectory_metrics(scene.poses, trajectory))
    result.update(relative_pose_errors(rel, scene.poses))
    result.update(kitti_odometry_metrics(scene.poses, trajectory) or {})
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_poses(folder / "trajectory.kitti.txt", trajectory)
        write_tum(folder / "trajectory.tum.txt", trajectory)
        plot_trajectories(folder / "trajectory.png", scene.poses, trajectory, title=f"{scene.name}: predicted vs true")
    return snippet_ates(rel, scene.poses), result


def snippet_summary(sequences: list[tuple[np.ndarray, np.ndarray]],
                    own: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, float]:
    """Mean and std of the snippet ATE over every snippet of every sequence: `ate_mean`, `ate_std`
    (5 frames, the protocol) and `ate3_mean`, `ate3_std` (3 frames), chained from the consecutive
    pairs; with `own`, `ate_own_mean`, `ate_own_std` of the net's own snippets (SfMLearner's and the
    authors' `test_pose.py`: one call per snippet of the net's length, `snippet_length`).

    Args:
        sequences: (rel_poses (N-1, 4, 4), gt_poses (N, 4, 4)) per sequence, as `snippet_ates` takes them.
        own: (snippet_poses (N-L+1, L, 4, 4), gt_poses (N, 4, 4)) per sequence, as `own_snippet_ates` takes them.
    """
    out = {}
    for key, length in (("ate", 5), ("ate3", 3)):
        ates = np.concatenate([snippet_ates(rel, gt, length) for rel, gt in sequences])
        out[f"{key}_mean"], out[f"{key}_std"] = float(ates.mean()), float(ates.std())
    if own:
        ates = np.concatenate([own_snippet_ates(snippets, gt) for snippets, gt in own])
        out["ate_own_mean"], out["ate_own_std"] = float(ates.mean()), float(ates.std())
        out["snippet_length"] = int(own[0][0].shape[1])
    return out


def run_eval_pose(run: Path, data: Path, split: str = "test", out: Path | None = None, device: str | None = None,
                  progress: bool = True, refine: int | None = None, refine_motion: str | None = None,
                  flip: bool = False) -> dict:
    """`masksfm eval pose`: snippet ATE over all test scenes, and per scene the full trajectory
    chained from pairwise predictions (ATE RMSE, RPE, KITTI t_rel / r_rel), its KITTI and TUM files
    and a plot (docs/design.md §1, §6).

    With `refine` (LM iterations per pyramid level), the pose net's relative poses are also refined
    photometrically against the depth net's depth (:func:`masksfm.refine.refine_relative_poses`)
    and scored alike: `refined` beside the pose net's own figures (overall and per scene; its
    trajectory files in OUT/<scene>/refined/), which stay as they are. The refinement keeps the
    model's motion (`model.motion`: a car's camera stays on its chord), or solves for `refine_motion`.
    With `flip`, every pose is the mean of the net's reading of the snippet and of its mirror image
    (:func:`read_poses`); the refinement starts from those, against the depth of `--flip` too.
    """
    from masksfm.model import load_model, pick_device
    from masksfm.refine import refine_relative_poses

    refuse_video_without_truth(data, split, "poses")
    if refine_motion is not None and refine is None:
        raise MasksfmError("--refine-motion is the motion --refine solves for: add --refine")
    dev = pick_device(device)
    model, config, _ = load_model(run, dev)
    motion = refine_motion or config.model.motion  # what --refine solves for
    scenes = [s for s in load_split(data, split) if s.poses is not None]
    if not scenes:
        raise MasksfmError(f"{data}: no scene of split {split!r} has poses.txt (ground-truth poses)")
    run = Path(run)
    if out is None:
        out = run / "eval" / f"pose-{split}" if run.is_dir() else run.parent / f"{run.stem}-pose-{split}"
    predicted, own, refined, sequences = [], [], [], {}
    bar = progress_bar(len(scenes), "eval pose", "scene", enabled=progress)
    for scene in scenes:
        bar.update()
        if len(scene) < max(config.data.snippet_length, 5):
            continue
        frames = sequence_frames(scene, config.data.height, config.data.width)
        snippets = predict_snippet_poses(model.pose_net, frames, config.data.snippet_length, dev, flip=flip)
        rel = chain_snippet_poses(snippets)
        _, sequences[scene.name] = sequence_pose_results(scene, rel, out / scene.name, snippets)
        predicted.append((rel, scene.poses))
        own.append((snippets, scene.poses))
        if refine is not None:
            K = scale_intrinsics(scene.K, config.data.width / scene.size[1], config.data.height / scene.size[0])
            rel = refine_relative_poses(model.depth_net, frames, rel, K, dev, flip=flip, iterations=refine,
                                        motion=motion)
            _, sequences[scene.name]["refined"] = sequence_pose_results(scene, rel, out / scene.name / "refined")
            refined.append((rel, scene.poses))
    if not predicted:
        raise MasksfmError(f"{data}: no scene of split {split!r} is long enough for 5-frame snippets")
    bar.close()
    results = {**snippet_summary(predicted, own), "sequences": sequences, "out": str(out)}
    if refine is not None:
        results["refined"] = {**snippet_summary(refined), "iterations": refine, "motion": motion}
    return results
