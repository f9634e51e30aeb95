"""`masksfm demo` end to end through the real command line, at a tiny size: the report exists, is
self-contained, shows the metrics beside the baseline, and the files it names exist."""

from __future__ import annotations

import json
import re

import pytest

from helpers import run_masksfm

TINY = ["--minutes", "0.02", "--scenes", "3", "--frames", "6", "--height", "32", "--width", "104"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One tiny demo run (3 drives x 6 frames at 104x32, ~1 s of training): (process, output folder)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    done = run_masksfm("demo", "--out", str(out), *TINY, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, out


@pytest.mark.slow
def test_report_is_written_and_announced(demo):
    done, out = demo
    report = out / "report.html"
    assert report.is_file()
    assert f"report: {report}" in done.stdout
    assert "abs_rel" in done.stdout and "constant depth" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["depth"]) >= {"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3", "count"}
    assert metrics["steps"] >= 1


@pytest.mark.slow
def test_report_is_self_contained(demo):
    _, out = demo
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page and "<script" not in page
    images = re.findall(r"""<img[^>]*\ssrc=["']([^"']*)["']""", page)
    assert len(images) >= 4  # depth strip, masks, trajectory, curves
    assert all(src.startswith("data:image/png;base64,") for src in images)


@pytest.mark.slow
def test_report_shows_metrics_beside_the_baseline(demo):
    _, out = demo
    page = (out / "report.html").read_text()
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3", "snippet ATE"):
        assert f"<code>{name}</code>" in page
    assert "constant depth" in page and "lower is better" in page and "higher is better" in page
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['depth']['abs_rel']:.3f}" in page
    assert f"{metrics['depth_constant']['abs_rel']:.3f}" in page
    for mask in ("edge", "overlap", "blank", "combined"):
        assert f"{mask} mask" in page or f"<dt>{mask}</dt>" in page


@pytest.mark.slow
def test_files_the_report_names_exist(demo):
    _, out = demo
    page = (out / "report.html").read_text()
    paths = re.findall(r"<code class='path'>([^<]+)</code>", page)
    assert len(paths) >= 5
    for path in paths:
        assert (out / path).exists(), path


@pytest.mark.slow
def test_rerun_reuses_identical_data_and_rerenders_changed(demo, tmp_path):
    import shutil

    from masksfm.demo import DemoSettings, prepare_data

    _, out = demo
    settings = DemoSettings(**json.loads((out / "metrics.json").read_text())["settings"])
    data = tmp_path / "data"
    shutil.copytree(out / "data", data)
    assert prepare_data(data, settings, progress=False).startswith("re-using")
    changed = DemoSettings(**dict(vars(settings), frames=settings.frames + 1))
    assert prepare_data(data, changed, progress=False).startswith("rendered")
    assert json.loads((data / "dataset.json").read_text())["frames"] == settings.frames + 1
    assert prepare_data(data, changed, progress=False).startswith("re-using")


@pytest.mark.parametrize("args", [["--bogus"], ["--minutes", "0"], ["--scenes", "2"]])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args):
    done = run_masksfm("demo", "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksfm: error:"), done.stderr
    assert not (tmp_path / "out" / "data").exists()


def report_page(overrides: list[str]) -> str:
    """The report page of a made-up 400-step run of the default config with `overrides` (the
    warm-up guard of 300 steps, mask curves from step 300 on)."""
    from masksfm.config import load_config
    from masksfm.report import ReportData, render_html

    steps = list(range(0, 400, 10))
    scalars = {"loss/total": (steps, [0.3 - 1e-4 * s for s in steps]),
               "loss/photometric": (steps, [0.3 - 1e-4 * s for s in steps]),
               "val/abs_rel": ([100, 200, 300, 400], [0.5, 0.4, 0.3, 0.2])}
    for name, kept in (("edge", 0.97), ("overlap", 0.9), ("blank", 0.95), ("combined", 0.85)):
        scalars[f"masks/{name}"] = ([s for s in steps if s >= 300], [kept for s in steps if s >= 300])
    metrics = {k: 0.1 for k in ("abs_rel", "sq_rel", "rmse", "rmse_log")} | {"a1": 0.9, "a2": 0.95, "a3": 0.99, "count": 3}
    constant = {k: 0.5 for k in ("abs_rel", "sq_rel", "rmse", "rmse_log")} | {"a1": 0.3, "a2": 0.5, "a3": 0.7, "count": 3}
    pose = {"ate_mean": 0.01, "ate_std": 0.002, "sequences": {}}
    page = render_html(ReportData(
        settings={"scenes": 3, "frames": 6, "height": 32, "width": 104, "moving_cars": 2, "seed": 0, "minutes": 1},
        config=load_config("default", ["loss.guard=warmup", "loss.warmup_steps=300", *overrides]).to_dict(),
        steps=400, checkpoint="best", timings={"train": 60.0}, data_note="test",
        depth=metrics, depth_constant=constant, val_abs_rel_constant=0.5, pose=pose, pose_constant=pose,
        depth_examples=[], masks=None, trajectories={}, scalars=scalars))
    return page


def test_curves_after_the_warm_up_show_masks_and_the_switch():
    """The page for a run with the warm-up guard, past the warm-up: mask curves, the
    switch-on line, and no warning about the warm-up."""
    page = report_page([])
    assert "masks switch on" in page and "80% lower than a constant depth" in page
    assert "<code>model.motion=vehicle</code>" in page  # the camera model the run assumed
    assert "before the masks switch on" not in page and "class='warning'" not in page


@pytest.mark.parametrize("motion, words", [("vehicle", "never sideways or up and down"),
                                           ("vehicle_vertical", "tilted up or down, never sideways"),
                                           ("free", "any rigid motion")])
def test_report_says_what_the_motion_model_allows(motion, words):
    """The first paragraph names the run's `model.motion` and what it lets the camera do."""
    page = report_page([f"model.motion={motion}"])
    assert f"<code>model.motion={motion}</code> (" in page and words in page


def test_report_has_words_for_every_motion_model():
    """A motion model added to `model.motion` without its words would break the report of its runs."""
    from masksfm.config import MOTIONS
    from masksfm.report import MOTION_WORDS

    assert set(MOTION_WORDS) == set(MOTIONS)
