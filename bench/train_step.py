"""Training-step cost per `loss.mask`, and the share of it spent in `compute_masks`.

    .venv/bin/python bench/train_step.py [--height 128] [--width 416] [--batch 4] [--repeat 5]
                                         [--threads N] [--device cpu|cuda] [--json FILE]

One full optimisation step (depth net on every frame, pose net, objective, backward, Adam) on a
fixed batch of rendered synthetic frames, for each configuration, all in one run. The
configurations take turns step by step (interleaved), so that a machine shared with other work
slows them alike and the ratios stay meaningful; each figure is the median of --repeat steps
after one warm-up step. Targets (issue 5): the multi-mask step with repeats 0 costs <= 1.3x the
no-mask step, and the masks take <= 10% of it.

On a machine shared with other work, pass --threads 1 (see bench/README.md: with more threads
than free cores, torch's OpenMP barriers wait for descheduled threads and the figures measure
the contention).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import masksfm.objective as objective_module
from masksfm.config import load_config
from masksfm.data.dataset import SnippetDataset
from masksfm.data.layout import load_split
from masksfm.data.synthetic import render_dataset
from masksfm.model import build_model

# (name, overrides); the first is the baseline of the ratios.
CASES = [
    ("none", ["loss.mask=none"]),
    ("multimask r0", ["loss.mask=multimask", "loss.repeats=0"]),
    ("multimask r3", ["loss.mask=multimask", "loss.repeats=3"]),
    ("none one-way", ["loss.mask=none", "loss.bidirectional=false"]),
    ("multimask r0 one-way", ["loss.mask=multimask", "loss.bidirectional=false"]),
    ("explainability", ["loss.mask=explainability"]),
    ("automask", ["loss.mask=automask"]),
    ("multimask+automask", ["loss.mask=multimask+automask"]),
]


class MaskTimer:
    """Wraps compute_masks to add up the time spent in it."""

    def __init__(self, sync):
        self.inner, self.sync, self.seconds = objective_module.compute_masks, sync, 0.0

    def __call__(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - start
        return out


def fixed_batch(batch: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """`batch` consecutive snippets of one rendered synthetic scene, without augmentation."""
    with tempfile.TemporaryDirectory() as tmp:
        root = render_dataset(Path(tmp) / "data", scenes=1, frames=batch + 2, height=height, width=width, seed=0,
                              moving_cars=1, progress=False)
        dataset = SnippetDataset(load_split(root, "train"), height, width, augment=False)
        items = [dataset[i] for i in range(batch)]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in ("images", "images_raw", "K")}


def measure(cases, batch, repeat: int, device: torch.device, sync) -> list[tuple[str, float, float]]:
    """(name, ms per step, ms in compute_masks per step) per case, medians over interleaved steps.

    Two models serve all cases (the explainability decoder changes the pose net); the step's
    speed does not depend on the weights, so sharing them across cases changes nothing timed.
    """
    timer = MaskTimer(sync)
    objective_module.compute_masks = timer
    models = {}
    steps = []
    for name, config in cases:
        key = config.loss.mask == "explainability"
        if key not in models:
            torch.manual_seed(0)
            model = build_model(config).to(device)
            models[key] = (model, torch.optim.Adam(model.parameters(), lr=1e-4, fused=True))
        steps.append((name, config, *models[key]))
    times = {name: [] for name, _ in cases}
    mask_times = {name: [] for name, _ in cases}
    for i in range(repeat + 1):
        for name, config, model, optimizer in steps:
            timer.seconds = 0.0
            sync()
            start = time.perf_counter()
            result = objective_module.compute_objective(model(batch["images"]), batch["images_raw"], batch["K"],
                                                        config.loss)
            optimizer.zero_grad()
            result.loss.backward()
            optimizer.step()
            sync()
            if i:  # the first round warms up allocators and kernels
                times[name].append(time.perf_counter() - start)
                mask_times[name].append(timer.seconds)
    objective_module.compute_masks = timer.inner
    return [(name, 1000 * statistics.median(times[name]), 1000 * statistics.median(mask_times[name]))
            for name, _ in cases]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    batch = fixed_batch(args.batch, args.height, args.width, device)
    # The guard is off: these are the steps after any warm-up, with the masks in use.
    cases = [(name, load_config(None, [f"data.height={args.height}", f"data.width={args.width}", "loss.guard=none",
                                       *overrides]))
             for name, overrides in CASES]
    rows = measure(cases, batch, args.repeat, device, sync)

    base = rows[0][1]
    print(f"training step, batch {args.batch} snippets of 3 frames at {args.height}x{args.width}, {device.type}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat} interleaved steps; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    print(f"{'loss.mask':<24} {'ms/step':>9} {'vs none':>8} {'masks ms':>9} {'masks %':>8}")
    for name, ms, mask_ms in rows:
        print(f"{name:<24} {ms:>9.0f} {ms / base:>7.2f}x {mask_ms:>9.1f} {100 * mask_ms / ms:>7.1f}%")
    by_name = {name: (ms, mask_ms) for name, ms, mask_ms in rows}
    ms, mask_ms = by_name["multimask r0"]
    print(f"targets: multimask r0 / none = {ms / base:.2f}x (target <= 1.3x), "
          f"masks share {100 * mask_ms / ms:.1f}% (target <= 10%)")
    print("command: .venv/bin/python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    figures = {"device": device.type, "threads": torch.get_num_threads(), "batch": args.batch,
               "size": [args.height, args.width],
               "ms_per_step": {name: ms for name, ms, _ in rows}, "masks_ms": {name: m for name, _, m in rows}}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
