"""`masksfm eval depth` and `eval pose` on a real tiny run, and their protocol plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from masksfm.cli import main
from masksfm.data.layout import load_split, read_poses
from masksfm.evaluation import DEPTH_METRICS
from masksfm.geometry import pose_vec_to_mat, vehicle_chord
from masksfm.inference import (
    depth_items,
    evaluate_depth_items,
    frames_to_tensor,
    predict_disparity,
    predict_relative_poses,
    sequence_pose_results,
)
from masksfm.model import load_model
from masksfm.trajectory import relative_poses

from helpers import run_masksfm


def test_eval_depth_json(tiny_run, synth_dataset, tmp_path, capsys):
    out = tmp_path / "depth.json"
    main(["eval", "depth", str(tiny_run), str(synth_dataset), "--json", str(out)])
    metrics = json.loads(out.read_text())
    assert set(metrics) == set(DEPTH_METRICS) | {"count"}
    assert metrics["count"] == 10 and 0 < metrics["abs_rel"] < 2 and 0 <= metrics["a1"] <= 1
    assert "abs_rel" in capsys.readouterr().out


def test_eval_with_flip_reads_the_mirrored_frames_too(tiny_run, synth_dataset, tmp_path):
    """`--flip` through the commands: other figures than without it (the nets are not symmetric),
    those of `predict_disparity(flip=True)`; a folder of predictions has no model to read with."""
    figures = {}
    for flag in ([], ["--flip"]):
        depth, pose = tmp_path / f"depth{len(flag)}.json", tmp_path / f"pose{len(flag)}.json"
        main(["eval", "depth", str(tiny_run), str(synth_dataset), "--json", str(depth), *flag])
        main(["eval", "pose", str(tiny_run), str(synth_dataset), "--json", str(pose), "--out", str(tmp_path / "t"), *flag])
        figures[bool(flag)] = json.loads(depth.read_text()), json.loads(pose.read_text())
    assert figures[True][0]["abs_rel"] != figures[False][0]["abs_rel"]
    assert figures[True][1]["ate_mean"] != figures[False][1]["ate_mean"]
    model, config, _ = load_model(tiny_run)
    items = depth_items(synth_dataset, "test")

    def predict(indices, batch):
        frames = torch.cat([frames_to_tensor(item.read_image()[None], config.data.height, config.data.width)
                            for item in batch])
        return [d[0].numpy() for d in predict_disparity(model.depth_net, frames, torch.device("cpu"), flip=True)]

    assert evaluate_depth_items(items, predict)["abs_rel"] == pytest.approx(figures[True][0]["abs_rel"], rel=1e-6)
    folder = tmp_path / "preds"
    folder.mkdir()
    np.save(folder / "000000.npy", np.ones((4, 4), np.float32))
    result = run_masksfm("eval", "depth", folder, synth_dataset, "--flip")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--flip" in result.stderr


@pytest.mark.slow
def test_external_predictions_give_the_models_numbers(tiny_run, synth_dataset, tmp_path):
    """Someone else's .npy predictions evaluate like the model's own when they are the model's own."""
    model, config, _ = load_model(tiny_run)
    items = depth_items(synth_dataset, "test")
    folder = tmp_path / "preds"
    folder.mkdir()
    for k, item in enumerate(items):
        frames = frames_to_tensor(item.read_image()[None], config.data.height, config.data.width)
        np.save(folder / f"{k:06d}.npy", predict_disparity(model.depth_net, frames, torch.device("cpu"))[0, 0].numpy())
    own, theirs = tmp_path / "own.json", tmp_path / "theirs.json"
    main(["eval", "depth", str(tiny_run), str(synth_dataset), "--json", str(own)])
    main(["eval", "depth", str(folder), str(synth_dataset), "--pred-kind", "disp", "--json", str(theirs)])
    a, b = json.loads(own.read_text()), json.loads(theirs.read_text())
    for key in DEPTH_METRICS:
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    # the same predictions as depth instead of disparity
    for path in folder.glob("*.npy"):
        np.save(path, 1.0 / np.load(path))
    depth_json = tmp_path / "depth.json"
    main(["eval", "depth", str(folder), str(synth_dataset), "--pred-kind", "depth", "--json", str(depth_json)])
    assert json.loads(depth_json.read_text())["abs_rel"] == pytest.approx(a["abs_rel"], rel=0.05)


