"""The synthetic street dataset (`masksfm synth`): seeded KITTI-like drives with exact ground truth.

Modules: `raycast` (primitives and the vectorized ray caster), `textures` (scikit-image photos as
mip pyramids), `street` (the procedural street, the drive, KITTI-like intrinsics), `render` (a
frame, and visibility between frames). This file writes them out in the sequence-folder layout
(docs/design.md §5):

    OUT/dataset.json  train.txt  val.txt  test.txt
    OUT/scene_000/000000.png ... cam.txt poses.txt depth/ visibility/ moving/

Ground truth: depth is the ray-cast z-depth (0 on sky); `visibility/<i>_<j>.npy` (j = i ± 1) is 1
where the ray from camera j to the point seen at a pixel of frame i meets nothing before it and
the point projects inside frame j; it is 0 on sky and on moving cars (their point is elsewhere at
the other instant); `moving/<i>.png` is 255 on moving cars. Poses are camera-to-world, relative
to the first frame (KITTI style).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from masksfm.data import layout
from masksfm.data.synthetic.raycast import Camera, Scene
from masksfm.data.synthetic.render import View, render_view, visibility
from masksfm.data.synthetic.street import CAMERA_HEIGHT, kitti_intrinsics, make_scene, make_trajectory
from masksfm.errors import MasksfmError

__all__ = ["render_dataset", "render_scene", "split_scenes", "make_scene", "make_trajectory", "kitti_intrinsics",
           "render_view", "visibility", "Camera", "Scene", "View"]

# How far beyond the last camera position the street goes on: what the last frame sees ahead.
VIEW_AHEAD = 160.0
MIN_SIZE = 16


def split_scenes(names: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Split scenes into train / val / test (docs/design.md §5).

    With N ≥ 3 scenes, val and test get max(1, round(0.15 N)) each; N = 2 gives one train and one
    test scene; N = 1 one train scene. Which scene goes where is drawn from `rng`.
    """
    n = len(names)
    if n >= 3:
        n_test = n_val = max(1, round(0.15 * n))
    else:
        n_test, n_val = (1 if n == 2 else 0), 0
    perm = [names[k] for k in rng.permutation(n)]
    return {
        "train": sorted(perm[n_test + n_val:]),
        "val": sorted(perm[n_test:n_test + n_val]),
        "test": sorted(perm[:n_test]),
    }


def render_scene(scene_dir: Path, rng: np.random.Generator, frames: int, K: np.ndarray, height: int, width: int,
                 moving_cars: int = 0, on_frame=None) -> Path:
    """Generate one street and drive, and write its scene folder.

    Args:
        scene_dir: the folder to write (created).
        rng: the scene's random generator (its only source of randomness).
        frames: frames to render.
        K: (3, 3) intrinsics, pixels; height, width: frame size, pixels.
        moving_cars: independently moving cars.
        on_frame: called once per rendered frame (progress).
    Returns:
        `scene_dir`.
    """
    poses = make_trajectory(rng, frames)
    travelled = np.linalg.norm(poses[-1, :3, 3] - poses[0, :3, 3])
    speed = travelled / max(frames - 1, 1)
    scene = make_scene(rng, travelled + VIEW_AHEAD, moving_cars, speed=max(speed, 0.5))
    cameras = [Camera(pose, K, height, width) for pose in poses]
    layout.write_scene(scene_dir.parent, scene_dir.name, None, K, np.linalg.inv(poses[0]) @ poses)
    instants = {}  # the scene at frames i − 1, i, i + 1, each built once

    def at(i: int) -> Scene:
        if i not in instants:
            instants[i] = scene.at(i)
            instants.pop(i - 3, None)
        return instants[i]

    for i, camera in enumerate(cameras):
        view = render_view(at(i), camera)
        layout.write_image(layout.frame_path(scene_dir, i), view.rgb)
        layout.write_depth(scene_dir, i, view.depth)
        layout.write_moving(scene_dir, i, view.moving)
        valid = (view.depth > 0) & ~view.moving
        for j in (i - 1, i + 1):
            if 0 <= j < frames:
                layout.write_visibility(scene_dir, i, j, visibility(at(j), cameras[j], view.points, valid))
        if on_frame is not None:
            on_frame()
    return scene_dir


