"""`masksfm export`: the depth net (and the pose net) as an ONNX model or a `torch.export` program.

The exported depth net's interface is docs/design.md §1's: input `image`, (B, 3, H, W) RGB in [0, 1] at the
exported size (the net normalises internally, so nothing is to be done to the pixels); output
`depth`, (B, 1, H, W), 1 / the finest disparity: for a frame of size H x W, the same values `masksfm
predict` writes to `.npy` (in the model's scale; `predict --camera-height` multiplies by a metric
scale). The batch axis is dynamic; H and W are fixed at export. Exporting at a size other than the
training size runs the net at that size (it accepts any size >= 32x32, but was trained at one: depth
at another size is extrapolation; a pose net that reads f x f pixel blocks, `model.pose_downsample`, needs
multiples of f from 32·f), and the metadata says both sizes.

With `pose`, the pose net goes beside FILE (`depth.onnx` -> `depth.pose.onnx`): inputs `target`
(B, 3, H, W) and `sources` (B, S, 3, H, W), RGB in [0, 1]; output `poses` (B, S, 6), `[t, axis-angle]`
of T_target→source in the model's scale (SfMLearner's 0.01 output scaling included).

Metadata (sizes, the interface in words, masksfm version, training config, checkpoint step) go into
the ONNX model's `metadata_props`, and into a pt2 archive as the extra file `masksfm.json`.
TorchScript is deprecated in torch 2.13, hence `torch.export` for `pt2`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from masksfm.config import pose_net_reads
from masksfm.errors import MasksfmError

FORMATS = ("onnx", "pt2")
METADATA_FILE = "masksfm.json"  # the extra file of a pt2 archive
MIN_SIZE = 32  # the nets' smallest input (docs/design.md §2)
MAX_BATCH = 4096  # the dynamic batch axis' declared bound (torch.export needs one; ONNX keeps it symbolic)


class DepthOutput(nn.Module):
    """The depth net as exported: image (B, 3, H, W) RGB in [0, 1] -> depth = 1 / disp_0 (B, 1, H, W)."""

    def __init__(self, depth_net: nn.Module):
        super().__init__()
        self.depth_net = depth_net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return 1.0 / self.depth_net(image)[0]


class PoseOutput(nn.Module):
    """The pose net as exported: (target (B, 3, H, W), sources (B, S, 3, H, W)) -> poses (B, S, 6)
    (the explainability masks of that baseline are left out)."""

    def __init__(self, pose_net: nn.Module):
        super().__init__()
        self.pose_net = pose_net

    def forward(self, target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        out = self.pose_net(target, sources)
        return out[0] if isinstance(out, tuple) else out


def pose_path(out: Path) -> Path:
    """Where `--pose` writes the pose net: FILE's stem + `.pose` + its suffix (`depth.onnx` -> `depth.pose.onnx`)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.pose{out.suffix}")


