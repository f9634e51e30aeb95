"""Depth and pose networks: shapes at any size, activation ranges, gradients, weight files, export."""

from __future__ import annotations

import copy
import functools
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

from masksfm.errors import MasksfmError
from masksfm.geometry import invert_pose, mat_to_pose_vec, pose_vec_to_mat, relative_pose
from masksfm.networks import (DispNet, Downsampled, PairPoseNet, PoseNet, ResNetDepthNet, ResNetPoseNet, VehicleMotion,
                              build_depth_net, make_pose_net)
from masksfm.networks.depth import disparity
from masksfm.networks.pose import invert_pose_vec, onto_vehicle_path

SIZES = [(64, 208), (128, 416), (37, 50)]


@functools.cache
def photos() -> tuple[np.ndarray, ...]:
    return skdata.astronaut(), skdata.chelsea(), skdata.coffee()


def real_images(batch: int, height: int, width: int, offset: int = 0) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1]: crops of photographs that ship inside scikit-image."""
    out = []
    for b in range(batch):
        photo = photos()[(b + offset) % 3]
        y0 = 20 * ((b + offset) // 3)
        crop = Image.fromarray(photo[y0 : y0 + 280, :]).resize((width, height), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def expected_sizes(height: int, width: int) -> list[tuple[int, int]]:
    return [(-(-height // 2**k), -(-width // 2**k)) for k in range(4)]


def torchvision_resnet18_keys() -> list[str]:
    """torchvision's resnet18 state-dict keys, written out from its layer structure."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for layer in range(1, 5):
        for block in range(2):
            pre = f"layer{layer}.{block}."
            keys += [pre + "conv1.weight"] + [pre + f"bn1.{p}" for p in bn]
            keys += [pre + "conv2.weight"] + [pre + f"bn2.{p}" for p in bn]
            if layer > 1 and block == 0:
                keys += [pre + "downsample.0.weight"] + [pre + f"downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


@pytest.fixture(scope="module")
def depth_nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"dispnet": DispNet().eval(), "resnet18": ResNetDepthNet().eval()}


def first_conv(net: torch.nn.Module) -> torch.nn.Conv2d:
    return net.encoder.conv1 if isinstance(net, ResNetDepthNet) else net.down[0][0]


class TestDisparityActivation:
    def test_exact_values(self):
        logits = torch.tensor([0.0, -float("inf"), float("inf"), -200.0, 200.0])
        assert disparity(logits).tolist() == pytest.approx([5.01, 0.01, 10.01, 0.01, 10.01], abs=1e-6)


@pytest.mark.parametrize("name", ["dispnet", "resnet18"])
class TestDepthNets:
    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("batch", [1, 3])
    def test_shapes(self, depth_nets, name, size, batch):
        with torch.no_grad():
            disps = depth_nets[name](real_images(batch, *size))
        assert [tuple(d.shape) for d in disps] == [(batch, 1, h, w) for h, w in expected_sizes(*size)]

    def test_range(self, depth_nets, name):
        with torch.no_grad():
            disps = depth_nets[name](real_images(3, 64, 208))
        for d in disps:
            assert d.min() > 0.01 and d.max() < 10.01
            assert torch.isfinite(1.0 / d).all()

    def test_gradients_reach_every_parameter(self, name):
        torch.manual_seed(0)
        net = build_depth_net(name).train()
        disps = net(real_images(2, 37, 50))
        sum(d.mean() for d in disps).backward()
        grad = first_conv(net).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        # DDP needs every parameter to take part in the loss.
        assert all(p.grad is not None for p in net.parameters())

    def test_forward_is_the_activation_of_the_logits(self, depth_nets, name):
        images = real_images(2, 64, 208)
        with torch.no_grad():
            disps, (same, logits) = depth_nets[name](images), depth_nets[name].with_logits(images)
        assert all(torch.equal(d, s) for d, s in zip(disps, same, strict=True))
        assert all(torch.equal(d, disparity(x)) for d, x in zip(disps, logits, strict=True))

    def test_rejects_bad_input(self, depth_nets, name):
        for shape in [(1, 3, 31, 64), (1, 3, 64, 31), (1, 1, 64, 64), (3, 64, 64)]:
            with pytest.raises(ValueError, match="image must have shape"):
                depth_nets[name](torch.rand(shape))

    def test_device(self, depth_nets, name, device):
        net = copy.deepcopy(depth_nets[name]).to(device)
        with torch.no_grad():
            disps = net(real_images(1, 32, 32).to(device))
        assert all(d.device.type == device.type for d in disps)


