"""The demo's report: one self-contained HTML page (pictures embedded as `data:image/png;base64`
URIs, no scripts, no external assets), so it can be mailed, archived or opened offline.

This module only draws and writes: it receives numbers and arrays (:class:`ReportData`) and knows
nothing of models or files beyond the page it writes. Figures use matplotlib's object API
(`Figure`, Agg canvas): no pyplot state, no GUI backend.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from masksfm.evaluation import MAX_DEPTH, MIN_DEPTH

CLEARLY_BETTER = 10.0  # % lower abs_rel than the constant depth that the headline calls a clear win
DROPPED = (230, 30, 30)  # the tint of pixels a mask drops (overlay_mask's default family)
MOVING = (30, 120, 255)


@dataclass
class DepthExample:
    """One test frame of the depth strip.

    Attributes:
        label: scene/frame, for the caption.
        image: (H, W, 3) uint8 RGB input.
        pred: (H, W) predicted depth, median-scaled to the truth, metres.
        gt: (H, W) true depth, metres, 0 = none (sky).
    """

    label: str
    image: np.ndarray
    pred: np.ndarray
    gt: np.ndarray


@dataclass
class MaskExample:
    """The paper's masks of one target frame against one source frame.

    Attributes:
        target, source: (H, W, 3) uint8 frames t and s.
        masks: name -> (H, W) 0/1 for edge, overlap, blank and combined (1 = kept in the loss).
        visibility: (H, W) 0/1, 1 where the target's point is visible in the source (ray-cast), or None.
        moving: (H, W) bool, independently moving objects in the target, or None.
        agreement: how the combined mask agrees with the true visibility on pixels with a true
            surface (not the sky): the share of visible pixels it keeps, of hidden ones it drops.
    """

    target_label: str
    source_label: str
    target: np.ndarray
    source: np.ndarray
    masks: dict[str, np.ndarray]
    visibility: np.ndarray | None = None
    moving: np.ndarray | None = None
    agreement: dict | None = None  # visible_kept, hidden_dropped, hidden_share (fractions, surface pixels)
    repeats: int = 0
    overlap_tolerance: float = 0.0


@dataclass
class ReportData:
    """Everything the page shows; `files` are (path relative to the page, description)."""

    settings: dict
    config: dict
    steps: int
    checkpoint: str
    timings: dict[str, float]
    data_note: str
    depth: dict[str, float]
    depth_constant: dict[str, float]
    val_abs_rel_constant: float | None
    pose: dict
    pose_constant: dict
    depth_examples: list[DepthExample]
    masks: MaskExample | None
    trajectories: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # scene -> (true, predicted, constant)
    scalars: dict[str, tuple[list[int], list[float]]]
    files: list[tuple[str, str]] = field(default_factory=list)
    out: str = "demo-output"
    machine: str = ""


# --- pictures ------------------------------------------------------------------------------------


def png_data_uri(figure_or_array) -> str:
    """A matplotlib Figure or an (H, W, 3) uint8 array as a `data:image/png;base64,...` URI."""
    buffer = io.BytesIO()
    if isinstance(figure_or_array, np.ndarray):
        from PIL import Image

        Image.fromarray(figure_or_array).save(buffer, format="PNG")
    else:
        figure_or_array.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _no_ticks(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


def _depth_norm(examples: list[DepthExample]):
    from matplotlib.colors import LogNorm

    valid = np.concatenate([e.gt[(e.gt > MIN_DEPTH) & (e.gt < MAX_DEPTH)] for e in examples])
    lo, hi = (np.percentile(valid, [1, 99]) if valid.size else (1.0, MAX_DEPTH))
    return LogNorm(vmin=max(lo, 0.5), vmax=max(hi, lo * 2))


def depth_strip_figure(examples: list[DepthExample]):
    """Rows of input | predicted depth | true depth | relative error, one shared depth colour scale."""
    import matplotlib
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    norm = _depth_norm(examples)
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="#9a9a9a")  # near = bright, as colorize_disparity
    error_cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#9a9a9a")
    figure = _figure(12.5, 1.15 * len(examples) + 1.3)
    grid = figure.add_gridspec(len(examples) + 1, 4, height_ratios=[1] * len(examples) + [0.12])
    titles = ["input frame", "predicted depth (median-scaled)", "true depth (grey: sky, none)",
              "relative error |pred − true| / true"]
    depth_image = error_image = None
    for row, example in enumerate(examples):
        valid = (example.gt > MIN_DEPTH) & (example.gt < MAX_DEPTH)
        gt = np.where(valid, example.gt, np.nan)
        error = np.where(valid, np.abs(example.pred - example.gt) / np.where(valid, example.gt, 1), np.nan)
        panels = [example.image, np.clip(example.pred, MIN_DEPTH, MAX_DEPTH), gt, error]
        for col, panel in enumerate(panels):
            axes = figure.add_subplot(grid[row, col])
            _no_ticks(axes)
            if col == 0:
                axes.imshow(panel, interpolation="nearest")
                axes.set_ylabel(example.label.split("/")[-1], fontsize=8)
            elif col in (1, 2):
                depth_image = axes.imshow(panel, cmap=cmap, norm=norm, interpolation="nearest")
            else:
                error_image = axes.imshow(panel, cmap=error_cmap, vmin=0, vmax=0.5, interpolation="nearest")
                axes.set_xlabel(f"abs_rel of this frame: {np.nanmean(error):.3f}", fontsize=8)
            if row == 0:
                axes.set_title(titles[col], fontsize=9)
    bar = figure.colorbar(depth_image, cax=figure.add_subplot(grid[-1, 1:3]), orientation="horizontal")
    bar.set_label("depth, metres (log scale; bright = near)", fontsize=8)
    ticks = [t for t in (0.5, 1, 2, 3, 5, 10, 20, 30, 50, 80) if norm.vmin <= t <= norm.vmax]
    bar.ax.xaxis.set_major_locator(FixedLocator(ticks))
    bar.ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    bar.ax.xaxis.set_minor_formatter(NullFormatter())
    bar.ax.tick_params(labelsize=8)
    bar = figure.colorbar(error_image, cax=figure.add_subplot(grid[-1, 3]), orientation="horizontal", extend="max")
    bar.set_label("relative error (0.5 and above: yellow)", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    return figure


def _kept(mask: np.ndarray) -> str:
    return f"keeps {100 * float(np.mean(mask > 0.5)):.0f}%"


def masks_figure(example: MaskExample):
    """The frames, the true visibility, and each mask tinted red where it drops a pixel."""
    from matplotlib.patches import Patch

    from masksfm.visualize import overlay_mask

    panels = [(f"target frame t ({example.target_label.split('/')[-1]})", example.target),
              (f"source frame s ({example.source_label.split('/')[-1]})", example.source)]
    if example.visibility is not None:
        panels.append((f"true visibility in s (ray-cast): {100 * float(np.mean(example.visibility > 0)):.0f}% visible",
                       overlay_mask(example.target, example.visibility, color=DROPPED)))
    if example.moving is not None:
        panels.append(("moving cars (ground truth)", overlay_mask(example.target, ~example.moving, color=MOVING)))
    for name in ("edge", "overlap", "blank", "combined"):
        mask = example.masks[name]
        panels.append((f"{name} mask: {_kept(mask)}", overlay_mask(example.target, mask, color=DROPPED)))
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    figure = _figure(12.5, 1.35 * rows + 0.5)
    for k, (title, image) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, k + 1)
        axes.imshow(image, interpolation="nearest")
        axes.set_title(title, fontsize=9)
        _no_ticks(axes)
    handles = [Patch(color=np.array(DROPPED) / 255, label="red tint: dropped from the loss (mask = 0) / not visible"),
               Patch(facecolor="white", edgecolor="black", label="untinted: kept (mask = 1) / visible"),
               Patch(color=np.array(MOVING) / 255, label="blue tint: independently moving car")]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return figure


def trajectory_figure(trajectories: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], pose: dict, pose_constant: dict):
    """Top views (x right, z forward, metres) of each test drive: truth, model, constant speed."""
    from masksfm.trajectory import align_trajectory

    count = len(trajectories)
    figure = _figure(min(12.5, 5.2 * count), 5.4)
    for k, (name, (gt, pred, constant)) in enumerate(trajectories.items()):
        axes = figure.add_subplot(1, count, k + 1)
        pred = align_trajectory(pred, gt)
        constant = align_trajectory(constant, gt)
        axes.plot(gt[:, 0, 3], gt[:, 2, 3], color="black", lw=2, label="true path")
        axes.plot(pred[:, 0, 3], pred[:, 2, 3], color="tab:red", lw=1.5, marker=".", ms=4,
                  label=f"model (ATE RMSE {pose['sequences'][name]['ate_rmse']:.2f} m)")
        axes.plot(constant[:, 0, 3], constant[:, 2, 3], color="tab:gray", lw=1.2, ls="--",
                  label=f"straight at constant speed ({pose_constant['sequences'][name]['ate_rmse']:.2f} m)")
        axes.plot(gt[0, 0, 3], gt[0, 2, 3], "o", color="black", ms=6, label="start")
        # A drive is long and nearly straight: at equal scales every path is one line. The sideways
        # axis is stretched to show the deviations, and says so.
        xs = np.concatenate([gt[:, 0, 3], pred[:, 0, 3], constant[:, 0, 3]])
        zs = np.concatenate([gt[:, 2, 3], pred[:, 2, 3], constant[:, 2, 3]])
        half = max(0.5, 0.6 * (xs.max() - xs.min()))
        stretched = 2 * half < 0.5 * (zs.max() - zs.min())
        axes.set_xlim(0.5 * (xs.max() + xs.min()) - half, 0.5 * (xs.max() + xs.min()) + half)
        if not stretched:
            axes.set_aspect("equal", adjustable="datalim")
        axes.set_xlabel("x, metres (right)" + (" — stretched sideways" if stretched else ""))
        axes.set_ylabel("z, metres (forward)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
        axes.set_title(f"test drive {name}, seen from above", fontsize=10)
    return figure


def _series(scalars: dict, tag: str):
    steps, values = scalars.get(tag, ([], []))
    return np.asarray(steps), np.asarray(values)


def _smoothed(values: np.ndarray, weight: float = 0.6) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    out, average = np.empty(len(values)), 0.0
    for k, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[k] = average / (1 - weight ** (k + 1))
    return out


def curves_figure(scalars: dict, warmup_end: int | None, val_constant: float | None):
    """Training loss, the fraction of pixels each mask keeps, and validation abs_rel, against steps."""
    figure = _figure(12.5, 3.6)
    panels = figure.subplots(1, 3, sharex=True)
    axes = panels[0]
    for tag, label, color in (("loss/total", "total loss", "black"), ("loss/photometric", "photometric term", "tab:blue")):
        steps, values = _series(scalars, tag)
        if len(steps):
            axes.plot(steps, values, color=color, lw=0.8, alpha=0.35)
            axes.plot(steps, _smoothed(values), color=color, lw=1.6, label=f"{label} (smoothed)")
    axes.set_title("training loss (lower = frames reconstructed better)", fontsize=9)
    axes.set_ylabel("loss (photometric error units)")
    axes = panels[1]
    masks = [t for t in ("masks/edge", "masks/overlap", "masks/blank", "masks/combined") if t in scalars]
    for tag in masks:
        steps, values = _series(scalars, tag)
        axes.plot(steps, values, lw=1.2, label=tag.split("/")[1])
    if not masks:
        axes.text(0.5, 0.5, "no mask was computed:\nthe run ended in the warm-up", ha="center", va="center",
                  transform=axes.transAxes, fontsize=9)
    axes.set_ylim(0, 1.02)
    axes.set_title("fraction of pixels each mask keeps", fontsize=9)
    axes.set_ylabel("kept fraction")
    axes = panels[2]
    steps, values = _series(scalars, "val/abs_rel")
    if len(steps):
        axes.plot(steps, values, color="tab:red", marker="o", ms=3, lw=1.2, label="model")
    if val_constant is not None:
        axes.axhline(val_constant, color="tab:gray", ls="--", lw=1.2, label="constant depth")
    axes.set_title("validation abs_rel (lower is better)", fontsize=9)
    axes.set_ylabel("abs_rel")
    for axes in panels:
        axes.set_xlabel("training step")
        axes.grid(True, alpha=0.3)
        if warmup_end is not None:
            axes.axvline(warmup_end, color="tab:green", ls=":", lw=1.5, label="masks switch on (end of warm-up)")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
    return figure


# --- the page ------------------------------------------------------------------------------------

DEPTH_ROWS = [
    ("abs_rel", "mean of |pred − true| / true: the typical error as a fraction of the distance", "lower", "{:.3f}"),
    ("sq_rel", "mean of (pred − true)² / true, metres: like abs_rel, large errors weigh more", "lower", "{:.3f}"),
    ("rmse", "root mean squared error, metres", "lower", "{:.2f}"),
    ("rmse_log", "root mean squared difference of log depths: error in ratio terms", "lower", "{:.3f}"),
    ("a1", "fraction of pixels whose depth is within a factor 1.25 of the truth", "higher", "{:.3f}"),
    ("a2", "… within a factor 1.25² = 1.56", "higher", "{:.3f}"),
    ("a3", "… within a factor 1.25³ = 1.95", "higher", "{:.3f}"),
]

POSE_ROWS = [
    ("ate_rmse", "whole drive: RMS position error after aligning the predicted path to the truth (rotation, "
                 "translation, scale), metres", "lower", "{:.3f}"),
    ("rpe_trans", "frame to frame: RMS error of each relative translation, metres", "lower", "{:.3f}"),
    ("rpe_rot", "frame to frame: RMS error of each relative rotation, degrees", "lower", "{:.3f}"),
    ("direction_err", "frame to frame: mean angle between the predicted and the true direction of travel, "
                      "degrees", "lower", "{:.3f}"),
    ("speed_spread", "frame to frame: spread (std / mean) of the predicted speed over the true one; 0 = the true "
                     "speeds up to one scale", "lower", "{:.3f}"),
    ("rotation_err", "frame to frame: mean angle of each relative rotation's error, degrees", "lower", "{:.3f}"),
]

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; max-width: 1180px; margin: 24px auto;
       padding: 0 16px; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.lede { color: #444; margin-top: 0; }
.headline { background: #f3f6fb; border-left: 4px solid #3b6fd8; padding: 10px 16px; margin: 16px 0; }
.warning { background: #fff4e5; border-left: 4px solid #e08a00; padding: 10px 16px; margin: 16px 0; }
.good { color: #17803d; font-weight: 600; } .meh { color: #b25e00; font-weight: 600; } .bad { color: #b42318; font-weight: 600; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #fafafa; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.win { background: #e7f6ec; font-weight: 600; }
figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 14px; color: #333; margin-top: 6px; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
pre { background: #f4f4f4; padding: 10px; white-space: pre-wrap; font-size: 13px; }
dl.masks dt { font-weight: 600; margin-top: 6px; } dl.masks dd { margin-left: 18px; }
.small { font-size: 13px; color: #555; }
"""