def export_metadata(config, metadata: dict, height: int, width: int, which: str) -> dict[str, str]:
    """The key -> text pairs stored with an exported net (`which` = "depth" or "pose")."""
    from dataclasses import asdict

    from masksfm import __version__

    common = {
        "masksfm_version": __version__,
        "height": str(height),
        "width": str(width),
        "trained_height": str(config.data.height),
        "trained_width": str(config.data.width),
        "normalisation": "none outside the net: feed RGB in [0, 1]; the net computes (x - 0.45) / 0.225 itself",
        "checkpoint_step": json.dumps(metadata.get("step")),
        "config": json.dumps(asdict(config)),
    }
    trained_size = (height, width) == (config.data.height, config.data.width)
    if not trained_size:
        common["note"] = (f"exported at {width}x{height}, trained at {config.data.width}x{config.data.height}: the net "
                          "runs at the exported size")
    if which == "depth":
        same = ("masksfm predict writes the same values to .npy for a frame of this size" if trained_size else
                "masksfm predict runs the net at the training size instead")
        return {
            **common,
            "input": f"image: (B, 3, {height}, {width}) float32 RGB in [0, 1]",
            "output": f"depth: (B, 1, {height}, {width}) float32, 1 / disparity in the model's scale ({same}; "
                      "--camera-height scales them to metres)",
        }
    sources = config.data.snippet_length - 1
    return {
        **common,
        "input": f"target: (B, 3, {height}, {width}); sources: (B, {sources}, 3, {height}, {width}); "
                 "float32 RGB in [0, 1]",
        "output": f"poses: (B, {sources}, 6) float32, [tx, ty, tz, rx, ry, rz] of T_target->source (translation in "
                  "the model's scale, axis-angle in radians); camera x right, y down, z forward",
    }


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _quiet_exporter():
    """The ONNX exporter logs its steps and warns about torchvision; keep the command's output ours."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(module: nn.Module, example: tuple, names: list[str], output: str, dynamic: dict,
               meta: dict[str, str], path: Path) -> None:
    """Export `module` with the dynamo ONNX exporter to one self-contained file, `meta` in its metadata_props.

    Args:
        example: example inputs (a batch of 2 where the batch axis is dynamic).
        names: the input names; output: the output name.
        dynamic: `dynamic_shapes` of `torch.export`, by input name.
    """
    try:
        import onnx  # noqa: F401  (the dynamo exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise MasksfmError(f"--format onnx needs the packages onnx and onnxscript ({error}); "
                           "pip install 'masksfm[export]'") from None
    with _quiet_exporter():
        program = torch.onnx.export(module, example, dynamo=True, input_names=names, output_names=[output],
                                    dynamic_shapes=dynamic, verbose=False)
    program.model.metadata_props.update(meta)
    # One self-contained file: the weights (tens of MB) go inside the protobuf, far below its 2 GB limit.
    _replace_atomically(path, program.model_proto.SerializeToString())


def _write_pt2(module: nn.Module, example: tuple, dynamic: dict, meta: dict[str, str], path: Path) -> None:
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    buffer = io.BytesIO()  # through memory: the archive's inner folder is named after a file's name
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    _replace_atomically(path, buffer.getvalue())


def export_model(run: Path, fmt: str, out: Path, height: int | None = None, width: int | None = None,
                 pose: bool = False) -> list[Path]:
    """`masksfm export`: write the depth net (and with `pose` the pose net) of a run.

    Args:
        run: run folder or checkpoint file.
        fmt: "onnx" or "pt2".
        out: the file to write (the pose net goes to :func:`pose_path` of it).
        height, width: the exported input size, pixels (default: the training size).
        pose: export the pose net too.
    Returns:
        The files written.
    Raises:
        MasksfmError: bad format or size, missing run or checkpoint, missing ONNX packages.
    """
    from masksfm.model import load_model

    if fmt not in FORMATS:
        raise MasksfmError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, config, metadata = load_model(run, "cpu")
    height = config.data.height if height is None else height
    width = config.data.width if width is None else width
    if min(height, width) < MIN_SIZE:
        raise MasksfmError(f"--height/--width: the nets need at least {MIN_SIZE}x{MIN_SIZE} pixels, "
                           f"got {width}x{height}")
    factor = config.model.pose_downsample
    if pose and not pose_net_reads(height, width, factor):
        raise MasksfmError(f"--height/--width: the pose net reads {factor}x{factor} pixel blocks "
                           f"(model.pose_downsample) and at least {MIN_SIZE}x{MIN_SIZE} of them: multiples of {factor} "
                           f"from {MIN_SIZE * factor}, got {width}x{height}")
    out = Path(out)
    if out.is_dir():
        raise MasksfmError(f"{out}: is a folder; --out names the file to write")
    # An example batch of 2: a batch of 1 would let the tracer specialise the batch axis to 1.
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, height, width, generator=generator)
    jobs = [(DepthOutput(model.depth_net).eval(), (image,), ["image"], "depth", {"image": {0: batch}}, "depth", out)]
    if pose:
        sources = torch.rand(2, config.data.snippet_length - 1, 3, height, width, generator=generator)
        jobs.append((PoseOutput(model.pose_net).eval(), (image, sources), ["target", "sources"], "poses",
                     {"target": {0: batch}, "sources": {0: batch}}, "pose", pose_path(out)))
    written = []
    for module, example, names, output, dynamic, which, path in jobs:
        meta = export_metadata(config, metadata, height, width, which)
        with torch.no_grad():
            if fmt == "onnx":
                write_onnx(module, example, names, output, dynamic, meta, path)
            else:
                _write_pt2(module, example, dynamic, meta, path)
        written.append(path)
    return written


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata stored with an exported net (ONNX `metadata_props` or the pt2 extra file)."""
    path = Path(path)
    if not path.is_file():
        raise MasksfmError(f"{path}: no such exported model")
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # onnx raises DecodeError, ValueError, ... on a damaged file
            raise MasksfmError(f"{path}: not an ONNX model ({error})") from None
        return {prop.key: prop.value for prop in model.metadata_props}
    import zipfile

    # Read from the zip directly: loading the program would unpickle its sample inputs.
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            if name is None:
                raise MasksfmError(f"{path}: a zip archive without masksfm metadata (extra/{METADATA_FILE})")
            text = archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
        raise MasksfmError(f"{path}: not a torch.export archive ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MasksfmError(f"{path}: corrupt masksfm metadata ({error})") from None