class TestDispNetWithoutBatchNorm:
    """The DDP tests (docs/design.md §1) rely on DispNet's training-mode output depending on its own image only."""

    def test_no_normalisation_layers(self, depth_nets):
        norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
        assert not [m for m in depth_nets["dispnet"].modules() if isinstance(m, norms)]
        assert [m for m in depth_nets["resnet18"].modules() if isinstance(m, norms)]

    def test_each_image_on_its_own_in_training(self, depth_nets):
        net = copy.deepcopy(depth_nets["dispnet"]).train()
        images = real_images(3, 37, 50)
        with torch.no_grad():
            together, alone = net(images), net(images[1:2])
        for a, b in zip(together, alone):
            assert torch.allclose(a[1:2], b, atol=1e-5)


def test_build_depth_net(tmp_path):
    assert isinstance(build_depth_net("dispnet"), DispNet)
    assert isinstance(build_depth_net("resnet18"), ResNetDepthNet)
    with pytest.raises(MasksfmError, match="model.depth: unknown depth network 'resnet50'"):
        build_depth_net("resnet50")
    with pytest.raises(MasksfmError, match="resnet18, not dispnet"):
        build_depth_net("dispnet", pretrained_weights=tmp_path / "w.safetensors")


@pytest.fixture(scope="module")
def trained() -> ResNetDepthNet:
    """A ResNet depth net whose BN statistics have moved, so a lost buffer would show."""
    torch.manual_seed(1)
    net = ResNetDepthNet().train()
    with torch.no_grad():
        net(real_images(3, 64, 96))
    return net.eval()


@pytest.fixture(scope="module")
def pose_nets() -> dict[bool, PoseNet]:
    torch.manual_seed(0)
    return {False: PoseNet().eval(), True: PoseNet(explainability=True).eval()}


