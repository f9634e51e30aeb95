"""What the `prepare` commands share (KITTI, video): the staged output folder, the frame resampler,
the shortest useful scene, and progress lines."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from masksfm.data import layout

# A scene needs one snippet (3 frames) to be of any use for training.
MIN_SCENE_FRAMES = 3


def resize_frame(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame with PIL bilinear (half-pixel centres, antialiased when
    shrinking), the resampler `scale_intrinsics` is exact for and training uses."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


@contextmanager
def staged_output(out: Path, kind: str) -> Iterator[Path]:
    """Build a dataset in `OUT.partial` and move it to `out` when the block completes.

    An interrupted or failed run leaves neither a half-written dataset nor the staging folder.
    """
    out = Path(out)
    layout.check_output_folder(out, kind)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def report(progress: bool, message: str) -> None:
    if progress:
        print(message)
