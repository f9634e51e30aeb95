"""The sequence-folder layout (docs/design.md §5): what `synth` and `prepare` write and `train` / `eval` read.

```
DATA/dataset.json           {"kind": "synthetic" | "kitti-raw" | "kitti-odometry" | "video", ...}
DATA/train.txt val.txt test.txt
DATA/<scene>/000000.png ... frames; cam.txt; poses.txt; depth/*.npy; visibility/*.npy; moving/*.png
```

Readers validate what they read and raise :class:`MasksfmError` naming the file and the problem;
writers trust their caller (a bad array there is a programming error).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from masksfm.errors import MasksfmError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")

# PIL signals a damaged file with any of these, depending on where the damage is (header, chunk
# CRC, truncated data).
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def read_cam(path: Path) -> np.ndarray:
    """Read `cam.txt`: a 3x3 intrinsics matrix, 3 lines of 3 numbers, positive focal lengths.

    Returns:
        (3, 3) float64, pixels of the frames as stored.
    """
    path = Path(path)
    try:
        K = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing intrinsics file") from None
    except (ValueError, OSError) as error:
        raise MasksfmError(f"{path}: not a 3x3 matrix of numbers ({error})") from None
    if K.shape != (3, 3):
        raise MasksfmError(f"{path}: expected a 3x3 intrinsics matrix, got shape {K.shape[0]}x{K.shape[1]}")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MasksfmError(f"{path}: focal lengths must be positive and finite (fx={K[0, 0]}, fy={K[1, 1]})")
    if not np.array_equal(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0:
        raise MasksfmError(f"{path}: not an intrinsics matrix (expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]], "
                           f"got rows {K[1].tolist()} and {K[2].tolist()})")
    return K


def write_cam(path: Path, K: np.ndarray) -> None:
    """Write a 3x3 intrinsics matrix as `cam.txt`."""
    np.savetxt(path, np.asarray(K, dtype=np.float64).reshape(3, 3), fmt="%.10g")


def read_poses(path: Path) -> np.ndarray:
    """Read a KITTI-style trajectory: one line per frame, 12 numbers, the 3x4 camera-to-world matrix.

    Returns:
        (N, 4, 4) float64 camera-to-world poses.
    """
    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing poses file") from None
    except (ValueError, OSError) as error:
        raise MasksfmError(f"{path}: not a KITTI pose file ({error})") from None
    if rows.size == 0 or rows.shape[1] != 12:
        raise MasksfmError(f"{path}: expected 12 numbers per line (a 3x4 matrix), got {rows.shape[1] if rows.size else 0}")
    if not np.all(np.isfinite(rows)):
        line = int(np.argwhere(~np.isfinite(rows))[0, 0]) + 1
        raise MasksfmError(f"{path}: line {line} holds a value that is not finite (nan or inf)")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :4] = rows.reshape(-1, 3, 4)
    return poses


def write_poses(path: Path, poses: np.ndarray) -> None:
    """Write (N, 4, 4) camera-to-world poses as a KITTI-style trajectory (12 numbers per line)."""
    poses = np.asarray(poses, dtype=np.float64)
    np.savetxt(path, poses[:, :3, :4].reshape(len(poses), 12), fmt="%.9e")


# --- images ------------------------------------------------------------------------------------


def read_image(path: Path) -> np.ndarray:
    """Read a frame as RGB; grey, palette and RGBA images are converted (alpha is dropped).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.array(image if image.mode == "RGB" else image.convert("RGB"))
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing image") from None
    except _IMAGE_ERRORS as error:
        raise MasksfmError(f"{path}: unreadable or corrupt image ({error})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header (the pixels are not decoded)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing image") from None
    except _IMAGE_ERRORS as error:
        raise MasksfmError(f"{path}: unreadable or corrupt image ({error})") from None


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image; PNG or JPEG by the path's suffix (folders are created)."""
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    suffix = path.suffix.lower()
    if suffix not in FRAME_SUFFIXES:
        raise ValueError(f"{path}: image suffix must be one of {FRAME_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Quality 95 with no chroma subsampling: JPEG artefacts are photometric noise the loss would see.
    options = {"quality": 95, "subsampling": 0} if suffix != ".png" else {}
    Image.fromarray(rgb).save(path, **options)


# --- dataset.json and split files ---------------------------------------------------------------


def check_output_folder(out: Path, kind: str) -> None:
    """`out` may be absent, an empty folder, or a dataset of the same `kind` (which the writer
    replaces); anything else is refused, so that a typo never deletes someone's data."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise MasksfmError(f"{out}: exists and is not a folder")
    if any(out.iterdir()):
        try:
            existing = read_dataset_info(out).get("kind")
        except MasksfmError:
            existing = None
        if existing != kind:
            raise MasksfmError(f"{out}: folder exists, is not empty and is not a '{kind}' dataset; "
                               "refusing to overwrite it")


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_dataset_info(root: Path) -> dict:
    """Read `DATA/dataset.json`.

    A folder without `dataset.json` (frames a user laid out by hand) reads as `{"kind": "unknown"}`:
    nothing in training needs the kind, and evaluation only uses it to choose defaults. A file that
    is there but is not a JSON object with a string `kind` is an error.

    Returns:
        The parsed object; `kind` is always present.
    """
    root = Path(root)
    if not root.is_dir():
        raise MasksfmError(f"{root}: not a data folder (missing or not a directory)")
    path = root / "dataset.json"
    if not path.exists():
        return {"kind": "unknown"}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MasksfmError(f"{path}: unreadable or corrupt JSON ({error})") from None
    if not isinstance(info, dict) or not isinstance(info.get("kind"), str):
        raise MasksfmError(f'{path}: expected a JSON object with a string "kind"')
    return info


def write_dataset_info(root: Path, kind: str, **extra) -> None:
    """Write `DATA/dataset.json` as `{"kind": kind, **extra}` (numpy values become JSON lists/numbers)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"kind": kind, **extra}, indent=2, default=_json_default)
    (root / "dataset.json").write_text(text + "\n", encoding="utf-8")