def test_scaling_none_scores_metric_depth_as_it_is(synth_dataset, tmp_path):
    """Half the true depth: median scaling forgives it (abs_rel 0), `--scaling none` does not (0.5)."""
    items = depth_items(synth_dataset, "test")
    folder = tmp_path / "metric"
    folder.mkdir()
    for k, item in enumerate(items):
        gt = item.read_gt()
        np.save(folder / f"{k:06d}.npy", np.where(gt > 0, 0.5 * gt, 1.0).astype(np.float32))
    results = {}
    for scaling in ("median", "none"):
        out = tmp_path / f"{scaling}.json"
        main(["eval", "depth", str(folder), str(synth_dataset), "--pred-kind", "depth", "--scaling", scaling,
              "--json", str(out)])
        results[scaling] = json.loads(out.read_text())
    assert results["median"]["abs_rel"] < 1e-6 and results["median"]["a1"] == 1.0
    assert results["none"]["abs_rel"] == pytest.approx(0.5, abs=1e-4) and results["none"]["a1"] == 0.0


def test_perfect_depth_scores_zero(synth_dataset):
    items = depth_items(synth_dataset, "test")
    metrics = evaluate_depth_items(items, lambda idx, batch: [item.read_gt() * 3.0 + (item.read_gt() <= 0) for item in batch],
                                   kind="depth")
    assert metrics["abs_rel"] < 1e-6 and metrics["a1"] == 1.0


