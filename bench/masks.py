"""Speed of `compute_masks`: ms per frame pair (both directions), vectorized vs a loop reference.

    .venv/bin/python bench/masks.py [--batch 4] [--height 128] [--width 416] [--device cpu|cuda]

Prints, for B pairs at H×W: ms per pair for repeats 0 and 3, and the ratio to an obviously-correct
per-pixel Python loop (the one the tests compare against), measured in the same run on one pair.
Target (issue 3): <= 10 ms per pair with repeats=0 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
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


def time_ms(fn, repeat, sync):
    fn()
    sync()
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best.append(time.perf_counter() - start)
    return 1000 * float(np.median(best))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-reference", action="store_true", help="do not time the slow loop reference")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    depth_t, depth_s, T, K = (x.to(device) for x in street_pair(args.batch, args.height, args.width))
    rows = []
    for repeats in (0, 3):
        ms = time_ms(lambda: compute_masks(depth_t, depth_s, T, K, repeats=repeats), args.repeat, sync) / args.batch
        rows.append((repeats, ms))

    reference_ms = None
    if not args.skip_reference:
        one = [x[:1].cpu().double() for x in (depth_t, depth_s, T, K)]
        start = time.perf_counter()
        reference_masks(*one, repeats=0)
        reference_ms = 1000 * (time.perf_counter() - start)

    print(f"compute_masks, B={args.batch} pairs at {args.height}x{args.width}, {device.type}, "
          f"{torch.get_num_threads()} threads (median of {args.repeat})")
    print(f"{'repeats':>8} {'ms/pair':>10} {'vs loop':>10}")
    for repeats, ms in rows:
        ratio = f"{reference_ms / ms:9.0f}x" if reference_ms and repeats == 0 else f"{'':>10}"
        print(f"{repeats:>8} {ms:>10.2f} {ratio}")
    if reference_ms:
        print(f"{'loop ref':>8} {reference_ms:>10.0f}   (per-pixel Python loop, repeats 0, 1 pair, float64)")
    print("command: .venv/bin/python bench/masks.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
