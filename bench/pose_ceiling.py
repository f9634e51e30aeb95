"""What can the default's pose net learn from a set's training drives, given the exact answers?

    .venv/bin/python bench/pose_ceiling.py DATA [DATA ...] [--modes supervised,true-depth] [--steps 600]
        [--train-seeds 0,1,2] [--set model.pose_encoder=conv ...] [--threads 2] [--json FILE]

The default recipe's pose net (configs/default.yaml at the set's image size: its architecture, motion
model, snippets, augmentation, batch, learning rate and steps) trained on a rendered set's training
drives with more than the frames can tell it, then scored on the test drives as `bench/learning.py`
scores a run's pose:

- `supervised`: on the true relative poses T_t2s of each item (the mean L1 distance of its pose
  vectors from theirs, ÷ the nets' output scale), mirrored with the item;
- `true-depth`: by the default's own objective (photometric loss, masks, floor), with the renderer's
  depth of every frame in place of the depth net's (brought to the item's scale-and-crop and flip).

Both use `UNITS` model units per metre, about where the default's nets settle on these sets, so that
the net's outputs are of the size they are in a real run. The figures are what a pose net of this
kind reaches when its training signal is exact: if they are not below the constant-speed guess on
the test drive, the frames' photometric signal is not what keeps the default's pose net above it.
`--set KEY=VALUE` changes the recipe as `masksfm train --set` does (another pose net, say).
Each set's i-th training seed comes from --train-seeds (default: the i-th set gets seed i, as in
`bench/learning.py`). About 2 minutes per 600 steps supervised, 4 with the true depth, at 64x224
on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from learning import PARTS, baselines, pose_net_figures  # noqa: E402

from masksfm.config import Config, load_config  # noqa: E402
from masksfm.data.dataset import Augmentation, SnippetDataset, make_loader, resize_and_crop  # noqa: E402
from masksfm.data.layout import load_split, split_path  # noqa: E402
from masksfm.errors import MasksfmError  # noqa: E402
from masksfm.geometry import mat_to_pose_vec, mirror_pose_vec  # noqa: E402
from masksfm.inference import sequence_frames  # noqa: E402
from masksfm.model import build_model  # noqa: E402
from masksfm.networks.pose import POSE_SCALE  # noqa: E402
from masksfm.objective import ModelOutput, batch_objective, snippet_sources  # noqa: E402
from masksfm.training import training_snippets  # noqa: E402

MODES = ("supervised", "true-depth")
# Model units per metre: the default's 600-step nets put the median of their depth at 0.019 of the
# true depth on set 110's test drive; at this scale the true motions are what its pose net outputs.
UNITS = 0.02
# The renderer stores the sky as depth 0 (invalid); the warp needs a depth there: beyond its farthest
# surface (about 190 m on the bench's sets).
SKY_DEPTH = 200.0
# The pose net's relations (terms on more snippets than the item's): not part of these trainings.
RELATIONS = ("turn_weight", "stride_weight", "shift_weight", "virtual_weight")


def pose_config(data: Path, steps: int, seed: int, overrides: list[str] = ()) -> Config:
    """configs/default.yaml at the set's image size, `steps` steps, training seed `seed`, then `overrides`."""
    if not (data / "dataset.json").is_file():
        raise MasksfmError(f"{data}: no dataset.json: a set rendered by `masksfm synth` is needed")
    size = json.loads((data / "dataset.json").read_text())
    config = load_config("default", [f"data.height={size['height']}", f"data.width={size['width']}",
                                     "data.workers=0", f"optim.steps={steps}", f"train.seed={seed}", *overrides])
    relations = [key for key in RELATIONS if getattr(config.loss, key) > 0]
    if relations:
        raise MasksfmError(f"the pose net trains here without its relations; got loss.{', loss.'.join(relations)}")
    return config


def training_items(data: Path, config: Config) -> SnippetDataset:
    """The training split's snippets as the trainer draws them (`training.training_snippets`)."""
    if config.data.source_yaw:
        raise MasksfmError("the turned sources (data.source_yaw) have no true depth or pose here")
    return training_snippets(load_split(data, config.data.train_split), config,
                             str(split_path(data, config.data.train_split)))


def true_motion(items: SnippetDataset, epoch: int, index: int) -> torch.Tensor:
    """(S, 6) the true T_t2s of item (epoch, index)'s sources as pose vectors, translation in `UNITS`,
    mirrored when the item is flipped."""
    scene, frames = items.snippet(index)
    center = len(frames) // 2
    target = scene.poses[frames[center]]
    T = np.stack([np.linalg.inv(scene.poses[s]) @ target for k, s in enumerate(frames) if k != center])
    T[:, :3, 3] *= UNITS
    vec = mat_to_pose_vec(torch.from_numpy(T).float())
    augmentation = items.augmentation(epoch, index)
    return mirror_pose_vec(vec) if augmentation is not None and augmentation.flip else vec


