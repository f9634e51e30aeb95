"""The trainer on real (tiny) data: learning, TensorBoard, resume, DDP, configuration, checkpoints."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from masksfm.checkpoints import load_checkpoint, save_checkpoint, unprefixed
from masksfm.cli import main
from masksfm.config import MASK_MODES, Config, from_dict, load_config
from masksfm.errors import MasksfmError
from masksfm.geometry import pose_vec_to_mat
from masksfm.masks import compute_masks
from masksfm.model import build_model, load_model
from masksfm.networks import Downsampled, MirrorMean
from masksfm.objective import ModelOutput, compute_objective
from masksfm.training import MemoryOrderAdam

from conftest import TINY_TRAIN_SETTINGS
from helpers import DDP_EXACT, SMALL, fixed_batch, mask_setting



@pytest.mark.slow
@pytest.mark.parametrize("mask", MASK_MODES)
def test_training_lowers_the_loss(mask, synth_dataset):
    """A real model on real rendered frames: 25 Adam steps on one batch lower the objective."""
    torch.manual_seed(0)
    config = load_config(None, [*mask_setting(mask), "data.height=32", "data.width=104"])
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    batch = fixed_batch(synth_dataset)
    losses = []
    for _ in range(25):
        objective = compute_objective(model(batch["images"]), batch["images_raw"], batch["K"], config.loss)
        optimizer.zero_grad()
        objective.loss.backward()
        optimizer.step()
        losses.append(objective.loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:3]), losses


def test_tensorboard_has_every_loss_mask_and_image(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    for tag in ("loss/photometric", "loss/smoothness", "loss/total", "train/lr", "val/abs_rel"):
        assert tag in scalars, (tag, scalars)
    for mask in ("edge", "overlap", "blank", "combined"):
        assert f"masks/{mask}" in scalars and f"masks/{mask}" in images
        fractions = [e.value for e in events.Scalars(f"masks/{mask}")]
        assert all(0.0 < f <= 1.0 for f in fractions)
    for tag in ("images/target", "images/warped", "images/disparity"):
        assert tag in images
    assert (tiny_run / "checkpoints" / "last.safetensors").is_file()
    assert (tiny_run / "checkpoints" / "best.safetensors").is_file()


def test_config_round_trips_into_the_checkpoint(tiny_run):
    _, meta = load_checkpoint(tiny_run / "checkpoints" / "last.safetensors")
    expected = load_config(None, TINY_TRAIN_SETTINGS).to_dict()
    assert meta["config"] == expected
    assert meta["step"] == 6 and meta["masksfm_version"]
    assert (tiny_run / "config.yaml").read_text().startswith("data:")


@pytest.mark.parametrize("wrapper", ["model.pose_downsample=2", "model.pose_mirror_mean=true"])
def test_pose_net_wrappers_refuse_the_explainability_mask(wrapper):
    """SfMLearner's pose net gives its masks at its input's size from one call: neither on half-size
    frames nor as a mean of two readings; the config says which key, not a shape error in the loss."""
    explainability = ["loss.mask=explainability", "model.pose_encoder=conv"]
    load_config(None, explainability)
    with pytest.raises(MasksfmError, match=f"config key {wrapper.split('=')[0]}: .* no explainability masks"):
        load_config(None, [*explainability, wrapper])


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  repeats: 3\n  mask: automask\noptim:\n  lr: 1.0e-4\n")
    config = load_config(path, ["loss.repeats=1", "optim.lr=3e-5", "optim.lr_decay_steps=[10, 20]", "model.pretrained=null"])
    assert config.loss.repeats == 1 and config.loss.mask == "automask"
    assert config.optim.lr == 3e-5 and config.optim.lr_decay_steps == [10, 20]
    for bad, message in [("loss.bogus=1", "unknown config key 'loss.bogus'"), ("loss.repeats=x", "loss.repeats"),
                         ("loss.mask=magic", "not one of"), ("loss", "KEY=VALUE"), ("model.pose=stack", "not one of"),
                         ("model.pose_encoder=vgg", "not one of conv, resnet18"),
                         ("model.motion=boat", "not one of free, vehicle"),
                         ("data.source_yaw=20", "data.source_yaw: degrees from 0 to 10"),
                         ("optim.ema_decay=1", "optim.ema_decay: from 0 .off. up to below 1")]:
        with pytest.raises(MasksfmError, match=message):
            load_config(None, [bad])
    for bad, message in [("loss.image_range=byte", "not one of unit, signed"),
                         ("loss.smoothness_on=log", "not one of disparity_mean_normalised, depth"),
                         ("loss.smoothness_frames=sources", "not one of all, target"),
                         ("loss.combine_sources=max", "not one of mean, sum"),
                         ("loss.below_mean_factor=0", "loss.below_mean_factor: must be positive"),
                         ("loss.velocity_weight=-1", "loss.velocity_weight: must be >= 0"),
                         ("loss.turn_weight=-1", "loss.turn_weight: must be >= 0"),
                         ("loss.stride_weight=-0.1", "loss.stride_weight: must be >= 0"),
                         ("loss.turn_degrees=0", "loss.turn_degrees: degrees above 0 up to 10"),
                         ("loss.stride_from_step=-1", "loss.stride_from_step: must be >= 0"),
                         ("loss.shift_weight=-0.3", "loss.shift_weight: must be >= 0"),
                         ("loss.shift_from_step=-2", "loss.shift_from_step: must be >= 0"),
                         ("loss.virtual_weight=-0.1", "loss.virtual_weight: must be >= 0"),
                         ("loss.virtual_from_step=-1", "loss.virtual_from_step: must be >= 0"),
                         ("loss.virtual_spread=1", "loss.virtual_spread: from 0 up to below 1"),
                         ("loss.virtual_degrees=12", "loss.virtual_degrees: degrees from 0 to 10"),
                         ("data.colour_jitter=3", "data.colour_jitter"),
                         ("data.strides=[1, 0]", "data.strides: a list of positive frame spacings"),
                         ("data.strides=[]", "data.strides")]:
        with pytest.raises(MasksfmError, match=message):
            load_config(None, [bad])
    with pytest.raises(MasksfmError, match="loss.combine_sources: sum adds per-source terms"):
        load_config(None, ["loss.mask=automask", "loss.combine_sources=sum"])
    with pytest.raises(MasksfmError, match="model.pose: pairs has no explainability decoder"):
        load_config(None, ["model.pose=pairs", "loss.mask=explainability"])
    with pytest.raises(MasksfmError, match="model.pose_encoder: resnet18 has no explainability decoder"):
        load_config(None, ["model.pose_encoder=resnet18", "loss.mask=explainability"])
    for term in ("velocity_weight=1", "stride_weight=0.1", "shift_weight=0.3"):
        with pytest.raises(MasksfmError, match=f"data.uneven_strides: loss.{term.split('=')[0]} compares the steps"):
            load_config(None, ["data.strides=[1, 2]", "data.uneven_strides=true", f"loss.{term}"])
    assert load_config(None, ["data.strides=[1, 2]", "data.uneven_strides=true"]).data.uneven_strides
    path.write_text("loss: {repeat: 3}\n")
    with pytest.raises(MasksfmError, match="unknown config key 'loss.repeat'"):
        load_config(path)


@pytest.mark.parametrize("name", ["default", "paper", "paper_dn"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert isinstance(config, Config)
    if name.startswith("paper"):
        # The authors' published command (docs/authors-code.md): their code never repeats the masking.
        assert (config.loss.ssim, config.loss.rho, config.loss.repeats) == ("gauss13", "robust", 0)
        assert (config.data.height, config.data.width, config.optim.batch_size) == (256, 832, 4)
        loss = config.loss
        assert (loss.below_mean_mask, loss.below_mean_factor, loss.below_mean_per_channel) == (True, 3.0, True)
        assert (loss.image_range, loss.smoothness_on, loss.smoothness_frames) == ("signed", "depth", "target")
        assert (loss.combine_sources, loss.bidirectional, loss.num_scales) == ("sum", False, 1)
        assert (config.data.colour_jitter, config.data.independent_crop_scale) == (False, True)
    else:  # the new options' defaults are today's behaviour
        loss = config.loss
        assert (loss.below_mean_mask, loss.below_mean_factor, loss.below_mean_per_channel) == (False, 1.0, False)
        assert (loss.image_range, loss.smoothness_on, loss.smoothness_frames, loss.combine_sources) == \
            ("unit", "disparity_mean_normalised", "all", "mean")
        assert (config.data.colour_jitter, config.data.independent_crop_scale) == (True, False)
    if name == "paper_dn":
        assert config.loss.dn == "image_max"
    # The recipe's car camera and sources' depth without gradient; the authors' free motion and full gradient.
    expected = ("vehicle", False) if name == "default" else ("free", True)
    assert (config.model.motion, config.model.source_depth_grad) == expected
    assert load_config(None) == load_config("default")  # `train` without --config is the recipe


def test_unknown_key_on_the_command_line(capsys, tmp_path, synth_dataset):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(synth_dataset), "--out", str(tmp_path / "r"), "--set", "loss.nope=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loss.nope" in err


def _model_tensors(run: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights (the average and the trained ones with optim.ema_decay), Adam state and count."""
    tensors, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
    return {key: value for key, value in tensors.items() if not key.startswith("rng.")}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], ["--set", "loss.turn_weight=0.1", "--set", "loss.stride_weight=0.1",
                                          "--set", "loss.shift_weight=0.1", "--set", "loss.shift_from_step=1",
                                          "--set", "loss.virtual_weight=0.1", "--set", "loss.virtual_from_step=1"],
                                    ["--set", "optim.ema_decay=0.9"],
                                    ["--set", "model.pose_downsample=2", "--set", "model.pose_mirror_mean=true"]],
                         ids=["default", "relations", "weight-average", "pose-half-mirror"])
