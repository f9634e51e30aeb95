"""Render speed of the synthetic street (`masksfm synth`), ground truth included.

    .venv/bin/python bench/render.py [--height 128] [--width 416] [--scenes 2] [--frames 30] [--workers 1,2]
                                     [--threads N] [--json FILE]

Prints, measured in one run: ms per frame of each stage in this process (ray-cast render with
silhouette supersampling, the two visibility casts, writing the frame's files), then end-to-end
frames/s of `render_dataset` (same files as `masksfm synth`, process start-up included) for each
worker count, and the ratio to one worker. Target (issue): >= 10 frames/s at 128x416 on 2 cores.
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

from masksfm.data import layout
from masksfm.data.synthetic import (Camera, kitti_intrinsics, make_scene, make_trajectory, render_dataset, render_view,
                                    visibility)
from masksfm.data.synthetic.textures import texture_atlas


def stages(height: int, width: int, frames: int, seed: int, folder: Path) -> dict[str, float]:
    """Seconds per frame of each stage of one scene with two moving cars."""
    rng = np.random.default_rng(seed)
    poses = make_trajectory(rng, frames)
    scene = make_scene(rng, float(np.linalg.norm(poses[-1, :3, 3] - poses[0, :3, 3])) + 160.0, 2)
    K = kitti_intrinsics(height, width)
    cams = [Camera(p, K, height, width) for p in poses]
    spent = {"render": 0.0, "visibility (2 casts)": 0.0, "write files": 0.0}
    for i in range(frames):
        start = time.perf_counter()
        view = render_view(scene.at(i), cams[i])
        spent["render"] += time.perf_counter() - start
        start = time.perf_counter()
        valid = (view.depth > 0) & ~view.moving
        vis = [visibility(scene.at(j), cams[j], view.points, valid) for j in (i - 1, i + 1) if 0 <= j < frames]
        spent["visibility (2 casts)"] += (time.perf_counter() - start) * 2 / len(vis)
        start = time.perf_counter()
        layout.write_image(layout.frame_path(folder, i), view.rgb)
        layout.write_depth(folder, i, view.depth)
        layout.write_moving(folder, i, view.moving)
        for j, v in zip((i - 1, i + 1) if i > 0 else (i + 1,), vis):
            layout.write_visibility(folder, i, j, v)
        spent["write files"] += time.perf_counter() - start
    return {k: v / frames for k, v in spent.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    print("command: .venv/bin/python bench/render.py " + " ".join(sys.argv[1:] if argv is None else argv))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    print(f"{args.width}x{args.height}, {cpus} CPUs available, load average {os.getloadavg()[0]:.1f}")
    texture_atlas()  # built once per process; not a per-frame cost

    with tempfile.TemporaryDirectory() as tmp:
        per_frame = stages(args.height, args.width, args.frames, 1, Path(tmp) / "stages")
        total = sum(per_frame.values())
        print(f"\none process, {args.frames} frames, 2 moving cars")
        print(f"{'stage':<22} {'ms/frame':>9} {'share':>7}")
        for name, seconds in per_frame.items():
            print(f"{name:<22} {1e3 * seconds:>9.1f} {seconds / total:>7.1%}")
        print(f"{'total':<22} {1e3 * total:>9.1f}   -> {1 / total:.1f} frames/s")

        print(f"\nrender_dataset, {args.scenes} scenes x {args.frames} frames, 2 moving cars (end to end)")
        print(f"{'workers':>7} {'seconds':>8} {'frames/s':>9} {'vs 1':>6}")
        base = None
        rates = {}
        for workers in (int(w) for w in args.workers.split(",")):
            start = time.perf_counter()
            render_dataset(Path(tmp) / f"w{workers}", scenes=args.scenes, frames=args.frames, height=args.height,
                           width=args.width, moving_cars=2, progress=False, workers=workers)
            seconds = time.perf_counter() - start
            rate = args.scenes * args.frames / seconds
            base = base or rate
            print(f"{workers:>7} {seconds:>8.1f} {rate:>9.1f} {rate / base:>6.2f}")
            rates[workers] = rate
    best = max(rates.values())
    print(f"target: {best:.1f} frames/s end to end = {best / 10:.2f}x the 10 frames/s target")
    figures = {"size": [args.height, args.width], "stage_ms_per_frame": {k: 1e3 * v for k, v in per_frame.items()},
               "one_process_fps": 1 / total, "end_to_end_fps": {str(w): r for w, r in rates.items()}}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
