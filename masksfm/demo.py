"""`masksfm demo`: render a synthetic street, train on it for a time budget, evaluate depth and
pose on the held-out scenes beside the trivial baselines, predict on a test scene, and write one
self-contained `report.html` (docs/design.md §1, "Demo").

The pipeline composes the project's own entry points (`render_dataset`, `run_training`,
`run_eval_depth`, `run_eval_pose`, `run_predict`), so the demo's numbers are the ones the
`masksfm eval` commands print for the same folders. Everything it writes lives in one folder:

    OUT/data/           the rendered dataset (re-used by a later demo with the same settings)
    OUT/run/            the training run (replaced by a later demo: it trains from scratch)
    OUT/eval/pose/      predicted trajectories of the test scenes (KITTI, TUM, plot)
    OUT/predict/SCENE/  `masksfm predict` on one test scene (depth png16 / npy / colour, trajectory)
    OUT/metrics.json    the report's numbers
    OUT/report.html     the page

The bars to beat: a constant depth, median-scaled to each image's ground truth as the model's
prediction is (so its errors are those of the scene's depth spread alone), and for the pose a
camera driving straight ahead at constant speed, scaled to the truth as the model's prediction is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from masksfm.errors import MasksfmError

DEFAULT_MINUTES = 8.0


@dataclass(frozen=True)
class DemoSettings:
    """What the demo renders and how long it trains.

    The defaults fit ~10 minutes on 2 CPU cores: 12 drives of 30 frames at 64x208 (2 for
    validation, 2 for the test), two independently moving cars per drive, 8 minutes of training.
    """

    scenes: int = 12
    frames: int = 30
    height: int = 64
    width: int = 208
    moving_cars: int = 2
    seed: int = 0
    minutes: float = DEFAULT_MINUTES

    def __post_init__(self):
        # 3 drives give one each to train, val and test; 5 frames make one 5-frame pose snippet.
        for name, least in (("scenes", 3), ("frames", 5), ("height", 32), ("width", 32)):
            if getattr(self, name) < least:
                raise MasksfmError(f"demo: --{name} must be at least {least}, got {getattr(self, name)}")
        if not self.minutes > 0:
            raise MasksfmError(f"demo: --minutes must be positive, got {self.minutes}")

    def data_key(self) -> dict:
        """The settings that decide the rendered data (compared with an earlier render's dataset.json)."""
        return {"seed": self.seed, "scenes": self.scenes, "frames": self.frames, "height": self.height,
                "width": self.width, "moving_cars": self.moving_cars}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _TimeBar:
    """A progress bar over a time budget, updated by a thread while a blocking call runs.

    The trainer stops on a clock (`time_limit`), not after a number of steps, so the honest ETA of
    training is the budget minus the elapsed time; a step bar would estimate for `optim.steps`.
    """

    def __init__(self, seconds: float, desc: str, enabled: bool):
        from masksfm.progress import progress_bar

        self.seconds = max(1, int(math.ceil(seconds)))
        self.bar = progress_bar(self.seconds, desc, "s", enabled=enabled)
        self.bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} of {total_fmt} s budget, {remaining} left"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(0.5):
            self.bar.n = min(self.seconds, int(time.monotonic() - start))
            self.bar.refresh()

    def __enter__(self) -> _TimeBar:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if exc[0] is None:
            self.bar.n = self.seconds
            self.bar.refresh()
        self.bar.close()


def idle_cores(seconds: float = 1.0) -> float | None:
    """How many CPU cores sat idle over the next `seconds` (Linux /proc/stat); None elsewhere."""

    def sample():
        with open("/proc/stat") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cpus = os.cpu_count() or 1
    return cpus * (idle1 - idle0) / max(total1 - total0, 1e-9)


def pick_threads(requested: int | None) -> tuple[int, str]:
    """torch's CPU threads for training, and why.

    On a machine shared with other work, more threads than free cores make torch's OpenMP barriers
    wait for descheduled threads (on busy cores, 1 thread ran several times more steps per minute
    than 2; docs/results.md). So by default, as many threads as cores are idle right now (at least 1).
    """
    if requested is not None:
        return requested, "--threads"
    cpus = os.cpu_count() or 1
    idle = idle_cores()
    if idle is None:
        return cpus, f"{cpus} cores"
    return max(1, min(cpus, int(idle + 0.5))), f"{idle:.1f} of {cpus} cores idle; --threads N to choose"


