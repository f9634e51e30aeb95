"""How well does a recipe learn? Variants x seeds, each seed on its own synthetic street set.

    .venv/bin/python bench/learning.py [--steps 600] [--seeds 3] [--first-seed 100]
        [--variants default,snippet-pose] [--height 64] [--width 224] [--scenes 6] [--frames 40]
        [--jobs 1] [--threads 2] [--device cpu] [--work runs/learning] [--out results] [--peers H2H] [--flip]
        [--quick] [--list]

The question of the learning issue: does masksfm's default recipe learn depth and ego-motion better
than the trivial guesses and than the peers (SfmLearner-Pytorch, monodepth2) on the same data? A
recipe is only worth changing when it wins on sets it was not tuned on, so every seed renders its own
set (`masksfm synth --seed FIRST+k`, 6 scenes x 40 frames at 64x224 by default: the comparison set's
shape) and trains every variant from scratch on it with `train.seed = k`. Scored on each set's test
scenes:

- depth: abs_rel, rmse, a1 (median-scaled, no crop, every test frame);
- pose (the pose net's own output, chained pairwise as `masksfm eval pose`): snippet ATE over 5 and 3
  frames (one scale per snippet) and the full trajectory's Sim(3)-aligned ATE RMSE and RPE;
- where the pose error comes from, per pair of consecutive frames: the direction of travel's angular
  error, the spread of the speed (up to one scale per scene) and the rotation's angular error
  (`masksfm.evaluation.relative_pose_errors`), and the depth's scale per frame over a drive: its spread
  and its change from one frame to the next, which enters the speed of a pose net that reads the flow
  (`depth_scale_parts`); a run scored before these existed gets them from its kept checkpoints on the
  next call;
- beside them, the trivial baselines on the same scenes: a constant depth, and straight ahead at a
  constant speed (one scale per snippet / per trajectory, so it only has to guess the direction);
  every figure's ratio to its baseline is printed (< 1 = better than the guess).

With `--peers H2H` (the work folder of the peer drivers, one `H2H/s<seed>` per set, made with their
`setup.sh` with `SEED=<seed>`), the peers' runs found in `H2H/s<seed>/runs/{sfp_600,md2_600}` (600 steps) and
`{sfp_eqtime,md2_eqtime}` (`run_X.py --seconds T`, T = masksfm's 600-step training time on an idle machine)
are scored on the same sets (their disparities through the same evaluator, their pose.json) and put
in the table; nothing of the peers is imported.

Writes `OUT/learning.md` (mean ± sample std over seeds, the ratios, the command, the budget) and
`OUT/learning.json`. A run whose `result.json` exists with the same configuration is not run again,
so an interrupted bench continues when given the same command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import _plain, bench_config, list_variants, parse_bench_args, run_tasks, same_config  # noqa: E402

from masksfm.config import Config  # noqa: E402
from masksfm.data.layout import load_split  # noqa: E402
from masksfm.evaluation import (  # noqa: E402
    MAX_DEPTH,
    MIN_DEPTH,
    own_snippet_ates,
    prediction_to_depth_at,
    relative_pose_errors,
    snippet_ates,
    trajectory_metrics,
)
from masksfm.inference import (  # noqa: E402
    evaluate_depth_items,
    folder_predictor,
    predict_disparity,
    chain_snippet_poses,
    predict_snippet_poses,
    scene_items,
    sequence_frames,
)
from masksfm.model import load_model  # noqa: E402
from masksfm.trajectory import chain_relative_poses  # noqa: E402

# The default before 2026-12-04's tenth session: SfMLearner's pose convolutions at 4x the depth net's
# learning rate; the variants measured against it carry it, so that they stay the runs recorded in
# docs/results.md.
CONV_POSE = ["model.pose_encoder=conv", "optim.pose_lr_scale=4"]
# The default before 2026-12-03's sixth session: any rigid motion, the sources' depth with gradient.
FREE = [*CONV_POSE, "model.motion=free", "model.source_depth_grad=true"]
# The default before 2026-12-03: one learning rate for both nets, float32 throughout, eager.
PREVIOUS = [*FREE, "optim.pose_lr_scale=1", "train.precision=fp32", "train.compile=false"]
# name -> (shipped config, overrides, what it is).
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "default": ("default", [], "configs/default.yaml as shipped (a car's camera, the sources' depth without gradient, "
                               "monodepth2's ResNet-18 pose net at the depth net's lr, bf16 where native, compiled error, "
                               "the pose net's batch-norm statistics over the un-augmented training snippets)"),
    "conv-pose": ("default", CONV_POSE, "the default before 2026-12-04's tenth session: SfMLearner's pose "
                                        "convolutions at pose lr x4"),
    "source-yaw1": ("default", ["data.source_yaw=1"],
                    "the default with each source's camera turned by up to 1 degree about its vertical axis"),
    "virtual": ("default", ["loss.virtual_weight=0.1"],
                "the pose net also reads the target re-rendered with the depth net's depth from cameras moved u x its "
                "reading of each source (u in 0.5-1.5) and turned up to 0.5 deg, and must give those motions (from step 200)"),
    "snippet5-now": ("default", ["data.snippet_length=5"],
                     "the default on 5-frame snippets: the pose net reads a snippet's 4 poses in one call, in one "
                     "depth unit (SfMLearner's odometry setting; scored on its own 5-frame snippets too)"),
    "consistency-now": ("default", ["loss.consistency_weight=0.5"],
                        "the default with SC-SfMLearner's depth scale consistency (weight 0.5): each frame's depth "
                        "scale held to its neighbours' (the speed error's depth part; twenty-fifth session)"),
    "consistency-grad": ("default", ["loss.consistency_weight=0.5", "model.source_depth_grad=true"],
                         "consistency-now with the sources' depth trained too (SC-SfMLearner's setting: both depth "
                         "maps of a pair held to each other)"),
    "virtual-consistency-grad": ("default", ["loss.virtual_weight=0.1", "loss.consistency_weight=0.5",
                                             "model.source_depth_grad=true"],
                                 "virtual with consistency-grad's steady depth scale: a pose net made to measure, "
                                 "in units that hold from frame to frame"),
    "virtual-consistency": ("default", ["loss.virtual_weight=0.1", "loss.consistency_weight=0.5"],
                            "virtual with SC-SfMLearner's depth scale consistency across frames (weight 0.5): the "
                            "measuring pose net reads the motion in each frame's depth units"),
    "turns": ("default", ["loss.turn_weight=0.1"],
              "the default with the pose net's rotation to sources turned by up to 1 degree held to its "
              "rotation to them unturned, composed with the turn"),
    "turns-strides": ("default", ["loss.turn_weight=0.1", "loss.stride_weight=0.1", "loss.stride_from_step=200"],
                      "turns, and from step 200 the pose net's poses to sources two frames away held to its "
                      "poses one frame away applied twice"),
    "turns-strides-x3": ("default", ["loss.turn_weight=0.3", "loss.stride_weight=0.3", "loss.stride_from_step=200"],
                         "turns-strides with both relations at 3x the weight (0.3)"),
    "shifts": ("default", ["loss.shift_weight=0.3", "loss.shift_from_step=200", "loss.shift_rotation=true"],
               "the default with, from step 200, the pose net's readings of each pair of neighbouring frames "
               "from the snippets centred on either held to each other's inverse (weight 0.3)"),
    "shift-speed": ("default", ["loss.shift_weight=0.3", "loss.shift_from_step=200"],
                    "shifts on the two readings' distances only (their rotations left to the photometric loss)"),
    "depth-resnet18": ("default", ["model.depth=resnet18"],
                       "the default with monodepth2's depth net (ResNet-18 encoder from scratch, its decoder)"),
    "depth-resnet18-lr1e-4": ("default", ["model.depth=resnet18", "optim.lr=1e-4"],
                              "depth-resnet18 at monodepth2's learning rate (1e-4, both nets)"),
    "depth-resnet18-source-grad": ("default", ["model.depth=resnet18", "model.source_depth_grad=true"],
                                   "depth-resnet18 with every frame's depth in one batch of the depth net, with gradient"),
    "depth-resnet18-bound6": ("default", ["model.depth=resnet18", "loss.logit_bound=6"],
                              "depth-resnet18 with its disparity logits held within ±6 (loss.logit_bound: the "
                              "sigmoid keeps a gradient)"),
    "depth-resnet18-bound6-relations": ("default", ["model.depth=resnet18", "loss.logit_bound=6", "loss.shift_weight=0.3",
                                                    "loss.shift_from_step=200", "loss.turn_weight=0.1",
                                                    "model.joint_pose_batch=false"],
                                        "depth-resnet18-bound6 with shift-speed-turns-own-batch's relations (the cheaper "
                                        "depth net paying for the pose net's extra snippets)"),
    "vertical-travel": ("default", ["model.motion=vehicle_vertical"],
                        "the default with the car's camera free to travel up or down from the chord "
                        "(model.motion=vehicle_vertical: a pitched camera; never sideways)"),
    "vertical-travel-relations": ("default", ["model.motion=vehicle_vertical", "loss.shift_weight=0.3",
                                              "loss.shift_from_step=200", "loss.turn_weight=0.1",
                                              "model.joint_pose_batch=false"],
                                  "shift-speed-turns-own-batch with vertical-travel's motion"),
    "shift-speed-own-batch": ("default", ["loss.shift_weight=0.3", "loss.shift_from_step=200",
                                          "model.joint_pose_batch=false"],
                              "shift-speed with the shifted snippets in a pose-net call of their own (the training "
                              "snippets' batch statistics as the default's)"),
    "shift-speed-turns-own-batch": ("default", ["loss.shift_weight=0.3", "loss.shift_from_step=200", "loss.turn_weight=0.1",
                                                "model.joint_pose_batch=false"],
                                    "shift-speed-own-batch with the turns (weight 0.1): the turned sources' snippets in "
                                    "the relations' own call too"),
    "shifts-own-batch": ("default", ["loss.shift_weight=0.3", "loss.shift_from_step=200", "loss.shift_rotation=true",
                                     "model.joint_pose_batch=false"],
                         "shifts (distances and rotations) with the shifted snippets in a pose-net call of their own"),
    "pose-mirror-mean": ("default", ["model.pose_mirror_mean=true"],
                         "the pose net's poses the mean of its reading of the snippet and of its mirror image, "
                         "in training too (twenty-first session)"),
    "weight-average": ("default", ["optim.ema_decay=0.999"],
                       "the default used with an exponential moving average of its trained weights (decay 0.999, "
                       "warmed up: about the last hundred steps of 600; twenty-second session)"),
    "uneven-strides": ("default", ["data.strides=[1, 2]", "data.uneven_strides=true"],
                       "snippets of consecutive frames, of every other frame, and one frame apart on one side of "
                       "the target and two on the other (the speed changes within a snippet by 2x or 0.5x)"),
    "smooth-x3": ("default", ["loss.smoothness_weight=3e-3"],
                  "the default with 3x monodepth2's smoothness weight (3e-3 on the mean-normalised disparity)"),
    "smooth-x0.3": ("default", ["loss.smoothness_weight=3e-4"],
                    "the default with 0.3x monodepth2's smoothness weight (3e-4 on the mean-normalised disparity)"),
    "bn-as-trained": ("default", ["train.batch_norm_batches=0"],
                      "the default with its pose net's batch-norm statistics as training left them (the default "
                      "before the twenty-eighth session)"),
    "pose-half": ("default", ["model.pose_downsample=2"],
                  "the default with the pose net reading the frames at half their size (2x2 pixel blocks averaged)"),
    "pose-half-mirror": ("default", ["model.pose_downsample=2", "model.pose_mirror_mean=true"],
                         "pose-half, its poses the mean of its reading of the snippet and of its mirror image "
                         "(two pose-net calls at a quarter of the cost each)"),
    "pairs-lr1": ("default", ["model.pose=pairs"],
                  "the default on ordered frame pairs (monodepth2's pose input, at its one learning rate)"),
    "free-grad": ("default", FREE,
                  "the default before 2026-12-03's sixth session: any rigid motion, the sources' depth with gradient"),
    "pose-lr1": ("default", PREVIOUS, "the default before 2026-12-03: pose lr x1, float32, eager"),
    "pose-lr4": ("default", [*FREE, "train.precision=fp32", "train.compile=false"],
                 "free-grad in float32, eager (pose lr x4)"),
    "bf16": ("default", [*FREE, "optim.pose_lr_scale=1", "train.precision=bf16", "train.compile=true"],
             "pose-lr1 with the cheaper step: the depth net under bf16 autocast, the photometric error compiled"),
    "pose-lr8": ("default", [*FREE, "optim.pose_lr_scale=8"], "free-grad with the pose net's learning rate x8"),
    "pose-lr16": ("default", [*FREE, "optim.pose_lr_scale=16"], "free-grad with the pose net's learning rate x16"),
    "scales-down": ("default", [*FREE, "loss.scales=downsample"],
                    "free-grad with each scale's error at its own size (SfMLearner's, the authors'), not upsampled"),
    "snippet5": ("default", [*FREE, "data.snippet_length=5"],
                 "free-grad on 5-frame snippets: the pose net gives a snippet's 4 poses in one call (SfMLearner's odometry setting)"),
    "scales3": ("default", [*FREE, "loss.num_scales=3"],
                "free-grad with the 3 finest scales in the loss, not 4 (a quarter of the objective's cost)"),
    "source-depth-nograd": ("default", [*CONV_POSE, "model.motion=free", "model.source_depth_grad=false"],
                            "free-grad with the sources' depth computed without gradient (a third of the backward)"),
    "masks+automask": ("default", [*FREE, "loss.mask=multimask+automask"],
                       "free-grad's masks (τ 0.1) times monodepth2's auto-mask (the ablation's best row was at τ 0)"),
    "masks+automask-tau0": ("default", [*FREE, "loss.mask=multimask+automask", "loss.overlap_tolerance=0.0"],
                            "the ablation's best row: the masks at τ 0 times monodepth2's auto-mask"),
    "velocity": ("default", [*FREE, "loss.velocity_weight=1"],
                 "free-grad with the constant-velocity prior on the pose net's steps, weight 1 (for the speed spread)"),
    "vehicle": ("default", [*CONV_POSE, "model.motion=vehicle", "model.source_depth_grad=true"],
                "free-grad with a car's camera motion: the pose net's translation along the chord of a planar arc"),
    "vehicle-nograd": ("default", [*CONV_POSE, "model.motion=vehicle", "model.source_depth_grad=false"],
                       "vehicle with the sources' depth without gradient (the 1.4x cheaper step; the default since)"),
    "vehicle-nograd-dn": ("default", [*CONV_POSE, "model.motion=vehicle", "model.source_depth_grad=false",
                                      "loss.dn=snippet"],
                          "vehicle-nograd with depth normalisation per snippet (the pose net's translation in units of "
                          "the snippet's mean depth)"),
    "decay450": ("default", [*CONV_POSE, "optim.lr_decay_steps=[450]"],
                 "conv-pose with both learning rates x0.1 for the last quarter (steps 450-600; monodepth2 decays at 3/4)"),
    "lr2x-decay400": ("default", [*CONV_POSE, "optim.lr=4e-4", "optim.pose_lr_scale=2", "optim.lr_decay_steps=[400]"],
                      "conv-pose with the depth net's lr x2 (the pose net's unchanged) and both x0.1 from step 400"),
    "strides12": ("default", [*CONV_POSE, "data.strides=[1, 2]"],
                  "conv-pose trained on snippets of consecutive frames and of every other frame (speeds x1 and x2)"),
    "resnet18": ("default", [*CONV_POSE, "model.depth=resnet18"],
                 "conv-pose with monodepth2's depth net (ResNet-18 encoder from scratch, its decoder)"),
    "resnet18-pose": ("default", ["model.pose=pairs", "model.pose_encoder=resnet18", "optim.pose_lr_scale=4"],
                      "conv-pose with monodepth2's pose net (a ResNet-18 from scratch) on ordered frame pairs, pose lr x4"),
    "resnet18-pose-snippet": ("default", ["model.pose_encoder=resnet18", "optim.pose_lr_scale=4"],
                              "conv-pose with monodepth2's pose net (a ResNet-18 from scratch) on the whole snippet, pose lr x4"),
    "resnet18-pose-lr1": ("default", ["model.pose_encoder=resnet18", "optim.pose_lr_scale=1"],
                          "resnet18-pose-snippet at the depth net's learning rate (monodepth2's one lr; the default since the tenth session)"),
    "default-fp32": ("default", [*CONV_POSE, "train.precision=fp32"],
                     "conv-pose in float32 where the device has bf16 (the depth net without bf16 autocast)"),
    "default+consistency": ("default", [*FREE, "loss.consistency_weight=0.5"],
                            "free-grad with SC-SfMLearner's depth scale consistency, weight 0.5 (for the speed spread)"),
    "snippet-pose": ("default", [*PREVIOUS, "model.pose=snippet"], "pose-lr1, SfMLearner's pose net on the whole snippet"),
    "pairs-pose": ("default", [*PREVIOUS, "model.pose=pairs"], "pose-lr1, monodepth2's pose input: ordered frame pairs"),
    "consistency": ("default", [*PREVIOUS, "loss.consistency_weight=0.5"],
                    "pose-lr1, SC-SfMLearner's geometric (depth scale) consistency, weight 0.5"),
}
DEPTH = ("abs_rel", "rmse", "a1")
POSE = ("ate5", "ate3", "ate_own", "ate_rmse", "rpe_trans", "rpe_rot")
METRICS = DEPTH + POSE
# Where the pose error comes from, per consecutive pair (`masksfm.evaluation.relative_pose_errors`).
PARTS = ("direction_err", "speed_spread", "rotation_err")
# Where the depth's scale wanders over a drive (`depth_scale_parts`): a pose net that reads the flow gives its
# distances in its target's depth units, so the scale's change from frame to frame enters its speed.
DEPTH_PARTS = ("depth_scale_spread", "depth_scale_step")
LOWER_IS_BETTER = {"abs_rel", "rmse", "ate5", "ate3", "ate_own", "ate_rmse", "rpe_trans", "rpe_rot"}
PEERS = {"sfp_600": "SfmLearner-Pytorch, 600 steps (its code, its defaults)",
         "md2_600": "monodepth2, 600 steps (its code, ResNet-18 from scratch)",
         "sfp_eqtime": "SfmLearner-Pytorch for masksfm's 600-step wall time (its driver's --seconds; its steps in its train.json)",
         "md2_eqtime": "monodepth2 for masksfm's 600-step wall time (its driver's --seconds; its steps in its train.json)"}
QUICK = {"steps": 4, "seeds": 1, "height": 32, "width": 96, "scenes": 3, "frames": 8, "variants": "default"}


def run_config(variant: str, seed: int, args) -> Config:
    """The configuration of one run: the variant's, at the bench's size, budget and seed."""
    name, overrides, _ = VARIANTS[variant]
    return bench_config(name, overrides, seed, args)


def pose_figures(rel_by_scene: dict[str, np.ndarray], scenes,
                 snippets_by_scene: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Snippet ATE (5 and 3 frames, over every snippet), and the mean over scenes of the trajectory
    metrics and of the relative-pose error's parts, from relative poses `inv(P_i) @ P_{i+1}` per scene;
    with the pose net's snippets (`predict_snippet_poses`), the ATE of its own L-frame snippets
    (`ate_own`, one call each: SfMLearner's test_pose) and L (`own_length`)."""
    ate5, ate3, per_scene = [], [], []
    for scene in scenes:
        rel = rel_by_scene[scene.name]
        ate5.append(snippet_ates(rel, scene.poses, 5))
        ate3.append(snippet_ates(rel, scene.poses, 3))
        per_scene.append({**trajectory_metrics(scene.poses, scene.poses[0] @ chain_relative_poses(rel)),
                          **relative_pose_errors(rel, scene.poses)})
    out = {"ate5": float(np.concatenate(ate5).mean()), "ate3": float(np.concatenate(ate3).mean())}
    out.update({key: float(np.mean([t[key] for t in per_scene])) for key in ("ate_rmse", "rpe_trans", "rpe_rot") + PARTS})
    out["ate_own"], out["own_length"] = math.nan, math.nan
    if snippets_by_scene is not None:
        out["ate_own"] = float(np.concatenate([own_snippet_ates(snippets_by_scene[scene.name], scene.poses)
                                               for scene in scenes]).mean())
        out["own_length"] = int(next(iter(snippets_by_scene.values())).shape[1])
    return out