# What each `model.motion` lets the camera do, for the report's first paragraph.
MOTION_WORDS = {
    "vehicle": "a car's camera: along the chord of its turn, never sideways or up and down",
    "vehicle_vertical": "a car's camera: along the chord of its turn, tilted up or down, never sideways",
    "free": "any rigid motion",
}


def _e(text) -> str:
    return html.escape(str(text))


def _cell(value: float, other: float, better: str, fmt: str) -> str:
    wins = value < other if better == "lower" else value > other
    return f'<td class="num{" win" if wins else ""}">{_e(fmt.format(value))}</td>'


def _figure_html(figure, alt: str, caption: str) -> str:
    return f'<figure><img src="{png_data_uri(figure)}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>'


def _agreement_text(agreement: dict | None) -> str:
    if not agreement or agreement.get("visible_kept") is None:
        return ""
    text = (f" Against that truth, on this pair (sky left out): the combined mask keeps "
            f"<b>{100 * agreement['visible_kept']:.0f}%</b> of the pixels that are visible in the source")
    if agreement.get("hidden_dropped") is not None:
        text += (f" and drops <b>{100 * agreement['hidden_dropped']:.0f}%</b> of those that are not "
                 f"({100 * agreement['hidden_share']:.0f}% of the surface pixels)")
    return text + "; a perfect mask keeps 100% and drops 100%."