# --- the stages ----------------------------------------------------------------------------------


def prepare_data(folder: Path, settings: DemoSettings, progress: bool = True) -> str:
    """Render the dataset into `folder`, or re-use the one there when it was rendered with the same
    settings by this version of masksfm. Returns what was done, for the log."""
    from masksfm import __version__
    from masksfm.data.layout import load_split, read_dataset_info
    from masksfm.data.synthetic import render_dataset

    reason = "rendering"
    if (folder / "dataset.json").is_file():
        try:
            info = read_dataset_info(folder)
        except MasksfmError:
            info = {}
        wanted = dict(settings.data_key(), kind="synthetic", version=__version__)
        differ = [f"{k} {info.get(k)} -> {v}" for k, v in wanted.items() if info.get(k) != v]
        if not differ:
            try:
                for split in ("train", "val", "test"):
                    load_split(folder, split)
                return f"re-using the dataset in {folder} (same settings)"
            except MasksfmError as error:
                reason = f"re-rendering ({error})"
        else:
            reason = f"re-rendering (settings differ from {folder / 'dataset.json'}: {', '.join(differ)})"
    _say(f"  {reason}: {settings.scenes} drives x {settings.frames} frames at {settings.width}x{settings.height}, "
         f"{settings.moving_cars} moving cars each")
    render_dataset(folder, scenes=settings.scenes, frames=settings.frames, height=settings.height,
                   width=settings.width, seed=settings.seed, moving_cars=settings.moving_cars, progress=progress)
    return f"rendered into {folder}"


def demo_config(settings: DemoSettings):
    """The shipped default recipe at the demo's image size; only what a short run needs changes:
    validation (and the best checkpoint) every 100 steps instead of 500, scalars every 10, and one
    loader process (the frames are small; a second one takes a core from the training on 2 cores)."""
    from masksfm.config import load_config

    return load_config("default", [f"data.height={settings.height}", f"data.width={settings.width}", "data.workers=1",
                                   "train.val_every=100", "train.checkpoint_every=100", "train.log_every=10"])


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / "checkpoints").is_dir() or any(folder.glob("events.out.tfevents.*"))


def _clear(folder: Path, what: str) -> None:
    """Remove an earlier demo's output folder, refusing anything that does not look like one."""
    if not folder.exists():
        return
    if not folder.is_dir() or (what == "run" and not _is_run(folder)):
        raise MasksfmError(f"{folder}: exists and is not an earlier demo's {what}; choose another --out")
    shutil.rmtree(folder)


def train(data: Path, run: Path, settings: DemoSettings, device: str | None, progress: bool,
          threads: int | None = None) -> dict:
    """Train from scratch for the budget; returns the step reached and the seconds spent."""
    import torch

    from masksfm.checkpoints import CHECKPOINT_DIR, LAST, load_checkpoint
    from masksfm.training import run_training

    if run.exists():
        _say(f"  {run} holds an earlier demo's run: training again from scratch (it is replaced)")
    _clear(run, "run")
    count, why = pick_threads(threads)
    torch.set_num_threads(count)
    _say(f"  torch CPU threads: {count} ({why})")
    config = demo_config(settings)
    seconds = settings.minutes * 60
    start = time.monotonic()
    with _TimeBar(seconds, "train", progress):
        run_training(data, run, config, device=device, progress=False, time_limit=seconds)
    _, meta = load_checkpoint(run / CHECKPOINT_DIR / LAST)
    return {"steps": int(meta["step"]), "seconds": time.monotonic() - start, "threads": count}


def constant_depth_metrics(scenes) -> dict[str, float]:
    """The seven depth metrics of a constant depth, median-scaled per image as the model's are."""
    from masksfm.inference import evaluate_depth_items, scene_items

    def predict(indices, items):
        return [np.ones(item.read_gt().shape, dtype=np.float32) for item in items]

    return evaluate_depth_items(scene_items(scenes), predict, kind="depth")


