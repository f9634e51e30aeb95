"""One training per run folder (issue 17), with the real command line in subprocesses: a second
`masksfm train` (or `--resume`) into a folder a live training holds is refused at once and leaves
the running training alone; a folder left by a killed training (`kill -9`) does not block `--resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from masksfm.checkpoints import LAST, load_checkpoint
from masksfm.runlock import LOCK_NAME, check_run_folder, hold_run_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
TINY = ["--height", "32", "--width", "104", "--batch-size", "1", "--device", "cpu", "--checkpoint-every", "1",
        "--set", "train.val_every=100000"]
NO_WORKERS = ["--set", "data.workers=0"]


def masksfm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "masksfm", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600)


def start_training(data: Path, run: Path, *extra: str) -> subprocess.Popen:
    """A real training that would run for hours: the folder's holder until the test ends it."""
    return subprocess.Popen([sys.executable, "-m", "masksfm", "train", str(data), "--out", str(run),
                             "--steps", "100000", *TINY, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def wait_until(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the training ended first: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def lock_pid(run: Path) -> int | None:
    try:
        return json.loads((run / LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def step_of(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoints" / LAST)[1]["step"]
    except Exception:  # not written yet (or being renamed into place)
        return 0


@pytest.mark.slow
def test_a_live_training_is_never_joined(synth_dataset, tmp_path):
    run = tmp_path / "run"
    holder = start_training(synth_dataset, run, *NO_WORKERS)
    try:
        wait_until(lambda: step_of(run) >= 1, holder)  # training, checkpoints written
        assert lock_pid(run) == holder.pid
        config = (run / "config.yaml").read_bytes()
        events = sorted(run.glob("events.out.tfevents.*"))
        for extra in ([], ["--resume"]):
            started = time.monotonic()
            refused = masksfm("train", synth_dataset, "--out", run, "--steps", "2", *TINY, *NO_WORKERS, *extra)
            seconds = time.monotonic() - started
            assert refused.returncode == 2, refused.stderr[-3000:]
            line = refused.stderr.strip()
            assert len(line.splitlines()) == 1 and "Traceback" not in line, line
            assert line.startswith(f"masksfm: error: {run}: another training is running in this run folder "
                                   f"(pid {holder.pid} on "), line
            print(f"refused {extra} in {seconds:.1f} s: {line}")
            assert holder.poll() is None  # still running
        # The refused commands wrote nothing: no second configuration, no second TensorBoard file.
        assert (run / "config.yaml").read_bytes() == config and sorted(run.glob("events.out.tfevents.*")) == events
        # ... and the training goes on: it checkpoints later steps, and stops cleanly on SIGTERM.
        reached = step_of(run)
        wait_until(lambda: step_of(run) > reached, holder)
        holder.send_signal(signal.SIGTERM)
        _, err = holder.communicate(timeout=600)
        assert holder.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert step_of(run) > reached
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.slow
def test_a_killed_training_does_not_block_resume(synth_dataset, tmp_path):
    """With the default DataLoader workers: forked children of the trainer, which outlive it for a
    few seconds after a kill -9 (a lock they inherited would block the --resume)."""
    run = tmp_path / "run"
    holder = start_training(synth_dataset, run)
    try:
        wait_until(lambda: step_of(run) >= 1, holder)
    finally:
        holder.kill()  # SIGKILL: no handler runs, the lock file stays with the dead pid in it
        holder.wait()
    assert lock_pid(run) == holder.pid
    step = step_of(run)
    resumed = masksfm("train", synth_dataset, "--out", run, "--resume", "--steps", step + 1, *TINY, *NO_WORKERS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_of(run) == step + 1 and lock_pid(run) not in (None, holder.pid)


def test_a_hold_in_this_process_survives_its_own_checks(synth_dataset, tmp_path):
    """A process loses a POSIX lock when it closes *any* descriptor of the file: a check (or a second
    Trainer) on a folder this process holds must not open the lock file again."""
    run = tmp_path / "run"
    run.mkdir()
    first = hold_run_folder(run)
    second = hold_run_folder(run)  # re-entrant within the process
    check_run_folder(run)
    second.release()
    refused = masksfm("train", synth_dataset, "--out", run, "--steps", "1", *TINY, *NO_WORKERS)
    assert refused.returncode == 2 and f"(pid {os.getpid()} on " in refused.stderr, refused.stderr[-3000:]
    first.release()
    hold_run_folder(run).release()  # free again
    assert lock_pid(run) == os.getpid()
