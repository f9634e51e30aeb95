"""Do the masks help? The same training budget for each loss variant on one synthetic street set.

    .venv/bin/python bench/ablation.py [--steps 150] [--seeds 3] [--height 64] [--width 208]
        [--scenes 10] [--frames 40] [--moving-cars 2] [--variants none,multimask,...] [--jobs 2]
        [--threads 1] [--out results] [--work runs/ablation] [--quick] [--list]

On one rendered synthetic street set (parked cars, poles and trees as occluders, moving cars),
every variant trains from scratch for the same number of steps at the same size with each seed,
and is scored on the held-out test scenes:

- depth: abs_rel and a1 (median-scaled, no crop: `masksfm eval depth` on synthetic data);
- pose: 5-frame snippet ATE (`masksfm eval pose`'s `ate_mean`, metres);
- masks: precision and recall of the combined (edge · overlap · blank) mask computed from the
  model's own depth and pose, as training computes it (the run's DN, repeats and τ), against the
  ray-cast visibility, over valid pixels not on moving cars (bench/mask_accuracy.py's
  convention). For variants that do not train with the masks it measures their geometry only.

Writes `OUT/ablation.md` (mean ± std over seeds, the command, the budget, the date) and
`OUT/ablation.json` (every run's numbers). Runs live under `WORK/<H>x<W>-<steps>steps/<variant>/
seed<k>/`; a run whose `result.json` exists, with the same configuration, is not run again, so an
interrupted ablation continues where it stopped when given the same command (checkpoints are deleted
once a run is scored).

The warm-up guard (`loss.guard = warmup`) is shortened to at most half the budget, so that the
masks are in use for at least half of every run (the default's 300 steps of 600, issue 5).

`--quick` is a smoke test: a tiny set, a few steps, one seed (tests/test_ablation.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mask_accuracy import counts, precision_recall  # noqa: E402

from masksfm.config import Config, load_config  # noqa: E402
from masksfm.data.layout import Scene, load_split  # noqa: E402
from masksfm.evaluation import snippet_ates  # noqa: E402
from masksfm.geometry import pose_vec_to_mat  # noqa: E402
from masksfm.inference import (  # noqa: E402
    evaluate_depth_items,
    predict_disparity,
    predict_relative_poses,
    scene_items,
    sequence_frames,
)
from masksfm.losses import normalize_disparity  # noqa: E402
from masksfm.masks import compute_masks  # noqa: E402
from masksfm.model import load_model  # noqa: E402

# name -> (shipped config, overrides, what it is). The multimask rows pin every mask setting, so
# that they stay what their name says whatever default.yaml becomes; the rest is default.yaml's.
MULTIMASK = ["loss.mask=multimask", "loss.repeats=0", "loss.overlap_tolerance=0.0", "loss.guard=floor",
             "loss.floor_out_of_view=false", "loss.dn=none"]
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "none": ("default", ["loss.mask=none", "loss.dn=none"], "every pixel, border padding"),
    "explainability": ("default", ["loss.mask=explainability", "loss.dn=none", "model.pose_encoder=conv"],
                       "SfMLearner's explainability mask (from its pose net's decoder)"),
    "automask": ("default", ["loss.mask=automask", "loss.dn=none"], "monodepth2: min reprojection + auto-mask"),
    "multimask": ("default", MULTIMASK, "the paper's masks, repeats 0, τ 0, floor guard"),
    "multimask-r3": ("default", MULTIMASK + ["loss.repeats=3"], "repeats 3"),
    "multimask-tau0.1": ("default", MULTIMASK + ["loss.overlap_tolerance=0.1"], "τ 0.1"),
    "multimask-r3-tau0.1": ("default", MULTIMASK + ["loss.repeats=3", "loss.overlap_tolerance=0.1"],
                            "repeats 3, τ 0.1"),
    "multimask-noguard": ("default", MULTIMASK + ["loss.guard=none"], "no guard against the collapse (the paper's form)"),
    "multimask-warmup": ("default", MULTIMASK + ["loss.guard=warmup"], "warm-up guard instead of the floor"),
    "multimask-floor-oov": ("default", MULTIMASK + ["loss.overlap_tolerance=0.1", "loss.floor_out_of_view=true"],
                            "τ 0.1, the floor on out-of-view pixels too"),
    "multimask+automask": ("default", MULTIMASK + ["loss.mask=multimask+automask"],
                           "the masks × monodepth2's auto-mask"),
    "multimask-dn": ("default", MULTIMASK + ["loss.dn=snippet"], "with depth normalisation (snippet)"),
    "default": ("default", [], "configs/default.yaml as shipped"),
    "paper": ("paper", [], "configs/paper.yaml (the authors' command) at this size"),
    "paper_dn": ("paper_dn", [], "configs/paper_dn.yaml (+ DN, image max) at this size"),
}
# Run by default; the others only when named (`--variants all` runs every one).
EXTRA = ("multimask-warmup", "paper_dn")
METRICS = ("abs_rel", "a1", "ate", "mask_precision", "mask_recall")
HEADERS = ("abs_rel ↓", "a1 ↑", "snippet ATE (m) ↓", "mask precision ↑", "mask recall ↑")
QUICK = {"steps": 4, "seeds": 1, "height": 32, "width": 96, "scenes": 3, "frames": 8, "variants": "none,multimask"}


# --- one run ----------------------------------------------------------------------------------


def bench_config(name: str, overrides: list[str], seed: int, args) -> Config:
    """Shipped config `name` at a bench's size, budget (no lr decay) and seed, then the variant's
    `overrides` last, so that a variant may set its own schedule."""
    return load_config(name, [
        f"data.height={args.height}", f"data.width={args.width}", "data.workers=0",
        f"optim.steps={args.steps}", "optim.lr_decay_steps=[]", f"train.seed={seed}",
        f"train.checkpoint_every={args.steps}", f"train.val_every={args.steps}",
        f"train.image_every={10 * args.steps}",
        *overrides,
    ])


def run_config(variant: str, seed: int, args) -> Config:
    """The configuration of one run: the variant's, at the ablation's size, budget and seed."""
    name, overrides, _ = VARIANTS[variant]
    config = bench_config(name, overrides, seed, args)
    if config.loss.guard == "warmup":
        config.loss.warmup_steps = min(config.loss.warmup_steps, args.steps // 2)
    return config


def visibility_counts(masks_t, masks_s, pairs: list[tuple[int, int]], scene: Scene) -> np.ndarray:
    """(tp, fp, fn) of combined masks against the scene's ray-cast visibility, over valid pixels not
    on moving cars (bench/mask_accuracy.py's convention), both frames of every (target, source) pair."""
    total = np.zeros(3, dtype=np.int64)
    for k, (t, s) in enumerate(pairs):
        for own, other, mask in ((t, s, masks_t.combined[k, 0]), (s, t, masks_s.combined[k, 0])):
            region = scene.read_depth(own) > 0
            moving = scene.read_moving(own)
            if moving is not None:
                region &= ~moving
            total += counts(mask.numpy() > 0.5, scene.read_visibility(own, other).astype(bool), region)
    return total


@torch.no_grad()
def mask_counts(model, config: Config, scene: Scene, disparity: torch.Tensor) -> np.ndarray:
    """(tp, fp, fn) of the combined masks of every snippet of a scene, computed as in training: the
    snippet's (DN-normalised) finest disparities, the pose net's T_t2s, the run's repeats and τ.

    Args:
        disparity: (N, 1, H, W) the model's finest disparity of every frame of the scene.
    """
    length, half = config.data.snippet_length, config.data.snippet_length // 2
    frames = sequence_frames(scene, config.data.height, config.data.width)
    K = torch.tensor(scene.K, dtype=torch.float32)  # frames are stored at the training size
    total = np.zeros(3, dtype=np.int64)
    centers = list(range(half, len(scene) - half))
    for chunk in (centers[i:i + 8] for i in range(0, len(centers), 8)):
        ids = torch.tensor([list(range(c - half, c + half + 1)) for c in chunk])  # (B, L)
        sources = torch.cat([ids[:, :half], ids[:, half + 1:]], dim=1)  # (B, S)
        out = model.pose_net(frames[ids[:, half]], frames[sources])
        poses = out[0] if isinstance(out, tuple) else out
        depth = 1.0 / normalize_disparity([disparity[ids.flatten()]], config.loss.dn, length)[0]
        depth = depth.view(len(chunk), length, *depth.shape[1:])
        depth_s = torch.cat([depth[:, :half], depth[:, half + 1:]], dim=1).flatten(0, 1)
        depth_t = depth[:, half:half + 1].expand(-1, length - 1, -1, -1, -1).flatten(0, 1)
        masks_t, masks_s = compute_masks(depth_t, depth_s, pose_vec_to_mat(poses.reshape(-1, 6)),
                                         K.expand(len(depth_t), 3, 3), config.loss.repeats,
                                         config.loss.overlap_tolerance)
        pairs = [(c, int(s)) for c, row in zip(chunk, sources) for s in row]
        total += visibility_counts(masks_t, masks_s, pairs, scene)
    return total


def score(run_dir: Path, data: Path) -> dict[str, float]:
    """Depth, pose and mask figures of a trained run on the test scenes (one depth forward per frame)."""
    model, config, _ = load_model(run_dir, "cpu")
    device = torch.device("cpu")
    scenes = load_split(data, "test")
    disparities = [predict_disparity(model.depth_net, sequence_frames(scene, config.data.height, config.data.width),
                                     device) for scene in scenes]
    flat = [d[0].numpy() for scene_disp in disparities for d in scene_disp]  # scene_items' order
    depth = evaluate_depth_items(scene_items(scenes), lambda indices, batch: [flat[k] for k in indices])
    ates, mask_total = [], np.zeros(3, dtype=np.int64)
    for scene, disparity in zip(scenes, disparities):
        frames = sequence_frames(scene, config.data.height, config.data.width)
        rel = predict_relative_poses(model.pose_net, frames, config.data.snippet_length, device)
        ates.append(snippet_ates(rel, scene.poses))
        mask_total += mask_counts(model, config, scene, disparity)
    precision, recall = precision_recall(mask_total)
    return {"abs_rel": depth["abs_rel"], "a1": depth["a1"], "ate": float(np.concatenate(ates).mean()),
            "mask_precision": float(precision), "mask_recall": float(recall)}


def _plain(values: dict) -> dict:
    """`values` as JSON gives it back (tuples become lists), to compare with a stored result's."""
    return json.loads(json.dumps(values))


def same_config(stored: dict | None, config: Config) -> bool:
    """Whether a stored run's configuration is `config`. The stored one is read back through the
    configuration tree first, so that a key added since does not make old runs stale (a key whose
    default changed since is read at the value the run had: `masksfm.config.stored_config`)."""
    from masksfm.config import stored_config

    if stored is None:
        return False
    try:
        return _plain(stored_config(stored).to_dict()) == _plain(config.to_dict())
    except Exception:  # noqa: BLE001 - a key removed since: the run is stale
        return False


def run_one(variant: str, seed: int, args, data: Path, run_dir: Path) -> dict:
    """Train and score one run; writes `run_dir/result.json` last (its presence = done)."""
    from masksfm.training import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    config = run_config(variant, seed, args)
    # Wall and CPU seconds: on a shared machine the CPU time is what tells the cost of a budget.
    start, cpu_start = time.perf_counter(), time.process_time()
    terms = run_training(data, run_dir, config, resume=(run_dir / "checkpoints").is_dir(), device="cpu",
                         progress=False)
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    figures = score(run_dir, data)
    result = {"variant": variant, "seed": seed, **figures, "final_loss": terms.get("total", math.nan),
              "train_s": train_s, "train_cpu_s": train_cpu_s, "score_s": time.perf_counter() - start - train_s,
              "score_cpu_s": time.process_time() - cpu_start - train_cpu_s, "threads": torch.get_num_threads(),
              "load_average": os.getloadavg()[0], "config": _plain(config.to_dict())}
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _run_task(task, run=None):
    """Worker-process entry: one run; errors come back as text, so one bad run does not stop the rest."""
    variant, seed, args, data, run_dir = task
    try:
        import warnings

        warnings.simplefilter("ignore")  # resume's "no checkpoint yet" and the like, once per run
        return (run or run_one)(variant, seed, args, data, run_dir)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        return {"variant": variant, "seed": seed, "error": f"{type(error).__name__}: {error}"}


def run_tasks(tasks: list, jobs: int, run=None):
    """Results of the runs as they finish: in this process one after another (jobs = 1), else in
    `jobs` spawned processes, a fresh one per run (its own threads; memory returned after).
    `run(variant, seed, args, data, run_dir)` trains and scores one run (default: `run_one`)."""
    if jobs <= 1:
        for task in tasks:
            yield _run_task(task, run)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_run_task, task, run) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