def constant_speed(scene) -> np.ndarray:
    """Straight ahead (camera z) at one speed: (N-1, 4, 4); the scale is aligned by every metric."""
    rel = np.tile(np.eye(4), (len(scene) - 1, 1, 1))
    rel[:, 2, 3] = 1.0
    return rel


@torch.no_grad()
def score(run_dir: Path, data: Path, flip: bool = False) -> dict[str, float]:
    """Depth and pose figures of a trained run on the test scenes (with `flip`, each frame and snippet
    read as it is and mirrored, the readings averaged: `masksfm eval depth/pose --flip`)."""
    model, config, _ = load_model(run_dir, "cpu")
    device = torch.device("cpu")
    scenes = load_split(data, "test")
    frames = [sequence_frames(scene, config.data.height, config.data.width) for scene in scenes]
    flat = [d[0].numpy() for f in frames for d in predict_disparity(model.depth_net, f, device, flip=flip)]

    def stored(indices, batch):
        return [flat[k] for k in indices]

    depth = evaluate_depth_items(scene_items(scenes), stored)
    return {**{key: depth[key] for key in DEPTH}, **depth_scale_parts(scenes, stored),
            **pose_net_figures(model.pose_net, scenes, frames, config.data.snippet_length, flip)}


def pose_net_figures(pose_net, scenes, frames: list[torch.Tensor], snippet_length: int,
                     flip: bool = False) -> dict[str, float]:
    """`pose_figures` of a pose net on scenes, given each scene's frames (`sequence_frames`): its
    snippets' consecutive pairs chained, and its own snippets (with `flip`, read both ways too)."""
    snippets = {scene.name: predict_snippet_poses(pose_net, f, snippet_length, torch.device("cpu"), flip=flip)
                for scene, f in zip(scenes, frames)}
    return pose_figures({name: chain_snippet_poses(poses) for name, poses in snippets.items()}, scenes, snippets)


