"""How right are the paper's geometric masks? `compute_masks` on TRUE depth and pose vs exact visibility.

    .venv/bin/python bench/mask_accuracy.py [--scenes 4] [--frames 20] [--height 128] [--width 416]
        [--moving-cars 2] [--seed 100] [--taus 0,0.005,0.01,0.02,0.05,0.1,0.2,0.3] [--out DIR]
        [--threads N] [--json FILE]

Renders a synthetic street test set (the same scene and drive generators as `masksfm synth`, kept
in memory so that each pixel's primitive is known), then for every neighbouring pair (t, t+1)
computes the masks of both frames from the ray-cast depth and the true relative pose, and
compares each mask with the ray-cast visibility of that frame's pixels in the other frame
(1 = visible, 0 = occluded or out of view). Pixels count where the frame's depth is valid and
not on a moving car. A mask value 1 claims "visible":

    precision = P(visible | mask = 1)        recall = P(mask = 1 | visible)

Directions: `next` = a frame's pixels against the following frame (camera moved forward: the scene
expands there); `prev` = against the preceding frame, which is *farther* from the scene, where
the target's pixels contract and several land in one source pixel (docs/design.md §4: τ = 0 drops the
visible ones that lose the tie). Edge and blank masks do not depend on τ; blank and combined
depend on repeats. Then, for τ = 0 and the recommended τ, where the combined mask's errors are
(moving cars' doing, thin poles and tree trunks, depth edges, elsewhere), how often it keeps
moving-car pixels (which the geometry cannot know about), and, with --out, a picture.
Masks are computed in float32, as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from masksfm.data.synthetic import Camera, Scene, kitti_intrinsics, make_scene, make_trajectory, render_view, visibility
from masksfm.data.synthetic.raycast import CYLINDER
from masksfm.data.synthetic.render import View
from masksfm.geometry import relative_pose
from masksfm.masks import compute_masks

MASKS = ("edge", "overlap", "blank", "combined")
DIRECTIONS = ("next", "prev")


def render_test_set(scenes: int, frames: int, height: int, width: int, moving_cars: int, seed: int) -> list[dict]:
    """Scenes as dicts of stacked arrays: depth, moving, thin (pixel on a cylinder), vis_next,
    vis_prev (visibility of frame k in k+1 / k−1, for the pair's two frames), poses, K, rgb."""
    K = kitti_intrinsics(height, width)
    out = []
    for stream in np.random.SeedSequence(seed).spawn(scenes):
        rng = np.random.default_rng(stream)
        poses = make_trajectory(rng, frames)
        travelled = np.linalg.norm(poses[-1, :3, 3] - poses[0, :3, 3])
        scene = make_scene(rng, travelled + 160.0, moving_cars, speed=max(travelled / max(frames - 1, 1), 0.5))
        cams = [Camera(p, K, height, width) for p in poses]
        views: list[View] = [render_view(scene.at(i), cams[i]) for i in range(frames)]
        valid = [(v.depth > 0) & ~v.moving for v in views]
        # The same street without its moving cars: where visibility differs, a car hid the point.
        static = Scene(tuple(p for p in scene.primitives if not p.moving))
        pairs = range(frames - 1)
        out.append({
            "depth": np.stack([v.depth for v in views]),
            "moving": np.stack([v.moving for v in views]),
            "thin": np.stack([(v.primitive >= 0) & (scene.kind[v.primitive] == CYLINDER) for v in views]),
            "rgb": np.stack([v.rgb for v in views]),
            # vis_next[k]: frame k's pixels in frame k+1; vis_prev[k]: frame k+1's pixels in frame k.
            "vis_next": np.stack([visibility(scene.at(k + 1), cams[k + 1], views[k].points, valid[k]) for k in pairs]),
            "vis_prev": np.stack([visibility(scene.at(k), cams[k], views[k + 1].points, valid[k + 1]) for k in pairs]),
            "static_next": np.stack([visibility(static, cams[k + 1], views[k].points, valid[k]) for k in pairs]),
            "static_prev": np.stack([visibility(static, cams[k], views[k + 1].points, valid[k + 1]) for k in pairs]),
            "poses": poses,
            "K": K,
        })
    return out


def scene_masks(scene: dict, repeats: int, tau: float) -> dict[str, dict[str, np.ndarray]]:
    """Masks of every pair of a scene, batched: {direction: {mask name: (B, H, W) bool}}."""
    depth = torch.from_numpy(scene["depth"])[:, None]
    poses = scene["poses"]
    T = torch.tensor(np.stack([relative_pose(poses[k], poses[k + 1]) for k in range(len(poses) - 1)]),
                     dtype=torch.float32)
    K = torch.tensor(scene["K"], dtype=torch.float32).expand(len(T), 3, 3)
    masks_t, masks_s = compute_masks(depth[:-1], depth[1:], T, K, repeats=repeats, overlap_tolerance=tau)
    as_np = lambda m: {name: getattr(m, name)[:, 0].numpy() > 0.5 for name in MASKS}  # noqa: E731
    return {"next": as_np(masks_t), "prev": as_np(masks_s)}


def frames_of(scene: dict, direction: str) -> dict[str, np.ndarray]:
    """The own-frame arrays matching a direction's masks: frames 0..F−2 for next, 1..F−1 for prev."""
    own = slice(0, -1) if direction == "next" else slice(1, None)
    return {"truth": scene[f"vis_{direction}"].astype(bool), "valid": scene["depth"][own] > 0,
            "hidden_by_car": scene[f"static_{direction}"].astype(bool) & ~scene[f"vis_{direction}"].astype(bool),
            "moving": scene["moving"][own], "thin": scene["thin"][own], "depth": scene["depth"][own]}


def counts(mask: np.ndarray, truth: np.ndarray, region: np.ndarray) -> np.ndarray:
    return np.array([(mask & truth & region).sum(), (mask & ~truth & region).sum(), (~mask & truth & region).sum()])


def precision_recall(c: np.ndarray) -> tuple[float, float]:
    tp, fp, fn = c
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def depth_edges(depth: np.ndarray) -> np.ndarray:
    """(B, H, W) pixels within one pixel of a depth discontinuity (> 5% between 4-neighbours, or sky)."""
    log = np.log(np.maximum(depth, 1e-3))
    jump = np.zeros(depth.shape, dtype=bool)
    dx = np.abs(np.diff(log, axis=2)) > 0.05
    dy = np.abs(np.diff(log, axis=1)) > 0.05
    jump[:, :, 1:] |= dx
    jump[:, :, :-1] |= dx
    jump[:, 1:] |= dy
    jump[:, :-1] |= dy
    return dilate(jump, 1)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def picture(scene: dict, k: int, combined: dict[str, np.ndarray], path: Path) -> None:
    """Pair k, both directions: frame, then per τ the combined mask against the truth."""
    from PIL import Image, ImageDraw

    rows = []
    for direction in DIRECTIONS:
        f = frames_of(scene, direction)
        own = k if direction == "next" else k + 1
        rows.append((f"frame {own} ({direction}: its pixels in frame {k + 1 if direction == 'next' else k})",
                     scene["rgb"][own]))
        for label, mask in combined[direction].items():
            m, t, region = mask[k], f["truth"][k], f["valid"][k] & ~f["moving"][k]
            img = np.full(m.shape + (3,), 90, dtype=np.uint8)  # excluded: grey
            img[region & m & t] = 255
            img[region & ~m & ~t] = 0
            img[region & m & ~t] = (255, 0, 0)  # claims visible, is not
            img[region & ~m & t] = (0, 90, 255)  # visible, masked out
            img[f["moving"][k] & m] = (255, 200, 0)  # moving car kept
            rows.append((f"{direction} combined, {label}: white/black right, red false visible, blue false occluded, "
                         "yellow moving car kept", img))
    h, w = rows[0][1].shape[:2]
    scale = max(1, 832 // w)
    canvas = Image.new("RGB", (w * scale, len(rows) * (h * scale + 14)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, img) in enumerate(rows):
        y = r * (h * scale + 14)
        draw.text((2, y), label, fill="black")
        canvas.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (0, y + 14))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--moving-cars", type=int, default=2)
    parser.add_argument("--seed", type=int, default=100, help="not the training data's default seed 0")
    parser.add_argument("--taus", default="0,0.005,0.01,0.02,0.05,0.1,0.2,0.3")
    parser.add_argument("--out", type=Path, default=None, help="folder for the picture")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    taus = [float(x) for x in args.taus.split(",")]
    torch.set_grad_enabled(False)

    print("command: .venv/bin/python bench/mask_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    scenes = render_test_set(args.scenes, args.frames, args.height, args.width, args.moving_cars, args.seed)
    pairs = args.scenes * (args.frames - 1)
    print(f"test set: {args.scenes} scenes x {args.frames} frames, {args.width}x{args.height}, "
          f"{args.moving_cars} moving cars, seed {args.seed}: {pairs} pairs, both directions "
          f"(rendered in {time.perf_counter() - start:.1f} s)")

    # results[(repeats, tau, direction, mask)] = (tp, fp, fn)
    results, combined_maps = {}, {}
    for repeats in (0, 3):
        for tau in taus:
            total = {(d, m): np.zeros(3, dtype=np.int64) for d in DIRECTIONS for m in MASKS}
            for s, scene in enumerate(scenes):
                masks = scene_masks(scene, repeats, tau)
                for d in DIRECTIONS:
                    f = frames_of(scene, d)
                    region = f["valid"] & ~f["moving"]
                    for m in MASKS:
                        total[d, m] += counts(masks[d][m], f["truth"], region)
                    combined_maps[repeats, tau, s, d] = masks[d]["combined"]
            for key, c in total.items():
                results[(repeats, tau) + key] = c

    print("\nprecision / recall over valid, non-moving pixels (mask = 1 claims visible)")
    header = f"{'rep':>3} {'tau':>6} {'dir':>4} | " + " | ".join(f"{m:^15}" for m in MASKS)
    print(header)
    print("-" * len(header))
    for repeats in (0, 3):
        for tau in taus:
            for d in DIRECTIONS:
                cells = [" ".join(f"{x:.4f}" for x in precision_recall(results[repeats, tau, d, m])) for m in MASKS]
                print(f"{repeats:>3} {tau:>6g} {d:>4} | " + " | ".join(cells))

    def score(repeats, tau):  # the worse direction's F1, then its precision and recall
        pr = [precision_recall(results[repeats, tau, d, "combined"]) for d in DIRECTIONS]
        f1 = min(2 * p * r / max(p + r, 1e-12) for p, r in pr)
        return f1, min(p for p, _ in pr), min(r for _, r in pr)

    # A larger τ also forgives real occluders that are less than τ (relative) nearer than what
    # they hide, so recommend the smallest τ whose F1 is within 0.001 of the best.
    print("\nrecommended τ: the smallest within 0.001 of the best F1 of the worse direction")
    print("(precision and recall below are each the worse direction's)")
    best = {}
    for repeats in (0, 3):
        top = max(score(repeats, t)[0] for t in taus)
        best[repeats] = min(t for t in taus if score(repeats, t)[0] >= top - 1e-3)
        f1, precision, recall = score(repeats, best[repeats])
        line = (f"  repeats {repeats}: τ = {best[repeats]:g}: precision {precision:.4f}, recall {recall:.4f}, "
                f"F1 {f1:.4f} (best F1 {top:.4f})")
        if 0.0 in taus:
            f1_0, p0, r0 = score(repeats, 0.0)
            line += f" | τ = 0: precision {p0:.4f}, recall {r0:.4f}, F1 {f1_0:.4f}; recall ratio {recall / r0:.3f}"
        print(line)

    print("\nwhere the combined mask errs (repeats 0): share of its false-visible and false-occluded pixels,")
    print("and error rate, per pixel class (first class that applies)")
    print(f"{'tau':>6} {'dir':>4} | {'class':<22} {'pixels':>8} {'false vis':>10} {'false occ':>10} {'rate':>7}")
    classes = ("moving cars' doing", "thin poles and trunks", "depth edges", "elsewhere")
    for tau in sorted({0.0, best[0]} & set(taus)):
        for d in DIRECTIONS:
            rows = []
            for s, scene in enumerate(scenes):
                f = frames_of(scene, d)
                m, t = combined_maps[0, tau, s, d], f["truth"]
                region = f["valid"] & ~f["moving"]
                # Hidden by a car at the other instant, or next to one in this frame.
                car = (f["hidden_by_car"] | dilate(f["moving"], 2)) & region
                thin = dilate(f["thin"], 1) & region & ~car
                edge = depth_edges(f["depth"]) & region & ~car & ~thin
                other = region & ~car & ~thin & ~edge
                rows.append([(c.sum(), (c & m & ~t).sum(), (c & ~m & t).sum()) for c in (car, thin, edge, other)])
            sums = np.array(rows).sum(axis=0)  # (classes, [pixels, false visible, false occluded])
            fv, fo = sums[:, 1].sum(), sums[:, 2].sum()
            for name, (n, a, b) in zip(classes, sums):
                print(f"{tau:>6g} {d:>4} | {name:<22} {n:>8} {a / max(fv, 1):>10.1%} {b / max(fo, 1):>10.1%} "
                      f"{(a + b) / max(n, 1):>7.2%}")
    kept = []
    for d in DIRECTIONS:
        moving = np.concatenate([frames_of(s, d)["moving"].ravel() for s in scenes])
        mask = np.concatenate([combined_maps[0, best[0], i, d].ravel() for i in range(len(scenes))])
        kept.append(f"{d} {mask[moving].mean():.1%} of {moving.sum()} px")
    print(f"\nmoving-car pixels the combined mask keeps (τ = {best[0]:g}; by the truth's convention none is visible): "
          + ", ".join(kept))

    if args.out is not None:
        k = (args.frames - 1) // 2
        shown = sorted({0.0, best[0]} & set(taus))
        maps = {d: {f"tau={t:g}": combined_maps[0, t, 0, d] for t in shown} for d in DIRECTIONS}
        picture(scenes[0], k, maps, args.out / "mask_accuracy.png")
        print(f"picture: {args.out / 'mask_accuracy.png'}")
    print(f"total {time.perf_counter() - start:.1f} s")
    figures = {"pairs": pairs, "size": [args.height, args.width],
               "recommended_tau": {str(r): t for r, t in best.items()},
               "combined": {f"repeats{r}_tau{t:g}": dict(zip(("f1", "precision", "recall"), score(r, t)))
                            for r in (0, 3) for t in sorted({0.0, best[r]} & set(taus))}}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
