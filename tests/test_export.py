"""`masksfm export`: ONNX Runtime and `torch.export` programs give the eager model's outputs at two
batch sizes, the depth equals what `predict` writes, and the metadata travels in the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from masksfm.cli import main
from masksfm.data.layout import read_image
from masksfm.export import DepthOutput, PoseOutput, pose_path, read_metadata
from masksfm.model import load_model

from conftest import TINY_TRAIN_SETTINGS
from helpers import one_line_error

BATCHES = (1, 3)


@pytest.fixture(scope="module")
def model(tiny_run):
    model, config, _ = load_model(tiny_run)
    return model, config


@pytest.fixture(scope="module")
def onnx_files(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "net.onnx"
    main(["export", str(tiny_run), "--format", "onnx", "--out", str(out), "--pose"])
    return out, pose_path(out)


@pytest.fixture(scope="module")
def pt2_file(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "net.pt2"
    main(["export", str(tiny_run), "--format", "pt2", "--out", str(out)])
    return out


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class TestOnnx:
    def test_depth_equals_eager(self, onnx_files, model):
        net, config = model
        eager = DepthOutput(net.depth_net).eval()
        runtime = session(onnx_files[0])
        assert [i.name for i in runtime.get_inputs()] == ["image"]
        assert [o.name for o in runtime.get_outputs()] == ["depth"]
        for batch in BATCHES:
            x = images(batch, config.data.height, config.data.width, seed=batch)
            (depth,) = runtime.run(None, {"image": x.numpy()})
            with torch.no_grad():
                expected = eager(x).numpy()
            assert depth.shape == (batch, 1, config.data.height, config.data.width)
            assert np.abs(depth - expected).max() <= 1e-4 * np.abs(expected).max()

    def test_pose_equals_eager(self, onnx_files, model):
        net, config = model
        eager = PoseOutput(net.pose_net).eval()
        runtime = session(onnx_files[1])
        assert [i.name for i in runtime.get_inputs()] == ["target", "sources"]
        assert [o.name for o in runtime.get_outputs()] == ["poses"]
        s = config.data.snippet_length - 1
        for batch in BATCHES:
            target = images(batch, config.data.height, config.data.width, seed=10 + batch)
            sources = images(batch * s, config.data.height, config.data.width, seed=20 + batch).view(batch, s, 3,
                                                                                                    *target.shape[2:])
            (poses,) = runtime.run(None, {"target": target.numpy(), "sources": sources.numpy()})
            with torch.no_grad():
                expected = eager(target, sources).numpy()
            assert poses.shape == (batch, s, 6)
            assert np.abs(poses - expected).max() <= 1e-4

    def test_dynamic_batch_axis(self, onnx_files):
        import onnx

        graph = onnx.load(str(onnx_files[0]), load_external_data=False).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
        assert graph.output[0].type.tensor_type.shape.dim[0].dim_param

    def test_metadata(self, onnx_files, model):
        _, config = model
        meta = read_metadata(onnx_files[0])
        assert meta["height"] == str(config.data.height) and meta["width"] == str(config.data.width)
        assert meta["input"].startswith("image: (B, 3,") and meta["output"].startswith("depth: (B, 1,")
        assert "[0, 1]" in meta["normalisation"] and meta["masksfm_version"]
        assert json.loads(meta["config"])["data"]["height"] == config.data.height
        assert read_metadata(onnx_files[1])["output"].startswith("poses:")

    def test_depth_equals_what_predict_writes(self, onnx_files, tiny_run, synth_dataset, tmp_path):
        frame = sorted(next(d for d in sorted(synth_dataset.iterdir()) if (d / "cam.txt").is_file()).glob("*.png"))[4]
        main(["predict", str(tiny_run), str(frame), "--out", str(tmp_path), "--save", "npy"])
        written = np.load(tmp_path / "depth" / f"{frame.stem}.npy")
        image = torch.from_numpy(read_image(frame)).permute(2, 0, 1)[None].float().numpy() / 255
        (depth,) = session(onnx_files[0]).run(None, {"image": image})
        assert np.allclose(depth[0, 0], written, rtol=1e-4)


class TestPt2:
    def test_depth_equals_eager(self, pt2_file, model):
        net, config = model
        eager = DepthOutput(net.depth_net).eval()
        program = torch.export.load(str(pt2_file)).module()  # our own file, written just above
        for batch in BATCHES:
            x = images(batch, config.data.height, config.data.width, seed=30 + batch)
            with torch.no_grad():
                depth, expected = program(x), eager(x)
            assert depth.shape == (batch, 1, config.data.height, config.data.width)
            assert (depth - expected).abs().max() <= 1e-4 * expected.abs().max()

    def test_metadata(self, pt2_file, model):
        _, config = model
        meta = read_metadata(pt2_file)
        assert meta["height"] == str(config.data.height) and meta["output"].startswith("depth:")
        assert "note" not in meta

    def test_other_size(self, tiny_run, model, tmp_path):
        net, _ = model
        out = tmp_path / "wide.pt2"
        main(["export", str(tiny_run), "--format", "pt2", "--out", str(out), "--height", "40", "--width", "150"])
        meta = read_metadata(out)
        assert (meta["height"], meta["width"]) == ("40", "150") and "runs at the exported size" in meta["note"]
        x = images(2, 40, 150)
        with torch.no_grad():
            depth, expected = torch.export.load(str(out)).module()(x), DepthOutput(net.depth_net).eval()(x)
        assert depth.shape == (2, 1, 40, 150) and torch.allclose(depth, expected, rtol=1e-4)


def test_a_pose_net_on_half_size_frames_exports_and_refuses_sizes_it_cannot_read(synth_dataset, tmp_path, capsys):
    """`model.pose_downsample=2` with the mirror mean (two calls, each on 2x2 blocks): the ONNX pose net gives the
    eager poses at batch 1 and 3, and an export size below 64 or odd is one clear line, nothing written."""
    from masksfm.config import load_config
    from masksfm.training import run_training

    run = tmp_path / "run"
    settings = [*TINY_TRAIN_SETTINGS, "optim.steps=1", "model.pose_downsample=2", "model.pose_mirror_mean=true"]
    run_training(synth_dataset, run, load_config(None, settings), device="cpu", progress=False)
    out = tmp_path / "net.onnx"
    main(["export", str(run), "--format", "onnx", "--out", str(out), "--pose"])
    net, config, _ = load_model(run)
    eager, runtime = PoseOutput(net.pose_net).eval(), session(pose_path(out))
    for batch in BATCHES:
        target = images(batch, 64, 208, seed=30 + batch)
        sources = images(2 * batch, 64, 208, seed=40 + batch).view(batch, 2, 3, 64, 208)
        (poses,) = runtime.run(None, {"target": target.numpy(), "sources": sources.numpy()})
        with torch.no_grad():
            assert np.abs(poses - eager(target, sources).numpy()).max() <= 1e-4
    for height in ("48", "65"):
        small = tmp_path / f"h{height}.onnx"
        err = one_line_error(["export", str(run), "--format", "onnx", "--out", str(small), "--pose", "--height", height],
                             capsys)
        assert "model.pose_downsample" in err and not small.exists() and not pose_path(small).exists()


class TestBadInput:

    def test_too_small(self, tiny_run, tmp_path, capsys):
        err = one_line_error(["export", str(tiny_run), "--format", "onnx", "--out", str(tmp_path / "x.onnx"),
                        "--height", "16"], capsys)
        assert "32" in err and not (tmp_path / "x.onnx").exists()

    def test_missing_run(self, tmp_path, capsys):
        assert "nothing" in one_line_error(["export", str(tmp_path / "nothing"), "--format", "pt2", "--out",
                                      str(tmp_path / "x.pt2")], capsys)

    def test_out_is_a_folder(self, tiny_run, tmp_path, capsys):
        assert str(tmp_path) in one_line_error(["export", str(tiny_run), "--format", "pt2", "--out", str(tmp_path)], capsys)

    def test_bad_format(self, tiny_run, tmp_path, capsys):
        assert "--format" in one_line_error(["export", str(tiny_run), "--format", "tflite", "--out", str(tmp_path / "x")],
                                      capsys)

    def test_not_an_export(self, tmp_path):
        from masksfm.errors import MasksfmError

        (tmp_path / "x.pt2").write_bytes(b"PK nothing")
        (tmp_path / "x.onnx").write_bytes(b"\x08garbage")
        for name in ("x.pt2", "x.onnx"):
            with pytest.raises(MasksfmError, match=name):
                read_metadata(tmp_path / name)