def _warmup_end(data: ReportData) -> int | None:
    """The step where the masks switch on under the warm-up guard, or None."""
    loss = data.config["loss"]
    return loss["warmup_steps"] if loss["guard"] == "warmup" else None


def _summary_html(data: ReportData) -> list[str]:
    """The page's head, what was trained, the headline numbers and the warnings."""
    s, loss = data.settings, data.config["loss"]
    d, dc = data.depth, data.depth_constant
    p, pc = data.pose, data.pose_constant
    warmup_end = _warmup_end(data)
    motion = data.config["model"]["motion"]
    better = d["abs_rel"] < dc["abs_rel"]
    gain = 100 * (1 - d["abs_rel"] / dc["abs_rel"])
    minutes = data.timings.get("train", 0) / 60
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>masksfm demo report</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>masksfm demo report</h1>")
    parts.append(
        f"<p class='lede'>A depth network and a camera-motion (pose) network were trained <b>from scratch, with no "
        f"ground truth</b> — only by making neighbouring video frames predict each other — on {s['scenes']} synthetic "
        f"street drives of {s['frames']} frames ({s['width']}×{s['height']} pixels, {s['moving_cars']} independently "
        f"moving cars per drive), for {minutes:.1f} minutes ({data.steps} steps). The numbers below are measured on "
        f"held-out test drives the networks never saw, against the exact depth and camera path the renderer "
        f"recorded. Method: Wang et al., <i>Unsupervised Learning of Monocular Depth and Ego-Motion Using Multiple "
        f"Masks</i>, ICRA 2019; training recipe <code>loss.mask={_e(loss['mask'])}</code>, "
        f"<code>loss.guard={_e(loss['guard'])}</code>, "
        f"<code>model.motion={_e(motion)}</code> ({_e(MOTION_WORDS[motion])}).</p>")
    if gain >= CLEARLY_BETTER:
        verdict = f"<span class='good'>{gain:.0f}% lower than a constant depth</span>"
    elif better:
        verdict = f"<span class='meh'>only {gain:.0f}% lower than a constant depth: barely better</span>"
    else:
        verdict = "<span class='bad'>not better than a constant depth</span>"
    pose_better = p["ate_mean"] < pc["ate_mean"]
    parts.append(
        f"<div class='headline'><b>Depth:</b> abs_rel {d['abs_rel']:.3f} vs {dc['abs_rel']:.3f} for a constant depth — "
        f"{verdict} (lower is better; {d['count']} test frames).<br><b>Camera motion:</b> 5-frame snippet ATE "
        f"{p['ate_mean']:.3f} ± {p['ate_std']:.3f} m vs {pc['ate_mean']:.3f} ± {pc['ate_std']:.3f} m for driving "
        f"straight ahead at constant speed — <span class='{'good' if pose_better else 'bad'}'>"
        f"{'better' if pose_better else 'not better'}</span> (lower is better).</div>")
    notes = []
    if warmup_end is not None and data.steps <= warmup_end:
        notes.append(f"Training stopped at step {data.steps}, before the masks switch on at step {warmup_end} "
                     "(the warm-up guard): this run learned with the unmasked loss only. Give it more time "
                     "(<code>--minutes</code>) to see the method itself.")
    if gain < CLEARLY_BETTER:
        notes.append(("The model does not beat a constant depth on this run." if not better else
                      "The model is not yet clearly better than a constant depth on this run.") + " Unsupervised depth needs many steps; a "
                     "short budget (a machine busy with other work gives fewer steps per minute), or a collapse of the masked loss (depth drifting until the hard pixels leave the "
                     "mask: see the curves below), can leave it there.")
    parts += [f"<div class='warning'>{n}</div>" for n in notes]
    return parts


