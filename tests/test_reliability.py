"""Reliability (issue 9): bad input at every entry point, untrusted files, interrupted runs,
numerical faults, distributed failures.

Everything that is about the command line goes through the real CLI in a subprocess
(`python -m masksfm ...`): exit code, stderr and files are what a user sees.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from masksfm.checkpoints import LAST, load_checkpoint, save_checkpoint, unprefixed

from helpers import DDP_EXACT, SMALL, encode_mp4, mask_setting, run_masksfm

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}


def masksfm(*args, **kwargs) -> subprocess.CompletedProcess:
    """The real command line in a subprocess, one thread, no warnings."""
    return run_masksfm(*args, env=ENV, **kwargs)


def copy_data(data: Path, to: Path, scenes: int | None = None) -> Path:
    """A private copy of the shared dataset (frames, cam.txt, poses.txt, split files) to damage."""
    shutil.copytree(data, to, ignore=shutil.ignore_patterns("visibility", "moving"))
    return to


def first_scene(data: Path) -> Path:
    return data / (data / "train.txt").read_text().split()[0]


def sliding_texture(frames: int = 12, size: tuple[int, int] = (64, 96)) -> list[np.ndarray]:
    """Random texture seen through a window sliding 4 pixels a frame."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (size[0], size[1] + 4 * frames, 3), dtype=np.uint8)
    return [np.ascontiguousarray(texture[:, 4 * k:4 * k + size[1]]) for k in range(frames)]


# --- 1. bad input at every entry point -----------------------------------------------------------
#
# Each case: (id, build) where build(tmp, data, run) damages a private copy of something and returns
# (argv, what stderr must name). The table runs once, a few cases at a time, in a fixture.


def _train(data, tmp, *extra):
    return ["train", data, "--out", tmp / "run", "--steps", "1", *SMALL, *extra]


def _damaged_scene(edit, *extra):
    """A case whose training data has one scene damaged by `edit(scene) -> named path`."""

    def build(tmp, data, run):
        data = copy_data(data, tmp / "data")
        named = edit(first_scene(data))
        return _train(data, tmp, *extra), named

    return build


def _corrupt_image(scene):
    (scene / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return scene / "000003.png"


def _truncated_image(scene):
    frame = scene / "000001.png"
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])
    return frame


def _image_of_other_size(scene):
    from PIL import Image

    Image.new("RGB", (100, 50)).save(scene / "000005.png")
    return scene / "000005.png"


def _write(name, text):
    def edit(scene):
        (scene / name).write_text(text)
        return scene / name

    return edit


def _remove(name):
    def edit(scene):
        (scene / name).unlink()
        return scene / name

    return edit


def _poses_with_nan(scene):
    lines = (scene / "poses.txt").read_text().splitlines()
    lines[2] = " ".join(["nan"] * 12)
    (scene / "poses.txt").write_text("\n".join(lines) + "\n")
    return scene / "poses.txt"


def _poses_short(scene):
    lines = (scene / "poses.txt").read_text().splitlines()
    (scene / "poses.txt").write_text("\n".join(lines[:-3]) + "\n")
    return scene / "poses.txt"


def _empty_scene(scene):
    for frame in scene.glob("*.png"):
        frame.unlink()
    return scene


def _short_sequences(tmp, data, run):
    data = copy_data(data, tmp / "data")
    for name in (data / "train.txt").read_text().split():
        for frame in sorted((data / name).glob("*.png"))[2:]:
            frame.unlink()
        (data / name / "poses.txt").unlink()
        shutil.rmtree(data / name / "depth")
    return _train(data, tmp), data / "train.txt"


def _empty_train_split(tmp, data, run):
    data = copy_data(data, tmp / "data")
    (data / "train.txt").write_text("")
    return _train(data, tmp), data / "train.txt"


def _split_names_missing_scene(tmp, data, run):
    data = copy_data(data, tmp / "data")
    (data / "train.txt").write_text("scene_000\nnot_there\n")
    return _train(data, tmp), "not_there"


def _no_data_folder(tmp, data, run):
    return _train(tmp / "nowhere", tmp), tmp / "nowhere"


def _corrupt_dataset_json(tmp, data, run):
    data = copy_data(data, tmp / "data")
    (data / "dataset.json").write_text("{not json")
    return ["eval", "depth", run, data], data / "dataset.json"


