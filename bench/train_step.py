"""The cost of a training step: the default recipe against SfmLearner-Pytorch's own step, its levers, where
the time goes, and (with --masks) the cost of each `loss.mask`.

    .venv/bin/python bench/train_step.py [--height 128] [--width 416] [--batch 4] [--repeat 5]
        [--sfp FOLDER] [--peers ../shared/peers] [--profile] [--masks] [--threads N] [--device cpu|cuda]
        [--json FILE]

One full optimisation step (depth net on every frame, pose net, objective, backward, Adam) on a
fixed batch of rendered synthetic frames, for each case, all in one run. The cases take turns step
by step (interleaved), so that a machine shared with other work slows them alike and the ratios
stay meaningful; each figure is the median of --repeat steps after one warm-up step (two with
torch.compile, whose first call compiles).

Default: the levers of the default recipe (channels_last, bf16 autocast of the depth net,
torch.compile of the photometric error: `train.precision`, `train.compile`), recipe changes on
top of it that change what is learned (the sources' depth without gradient, `model.source_depth_grad`;
each scale's error at its own size, `loss.scales=downsample`; monodepth2's depth net, `model.depth=resnet18`;
the pose net on each ordered frame pair, `model.pose=pairs`; the pose net reading the frames at half their size,
`model.pose_downsample=2`),
the pose net's relations (`loss.turn_weight`, `loss.stride_weight`, `loss.shift_weight`, `loss.virtual_weight`:
the step as the trainer takes it, `objective.batch_objective`, on items of 5 frames for the strides and the
shifts), the default as the trainer stepped it before 2026-12-06 (torch's fused Adam copying each
channels_last gradient, the depth net's weights cast to bf16 for each of its two calls: the same values), and
SfmLearner-Pytorch's own default step timed by the peer driver `sfp_step.py` (in --peers, default
../shared/peers beside the repository) on its code (--sfp: the extracted SfmLearner-Pytorch folder, or
$SFP), in a subprocess, --repeat times before masksfm's cases are built (with their models and Adam
states held, about 9 GB at 64x224, the peer's step ran 1.3-1.9x slower than alone); without them the
ratio is not printed and the output says why. Target (issue 14): default recipe <= 1.5x SfmLearner's
step at 128x416, batch 4.

--profile: where the default recipe's step goes (depth net forward / backward, pose net, warp,
photometric error, masks, the objective as a whole, optimizer, data loading), each part timed
alone on the inputs it sees in the step.

--masks: the step per `loss.mask` and the share in `compute_masks` (issue 5: multimask with
repeats 0 <= 1.3x the no-mask step, masks <= 10% of it).

On a machine shared with other work, pass --threads 1 (see bench/README.md: with more threads
than free cores, torch's OpenMP barriers wait for descheduled threads and the figures measure
the contention).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
from masksfm.model import build_model, native_bf16, training_arithmetic, use_training_arithmetic
from masksfm.training import build_optimizer, weight_average

# (name, overrides); the first is the baseline of the ratios.
MASK_CASES = [
    ("none", ["loss.mask=none"]),
    ("multimask r0", ["loss.mask=multimask", "loss.repeats=0"]),
    ("multimask r3", ["loss.mask=multimask", "loss.repeats=3"]),
    ("none one-way", ["loss.mask=none", "loss.bidirectional=false"]),
    ("multimask r0 one-way", ["loss.mask=multimask", "loss.bidirectional=false"]),
    # SfMLearner's mask comes from its pose net's decoder: that pose net (its convolutions on the snippet).
    ("explainability", ["loss.mask=explainability", "model.pose=snippet", "model.pose_encoder=conv"]),
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


def fixed_batch(batch: int, height: int, width: int, device: torch.device, length: int = 3) -> dict[str, torch.Tensor]:
    """`batch` consecutive items of `length` frames of one rendered synthetic scene, without augmentation."""
    with tempfile.TemporaryDirectory() as tmp:
        root = render_dataset(Path(tmp) / "data", scenes=1, frames=batch + length - 1, height=height, width=width,
                              seed=0, moving_cars=1, progress=False)
        dataset = SnippetDataset(load_split(root, "train"), height, width, length, augment=False)
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
            use_training_arithmetic(model, config.train.precision, device)
            models[key] = (model, build_optimizer(model, config, device))
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




# The levers (issue 14): (name, channels_last + precision or None for the plain NCHW float32 model,
# torch.compile of the photometric error, overrides of the default configuration: the recipe changes
# that are not exact, `model.source_depth_grad` and `loss.scales`).
LEVER_CASES = [
    ("plain fp32 (NCHW, eager)", None, False, []),
    ("plain fp32 + compile", None, True, []),
    ("channels_last fp32", "fp32", False, []),
    ("channels_last fp32 + compile", "fp32", True, []),
    ("channels_last bf16", "bf16", False, []),
    ("channels_last bf16 + compile", "bf16", True, []),
    # Recipe changes on top of the default arithmetic of the device ("auto": bf16 where it is native).
    ("  + the sources' depth gradient (the default before 2026-12-03, sixth session)", "auto", True,
     ["model.source_depth_grad=true"]),
    ("  + each scale's error at its own size", "auto", True, ["loss.scales=downsample"]),
    ("  + the 3 finest scales in the loss", "auto", True, ["loss.num_scales=3"]),
    ("  + SfMLearner's pose convolutions (the default before 2026-12-04, tenth session)", "auto", True,
     ["model.pose_encoder=conv"]),
    ("  + monodepth2's depth net (model.depth=resnet18)", "auto", True, ["model.depth=resnet18"]),
    ("  + the shifts (loss.shift_weight=0.3)", "auto", True, ["loss.shift_weight=0.3"]),
    # The pose net's relations (twelfth session): it also reads turned sources, and the wide snippet.
    ("  + the turns (loss.turn_weight=0.1)", "auto", True, ["loss.turn_weight=0.1"]),
    ("  + the turns and the strides (turns-strides)", "auto", True,
     ["loss.turn_weight=0.1", "loss.stride_weight=0.1"]),
    # The virtual motions (twenty-fourth session): the target re-rendered, a second pose-net call.
    ("  + the virtual motions (loss.virtual_weight=0.1)", "auto", True, ["loss.virtual_weight=0.1"]),
    # Five-frame snippets (twenty-fifth session): 4 sources per target, the pose net's 4 poses in one call.
    ("  + 5-frame snippets (data.snippet_length=5)", "auto", True, ["data.snippet_length=5"]),
    # monodepth2's pose input (twenty-seventh session): the pose net on each ordered frame pair, one call per pair.
    ("  + the pose net on frame pairs (model.pose=pairs)", "auto", True, ["model.pose=pairs"]),
    # The pose net reading the frames at half their size (twenty-ninth session).
    ("  + the pose net at half the size (model.pose_downsample=2)", "auto", True, ["model.pose_downsample=2"]),
    ("  + the same, the mean of it and its mirror reading (pose-half-mirror)", "auto", True,
     ["model.pose_downsample=2", "model.pose_mirror_mean=true"]),
    # SC-SfMLearner's depth scale consistency with the sources' depth trained (twenty-fifth session).
    ("  + depth scale consistency, the sources' depth trained (consistency-grad)", "auto", True,
     ["loss.consistency_weight=0.5", "model.source_depth_grad=true"]),
]
# The default recipe as the trainer took its step before the twenty-third session (`measure_levers`).
BEFORE_CASE = "  the default as trained before 2026-12-06 (torch's Adam, weights cast per call)"


def case_arithmetic(precision: str | None, device: torch.device) -> tuple[str, bool]:
    """A lever case's (precision, channels_last) on `device`: None is plain NCHW float32, a named
    precision is channels_last, and "auto" is what the trainer picks there (bf16 where it is native,
    else fp32, in the layout that pays: `model.training_arithmetic`)."""
    if precision is None:
        return "fp32", False
    if precision == "auto":
        return training_arithmetic(precision, device)
    return precision, True


def lever_cases(device: torch.device) -> list[tuple[str, tuple[str, bool], bool, list[str]]]:
    """The lever cases that mean something on `device`, as (name, (precision, channels_last),
    compiled error, overrides): bf16 only where it is native (emulated bf16 is several times slower
    than float32 and measures the emulation)."""
    native = native_bf16(device)
    return [(name, case_arithmetic(precision, device), compile_error, overrides)
            for name, precision, compile_error, overrides in LEVER_CASES if precision != "bf16" or native]


def one_step(model, optimizer, batches, config) -> None:
    """One training step as the trainer's (`objective.batch_objective`), on the batch of the items'
    length in `batches` ({frames per item: batch}); the turns and the virtual motions, if any, drawn as the
    trainer draws them (the virtual motions as from their first step)."""
    loss = config.loss
    batch = batches[objective_module.item_length(config.data.snippet_length, loss)]
    turns = None
    if loss.turn_weight > 0:
        turns = objective_module.random_turns(len(batch["K"]), config.data.snippet_length - 1, loss.turn_degrees,
                                              seed=0).to(batch["K"].device)
    virtual = None
    if loss.virtual_weight > 0:
        virtual = tuple(x.to(batch["K"].device) for x in objective_module.random_virtual_motion(
            len(batch["K"]), config.data.snippet_length - 1, loss.virtual_spread, loss.virtual_degrees, seed=0))
    result = objective_module.batch_objective(model, batch["images"], batch["images_raw"], batch["K"], loss,
                                              config.data.snippet_length, turns, virtual=virtual)
    optimizer.zero_grad()
    result.loss.backward()
    optimizer.step()


def sfp_step_ms(peers: Path, sfp: Path, height: int, width: int, steps: int, threads: int) -> float:
    """SfmLearner-Pytorch's own default step (batch 4), median ms over `steps`, timed by the peer
    driver in a subprocess with its code on the path."""
    env = {**os.environ, "SFP": str(sfp), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, str(peers / "sfp_step.py"), str(height), str(width), str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    return 1000 * float(out.stdout.split()[-1])


def find_peer(args) -> tuple[Path | None, Path | None, str]:
    """The peer driver folder and SfmLearner-Pytorch's extracted folder, or why they are not used."""
    peers = args.peers if args.peers is not None else Path(__file__).resolve().parents[2] / "shared" / "peers"
    sfp = args.sfp or (Path(os.environ["SFP"]) if os.environ.get("SFP") else None)
    if not (peers / "sfp_step.py").is_file():
        return None, None, f"SfmLearner-Pytorch not timed: no peer driver {peers / 'sfp_step.py'} (--peers)"
    if sfp is None or not (sfp / "loss_functions.py").is_file():
        return None, None, ("SfmLearner-Pytorch not timed: pass --sfp (or $SFP), its extracted code folder "
                            f"(made by {peers / 'setup.sh'})")
    if args.batch != 4 or args.device != "cpu":
        return None, None, "SfmLearner-Pytorch not timed: its driver runs batch 4 on the CPU"
    return peers, sfp, f"SfmLearner-Pytorch timed by {peers / 'sfp_step.py'} on {sfp}"