def _depth_html(data: ReportData) -> list[str]:
    """Section 1: the depth metrics against the constant depth."""
    d, dc = data.depth, data.depth_constant
    rows = "".join(f"<tr><td><code>{k}</code></td><td>{_e(meaning)}</td><td>{b} is better</td>"
                   f"{_cell(d[k], dc[k], b, fmt)}{_cell(dc[k], d[k], b, fmt)}</tr>" for k, meaning, b, fmt in DEPTH_ROWS)
    return [
        "<h2>1. Depth on the test drives</h2>",
        "<p>A monocular network cannot know the absolute scale of a scene, so each predicted depth map is "
        "multiplied by one number per image — median(true) / median(predicted) — before it is scored, as in "
        "the KITTI literature. The <b>constant-depth baseline</b> predicts the same depth at every pixel, "
        "scaled the same way: it is what one gets knowing nothing about the picture, the bar to clear. "
        f"Pixels with true depth in ({MIN_DEPTH:g}, {MAX_DEPTH:g}) m count (the sky does not); metrics are "
        "per image, then averaged. The better of the two is shaded green.</p>",
        f"<table><tr><th>metric</th><th>what it measures</th><th>direction</th><th>this model</th>"
        f"<th>constant depth</th></tr>{rows}</table>",
        f"<p class='small'>Model: <code>run/checkpoints/{_e(data.checkpoint)}.safetensors</code> "
        f"({'the step with the best validation abs_rel, on drives separate from the test' if data.checkpoint == 'best' else 'the last step'}). "
        f"The same numbers: <code>masksfm eval depth {_e(data.out)}/run {_e(data.out)}/data --split test</code>.</p>",
    ]


