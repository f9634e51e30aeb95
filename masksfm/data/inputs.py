"""What `masksfm predict` reads: an image, a folder of images, a video, a prepared scene or a
prepared dataset, each as `FrameSequence`s with their intrinsics.

Intrinsics: a prepared scene's `cam.txt`, else `--intrinsics`, else a horizontal field of view
(`--fov`, default `masksfm.data.video.DEFAULT_FOV`, 70°, a phone's main camera), each scaled to the
size of the frame it serves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masksfm.data.layout import FRAME_SUFFIXES, frame_stem, image_size, read_cam, read_image
from masksfm.errors import MasksfmError
from masksfm.geometry import scale_intrinsics

# PIL reads these too (.ppm / .pgm: Middlebury and other stereo and SLAM sets); a prepared scene only ever
# holds FRAME_SUFFIXES.
IMAGE_SUFFIXES = FRAME_SUFFIXES + (".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class FrameSequence:
    """Frames that belong together (one image, a folder, a video, one prepared scene).

    Attributes:
        label: the input it comes from, for messages.
        frames: a callable yielding (stem, (H, W, 3) uint8 RGB) in temporal order.
        count: the number of frames, or None when unknown before decoding (some videos).
        K: (3, 3) intrinsics at `K_size`, or None: from `fov` at each frame's size.
        K_size: (H, W) the size `K` is for (None: every frame's size, as for a video's `--intrinsics`).
        fov: horizontal field of view, degrees, when `K` is None.
        scene: the sub-folder of the output (a scene of a prepared dataset), or None.
    """

    label: str
    frames: Callable[[], Iterator[tuple[str, np.ndarray]]]
    count: int | None
    K: np.ndarray | None = None
    K_size: tuple[int, int] | None = None
    fov: float | None = None
    scene: str | None = None

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        """(3, 3) intrinsics of a frame of this sequence of size (height, width), pixels."""
        if self.K is None:
            from masksfm.data.video import intrinsics_from_fov

            return intrinsics_from_fov(self.fov, height, width)
        if self.K_size is None or tuple(self.K_size) == (height, width):
            return self.K
        h0, w0 = self.K_size
        return scale_intrinsics(self.K, width / w0, height / h0)


def _natural_key(path: Path) -> list:
    """`img2.png` before `img10.png`, as `prepare video` orders a folder."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _images(paths: list[Path]) -> Callable[[], Iterator[tuple[str, np.ndarray]]]:
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise MasksfmError(f"{paths[0].parent}: two images named '{duplicate}' (outputs are named by the file stem)")
    return lambda: ((p.stem, read_image(p)) for p in paths)


def _scene_sequence(folder: Path, scene: str | None, K_given: np.ndarray | None, size_given) -> FrameSequence:
    frames = sorted((f for f in folder.iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file()),
                    key=lambda f: f.name)  # the layout's order (docs/design.md §5)
    if not frames:
        raise MasksfmError(f"{folder}: a scene folder (it has cam.txt) without frames")
    if K_given is None:
        K, size = read_cam(folder / "cam.txt"), image_size(frames[0])
    else:
        K, size = K_given, size_given or image_size(frames[0])
    return FrameSequence(str(folder), _images(frames), len(frames), K=K, K_size=size, scene=scene)


def _video_sequence(path: Path, K_given: np.ndarray | None, fov: float) -> FrameSequence:
    from masksfm.data.video import open_frames

    try:
        source = open_frames(path)
    except MasksfmError as error:
        raise MasksfmError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a readable video "
                           f"({str(error).removeprefix(f'{path}: ')})") from None
    used = []

    def frames():
        # The decoder can be iterated once; open the file again for a second pass.
        nonlocal source
        if used:
            source = open_frames(path)
        used.append(True)
        return ((frame_stem(index), rgb) for index, rgb in source.frames)

    return FrameSequence(str(path), frames, source.total, K=K_given, K_size=None, fov=fov)


def open_input(path: Path, intrinsics: str | None = None, fov: float | None = None) -> list[FrameSequence]:
    """What `masksfm predict` reads from INPUT: an image, a folder of images, a video, a prepared
    scene (a folder with cam.txt) or a prepared dataset (sub-folders with cam.txt, one per scene).

    Args:
        path: the input.
        intrinsics: "fx,fy,cx,cy" in the input's pixels (overrides a scene's cam.txt), or None.
        fov: horizontal field of view, degrees, for inputs without intrinsics (default 70°).
    Returns:
        One :class:`FrameSequence` per sequence (several for a dataset, in name order).
    Raises:
        MasksfmError: missing input, not an image nor a readable video, a folder without images.
    """
    from masksfm.data.video import DEFAULT_FOV, intrinsics_from_fov, parse_intrinsics

    path = Path(path)
    K_given = parse_intrinsics(intrinsics) if intrinsics is not None else None
    if fov is not None:
        intrinsics_from_fov(fov, 1, 1)  # checks the angle before any work
    fov = DEFAULT_FOV if fov is None else fov
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            size = image_size(path)
            return [FrameSequence(str(path), _images([path]), 1, K=K_given,
                                  K_size=size if K_given is not None else None, fov=fov)]
        return [_video_sequence(path, K_given, fov)]
    if not path.is_dir():
        raise MasksfmError(f"{path}: no such image, video or folder")
    if (path / "cam.txt").is_file():
        return [_scene_sequence(path, None, K_given, None)]
    images = sorted((f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()), key=_natural_key)
    if images:
        size = image_size(images[0])
        return [FrameSequence(str(path), _images(images), len(images), K=K_given,
                              K_size=size if K_given is not None else None, fov=fov)]
    scenes = sorted((d for d in path.iterdir() if d.is_dir() and (d / "cam.txt").is_file()), key=lambda d: d.name)
    if scenes:
        return [_scene_sequence(d, d.name, K_given, None) for d in scenes]
    raise MasksfmError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}), no cam.txt and no scene folders in it")
