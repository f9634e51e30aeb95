"""The trainer: data, model, objective, Adam; checkpoints, TensorBoard, validation; DDP via torchrun.

`Trainer.train` reads top to bottom as the method: for each step, a batch of snippets goes through
the depth net (every frame) and the pose net, `compute_objective` builds the masked bidirectional
loss, Adam steps. Rank 0 logs, validates and writes checkpoints; `--resume` restores weights,
optimizer, RNG and the data position, so a resumed run continues bit for bit. What can go wrong on
a long run (non-finite steps, stop signals, a dead DDP process) is handled by `masksfm.faults`.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, update_bn

from masksfm import faults
from masksfm.checkpoints import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    load_checkpoint,
    load_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    remove_stale_temp_files,
    restore_rng,
    resume_checkpoint,
    rng_to_tensors,
    save_checkpoint,
    unprefixed,
)
from masksfm.config import Config, apply_overrides, dump_yaml, load_config, stored_config, validate
from masksfm.data.dataset import SnippetDataset, make_loader
from masksfm.data.layout import load_split, split_path
from masksfm.errors import MasksfmError
from masksfm.inference import evaluate_depth
from masksfm.model import build_model, pick_device, use_training_arithmetic
from masksfm.objective import (
    Objective,
    batch_objective,
    item_length,
    random_turns,
    random_virtual_motion,
    snippet_sources,
    use_compiled_photometric_error,
)
from masksfm.progress import progress_bar
from masksfm.runlock import hold_run_folder

LR_DECAY = 0.1
# Where torch's fused Adam runs (elsewhere, e.g. on MPS, the default multi-tensor Adam).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def masks_active(config: Config, step: int) -> bool:
    """The warm-up guard (`loss.guard=warmup`): multimask losses start after `loss.warmup_steps`
    unmasked, border-padded steps. Measured on synthetic streets, it only delays the collapse of
    the masked loss; the default guard is the floor (masksfm/objective.py)."""
    return not (config.loss.guard == "warmup" and step < config.loss.warmup_steps)


def learning_rate(config: Config, step: int) -> float:
    return config.optim.lr * LR_DECAY ** sum(step >= s for s in config.optim.lr_decay_steps)


def training_snippets(scenes: list, config: Config, source: str | None = None) -> SnippetDataset:
    """The items the trainer draws from the training split's `scenes`: snippets of
    `item_length(data.snippet_length, loss)` frames, augmented and spaced as `config.data` says
    (`source`: what error messages name, the split file)."""
    return SnippetDataset(scenes, config.data.height, config.data.width,
                          item_length(config.data.snippet_length, config.loss),
                          augment=config.data.augment, seed=config.train.seed, source=source,
                          colour_jitter=config.data.colour_jitter,
                          independent_crop_scale=config.data.independent_crop_scale,
                          strides=config.data.strides, source_yaw=config.data.source_yaw,
                          uneven_strides=config.data.uneven_strides)


class SnippetPoses(nn.Module):
    """A pose net called on snippets (B, L, 3, H, W), target in the middle: the one-argument call
    torch's `update_bn` makes."""

    def __init__(self, pose_net: nn.Module):
        super().__init__()
        self.pose_net = pose_net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pose_net(images[:, images.shape[1] // 2], snippet_sources(images))


def build_optimizer(model: nn.Module, config: Config, device: torch.device) -> torch.optim.Adam:
    """Adam over both nets; the pose net in a group of its own when `optim.pose_lr_scale` != 1
    (one group otherwise, so that checkpoints of either kind resume as they were written)."""
    groups: list[dict] = [{"params": list(model.parameters())}]
    if config.optim.pose_lr_scale != 1.0:
        pose = {id(p) for p in model.pose_net.parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in pose]},
                  {"params": list(model.pose_net.parameters()), "lr_scale": config.optim.pose_lr_scale}]
    # fused: one kernel over all parameters instead of a dozen passes per step (docs/results.md: the
    # update of DispNet's and SfMLearner's pose net's 33 M parameters about 4x faster on the CPU).
    return MemoryOrderAdam(groups, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                           weight_decay=config.optim.weight_decay, fused=device.type in FUSED_ADAM_DEVICES)