def depth_scale_parts(scenes, predict) -> dict[str, float]:
    """The depth's scale per test frame, s = ln median(depth / true depth) over the pixels the depth
    metrics count (`predict(indices, items)` -> disparities, as `evaluate_depth_items`'s, indices over the
    scenes' frames in split order): `depth_scale_spread`, its std over a drive, and `depth_scale_step`, the
    root mean square of its change from one frame to the next; each the mean over the scenes."""
    spread, step, start = [], [], 0
    for scene in scenes:
        items = scene_items([scene])
        logs = []
        for item, pred in zip(items, predict(list(range(start, start + len(items))), items)):
            gt = item.read_gt()
            valid = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
            if valid.any():
                depth = prediction_to_depth_at(pred, *gt.shape, kind="disp")
                logs.append(math.log(float(np.median(depth[valid] / gt[valid]))))
        start += len(items)
        spread.append(np.std(logs))
        step.append(math.sqrt(np.mean(np.diff(logs) ** 2)) if len(logs) > 1 else math.nan)
    return {"depth_scale_spread": float(np.mean(spread)), "depth_scale_step": float(np.mean(step))}


def baselines(data: Path) -> dict[str, float]:
    """The trivial guesses on a set's test scenes: constant depth, straight ahead at constant speed."""
    scenes = load_split(data, "test")

    def constant(indices, batch):
        return [np.ones((8, 8), np.float32) for _ in batch]

    depth = evaluate_depth_items(scene_items(scenes), constant)
    return {**{key: depth[key] for key in DEPTH}, **depth_scale_parts(scenes, constant),
            **pose_figures({scene.name: constant_speed(scene) for scene in scenes}, scenes)}