def test_missing_prediction_is_one_line(tiny_run, synth_dataset, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    np.save(folder / "000000.npy", np.ones((4, 4), np.float32))
    result = run_masksfm("eval", "depth", folder, synth_dataset)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "000001.npy" in result.stderr


def test_eval_pose_json_and_files(tiny_run, synth_dataset, tmp_path):
    out_json, out_dir = tmp_path / "pose.json", tmp_path / "traj"
    main(["eval", "pose", str(tiny_run), str(synth_dataset), "--json", str(out_json), "--out", str(out_dir)])
    results = json.loads(out_json.read_text())
    assert {"ate_mean", "ate_std", "sequences"} <= set(results)
    # The net's own 3-frame snippets (one call each) are 3-frame snippets like the chained ones, scored apart.
    assert results["snippet_length"] == 3 and results["ate_own_mean"] > 0
    assert results["ate_own_mean"] != pytest.approx(results["ate3_mean"], rel=1e-9)
    (name, seq), = results["sequences"].items()
    assert {"ate_mean", "ate_std", "ate_rmse", "rpe_trans", "rpe_rot", "direction_err", "speed_spread",
            "rotation_err", "ate_own_mean"} <= set(seq)
    for suffix in ("kitti.txt", "tum.txt", "png"):
        assert (out_dir / name / f"trajectory.{suffix}").is_file()
    from evo.tools import file_interface

    assert file_interface.read_kitti_poses_file(str(out_dir / name / "trajectory.kitti.txt")).num_poses == 10


def test_true_relative_poses_give_zero_error(synth_dataset, tmp_path):
    scene = load_split(synth_dataset, "test")[0]
    rel = relative_poses(scene.poses)
    ates, result = sequence_pose_results(scene, rel, tmp_path)
    assert ates.max() < 1e-9 and result["ate_rmse"] < 1e-9 and result["rpe_rot"] < 1e-6
    assert result["direction_err"] < 1e-6 and result["speed_spread"] < 1e-9 and result["rotation_err"] < 1e-6
    # monocular scale is free: a scaled prediction is as good
    scaled = rel.copy()
    scaled[:, :3, 3] *= 0.3
    ates, result = sequence_pose_results(scene, scaled)
    assert ates.max() < 1e-9 and result["ate_rmse"] < 1e-9


def test_relative_poses_from_snippets_are_consistent(tiny_run, synth_dataset):
    """Every consecutive pair is read from a snippet that contains it, in the documented direction."""
    model, config, _ = load_model(tiny_run)
    frames = frames_to_tensor(np.stack([load_split(synth_dataset, "test")[0].read_frame(i) for i in range(10)]),
                              config.data.height, config.data.width)
    rel = predict_relative_poses(model.pose_net, frames, 3, torch.device("cpu"))
    assert rel.shape == (9, 4, 4)
    # frame 1's snippet gives T_{1->0} directly: rel[0] = inv(P_0) P_1 = T_{1->0}

    poses = model.pose_net(frames[1:2], torch.stack([frames[0], frames[2]])[None])
    direct = pose_vec_to_mat(poses[0].double())[0]
    assert np.allclose(rel[0], direct.detach().numpy(), atol=1e-5)


def test_the_flip_averaged_reading_is_the_mirror_of_the_mirrored_one(tiny_run, synth_dataset):
    """With `flip`, depth and poses read from mirrored frames are the mirror images of those read from the
    frames (the reading averages both); without it they are not, the nets not being symmetric."""
    from masksfm.geometry import mirror_pose_vec
    from masksfm.inference import read_poses

    model, config, _ = load_model(tiny_run)
    frames = frames_to_tensor(np.stack([load_split(synth_dataset, "test")[0].read_frame(i) for i in range(3)]),
                              config.data.height, config.data.width)
    target, sources, mirrored = frames[1:2], torch.stack([frames[0], frames[2]])[None], frames.flip(-1)
    cpu = torch.device("cpu")
    for flip, same in ((True, True), (False, False)):
        poses = read_poses(model.pose_net, target, sources, flip)
        poses_mirrored = read_poses(model.pose_net, mirrored[1:2], sources.flip(-1), flip)
        assert torch.allclose(mirror_pose_vec(poses_mirrored), poses, rtol=1e-4, atol=1e-9) == same
        disparity = predict_disparity(model.depth_net, frames, cpu, flip=flip)
        disparity_mirrored = predict_disparity(model.depth_net, mirrored, cpu, flip=flip)
        assert torch.allclose(disparity_mirrored.flip(-1), disparity, rtol=1e-4) == same
    # The mean of two readings along a car's path is on it (no sideways travel).
    T = pose_vec_to_mat(read_poses(model.pose_net, target, sources, flip=True)[0].double())
    assert torch.allclose(T[:, :3, 3], (T[:, :3, 3] * vehicle_chord(T[:, :3, :3])).sum(1, keepdim=True)
                          * vehicle_chord(T[:, :3, :3]), atol=1e-7)


@pytest.mark.slow
def test_eval_pose_refine_through_the_command(tiny_run, synth_dataset, tmp_path):
    """`--refine 2` in a real process: refined figures beside the pose net's, which stay those of a
    run without it; the refined trajectory in OUT/<scene>/refined/."""
    refined_json, plain_json, out_dir = tmp_path / "refined.json", tmp_path / "plain.json", tmp_path / "traj"
    result = run_masksfm("eval", "pose", tiny_run, synth_dataset, "--json", refined_json, "--out", out_dir,
                         "--refine", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "all refined" in result.stdout
    main(["eval", "pose", str(tiny_run), str(synth_dataset), "--json", str(plain_json), "--out", str(tmp_path / "p")])
    refined, plain = json.loads(refined_json.read_text()), json.loads(plain_json.read_text())
    assert "refined" not in plain and refined["refined"]["iterations"] == 2
    assert refined["ate_mean"] == pytest.approx(plain["ate_mean"], rel=1e-6)
    assert refined["refined"]["ate_mean"] != pytest.approx(plain["ate_mean"], rel=1e-3)  # it did refine
    (name, seq), = refined["sequences"].items()
    assert {"ate_mean", "ate_std", "ate_rmse", "rpe_trans", "rpe_rot"} <= set(seq["refined"])
    assert seq["ate_rmse"] == pytest.approx(plain["sequences"][name]["ate_rmse"], rel=1e-6)
    assert (out_dir / name / "refined" / "trajectory.kitti.txt").is_file()
    assert not np.allclose(np.loadtxt(out_dir / name / "refined" / "trajectory.kitti.txt"),
                           np.loadtxt(out_dir / name / "trajectory.kitti.txt"))
    # --refine-motion free: the tiny run is a car's camera, refined on SE(3) its steps leave the chord
    free_json = tmp_path / "free.json"
    main(["eval", "pose", str(tiny_run), str(synth_dataset), "--json", str(free_json), "--out", str(tmp_path / "f"),
          "--refine", "2", "--refine-motion", "free"])
    free = json.loads(free_json.read_text())
    assert (refined["refined"]["motion"], free["refined"]["motion"]) == ("vehicle", "free")
    assert free["ate_mean"] == pytest.approx(plain["ate_mean"], rel=1e-6)

    def off_chord(folder):
        """The largest sideways part of a refined step's travel, relative to its length: 0 on the chord."""
        written = read_poses(folder / name / "refined" / "trajectory.kitti.txt")
        steps = torch.from_numpy(np.linalg.inv(written[:-1]) @ written[1:])
        t = steps[:, :3, 3]
        return float((torch.linalg.cross(t, vehicle_chord(steps[:, :3, :3]), dim=1).norm(dim=1) / t.norm(dim=1)).max())

    assert off_chord(out_dir) < 1e-4 < off_chord(tmp_path / "f")


def test_eval_pose_refine_with_a_perfect_depth_net(tiny_run, synth_dataset, tmp_path, monkeypatch):
    """The whole `eval pose --refine` path with the true depth standing in for the net's: from the
    tiny run's poses (steps of 2-8 mm where the truth moves 1.2 m; snippet ATE 0.02 m with SfMLearner's
    pose convolutions, 0.0095 m with the ResNet-18 pose net), the refinement comes within a centimetre
    or so (0.008 m seen from either) of the truth, and, the depth being metric, so does the trajectory
    itself, unaligned (the snippet ATE's fitted scale would forgive a drive run backwards, or 1000x short)."""
    import masksfm.inference

    scene = load_split(synth_dataset, "test")[0]
    frames = masksfm.inference.sequence_frames(scene, 64, 208)
    # sky (depth 0) far away; the moving car keeps its true depth, the robust cost copes with it
    truth = [torch.from_numpy(1.0 / np.where(d > 0, d, 1000.0))[None].float() for d in map(scene.read_depth, range(10))]

    def perfect(depth_net, batch, device, batch_size=8, flip=False):
        return torch.stack([truth[next(k for k in range(len(frames)) if torch.equal(frames[k], f))] for f in batch])

    monkeypatch.setattr(masksfm.inference, "predict_disparity", perfect)
    out_json = tmp_path / "pose.json"
    main(["eval", "pose", str(tiny_run), str(synth_dataset), "--json", str(out_json), "--out", str(tmp_path / "t"),
          "--refine"])
    results = json.loads(out_json.read_text())
    assert results["refined"]["iterations"] == 10
    assert results["refined"]["ate_mean"] < min(0.012, results["ate_mean"]), results
    from masksfm.data.layout import read_poses

    trajectory = read_poses(tmp_path / "t" / scene.name / "refined" / "trajectory.kitti.txt")
    error = np.linalg.norm(trajectory[:, :3, 3] - scene.poses[:, :3, 3], axis=1)
    travelled = np.linalg.norm(scene.poses[-1, :3, 3] - scene.poses[0, :3, 3])
    assert travelled > 4 and error.max() < 0.02 * travelled, (error, travelled)