class TestResNetWeights:
    @pytest.fixture
    def weights(self, trained) -> dict[str, torch.Tensor]:
        """The encoder's state dict as a user's torchvision conversion holds it, classifier included."""
        state = {k: v.clone() for k, v in trained.encoder.state_dict().items()}
        state["fc.weight"] = torch.zeros(1000, 512)
        state["fc.bias"] = torch.zeros(1000)
        return state

    def test_torchvision_names(self):
        state = ResNetDepthNet().encoder.state_dict()
        assert list(state) == torchvision_resnet18_keys()[:-2]
        assert state["conv1.weight"].shape == (64, 3, 7, 7)
        assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
        assert state["layer4.1.bn2.running_var"].shape == (512,)

    @pytest.mark.slow
    def test_round_trip(self, tmp_path, trained, weights):
        path = tmp_path / "resnet18.safetensors"
        save_file(weights, path)
        torch.manual_seed(2)
        fresh = ResNetDepthNet(pretrained_weights=path).eval()
        decoder = {k: v for k, v in trained.state_dict().items() if not k.startswith("encoder.")}
        fresh.load_state_dict(decoder, strict=False)
        images = real_images(2, 37, 50)
        with torch.no_grad():
            for a, b in zip(fresh(images), trained(images)):
                assert torch.equal(a, b)
            assert not torch.equal(ResNetDepthNet().eval()(images)[0], trained(images)[0])

    def test_without_batch_counters(self, tmp_path, weights):
        path = tmp_path / "no_counters.safetensors"
        save_file({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}, path)
        net = ResNetDepthNet(pretrained_weights=path)
        assert torch.equal(net.encoder.layer3[1].conv2.weight, weights["layer3.1.conv2.weight"])

    @pytest.mark.parametrize(
        "edit, message",
        [
            (
                lambda s: s.update({"layer3.1.conv3.weight": s.pop("layer3.1.conv2.weight")}),
                "unexpected key 'layer3.1.conv3.weight'",
            ),
            (lambda s: s.pop("layer4.0.downsample.1.running_var"), "missing key 'layer4.0.downsample.1.running_var'"),
            (lambda s: s.update({f"encoder.{k}": s.pop(k) for k in list(s)}), r"unexpected key 'encoder\."),
            (lambda s: s.update({"conv1.weight": torch.zeros(64, 6, 7, 7)}), r"'conv1.weight' has shape \(64, 6, 7, 7\)"),
            (lambda s: s["bn1.running_var"].fill_(float("nan")), "'bn1.running_var' holds values that are not finite"),
        ],
        ids=["renamed", "missing", "prefixed", "shape", "nan"],
    )
    def test_bad_keys(self, tmp_path, weights, edit, message):
        edit(weights)
        path = tmp_path / "bad.safetensors"
        save_file(weights, path)
        with pytest.raises(MasksfmError, match=message) as error:
            ResNetDepthNet(pretrained_weights=path)
        assert str(path) in str(error.value)

    def test_not_safetensors(self, tmp_path):
        garbage = tmp_path / "garbage.safetensors"
        garbage.write_bytes(b"\x00\x01 not a weights file " * 10)
        with pytest.raises(MasksfmError, match="not a safetensors file") as error:
            ResNetDepthNet(pretrained_weights=garbage)
        assert str(garbage) in str(error.value)
        with pytest.raises(MasksfmError, match="missing ResNet-18 weights file"):
            ResNetDepthNet(pretrained_weights=tmp_path / "absent.safetensors")

    def test_pickle_is_never_unpickled(self, tmp_path):
        # A pickle whose loading would create a file: loading it must fail without running it.
        marker = tmp_path / "unpickled"

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        path = tmp_path / "resnet18.pth"
        path.write_bytes(pickle.dumps({"conv1.weight": Payload()}))
        with pytest.raises(MasksfmError, match="pickle file, refused"):
            ResNetDepthNet(pretrained_weights=path)
        assert not marker.exists()


class TestPoseNet:
    @staticmethod
    def snippet(batch: int, size: tuple[int, int], num_sources: int = 2):
        frames = [real_images(batch, *size, offset=i) for i in range(num_sources + 1)]
        return frames[0], torch.stack(frames[1:], dim=1)

    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("batch", [1, 3])
    def test_shapes(self, pose_nets, size, batch):
        with torch.no_grad():
            poses = pose_nets[False](*self.snippet(batch, size))
            poses_exp, masks = pose_nets[True](*self.snippet(batch, size))
        assert poses.shape == poses_exp.shape == (batch, 2, 6)
        assert [tuple(m.shape) for m in masks] == [(batch, 2, h, w) for h, w in expected_sizes(*size)]
        assert all(m.min() > 0 and m.max() < 1 for m in masks)

    def test_four_sources(self):
        with torch.no_grad():
            assert PoseNet(num_sources=4)(*self.snippet(2, (37, 50), num_sources=4)).shape == (2, 4, 6)

    def test_scaled_mean_of_the_last_conv(self, pose_nets):
        # poses[b, s] = 0.01 x the spatial mean of channels 6s..6s+5 of the 1x1 conv.
        seen = {}
        hook = pose_nets[False].pose_pred.register_forward_hook(lambda m, i, o: seen.update(out=o))
        try:
            with torch.no_grad():
                poses = pose_nets[False](*self.snippet(2, (64, 208)))
        finally:
            hook.remove()
        raw = seen["out"].mean(dim=(2, 3))
        assert torch.allclose(poses[:, 1, 2], 0.01 * raw[:, 8])
        assert torch.allclose(poses.reshape(2, 12), 0.01 * raw)
        # Hence an untrained net predicts near-identity motion.
        assert poses.abs().max() < 0.01
        T = pose_vec_to_mat(poses.reshape(-1, 6))
        assert torch.allclose(T, torch.eye(4).expand_as(T), atol=0.01)

    def test_gradients_reach_every_parameter(self):
        torch.manual_seed(0)
        net = PoseNet(explainability=True).train()
        poses, masks = net(*self.snippet(2, (37, 50)))
        (poses.sum() + sum(m.mean() for m in masks)).backward()
        grad = net.conv[0][0].weight.grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert all(p.grad is not None for p in net.parameters())

    def test_rejects_bad_sources(self, pose_nets):
        target, sources = self.snippet(1, (37, 50), num_sources=3)
        with pytest.raises(ValueError, match=r"sources must have shape \(B, 2, 3, 37, 50\)"):
            pose_nets[False](target, sources)
        with pytest.raises(ValueError, match="sources must have shape"):
            pose_nets[False](target, sources[:, :2, :, :, :40])