def _config_file(text):
    def build(tmp, data, run):
        (tmp / "cfg.yaml").write_text(text)
        return _train(data, tmp, "--config", tmp / "cfg.yaml"), tmp / "cfg.yaml"

    return build


def _set(override, named):
    def build(tmp, data, run):
        return _train(data, tmp, "--set", override), named

    return build


def _flag(argv_of, named):
    def build(tmp, data, run):
        return argv_of(tmp, data, run), named

    return build


def _out_is_a_file(tmp, data, run):
    (tmp / "file").write_text("x")
    return ["train", data, "--out", tmp / "file" / "run", "--steps", "1", *SMALL], tmp / "file"


def _last(run):
    return run / "checkpoints" / LAST


def _checkpoint_missing(tmp, data, run):
    (tmp / "emptyrun").mkdir()
    return ["eval", "depth", tmp / "emptyrun", data], tmp / "emptyrun"


def _checkpoint_truncated(tmp, data, run):
    bad = tmp / "truncated.safetensors"
    with open(_last(run), "rb") as source:
        bad.write_bytes(source.read(os.path.getsize(_last(run)) // 2))
    return ["predict", bad, first_scene(data), "--out", tmp / "pred"], bad


def _checkpoint_other_architecture(tmp, data, run):
    tensors, meta = load_checkpoint(_last(run))
    meta["config"]["model"]["depth"] = "resnet18"
    other = tmp / "other.safetensors"
    save_checkpoint(other, {k: v for k, v in tensors.items() if k.startswith("model.")}, meta)
    return ["eval", "depth", other, data], other


def _checkpoint_bad_config(tmp, data, run):
    tensors, meta = load_checkpoint(_last(run))
    meta["config"]["loss"]["nonsense"] = 1
    other = tmp / "badconfig.safetensors"
    save_checkpoint(other, {k: v for k, v in tensors.items() if k.startswith("model.")}, meta)
    return ["eval", "pose", other, data], other


def _checkpoint_pickle(suffix, command):
    def build(tmp, data, run):
        path = tmp / f"weights{suffix}"
        torch.save({"w": torch.ones(2)}, path)
        return command(path, tmp, data), path

    return build


def _resume_truncated(tmp, data, run):
    run_copy = tmp / "run"
    (run_copy / "checkpoints").mkdir(parents=True)
    _last(run_copy).write_bytes(b"\x00" * 100)
    return ["train", data, "--out", run_copy, "--resume", "--steps", "1", *SMALL], _last(run_copy)


def _resume_other_architecture(tmp, data, run):
    run_copy = tmp / "run"
    (run_copy / "checkpoints").mkdir(parents=True)
    os.link(_last(run), _last(run_copy))
    return ["train", data, "--out", run_copy, "--resume", "--steps", "7", "--set", "model.depth=resnet18"], _last(run_copy)


def _bad_video(tmp, data, run):
    (tmp / "clip.mp4").write_bytes(os.urandom(20000))
    return ["prepare", "video", tmp / "clip.mp4", tmp / "out"], tmp / "clip.mp4"


def _truncated_video_for_trajectory(tmp, data, run):
    clip = encode_mp4(tmp / "clip.mp4", sliding_texture(12))
    clip.write_bytes(clip.read_bytes()[:1500])
    return ["predict", run, clip, "--out", tmp / "pred", "--trajectory"], clip


def _empty_test_split(tmp, data, run):
    data = copy_data(data, tmp / "data")
    (data / "test.txt").write_text("\n")
    return ["eval", "depth", run, data], data / "test.txt"


def _eval_pose_without_poses(tmp, data, run):
    data = copy_data(data, tmp / "data")
    for name in (data / "test.txt").read_text().split():
        (data / name / "poses.txt").unlink()
    return ["eval", "pose", run, data], data


def _corrupt_gt_depth(tmp, data, run):
    data = copy_data(data, tmp / "data")
    scene = data / (data / "test.txt").read_text().split()[0]
    (scene / "depth" / "000002.npy").write_bytes(b"garbage")
    return ["eval", "depth", run, data], scene / "depth" / "000002.npy"


def _predict_corrupt_image(tmp, data, run):
    (tmp / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return ["predict", run, tmp / "photo.jpg", "--out", tmp / "pred"], tmp / "photo.jpg"


def _kitti_odometry_bad_calib(tmp, data, run):
    sequence = tmp / "odo" / "sequences" / "09"
    (sequence / "image_2").mkdir(parents=True)
    from PIL import Image

    for k in range(3):
        Image.new("RGB", (120, 40)).save(sequence / "image_2" / f"{k:06d}.png")
    (sequence / "calib.txt").write_text("P0: 1 2 3\nP2: a b c\n")
    (sequence / "times.txt").write_text("0\n0.1\n0.2\n")
    return ["prepare", "kitti-odometry", tmp / "odo", tmp / "out"], sequence / "calib.txt"


BAD_INPUTS = [
    ("image-corrupt", _damaged_scene(_corrupt_image)),
    ("image-truncated-in-loader-worker", _damaged_scene(_truncated_image, "--set", "data.workers=1")),
    ("image-other-size", _damaged_scene(_image_of_other_size)),
    ("cam-missing", _damaged_scene(_remove("cam.txt"))),
    ("cam-words", _damaged_scene(_write("cam.txt", "fx fy cx\n1 2 3\n0 0 1\n"))),
    ("cam-shape", _damaged_scene(_write("cam.txt", "100 0 50\n0 100 30\n"))),
    ("cam-nan", _damaged_scene(_write("cam.txt", "nan 0 50\n0 100 30\n0 0 1\n"))),
    ("cam-zero-focal", _damaged_scene(_write("cam.txt", "0 0 50\n0 100 30\n0 0 1\n"))),
    ("cam-not-intrinsics", _damaged_scene(_write("cam.txt", "100 0 50\n0 100 30\n5 5 5\n"))),
    ("poses-words", _damaged_scene(_write("poses.txt", "one two three\n"))),
    ("poses-shape", _damaged_scene(_write("poses.txt", "1 0 0 0 0 1 0 0 0 0 1\n" * 10))),
    ("poses-nan", _damaged_scene(_poses_with_nan)),
    ("poses-count", _damaged_scene(_poses_short)),
    ("scene-empty", _damaged_scene(_empty_scene)),
    ("sequences-too-short", _short_sequences),
    ("split-empty", _empty_train_split),
    ("split-missing-scene", _split_names_missing_scene),
    ("data-missing", _no_data_folder),
    ("dataset-json-corrupt", _corrupt_dataset_json),
    ("config-unknown-key", _config_file("loss:\n  masks: multimask\n")),
    ("config-wrong-type", _config_file("optim:\n  lr: fast\n")),
    ("config-not-mapping", _config_file("- 1\n- 2\n")),
    ("config-bad-yaml", _config_file("loss: [unclosed\n")),
    ("config-missing", _flag(lambda tmp, data, run: _train(data, tmp, "--config", tmp / "none.yaml"), "none.yaml")),
    ("set-unknown-key", _set("loss.bogus=1", "loss.bogus")),
    ("set-wrong-type", _set("optim.steps=many", "optim.steps")),
    ("set-bad-choice", _set("loss.mask=magic", "loss.mask")),
    ("set-no-value", _set("loss.repeats", "loss.repeats")),
    ("set-pose-net-reads-too-small", _set("model.pose_downsample=3", "model.pose_downsample")),
    ("flag-bad-int", _flag(lambda tmp, data, run: _train(data, tmp, "--steps", "0"), "--steps")),
    ("flag-height-too-small", _flag(lambda tmp, data, run: _train(data, tmp, "--height", "16"), "data.height")),
    ("flag-unknown", _flag(lambda tmp, data, run: _train(data, tmp, "--colour", "red"), "--colour")),
    ("flag-missing-out", _flag(lambda tmp, data, run: ["train", data], "--out")),
    ("flag-bad-choice", _flag(lambda tmp, data, run: ["export", run, "--format", "tflite", "--out", tmp / "x"],
                              "--format")),
    ("out-under-a-file", _out_is_a_file),
    ("checkpoint-missing", _checkpoint_missing),
    ("checkpoint-truncated", _checkpoint_truncated),
    ("checkpoint-other-architecture", _checkpoint_other_architecture),
    ("checkpoint-bad-config", _checkpoint_bad_config),
    ("checkpoint-pt-eval", _checkpoint_pickle(".pt", lambda p, tmp, data: ["eval", "depth", p, data])),
    ("resume-truncated", _resume_truncated),
    ("resume-other-architecture", _resume_other_architecture),
    ("video-garbage", _bad_video),
    ("video-truncated", _truncated_video_for_trajectory),
    ("eval-empty-split", _empty_test_split),
    ("eval-pose-no-poses", _eval_pose_without_poses),
    ("eval-gt-depth-corrupt", _corrupt_gt_depth),
    ("predict-corrupt-image", _predict_corrupt_image),
    ("kitti-odometry-bad-calib", _kitti_odometry_bad_calib),
    ("synth-bad-count", _flag(lambda tmp, data, run: ["synth", tmp / "s", "--scenes", "-1"], "--scenes")),
]


@pytest.fixture(scope="module")
def bad_input_results(synth_dataset, tiny_run, tmp_path_factory):
    """Every BAD_INPUTS case through the real CLI, three at a time: id -> (result, named, argv)."""
    cases = []
    for case_id, build in BAD_INPUTS:
        tmp = tmp_path_factory.mktemp(case_id)
        argv, named = build(tmp, synth_dataset, tiny_run)
        cases.append((case_id, argv, named))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: masksfm(*case[1]), cases))
    return {case_id: (result, named, argv) for (case_id, argv, named), result in zip(cases, results)}


@pytest.mark.slow
@pytest.mark.parametrize("case_id", [case_id for case_id, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(case_id, bad_input_results):
    result, named, argv = bad_input_results[case_id]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (argv, result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("masksfm: error: "), lines[0]
    assert str(named) in lines[0], (named, lines[0])


@pytest.mark.slow
def test_debug_shows_the_traceback(synth_dataset, tmp_path):
    result = masksfm("--debug", "eval", "depth", tmp_path / "nothing", synth_dataset)
    assert result.returncode != 0 and "Traceback" in result.stderr and "MasksfmError" in result.stderr


# --- 2. untrusted files --------------------------------------------------------------------------


class Hostile:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_hostile_pickles_are_refused_and_never_run(synth_dataset, tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps(Hostile(marker))
    (tmp_path / "hostile.pkl").write_bytes(raw)
    torch.save({"model": Hostile(marker)}, tmp_path / "hostile.pt")  # the zip format of torch.save
    (tmp_path / "renamed.safetensors").write_bytes(raw)
    shutil.copy(tmp_path / "hostile.pt", tmp_path / "encoder.pth")
    calls = [
        ["eval", "depth", tmp_path / "hostile.pt", synth_dataset],
        ["predict", tmp_path / "hostile.pkl", first_scene(synth_dataset), "--out", tmp_path / "p"],
        ["export", tmp_path / "renamed.safetensors", "--format", "onnx", "--out", tmp_path / "m.onnx"],
        ["train", synth_dataset, "--out", tmp_path / "r", *SMALL, "--set", "model.depth=resnet18",
         "--set", f"model.pretrained={tmp_path / 'encoder.pth'}"],
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda argv: masksfm(*argv), calls))
    for argv, result in zip(calls, results):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (argv, result.stderr[-2000:])
        assert "refused" in lines[0] and "save_file(torch.load(" in lines[0], lines[0]
        assert "Traceback" not in result.stderr
    assert not marker.exists(), "a refused file ran its code"
    # The control: the same bytes do run their code when unpickled.
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(tmp_path / 'hostile.pkl')!r}, 'rb'))"],
                   env=ENV, check=True, timeout=60)
    assert marker.exists()