def measure_levers(args, batches, device, sync) -> tuple[dict[str, float], float | None, str]:
    """ms per step for each lever case, interleaved round by round, and SfmLearner's step (or None), timed
    before them; `batches`: {frames per item: batch} (3, and 5 for the strides' and shifts' cases)."""
    size = [f"data.height={args.height}", f"data.width={args.width}"]
    eager = objective_module._photometric_error
    objective_module.use_compiled_photometric_error()
    compiled = objective_module._photometric_error
    peers, sfp, peer_note = find_peer(args)
    # The peer's step first, on a machine that holds nothing of masksfm's: timed between the rounds below,
    # with every case's model and Adam state in memory, it took 1.3-1.9x its time alone and its own
    # training loop's (twentieth session, docs/results.md).
    sfp_times = [sfp_step_ms(peers, sfp, args.height, args.width, 2, torch.get_num_threads())
                 for _ in range(args.repeat if peers is not None else 0)]

    def case(name, arithmetic, compile_error, overrides):
        config = load_config(None, [*size, *overrides])
        torch.manual_seed(0)
        model = build_model(config).to(device)
        use_training_arithmetic(model, arithmetic[0], device, channels_last=arithmetic[1])
        return name, model, build_optimizer(model, config, device), compiled if compile_error else eager, config

    cases = [case(*lever) for lever in lever_cases(device)]
    # The trainer before the twenty-third session, on the default recipe: torch's Adam as it is, with the
    # trainer's groups and settings (its fused kernel copies each channels_last gradient), and each of the
    # depth net's two calls in an autocast context of its own (its weights cast to bf16 per call).
    default = default_recipe_case(device)
    name, model, optimizer, error, config = case(BEFORE_CASE, *next(lever[1:] for lever in lever_cases(device)
                                                                     if lever[0] == default))
    dtype = model.depth_autocast
    model.depth_arithmetic = lambda where: torch.autocast(where.type, dtype=dtype or torch.bfloat16,
                                                          enabled=dtype is not None, cache_enabled=False)
    cases.append((name, model, torch.optim.Adam(optimizer.param_groups, **optimizer.defaults), error, config))
    times = {name: [] for name, *_ in cases}
    for i in range(args.repeat + 2):
        for name, model, optimizer, error, config in cases:
            objective_module._photometric_error = error
            sync()
            start = time.perf_counter()
            one_step(model, optimizer, batches, config)
            sync()
            if i >= 2:  # two warm-up rounds: allocators, kernels, and torch.compile's first call
                times[name].append(time.perf_counter() - start)
    objective_module._photometric_error = eager
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    return ms, statistics.median(sfp_times) if sfp_times else None, peer_note