class TestResNetPoseNet:
    """monodepth2's pose net (`model.pose_encoder=resnet18`): a ResNet-18 over the stacked frames."""

    @pytest.mark.parametrize("size", [(37, 50), (64, 208)])
    def test_shapes_and_the_scaled_mean_of_the_last_conv(self, size):
        torch.manual_seed(0)
        net = ResNetPoseNet(num_sources=2).eval()
        assert net.encoder.conv1.in_channels == 9
        seen = {}
        hook = net.decoder[-1].register_forward_hook(lambda m, i, o: seen.update(out=o))
        with torch.no_grad():
            poses = net(*TestPoseNet.snippet(3, size))
        hook.remove()
        assert poses.shape == (3, 2, 6)
        assert torch.allclose(poses.reshape(3, 12), 0.01 * seen["out"].mean(dim=(2, 3)))
        assert 0 < poses.abs().max() < 0.01

    def test_evaluation_treats_each_snippet_alone(self):
        # Batch normalisation: the batch's statistics in training, the running ones in evaluation, where
        # a snippet's pose does not depend on the others in its batch.
        torch.manual_seed(0)
        net = ResNetPoseNet()
        target, sources = TestPoseNet.snippet(3, (37, 50))
        with torch.no_grad():
            net.train()
            alone, together = net(target[:1], sources[:1]), net(target, sources)[:1]
            assert not torch.allclose(alone, together, atol=1e-7)
            net.eval()
            alone, together = net(target[:1], sources[:1]), net(target, sources)[:1]
        assert torch.allclose(alone, together, atol=1e-6)

    def test_gradients_reach_every_parameter_and_pairs_use_it(self):
        net = PairPoseNet(encoder="resnet18").train()
        assert isinstance(net.pair_net, ResNetPoseNet) and net.pair_net.encoder.conv1.in_channels == 6
        net(*TestPoseNet.snippet(2, (37, 50))).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        assert isinstance(make_pose_net(2), PoseNet)
        with pytest.raises(ValueError, match="no explainability decoder"):
            make_pose_net(2, "resnet18", explainability=True)


