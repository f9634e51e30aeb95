"""Photometric pose refinement (`masksfm.refine`) with TRUE depth: 5-frame snippet ATE before and after.

    .venv/bin/python bench/refine.py [--scenes 2] [--frames 20] [--height 128] [--width 416] [--seed 0]
        [--iterations 10] [--levels 4] [--robust cauchy] [--robust-scale 0.04] [--channels grey]
        [--threads N] [--json FILE]

Renders a synthetic street set (`masksfm synth`, no moving cars), then refines every consecutive
pair's relative pose against the ray-cast depth of its later frame (the pairs of
`masksfm eval pose --refine`: target i+1, source i) from three starts:

- `constant`: driving straight ahead at one unit per frame (the demo's constant-speed baseline);
- `perturbed`: the true relative poses, each moved by a random 2-5 cm translation and a random
  0.3-0.5 degree rotation (seeded);
- `true`: the true relative poses (what is left after refinement is the photometric cost's own bias).

Prints, per start: the mean 5-frame snippet ATE (`masksfm.evaluation.snippet_ates`, the scale
fitted per snippet) before and after, and the mean translation (cm) and rotation (degrees) error
of the relative poses before and after (metric: the depth is). No trained model is involved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from masksfm.data.layout import read_scene
from masksfm.data.synthetic import render_dataset
from masksfm.evaluation import rotation_angles, snippet_ates
from masksfm.geometry import pose_vec_to_mat
from masksfm.inference import sequence_frames
from masksfm.refine import ROBUST_SCALE, refine_sequence
from masksfm.trajectory import relative_poses


def pose_errors(rel: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean translation error (input units) and rotation error (degrees) of relative poses."""
    error = np.linalg.inv(truth) @ rel
    turn = np.degrees(rotation_angles(error[:, :3, :3]))
    return float(np.linalg.norm(error[:, :3, 3], axis=1).mean()), float(turn.mean())


def perturbed(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each pose moved by a random 2-5 cm translation and a random 0.3-0.5 degree rotation (left-multiplied)."""
    n = len(truth)
    direction = rng.normal(size=(n, 2, 3))
    direction /= np.linalg.norm(direction, axis=2, keepdims=True)
    vec = np.concatenate([direction[:, 0] * rng.uniform(0.02, 0.05, (n, 1)),
                          direction[:, 1] * np.radians(rng.uniform(0.3, 0.5, (n, 1)))], axis=1)
    return pose_vec_to_mat(torch.from_numpy(vec)).numpy() @ truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=10, help="LM iterations per pyramid level")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--robust", default="cauchy", choices=["huber", "cauchy"])
    parser.add_argument("--robust-scale", type=float, default=ROBUST_SCALE)
    parser.add_argument("--channels", default="grey", choices=["grey", "rgb"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print("command: .venv/bin/python bench/refine.py " + " ".join(sys.argv[1:] if argv is None else argv))
    options = dict(iterations=args.iterations, levels=args.levels, robust=args.robust,
                   robust_scale=args.robust_scale, channels=args.channels)
    rng = np.random.default_rng(args.seed)
    figures: dict[str, dict[str, list]] = {}
    seconds, pairs = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        data = render_dataset(Path(tmp) / "data", scenes=args.scenes, frames=args.frames, height=args.height,
                              width=args.width, seed=args.seed, progress=False)
        scenes = [read_scene(path) for path in sorted(data.glob("scene_*"))]
        for scene in scenes:
            frames = sequence_frames(scene, args.height, args.width)
            depths = torch.stack([torch.from_numpy(scene.read_depth(i)) for i in range(len(scene))])[:, None]
            truth = relative_poses(scene.poses)
            constant = np.tile(np.eye(4), (len(truth), 1, 1))
            constant[:, 2, 3] = 1.0  # one unit forward per frame, as the demo's baseline
            for name, start in (("constant", constant), ("perturbed", perturbed(truth, rng)), ("true", truth)):
                clock = time.perf_counter()
                refined = refine_sequence(frames, depths, start, scene.K, **options)
                seconds += time.perf_counter() - clock
                pairs += len(truth)
                row = figures.setdefault(name, {"ate_before": [], "ate_after": [], "err_before": [], "err_after": []})
                row["ate_before"].append(snippet_ates(start, scene.poses))
                row["ate_after"].append(snippet_ates(refined, scene.poses))
                row["err_before"].append(pose_errors(start, truth))
                row["err_after"].append(pose_errors(refined, truth))

    print(f"{len(scenes)} scenes x {args.frames} frames at {args.width}x{args.height}, true depth; "
          f"{', '.join(f'{k}={v}' for k, v in options.items())}; load average {os.getloadavg()[0]:.1f}")
    header = (f"{'start':<10} {'ATE before':>11} {'ATE after':>10} {'ratio':>6} {'t err before':>13} "
              f"{'after':>6} {'R err before':>13} {'after':>6}")
    print(header + "\n" + "-" * len(header))
    summary = {}
    for name, row in figures.items():
        before, after = np.concatenate(row["ate_before"]), np.concatenate(row["ate_after"])
        # Weighted by pairs: each scene's mean error counts for its pairs.
        t_before, r_before = np.mean(row["err_before"], axis=0)
        t_after, r_after = np.mean(row["err_after"], axis=0)
        summary[name] = {"ate_before": float(before.mean()), "ate_after": float(after.mean()),
                         "trans_err_before_m": float(t_before), "trans_err_after_m": float(t_after),
                         "rot_err_before_deg": float(r_before), "rot_err_after_deg": float(r_after)}
        ratio = f"{before.mean() / after.mean():5.1f}x" if before.mean() > 1e-9 and after.mean() > 1e-9 else "     -"
        print(f"{name:<10} {before.mean():>11.4f} {after.mean():>10.4f} {ratio} {100 * t_before:>10.2f} cm "
              f"{100 * t_after:>6.2f} {r_before:>11.3f} ° {r_after:>6.3f}")
    per_pair = 1000 * seconds / pairs
    print(f"snippet ATE in metres (5 frames, scale fitted per snippet); relative-pose errors per pair; "
          f"{per_pair:.0f} ms per pair refined")
    if args.json is not None:
        args.json.write_text(json.dumps({"starts": summary, "ms_per_pair": per_pair, "options": options}, indent=2)
                             + "\n")


if __name__ == "__main__":
    main()