# --- 3. interrupted runs -------------------------------------------------------------------------

REFERENCE_STEPS = 4


def train_args(data: Path, out: Path, *extra) -> list:
    return ["train", data, "--out", out, "--steps", REFERENCE_STEPS, "--checkpoint-every", "1", "--device", "cpu",
            *SMALL, *extra]


def launch(argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "masksfm", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (the trainer's appear when its loop starts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(mask >> (signum - 1) & 1)


def wait_until(condition, timeout: float = 240, process: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended first: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def weights(run: Path, name: str = LAST) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run / "checkpoints" / name)
    return unprefixed(tensors, "model") | unprefixed(tensors, "optimizer")


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def step_of(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / LAST)[1]["step"]


@pytest.fixture(scope="module")
def reference(synth_dataset, tmp_path_factory):
    """A run never interrupted, and how long its training loop took (seconds)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    process = launch(train_args(synth_dataset, out))
    wait_until(lambda: catches(process.pid, signal.SIGTERM), process=process)
    started = time.monotonic()
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out, time.monotonic() - started


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_is_bitwise_exact(reference, synth_dataset, tmp_path):
    """The run is killed (SIGKILL: no handler runs) at a random moment of its training loop; `--resume`
    finishes it, and the weights and optimizer state equal the uninterrupted run's bit for bit.
    MASKSFM_KILL_TRIALS=N repeats it with N moments."""
    reference_run, duration = reference
    seed = int(os.environ.get("MASKSFM_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    for trial in range(int(os.environ.get("MASKSFM_KILL_TRIALS", "1"))):
        run = tmp_path / f"run{trial}"
        process = launch(train_args(synth_dataset, run))
        wait_until(lambda: catches(process.pid, signal.SIGTERM), process=process)
        delay = rng.uniform(0, duration)
        time.sleep(delay)
        process.kill()
        process.communicate()
        killed_at = step_of(run) if (run / "checkpoints" / LAST).exists() else None
        resumed = masksfm(*train_args(synth_dataset, run), "--resume")
        assert resumed.returncode == 0, (seed, delay, resumed.stderr[-3000:])
        assert step_of(run) == REFERENCE_STEPS
        assert_bitwise_equal(weights(run), weights(reference_run))
        assert not list((run / "checkpoints").glob(".*.tmp")), "a killed save's temp file was left behind"
        print(f"trial {trial}: seed {seed}, killed after {delay:.2f} s at checkpoint step {killed_at}: bitwise equal")


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes_exactly(reference, synth_dataset, tmp_path):
    reference_run, _ = reference
    run = tmp_path / "run"
    process = launch(train_args(synth_dataset, run))
    wait_until(lambda: catches(process.pid, signal.SIGTERM), process=process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    stopped = step_of(run)
    assert 1 <= stopped < REFERENCE_STEPS
    assert err.strip().splitlines()[-1].startswith(f"masksfm: stopped: SIGTERM at step {stopped}: checkpoint saved")
    resumed = masksfm(*train_args(synth_dataset, run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bitwise_equal(weights(run), weights(reference_run))


@pytest.mark.slow
def test_ctrl_c_with_loader_workers_saves_and_exits(synth_dataset, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C, with a loader worker process."""
    run = tmp_path / "run"
    process = launch(train_args(synth_dataset, run, "--steps", "50", "--checkpoint-every", "1000",
                                "--set", "data.workers=1"), start_new_session=True)
    wait_until(lambda: catches(process.pid, signal.SIGTERM), process=process)
    time.sleep(random.uniform(0, 1))
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "masksfm: stopped: SIGINT at step" in err
    assert 1 <= step_of(run) < 50


def limit_file_size(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(reference, synth_dataset, tmp_path):
    """RLIMIT_FSIZE makes every write past 50 MB fail, as a full disk would (a checkpoint is ~400 MB)."""
    reference_run, _ = reference
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    # A hard link: the save must replace the file by a rename, never write into it.
    os.link(reference_run / "checkpoints" / LAST, run / "checkpoints" / LAST)
    before = (run / "checkpoints" / LAST).stat()
    result = masksfm(*train_args(synth_dataset, run, "--steps", REFERENCE_STEPS + 1), "--resume",
                     preexec_fn=limit_file_size(50 * 2**20))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "checkpoints/" in lines[0] and "could not write the checkpoint" in lines[0], lines[0]
    after = (run / "checkpoints" / LAST).stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert step_of(run) == REFERENCE_STEPS
    assert not list((run / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway "
                                               "(the out-under-a-file case of the bad-input table covers root)")
def test_unwritable_output_folder(synth_dataset, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = masksfm(*train_args(synth_dataset, out / "run"))
    finally:
        out.chmod(0o700)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and str(out / "run") in lines[0], result.stderr


def test_stale_temp_files_are_removed(tmp_path):
    from masksfm.checkpoints import remove_stale_temp_files

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale, other = folder / ".last.safetensors.abc123.tmp", folder / ".notes.tmp"
    stale.write_bytes(b"half")
    other.write_bytes(b"mine")
    assert remove_stale_temp_files(folder) == [stale]
    assert not stale.exists() and other.exists()


# --- 4. numerical faults -------------------------------------------------------------------------


class NaNGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward (a finite loss whose gradient is not)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_too_many_in_a_row_stop_the_run(synth_dataset, tmp_path, monkeypatch,
                                                                         capsys):
    """Step 0: a NaN image batch; 1: an infinite loss; 2: a good step; 3: a finite loss with NaN
    gradients; 4, 5: NaN losses. Each bad step is skipped with a warning and counted; 0-1 are two in a
    row, under the limit (3); 3-5 are three: the run stops with the weights of after step 2 saved."""
    import masksfm.faults
    import masksfm.training as T
    from masksfm.config import load_config

    monkeypatch.setattr(masksfm.faults, "MAX_NONFINITE_IN_A_ROW", 3)
    config = load_config(None, ["data.height=32", "data.width=104", "optim.batch_size=1", "data.workers=0",
                                "optim.steps=20", "train.checkpoint_every=1000", "train.log_every=1"])
    trainer = T.Trainer(synth_dataset, tmp_path / "run", config, device="cpu", progress=False)
    trainer.val_scenes = []
    model_forward, objective = trainer.net, T.batch_objective
    good: dict[str, torch.Tensor] = {}

    def net(images):
        if trainer.step == 0:
            images = images * float("nan")
        elif trainer.step == 3:  # before its forward, which updates batch normalisation's statistics
            good.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return model_forward(images)

    def poisoned(*args, **kwargs):
        result = objective(*args, **kwargs)
        if trainer.step == 1:
            result.loss = result.loss + float("inf")
        elif trainer.step == 3:
            result.loss = NaNGradient.apply(result.loss)
        elif trainer.step >= 4:
            result.loss = result.loss * float("nan")
        return result

    trainer.net = net
    monkeypatch.setattr(T, "batch_objective", poisoned)
    with pytest.raises(T.MasksfmError, match="3 steps in a row had a non-finite loss or gradient") as stop:
        trainer.train()
    assert "from before step 3" in str(stop.value) and "--resume" in str(stop.value)
    assert trainer.step == 6 and trainer.skipped_steps == 5
    warnings = [line for line in capsys.readouterr().err.splitlines() if "step skipped" in line]
    assert len(warnings) == 5 and "step 0: non-finite" in warnings[0]

    tensors, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / LAST)
    assert meta["step"] == 6 and meta["skipped_steps"] == 5
    saved = unprefixed(tensors, "model")
    # the last good weights and batch-norm statistics (the pose net's), untouched by the skipped steps
    assert any(k.endswith("running_mean") for k in saved)
    assert_bitwise_equal(saved, good)
    assert all(torch.isfinite(v).all() for v in saved.values())
    adam_steps = {float(v) for k, v in unprefixed(tensors, "optimizer").items() if k.endswith(".step")}
    assert adam_steps == {1.0}, adam_steps  # step 2 updated the weights, nothing else

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    counter = [(e.step, e.value) for e in events.Scalars("train/skipped_steps")]
    assert counter == [(0, 1), (1, 2), (3, 3), (4, 4), (5, 5)], counter
    assert [e.step for e in events.Scalars("loss/total")] == [3]  # the good step's terms only


def degenerate_batch(case: str, explainability: bool):
    """What the nets would give for one degenerate case, as leaf tensors (their gradients are checked):
    B = 2 snippets of 3 frames at 32 x 104, 4 scales."""
    torch.manual_seed(0)
    b, length, h, w = 2, 3, 32, 104
    images = torch.rand(b, length, 3, h, w)
    if case == "constant images":
        images = torch.full_like(images, 0.5)
    disparities = [(0.5 + 1.5 * torch.rand(b * length, 1, h >> s, w >> s)).requires_grad_() for s in range(4)]
    poses = torch.tensor([0.0, 0.0, 0.8, 0.0, 0.01, 0.0]).repeat(b, length - 1, 1)
    if case == "all masks zero":
        poses[..., 0] = 100.0  # every pixel lands 100 m to the side of the other view
    elif case == "zero motion":
        poses.zero_()
    poses.requires_grad_()
    explainability = [torch.rand(b, length - 1, h >> s, w >> s).clamp(0.05, 0.95).requires_grad_()
                      for s in range(4)] if explainability else None
    K = torch.tensor([[0.58 * w, 0, w / 2], [0, 1.92 * h, h / 2], [0, 0, 1]]).expand(b, 3, 3)
    from masksfm.objective import ModelOutput

    return ModelOutput(disparities, poses, explainability), images, K


DEGENERATE = ["all masks zero", "constant images", "zero motion"]
LOSS_VARIANTS = {mode: mask_setting(mode) for mode in ("multimask", "none", "explainability", "automask",
                                                          "multimask+automask")}
LOSS_VARIANTS["paper"] = ["loss.ssim=gauss13", "loss.rho=robust", "loss.below_mean_mask=true",
                          "loss.scales=downsample", "loss.dn=image_max", "loss.repeats=3"]


@pytest.mark.parametrize("variant", LOSS_VARIANTS)
@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_batches_give_finite_losses_and_gradients(case, variant):
    from masksfm.config import load_config
    from masksfm.objective import compute_objective

    cfg = load_config(None, LOSS_VARIANTS[variant]).loss
    out, images, K = degenerate_batch(case, explainability=cfg.mask == "explainability")
    objective = compute_objective(out, images, K, cfg)
    assert torch.isfinite(objective.loss), objective.terms
    assert all(torch.isfinite(v).all() for v in objective.terms.values()), objective.terms
    if case == "all masks zero" and cfg.mask in ("multimask", "multimask+automask"):
        assert objective.terms["mask_combined"] == 0  # the case is what it says
    objective.loss.backward()
    leaves = [*out.disparities, out.poses, *(out.explainability or [])]
    assert all(t.grad is None or torch.isfinite(t.grad).all() for t in leaves)
    assert out.disparities[0].grad is not None


# --- 5. distributed ------------------------------------------------------------------------------


def worker_of_rank(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker process of `rank`, from the environment torchrun gave it."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(line for line in status.read_text().splitlines() if line.startswith("PPid:")).split()[1])
            if ppid != parent:
                continue
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(status.parent.name)
    return None


@pytest.mark.slow
def test_ddp_worker_death_ends_the_job_and_resume_with_one_process(synth_dataset, tmp_path):
    """torchrun, 2 processes (gloo, CPU): process 1 is killed after the first checkpoint; the job ends
    with a message, not a hang; `--resume` in a single process finishes the run, close to the
    uninterrupted single-process run (DDP only reorders the gradient sum; with the pose net without
    batch normalisation, `DDP_EXACT`)."""
    exact = ("--set", DDP_EXACT)
    reference_run, run = tmp_path / "reference", tmp_path / "run"
    uninterrupted = masksfm(*train_args(synth_dataset, reference_run, *exact))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    job = subprocess.Popen([*torchrun, "-m", "masksfm", *map(str, train_args(synth_dataset, run, *exact))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_until(lambda: (run / "checkpoints" / LAST).exists(), process=job)
    victim = worker_of_rank(job.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, err = job.communicate(timeout=120)
    assert time.monotonic() - killed < 90, "the job hung after losing a process"
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("masksfm: ")]
    assert ours and any("process 0 of 2" in line or "SIGTERM at step" in line for line in ours), err[-4000:]
    assert "masksfm/training.py" not in err, err[-4000:]  # torchrun prints its own report; ours is one line
    stopped = step_of(run)
    assert 1 <= stopped < REFERENCE_STEPS, "the job finished before the kill: nothing tested"

    resumed = masksfm(*train_args(synth_dataset, run, *exact), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_of(run) == REFERENCE_STEPS
    # The resumed steps' losses are the uninterrupted run's. (The weights are compared loosely: Adam
    # moves a weight whose gradient is float noise by ±lr, and the sign of noise is not reproducible
    # across process counts; a resume from the wrong state would be off by a whole update.)
    resumed_losses, reference_losses = losses(run), losses(reference_run)
    after = [step for step in reference_losses if step > stopped]
    assert after and all(abs(resumed_losses[s] - reference_losses[s]) < 1e-4 for s in after), \
        (stopped, resumed_losses, reference_losses)
    mine, theirs = weights(run), weights(reference_run)
    _, meta = load_checkpoint(reference_run / "checkpoints" / LAST)
    from masksfm.config import from_dict
    from masksfm.model import build_model

    torch.manual_seed(meta["config"]["train"]["seed"])
    start = build_model(from_dict(meta["config"])).state_dict()
    update = torch.cat([(theirs[k] - start[k]).flatten() for k in start])
    gap = torch.cat([(mine[k] - theirs[k]).flatten() for k in start])
    assert gap.norm() < 0.5 * update.norm(), (gap.norm(), update.norm(), stopped, ours)


def losses(run: Path) -> dict[int, float]:
    """loss/total per step from a run's TensorBoard events (the latest value of a step that was redone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events_file in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(events_file))
        events.Reload()
        values.update({e.step: e.value for e in events.Scalars("loss/total")})
    return values