class TestDownsampled:
    """`model.pose_downsample`: the pose net reads each frame averaged over f x f pixel blocks."""

    @pytest.mark.parametrize("factor", [2, 3])
    def test_reads_blocks_of_one_colour_as_the_small_frames(self, factor):
        # Frames whose f x f blocks hold one colour each average back to the small frames exactly.
        torch.manual_seed(0)
        net = ResNetPoseNet().eval()
        target, sources = TestPoseNet.snippet(2, (32, 40))
        blocks = functools.partial(torch.repeat_interleave, repeats=factor)
        big_target = blocks(blocks(target, dim=-1), dim=-2)
        big_sources = blocks(blocks(sources, dim=-1), dim=-2)
        with torch.no_grad():
            small = net(target, sources)
            read = Downsampled(net, factor)(big_target, big_sources)
            full = net(big_target, big_sources)
        assert read.shape == (2, 2, 6)
        assert torch.allclose(read, small, atol=1e-7)
        assert not torch.allclose(full, small, atol=1e-5)

    def test_gradients_and_no_explainability(self):
        net = Downsampled(ResNetPoseNet(), 2).train()
        net(*TestPoseNet.snippet(2, (64, 80))).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        with pytest.raises(ValueError, match="no explainability masks"):
            Downsampled(make_pose_net(2, "conv", explainability=True), 2)


class TestInvertPoseVec:
    def test_exact_values(self):
        # A quarter turn about y and a step along x: the inverse steps back along the rotated axis.
        vec = torch.tensor([[1.0, 0.0, 0.0, 0.0, torch.pi / 2, 0.0]], dtype=torch.float64)
        expected = torch.tensor([[0.0, 0.0, -1.0, 0.0, -torch.pi / 2, 0.0]], dtype=torch.float64)
        assert torch.allclose(invert_pose_vec(vec), expected, atol=1e-12)

    @pytest.mark.parametrize("shape", [(6,), (5, 6), (2, 3, 6)])
    def test_is_the_matrix_inverse(self, shape):
        torch.manual_seed(0)
        vec = 0.4 * torch.randn(shape, dtype=torch.float64)
        inverse = pose_vec_to_mat(invert_pose_vec(vec).reshape(-1, 6))
        assert torch.allclose(inverse, invert_pose(pose_vec_to_mat(vec.reshape(-1, 6))), atol=1e-12)
        assert torch.allclose(invert_pose_vec(invert_pose_vec(vec)), vec, atol=1e-12)

    def test_gradcheck(self):
        vec = (0.3 * torch.randn(2, 6, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(invert_pose_vec, (vec,))


class TestPairPoseNet:
    """monodepth2's pair input: the motion of (earlier, later), inverted for the sources after the target."""

    @pytest.mark.parametrize("num_sources", [2, 4])
    def test_each_pair_in_time_order(self, num_sources):
        torch.manual_seed(0)
        net = PairPoseNet(num_sources).eval()
        target, sources = TestPoseNet.snippet(2, (37, 50), num_sources)
        with torch.no_grad():
            poses = net(target, sources)
            half = num_sources // 2
            for s in range(num_sources):
                earlier, later = (sources[:, s], target) if s < half else (target, sources[:, s])
                forward = net.pair_net(later, earlier[:, None])[:, 0]
                expected = forward if s < half else invert_pose_vec(forward)
                assert torch.allclose(poses[:, s], expected, atol=1e-6)
        assert poses.shape == (2, num_sources, 6)

    def test_the_same_pair_gives_the_same_pose_in_any_snippet(self):
        # The pose of frames (a, b) as the first source's pair of one snippet and as the inverse of
        # the second source's pair of the next: one computation, inverse transforms.
        torch.manual_seed(0)
        net = PairPoseNet().eval()
        a, b, c, d = (real_images(1, 37, 50, offset=k) for k in range(4))
        with torch.no_grad():
            first = net(b, torch.stack([a, c], dim=1))[:, 0]  # T_{b→a}
            second = net(a, torch.stack([d, b], dim=1))[:, 1]  # T_{a→b}
        T_ba, T_ab = pose_vec_to_mat(first), pose_vec_to_mat(second)
        assert torch.allclose(T_ba @ T_ab, torch.eye(4).expand(1, 4, 4), atol=1e-5)

    def test_gradients_reach_every_parameter(self):
        torch.manual_seed(0)
        net = PairPoseNet().train()
        net(*TestPoseNet.snippet(2, (37, 50))).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="even"):
            PairPoseNet(3)
        target, sources = TestPoseNet.snippet(1, (37, 50), num_sources=4)
        with pytest.raises(ValueError, match=r"sources must have shape \(B, 2, 3, 37, 50\)"):
            PairPoseNet()(target, sources)


class TestExport:
    """`torch.export` at one size with a dynamic batch gives the eager outputs (the ONNX exporter
    starts from the same program; its tests live with the export command)."""

    @pytest.mark.parametrize("name", ["dispnet", "resnet18"])
    def test_depth(self, depth_nets, name):
        net = depth_nets[name]
        batch = torch.export.Dim("batch", min=1, max=16)
        program = torch.export.export(net, (real_images(2, 37, 50),), dynamic_shapes={"image": {0: batch}})
        for b in (1, 3):
            images = real_images(b, 37, 50, offset=1)
            with torch.no_grad():
                for exported, eager in zip(program.module()(images), net(images)):
                    assert exported.shape == eager.shape
                    assert torch.allclose(exported, eager, atol=1e-5)

    def test_pose_with_explainability(self, pose_nets):
        net = pose_nets[True]
        batch = torch.export.Dim("batch", min=1, max=16)
        example = TestPoseNet.snippet(2, (37, 50))
        program = torch.export.export(net, example, dynamic_shapes={"target": {0: batch}, "sources": {0: batch}})
        target, sources = TestPoseNet.snippet(3, (37, 50))
        with torch.no_grad():
            (poses, masks), (poses_ref, masks_ref) = program.module()(target, sources), net(target, sources)
        assert torch.allclose(poses, poses_ref, atol=1e-7)
        for m, m_ref in zip(masks, masks_ref):
            assert torch.allclose(m, m_ref, atol=1e-6)


@pytest.mark.parametrize("size_in,size_out", [((16, 52), (128, 416)), ((3, 7), (6, 14)), ((5, 9), (12, 31))])
def test_upsample_bilinear_is_interpolates(size_in, size_out):
    """The two-matrix bilinear upsampling gives F.interpolate's values and gradients (align_corners=False,
    edges clamped), also for sizes that are not a power of two apart."""
    import torch.nn.functional as F

    from masksfm.networks.layers import upsample_bilinear

    x = torch.rand(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 3, *size_out, dtype=torch.float64)
    ours = upsample_bilinear(x, size_out)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    theirs = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-12) and torch.allclose(grad_ours, grad_theirs, atol=1e-12)