def split_path(root: Path, split: str) -> Path:
    """The file of a split: `DATA/<split>.txt`."""
    return Path(root) / f"{split}.txt"


def read_split(root: Path, split: str) -> list[str]:
    """Read the scene names of a split file (`DATA/train.txt` ...); blank lines are ignored.

    Every named scene must be a folder of `root`.
    """
    path = split_path(root, split)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing split file (split '{split}')") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MasksfmError(f"{path}: unreadable split file ({error})") from None
    names = [line.strip() for line in lines if line.strip()]
    for name in names:
        if not (Path(root) / name).is_dir():
            raise MasksfmError(f"{path}: names scene '{name}', which is not a folder of {Path(root)}")
    return names


def write_split(root: Path, split: str, names: Sequence[str]) -> None:
    """Write a split file, one scene name per line (an empty list writes an empty file)."""
    for name in names:
        if not name or name != name.strip() or "\n" in name:
            raise ValueError(f"bad scene name {name!r}")
    Path(root).mkdir(parents=True, exist_ok=True)
    split_path(root, split).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


# --- scenes ------------------------------------------------------------------------------------


def frame_stem(i: int) -> str:
    """The stem of frame `i` in folders we write: `000000`, `000001`, ..."""
    return f"{i:06d}"


def _stem(stem: str | int) -> str:
    return frame_stem(stem) if isinstance(stem, (int, np.integer)) else str(stem)


def frame_path(scene_dir: Path, i: int, suffix: str = ".png") -> Path:
    """Where frame `i` of a scene we write goes: `<scene>/000000.png`."""
    return Path(scene_dir) / f"{frame_stem(i)}{suffix}"