def _pose_html(data: ReportData) -> list[str]:
    """Section 2: the camera-motion metrics against driving straight at constant speed."""
    p, pc = data.pose, data.pose_constant
    parts = []
    parts.append("<h2>2. Camera motion on the test drives</h2>")
    parts.append("<p>The pose network predicts the motion between neighbouring frames. <b>Snippet ATE</b> (the "
                 "SfMLearner protocol): over every run of 5 consecutive frames, the predicted positions are scaled "
                 "to the truth by least squares and the error is √(Σ|error|²)/5, metres; mean ± std over snippets. "
                 "The <b>baseline</b> drives straight ahead at constant speed, scaled and aligned the same way.</p>")
    rows = (f"<tr><td><code>snippet ATE</code></td><td>5-frame snippets of all test drives, metres</td><td>lower is better</td>"
            f"{_cell(p['ate_mean'], pc['ate_mean'], 'lower', '{:.4f}')[:-5]} ± {p['ate_std']:.4f}</td>"
            f"{_cell(pc['ate_mean'], p['ate_mean'], 'lower', '{:.4f}')[:-5]} ± {pc['ate_std']:.4f}</td></tr>")
    for name, seq in p["sequences"].items():
        base = pc["sequences"].get(name, {})
        for k, meaning, b, fmt in POSE_ROWS:
            if k in seq and k in base:
                rows += (f"<tr><td><code>{k}</code> ({_e(name)})</td><td>{_e(meaning)}</td><td>{b} is better</td>"
                         f"{_cell(seq[k], base[k], b, fmt)}{_cell(base[k], seq[k], b, fmt)}</tr>")
    parts.append(f"<table><tr><th>metric</th><th>what it measures</th><th>direction</th><th>this model</th>"
                 f"<th>straight, constant speed</th></tr>{rows}</table>")
    return parts


