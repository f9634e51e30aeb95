"""The pictures of README's "A real clip": what `prepare video` made of an edited clip, and what a
model trained on a real clip predicts. Real footage has no ground truth: these are pictures, not scores.

    .venv/bin/python bench/real_clip.py cuts CLIP DATA --out docs/images/bikes_cuts.png
    .venv/bin/python bench/real_clip.py depth SCENE PRED --out docs/images/cube_depth.png [--frames 4]

`cuts`: the difference between consecutive decoded frames of CLIP (the hard-cut measure of
`masksfm.data.video`), the cuts `prepare video` found (DATA/dataset.json) and the frames each written
scene of DATA holds. `depth`: frames of a prepared SCENE above the colourised depth `masksfm predict`
wrote for them in PRED (a scene's output folder, with `--trajectory`), and the predicted trajectory
seen from above.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from masksfm.data import layout, video


def cuts_figure(clip: Path, data: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    differences, previous = [], None
    for _, rgb in video.open_frames(clip).frames:
        small = video.thumbnail(rgb)
        differences.append(np.nan if previous is None else video.frame_difference(previous, small))
        previous = small
    info = layout.read_dataset_info(data)
    scenes = {name: [int(s) for s in layout.read_scene(data / name).stems] for name in layout.read_split(data, "train")}
    print(f"{clip.name}: {len(differences)} frames, hard cuts before frames {info['hard_cuts']}")
    for name, frames in scenes.items():
        print(f"  {name}: frames {frames[0]}-{frames[-1]}, {len(frames)} kept")

    figure, axis = plt.subplots(figsize=(9, 3.2), dpi=110)
    axis.plot(differences, color="0.25", lw=1, label="difference to the frame before")
    for k, cut in enumerate(info["hard_cuts"]):
        axis.axvline(cut - 0.5, color="tab:red", lw=1, ls="--", label="hard cut found" if k == 0 else None)
    top = np.nanmax(differences) * 1.15
    for k, (name, frames) in enumerate(scenes.items()):
        colour = plt.cm.tab10(k % 10)
        axis.plot(frames, np.full(len(frames), top * (0.93 if k % 2 else 0.97)), "|", color=colour, ms=7)
        axis.text(frames[0], top * (0.86 if k % 2 else 1.0), name.rsplit("_", 1)[-1], color=colour, fontsize=7)
    axis.set(xlabel="frame", ylabel="grey levels", ylim=(0, top * 1.05), xlim=(0, len(differences) - 1),
             title=f"{clip.name}: mean absolute difference of consecutive frames; ticks: frames kept per scene")
    axis.legend(loc="center left", fontsize=8)
    figure.tight_layout()
    figure.savefig(out)
    print(f"wrote {out}")


def depth_figure(scene: Path, pred: Path, out: Path, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stems = layout.read_scene(scene).stems
    chosen = [stems[k] for k in np.linspace(0, len(stems) - 1, count).round().astype(int)]
    poses = layout.read_poses(pred / "trajectory.kitti.txt")
    figure = plt.figure(figsize=(2.3 * count + 3.2, 4.2), dpi=110)
    grid = figure.add_gridspec(2, count + 1, width_ratios=[1] * count + [1.35])
    for k, stem in enumerate(chosen):
        for row, image in enumerate((layout.read_image(scene / f"{stem}.png"), layout.read_image(pred / "color" /
                                                                                                 f"{stem}.png"))):
            axis = figure.add_subplot(grid[row, k])
            axis.imshow(image)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frame {int(stem)}", fontsize=8)
        if k == 0:
            figure.axes[0].set_ylabel("input", fontsize=8)
            figure.axes[1].set_ylabel("predicted disparity", fontsize=8)
    axis = figure.add_subplot(grid[:, count])
    axis.plot(poses[:, 0, 3], poses[:, 2, 3], "-", color="tab:red", lw=1.5)
    axis.plot(poses[:1, 0, 3], poses[:1, 2, 3], "o", color="tab:red", ms=4)
    axis.set(xlabel="x (model units)", ylabel="z", title="predicted camera path, top view")
    axis.title.set_fontsize(8)
    axis.set_aspect("equal", adjustable="datalim")
    figure.tight_layout()
    figure.savefig(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="what", required=True)
    p = commands.add_parser("cuts")
    p.add_argument("clip", type=Path)
    p.add_argument("data", type=Path, help="what `masksfm prepare video CLIP DATA` wrote")
    p.add_argument("--out", type=Path, required=True)
    p = commands.add_parser("depth")
    p.add_argument("scene", type=Path, help="a prepared scene folder")
    p.add_argument("pred", type=Path, help="`masksfm predict RUN SCENE --out PRED --trajectory`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    if args.what == "cuts":
        cuts_figure(args.clip, args.data, args.out)
    else:
        depth_figure(args.scene, args.pred, args.out, args.frames)


if __name__ == "__main__":
    main()