class MemoryOrderAdam(torch.optim.Adam):
    """torch's Adam, whose fused kernel gets each channels_last parameter (the depth net's weights
    where that layout pays), its gradient and its states as flat views in memory order.

    torch's CPU fused kernel copies every non-contiguous gradient to a contiguous tensor it then does
    not use: it walks the parameter, the gradient and the states in memory order (which is why they
    must share one layout, `match_state_layouts`): at 128x416 Adam took 48 ms of the step with them and
    27 ms without (docs/results.md). The flat views give it the same elements in the same order with
    nothing to copy: the same update to the bit. Tensors whose layouts differ are left as torch has them.
    """

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):
        has_complex = super()._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        if group["fused"]:
            lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if group["amsgrad"] else [])
            for i, param in enumerate(params):
                tensors = [group_list[i] for group_list in lists]  # the parameter, its gradient, its states
                channels_last = param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last)
                if channels_last and not param.is_contiguous() and all(t.stride() == param.stride() for t in tensors):
                    for group_list, tensor in zip(lists, tensors):
                        group_list[i] = tensor.as_strided((tensor.numel(),), (1,))
        return has_complex


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """The copy of `model` whose weights a run is used with (`optim.ema_decay`): an exponential moving
    average of the trained weights and batch-norm statistics, updated after every step taken.

    The first update copies the weights; the one after n updates keeps min(`decay`, (1 + n) / (10 + n))
    of the average (TensorFlow's ExponentialMovingAverage with `num_updates`): early on the average
    follows the weights closely, so a short run is not pulled back towards its first steps; at 600
    steps it weighs the last hundred or so. torch's AveragedModel keeps the copy and the count (its
    `get_ema_multi_avg_fn` has one fixed decay).
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], trained: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # batch norm's step counters: copied
            torch._foreach_copy_(averaged, trained)
            return
        n = float(n_averaged)
        torch._foreach_lerp_(averaged, trained, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (after `load_state_dict`, which
    keeps the checkpoint's contiguous layout): the fused Adam kernels walk a parameter and its states
    in memory order, so a contiguous state beside a channels_last weight would update the wrong
    elements (measured: 0.17 off after one step on a 8x5x3x3 weight)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def mean_over_processes(terms: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """The loss terms averaged over the processes of a DDP job (what one process with the whole
    batch would log)."""
    if world == 1:
        return terms
    keys = sorted(terms)
    stacked = torch.stack([terms[k].float() for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, stacked / world))


class Trainer:
    """One training run in `run_dir` on the data in `data_root` (docs/design.md §1, "Runs and checkpoints")."""

    def __init__(self, data_root: Path, run_dir: Path, config: Config, resume: bool = False, device: str | None = None,
                 progress: bool = True):
        self.data_root, self.run_dir, self.config = Path(data_root), Path(run_dir), config
        self.last_path = self.run_dir / CHECKPOINT_DIR / LAST
        # The data first: a bad dataset is the likeliest mistake, and it answers before anything is written.
        scenes = load_split(self.data_root, config.data.train_split)
        self.rank, self.world, local_rank = distributed_context()
        self.progress = progress and self.rank == 0
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            dist.init_process_group(backend)
        if device is None and self.world > 1 and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        self.device = pick_device(device)
        if config.optim.batch_size % self.world:
            raise MasksfmError(f"batch size {config.optim.batch_size} is not divisible by {self.world} processes")
        if self.rank == 0:
            # A run folder that cannot be written is found out now, not at the first checkpoint.
            try:
                (self.run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise MasksfmError(f"{self.run_dir}: cannot write the run folder ({error.strerror or error})") from None
        # One training per run folder; rank 0 writes for the whole job, so it holds it (masksfm/runlock.py).
        self.run_lock = hold_run_folder(self.run_dir) if self.rank == 0 else None

        self.step, self.best_abs_rel, self.skipped = 0, math.inf, faults.SkippedSteps()
        checkpoint = resume_checkpoint(self.run_dir) if resume else None
        tensors = None
        if checkpoint is not None:
            tensors, meta = load_checkpoint(checkpoint)
            self.step, self.best_abs_rel = meta["step"], meta.get("best_abs_rel") or math.inf
            self.skipped = faults.SkippedSteps(meta.get("skipped_steps", 0))

        torch.manual_seed(config.train.seed)
        self.model = build_model(config).to(self.device)
        use_training_arithmetic(self.model, config.train.precision, self.device)
        if config.train.compile:
            use_compiled_photometric_error()
        self.optimizer = build_optimizer(self.model, config, self.device)
        if tensors is not None:
            # With `optim.ema_decay` a checkpoint's "model" is the average and "trained" the weights trained on.
            trained = unprefixed(tensors, "trained") or unprefixed(tensors, "model")
            load_weights(self.model, trained, checkpoint)
            try:
                self.optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
                match_state_layouts(self.optimizer)
            except (ValueError, KeyError) as error:
                raise MasksfmError(f"{checkpoint}: its optimizer state does not fit this model ({error})") from None
            restore_rng(tensors)
        # The average is rank 0's alone: it validates and saves, and every process trains the same weights.
        self.averaged = None
        if config.optim.ema_decay > 0 and self.rank == 0:
            self.averaged = weight_average(self.model, config.optim.ema_decay)
            if tensors is not None and "averaged.n" in tensors:
                load_weights(self.averaged.module, unprefixed(tensors, "model"), checkpoint)
                self.averaged.n_averaged.copy_(tensors["averaged.n"])
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

        self.dataset = training_snippets(scenes, config, str(split_path(self.data_root, config.data.train_split)))
        self.val_scenes = []
        if split_path(self.data_root, config.data.val_split).exists():
            self.val_scenes = [s for s in load_split(self.data_root, config.data.val_split, allow_empty=True) if s.has_depth]
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            try:
                (self.run_dir / "config.yaml").write_text(dump_yaml(config))
            except OSError as error:
                raise MasksfmError(f"{self.run_dir}: cannot write the run folder ({error.strerror or error})") from None
            remove_stale_temp_files(self.run_dir / CHECKPOINT_DIR)
            self.writer = SummaryWriter(str(self.run_dir))

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient, over the whole run."""
        return self.skipped.total

    # --- the loop ------------------------------------------------------------------------------

    def train(self, time_limit: float | None = None) -> dict[str, float]:
        """Run until `optim.steps`, or until `time_limit` seconds have passed (the step then reached
        is validated and checkpointed as if it were the last); returns the last step's loss terms."""
        cfg = self.config
        self.final_step = cfg.optim.steps
        start = time.monotonic()
        loader = make_loader(self.dataset, cfg.optim.batch_size, cfg.train.seed, workers=cfg.data.workers,
                             rank=self.rank, world_size=self.world, start_step=self.step, max_steps=cfg.optim.steps)
        self.model.train()
        bar = progress_bar(cfg.optim.steps, "train", "step", enabled=self.progress, initial=self.step)
        last_terms: dict[str, float] = {}
        try:
            with faults.stop_signals(announce=self.rank == 0) as received, \
                    faults.peer_failures(self.rank, self.world, lambda: self.step, self.last_path):
                for batch in self._batches(loader, received):
                    objective, finite, stop = self._step(batch, interrupted=bool(received))
                    self.step += 1
                    if time_limit is not None and self._out_of_time(start, time_limit):
                        self.final_step = self.step
                    terms = mean_over_processes(objective.terms, self.world) if finite else None
                    if terms is not None:
                        last_terms = {k: float(v) for k, v in terms.items()}
                    saved = self._report(terms, objective.visuals) if self.rank == 0 else False
                    if self.skipped.too_many:
                        self._stop(faults.diverged(self.step, self.skipped.in_a_row, self.last_path), saved)
                    if stop and self.step < self.final_step:  # a signal during the last step: the run is done anyway
                        signum = received[0] if received else signal.SIGTERM
                        self._stop(faults.interrupted(signum, self.step, self.last_path), saved)
                    bar.update(1)
                    if last_terms:
                        bar.set_postfix(loss=f"{last_terms['total']:.4f}", refresh=False)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()
            if self.run_lock is not None:
                self.run_lock.release()
        return last_terms

    def _batches(self, loader, received: list[int]):
        """The loader's batches until the last step."""
        batches = iter(loader)
        while self.step < self.final_step:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError:
                # A signal sent to every process of the job (a scheduler's) also ends the loader's
                # workers; between two steps the state is whole, so save it.
                if not received:
                    raise
                self._stop(faults.interrupted(received[0], self.step, self.last_path), saved=False)
            yield batch

    def _step(self, batch: dict[str, torch.Tensor], interrupted: bool) -> tuple[Objective, bool, bool]:
        """One optimisation step: (its objective, whether it was finite and taken, whether any
        process received a stop signal). A non-finite step changes nothing and is counted."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step) * group.get("lr_scale", 1.0)
        images = batch["images"].to(self.device, non_blocking=True)
        images_raw = batch["images_raw"].to(self.device, non_blocking=True)
        K = batch["K"].to(self.device, non_blocking=True)
        with_visuals = self.rank == 0 and self.step % cfg.train.image_every == 0
        buffers = faults.saved_buffers(self.model)
        turns = self._turns(images.shape[0], cfg.data.snippet_length - 1) if cfg.loss.turn_weight > 0 else None
        objective = batch_objective(self.net, images, images_raw, K, cfg.loss, cfg.data.snippet_length, turns,
                                    stride_factor=float(self.step >= cfg.loss.stride_from_step),
                                    shift_factor=float(self.step >= cfg.loss.shift_from_step),
                                    use_masks=masks_active(cfg, self.step), with_visuals=with_visuals,
                                    virtual=self._virtual_motion(images.shape[0], cfg.data.snippet_length - 1))
        self.optimizer.zero_grad(set_to_none=True)
        finite, stop = faults.agree(objective.loss, interrupted, self.world)
        if finite:
            objective.loss.backward()
            finite = faults.gradients_finite(self.model)
        elif self.world > 1:
            faults.zero_backward(self.model)
        if finite:
            self.optimizer.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
        else:
            faults.restore_buffers(self.model, buffers)
        self.skipped.record(finite)
        if not finite and self.rank == 0:
            print(self.skipped.warning(self.step, objective.loss), file=sys.stderr)
            self.writer.add_scalar("train/skipped_steps", self.skipped.total, self.step)
        return objective, finite, stop

    def _step_seed(self) -> int:
        """The seed of this step's random draws in this process (`train.seed`, the step, the rank), so
        that a resumed run draws what the straight one drew."""
        return (self.config.train.seed * 1_000_003 + self.step) * 1024 + self.rank

    def _turns(self, batch: int, num_sources: int) -> torch.Tensor:
        """(batch, num_sources) turns of the sources (`loss.turn_weight`), radians, uniform in
        ± `loss.turn_degrees`, drawn from `_step_seed`."""
        return random_turns(batch, num_sources, self.config.loss.turn_degrees, self._step_seed()).to(self.device)

    def _virtual_motion(self, batch: int, num_sources: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The moved cameras of `loss.virtual_weight` (`random_virtual_motion`) from its first step on,
        drawn from `_step_seed` (odd: never the turns' seed of the same step); None when off."""
        loss = self.config.loss
        if loss.virtual_weight <= 0 or self.step < loss.virtual_from_step:
            return None
        seed = self._step_seed() * 2 + 1
        scales, yaws = random_virtual_motion(batch, num_sources, loss.virtual_spread, loss.virtual_degrees, seed)
        return scales.to(self.device), yaws.to(self.device)

    def _report(self, terms: dict[str, torch.Tensor] | None, visuals: dict[str, torch.Tensor] | None) -> bool:
        """Rank 0 after a step: log it (if it was taken), validate and checkpoint when due; whether
        `last` was saved."""
        cfg = self.config
        final = self.step == self.final_step
        if terms is not None and ((self.step - 1) % cfg.train.log_every == 0 or final):
            self.log_scalars(terms)
        if terms is not None and visuals is not None:  # visuals come on the steps that log images
            self.log_images(visuals)
        if final:
            self.recalibrate_batch_norm()
        if self.val_scenes and (self.step % cfg.train.val_every == 0 or final) and self.validate():
            if not final:  # the weights `best` keeps are used with their own statistics too
                self.recalibrate_batch_norm()
            self.save(BEST)
        if self.step % cfg.train.checkpoint_every == 0 or final:
            self.save(LAST)
            return True
        return False

    def _stop(self, error: MasksfmError, saved: bool) -> None:
        """End the run with `error`, `last` saved (by rank 0, once every process got here)."""
        if self.rank == 0 and not saved:
            self.save(LAST)
        if self.world > 1:
            dist.barrier()
        raise error

    def _out_of_time(self, start: float, time_limit: float) -> bool:
        """Whether the budget is spent; rank 0's clock decides for every process."""
        out = torch.tensor(float(time.monotonic() - start >= time_limit), device=self.device)
        if self.world > 1:
            dist.broadcast(out, 0)
        return bool(out)

    # --- checkpoints and logs ------------------------------------------------------------------

    @property
    def used_model(self) -> nn.Module:
        """The model a run is used with: the weight average (`optim.ema_decay`), or the trained model."""
        return self.model if self.averaged is None else self.averaged.module

    def save(self, name: str = LAST) -> Path:
        tensors = prefixed(self.used_model.state_dict(), "model")
        if self.averaged is not None:
            tensors.update(prefixed(self.model.state_dict(), "trained"))
            tensors["averaged.n"] = self.averaged.n_averaged
        optim_tensors, optim_meta = optimizer_to_tensors(self.optimizer)
        tensors.update(optim_tensors)
        tensors.update(rng_to_tensors())
        best = None if math.isinf(self.best_abs_rel) else self.best_abs_rel
        meta = {"step": self.step, "config": self.config.to_dict(), "optimizer": optim_meta, "best_abs_rel": best,
                "skipped_steps": self.skipped.total}
        path = self.run_dir / CHECKPOINT_DIR / name
        save_checkpoint(path, tensors, meta)
        return path

    def log_scalars(self, terms: dict[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            group = "masks" if key.startswith("mask_") else "loss"
            self.writer.add_scalar(f"{group}/{key.removeprefix('mask_')}", float(value), self.step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)

    def log_images(self, visuals: dict[str, torch.Tensor]) -> None:
        from masksfm.visualize import colorize_disparity

        for key, value in visuals.items():
            if key == "disparity":
                rgb = colorize_disparity(value[0].float().cpu().numpy())
                self.writer.add_image("images/disparity", rgb, self.step, dataformats="HWC")
            elif key.startswith("mask_"):
                self.writer.add_image(f"masks/{key.removeprefix('mask_')}", value.float().cpu().clamp(0, 1), self.step)
            else:
                self.writer.add_image(f"images/{key}", value.float().cpu().clamp(0, 1), self.step)

    def recalibrate_batch_norm(self) -> None:
        """The used model's pose net's batch-norm statistics recomputed ("precise BN", torch's
        `update_bn`: their plain mean over the batches) over `train.batch_norm_batches` batches of
        training snippets without augmentation (at the training strides), spread evenly over the
        split, of the batch size each process trains on. Training leaves them an exponential average
        over its last few augmented batches; inference reads them (the default's pose net has 20
        batch norms). Rank 0, after the last step and before each save of `best`: only the
        statistics change, not a weight. The depth net's are left as they are (DispNet has none)."""
        cfg = self.config
        size = cfg.optim.batch_size // self.world
        snippets = SnippetDataset(self.dataset.scenes, cfg.data.height, cfg.data.width, cfg.data.snippet_length,
                                  augment=False, strides=cfg.data.strides, uneven_strides=cfg.data.uneven_strides)
        count = min(len(snippets) // size, cfg.train.batch_norm_batches) * size
        if count == 0:  # off (or fewer snippets than a batch): the statistics stay as training left them
            return
        picks = torch.linspace(0, len(snippets) - 1, count).round().long().tolist()
        batches = (torch.stack([snippets[i]["images"] for i in picks[start:start + size]])
                   for start in range(0, count, size))
        update_bn(batches, SnippetPoses(self.used_model.pose_net), self.device)

    def validate(self) -> bool:
        """abs_rel on the val split (data with depth), logged; whether it is the best so far (the
        caller then saves checkpoints/best)."""
        metrics = evaluate_depth(self.used_model.depth_net, self.val_scenes, self.config.data.height, self.config.data.width,
                                 device=self.device, max_images=self.config.train.val_images)
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", value, self.step)
        self.model.train()
        if metrics["abs_rel"] < self.best_abs_rel:
            self.best_abs_rel = metrics["abs_rel"]
            return True
        return False


def run_training(data: Path, out: Path, config: Config, resume: bool = False, device: str | None = None,
                 progress: bool = True, time_limit: float | None = None) -> dict[str, float]:
    """Train (or resume) a run; the entry point of `masksfm train`. `time_limit`: seconds, see
    `Trainer.train`."""
    if not Path(data).is_dir():
        raise MasksfmError(f"{data}: no such dataset folder")
    trainer = Trainer(data, out, config, resume=resume, device=device, progress=progress)
    start = time.time()
    terms = trainer.train(time_limit)
    if trainer.rank == 0 and progress:
        print(f"trained to step {trainer.step} in {time.time() - start:.0f} s; "
              f"checkpoint {trainer.run_dir / CHECKPOINT_DIR / LAST}", file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()
    return terms


# The train command's flags and the config keys they set; a flag wins over the YAML and --set.
TRAIN_FLAGS = {"steps": ("optim", "steps"), "batch_size": ("optim", "batch_size"), "height": ("data", "height"),
               "width": ("data", "width"), "seed": ("train", "seed"), "checkpoint_every": ("train", "checkpoint_every")}


def training_config(run: Path, config: str | Path | None = None, overrides: list[str] = (), resume: bool = False,
                    **flags) -> Config:
    """The configuration of a `masksfm train` run, resolved in one place.

    A resumed run continues with the config stored in its last checkpoint (`config` must then be
    None); otherwise the defaults, then `config` (a YAML path or a shipped name). Then the
    `a.b=value` overrides, then the flags of `TRAIN_FLAGS` that are not None.
    """
    resolved = _resumed_config(run) if resume else None
    if resolved is not None and config is not None:
        raise MasksfmError(f"--resume continues {run} with its own config; drop --config (use --set to change a value)")
    if resolved is None:
        try:
            resolved = load_config(config)
        except MasksfmError as error:
            raise MasksfmError(error if str(config) in str(error) else f"--config {config}: {error}") from None
    try:
        resolved = apply_overrides(resolved, overrides, check=False)
    except MasksfmError as error:
        raise MasksfmError(error if "--set" in str(error) else f"--set: {error}") from None
    unknown = set(flags) - set(TRAIN_FLAGS)
    if unknown:
        raise TypeError(f"training_config: unknown flags {sorted(unknown)}")
    for flag, value in flags.items():
        if value is not None:
            section, key = TRAIN_FLAGS[flag]
            setattr(getattr(resolved, section), key, value)
    validate(resolved)  # once, with the flags (a --set model.pose_downsample may need the --height given)
    return resolved


def _resumed_config(run: Path) -> Config | None:
    """The configuration stored in a run's last checkpoint (what `--resume` continues with)."""
    last = Path(run) / CHECKPOINT_DIR / LAST
    if not last.is_file():
        return None
    _, meta = load_checkpoint(last)
    try:
        return stored_config(meta["config"])
    except MasksfmError as error:
        raise MasksfmError(f"{last}: the configuration stored in the checkpoint does not load ({error})") from None
