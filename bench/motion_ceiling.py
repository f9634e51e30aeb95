"""What can each motion model express at best? The truth's poses put through it, against the guess.

    .venv/bin/python bench/motion_ceiling.py DATA [DATA ...] [--split test]

A pose net's output goes through its motion model (`model.motion`): `free` keeps any rigid motion, a
car's camera (`vehicle`) keeps only the travel along the chord of a planar arc, `vehicle_vertical` the
travel in that chord's vertical plane. Whatever the net learns, the model's path is all the loss and
the metrics see. Here each consecutive pair's true pose T_t2s (from the set's `poses.txt`) goes
through each model, is scaled back to the true distance, and the 5- and 3-frame snippet ATEs of the
result are printed beside the constant-speed guess's (straight ahead, one scale per snippet): the
floor a perfectly learned rotation and speed would reach. On a set where the camera is pitched on
the car, `vehicle`'s floor is near the guess.
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


def ceilings(data: Path, split: str) -> dict[str, tuple[float, float]]:
    """{guess, <motion>...: (5-frame, 3-frame snippet ATE)} over the split's scenes, metres."""
    scenes = load_split(data, split)
    truths = [np.linalg.inv(scene.poses[:-1]) @ scene.poses[1:] for scene in scenes]
    rows = {}
    for name in ("guess", *MOTIONS):
        ates = {5: [], 3: []}
        for scene, truth in zip(scenes, truths):
            rel = constant_speed(scene) if name == "guess" else through_motion(truth, name)
            for length in ates:
                ates[length].append(snippet_ates(rel, scene.poses, length))
        rows[name] = tuple(float(np.concatenate(ates[k]).mean()) for k in (5, 3))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+", help="masksfm datasets with poses.txt per scene")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    print("| set | path | ATE 5-frame (m) | ÷ guess | ATE 3-frame (m) | ÷ guess |")
    print("|---|---|---|---|---|---|")
    for data in args.data:
        rows = ceilings(data, args.split)
        guess5, guess3 = rows["guess"]
        for name, (ate5, ate3) in rows.items():
            print(f"| {data.name} | {name} | {ate5:.4f} | {ate5 / guess5:.2f} | {ate3:.4f} | {ate3 / guess3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
