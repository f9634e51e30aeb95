"""Run folders and checkpoints (docs/design.md §1, "Runs and checkpoints").

A checkpoint is one safetensors file: the model weights, the optimizer state and the RNG states as
tensors, and the step, configuration and masksfm version as JSON in the metadata header. It is
written to a temporary file in the same folder and renamed over the old one, so a kill never leaves
a half-written file. Nothing here ever unpickles: a `.pt` / `.pth` / pickle file is refused with
the command that converts it, because unpickling runs whatever code the file holds.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from masksfm import __version__
from masksfm.errors import MasksfmError

CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.safetensors", "best.safetensors"


TEMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    umask = os.umask(0o022)  # the only way to read it is to set it; done once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()
# What `torch.save` and `pickle` files are usually called; their bytes are checked too.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write tensors + JSON metadata atomically to `path` (temp file in the same folder, fsync, rename).

    Args:
        tensors: name -> tensor (moved to CPU, made contiguous; shared storage is cloned).
        metadata: JSON-serialisable values, stored under their keys as JSON strings.
    Raises:
        MasksfmError: the folder is not writable or the disk is full; `path` is then as it was.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {key: json.dumps(value) for key, value in metadata.items()}
    header["masksfm_version"] = json.dumps(__version__)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise MasksfmError(f"{path.parent}: cannot write a checkpoint there ({error.strerror or error})") from None
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); a checkpoint gets the permissions of any new file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as error:
        # safetensors reports a full disk / RLIMIT_FSIZE as its own error type.
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or str(error)
        raise MasksfmError(f"{path}: could not write the checkpoint ({reason}); the previous one, if any, "
                           "is untouched") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut after the rename keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temp files a killed save left in a checkpoint folder; returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if any(tmp.name.startswith(f".{name}.") for name in (LAST, BEST)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def refuse_pickle(path: Path, what: str = "checkpoint") -> None:
    """Raise a MasksfmError, saying how to convert it, when `path` is a pickle / `torch.save` file.

    Nothing of the file is unpickled: only its first bytes and its name are looked at.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return  # the loader reports a missing or unreadable file
    if len(head) >= 9 and head[8:9] == b"{":
        return  # safetensors: an 8-byte header length, then the JSON header
    zipped, pickled = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
    if not (zipped or pickled or path.suffix.lower() in PICKLE_SUFFIXES):
        return
    target = path.with_suffix(".safetensors")
    raise MasksfmError(
        f"{path}: a PyTorch/pickle file, refused: masksfm reads a {what} only from .safetensors, because "
        "unpickling runs any code the file holds. If you trust it and it is a flat state dict, convert it once: "
        f"python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('{path}', weights_only=True), "
        f"'{target}')\"" + (" (a masksfm checkpoint is what `masksfm train` writes)" if what == "checkpoint" else "")
    )


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint: (tensors, metadata with its JSON values decoded). Never unpickles.

    Raises:
        MasksfmError: the file is missing or not a masksfm safetensors checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MasksfmError(f"{path}: no such checkpoint file")
    refuse_pickle(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise MasksfmError(f"{path}: not a safetensors checkpoint ({error})") from None
    try:
        metadata = {key: json.loads(value) for key, value in header.items()}
    except json.JSONDecodeError:
        raise MasksfmError(f"{path}: corrupt checkpoint metadata") from None
    if "config" not in metadata:
        raise MasksfmError(f"{path}: a safetensors file but not a masksfm checkpoint (no config in its metadata)")
    return tensors, metadata


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`module.load_state_dict(state)`, or a MasksfmError naming `path` and the first key that does not fit
    (a checkpoint of another architecture, or a run resumed with another `model.depth`)."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing, e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape, e.g. {key!r} {tuple(state[key].shape)} "
                        f"instead of {tuple(expected[key].shape)}")
    if problems:
        raise MasksfmError(f"{path}: the weights do not fit the model of the configuration (another "
                           f"architecture?): {'; '.join(problems)}")
    module.load_state_dict(state)


def resolve_checkpoint(run: Path) -> Path:
    """`RUN` on the command line: a checkpoint file, or a run folder (best if present, else last)."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise MasksfmError(f"{run}: no such run folder or checkpoint file")
    for name in (BEST, LAST):
        candidate = run / CHECKPOINT_DIR / name
        if candidate.is_file():
            return candidate
    raise MasksfmError(f"{run}: no checkpoint in {run / CHECKPOINT_DIR} (train first, or pass a .safetensors file)")


def resume_checkpoint(run: Path) -> Path | None:
    """The checkpoint `--resume` continues from (`last`), or None with a warning when there is none yet."""
    last = Path(run) / CHECKPOINT_DIR / LAST
    if last.is_file():
        return last
    warnings.warn(f"{run}: no checkpoint to resume from yet; starting from the beginning", stacklevel=2)
    return None


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into tensors (per-parameter state) and JSON (the rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Rebuild an optimizer state dict from `optimizer_to_tensors`' output."""
    state: dict[int, dict] = {}
    for key, value in unprefixed(tensors, "optimizer").items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    for key, value in meta["scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_to_tensors() -> dict[str, torch.Tensor]:
    """The torch RNG states (CPU and each CUDA device) as uint8 tensors."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if torch.cuda.is_available():
        states = [tensors[f"rng.cuda.{i}"].cpu() for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