def test_resume_is_bitwise_exact(recipe, synth_dataset, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    main(["train", str(synth_dataset), "--out", str(straight), "--steps", "4", *SMALL, *recipe])
    main(["train", str(synth_dataset), "--out", str(halves), "--steps", "2", *SMALL, *recipe])
    main(["train", str(synth_dataset), "--out", str(halves), "--steps", "4", "--resume", *SMALL, *recipe])
    a, b = _model_tensors(straight), _model_tensors(halves)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_checkpoint(halves / "checkpoints" / "last.safetensors")[1]["step"] == 4
    if "optim.ema_decay=0.9" in recipe:
        # The run is used with the average (what load_model, hence eval / predict / export, reads), which
        # is not the trained weights; both resumed as they were.
        trained = {k.removeprefix("trained."): v for k, v in a.items() if k.startswith("trained.")}
        assert trained and int(a["averaged.n"]) == 4
        model, _, _ = load_model(halves / "checkpoints" / "last.safetensors")
        used = model.state_dict()
        assert all(torch.equal(used[k], a[f"model.{k}"]) for k in used)
        assert any(not torch.equal(used[k], trained[k]) for k in used if used[k].is_floating_point())
    if "model.pose_downsample=2" in recipe:
        # Read back as trained: the mirror mean of the net on frames at half their size.
        model, _, _ = load_model(halves / "checkpoints" / "last.safetensors")
        assert isinstance(model.pose_net.net, MirrorMean) and isinstance(model.pose_net.net.net, Downsampled)
        assert model.pose_net.net.net.factor == 2


@pytest.mark.slow
def test_the_pose_nets_batch_norm_statistics_are_recomputed_for_last_and_best(synth_dataset, tmp_path):
    """After the last step, and for each save of `best`, the pose net's batch norms hold the plain mean
    over the training snippets without augmentation (`train.batch_norm_batches`), not training's
    exponential average over its last augmented batches; nothing else differs from a run that keeps
    the latter."""
    from masksfm.data.dataset import SnippetDataset
    from masksfm.data.layout import load_split
    from masksfm.objective import snippet_sources

    runs = {n: tmp_path / str(n) for n in (100, 0)}
    for n, run in runs.items():
        main(["train", str(synth_dataset), "--out", str(run), "--steps", "2", *SMALL, "--set", "train.val_every=1",
              "--set", f"train.batch_norm_batches={n}"])

    def weights(run, name):
        return unprefixed(load_checkpoint(run / "checkpoints" / f"{name}.safetensors")[0], "model")

    on, off = weights(runs[100], "last"), weights(runs[0], "last")
    stats = [key for key in on if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(key.startswith("pose_net.") for key in stats)  # DispNet has no batch norm
    assert all(torch.equal(on[key], off[key]) for key in on if key not in stats)
    assert not torch.equal(on[stats[0]], off[stats[0]])
    # The first batch norm's input (the first convolution's output) depends on no batch norm: its mean
    # and variance per batch of 2 over every un-augmented training snippet, averaged over the batches.
    snippets = SnippetDataset(load_split(synth_dataset, "train"), 64, 208, augment=False)
    images = torch.stack([snippets[i]["images"] for i in range(len(snippets))])
    for name in ("last", "best"):
        model, _, _ = load_model(runs[100] / "checkpoints" / f"{name}.safetensors")
        first = next(m for m in model.pose_net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        key = next(k for k, m in model.named_modules() if m is first)
        inputs = []
        first.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
        with torch.no_grad():
            for batch in images.split(2):
                model.eval().pose_net(batch[:, 1], snippet_sources(batch))
        stored = weights(runs[100], name)
        assert torch.allclose(stored[f"{key}.running_mean"], torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0),
                              atol=1e-6), name
        assert torch.allclose(stored[f"{key}.running_var"], torch.stack([x.var(dim=(0, 2, 3)) for x in inputs]).mean(0),
                              rtol=1e-4, atol=1e-7), name
        assert int(stored[f"{key}.num_batches_tracked"]) == len(inputs)


def test_memory_order_adam_updates_channels_last_weights_as_adam_does_without_copies():
    """The trainer's Adam hands torch's fused kernel flat views of channels_last weights, their
    gradients and states: the same update to the bit as torch's Adam on the same channels_last
    tensors, and no copy in the step (torch's own copies each such gradient)."""
    from torch.profiler import profile

    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 5, 3, 3), (8,), (4, 8, 3, 3)]
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    gradients = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(3)]

    def trained(adam_class, memory_format):
        def stored(t):
            return t.clone().to(memory_format=memory_format) if t.dim() == 4 else t.clone()

        params = [torch.nn.Parameter(stored(t)) for t in start]
        adam = adam_class(params, lr=0.1, fused=True)
        for step_gradients in gradients:
            for param, gradient in zip(params, step_gradients):
                param.grad = stored(gradient)
            with profile() as step_profile:
                adam.step()
        copies = [e.name for e in step_profile.events() if e.name == "aten::clone"]  # a tensor copied whole
        assert all(adam.state[p]["exp_avg"].stride() == p.stride() for p in params)  # states keep the layout
        return [p.detach().contiguous() for p in params], copies

    expected, torch_copies = trained(torch.optim.Adam, torch.channels_last)
    weights, copies = trained(MemoryOrderAdam, torch.channels_last)
    assert all(torch.equal(w, e) for w, e in zip(weights, expected))
    assert copies == []
    assert torch_copies  # what the flat views save