def default_recipe_case(device: torch.device) -> str:
    """The lever case the shipped default configuration runs on `device`."""
    config = load_config(None, [])
    arithmetic = training_arithmetic(config.train.precision, device)
    # The case whose overrides leave the shipped configuration as it is.
    shipped = config.to_dict()
    return next(name for name, arithmetic_of_case, compile_error, overrides in lever_cases(device)
                if (arithmetic_of_case, compile_error) == (arithmetic, config.train.compile)
                and load_config(None, overrides).to_dict() == shipped)


def timed(fn, sync, repeat: int) -> float:
    """Median ms of `fn()` over `repeat` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return 1000 * statistics.median(out)


def leaf(t):
    return t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t


def replay_backward(fn, calls) -> callable:
    """A function that reruns every captured call of `fn` on fresh leaf copies of its inputs and
    back-propagates a unit gradient through each output."""
    def run():
        for call_args, call_kwargs in calls:
            out = fn(*[leaf(a) for a in call_args], **{k: leaf(v) for k, v in call_kwargs.items()})
            outs = out if isinstance(out, tuple) else (out,)
            grads = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            if grads:
                torch.autograd.backward(grads, [torch.ones_like(o) for o in grads])
    return run


def profile(args, batch, device, sync) -> list[tuple[str, float]]:
    """(part, ms per step) of the default recipe's step; each part timed alone on its inputs."""
    config = load_config(None, [f"data.height={args.height}", f"data.width={args.width}"])
    torch.manual_seed(0)
    model = build_model(config).to(device)
    use_training_arithmetic(model, config.train.precision, device)
    if config.train.compile:
        objective_module.use_compiled_photometric_error()
    optimizer = build_optimizer(model, config, device)
    rounds = args.repeat
    step_ms = timed(lambda: one_step(model, optimizer, {3: batch}, config), sync, rounds)

    # Capture what the objective hands to its parts in one step.
    captured = {"warp": [], "error": [], "masks": []}
    originals = {"warp": objective_module.inverse_warp, "error": objective_module._photometric_error,
                 "masks": objective_module.compute_masks}

    def capturing(key):
        def wrapper(*a, **k):
            captured[key].append((a, k))
            return originals[key](*a, **k)
        return wrapper

    objective_module.inverse_warp, objective_module._photometric_error, objective_module.compute_masks = (
        capturing("warp"), capturing("error"), capturing("masks"))
    out = model(batch["images"])
    objective_module.compute_objective(out, batch["images_raw"], batch["K"], config.loss)
    objective_module.inverse_warp, objective_module._photometric_error, objective_module.compute_masks = (
        originals["warp"], originals["error"], originals["masks"])

    center = batch["images"].shape[1] // 2

    def depth_forward():
        with torch.no_grad():
            model(batch["images"])

    def depth_forward_backward():
        disparities = model(batch["images"]).disparities
        torch.autograd.backward(disparities, [torch.ones_like(d) for d in disparities])

    def pose():
        sources = torch.cat([batch["images"][:, :center], batch["images"][:, center + 1:]], dim=1)
        model.pose_net(batch["images"][:, center], sources).sum().backward()

    def objective():
        fresh = objective_module.ModelOutput([leaf(d) for d in out.disparities], leaf(out.poses),
                                             None if out.explainability is None else [leaf(e) for e in out.explainability])
        objective_module.compute_objective(fresh, batch["images_raw"], batch["K"], config.loss).loss.backward()

    def optimizer_step():
        optimizer.step()

    with_forward = timed(depth_forward_backward, sync, rounds)
    forward = timed(depth_forward, sync, rounds)
    warp = timed(replay_backward(objective_module.inverse_warp, captured["warp"]), sync, rounds)
    error = timed(replay_backward(objective_module._photometric_error, captured["error"]), sync, rounds)
    masks = timed(lambda: [objective_module.compute_masks(*a, **k) for a, k in captured["masks"]], sync, rounds)
    whole_objective = timed(objective, sync, rounds)
    top = [
        ("depth net forward (every frame)", forward),
        ("depth net backward", with_forward - forward),
        ("pose net forward + backward", timed(pose, sync, rounds)),
        ("objective forward + backward", whole_objective),
    ]
    optimizer_ms = timed(optimizer_step, sync, rounds)
    averaged = weight_average(model, 0.999)
    return [
        *top,
        ("  of which the warp (every pair, direction, scale)", warp),
        ("  of which the photometric error (SSIM + L1)", error),
        ("  of which the masks (no gradient)", masks),
        ("optimizer (fused Adam)", optimizer_ms),
        ("sum of the parts above", sum(ms for _, ms in top) + optimizer_ms),
        ("the whole step, measured", step_ms),
        ("with optim.ema_decay: the weight average's update (not in the default's step)",
         timed(lambda: averaged.update_parameters(model), sync, rounds)),
        (f"data loading, {args.batch} snippets in one process (workers overlap it with the step)",
         loading_ms(args, sync, rounds)),
    ]