def constant_velocity_poses(scene) -> tuple[np.ndarray, dict, np.ndarray]:
    """The pose baseline, driving straight ahead at constant speed: its 5-frame snippet ATEs, its
    metrics (scaled and aligned by the evaluation as the model's are) and its trajectory."""
    from masksfm.inference import sequence_pose_results
    from masksfm.trajectory import chain_relative_poses

    rel = np.tile(np.eye(4), (len(scene) - 1, 1, 1))
    rel[:, 2, 3] = 1.0  # one unit forward (z) per frame; the evaluation fits the scale
    ates, result = sequence_pose_results(scene, rel)
    return ates, result, scene.poses[0] @ chain_relative_poses(rel)


def _median_scaled(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    from masksfm.evaluation import MAX_DEPTH, MIN_DEPTH

    valid = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
    return pred * (np.median(gt[valid]) / np.median(pred[valid])) if valid.any() else pred


def depth_examples(scene, predicted: Path, count: int = 4) -> list:
    """A few frames of a test scene: the input, `masksfm predict`'s depth (median-scaled to the
    truth, as the evaluation does) and the true depth."""
    from masksfm.report import DepthExample

    picks = sorted(set(np.linspace(1, len(scene) - 2, count).round().astype(int).tolist())) if len(scene) > 2 else [0]
    out = []
    for i in picks:
        stem = scene.stems[i]
        gt = scene.read_depth(i)
        pred = np.load(predicted / "depth" / f"{stem}.npy")
        out.append(DepthExample(f"{scene.name}/{stem}", scene.read_frame(i), _median_scaled(pred, gt), gt))
    return out


def mask_example(run: Path, scene, device: str | None):
    """The paper's masks for one pair of a test scene, from the model's own depth and pose, beside
    the true visibility (ray-cast when the data was rendered)."""
    import torch

    from masksfm.inference import predict_disparity, predict_relative_poses, sequence_frames
    from masksfm.masks import compute_masks
    from masksfm.model import load_model, pick_device
    from masksfm.report import MaskExample

    dev = pick_device(device)
    model, config, _ = load_model(run, dev)
    t = len(scene) // 2
    s = t - 1
    frames = sequence_frames(scene, config.data.height, config.data.width)
    disp = predict_disparity(model.depth_net, frames[s:t + 1], dev)
    rel = predict_relative_poses(model.pose_net, frames, config.data.snippet_length, dev)
    # rel[s] = inv(P_s) @ P_t maps points of frame t = s + 1 into frame s: T_t2s for target t, source s.
    T_t2s = torch.from_numpy(rel[s]).float()[None]
    K = torch.from_numpy(scene.K).float()[None]
    if tuple(frames.shape[-2:]) != tuple(scene.size):
        raise MasksfmError(f"{scene.path}: frames of {scene.size} differ from the run's size {tuple(frames.shape[-2:])}")
    depth = 1.0 / disp
    masks_t, _ = compute_masks(depth[1:2], depth[0:1], T_t2s, K, repeats=config.loss.repeats,
                               overlap_tolerance=config.loss.overlap_tolerance)
    masks = {name: getattr(masks_t, name)[0, 0].numpy() for name in ("edge", "overlap", "blank", "combined")}
    visibility = scene.read_visibility(t, s)
    agreement = None
    gt = scene.read_depth(t)
    if visibility is not None and gt is not None:
        # Only where the truth has a surface: the sky has no depth, hence no visibility to agree with.
        kept, surface = masks["combined"] > 0.5, gt > 0
        visible, hidden = surface & (visibility > 0), surface & (visibility == 0)
        agreement = {"visible_kept": float(kept[visible].mean()) if visible.any() else None,
                     "hidden_dropped": float((~kept[hidden]).mean()) if hidden.any() else None,
                     "hidden_share": float(hidden.sum() / max(surface.sum(), 1))}
    return MaskExample(
        target_label=f"{scene.name}/{scene.stems[t]}", source_label=f"{scene.name}/{scene.stems[s]}",
        target=scene.read_frame(t), source=scene.read_frame(s), masks=masks,
        visibility=visibility, moving=scene.read_moving(t), agreement=agreement,
        repeats=config.loss.repeats, overlap_tolerance=config.loss.overlap_tolerance,
    )


def read_scalars(run: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series of a run's TensorBoard events: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(run), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()[SCALARS]}


# --- the whole demo ------------------------------------------------------------------------------


def run_demo(out: Path = Path("demo-output"), settings: DemoSettings = DemoSettings(), device: str | None = None,
             progress: bool = True, threads: int | None = None) -> dict:
    """Render, train, evaluate, predict and report into `out`; returns the numbers of metrics.json
    (with `report`, the page's path)."""
    from masksfm.data.layout import load_split
    from masksfm.inference import run_eval_depth, run_eval_pose
    from masksfm.model import pick_device
    from masksfm.predict import run_predict

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MasksfmError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    data, run = out / "data", out / "run"
    timings: dict[str, float] = {}
    started = time.monotonic()
    _say(f"masksfm demo into {out}/: about {settings.minutes:.3g} min of training plus a minute or two "
         "of rendering, evaluation and the report")

    _say("[1/5] synthetic street data")
    clock = time.monotonic()
    data_note = prepare_data(data, settings, progress)
    _say(f"  {data_note}")
    timings["data"] = time.monotonic() - clock

    config = demo_config(settings)
    _say(f"[2/5] training from scratch for {settings.minutes:.3g} min (default recipe: loss.mask={config.loss.mask}, "
         f"guard={config.loss.guard}, {config.data.width}x{config.data.height}, batch {config.optim.batch_size})")
    trained = train(data, run, settings, device, progress, threads)
    timings["train"] = trained["seconds"]
    _say(f"  {trained['steps']} steps in {trained['seconds']:.0f} s -> {run}")

    _say("[3/5] evaluating depth and pose on the held-out test drives")
    clock = time.monotonic()
    test_scenes = load_split(data, "test")
    depth = run_eval_depth(run, data, "test", device=device, progress=progress)
    depth_constant = constant_depth_metrics(test_scenes)
    val_scenes = load_split(data, "val", allow_empty=True)
    val_constant = constant_depth_metrics(val_scenes)["abs_rel"] if val_scenes else None
    _clear(out / "eval", "evaluation")
    pose = run_eval_pose(run, data, "test", out=out / "eval" / "pose", device=device, progress=progress)
    pose.pop("out")
    pose_constant, baseline_trajectories, constant_ates = {}, {}, []
    for scene in test_scenes:
        if scene.name in pose["sequences"]:
            ates, pose_constant[scene.name], baseline_trajectories[scene.name] = constant_velocity_poses(scene)
            constant_ates.append(ates)
    constant_ates = np.concatenate(constant_ates)
    timings["evaluate"] = time.monotonic() - clock

    shown = next(s for s in test_scenes if s.name in pose["sequences"]) if pose["sequences"] else test_scenes[0]
    _say(f"[4/5] masksfm predict on test drive {shown.name}")
    clock = time.monotonic()
    _clear(out / "predict", "prediction")
    run_predict(run, shown.path, out / "predict" / shown.name, trajectory=len(shown) >= config.data.snippet_length,
                device=device, progress=progress)
    timings["predict"] = time.monotonic() - clock

    metrics = {
        "settings": asdict(settings), "device": str(pick_device(device)), "threads": trained["threads"], "steps": trained["steps"],
        "timings": timings,
        "data_note": data_note, "checkpoint": "best" if (run / "checkpoints" / "best.safetensors").is_file() else "last",
        "test_scenes": [s.name for s in test_scenes], "shown_scene": shown.name,
        "depth": depth, "depth_constant": depth_constant, "val_abs_rel_constant": val_constant,
        "pose": {"ate_mean": pose["ate_mean"], "ate_std": pose["ate_std"], "sequences": pose["sequences"]},
        "pose_constant": {"ate_mean": float(constant_ates.mean()), "ate_std": float(constant_ates.std()),
                          "sequences": pose_constant},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    _say("[5/5] report")
    clock = time.monotonic()
    metrics["report"] = str(write_demo_report(out, device))
    _say(f"  {time.monotonic() - clock:.0f} s")
    metrics["total_seconds"] = time.monotonic() - started
    return metrics


def write_demo_report(out: Path, device: str | None = None) -> Path:
    """(Re)write `out/report.html` from what a demo left in `out` (metrics.json, data, run,
    eval, predict); the figures' inputs are read back from those files."""
    from masksfm.config import read_yaml, stored_config
    from masksfm.data.layout import read_poses, read_scene
    from masksfm.report import ReportData, write_report

    out = Path(out)
    metrics = json.loads((out / "metrics.json").read_text())
    data, run = out / "data", out / "run"
    shown = read_scene(data / metrics["shown_scene"])
    trajectories = {}
    for name in metrics["pose"]["sequences"]:
        scene = read_scene(data / name)
        _, _, constant = constant_velocity_poses(scene)
        trajectories[name] = (scene.poses, read_poses(out / "eval" / "pose" / name / "trajectory.kitti.txt"), constant)
    checkpoint = metrics["checkpoint"]
    files = [
        ("data/dataset.json", "the rendered dataset (frames, cam.txt, poses.txt, depth/, visibility/, moving/ per drive)"),
        ("run/config.yaml", "the resolved training configuration"),
        (f"run/checkpoints/{checkpoint}.safetensors",
         "the checkpoint evaluated here (" + ("best validation abs_rel" if checkpoint == "best" else "the last step") + ")"),
        ("eval/pose", "predicted trajectories of the test drives (KITTI and TUM files, plots)"),
        (f"predict/{shown.name}/depth", "masksfm predict's depth of every frame: png16 (depth x 256) and float32 .npy, model scale"),
        (f"predict/{shown.name}/color", "colourised disparity of every frame"),
        ("metrics.json", "every number on this page"),
    ]
    return write_report(out / "report.html", ReportData(
        settings=metrics["settings"], config=stored_config(read_yaml(run / "config.yaml")).to_dict(), steps=metrics["steps"],
        checkpoint=checkpoint, timings=metrics["timings"], data_note=metrics["data_note"],
        machine=f"trained on {metrics['device']}, {metrics['threads']} CPU thread(s)",
        depth=metrics["depth"], depth_constant=metrics["depth_constant"],
        val_abs_rel_constant=metrics["val_abs_rel_constant"], pose=metrics["pose"], pose_constant=metrics["pose_constant"],
        depth_examples=depth_examples(shown, out / "predict" / shown.name),
        masks=mask_example(run, shown, device), trajectories=trajectories, scalars=read_scalars(run),
        files=files, out=str(out),
    ))


def summary_lines(metrics: dict) -> list[str]:
    """What `masksfm demo` prints at the end: where the report is and the headline numbers."""
    d, c = metrics["depth"], metrics["depth_constant"]
    p, pc = metrics["pose"], metrics["pose_constant"]
    from masksfm.report import CLEARLY_BETTER

    gain = 100 * (1 - d["abs_rel"] / c["abs_rel"])
    verdict = (f"{gain:.0f}% lower than" if gain >= CLEARLY_BETTER else
               f"only {gain:.0f}% lower: barely better than" if gain > 0 else "NOT better than")
    return [
        f"report: {metrics['report']}",
        f"depth on {d['count']} test frames: abs_rel {d['abs_rel']:.3f} vs {c['abs_rel']:.3f} for a constant depth "
        f"({verdict} the baseline; lower is better), a1 {d['a1']:.3f} vs {c['a1']:.3f} (higher is better)",
        f"pose, 5-frame snippet ATE: {p['ate_mean']:.3f} ± {p['ate_std']:.3f} m vs {pc['ate_mean']:.3f} ± "
        f"{pc['ate_std']:.3f} m driving straight at constant speed",
        f"trained {metrics['steps']} steps in {metrics['timings']['train'] / 60:.1f} min; whole demo "
        f"{metrics['total_seconds'] / 60:.1f} min",
    ]