def _figures_html(data: ReportData) -> list[str]:
    """Sections 3 to 6, where the data has them: depth pictures, masks, trajectories, training curves."""
    p, pc = data.pose, data.pose_constant
    warmup_end = _warmup_end(data)
    parts = []
    # depth strip
    if data.depth_examples:
        parts.append("<h2>3. What the network sees and predicts</h2>")
        parts.append(_figure_html(
            depth_strip_figure(data.depth_examples), "input, predicted depth, true depth, relative error",
            "Frames of a test drive (written by <code>masksfm predict</code>). Columns: the input; the predicted depth, "
            "median-scaled to the truth as in the evaluation; the true depth (grey where there is none: the sky); "
            "and the relative error per pixel. Both depth maps share one colour scale in metres: bright = near, "
            "dark = far. A good prediction looks like the truth column and is dark in the error column."))

    # masks
    if data.masks is not None:
        m = data.masks
        parts.append("<h2>4. The masks of the method</h2>")
        parts.append(_figure_html(
            masks_figure(m), "masks overlaid on the target frame",
            f"The masks for target frame <code>{_e(m.target_label)}</code> reconstructed from source frame "
            f"<code>{_e(m.source_label)}</code> (the frame before it), computed from the <b>trained network's own</b> "
            f"depth and pose, as the loss computes them (repeats = {m.repeats}, overlap tolerance τ = "
            f"{m.overlap_tolerance:g}). Each mask is drawn over the target frame: <b>untinted pixels are kept</b> in "
            "the photometric loss, <b>red-tinted pixels are dropped</b> (mask = 0). For comparison, the true "
            "visibility from the renderer: red where the target's point cannot be seen in the source (outside it, "
            "hidden, on the sky or on a moving car)." + _agreement_text(m.agreement)))
        parts.append(
            "<dl class='masks'>"
            "<dt>edge</dt><dd>drops pixels whose 3-D point projects outside the source image (or behind the camera): "
            "there is nothing there to compare with.</dd>"
            "<dt>overlap</dt><dd>when several target pixels land on the same source pixel, keeps only the nearest "
            "point; the others are hidden behind it in the source (occlusion). With τ = 0 and forward motion this "
            "also drops some visible neighbours on one surface (docs/design.md §4).</dd>"
            "<dt>blank</dt><dd>projects the source back into the target and drops the target pixels that no source "
            "pixel lands on: regions that appear only in the target (disocclusion).</dd>"
            "<dt>combined</dt><dd>edge × overlap × blank: the pixels the loss actually uses.</dd></dl>")

    # trajectories
    if data.trajectories:
        parts.append("<h2>5. Predicted vs true camera path</h2>")
        parts.append(_figure_html(
            trajectory_figure(data.trajectories, p, pc), "top view of true and predicted camera paths",
            "Seen from above (x to the right, z forward, metres; the sideways axis is stretched when the drive is "
            "nearly straight, so that the deviations show). The predicted path chains the network's "
            "frame-to-frame motions and is aligned to the truth by one rotation, translation and scale (a single "
            "camera cannot know the scale); the dashed grey path is the straight, constant-speed baseline aligned "
            "the same way."))

    # curves
    if data.scalars:
        parts.append("<h2>6. Training curves</h2>")
        shown_warmup = warmup_end if warmup_end is not None and data.steps > warmup_end else None
        warm = (f" The dotted green line marks step {warmup_end}, where the warm-up on all pixels ends and the masks "
                "switch on; the loss changes there because it is then averaged over the kept pixels only."
                if shown_warmup is not None else "")
        parts.append(_figure_html(
            curves_figure(data.scalars, shown_warmup, data.val_abs_rel_constant),
            "training loss, mask kept fractions and validation abs_rel against steps",
            "Read from the run's TensorBoard events (<code>tensorboard --logdir "
            f"{_e(data.out)}/run</code> shows them live). Left: the loss minimised (photometric error of the "
            "reconstructed frames plus a small smoothness term, so the two curves nearly coincide; thin: every 10th step, thick: smoothed). Middle: the share of pixels each mask keeps. "
            "Right: abs_rel on the validation drives during training, against the constant depth (dashed)." + warm))
    return parts