@pytest.mark.parametrize("adam_of", [torch.optim.Adam, MemoryOrderAdam], ids=["torch", "trainer"])
def test_resumed_adam_state_takes_the_channels_last_weights_layout(adam_of):
    """A checkpoint's Adam state comes back contiguous; beside a channels_last weight the fused
    kernel would walk the two in different orders (the trainer's depth net is channels_last where
    that pays, so the resume tests above may run NCHW on this machine)."""
    from masksfm.training import match_state_layouts

    def conv():
        torch.manual_seed(0)
        return torch.nn.Conv2d(5, 8, 3).to(memory_format=torch.channels_last)

    def step(net, adam, k):
        net.zero_grad()
        net(torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(k))).square().sum().backward()
        adam.step()

    straight = conv()
    adam = adam_of(straight.parameters(), lr=0.1, fused=True)
    for k in range(2):
        step(straight, adam, k)
    resumed = {}
    for match in (False, True):
        net = conv()
        net.load_state_dict(straight.state_dict())
        other = adam_of(net.parameters(), lr=0.1, fused=True)
        state = copy.deepcopy(adam.state_dict())  # as a checkpoint holds it: every tensor contiguous
        for tensors in state["state"].values():
            tensors.update({key: value.contiguous() for key, value in tensors.items()})
        other.load_state_dict(state)
        if match:
            match_state_layouts(other)
        step(net, other, 2)
        resumed[match] = net.weight.detach().clone()
    step(straight, adam, 2)
    assert torch.equal(resumed[True], straight.weight)
    assert not torch.allclose(resumed[False], straight.weight, atol=1e-3)  # what the matching prevents