def loading_ms(args, sync, rounds: int) -> float:
    """Median ms to load and augment one batch of snippets in one process, on a small rendered set."""
    from masksfm.data.dataset import SnippetDataset
    from masksfm.data.layout import load_split

    with tempfile.TemporaryDirectory() as tmp:
        root = render_dataset(Path(tmp) / "data", scenes=1, frames=12, height=args.height, width=args.width,
                              seed=0, progress=False)
        dataset = SnippetDataset(load_split(root, "train"), args.height, args.width, augment=True, seed=0)
        return timed(lambda: [dataset[i % len(dataset)] for i in range(args.batch)], sync, rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sfp", type=Path, default=None, help="SfmLearner-Pytorch's extracted code (default: $SFP)")
    parser.add_argument("--peers", type=Path, default=None, help="the peer drivers (default: ../shared/peers)")
    parser.add_argument("--profile", action="store_true", help="also: where the default recipe's step goes")
    parser.add_argument("--masks", action="store_true", help="the step per loss.mask instead of the levers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch = fixed_batch(args.batch, args.height, args.width, device)
    command = "command: .venv/bin/python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    where = (f"batch {args.batch} snippets of 3 frames (5 for the strides' and shifts' cases) at {args.height}x{args.width}, "
             f"{device.type}, {torch.get_num_threads()} threads, median of {args.repeat} interleaved steps")
    figures = {"device": device.type, "threads": torch.get_num_threads(), "batch": args.batch,
               "size": [args.height, args.width]}
    if args.masks:
        figures.update(mask_table(args, batch, device, sync, where))
    else:
        batches = {3: batch, 5: fixed_batch(args.batch, args.height, args.width, device, length=5)}
        ms, sfp_ms, peer_note = measure_levers(args, batches, device, sync)
        default = default_recipe_case(device)
        plain = ms[LEVER_CASES[0][0]]
        print(f"training step of the default recipe's loss, {where}; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores at the end")
        print(f"{'arithmetic':<40} {'ms/step':>9} {'vs plain':>9} {'vs SfmLearner':>14}")
        for name, value in ms.items():
            ratio = f"{value / sfp_ms:.2f}x" if sfp_ms else "-"
            mark = "  <- default" if name == default else ""
            print(f"{name:<40} {value:>9.0f} {plain / value:>8.2f}x {ratio:>14}{mark}")
        print(f"the trainer's step before 2026-12-06 / the default's: {ms[BEFORE_CASE] / ms[default]:.2f}x")
        if sfp_ms:
            print(f"{'SfmLearner-Pytorch (its own step)':<40} {sfp_ms:>9.0f} {'':>9} {'1.00x':>14}")
            print(f"target: default / SfmLearner = {ms[default] / sfp_ms:.2f}x (target <= 1.5x at 128x416, batch 4)")
        print(peer_note)
        if not native_bf16(device):
            left_out = "the bf16 cases are left out: this device has no native bf16 (emulated, it measures the emulation)"
            print(left_out)
            peer_note += f"; {left_out}"
        figures.update({"ms_per_step": ms, "default": default, "sfp_ms": sfp_ms, "peer_note": peer_note})
    if args.profile:
        parts = profile(args, batch, device, sync)
        step_ms = dict(parts)["the whole step, measured"]
        print(f"\nwhere the default recipe's step goes ({where.split(', median')[0]}, each part alone):")
        for name, value in parts:
            print(f"  {name:<84} {value:>8.0f} ms {100 * value / step_ms:>5.0f}%")
        figures["profile_ms"] = dict(parts)
    print(command)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


def mask_table(args, batch, device, sync, where) -> dict:
    """The step per `loss.mask` (the guard off: the steps after any warm-up, masks in use)."""
    cases = [(name, load_config(None, [f"data.height={args.height}", f"data.width={args.width}", "loss.guard=none",
                                       *overrides]))
             for name, overrides in MASK_CASES]
    rows = measure(cases, batch, args.repeat, device, sync)
    base = rows[0][1]
    print(f"training step, {where}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    print(f"{'loss.mask':<24} {'ms/step':>9} {'vs none':>8} {'masks ms':>9} {'masks %':>8}")
    for name, ms, mask_ms in rows:
        print(f"{name:<24} {ms:>9.0f} {ms / base:>7.2f}x {mask_ms:>9.1f} {100 * mask_ms / ms:>7.1f}%")
    by_name = {name: (ms, mask_ms) for name, ms, mask_ms in rows}
    ms, mask_ms = by_name["multimask r0"]
    print(f"targets: multimask r0 / none = {ms / base:.2f}x (target <= 1.3x), "
          f"masks share {100 * mask_ms / ms:.1f}% (target <= 10%)")
    return {"ms_per_step": {name: ms for name, ms, _ in rows}, "masks_ms": {name: m for name, _, m in rows}}


if __name__ == "__main__":
    main()