def _files_html(data: ReportData) -> list[str]:
    """Section 7: the files, the commands that redo the demo, and the footer."""
    from masksfm import __version__

    s = data.settings
    parts = []
    parts.append("<h2>7. Files</h2><p>Relative to this page:</p><ul>")
    parts += [f"<li><code class='path'>{_e(path)}</code> — {_e(text)}</li>" for path, text in data.files]
    parts.append("</ul>")
    out = _e(data.out)
    parts.append("<p>The steps of this demo, by hand (the demo stops training on a clock; <code>--steps</code> repeats the step count it reached):</p><pre>"
                 f"masksfm synth {out}/data --scenes {s['scenes']} --frames {s['frames']} --height {s['height']} "
                 f"--width {s['width']} --moving-cars {s['moving_cars']} --seed {s['seed']}\n"
                 f"masksfm train {out}/data --out {out}/run --height {s['height']} --width {s['width']} "
                 f"--steps {data.steps} --set train.val_every=100 --set train.checkpoint_every=100 "
                 "--set train.log_every=10\n"
                 f"masksfm eval depth {out}/run {out}/data --split test\n"
                 f"masksfm eval pose {out}/run {out}/data --split test\n"
                 f"masksfm predict {out}/run {out}/data/SCENE --out {out}/predict/SCENE --trajectory</pre>")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in data.timings.items())
    parts.append(f"<p class='small'>masksfm {_e(__version__)}. Data: {_e(data.data_note)}. Time: {_e(timing)}"
                 f"{' (' + _e(data.machine) + ')' if data.machine else ''}. "
                 f"Seed {s['seed']}.</p></body></html>")
    return parts


def render_html(data: ReportData) -> str:
    """The page as a string."""
    return "\n".join([*_summary_html(data), *_depth_html(data), *_pose_html(data), *_figures_html(data),
                      *_files_html(data)])


def write_report(path: Path, data: ReportData) -> Path:
    """Write the page (atomically: a temp file renamed) and return its path."""
    path = Path(path)
    text = render_html(data)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path
