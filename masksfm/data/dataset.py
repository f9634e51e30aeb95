"""Training snippets from the sequence-folder layout (docs/design.md §3, §5): resizing to the training size
with exact intrinsics, augmentation applied identically to every frame of a snippet, and
reproducible, resumable, DDP-sharded batches.

Reproducibility: the augmentation of an item depends only on (seed, epoch, index), and the batches
only on (seed, step, rank, world size), never on worker ids or process counts. So a 2-process run
sees exactly the samples and augmentations of a 1-process run, and a resumed run (`start_step`)
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset, Sampler

from masksfm.data.layout import Scene
from masksfm.errors import MasksfmError
from masksfm.geometry import crop_intrinsics, flip_intrinsics, scale_intrinsics, turn_frames

# SfMLearner's scale-and-crop: enlarge by up to 15 %, then crop a window of the training size. Its
# PyTorch code (which the authors' train.py uses) draws separate factors for x and y
# (`independent_crop_scale`); masksfm by default enlarges both by one factor, keeping the aspect.
SCALE_RANGE = (1.0, 1.15)
FLIP_PROBABILITY = 0.5
# monodepth2's colour jitter (torchvision ColorJitter(0.2, 0.2, 0.2, 0.1)), applied half the time.
JITTER_PROBABILITY = 0.5
BRIGHTNESS = CONTRAST = SATURATION = 0.2
HUE = 0.1

# numpy's SeedSequence pads its entropy with zeros, so [seed, epoch] and [seed, epoch, 0] would draw
# the same numbers; a final non-zero tag keeps the sampler's and the augmentation's streams apart.
_SAMPLER_STREAM = 1
_AUGMENT_STREAM = 2


@dataclass(frozen=True)
class ColourJitter:
    """One colour jitter draw, shared by every frame of a snippet (factors of 1 and hue 0 = identity).

    Attributes:
        brightness, contrast, saturation: multiplicative factors (monodepth2: in [0.8, 1.2]).
        hue: hue shift, fraction of a full turn (monodepth2: in [-0.1, 0.1]).
        order: the order in which the four adjustments apply (0 brightness, 1 contrast, 2 saturation,
            3 hue), random as in torchvision.
    """

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class Augmentation:
    """The random choices for one snippet.

    Attributes:
        scale: scale-and-crop enlargement factor (1 = none), of the width and, unless `scale_y`
            is given, of the height.
        crop: (x, y) position of the crop window within the enlarged image, each a fraction in
            [0, 1] of the free range (0 = left/top, 1 = right/bottom).
        flip: mirror horizontally.
        jitter: colour jitter of the network input, or None.
        yaw: one angle per frame of the snippet (0 for the target): the frame as seen by its camera
            turned about its own vertical axis (`turn_about_vertical`), or () for none.
    """

    scale: float = 1.0
    crop: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    jitter: ColourJitter | None = None
    scale_y: float | None = None  # the height's own enlargement factor; None: `scale`
    yaw: tuple[float, ...] = ()  # per frame, radians: each frame's camera turned about its vertical axis; () none


def draw_augmentation(rng: np.random.Generator, colour_jitter: bool = True,
                      independent_scale: bool = False, length: int = 3, source_yaw: float = 0.0) -> Augmentation:
    """Draw one snippet's augmentation. Every number is drawn whether used or not, so the stream
    consumed per item is fixed (the height's own factor, then the sources' turns last, so the other
    draws do not depend on them).

    Args:
        rng: the item's generator.
        colour_jitter: jitter the nets' input half the time (monodepth2); off: never (the authors).
        independent_scale: enlarge the height by its own factor (the authors), else by the width's.
        length: the snippet's frames, L.
        source_yaw: turn each source's camera by an angle uniform in ±this many degrees; 0: none.
    """
    scale = float(rng.uniform(*SCALE_RANGE))
    crop = (float(rng.random()), float(rng.random()))
    flip = bool(rng.random() < FLIP_PROBABILITY)
    use_jitter = bool(rng.random() < JITTER_PROBABILITY)
    brightness, contrast, saturation = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, 3)
    jitter = ColourJitter(
        brightness=float(brightness),
        contrast=float(contrast),
        saturation=float(saturation),
        hue=float(rng.uniform(-HUE, HUE)),
        order=tuple(int(i) for i in rng.permutation(4)),
    )
    scale_y = float(rng.uniform(*SCALE_RANGE))
    yaw = ()
    if source_yaw > 0:
        yaw = tuple(float(a) for a in np.radians(rng.uniform(-source_yaw, source_yaw, length)))
        yaw = yaw[:length // 2] + (0.0,) + yaw[length // 2 + 1:]
    return Augmentation(scale=scale, crop=crop, flip=flip, jitter=jitter if use_jitter and colour_jitter else None,
                        scale_y=scale_y if independent_scale else None, yaw=yaw)


def turn_about_vertical(frame: np.ndarray, K: np.ndarray, yaw: float) -> np.ndarray:
    """A frame as its camera would see it turned by `yaw` about its own vertical (y) axis.

    A rotation about the camera centre moves every pixel by the homography K·Rᵀ·K⁻¹, whatever the
    depth, so the turned frame is exact but for the strip that enters at the border (replicated,
    about f·yaw pixels wide) and resampling (:func:`masksfm.geometry.turn_frames`). The pose that
    relates it to the other frames gains R.

    Args:
        frame: (H, W, 3) uint8 RGB.
        K: (3, 3) its intrinsics, pixels.
        yaw: radians: the turned camera's camera-to-world pose is P · R_y(yaw), R_y the rotation
            about the camera's y axis (the axis-angle (0, yaw, 0)).
    Returns:
        (H, W, 3) uint8.
    """
    # geometry.turn_frames, the trainer's turn (loss.turn_weight), on the frame as float, rounded back.
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    turned = turn_frames(image, torch.from_numpy(np.asarray(K, dtype=np.float64))[None],
                         torch.tensor([float(yaw)], dtype=torch.float64))
    return turned[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_and_crop(
    frames: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    scale: float = 1.0,
    crop: tuple[float, float] = (0.0, 0.0),
    scale_y: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize frames to `scale` × the training size (the height `scale_y` × if given), then crop a
    (height, width) window.

    One resampling from the stored frames (PIL bilinear: half-pixel centres, antialiased when
    shrinking), so `scale_intrinsics` then `crop_intrinsics` give the exact intrinsics.

    Args:
        frames: (L, H0, W0, 3) uint8 RGB.
        K: (3, 3) intrinsics of the stored frames, pixels.
        height, width: training size.
        scale: enlargement before the crop, ≥ 1.
        crop: (x, y) crop position as fractions of the free range (see :class:`Augmentation`).
        scale_y: the height's enlargement, ≥ 1; None: `scale`.
    Returns:
        (L, height, width, 3) uint8 frames and their (3, 3) float64 intrinsics.
    """
    h0, w0 = frames.shape[1:3]
    scale_y = scale if scale_y is None else scale_y
    scaled_h, scaled_w = max(height, round(height * scale_y)), max(width, round(width * scale))
    x0 = min(int(crop[0] * (scaled_w - width + 1)), scaled_w - width)
    y0 = min(int(crop[1] * (scaled_h - height + 1)), scaled_h - height)
    resized = np.stack([
        np.asarray(Image.fromarray(frame).resize((scaled_w, scaled_h), Image.Resampling.BILINEAR)) for frame in frames
    ])
    K = crop_intrinsics(scale_intrinsics(np.asarray(K, np.float64), scaled_w / w0, scaled_h / h0), x0, y0)
    return resized[:, y0:y0 + height, x0:x0 + width], K


