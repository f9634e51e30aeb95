"""bench/learning.py's smoke test: a tiny set, 4 steps, the real bench in a subprocess; resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "learning.py"), "--quick", "--threads", "1",
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--keep-checkpoints",
                           *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_quick_learning_bench_runs_scores_and_resumes(tmp_path):
    first = run_bench(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "0 runs done before, 1 to run" in first.stdout
    table = json.loads((tmp_path / "out" / "learning.json").read_text())["table"]
    baseline, default = table["baseline"], table["default"]
    # The guesses on the set's test scenes, and the run's figures with their ratios to them.
    assert 0 < baseline["abs_rel"][0] < 1 and baseline["ate5"][0] > 0 and baseline["ate3"][0] > 0
    assert default["n"] == 1 and default["abs_rel/base"][0] == pytest.approx(default["abs_rel"][0] / baseline["abs_rel"][0])
    assert "| default | 1 |" in (tmp_path / "out" / "learning.md").read_text()
    # The pose error's parts: the guess heads straight and never turns, so its errors are the truth's
    # own headings and turns, which a rendered street drive has; the run's are measured too.
    for key in ("direction_err", "speed_spread", "rotation_err"):
        assert baseline[key][0] > 0 and default[key][0] > 0
    assert baseline["parts_n"] == default["parts_n"] == 1
    # The depth's scale over a drive: a constant depth's follows the true depth's median, which moves.
    for key in ("depth_scale_spread", "depth_scale_step"):
        assert baseline[key][0] > 0 and default[key][0] > 0
    # The net's own 3-frame snippets, against the guess's 3-frame snippets; the guess has no snippets of its own.
    run = json.loads(next((tmp_path / "work").glob("*steps/default/seed*/result.json")).read_text())
    assert run["own_length"] == 3 and run["ate_own"] > 0
    assert default["ate_own/base"][0] == pytest.approx(run["ate_own"] / baseline["ate3"][0])
    assert baseline["ate_own"][0] != baseline["ate_own"][0]  # NaN: "—" in the table
    # A run scored before the parts existed gets them on the next call, from its checkpoints, not retrained.
    result_file = next((tmp_path / "work").glob("*steps/default/seed*/result.json"))
    stored = json.loads(result_file.read_text())
    result_file.write_text(json.dumps({k: v for k, v in stored.items()
                                       if k not in ("direction_err", "ate_own", "depth_scale_step")}))
    again = run_bench(tmp_path)
    assert again.returncode == 0 and "1 runs done before, 0 to run" in again.stdout
    rescored = json.loads(result_file.read_text())
    assert rescored["direction_err"] == pytest.approx(stored["direction_err"])
    assert rescored["ate_own"] == pytest.approx(stored["ate_own"])
    assert rescored["depth_scale_step"] == pytest.approx(stored["depth_scale_step"])
    # --flip scores the kept nets read as they are and mirrored, in a row of their own.
    flipped = run_bench(tmp_path, "--flip")
    assert flipped.returncode == 0 and "1 runs done before, 0 to run" in flipped.stdout, flipped.stderr
    table = json.loads((tmp_path / "out" / "learning.json").read_text())["table"]
    row = table["default, read with --flip"]
    assert row["n"] == 1 and row["abs_rel"][0] != table["default"]["abs_rel"][0] and row["ate5"][0] > 0
    assert "| default, read with --flip | 1 |" in (tmp_path / "out" / "learning.md").read_text()


def test_a_variants_overrides_win_over_the_benchs_budget():
    # The bench resets the schedule for its short budget; a variant that sets its own keeps it
    # (the decay variants once ran without their decay because the reset came after them).
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import learning
    finally:
        sys.path.remove(str(ROOT / "bench"))
    args = learning.parse_args(["--steps", "600", "--height", "64", "--width", "224"])
    decayed = learning.run_config("decay450", 1, args)
    assert decayed.optim.lr_decay_steps == [450] and decayed.optim.steps == 600 and decayed.train.seed == 1
    plain = learning.run_config("default", 1, args)
    assert plain.optim.lr_decay_steps == [] and plain.data.height == 64 and plain.data.width == 224


def test_depth_scale_parts_read_a_known_scale_per_frame(synth_dataset):
    """The true depth times a known factor per frame, given as disparities: the spread and the step are
    those of the factors' logarithms, exactly (the pixels without a true depth are left out)."""
    import numpy as np

    from masksfm.data.layout import load_split
    from masksfm.inference import scene_items

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import learning
    finally:
        sys.path.remove(str(ROOT / "bench"))
    scenes = load_split(synth_dataset, "train")
    items = scene_items(scenes)
    logs = np.random.default_rng(0).normal(0, 0.05, len(items))

    def scaled_truth(indices, batch):
        out = []
        for k, item in zip(indices, batch):
            gt = item.read_gt().astype(np.float64)
            out.append(np.where(gt > 0, 1.0 / np.maximum(gt * np.exp(logs[k]), 1e-12), 1.0))
        return out

    parts = learning.depth_scale_parts(scenes, scaled_truth)
    per_scene = np.split(logs, np.cumsum([len(scene) for scene in scenes])[:-1])
    assert parts["depth_scale_spread"] == pytest.approx(np.mean([x.std() for x in per_scene]), rel=1e-6)
    assert parts["depth_scale_step"] == pytest.approx(np.mean([np.sqrt(np.mean(np.diff(x) ** 2)) for x in per_scene]),
                                                      rel=1e-6)


def test_motion_ceiling_on_the_rendered_drives(synth_dataset):
    """bench/motion_ceiling.py in a subprocess on the suite's rendered set (the camera pitched on a
    car on level ground): any rigid motion keeps the truth (ATE 0), the chord's vertical plane keeps
    the climb the chord alone drops; the chord's truth read with a speed error is worse the larger the
    error, and read at one speed loses the speed changes (the truth's speed varies on these drives)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "motion_ceiling.py"), str(synth_dataset),
                          "--split", "train", "--speed-noise", "0,0.01,0.05"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[2].strip(): float(line.split("|")[3]) for line in out.stdout.splitlines()[2:]}
    assert set(rows) == {"guess", "free", "vehicle", "vehicle_vertical", "vehicle, constant speed",
                         "vehicle, speed ±0", "vehicle, speed ±0.01", "vehicle, speed ±0.05"}
    assert rows["free"] < 1e-9
    assert rows["vehicle_vertical"] < rows["vehicle"] < rows["guess"], rows
    assert rows["vehicle, speed ±0"] == rows["vehicle"]
    assert rows["vehicle"] < rows["vehicle, speed ±0.01"] < rows["vehicle, speed ±0.05"], rows
    assert rows["vehicle"] < rows["vehicle, constant speed"], rows


def test_motion_ceiling_refuses_a_bad_speed_noise(synth_dataset):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "motion_ceiling.py"), str(synth_dataset),
                          "--speed-noise", "0.01,-1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "speed noise must be finite and >= 0" in out.stderr, out.stderr