_progress = None  # a render worker's queue to the parent's progress bar


def _start_worker(queue) -> None:
    global _progress
    _progress = queue


def _render_scene_task(scene_dir: Path, stream: np.random.SeedSequence, frames: int, K: np.ndarray,
                       height: int, width: int, moving_cars: int) -> None:
    render_scene(scene_dir, np.random.default_rng(stream), frames, K, height, width, moving_cars,
                 on_frame=lambda: _progress.put(1))


def _render_parallel(jobs: list, workers: int, bar) -> None:
    """Render scenes in worker processes; frames are reported back through a queue for the bar."""
    import multiprocessing
    import queue as queues
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold torch's thread pools, which a forked child can deadlock on.
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(progress,)) as pool:
        futures = [pool.submit(_render_scene_task, *job) for job in jobs]
        while not all(f.done() for f in futures):
            try:
                bar.update(progress.get(timeout=0.2))
            except queues.Empty:
                pass
        for future in futures:
            future.result()  # a worker's exception surfaces here


def _default_workers(scenes: int, frames: int, height: int, width: int) -> int:
    """One process per scene up to the CPUs we may use, when the render is long enough to pay for
    starting them (about half a second each); small renders stay in this process."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(cpus, scenes) if scenes * frames * height * width >= 4_000_000 else 1


def render_dataset(out: Path, scenes: int = 6, frames: int = 40, height: int = 128, width: int = 416,
                   seed: int = 0, moving_cars: int = 0, progress: bool = True, workers: int | None = None) -> Path:
    """Render a synthetic street dataset with exact ground truth into `out`.

    Same arguments, same bytes (whatever `workers`). The dataset is written beside `out` and moved
    into place when complete, so an interrupted render never leaves a half-written dataset; an
    earlier synthetic dataset at `out` is replaced.

    Args:
        out: the dataset folder.
        scenes: number of scenes (drives), each from its own random stream of `seed`.
        frames: frames per scene.
        height, width: frame size, pixels (intrinsics are KITTI's, scaled to it).
        seed: random seed.
        moving_cars: independently moving cars per scene.
        progress: show a progress bar.
        workers: processes rendering scenes in parallel; None = one per CPU (at most one per
            scene) for renders large enough to gain from it, else 1.
    Returns:
        `out`.
    """
    out = Path(out)
    for name, value, least in (("scenes", scenes, 1), ("frames", frames, 1), ("height", height, MIN_SIZE),
                               ("width", width, MIN_SIZE), ("moving_cars", moving_cars, 0)):
        if int(value) != value or value < least:
            raise MasksfmError(f"synth: {name} must be an integer ≥ {least}, got {value}")
    layout.check_output_folder(out, "synthetic")
    from masksfm import __version__
    from masksfm.progress import progress_bar

    # SeedSequence children: scene k's content depends on (seed, k) only, not on how many scenes there are.
    streams = np.random.SeedSequence(seed % 2**64).spawn(scenes + 1)
    names = [f"scene_{k:03d}" for k in range(scenes)]
    K = kitti_intrinsics(height, width)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    jobs = [(partial / name, stream, frames, K, height, width, moving_cars) for name, stream in zip(names, streams[1:])]
    workers = _default_workers(scenes, frames, height, width) if workers is None else max(1, min(workers, scenes))
    with progress_bar(scenes * frames, "synth", "frame", enabled=progress, leave=False) as bar:
        if workers > 1:
            _render_parallel(jobs, workers, bar)
        else:
            for scene_dir, stream, *rest in jobs:
                render_scene(scene_dir, np.random.default_rng(stream), *rest, on_frame=bar.update)
    for split, members in split_scenes(names, np.random.default_rng(streams[0])).items():
        layout.write_split(partial, split, members)
    layout.write_dataset_info(
        partial, "synthetic", generator="masksfm.data.synthetic", version=__version__, seed=seed, scenes=scenes,
        frames=frames, height=height, width=width, moving_cars=moving_cars, camera_height=CAMERA_HEIGHT,
        visibility="ray-cast between neighbouring frames; 0 on sky and on moving objects",
    )
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