class TestVehicleMotion:
    """A car's camera: the source's centre on the chord of a planar arc tangent to the optical axis."""

    @staticmethod
    def poses_on(cam_to_world: list[torch.Tensor]) -> torch.Tensor:
        """Camera-to-world poses of a snippet -> the pose vectors of T_{t→s} for its sources."""
        centre = len(cam_to_world) // 2
        return mat_to_pose_vec(torch.stack([relative_pose(cam_to_world[centre], P)
                                            for k, P in enumerate(cam_to_world) if k != centre]))

    @staticmethod
    def pose(yaw: float, x: float, z: float) -> torch.Tensor:
        """Camera-to-world, heading `yaw` (radians, positive to the right) at (x, 0, z) metres."""
        c, s = math.cos(yaw), math.sin(yaw)
        return torch.tensor([[c, 0, s, x], [0, 1, 0, 0], [-s, 0, c, z], [0, 0, 0, 1]], dtype=torch.float64)

    @pytest.mark.parametrize("turn_degrees", [2.0, -3.0, 0.0])
    def test_a_car_on_an_arc_keeps_its_poses(self, turn_degrees):
        """Tangent to a circle of 25 m turning right or left, or straight ahead, 5 frames: every
        source, before and after the target, is on its chord already."""
        radius, turn = 25.0, math.radians(turn_degrees)
        frames = [self.pose(k * turn, radius * (1 - math.cos(k * turn)), radius * math.sin(k * turn)) if turn
                  else self.pose(0.0, 0.0, 1.1 * k) for k in range(5)]
        vec = self.poses_on(frames)
        assert torch.allclose(onto_vehicle_path(vec), vec, atol=1e-12)

    def test_a_crabbing_camera_moves_along_its_axis(self):
        """Straight ahead in the world with the camera yawed 2° off the direction of travel, steps of
        1 m: the sources' centres go to (0, 0, ∓cos 2°), their projections on the optical axis."""
        yaw = math.radians(2.0)
        vec = onto_vehicle_path(self.poses_on([self.pose(yaw, 0.0, float(z)) for z in range(3)]))
        T = pose_vec_to_mat(vec)
        centres = -(T[:, :3, :3].transpose(1, 2) @ T[:, :3, 3:])[..., 0]
        expected = torch.tensor([[0.0, 0.0, -math.cos(yaw)], [0.0, 0.0, math.cos(yaw)]], dtype=torch.float64)
        assert torch.allclose(centres, expected, atol=1e-12)

    def test_a_step_up_and_sideways_is_dropped(self):
        """No rotation: the translation's part along the optical axis is all that is left."""
        vec = torch.tensor([[0.1, -0.2, 1.5, 0, 0, 0], [0.3, 0.05, -0.7, 0, 0, 0]], dtype=torch.float64)
        expected = vec.clone()
        expected[:, :2] = 0
        assert torch.equal(onto_vehicle_path(vec), expected)
        assert onto_vehicle_path(vec[None]).shape == (1, 2, 6)

    @pytest.mark.parametrize("pitch_degrees", [1.0, -0.5])
    def test_a_pitched_camera_climbs_off_the_chord(self, pitch_degrees):
        """Straight ahead on level ground with the camera pitched on the car (a mounting, the
        suspension), steps of 1.1 m: in the camera's frame the car travels up or down from its optical
        axis. `vertical` keeps every pose as it is; the chord alone drops the climb."""
        c, s = math.cos(math.radians(pitch_degrees)), math.sin(math.radians(pitch_degrees))
        pitched = torch.tensor([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]], dtype=torch.float64)
        vec = self.poses_on([self.pose(0.0, 0.0, 1.1 * k) @ pitched for k in range(3)])
        assert vec[:, 1].abs().min() > 1e-3  # the climb is there
        assert torch.allclose(onto_vehicle_path(vec, vertical=True), vec, atol=1e-12)
        on_chord = onto_vehicle_path(vec)
        assert torch.equal(on_chord[:, :2], torch.zeros(2, 2, dtype=torch.float64))

    def test_vertical_travel_drops_only_the_sideways_step(self):
        """No rotation: the vertical part of the translation stays, the sideways part goes."""
        vec = torch.tensor([[0.1, -0.2, 1.5, 0, 0, 0], [0.3, 0.05, -0.7, 0, 0, 0]], dtype=torch.float64)
        expected = vec.clone()
        expected[:, 0] = 0
        assert torch.equal(onto_vehicle_path(vec, vertical=True), expected)

    def test_no_gradient_through_the_chord(self):
        """The gradient is that of the projection onto a chord held fixed at its current direction
        (central differences with the chord frozen): the photometric loss moves the speed along the
        chord and the rotation, and the chord follows the rotation without pulling on it."""
        from kornia.geometry.conversions import axis_angle_to_rotation_matrix

        vec = torch.tensor([[0.02, 0.01, 1.0, 0.01, 0.05, -0.02]], dtype=torch.float64, requires_grad=True)
        weights = torch.tensor([0.3, -0.5, 1.0, 0.2, 0.7, -0.1], dtype=torch.float64)
        (onto_vehicle_path(vec) * weights).sum().backward()
        half = 0.5 * math.atan2(*axis_angle_to_rotation_matrix(vec.detach()[:, 3:])[0, 2, [0, 2]].tolist())
        chord = torch.tensor([math.sin(half), 0.0, math.cos(half)], dtype=torch.float64)

        def frozen(v):
            u = axis_angle_to_rotation_matrix(v[:, 3:])[0] @ chord
            return ((v[0, :3] @ u) * u * weights[:3]).sum() + (v[0, 3:] * weights[3:]).sum()

        eps, numeric = 1e-6, torch.zeros(6, dtype=torch.float64)
        for k in range(6):
            step = torch.zeros(1, 6, dtype=torch.float64)
            step[0, k] = eps
            numeric[k] = (frozen(vec.detach() + step) - frozen(vec.detach() - step)) / (2 * eps)
        assert torch.allclose(vec.grad[0], numeric, atol=1e-8)
        assert vec.grad[0, 2] > 0.9  # the speed along the chord learns

    def test_the_wrapped_net(self):
        """`model.motion=vehicle` builds the pose net wrapped; the wrapper is the net's poses moved
        onto the chord, the explainability masks untouched."""
        from masksfm.config import load_config
        from masksfm.model import build_model

        # model.motion=vehicle is the default
        model = build_model(load_config(None, ["loss.mask=explainability", "model.pose_encoder=conv"]))
        assert isinstance(model.pose_net, VehicleMotion)
        assert isinstance(build_model(load_config(None, ["model.motion=free"])).pose_net, ResNetPoseNet)
        target, sources = TestPoseNet.snippet(2, (37, 50))
        with torch.no_grad():
            poses, masks = model.pose_net(target, sources)
            inner, inner_masks = model.pose_net.net(target, sources)
        assert torch.equal(poses, onto_vehicle_path(inner))
        assert all(torch.equal(a, b) for a, b in zip(masks, inner_masks))

    def test_the_wrapped_net_with_vertical_travel(self):
        """`model.motion=vehicle_vertical` wraps the net with the vertical plane through the chord."""
        from masksfm.config import load_config
        from masksfm.model import build_model

        model = build_model(load_config(None, ["model.motion=vehicle_vertical"]))
        assert isinstance(model.pose_net, VehicleMotion) and model.pose_net.vertical
        target, sources = TestPoseNet.snippet(2, (37, 50))
        with torch.no_grad():
            poses, inner = model.pose_net(target, sources), model.pose_net.net(target, sources)
        assert torch.equal(poses, onto_vehicle_path(inner, vertical=True))
        assert not torch.equal(poses, onto_vehicle_path(inner))