def peer_figures(run: Path, data: Path) -> dict[str, float] | None:
    """A peer driver's run: its test disparities (`pred/`) through masksfm's evaluator and its
    pose.json (masksfm's pose metrics of its relative poses), or None when the run is missing."""
    pose_file = run / "pose.json"
    if not (run / "pred").is_dir() or not pose_file.is_file():
        return None
    scenes = load_split(data, "test")
    predictions = folder_predictor(run / "pred")
    depth = evaluate_depth_items(scene_items(scenes), predictions)
    pose = json.loads(pose_file.read_text())
    sequences = [pose["sequences"][scene.name] for scene in scenes]
    out = {**{key: depth[key] for key in DEPTH}, **depth_scale_parts(scenes, predictions)}
    out["ate5"] = pose["ate_mean"]
    # Every test scene has the same length, so the mean of the scenes' means is the mean over snippets.
    for key, source in (("ate3", "ate3_mean"), ("ate_rmse", "ate_rmse"), ("rpe_trans", "rpe_trans"),
                        ("rpe_rot", "rpe_rot")):
        out[key] = float(np.mean([s[source] for s in sequences])) if all(source in s for s in sequences) else math.nan
    train = run / "train.json"
    if train.is_file():
        out["s_per_step"] = json.loads(train.read_text()).get("s_per_step_mean", math.nan)
    return out


