"""Speed of `compute_masks`: ms per frame pair (both directions), vectorized vs a loop reference.

    .venv/bin/python bench/masks.py [--batch 4] [--height 128] [--width 416] [--device cpu|cuda]
                                    [--threads N] [--json FILE]

Prints, for B pairs at H×W: ms per pair for repeats 0 and 3 (the two take turns call by call, so
that a shared machine slows them alike), and the ratio to an obviously-correct per-pixel Python
loop (the one the tests compare against), measured in the same run on one pair.
Target (issue 3): <= 10 ms per pair with repeats=0 on 2 CPU cores (the authors' loop-and-scipy
code: about 44 ms per pair here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_masks import make_K, piecewise_planar_depth, reference_masks  # noqa: E402

from masksfm import geometry as G  # noqa: E402
from masksfm.masks import compute_masks  # noqa: E402


def street_pair(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    K = make_K(height, width, batch, torch.float32)
    depths = [torch.from_numpy(piecewise_planar_depth(rng, height, width, K[0].double().numpy())).float()[None] for _ in range(2 * batch)]
    vec = torch.tensor([[0.02, 0.0, -1.0, 0.0, 0.01, 0.0]] * batch)  # about 1 m forward, a little yaw
    return torch.stack(depths[:batch]), torch.stack(depths[batch:]), G.pose_vec_to_mat(vec), K


def time_interleaved(calls: dict, repeat: int, sync) -> dict[str, float]:
    """Median ms per call of each function after one warm-up call each; they take turns call by call."""
    for fn in calls.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-reference", action="store_true", help="do not time the slow loop reference")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    depth_t, depth_s, T, K = (x.to(device) for x in street_pair(args.batch, args.height, args.width))
    calls = {r: (lambda r=r: compute_masks(depth_t, depth_s, T, K, repeats=r)) for r in (0, 3)}
    rows = [(r, ms / args.batch) for r, ms in time_interleaved(calls, args.repeat, sync).items()]

    reference_ms = None
    if not args.skip_reference:
        one = [x[:1].cpu().double() for x in (depth_t, depth_s, T, K)]
        start = time.perf_counter()
        reference_masks(*one, repeats=0)
        reference_ms = 1000 * (time.perf_counter() - start)

    print(f"compute_masks, B={args.batch} pairs at {args.height}x{args.width}, {device.type}, "
          f"{torch.get_num_threads()} threads (median of {args.repeat}, interleaved)")
    print(f"{'repeats':>8} {'ms/pair':>10} {'vs loop':>10}")
    for repeats, ms in rows:
        ratio = f"{reference_ms / ms:9.0f}x" if reference_ms and repeats == 0 else f"{'':>10}"
        print(f"{repeats:>8} {ms:>10.2f} {ratio}")
    if reference_ms:
        print(f"{'loop ref':>8} {reference_ms:>10.0f}   (per-pixel Python loop, repeats 0, 1 pair, float64)")
    print(f"target: repeats 0 at {rows[0][1]:.2f} ms/pair = {rows[0][1] / 10:.2f}x the 10 ms target; "
          f"the authors' ~44 ms / this = {44 / rows[0][1]:.2f}x")
    print("command: .venv/bin/python bench/masks.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    figures = {"device": device.type, "threads": torch.get_num_threads(), "batch": args.batch,
               "size": [args.height, args.width], "ms_per_pair": {str(r): ms for r, ms in rows},
               "loop_reference_ms": reference_ms}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