def colour_jitter(frames: np.ndarray, jitter: ColourJitter) -> np.ndarray:
    """Apply one colour jitter draw to every frame, as monodepth2 does (torchvision's PIL path).

    brightness b: `b·I`; contrast c: `c·I + (1−c)·mean(luma(I))` (one mean per frame); saturation s:
    `s·I + (1−s)·luma(I)` (per pixel); hue h: rotate the HSV hue by h turns. Each step rounds and
    clips to uint8. PIL's C loops do this several times faster than the same steps as torch ops
    on the CPU, which matters in loader workers.

    Args:
        frames: (L, H, W, 3) uint8 RGB.
        jitter: the factors and their order.
    Returns:
        (L, H, W, 3) uint8 RGB.
    """
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be an (L, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    # PIL's HSV hue runs over 0..255 for a full turn (255 wraps to 0).
    hue_shift = int(round(jitter.hue * 255)) % 255
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        for step in jitter.order:
            if step == 0:
                image = ImageEnhance.Brightness(image).enhance(jitter.brightness)
            elif step == 1:
                image = ImageEnhance.Contrast(image).enhance(jitter.contrast)
            elif step == 2:
                image = ImageEnhance.Color(image).enhance(jitter.saturation)
            elif hue_shift:
                h, s, v = image.convert("HSV").split()
                h = Image.fromarray(((np.asarray(h, np.int32) + hue_shift) % 255).astype(np.uint8))
                image = Image.merge("HSV", (h, s, v)).convert("RGB")
        out.append(np.asarray(image))
    return np.stack(out)


def augment_snippet(
    frames: np.ndarray, K: np.ndarray, height: int, width: int, augmentation: Augmentation | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring a snippet to the training size and apply one augmentation to all of its frames.

    Order: scale-and-crop, flip, the sources' turns, colour jitter; the geometric steps update K exactly
    (a turn changes the frame's pose, not K).

    Args:
        frames: (L, H0, W0, 3) uint8 RGB as stored.
        K: (3, 3) intrinsics of the stored frames, pixels.
        height, width: training size.
        augmentation: the draw, or None for a plain resize.
    Returns:
        images: (L, 3, height, width) float32 in [0, 1], fully augmented (the networks' input);
        images_raw: the same geometry without colour jitter (what the photometric loss compares);
        K: (3, 3) float32 intrinsics of the returned frames.
    """
    augmentation = augmentation or Augmentation()
    frames, K = resize_and_crop(frames, K, height, width, augmentation.scale, augmentation.crop, augmentation.scale_y)
    if augmentation.flip:
        frames, K = frames[:, :, ::-1], flip_intrinsics(K, width)
    if any(augmentation.yaw):
        frames = np.stack([turn_about_vertical(f, K, a) if a else f for f, a in zip(frames, augmentation.yaw)])
    images_raw = _to_tensor(frames)
    images = images_raw if augmentation.jitter is None else _to_tensor(colour_jitter(frames, augmentation.jitter))
    return images, images_raw, torch.from_numpy(K).float()


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(L, H, W, 3) uint8 to (L, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float().div_(255.0)


class SnippetDataset(Dataset):
    """Every window of `snippet_length` frames inside a scene, `stride` frames apart, for each of
    `strides` (consecutive frames: 1); the target is the middle. With `uneven_strides`, also every
    window whose frames before the target are one of `strides` apart and after it another.

    An item is addressed by `index`, or by `(epoch, index)` as :class:`SnippetBatchSampler` yields;
    a bare index uses the epoch of :meth:`set_epoch`. The augmentation depends only on
    (seed, epoch, index).

    Args:
        scenes: the scenes of a split (see `masksfm.data.layout.load_split`).
        height, width: training size, pixels.
        snippet_length: frames per snippet, odd, ≥ 3.
        augment: scale-and-crop, flip and colour jitter; off = plain resize.
        seed: augmentation seed, a non-negative integer.
        colour_jitter: with `augment`, jitter the nets' input (monodepth2); off: the authors' form.
        independent_crop_scale: with `augment`, enlarge x and y by separate factors (the authors).
        source: what to name in error messages (the split file); by default the scenes' folder.
        strides: the frame spacings of the snippets (`data.strides`); more than one spacing gives the
            pose net camera speeds that vary by that factor (the same drive, every k-th frame).
        source_yaw: with `augment`, turn each source's camera about its vertical axis by up to this
            many degrees (`data.source_yaw`): rotations the drives do not have; 0: none.
        uneven_strides: also the windows spaced by one of `strides` before the target and another
            after it (`data.uneven_strides`): within a snippet the camera's speed then changes by
            their ratio, which the pose net must read from the frames.
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        height: int,
        width: int,
        snippet_length: int = 3,
        augment: bool = True,
        seed: int = 0,
        source: str | None = None,
        colour_jitter: bool = True,
        independent_crop_scale: bool = False,
        strides: Sequence[int] = (1,),
        source_yaw: float = 0.0,
        uneven_strides: bool = False,
    ) -> None:
        if snippet_length < 3 or snippet_length % 2 == 0:
            raise MasksfmError(f"snippet length must be odd and at least 3 (target in the middle), "
                               f"got {snippet_length}")
        self.scenes = list(scenes)
        self.height, self.width = int(height), int(width)
        self.snippet_length = snippet_length
        self.augment = augment
        self.colour_jitter, self.independent_crop_scale = colour_jitter, independent_crop_scale
        self.source_yaw = float(source_yaw)
        self.seed = int(seed)
        self.source = source or ", ".join(sorted({str(scene.path.parent) for scene in self.scenes})) or "data"
        self.epoch = 0
        if not strides or min(strides) < 1:
            raise MasksfmError(f"snippet strides must be positive frame spacings, got {list(strides)}")
        spacings = [(stride, stride) for stride in strides]
        if uneven_strides:
            spacings += [(before, after) for before in strides for after in strides if before != after]
        # Flat (scene, first frame, spacing before and after the target) tables rather than a list of
        # tuples: cheap to copy into workers.
        half = snippet_length // 2
        scene_of, start_of, before_of, after_of = [], [], [], []
        for before, after in spacings:
            counts = [max(0, len(scene) - half * (before + after)) for scene in self.scenes]
            scene_of.append(np.repeat(np.arange(len(self.scenes)), counts))
            start_of.extend(np.arange(n) for n in counts)
            before_of.append(np.full(sum(counts), before))
            after_of.append(np.full(sum(counts), after))
        self._scene_of = np.concatenate(scene_of)
        self._start_of = np.concatenate(start_of) if start_of else np.zeros(0, np.int64)
        self._before_of, self._after_of = np.concatenate(before_of), np.concatenate(after_of)
        if len(self._scene_of) == 0:
            longest = max((len(scene) for scene in self.scenes), default=0)
            needed = (snippet_length - 1) * min(strides) + 1
            raise MasksfmError(f"{self.source}: too-short sequences: no scene has the {needed} frames a "
                               f"snippet needs ({len(self.scenes)} scenes, the longest has {longest} frames)")

    def __len__(self) -> int:
        return len(self._scene_of)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for items addressed by a bare index."""
        self.epoch = int(epoch)

    def snippet(self, index: int) -> tuple[Scene, list[int]]:
        """The scene of item `index` and the indices of its frames."""
        if not 0 <= index < len(self):
            raise IndexError(f"snippet index {index} out of range [0, {len(self)})")
        start, before, after = int(self._start_of[index]), int(self._before_of[index]), int(self._after_of[index])
        half = self.snippet_length // 2
        target = start + before * half
        return self.scenes[self._scene_of[index]], [target + k * (before if k < 0 else after) for k in range(-half, half + 1)]

    def augmentation(self, epoch: int, index: int) -> Augmentation | None:
        """The augmentation of item `index` in `epoch` (None when augmentation is off)."""
        if not self.augment:
            return None
        return draw_augmentation(np.random.default_rng([self.seed, epoch, index, _AUGMENT_STREAM]),
                                 self.colour_jitter, self.independent_crop_scale, self.snippet_length, self.source_yaw)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        """One snippet.

        Returns:
            images: (L, 3, H, W) float32 in [0, 1], augmented; images_raw: (L, 3, H, W) without
            colour jitter; K: (3, 3) float32 intrinsics of those frames; index, epoch: ints.
        """
        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, tuple) else (self.epoch, int(item))
        scene, frame_ids = self.snippet(index)
        frames = np.stack([scene.read_frame(i) for i in frame_ids])
        augmentation = self.augmentation(epoch, index)
        images, images_raw, K = augment_snippet(frames, scene.K, self.height, self.width, augmentation)
        return {"images": images, "images_raw": images_raw, "K": K, "index": index, "epoch": epoch}


class SnippetBatchSampler(Sampler):
    """Batches of `(epoch, index)` pairs for :class:`SnippetDataset`, sharded over processes.

    Global batch k of epoch e is items `perm[k·B:(k+1)·B]` of a permutation drawn from (seed, e);
    an incomplete final batch is dropped. Process `rank` gets the `rank`-th of `world_size` equal
    slices of each global batch, so the union over ranks is the 1-process batch. Steps count global
    batches across epochs; `start_step` starts there directly, loading nothing for skipped steps.

    Args:
        num_items: dataset length.
        batch_size: global batch size, divisible by `world_size`.
        seed: shuffling seed, a non-negative integer.
        rank, world_size: this process and the process count.
        start_step: first step to yield.
        max_steps: stop before this step; None = never stop.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        max_steps: int | None = None,
    ) -> None:
        if batch_size < 1 or batch_size % world_size != 0:
            raise MasksfmError(f"batch size {batch_size} must be a positive multiple of the process count {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if num_items < batch_size:
            raise MasksfmError(f"{num_items} training snippets are fewer than the batch size {batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.start_step, self.max_steps = start_step, max_steps
        self.steps_per_epoch = num_items // batch_size
        self._permutation_epoch, self._permutation = -1, np.zeros(0, np.int64)

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This process's share of global batch `step`, as (epoch, index) pairs."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._permutation_epoch:
            rng = np.random.default_rng([self.seed, epoch, _SAMPLER_STREAM])
            self._permutation_epoch, self._permutation = epoch, rng.permutation(self.num_items)
        share = self.batch_size // self.world_size
        first = k * self.batch_size + self.rank * share
        return [(epoch, int(i)) for i in self._permutation[first:first + share]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an endless SnippetBatchSampler has no length (give max_steps)")
        return max(0, self.max_steps - self.start_step)


def make_loader(
    dataset: SnippetDataset,
    batch_size: int,
    seed: int,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    max_steps: int | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader of this process's share of each global batch (see :class:`SnippetBatchSampler`).

    Batches are dicts: images, images_raw (B, L, 3, H, W); K (B, 3, 3); index, epoch (B,), where
    B = batch_size / world_size.

    Args:
        pin_memory: default on when CUDA is available, off on a CPU-only machine.
    """
    if len(dataset) < batch_size:
        raise MasksfmError(f"{dataset.source}: {len(dataset)} training snippets are fewer than "
                           f"the batch size {batch_size}")
    sampler = SnippetBatchSampler(len(dataset), batch_size, seed, rank, world_size, start_step, max_steps)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_leave_signals_to_the_trainer,
    )


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """Loader workers ignore SIGINT: a Ctrl-C reaches the whole process group, and a worker that
    quit on it would leave the main process waiting for a batch instead of saving its checkpoint.
    (SIGTERM stays: it is how the loader shuts its workers down.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