# --- the table --------------------------------------------------------------------------------


def summarize(results: list[dict], variants: list[str]) -> dict[str, dict]:
    """Per variant: mean and sample std over seeds of each metric, and the seeds counted."""
    out = {}
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant and "error" not in r]
        row = {"seeds": [r["seed"] for r in runs]}
        for key in METRICS + ("train_s",):
            values = [r[key] for r in runs]
            row[key] = (statistics.fmean(values) if values else math.nan,
                        statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan)
        out[variant] = row
    return out


def _cell(mean: float, std: float, digits: int) -> str:
    return "—" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(summary: dict[str, dict], reference: dict, args, command: str, errors: list[dict],
             same_as: dict[str, str]) -> str:
    digits = {"abs_rel": 3, "a1": 3, "ate": 4, "mask_precision": 3, "mask_recall": 3}
    lines = [
        "# Ablation: the paper's masks against the alternatives, same budget",
        "",
        f"Date: {datetime.date.today().isoformat()}. Command:",
        "",
        f"    {command}",
        "",
        f"Budget per run: {args.steps} steps at batch 4, {args.height}x{args.width} (H x W), from scratch "
        f"(warm-up guard shortened to at most {args.steps // 2} steps), seeds {', '.join(map(str, args.seed_list))}. "
        f"Data: synthetic street, {args.scenes} scenes x {args.frames} frames, {args.moving_cars} moving cars per "
        f"scene, data seed {args.data_seed}; test split {reference['test_scenes']} scenes "
        f"({reference['test_images']} images). Mean ± sample std over seeds.",
        "",
        "| variant | what | " + " | ".join(HEADERS) + " | abs_rel / constant | seeds | train s/run |",
        "|---|---|" + "---|" * (len(HEADERS) + 3),
    ]
    for variant, row in summary.items():
        cells = [_cell(*row[key], digits[key]) for key in METRICS]
        cells.append(f"{row['abs_rel'][0] / reference['constant_abs_rel']:.2f}")
        what = VARIANTS[variant][2] + (f" (= {same_as[variant]}: the same configuration)"
                                       if same_as.get(variant, variant) != variant else "")
        lines.append(f"| {variant} | {what} | " + " | ".join(cells)
                     + f" | {len(row['seeds'])} | {row['train_s'][0]:.0f} |")
    lines += [
        "",
        f"References on the same test scenes: a constant depth (median-scaled) has abs_rel "
        f"{reference['constant_abs_rel']:.3f}, a1 {reference['constant_a1']:.3f}; the combined mask from the TRUE "
        f"depth and pose (repeats 0, τ 0) has precision {reference['true_geometry_precision']:.3f}, recall "
        f"{reference['true_geometry_recall']:.3f} (τ 0.1: {reference['true_geometry_precision_tau0.1']:.3f} / "
        f"{reference['true_geometry_recall_tau0.1']:.3f}).",
        "",
        "abs_rel and a1: median-scaled, no crop, every test frame. Snippet ATE: 5-frame snippets, one scale per "
        "snippet (docs/design.md §6). Mask precision / recall: the combined mask computed from the model's own depth and "
        "pose (as in training: its DN, repeats and τ) against ray-cast visibility, valid non-moving pixels, both "
        "frames of every (target, source) pair; for variants that do not train with the masks, a measure of their "
        "geometry only.",
    ]
    if errors:
        lines += ["", "Failed runs:", ""] + [f"- {e['variant']} seed {e['seed']}: {e['error']}" for e in errors]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def references(data: Path) -> dict:
    """What no training needs: a constant depth's metrics and the masks of the true geometry."""
    from masksfm.geometry import relative_pose

    scenes = load_split(data, "test")
    items = scene_items(scenes)
    constant = evaluate_depth_items(items, lambda indices, batch: [np.ones((8, 8), np.float32) for _ in batch])
    out = {"test_scenes": len(scenes), "test_images": len(items), "constant_abs_rel": constant["abs_rel"],
           "constant_a1": constant["a1"]}
    for tau, suffix in ((0.0, ""), (0.1, "_tau0.1")):
        total = np.zeros(3, dtype=np.int64)
        for scene in scenes:
            depth = torch.from_numpy(np.stack([scene.read_depth(i) for i in range(len(scene))]))[:, None]
            T = torch.tensor(np.stack([relative_pose(scene.poses[k], scene.poses[k + 1])
                                       for k in range(len(scene) - 1)]), dtype=torch.float32)
            K = torch.tensor(scene.K, dtype=torch.float32).expand(len(T), 3, 3)
            masks_t, masks_s = compute_masks(depth[:-1], depth[1:], T, K, overlap_tolerance=tau)
            total += visibility_counts(masks_t, masks_s, [(k, k + 1) for k in range(len(T))], scene)
        precision, recall = precision_recall(total)
        out[f"true_geometry_precision{suffix}"] = float(precision)
        out[f"true_geometry_recall{suffix}"] = float(recall)
    return out


