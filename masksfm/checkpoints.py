"""Run folders and checkpoints (DESIGN §1, "Runs and checkpoints").

A checkpoint is one safetensors file: the model weights, the optimizer state and the RNG states as
tensors, and the step, configuration and masksfm version as JSON in the metadata header. It is
written to a temporary file in the same folder and renamed over the old one, so a kill never leaves
a half-written file. Nothing here ever unpickles.
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


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write tensors + JSON metadata atomically to `path` (temp file in the same folder, fsync, rename).

    Args:
        tensors: name -> tensor (moved to CPU, made contiguous; shared storage is cloned).
        metadata: JSON-serialisable values, stored under their keys as JSON strings.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {key: json.dumps(value) for key, value in metadata.items()}
    header["masksfm_version"] = json.dumps(__version__)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint: (tensors, metadata with its JSON values decoded). Never unpickles.

    Raises:
        MasksfmError: the file is missing or not a masksfm safetensors checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MasksfmError(f"{path}: no such checkpoint file")
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
