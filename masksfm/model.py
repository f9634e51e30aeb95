"""The depth net and the pose net as one module (one DDP wrapper, one checkpoint), built from a config.

`SfMModel(images)` runs the depth net on every frame of a snippet (the masks and the reverse
direction need the sources' depth too) and the pose net on the snippet. With
`model.source_depth_grad` off, the sources' depth is computed without gradient: the loss trains the
depth net through the targets' depth only, and the backward costs a third.
`use_training_arithmetic` sets how the trainer runs the depth net (channels_last where that pays, bf16 autocast).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from masksfm.checkpoints import load_checkpoint, load_weights, resolve_checkpoint, unprefixed
from masksfm.config import Config, stored_config
from masksfm.errors import MasksfmError
from masksfm.networks import Downsampled, MirrorMean, PairPoseNet, VehicleMotion, build_depth_net, make_pose_net
from masksfm.objective import ModelOutput, snippet_sources


class SfMModel(nn.Module):
    def __init__(self, depth_net: nn.Module, pose_net: nn.Module, source_depth_grad: bool = True,
                 joint_pose_batch: bool = True):
        super().__init__()
        self.depth_net = depth_net
        self.pose_net = pose_net
        self.source_depth_grad = source_depth_grad  # False: the sources' depth without gradient
        # False: the other snippets in a pose-net call of their own, so that its batch statistics over
        # the snippets the loss warps with are those of a batch without them.
        self.joint_pose_batch = joint_pose_batch
        self.depth_autocast: torch.dtype | None = None  # run the depth net under autocast to this dtype

    def depth_arithmetic(self, device: torch.device) -> torch.autocast:
        """The context the depth net runs in: bf16 autocast where `depth_autocast` says so. Calls of
        the depth net inside one such context cast its weights to bf16 once (autocast's cache)."""
        dtype = self.depth_autocast
        return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def disparities(self, frames: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The depth net on frames (N, 3, H, W): its disparities and their logits, per scale, finest
        first, (N, 1, h, w) float32."""
        with self.depth_arithmetic(frames.device):
            disparities, logits = self.depth_net.with_logits(frames)
        # The warp, the masks and the loss work in float32 whatever the depth net computed in.
        return [d.float() for d in disparities], [x.float() for x in logits]

    def forward(self, images: torch.Tensor,
                other_snippets: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()) -> ModelOutput:
        """Args: images (B, L, 3, H, W) in [0, 1], target = frame L // 2; other_snippets: more
        (targets (B, 3, H, W), sources (B, L − 1, 3, H, W)) for the pose net alone (sources turned,
        farther away in time, or snippets shifted along the drive), run in the same batch
        (`ModelOutput.other_poses`), or in a pose-net call of their own without `joint_pose_batch`."""
        b, length = images.shape[:2]
        center = length // 2
        sources = snippet_sources(images)
        if self.source_depth_grad or not torch.is_grad_enabled():
            disparities, logits = self.disparities(images.flatten(0, 1))
        else:
            # One autocast context for both calls: the weights are cast once for the two.
            with self.depth_arithmetic(images.device):
                target_disparities, target_logits = self.disparities(images[:, center])
                with torch.no_grad():
                    source_disparities, source_logits = self.disparities(sources.flatten(0, 1))

            def snippet_order(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> list[torch.Tensor]:
                return [in_snippet_order(t, s.unflatten(0, (b, length - 1))) for t, s in zip(targets, sources)]

            disparities = snippet_order(target_disparities, source_disparities)
            logits = snippet_order(target_logits, source_logits)
        target = images[:, center]
        if not other_snippets:
            return ModelOutput(disparities, *self._poses(target, sources), disparity_logits=logits)
        other_targets = torch.cat([t for t, _ in other_snippets])
        other_sources = torch.cat([s for _, s in other_snippets])
        if self.joint_pose_batch:  # one pass of the pose net over the snippet and the other snippets
            poses, explainability = self._poses(torch.cat([target, other_targets]),
                                                torch.cat([sources, other_sources]))
            poses, other_poses = poses[:b], poses[b:]
            explainability = None if explainability is None else [m[:b] for m in explainability]
        else:
            poses, explainability = self._poses(target, sources)
            other_poses, _ = self._poses(other_targets, other_sources)
        return ModelOutput(disparities, poses, explainability, tuple(other_poses.split(b)), logits)

    def _poses(self, target: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, list | None]:
        """The pose net on targets (N, 3, H, W) and sources (N, S, 3, H, W): poses (N, S, 6) and its
        explainability masks (None without them)."""
        out = self.pose_net(target, sources)
        return out if isinstance(out, tuple) else (out, None)


def in_snippet_order(target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Targets (B, C, h, w) and sources (B, S, C, h, w) as frames in snippet order (B·(S+1), C, h, w)."""
    center = sources.shape[1] // 2
    return torch.cat([sources[:, :center], target.unsqueeze(1), sources[:, center:]], dim=1).flatten(0, 1)


def build_model(config: Config) -> SfMModel:
    """A fresh model for `config` (the ResNet encoder starts from `model.pretrained` if given)."""
    pretrained = Path(config.model.pretrained) if config.model.pretrained else None
    depth_net = build_depth_net(config.model.depth, pretrained_weights=pretrained)
    num_sources = config.data.snippet_length - 1
    if config.model.pose == "pairs":
        pose_net = PairPoseNet(num_sources, encoder=config.model.pose_encoder)
    else:
        pose_net = make_pose_net(num_sources, config.model.pose_encoder,
                                 explainability=config.loss.mask == "explainability")
    if config.model.pose_downsample > 1:
        pose_net = Downsampled(pose_net, config.model.pose_downsample)
    if config.model.pose_mirror_mean:
        pose_net = MirrorMean(pose_net)
    if config.model.motion != "free":
        pose_net = VehicleMotion(pose_net, vertical=config.model.motion == "vehicle_vertical")
    return SfMModel(depth_net, pose_net, source_depth_grad=config.model.source_depth_grad,
                    joint_pose_batch=config.model.joint_pose_batch)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (elsewhere bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private since 2.1
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def channels_last_pays(device: torch.device, precision: str) -> bool:
    """Whether the depth net's training step is faster with its weights channels_last (NHWC) than
    NCHW on `device` in `precision` ("fp32" or "bf16"): under bf16 and on a GPU (oneDNN's bf16 and
    cuDNN's kernels want NHWC), and in float32 on a CPU with AVX-512; on a CPU whose widest vectors
    are AVX2, float32 NCHW is faster (`bench/train_step.py`, docs/results.md, "Speed")."""
    if precision == "bf16" or device.type != "cpu":
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def training_arithmetic(precision: str, device: torch.device) -> tuple[str, bool]:
    """What the trainer runs the depth net in on `device` for `train.precision`: (the precision,
    `auto` being bf16 where the device computes it natively, else fp32; whether channels_last)."""
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    return precision, channels_last_pays(device, precision)


def use_training_arithmetic(model: SfMModel, precision: str, device: torch.device | None = None,
                            channels_last: bool | None = None) -> str:
    """How the trainer runs the depth net (`train.precision`), before the optimizer is built; the
    precision used (`auto`: bf16 where the device computes it natively, else fp32).

    Its weights go channels_last (NHWC) where that is the faster layout (`channels_last_pays`; or
    as `channels_last` says), the same values up to float rounding; bf16 runs its forward and
    backward under bfloat16 autocast (its weights and their Adam state stay float32). The pose net,
    the masks, the warp and the loss stay float32. The cost of each: `bench/train_step.py`
    (docs/results.md).
    """
    device = device if device is not None else next(model.parameters()).device
    precision, pays = training_arithmetic(precision, device)
    channels_last = pays if channels_last is None else channels_last
    model.depth_net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.depth_autocast = torch.bfloat16 if precision == "bf16" else None
    return precision


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[SfMModel, Config, dict]:
    """The trained model of a run folder or checkpoint file, in eval mode, with its config and metadata."""
    path = resolve_checkpoint(run)
    tensors, metadata = load_checkpoint(path, device="cpu")
    try:
        config = stored_config(metadata["config"])
    except MasksfmError as error:
        raise MasksfmError(f"{path}: the configuration stored in the checkpoint does not load ({error})") from None
    config.model.pretrained = None  # the checkpoint holds the weights; do not re-read the encoder file
    model = build_model(config)
    load_weights(model, unprefixed(tensors, "model"), path)
    metadata["path"] = str(path)
    return model.to(device).eval(), config, metadata


def pick_device(name: str | None) -> torch.device:
    """`--device`: cpu, cuda, cuda:N, or None for cuda when available else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MasksfmError(f"--device {name}: not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MasksfmError(f"--device {name}: CUDA is not available on this machine")
    return device