def run_one(variant: str, seed: int, args, data: Path, run_dir: Path) -> dict:
    """Train and score one run; writes `run_dir/result.json` last (its presence = done)."""
    from masksfm.training import run_training

    torch.set_num_threads(args.threads)
    config = run_config(variant, seed, args)
    start, cpu_start = time.perf_counter(), time.process_time()
    run_training(data, run_dir, config, resume=(run_dir / "checkpoints").is_dir(), device=args.device, progress=False)
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    result = {"variant": variant, "seed": seed, **score(run_dir, data), "train_s": train_s,
              "train_cpu_s": train_cpu_s, "config": _plain(config.to_dict())}
    if args.flip:
        result["flip"] = score(run_dir, data, flip=True)
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def dataset(args, seed: int) -> Path:
    """The set of one seed (rendered once, shared by every variant)."""
    from masksfm.data.synthetic import render_dataset

    folder = Path(args.work) / f"data-{args.height}x{args.width}-{args.scenes}x{args.frames}-seed{seed}"
    if not (folder / "dataset.json").is_file():
        render_dataset(folder, scenes=args.scenes, frames=args.frames, height=args.height, width=args.width,
                       seed=seed, progress=False)
    return folder


def summarize(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and sample std over seeds of every metric (and the seeds' ratio to their baseline)."""
    out = {}
    for key in METRICS + PARTS + DEPTH_PARTS + tuple(f"{m}/base" for m in METRICS):
        values = [r[key] for r in rows if not math.isnan(r.get(key, math.nan))]
        out[key] = (statistics.fmean(values) if values else math.nan,
                    statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan)
    out["n"] = len(rows)
    out["parts_n"] = sum(all(not math.isnan(r.get(key, math.nan)) for key in PARTS) for r in rows)
    return out


def _cell(mean: float, std: float, digits: int) -> str:
    return "—" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(table: dict[str, dict], what: dict[str, str], args, command: str) -> str:
    digits = {"abs_rel": 3, "rmse": 2, "a1": 3, "ate5": 4, "ate3": 4, "ate_own": 4, "ate_rmse": 3, "rpe_trans": 3,
              "rpe_rot": 3}
    heads = ("abs_rel ↓", "rmse ↓", "a1 ↑", "ATE 5-frame (m) ↓", "ATE 3-frame (m) ↓", "ATE own snippet (m) ↓",
             "traj. ATE (m) ↓", "RPE trans (m) ↓", "RPE rot (°) ↓")
    lines = [
        "# Learning: the recipe against the trivial guesses and the peers",
        "",
        f"Date: {datetime.date.today().isoformat()}. Command:",
        "",
        f"    {command}",
        "",
        f"Budget per run: {args.steps} steps at batch 4, {args.height}x{args.width}, from scratch, trained on "
        f"{args.device}. One synthetic "
        f"street set per seed ({args.scenes} scenes x {args.frames} frames, `masksfm synth --seed "
        f"{args.first_seed}+k`), training seed k; mean ± sample std over the seeds. Baselines: a constant depth "
        "(median-scaled) and straight ahead at a constant speed (scale aligned per snippet / trajectory). "
        "The 5- and 3-frame snippet ATEs chain consecutive pairs, each read from the pose net's snippet centred "
        "nearest to its later frame; 'ATE own snippet' scores each of the net's own L-frame snippets from the one "
        "call that predicts it (SfMLearner's test_pose; L = data.snippet_length), and its ratio is to the guess's "
        "ATE over snippets of the same length.",
        "",
        "| method | n | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | {row['n']} | " + " | ".join(_cell(*row[k], digits[k]) for k in METRICS) + " |")
    lines += ["", "The same, as ratios to the baselines on the same set (mean ± std over seeds; < 1 is better "
              "than the guess for every column but a1):", "",
              "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for name, row in table.items():
        if name == "baseline":
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(*row[f"{k}/base"], 2) for k in METRICS) + " |")
    lines += ["", "Where the pose error comes from, per pair of consecutive frames (the peers' pose.json has no "
              "relative poses): the angle between the predicted and the true direction of travel, the spread "
              "(std / mean) of the predicted speed over the true one (0 = the true speeds up to one scale per "
              "scene), the angle of the rotation error; and the depth's scale per frame (ln of the median of its "
              "depth over the true depth): its std over a drive and the rms of its change from one frame to the next, "
              "which enters the speed of a pose net that reads the flow:", "",
              "| method | n | direction err. (°) ↓ | speed spread ↓ | rotation err. (°) ↓ | depth scale spread ↓ "
              "| depth scale step ↓ |", "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        # n: the runs measured (a run scored before the parts existed, without its checkpoints, has none).
        lines.append(f"| {name} | {row['parts_n']} | "
                     + " | ".join(_cell(*row[k], d) for k, d in zip(PARTS + DEPTH_PARTS, (3, 3, 3, 3, 4))) + " |")
    lines += ["", *(f"- {name}: {text}" for name, text in what.items())]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per run (batch 4)")
    parser.add_argument("--seeds", type=int, default=3, help="sets / training seeds per variant")
    parser.add_argument("--first-seed", type=int, default=100, help="set k is rendered with seed FIRST+k")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--variants", default="default", help="comma-separated subset (see --list), or all")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--device", default="cpu", help="where the runs train: cpu (the recorded figures), cuda, cuda:N")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where learning.md / .json go")
    parser.add_argument("--work", type=Path, default=Path("runs/learning"), help="data and run folders")
    parser.add_argument("--peers", type=Path, default=None,
                        help="the peer drivers' work folder: H2H/s<seed>/runs/{sfp_600,md2_600,sfp_eqtime,md2_eqtime} "
                             "and H2H/s<seed>/data")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--flip", action="store_true",
                        help="also score each run read with --flip (a row of its own; needs its checkpoints)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a tiny set, 4 steps, 1 seed")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    return parse_bench_args(parser, argv, QUICK, VARIANTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.list:
        return list_variants(VARIANTS)
    command = ".venv/bin/python bench/learning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    variants = args.variants.split(",")
    seeds = [args.first_seed + k for k in range(args.seeds)]
    sets, base, results, tasks = {}, {}, [], []
    for k, seed in enumerate(seeds):
        peer_data = args.peers / f"s{seed}" / "data" if args.peers else None
        sets[seed] = peer_data if peer_data is not None and (peer_data / "dataset.json").is_file() else dataset(args, seed)
        base[seed] = baselines(sets[seed])
        for variant in variants:
            run_dir = Path(args.work) / f"{args.height}x{args.width}-{args.steps}steps" / variant / f"seed{seed}"
            done = run_dir / "result.json"
            stored = json.loads(done.read_text()) if done.is_file() else None
            if stored is not None and same_config(stored.get("config"), run_config(variant, k, args)):
                if any(key not in stored for key in (*PARTS, *DEPTH_PARTS, "ate_own")) and (run_dir / "checkpoints").is_dir():
                    stored.update(score(run_dir, sets[seed]))  # a run scored before these figures were measured
                    done.write_text(json.dumps(stored, indent=1))
                if args.flip and "flip" not in stored and (run_dir / "checkpoints").is_dir():
                    stored["flip"] = score(run_dir, sets[seed], flip=True)
                    done.write_text(json.dumps(stored, indent=1))
                results.append(stored)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
                tasks.append((variant, k, args, sets[seed], run_dir))
    print(f"{len(results)} runs done before, {len(tasks)} to run", flush=True)
    for result in run_tasks(tasks, args.jobs, run_one):
        results.append(result)
        if "error" in result:
            print(f"{result['variant']} seed {result['seed']}: FAILED {result['error']}", flush=True)
        else:
            print(f"{result['variant']} set {seeds[result['seed']]}: " + " ".join(
                f"{m} {result[m]:.4f}" for m in METRICS) + f" (train {result['train_s']:.0f} s)", flush=True)

    def with_ratios(row: dict, seed: int) -> dict:
        # The net's own snippets against the guess's snippets of the same length.
        guess = {**base[seed], "ate_own": base[seed].get({5: "ate5", 3: "ate3"}.get(row.get("own_length")), math.nan)}
        return {**row, **{f"{m}/base": row.get(m, math.nan) / guess[m] for m in METRICS}}

    table = {"baseline": summarize([with_ratios(base[s], s) for s in seeds])}
    what = {"baseline": "constant depth / straight ahead at constant speed"}
    for variant in variants:
        rows = [with_ratios(r, seeds[r["seed"]]) for r in results if r["variant"] == variant and "error" not in r]
        table[variant], what[variant] = summarize(rows), VARIANTS[variant][2]
        flipped = [with_ratios({**r["flip"], "seed": r["seed"]}, seeds[r["seed"]]) for r in rows if "flip" in r]
        if args.flip and flipped:
            name = f"{variant}, read with --flip"
            table[name], what[name] = summarize(flipped), ("the same nets, each frame and snippet read as it is and "
                                                           "mirrored, the readings averaged (eval depth/pose --flip)")
    if args.peers:
        for peer, text in PEERS.items():
            rows = [(s, peer_figures(args.peers / f"s{s}" / "runs" / peer, sets[s])) for s in seeds]
            rows = [with_ratios(r, s) for s, r in rows if r is not None]
            if rows:
                table[peer], what[peer] = summarize(rows), text
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, what, args, command)
    (args.out / "learning.md").write_text(text)
    (args.out / "learning.json").write_text(json.dumps(
        {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "seeds": seeds,
         "baselines": base, "runs": results, "table": table}, indent=1, default=str))
    print(text)
    return table


if __name__ == "__main__":
    main()