def test_weight_average_is_the_warmed_up_exponential_average():
    """The first update copies; the one after n updates mixes in the trained weights at
    1 − min(decay, (1 + n) / (10 + n)); batch norm's running statistics are averaged too, its step
    counter copied."""
    from masksfm.training import weight_average

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = weight_average(net, decay=0.6)
    expected = None
    for n in range(6):
        with torch.no_grad():
            for tensor in net.state_dict().values():
                tensor.copy_(torch.full_like(tensor, float((n + 1) ** 2)))  # counters included: 1, 4, 9, ...
        average.update_parameters(net)
        value = float((n + 1) ** 2)
        # The first update copies; the one after n updates keeps min(0.6, (1 + n) / (10 + n)) of the average.
        kept = min(0.6, (1 + n) / (10 + n))
        expected = value if n == 0 else kept * expected + (1 - kept) * value
    state = average.module.state_dict()
    assert torch.allclose(state["0.weight"], torch.full((2, 3), expected)), (state["0.weight"], expected)
    assert torch.allclose(state["1.running_var"], torch.full((2,), expected))
    assert int(state["1.num_batches_tracked"]) == 36
    assert int(average.n_averaged) == 6
    assert expected not in (36.0, 91.0 / 6)  # neither the last weights (6²) nor their plain mean (1 + 4 + ... + 36) / 6