class TestMirrorMean:
    """`model.pose_mirror_mean`: a pose net that reads a snippet and its mirror image alike."""

    def test_a_mirrored_snippet_gets_the_mirrored_poses(self):
        from masksfm.config import load_config
        from masksfm.geometry import mirror_pose_vec
        from masksfm.model import build_model

        torch.manual_seed(0)
        model = build_model(load_config(None, ["model.pose_mirror_mean=true", "data.height=64", "data.width=96"]))
        target, sources = torch.rand(2, 3, 64, 96), torch.rand(2, 2, 3, 64, 96)
        poses = model.pose_net(target, sources)  # training mode: batch statistics per reading
        mirrored = model.pose_net(target.flip(-1), sources.flip(-1))
        assert torch.allclose(mirror_pose_vec(mirrored), poses, atol=1e-9)
        # The net inside reads the two differently: the mean is not either reading.
        inner = model.pose_net.net.net
        assert not torch.allclose(onto_vehicle_path(inner(target, sources)), poses, atol=1e-6)
        poses.square().sum().backward()
        assert all(p.grad is not None for p in inner.parameters())

    def test_no_explainability(self):
        from masksfm.config import load_config

        with pytest.raises(MasksfmError, match="pose_mirror_mean"):
            load_config(None, ["model.pose_mirror_mean=true", "model.pose_encoder=conv", "loss.mask=explainability"])