# --- main -------------------------------------------------------------------------------------


def dataset(args) -> Path:
    """The rendered set, shared by every run of the same data parameters (rendered once)."""
    from masksfm.data.synthetic import render_dataset

    folder = Path(args.work) / (f"data-{args.height}x{args.width}-{args.scenes}x{args.frames}-"
                                f"cars{args.moving_cars}-seed{args.data_seed}")
    if not (folder / "dataset.json").is_file():
        start = time.perf_counter()
        render_dataset(folder, scenes=args.scenes, frames=args.frames, height=args.height, width=args.width,
                       seed=args.data_seed, moving_cars=args.moving_cars, progress=sys.stderr.isatty())
        print(f"rendered {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def parse_bench_args(parser: argparse.ArgumentParser, argv, quick: dict, variants: dict) -> argparse.Namespace:
    """Parse a bench's flags: with `--quick`, the `quick` values for every flag not given; `--variants
    all` as every variant; an unknown variant is a usage error."""
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for key, value in quick.items():
            if f"--{key}" not in given:
                setattr(args, key, value)
    if args.variants == "all":
        args.variants = ",".join(variants)
    unknown = [v for v in args.variants.split(",") if v not in variants]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose among {', '.join(variants)}")
    return args


def list_variants(variants: dict) -> dict:
    """`--list`: each variant, what it is, and its configuration."""
    width = max(map(len, variants)) + 2
    for name, (config, overrides, what) in variants.items():
        print(f"{name:<{width}} {what}  [{config}.yaml {' '.join(overrides)}]")
    return {}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps per run (batch 4)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=208)
    parser.add_argument("--scenes", type=int, default=10, help="rendered scenes (15%% val, 15%% test)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--moving-cars", type=int, default=2)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v not in EXTRA),
                        help=f"comma-separated subset (see --list), or all (default: all but {', '.join(EXTRA)})")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: cores // jobs; 1 on a shared machine)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where ablation.md / .json go")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"), help="data and run folders")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['steps']} steps, {QUICK['width']}x{QUICK['height']}, "
                             f"{QUICK['scenes']} scenes, 1 seed, variants {QUICK['variants']} unless given")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parse_bench_args(parser, argv, QUICK, VARIANTS)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    args.seed_list = list(range(args.seeds))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.list:
        return list_variants(VARIANTS)
    command = ".venv/bin/python bench/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    variants = args.variants.split(",")
    data = dataset(args)
    reference = references(data)
    root = Path(args.work) / f"{args.height}x{args.width}-{args.steps}steps"

    # A variant whose configuration equals an earlier one's (say `default` = `multimask-tau0.1`) is
    # not trained twice: its rows are the earlier variant's runs.
    same_as, first_of = {}, {}
    for variant in variants:
        key = json.dumps(run_config(variant, 0, args).to_dict(), sort_keys=True)
        same_as[variant] = first_of.setdefault(key, variant)
    results, tasks = [], []
    for variant in variants:
        if same_as[variant] != variant:
            continue
        for seed in args.seed_list:
            run_dir = root / variant / f"seed{seed}"
            done = run_dir / "result.json"
            stored = json.loads(done.read_text()) if done.is_file() else None
            if stored is not None and same_config(stored.get("config"), run_config(variant, seed, args)):
                results.append(stored)
            else:
                # Never run, or run with another configuration (the variant's meaning or a default
                # changed since): train it afresh.
                shutil.rmtree(run_dir, ignore_errors=True)
                tasks.append((variant, seed, args, data, run_dir))
    print(f"{len(results)} runs done before, {len(tasks)} to run ({args.jobs} at a time, {args.threads} threads "
          f"each; {args.steps} steps at {args.height}x{args.width})", flush=True)
    for variant, first in same_as.items():
        if first != variant:
            print(f"{variant}: the same configuration as {first}; its runs count for both", flush=True)

    def with_copies(runs: list[dict]) -> list[dict]:
        return runs + [{**r, "variant": v, "same_as": f} for v, f in same_as.items() if f != v
                       for r in runs if r["variant"] == f]

    def write():
        ok = [r for r in results if "error" not in r]
        errors = [r for r in results if "error" in r]
        summary = summarize(with_copies(ok), variants)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ablation.md").write_text(markdown(summary, reference, args, command, errors, same_as))
        raw = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "budget": {"steps": args.steps, "batch": 4, "height": args.height, "width": args.width,
                          "seeds": args.seed_list},
               "data": {"scenes": args.scenes, "frames": args.frames, "moving_cars": args.moving_cars,
                        "seed": args.data_seed, "folder": str(data)},
               "reference": reference, "summary": summary, "runs": results}
        (args.out / "ablation.json").write_text(json.dumps(raw, indent=1))
        return summary

    start = time.perf_counter()
    for k, result in enumerate(run_tasks(tasks, args.jobs)):
        results.append(result)
        elapsed = time.perf_counter() - start
        if "error" in result:
            print(f"[{k + 1}/{len(tasks)}] {result['variant']} seed {result['seed']}: FAILED {result['error']}",
                  flush=True)
        else:
            print(f"[{k + 1}/{len(tasks)}] {result['variant']} seed {result['seed']}: abs_rel "
                  f"{result['abs_rel']:.3f} a1 {result['a1']:.3f} ATE {result['ate']:.4f} masks P "
                  f"{result['mask_precision']:.3f} R {result['mask_recall']:.3f} (train {result['train_s']:.0f} s); "
                  f"{elapsed / 60:.1f} min so far", flush=True)
        write()
    summary = write()
    print((args.out / "ablation.md").read_text())
    failed = sum("error" in r for r in results)
    if failed:
        sys.exit(f"{failed} run(s) failed (see above); run the same command again to retry them")
    return summary


if __name__ == "__main__":
    main()