def _load_npy(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """Load an optional per-frame array, checking that it is (H, W); None when the file is absent."""
    if not path.exists():
        return None
    try:
        # allow_pickle=False: a data folder is user input, and unpickling runs arbitrary code.
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise MasksfmError(f"{path}: unreadable or corrupt .npy file ({error})") from None
    if not isinstance(array, np.ndarray) or array.shape != tuple(size):
        shape = getattr(array, "shape", None)
        raise MasksfmError(f"{path}: expected an array of shape {tuple(size)} (the frames' H x W), got {shape}")
    return array


@dataclass(frozen=True, eq=False)
class Scene:
    """One scene folder: its frames in temporal order, intrinsics and optional ground truth.

    `eq=False`: scenes compare and hash by identity (their fields hold numpy arrays).

    Attributes:
        path: the scene folder.
        name: the folder's name (as split files name it).
        frames: frame files sorted by name (= temporal order).
        K: (3, 3) float64 intrinsics in pixels of the frames as stored.
        size: (H, W) of every frame.
        poses: (N, 4, 4) float64 camera-to-world poses, or None without `poses.txt`.
    """

    path: Path
    name: str
    frames: tuple[Path, ...]
    K: np.ndarray
    size: tuple[int, int]
    poses: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def stems(self) -> tuple[str, ...]:
        """Frame file stems (`000000` for folders we write; KITTI keeps `0000000123`)."""
        return tuple(frame.stem for frame in self.frames)

    def read_frame(self, i: int) -> np.ndarray:
        """Frame `i` as (H, W, 3) uint8 RGB."""
        return read_image(self.frames[i])

    def read_depth(self, i: int) -> np.ndarray | None:
        """Ground-truth z-depth of frame `i`, (H, W) float32 metres, 0 = invalid; None if absent."""
        path = self.path / "depth" / f"{self.frames[i].stem}.npy"
        depth = _load_npy(path, self.size)
        if depth is None:
            return None
        if not np.issubdtype(depth.dtype, np.floating):
            raise MasksfmError(f"{path}: expected floating-point depth, got {depth.dtype}")
        return depth.astype(np.float32, copy=False)

    def read_visibility(self, i: int, j: int) -> np.ndarray | None:
        """(H, W) uint8, 1 where the point seen at a pixel of frame i is visible in frame j; None if absent."""
        visibility = _load_npy(self.path / "visibility" / f"{self.frames[i].stem}_{self.frames[j].stem}.npy", self.size)
        return None if visibility is None else visibility.astype(np.uint8, copy=False)

    def read_moving(self, i: int) -> np.ndarray | None:
        """(H, W) bool, True on independently moving objects in frame `i`; None if absent."""
        path = self.path / "moving" / f"{self.frames[i].stem}.png"
        if not path.exists():
            return None
        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L")) >= 128
        except _IMAGE_ERRORS as error:
            raise MasksfmError(f"{path}: unreadable or corrupt mask image ({error})") from None
        if mask.shape != tuple(self.size):
            raise MasksfmError(f"{path}: expected a mask of shape {tuple(self.size)}, got {mask.shape}")
        return mask

    @property
    def has_depth(self) -> bool:
        """True when every frame has a ground-truth depth file."""
        return all((self.path / "depth" / f"{stem}.npy").is_file() for stem in self.stems)


def read_scene(path: Path) -> Scene:
    """Read and validate a scene folder.

    Checks: at least one frame; a readable `cam.txt` holding a 3x3 matrix with positive focal
    lengths; all frames the same size (image headers only, so this is cheap); `poses.txt`, when
    present, with one pose per frame. Each failure raises MasksfmError naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise MasksfmError(f"{path}: not a scene folder (missing or not a directory)")
    frames = tuple(sorted((f for f in path.iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file()),
                          key=lambda f: f.name))
    if not frames:
        raise MasksfmError(f"{path}: no frames (expected {', '.join(FRAME_SUFFIXES)} files in the scene folder)")
    stems = [f.stem for f in frames]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise MasksfmError(f"{path}: two frames named '{duplicate}' with different suffixes")
    K = read_cam(path / "cam.txt")
    size = None
    for frame in frames:
        frame_size = image_size(frame)
        if size is None:
            size = frame_size
        elif frame_size != size:
            raise MasksfmError(f"{frame}: frame size {frame_size[1]}x{frame_size[0]} differs from "
                               f"{frames[0].name}'s {size[1]}x{size[0]} (all frames of a scene must match)")
    poses = None
    if (path / "poses.txt").exists():
        poses = read_poses(path / "poses.txt")
        if len(poses) != len(frames):
            raise MasksfmError(f"{path / 'poses.txt'}: {len(poses)} poses for {len(frames)} frames")
    return Scene(path=path, name=path.name, frames=frames, K=K, size=size, poses=poses)


def load_split(root: Path, split: str, allow_empty: bool = False) -> list[Scene]:
    """Read every scene a split file names.

    A split that a command uses may not be empty (docs/design.md §5); pass `allow_empty=True` for one that
    may (a validation split of a tiny dataset).
    """
    names = read_split(root, split)
    if not names and not allow_empty:
        raise MasksfmError(f"{split_path(root, split)}: the split '{split}' names no scenes")
    return [read_scene(Path(root) / name) for name in names]


# --- writers -----------------------------------------------------------------------------------


def write_depth(scene_dir: Path, stem: str | int, depth: np.ndarray) -> None:
    """Write ground-truth z-depth `depth/<stem>.npy`, (H, W) float32 metres, 0 = invalid."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    (Path(scene_dir) / "depth").mkdir(parents=True, exist_ok=True)
    np.save(Path(scene_dir) / "depth" / f"{_stem(stem)}.npy", depth, allow_pickle=False)


def write_visibility(scene_dir: Path, stem_i: str | int, stem_j: str | int, visibility: np.ndarray) -> None:
    """Write `visibility/<stem_i>_<stem_j>.npy`: (H, W) uint8, 1 where frame i's point is visible in frame j."""
    visibility = np.asarray(visibility)
    if visibility.ndim != 2:
        raise ValueError(f"visibility must be (H, W), got {visibility.shape}")
    (Path(scene_dir) / "visibility").mkdir(parents=True, exist_ok=True)
    path = Path(scene_dir) / "visibility" / f"{_stem(stem_i)}_{_stem(stem_j)}.npy"
    np.save(path, (visibility != 0).astype(np.uint8), allow_pickle=False)


def write_moving(scene_dir: Path, stem: str | int, moving: np.ndarray) -> None:
    """Write `moving/<stem>.png`: (H, W) uint8, 255 on independently moving objects (input: nonzero = moving)."""
    moving = np.asarray(moving)
    if moving.ndim != 2:
        raise ValueError(f"moving must be (H, W), got {moving.shape}")
    (Path(scene_dir) / "moving").mkdir(parents=True, exist_ok=True)
    path = Path(scene_dir) / "moving" / f"{_stem(stem)}.png"
    Image.fromarray(np.where(moving != 0, 255, 0).astype(np.uint8)).save(path)


def write_scene(
    root: Path,
    name: str,
    frames: Sequence[np.ndarray] | None,
    K: np.ndarray,
    poses: np.ndarray | None = None,
    depths: Sequence[np.ndarray] | None = None,
    suffix: str = ".png",
) -> Path:
    """Write a scene folder `root/name`: frames `000000.png` ..., `cam.txt`, and optionally
    `poses.txt` and `depth/000000.npy` ....

    Args:
        frames: (H, W, 3) uint8 RGB images in temporal order, or None when the caller writes the
            frames itself (e.g. `prepare` keeping KITTI's frame numbers).
        K: (3, 3) intrinsics, pixels of the frames as written.
        poses: (N, 4, 4) camera-to-world poses, one per frame.
        depths: (H, W) z-depths, metres, one per frame, stored under the frames' stems.
        suffix: `.png` (lossless; the default) or `.jpg`.
    Returns:
        The scene folder.
    """
    scene_dir = Path(root) / name
    scene_dir.mkdir(parents=True, exist_ok=True)
    if frames is not None:
        for other, label in ((poses, "poses"), (depths, "depths")):
            if other is not None and len(other) != len(frames):
                raise ValueError(f"{len(other)} {label} for {len(frames)} frames")
        for i, frame in enumerate(frames):
            write_image(frame_path(scene_dir, i, suffix), frame)
    write_cam(scene_dir / "cam.txt", K)
    if poses is not None:
        write_poses(scene_dir / "poses.txt", poses)
    for i, depth in enumerate(() if depths is None else depths):
        write_depth(scene_dir, i, depth)
    return scene_dir