def true_depth(items: SnippetDataset, epoch: int, index: int) -> torch.Tensor:
    """(L, 1, H, W) the renderer's depth of item (epoch, index)'s frames in `UNITS`, through the same
    scale-and-crop and flip as its images (bilinear, as the frames), the sky at `SKY_DEPTH`."""
    scene, frames = items.snippet(index)
    depth = []
    for i in frames:
        d = scene.read_depth(i)
        if d is None:
            raise MasksfmError(f"{scene.path}: frame {i} has no true depth (depth/*.npy); "
                               "--modes true-depth needs a rendered set")
        depth.append(np.where(d > 0, d, SKY_DEPTH).astype(np.float32))
    a = items.augmentation(epoch, index) or Augmentation()
    # resize_and_crop resamples each frame with PIL: a float32 (H, W) frame is PIL's 32-bit float mode.
    depth, _ = resize_and_crop(np.stack(depth), scene.K, items.height, items.width, a.scale, a.crop, a.scale_y)
    if a.flip:
        depth = depth[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(depth))[:, None] * UNITS


def disparity_scales(disparity: torch.Tensor, scales: int = 4) -> list[torch.Tensor]:
    """(N, 1, H, W) disparity at the depth net's scales, finest first: each 2^k coarser (sizes rounded up),
    the area mean of the finest."""
    h, w = disparity.shape[-2:]
    return [disparity] + [F.adaptive_avg_pool2d(disparity, (math.ceil(h / 2 ** k), math.ceil(w / 2 ** k)))
                          for k in range(1, scales)]


def train_pose_net(data: Path, config: Config, mode: str) -> torch.nn.Module:
    """The default's pose net trained `config.optim.steps` steps in `mode` (see the module's docstring),
    with Adam at the pose net's learning rate, on the trainer's batches, from the trainer's initial weights
    for `train.seed`; returned in eval mode."""
    torch.manual_seed(config.train.seed)  # as the trainer does before it builds the model
    pose_net = build_model(config).pose_net
    items = training_items(data, config)
    optimizer = torch.optim.Adam(pose_net.parameters(), lr=config.optim.lr * config.optim.pose_lr_scale,
                                 betas=(config.optim.beta1, config.optim.beta2))
    loader = make_loader(items, config.optim.batch_size, config.train.seed, workers=0, max_steps=config.optim.steps)
    pose_net.train()
    for batch in loader:
        images = batch["images"]
        keys = list(zip(batch["epoch"].tolist(), batch["index"].tolist()))
        target, sources = images[:, images.shape[1] // 2], snippet_sources(images)
        if mode == "supervised":
            truth = torch.stack([true_motion(items, e, i) for e, i in keys])
            loss = (pose_net(target, sources) - truth).abs().sum(-1).mean() / POSE_SCALE
        else:
            disparities = disparity_scales(1.0 / torch.cat([true_depth(items, e, i) for e, i in keys]))

            def net(snippets: torch.Tensor) -> ModelOutput:
                return ModelOutput(disparities, pose_net(target, sources), None, (), disparities)

            loss = batch_objective(net, images, batch["images_raw"], batch["K"], config.loss,
                                   config.data.snippet_length).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return pose_net.eval()


@torch.no_grad()
def pose_score(pose_net: torch.nn.Module, data: Path, config: Config) -> dict[str, float]:
    """`bench/learning.py`'s pose figures of `pose_net` on the set's test drives."""
    scenes = load_split(data, "test")
    frames = [sequence_frames(scene, config.data.height, config.data.width) for scene in scenes]
    return pose_net_figures(pose_net, scenes, frames, config.data.snippet_length)


def train_seeds(text: str) -> list[int]:
    """`--train-seeds`: comma-separated non-negative integers."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"training seeds must be integers >= 0, got {text!r}")
    return seeds


def modes(text: str) -> list[str]:
    """`--modes`: a comma-separated subset of `MODES`."""
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    if not chosen or any(m not in MODES for m in chosen):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+", help="rendered masksfm sets (`masksfm synth`)")
    parser.add_argument("--modes", type=modes, default=list(MODES), help="supervised, true-depth or both (default)")
    parser.add_argument("--steps", type=int, default=600,
                        help="training steps (default 600, the learning issue's budget)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the default recipe (as `masksfm train --set`), e.g. model.pose_encoder=conv")
    parser.add_argument("--train-seeds", type=train_seeds, default=None,
                        help="the training seed of each set in turn (default: the i-th set gets i)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    seeds = args.train_seeds or list(range(len(args.data)))
    if len(seeds) != len(args.data):
        parser.error(f"--train-seeds gives {len(seeds)} seeds for {len(args.data)} sets")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print("| set | trained on | training seed | ATE 5-frame ÷ guess | ATE 3-frame ÷ guess | traj. ATE ÷ guess "
          "| speed spread (the guess's) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for data, seed in zip(args.data, seeds):
            guess = baselines(data)
            for mode in args.modes:
                config = pose_config(data, args.steps, seed, args.overrides)
                start = time.perf_counter()
                pose_net = train_pose_net(data, config, mode)
                train_s = time.perf_counter() - start
                figures = pose_score(pose_net, data, config)
                rows.append({"set": str(data), "mode": mode, "seed": seed, "steps": args.steps,
                             "overrides": args.overrides, **figures,
                             "guess": {k: guess[k] for k in ("ate5", "ate3", "ate_rmse", *PARTS)}, "train_s": train_s})
                trained = f"{mode} ({', '.join(args.overrides)})" if args.overrides else mode
                print(f"| {data.name} | {trained} | {seed} | {figures['ate5'] / guess['ate5']:.2f} | "
                      f"{figures['ate3'] / guess['ate3']:.2f} | {figures['ate_rmse'] / guess['ate_rmse']:.2f} | "
                      f"{figures['speed_spread']:.3f} ({guess['speed_spread']:.3f}) | {train_s:.0f} |", flush=True)
    except MasksfmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