@pytest.mark.slow
def test_resume_without_checkpoint_starts_with_a_warning(synth_dataset, tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint to resume from"):
        main(["train", str(synth_dataset), "--out", str(tmp_path / "fresh"), "--steps", "1", "--resume", *SMALL])
    assert load_checkpoint(tmp_path / "fresh" / "checkpoints" / "last.safetensors")[1]["step"] == 1


@pytest.mark.slow
def test_ddp_two_processes_match_one(synth_dataset, tmp_path):
    """torchrun, 2 processes, gloo on CPU vs 1 process with the same global batch: same losses.

    In float32: under bf16 autocast oneDNN may pick other kernels for a batch of 1 than of 2, and
    the losses then differ by ~5e-5, which says nothing about DDP. With SfMLearner's pose
    convolutions: the default ResNet-18 pose net's batch normalisation takes each process's own
    half of the batch (DDP's way), which moves the losses by ~5e-4."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [str(synth_dataset), "--steps", "3", "--device", "cpu", *SMALL, "--set", "train.precision=fp32",
            "--set", DDP_EXACT]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # --standalone: a local rendezvous on a free port, so parallel runs of the suite do not collide.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run([*torchrun, "-m", "masksfm", "train", "--out", str(tmp_path / "ddp"), *args],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "masksfm", "train", "--out", str(tmp_path / "one"), *args],
                   check=True, env=env, capture_output=True, timeout=600)

    def losses(run):
        events = EventAccumulator(str(run))
        events.Reload()
        return np.array([e.value for e in events.Scalars("loss/total")])

    ddp, one = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(ddp) == len(one) == 3
    assert np.allclose(ddp, one, rtol=0, atol=1e-5), (ddp, one)
    # Adam divides each update by its gradient's magnitude, so weights whose gradient is float noise
    # move by ±lr either way: compare the whole update instead, which a missing all-reduce changes.
    tensors, meta = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.safetensors")
    torch.manual_seed(meta["config"]["train"]["seed"])
    start = build_model(from_dict(meta["config"])).state_dict()
    a, b = unprefixed(load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.safetensors")[0], "model"), \
        unprefixed(tensors, "model")
    update = torch.cat([(b[k] - start[k]).flatten() for k in start])
    gap = torch.cat([(a[k] - b[k]).flatten() for k in start])
    assert gap.norm() < 0.02 * update.norm(), (gap.norm(), update.norm())


class TestCheckpoints:
    def test_atomic_write_keeps_the_old_file(self, tmp_path, monkeypatch):
        path = tmp_path / "c.safetensors"
        save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1, "config": {}})
        import masksfm.checkpoints as C

        def broken(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"half a file")
            raise KeyboardInterrupt

        monkeypatch.setattr(C, "save_file", broken)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2, "config": {}})
        tensors, meta = load_checkpoint(path)
        assert torch.equal(tensors["w"], torch.ones(3)) and meta["step"] == 1
        assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left

    def test_never_unpickles(self, tmp_path):
        import pickle

        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (Path.touch, (marker,))

        bad = tmp_path / "weights.safetensors"
        bad.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(MasksfmError, match="pickle file, refused"):
            load_checkpoint(bad)
        assert not marker.exists()

    def test_safetensors_without_config_is_not_a_checkpoint(self, tmp_path):
        from safetensors.torch import save_file

        path = tmp_path / "x.safetensors"
        save_file({"w": torch.ones(1)}, str(path))
        with pytest.raises(MasksfmError, match="not a masksfm checkpoint"):
            load_checkpoint(path)


def test_masks_start_after_the_warmup():
    from masksfm.training import masks_active

    config = load_config(None, ["loss.guard=warmup", "loss.warmup_steps=10"])
    assert not masks_active(config, 9) and masks_active(config, 10)
    config.loss.guard = "none"
    assert masks_active(config, 0)


@pytest.mark.parametrize("guard", ["none", "floor"])
def test_the_floor_guard_keeps_dropped_pixels_learning(guard, synth_dataset):
    """The collapse guard (README, "The collapse and its guard") on the first step of a tiny run.

    The untrained DispNet's depth (~0.16 m everywhere) with a stripe ten times nearer, and the
    camera moving sideways: the stripe hides what lies behind it in each source, and the masks
    drop those pixels. Without a guard a dropped pixel, with all its SSIM neighbours, gets no
    photometric gradient at all: nothing can bring its depth back. With the floor (the default)
    most of them do, while a pixel out of every source's view still gets none: it has nothing to
    compare with.
    """
    torch.manual_seed(0)
    config = load_config(None, ["data.height=32", "data.width=104", "loss.num_scales=1", "loss.smoothness_weight=0",
                                f"loss.guard={guard}"])
    model = build_model(config)
    batch = fixed_batch(synth_dataset)
    out = model(batch["images"])
    near_stripe = torch.zeros(32, 104)
    near_stripe[:, 40:64] = 9.0
    disp = out.disparities[0] * (1 + near_stripe)
    disp.retain_grad()
    sideways = torch.tensor([[[-0.005, 0, 0, 0, 0, 0], [0.005, 0, 0, 0, 0, 0]]])  # T_t2s of prev, next
    out = ModelOutput([disp], out.poses + sideways, None)
    compute_objective(out, batch["images_raw"], batch["K"], config.loss).loss.backward()

    # The masks as the objective computes them: the centre frame's depth warps it towards both
    # sources, a source's depth warps it back to the centre.
    b, length, _, h, w = batch["images"].shape
    depth = (1 / disp.detach()).view(b, length, 1, h, w)
    masks_t, masks_s = compute_masks(depth[:, 1:2].expand(-1, 2, -1, -1, -1).flatten(0, 1),
                                     depth[:, [0, 2]].flatten(0, 1), pose_vec_to_mat(out.poses.detach().flatten(0, 1)),
                                     batch["K"].repeat_interleave(2, 0), config.loss.repeats,
                                     config.loss.overlap_tolerance)

    def per_frame(mask_t, mask_s):
        """(B, L, H, W): whether any pair in which the frame's own depth warps has the mask at 1
        at the pixel or, through SSIM's 3x3 window, next to it."""
        mask_t, mask_s = mask_t.view(b, 2, h, w), mask_s.view(b, 2, h, w)
        frames = torch.stack([mask_s[:, 0], mask_t.amax(1), mask_s[:, 1]], dim=1)
        return torch.nn.functional.max_pool2d(frames, 3, stride=1, padding=1)

    kept, in_view = per_frame(masks_t.combined, masks_s.combined), per_frame(masks_t.edge, masks_s.edge)
    grad = disp.grad.view(b, length, h, w)
    dropped_in_view = grad[(kept == 0) & (in_view == 1)]
    assert dropped_in_view.numel() > 1000  # pixels behind the near stripe, occluded in a source
    if guard == "none":
        assert torch.all(dropped_in_view == 0)
    else:
        assert (dropped_in_view != 0).float().mean() > 0.5
        out_of_view = grad[in_view == 0]
        assert out_of_view.numel() > 100 and torch.all(out_of_view == 0)


@pytest.mark.slow
def test_time_limit_stops_and_checkpoints(synth_dataset, tmp_path):
    """A spent time budget ends the run after the step in progress, saved like a last step."""
    from masksfm.training import run_training

    config = load_config(None, TINY_TRAIN_SETTINGS + ["optim.steps=50", "train.checkpoint_every=1000"])
    run_training(synth_dataset, tmp_path / "r", config, device="cpu", progress=False, time_limit=0.0)
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.safetensors")[1]["step"] == 1
    assert (tmp_path / "r" / "checkpoints" / "best.safetensors").is_file()


def test_a_run_stored_before_a_default_changed_loads_as_it_was_trained(tmp_path):
    """`model.motion`, `model.source_depth_grad` and `model.pose_encoder` changed default (vehicle, no
    gradient, ResNet-18): a stored configuration without them is read back at the values it ran with
    (free, with gradient, SfMLearner's convolutions), so a checkpoint of then loads into its own,
    unwrapped pose net; a YAML file without them is today's recipe."""
    from masksfm.checkpoints import prefixed
    from masksfm.config import stored_config
    from masksfm.model import load_model
    from masksfm.networks import PoseNet

    old = load_config(None, ["model.motion=free", "model.source_depth_grad=true", "model.pose_encoder=conv",
                             "data.height=32", "data.width=96"])
    stored = old.to_dict()
    del stored["model"]["motion"], stored["model"]["source_depth_grad"], stored["model"]["pose_encoder"]
    read = stored_config(stored)
    assert (read.model.motion, read.model.source_depth_grad, read.model.pose_encoder) == ("free", True, "conv")
    partial_yaml = from_dict(stored)  # a partial YAML file: today's defaults fill it
    assert (partial_yaml.model.motion, partial_yaml.model.pose_encoder) == ("vehicle", "resnet18")
    assert stored_config(old.to_dict()) == old and stored_config(load_config(None).to_dict()) == load_config(None)
    torch.manual_seed(0)
    trained = build_model(old)
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, prefixed(trained.state_dict(), "model"), {"step": 1, "config": stored})
    model, config, _ = load_model(path)
    assert type(model.pose_net) is PoseNet and config.model.motion == "free"
    assert all(torch.equal(a, b) for a, b in zip(model.pose_net.state_dict().values(), trained.pose_net.state_dict().values()))
