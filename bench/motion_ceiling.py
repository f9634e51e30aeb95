"""What can each motion model express at best? The truth's poses put through it, against the guess.

    .venv/bin/python bench/motion_ceiling.py DATA [DATA ...] [--split test] [--speed-noise 0.01,0.02,0.03]

A pose net's output goes through its motion model (`model.motion`): `free` keeps any rigid motion, a
car's camera (`vehicle`) keeps only the travel along the chord of a planar arc, `vehicle_vertical` the
travel in that chord's vertical plane. Whatever the net learns, the model's path is all the loss and
the metrics see. Here each consecutive pair's true pose T_t2s (from the set's `poses.txt`) goes
through each model, is scaled back to the true distance, and the 5- and 3-frame snippet ATEs of the
result are printed beside the constant-speed guess's (straight ahead, one scale per snippet): the
floor a perfectly learned rotation and speed would reach. On a set where the camera is pitched on
the car, `vehicle`'s floor is near the guess.

What a pose net's speed must get right: rows `vehicle, speed ±σ` keep the chord's truth but read each
pair's distance with an independent error, × exp(σ·n), n standard normal (the mean over `DRAWS`
draws of a fixed seed), and `vehicle, constant speed` keeps the true rotations with one speed per
drive. The speed changes the snippet ATE sees are the truth's from pair to pair (the renderer's
smooth noise: 1-2.5 % on the test drives); a net's speed noise adds to them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from learning import constant_speed  # noqa: E402

from masksfm.config import MOTIONS  # noqa: E402
from masksfm.data.layout import load_split  # noqa: E402
from masksfm.evaluation import snippet_ates  # noqa: E402
from masksfm.geometry import onto_vehicle_chord  # noqa: E402


def through_motion(rel: np.ndarray, motion: str) -> np.ndarray:
    """Relative poses `inv(P_i) @ P_{i+1}` (N-1, 4, 4) through `motion`'s path, at their true distance."""
    if motion == "free":
        return rel
    T_t2s = torch.from_numpy(np.linalg.inv(rel))  # the later frame's pose seen as a source of the earlier
    on_path = np.linalg.inv(onto_vehicle_chord(T_t2s, vertical=motion == "vehicle_vertical").numpy())
    scale = np.linalg.norm(rel[:, :3, 3], axis=1) / np.maximum(np.linalg.norm(on_path[:, :3, 3], axis=1), 1e-12)
    on_path[:, :3, 3] *= scale[:, None]
    return on_path


DRAWS = 50  # speed-noise draws per drive and σ


def speed_variants(chord: np.ndarray, sigma: float | None, rng: np.random.Generator) -> list[np.ndarray]:
    """The chord's truth (N-1, 4, 4) with its distances read at one speed (`sigma` None) or with an
    independent error × exp(σ·n) per pair, `DRAWS` draws."""
    if sigma is None:
        rel = chord.copy()
        length = np.linalg.norm(rel[:, :3, 3], axis=1)
        rel[:, :3, 3] *= (length.mean() / np.maximum(length, 1e-12))[:, None]
        return [rel]
    noisy = np.repeat(chord[None], DRAWS, axis=0)
    noisy[:, :, :3, 3] *= np.exp(sigma * rng.standard_normal((DRAWS, len(chord))))[..., None]
    return list(noisy)


def ceilings(data: Path, split: str, speed_noise: tuple[float, ...] = ()) -> dict[str, tuple[float, float]]:
    """{guess, <motion>..., vehicle at constant speed, vehicle at each speed noise: (5-frame, 3-frame
    snippet ATE)} over the split's scenes, metres."""
    scenes = load_split(data, split)
    truths = [np.linalg.inv(scene.poses[:-1]) @ scene.poses[1:] for scene in scenes]
    chords = [through_motion(truth, "vehicle") for truth in truths]  # the speed rows' truth, once per scene
    rng = np.random.default_rng(0)
    rows = {}
    cases = [(name, None) for name in ("guess", *MOTIONS)]
    cases += [("vehicle, constant speed", None)] + [(f"vehicle, speed ±{sigma:g}", sigma) for sigma in speed_noise]
    for name, sigma in cases:
        ates = {5: [], 3: []}
        for scene, truth, chord in zip(scenes, truths, chords):
            if name == "guess":
                rels = [constant_speed(scene)]
            elif name in MOTIONS:
                rels = [through_motion(truth, name)]
            else:
                rels = speed_variants(chord, sigma, rng)
            for rel in rels:
                for length in ates:
                    ates[length].append(snippet_ates(rel, scene.poses, length))
        rows[name] = tuple(float(np.concatenate(ates[k]).mean()) for k in (5, 3))
    return rows


def noise_levels(text: str) -> tuple[float, ...]:
    """`--speed-noise`'s comma-separated σ's (relative, ≥ 0)."""
    try:
        levels = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not np.isfinite(x) or x < 0 for x in levels):
        raise argparse.ArgumentTypeError(f"speed noise must be finite and >= 0, got {text!r}")
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+", help="masksfm datasets with poses.txt per scene")
    parser.add_argument("--split", default="test")
    parser.add_argument("--speed-noise", type=noise_levels, default=(0.01, 0.02, 0.03),
                        help="relative speed errors σ per pair for the `vehicle, speed ±σ` rows (default 0.01,0.02,0.03)")
    args = parser.parse_args(argv)
    print("| set | path | ATE 5-frame (m) | ÷ guess | ATE 3-frame (m) | ÷ guess |")
    print("|---|---|---|---|---|---|")
    for data in args.data:
        rows = ceilings(data, args.split, args.speed_noise)
        guess5, guess3 = rows["guess"]
        for name, (ate5, ate3) in rows.items():
            print(f"| {data.name} | {name} | {ate5:.4f} | {ate5 / guess5:.2f} | {ate3:.4f} | {ate3 / guess3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
