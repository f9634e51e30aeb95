"""One training per run folder: an advisory lock on `RUN/.lock`, held while a training uses the folder.

Two trainings writing one run folder overwrite each other's checkpoints. The first to start holds
an OS lock on `RUN/.lock` and writes its pid, host, start time and command line into it; a second
is refused at once, with one line naming the folder and the holder.

The lock is a POSIX record lock (`fcntl.lockf`), for two reasons:
- the kernel drops it when its process ends, however it ends: a folder left by a `kill -9` (or a
  crash, or a lost node) never blocks `--resume`, with no stale pid to guess about;
- it belongs to the process, and a forked child (a DataLoader worker) does not inherit it. A
  `flock` would be shared with the workers, so after a `kill -9` of the trainer it would stay held
  until they noticed and exited, seconds later.
One POSIX rule shapes the code: a process that closes *any* descriptor of the file loses its lock
on it, so a process opens the lock file once per folder (`_held`) and re-entering (a second Trainer
on the same folder in one process, as tests do) counts up instead of opening it again.

Without `fcntl` (Windows) the folder is not guarded. On a file system without locks (some network
or FUSE mounts) a warning says so and the training runs unguarded.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from masksfm.errors import MasksfmError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"


class _Folder:
    """A run folder this process holds: the lock file's descriptor (None: unguarded) and the holds on it."""

    def __init__(self, key: tuple[int, int], fd: int | None):
        self.key, self.fd, self.holds = key, fd, 0


_held: dict[tuple[int, int], _Folder] = {}  # (st_dev, st_ino) of a run folder -> its lock, in this process


class RunLock:
    """One hold on a run folder. `release()` (or dropping the object) ends it; the last hold of the
    process releases the lock."""

    def __init__(self, folder: _Folder):
        self._folder = folder
        folder.holds += 1

    def release(self) -> None:
        folder, self._folder = self._folder, None
        if folder is None:
            return  # released already
        folder.holds -= 1
        if folder.holds == 0:
            _held.pop(folder.key, None)
            if folder.fd is not None:
                os.close(folder.fd)  # closing it releases the lock
                folder.fd = None

    def __del__(self):
        # A Trainer whose set-up failed is dropped without training: its hold ends with it. (At
        # interpreter exit this may run with the module half torn down; the kernel releases then.)
        try:
            self.release()
        except Exception:
            pass


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file (empty while it is being written)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f" (pid {info['pid']} on {info['host']}, since {info['started']}: {info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _command() -> str:
    """This process's command line, shortened (`python -m masksfm` for the module's entry point)."""
    argv = sys.argv if sys.argv and sys.argv[0] else ["python"]
    program = Path(argv[0])
    name = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    text = " ".join([name, *argv[1:]])
    return text if len(text) <= 200 else text[:197] + "..."


def hold_run_folder(run_dir: Path) -> RunLock:
    """Take the run folder for this process's training, or refuse if another training holds it.

    Args:
        run_dir: an existing run folder.
    Returns:
        The lock; `release()` it when the training ends (the kernel does if the process dies).
    Raises:
        MasksfmError: a live training in another process holds the folder.
    """
    run_dir = Path(run_dir)
    stat = os.stat(run_dir)
    key = (stat.st_dev, stat.st_ino)
    if key not in _held:
        _held[key] = _Folder(key, None if fcntl is None else _lock(run_dir))
    return RunLock(_held[key])


def _lock(run_dir: Path) -> int | None:
    """Lock `run_dir/.lock` and write this process into it: the open descriptor (None: unguarded)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as error:
        raise MasksfmError(f"{run_dir}: cannot write the run folder ({error.strerror or error})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _holder(fd) if error.errno in (errno.EACCES, errno.EAGAIN) else None
        os.close(fd)
        if holder is None:
            warnings.warn(f"{run_dir}: cannot lock the run folder ({error.strerror}); nothing stops a second "
                          "training from writing into it", stacklevel=3)
            return None
        raise MasksfmError(f"{run_dir}: another training is running in this run folder{holder}; wait for it to "
                           "end or stop it, or train into another --out") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": _command()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    return fd


def check_run_folder(run_dir: Path) -> None:
    """Refuse now, before torch loads, when another training holds `run_dir` (the Trainer takes the
    lock itself later). Under torchrun only rank 0 asks: rank 0 holds the folder for the job.

    Raises:
        MasksfmError: a live training in another process holds the folder.
    """
    if os.environ.get("RANK", "0") == "0" and Path(run_dir).is_dir():
        hold_run_folder(run_dir).release()
