"""What can go wrong on a long training run, kept out of the trainer's loop (docs/design.md §1).

- A step whose loss or gradient is not finite is skipped (`agree`, `gradients_finite`,
  `SkippedSteps`); too many in a row stop the run (`diverged`) with the last good weights saved.
- SIGINT / SIGTERM finish the step in progress, save and stop (`stop_signals`, `interrupted`).
- A process of a DDP job that dies ends the others with a message, not a hang (`peer_failures`).

In a DDP job every decision is taken by all processes together, so none waits forever in a
collective the others skipped.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from masksfm.errors import MasksfmError, TrainingInterrupted

# Non-finite steps in a row that stop a run: one bad batch is noise, ten in a row is divergence.
MAX_NONFINITE_IN_A_ROW = 10
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def agree(loss: torch.Tensor, interrupted: bool, world: int) -> tuple[bool, bool]:
    """(the loss is finite, a stop signal came), as all processes see it, before the backward.

    The loss and the signals are per process: one all-reduce (max) of both flags keeps every
    process on the same path. A non-finite loss gets no backward at all: with NaN coordinates,
    grid_sample's CPU backward reads out of bounds (a segfault, not a NaN).
    """
    finite = torch.isfinite(loss.detach()).all()
    flags = torch.stack([~finite, torch.tensor(interrupted, device=finite.device)]).float()
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, stop = flags.tolist()
    return not bad, bool(stop)


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient is finite (after DDP's all-reduce, the same answer in every process).

    One sum per gradient: a NaN or an infinite element makes it non-finite (so does a sum beyond
    float32's range, a step as well skipped). About 9x cheaper than `isfinite` on every element
    (4 vs 38 ms for DispNet's 31.6 M gradients, 2 cores; docs/results.md).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([g.sum() for g in grads]).isfinite().all())


def zero_backward(model: nn.Module) -> None:
    """A backward of zeros: DDP waits for every parameter's gradient once a forward ran, also on a
    step that the processes agreed to skip."""
    sum(p.sum() for p in model.parameters()).mul(0).backward()


def saved_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Copies of the model's buffers (batch normalisation's running statistics and counts, which a
    forward in training mode updates), to put back when the step is skipped: a non-finite batch
    would otherwise leave NaN statistics behind for evaluation. (About 10 k numbers for the default.)"""
    return [b.detach().clone() for b in model.buffers()]


def restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


class SkippedSteps:
    """The count of skipped steps: in all (kept in checkpoints) and in a row (too many stop the run)."""

    def __init__(self, total: int = 0):
        self.total, self.in_a_row = total, 0

    def record(self, finite: bool) -> None:
        if finite:
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.total += 1

    @property
    def too_many(self) -> bool:
        return self.in_a_row >= MAX_NONFINITE_IN_A_ROW

    def warning(self, step: int, loss: torch.Tensor) -> str:
        return (f"masksfm: warning: step {step}: non-finite loss or gradient (loss {float(loss.detach()):.4g}); "
                f"step skipped ({self.in_a_row} in a row, {self.total} in all)")


def diverged(step: int, in_a_row: int, checkpoint: Path) -> MasksfmError:
    """The error that stops a run after `in_a_row` skipped steps up to `step`."""
    return MasksfmError(
        f"stopped at step {step}: {in_a_row} steps in a row had a non-finite loss or gradient (a diverging "
        f"run, or bad data in those batches); the last good weights, from before step {step - in_a_row}, "
        f"are saved in {checkpoint}; lower optim.lr or check the data, then continue with --resume")


def interrupted(signum: int, step: int, checkpoint: Path) -> TrainingInterrupted:
    """The error that stops a run on a signal, after the step in progress is saved."""
    return TrainingInterrupted(f"{signal.Signals(signum).name} at step {step}: checkpoint saved in {checkpoint}; "
                               "continue with --resume", signum)


@contextmanager
def stop_signals(announce: bool = True):
    """SIGINT / SIGTERM: the loop finishes the step in progress, saves and stops; yields the list of
    signals received so far.

    A second SIGINT stops at once (the atomic save keeps the previous checkpoint whole); a second
    SIGTERM does not, since torchrun and schedulers send one after a user's Ctrl-C and follow up
    with SIGKILL after their grace period anyway. `announce`: say so on stderr (rank 0).
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
            if announce:
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
def peer_failures(rank: int, world: int, step: Callable[[], int], checkpoint: Path):
    """Another process of a DDP job died: end this one with a message, not a collective's traceback.

    `step`: the step reached, asked when it happens; `checkpoint`: where the job resumes from.
    """
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        lost = isinstance(error, dist.DistError) or any(
            word in text for word in ("gloo", "Gloo", "NCCL", "Connection", "connection", "peer", "Timed out"))
        if world == 1 or not lost:
            raise
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        # gloo: "[.../pair.cc:537] Read error [127.0.0.1]:4257: Connection reset by peer. This is ..."
        first = first.split("] ", 1)[1] if first.startswith("[") and "] " in first else first
        first = first.split(". ")[0][:160]
        raise MasksfmError(
            f"process {rank} of {world}: another process of the job died at step {step()} "
            f"({first}); restart the job with --resume to continue from {checkpoint}") from None

