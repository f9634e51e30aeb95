"""The trainer: data, model, objective, Adam; checkpoints, TensorBoard, validation; DDP via torchrun.

Reads top to bottom as the method: for each step, a batch of snippets goes through the depth net
(every frame) and the pose net, `compute_objective` builds the masked bidirectional loss, Adam
steps. Rank 0 logs, validates and writes checkpoints; `--resume` restores weights, optimizer, RNG
and the data position, so a resumed run continues bit for bit.

What can go wrong on a long run is handled in the loop: a step whose loss or gradient is not finite
is skipped (a warning, and `train/skipped_steps` in TensorBoard), and too many in a row stop the run
with the last good weights saved; SIGINT / SIGTERM finish the step in progress, save `last` and
exit; a process of a DDP job that dies ends the others with a message instead of a hang.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

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
from masksfm.config import Config, dump_yaml, from_dict
from masksfm.data.dataset import SnippetDataset, make_loader
from masksfm.data.layout import load_split, split_path
from masksfm.errors import MasksfmError, TrainingInterrupted
from masksfm.inference import evaluate_depth
from masksfm.model import build_model, pick_device
from masksfm.objective import compute_objective
from masksfm.progress import progress_bar
from masksfm.runlock import hold_run_folder

LR_DECAY = 0.1
# Non-finite steps in a row that stop a run: one bad batch is noise, ten in a row is divergence.
MAX_NONFINITE_IN_A_ROW = 10
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
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


class Trainer:
    """One training run in `run_dir` on the data in `data_root` (DESIGN §1, "Runs and checkpoints")."""

    def __init__(self, data_root: Path, run_dir: Path, config: Config, resume: bool = False, device: str | None = None,
                 progress: bool = True):
        self.data_root, self.run_dir, self.config = Path(data_root), Path(run_dir), config
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

        self.step, self.best_abs_rel, self.skipped_steps = 0, math.inf, 0
        checkpoint = resume_checkpoint(self.run_dir) if resume else None
        tensors = None
        if checkpoint is not None:
            tensors, meta = load_checkpoint(checkpoint)
            self.step, self.best_abs_rel = meta["step"], meta.get("best_abs_rel") or math.inf
            self.skipped_steps = meta.get("skipped_steps", 0)

        torch.manual_seed(config.train.seed)
        self.model = build_model(config).to(self.device)
        # fused: one kernel over all parameters instead of a dozen passes per step; on the CPU it
        # takes the update of the 33 M parameters (DispNet and pose net) from ~150 to ~40 ms of a
        # ~1 s step at 64x208.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.optim.lr,
                                          betas=(config.optim.beta1, config.optim.beta2),
                                          weight_decay=config.optim.weight_decay,
                                          fused=self.device.type in FUSED_ADAM_DEVICES)
        if tensors is not None:
            load_weights(self.model, unprefixed(tensors, "model"), checkpoint)
            try:
                self.optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
            except (ValueError, KeyError) as error:
                raise MasksfmError(f"{checkpoint}: its optimizer state does not fit this model ({error})") from None
            restore_rng(tensors)
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

        scenes = load_split(self.data_root, config.data.train_split)
        self.dataset = SnippetDataset(scenes, config.data.height, config.data.width, config.data.snippet_length,
                                      augment=config.data.augment, seed=config.train.seed,
                                      source=str(split_path(self.data_root, config.data.train_split)))
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

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self, name: str = LAST) -> Path:
        tensors = prefixed(self.model.state_dict(), "model")
        optim_tensors, optim_meta = optimizer_to_tensors(self.optimizer)
        tensors.update(optim_tensors)
        tensors.update(rng_to_tensors())
        best = None if math.isinf(self.best_abs_rel) else self.best_abs_rel
        meta = {"step": self.step, "config": self.config.to_dict(), "optimizer": optim_meta, "best_abs_rel": best,
                "skipped_steps": self.skipped_steps}
        path = self.run_dir / CHECKPOINT_DIR / name
        save_checkpoint(path, tensors, meta)
        return path

    # --- logging -------------------------------------------------------------------------------

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

    def validate(self) -> None:
        """abs_rel on the val split (data with depth); a better one becomes checkpoints/best."""
        metrics = evaluate_depth(self.model.depth_net, self.val_scenes, self.config.data.height, self.config.data.width,
                                 device=self.device, max_images=self.config.train.val_images)
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", value, self.step)
        if metrics["abs_rel"] < self.best_abs_rel:
            self.best_abs_rel = metrics["abs_rel"]
            self.save(BEST)
        self.model.train()

    def _out_of_time(self, start: float, time_limit: float) -> bool:
        """Whether the budget is spent; rank 0's clock decides for every process."""
        out = torch.tensor(float(time.monotonic() - start >= time_limit), device=self.device)
        if self.world > 1:
            dist.broadcast(out, 0)
        return bool(out)

    # --- the loop ------------------------------------------------------------------------------

    def train(self, time_limit: float | None = None) -> dict[str, float]:
        """Run until `optim.steps`, or until `time_limit` seconds have passed (the step then reached
        is validated and checkpointed as if it were the last); returns the last step's loss terms."""
        cfg = self.config
        steps = cfg.optim.steps
        start = time.monotonic()
        loader = make_loader(self.dataset, cfg.optim.batch_size, cfg.train.seed, workers=cfg.data.workers,
                             rank=self.rank, world_size=self.world, start_step=self.step,
                             max_steps=steps)
        self.model.train()
        bar = progress_bar(steps, "train", "step", enabled=self.progress, initial=self.step)
        last_terms: dict[str, float] = {}
        nonfinite_in_a_row = 0
        try:
            with self._stop_signals() as received, self._peer_failures():
                batches = iter(loader)
                while self.step < steps:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except RuntimeError:
                        # A signal sent to every process of the job (a scheduler's) also ends the
                        # loader's workers; between two steps the state is whole, so save it.
                        if not received:
                            raise
                        self._stop_interrupted(received[0], saved=False)
                    for group in self.optimizer.param_groups:
                        group["lr"] = learning_rate(cfg, self.step)
                    images = batch["images"].to(self.device, non_blocking=True)
                    images_raw = batch["images_raw"].to(self.device, non_blocking=True)
                    K = batch["K"].to(self.device, non_blocking=True)
                    log_images = self.rank == 0 and self.step % cfg.train.image_every == 0
                    out = self.net(images)
                    objective = compute_objective(out, images_raw, K, cfg.loss,
                                                  use_masks=masks_active(cfg, self.step), with_visuals=log_images)
                    self.optimizer.zero_grad(set_to_none=True)
                    finite, stop = self._agree(objective.loss, bool(received))
                    if finite:
                        objective.loss.backward()
                        finite = self._gradients_finite()
                    elif self.world > 1:
                        # DDP waits for every parameter's gradient once a forward ran: give it zeros.
                        sum(p.sum() for p in self.model.parameters()).mul(0).backward()
                    if finite:
                        self.optimizer.step()
                        nonfinite_in_a_row = 0
                    else:
                        nonfinite_in_a_row += 1
                        self._skip(objective.loss, nonfinite_in_a_row)
                    self.step += 1
                    if time_limit is not None and self._out_of_time(start, time_limit):
                        steps = self.step

                    if finite:
                        terms = {k: v.detach() for k, v in objective.terms.items()}
                        if self.world > 1:
                            keys = sorted(terms)
                            stacked = torch.stack([terms[k].float() for k in keys])
                            dist.all_reduce(stacked)
                            terms = dict(zip(keys, stacked / self.world))
                        last_terms = {k: float(v) for k, v in terms.items()}
                    saved = False
                    if self.rank == 0:
                        if finite and ((self.step - 1) % cfg.train.log_every == 0 or self.step == steps):
                            self.log_scalars(terms)
                        if finite and log_images and objective.visuals is not None:
                            self.log_images(objective.visuals)
                        if self.val_scenes and (self.step % cfg.train.val_every == 0 or self.step == steps):
                            self.validate()
                        if self.step % cfg.train.checkpoint_every == 0 or self.step == steps:
                            self.save(LAST)
                            saved = True
                    if nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                        self._stop_diverged(nonfinite_in_a_row, saved)
                    if stop and self.step < steps:  # a signal during the last step: the run is done anyway
                        self._stop_interrupted(received[0] if received else signal.SIGTERM, saved)
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

    # --- what can go wrong ---------------------------------------------------------------------

    def _agree(self, loss: torch.Tensor, interrupted: bool) -> tuple[bool, bool]:
        """(the loss is finite, a stop signal came), as all processes see it, before the backward.

        The loss and the signals are per process: one all-reduce (max) of both flags keeps every
        process on the same path, so none waits forever in a collective the others skipped. A
        non-finite loss gets no backward at all: with NaN coordinates, grid_sample's CPU backward
        reads out of bounds (a segfault, not a NaN).
        """
        finite = torch.isfinite(loss.detach()).all()
        flags = torch.stack([~finite, torch.tensor(interrupted, device=finite.device)]).float()
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad, stop = flags.tolist()
        return not bad, bool(stop)

    def _gradients_finite(self) -> bool:
        """Whether every gradient is finite (after DDP's all-reduce, the same answer in every process)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def _skip(self, loss: torch.Tensor, in_a_row: int) -> None:
        """A step with a non-finite loss or gradient changes nothing: warn and count it."""
        self.skipped_steps += 1
        if self.rank == 0:
            print(f"masksfm: warning: step {self.step}: non-finite loss or gradient (loss {float(loss.detach()):.4g}); "
                  f"step skipped ({in_a_row} in a row, {self.skipped_steps} in all)", file=sys.stderr)
            self.writer.add_scalar("train/skipped_steps", self.skipped_steps, self.step)

    def _stop_diverged(self, in_a_row: int, saved: bool) -> None:
        path = self.run_dir / CHECKPOINT_DIR / LAST
        if self.rank == 0 and not saved:
            self.save(LAST)
        if self.world > 1:
            dist.barrier()
        raise MasksfmError(
            f"stopped at step {self.step}: {in_a_row} steps in a row had a non-finite loss or gradient (a diverging "
            f"run, or bad data in those batches); the last good weights, from before step {self.step - in_a_row}, "
            f"are saved in {path}; lower optim.lr or check the data, then continue with --resume")

    def _stop_interrupted(self, signum: int, saved: bool) -> None:
        path = self.run_dir / CHECKPOINT_DIR / LAST
        if self.rank == 0 and not saved:
            self.save(LAST)
        if self.world > 1:
            dist.barrier()
        raise TrainingInterrupted(f"{signal.Signals(signum).name} at step {self.step}: checkpoint saved in {path}; "
                                  "continue with --resume", signum)

    @contextmanager
    def _stop_signals(self):
        """SIGINT / SIGTERM: finish the step in progress, save `last`, stop (yields the signals received).

        A second SIGINT stops at once (the atomic save keeps the previous checkpoint whole); a second
        SIGTERM does not, since torchrun and schedulers send one after a user's Ctrl-C and follow up
        with SIGKILL after their grace period anyway.
        """
        received: list[int] = []
        if threading.current_thread() is not threading.main_thread():
            yield received  # signal handlers can only be set from the main thread
            return

        def handler(signum, frame):
            if received and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if not received:
                # Loader workers may die of the same signal: the step in progress must not be broken
                # off by the loader's SIGCHLD handler raising in the middle of it.
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                if self.rank == 0:
                    # os.write, not print: a handler can run in the middle of another write to stderr.
                    os.write(2, f"masksfm: {signal.Signals(signum).name}: stopping after this step, with a "
                             "checkpoint\n".encode())
            received.append(signum)

        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGCHLD, *STOP_SIGNALS)}
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)
        try:
            yield received
        finally:
            for signum, old in previous.items():
                if old is not None:  # None: a handler not set from Python; nothing to restore
                    signal.signal(signum, old)

    @contextmanager
    def _peer_failures(self):
        """Another process of a DDP job died: end this one with a message, not a collective's traceback."""
        try:
            yield
        except RuntimeError as error:
            text = str(error)
            lost = isinstance(error, dist.DistError) or any(
                word in text for word in ("gloo", "Gloo", "NCCL", "Connection", "connection", "peer", "Timed out"))
            if self.world == 1 or not lost:
                raise
            last = self.run_dir / CHECKPOINT_DIR / LAST
            first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
            # gloo: "[.../pair.cc:537] Read error [127.0.0.1]:4257: Connection reset by peer. This is ..."
            first = first.split("] ", 1)[1] if first.startswith("[") and "] " in first else first
            first = first.split(". ")[0][:160]
            raise MasksfmError(
                f"process {self.rank} of {self.world}: another process of the job died at step {self.step} "
                f"({first}); restart the job with --resume to continue from {last}") from None


def configure_from_args(config: Config, args) -> Config:
    """Apply the train command's flags (they win over the YAML and --set)."""
    for flag, (section, key) in {"steps": ("optim", "steps"), "batch_size": ("optim", "batch_size"),
                                 "height": ("data", "height"), "width": ("data", "width"),
                                 "seed": ("train", "seed"), "checkpoint_every": ("train", "checkpoint_every")}.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(getattr(config, section), key, value)
    return config


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


def resumed_config(run: Path) -> Config | None:
    """The configuration stored in a run's last checkpoint (what `--resume` continues with)."""
    last = Path(run) / CHECKPOINT_DIR / LAST
    if not last.is_file():
        return None
    _, meta = load_checkpoint(last)
    try:
        return from_dict(meta["config"])
    except MasksfmError as error:
        raise MasksfmError(f"{last}: the configuration stored in the checkpoint does not load ({error})") from None

