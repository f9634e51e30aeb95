"""Pose network: the target and its sources in, one 6-vector T_t2s per source out (docs/design.md §2, §3).

SfMLearner's PoseExpNet (Zhou et al., CVPR 2017) with its optional explainability decoder. The output
`[tx, ty, tz, rx, ry, rz]` is a translation (model units) and an axis-angle rotation (radians) of the
transform that maps target-frame points into source s; `masksfm.geometry.pose_vec_to_mat` turns it into
the 4x4 `T_t2s`.
"""

from __future__ import annotations

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import nn
from torch.nn import functional as F

from masksfm.geometry import mirror_pose_vec, onto_vehicle_chord, pose_vec_to_mat
from masksfm.networks.layers import NUM_SCALES, check_image, crop_like, normalize_image, xavier_init
from masksfm.networks.resnet import RESNET18_CHANNELS, ResNet18Encoder

# SfMLearner scales the pose output by 0.01 so that the untrained net predicts near-identity motion.
POSE_SCALE = 0.01


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2), nn.ReLU(inplace=True)
    )


def _upconv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU(inplace=True))


def check_snippet(target: torch.Tensor, sources: torch.Tensor, num_sources: int) -> None:
    """Raise ValueError for a bad target (`check_image`) or sources not (B, `num_sources`, 3, H, W)."""
    check_image("target", target)
    if sources.dim() != 5 or tuple(sources.shape[1:]) != (num_sources, *target.shape[1:]):
        raise ValueError(
            f"sources must have shape (B, {num_sources}, {', '.join(map(str, target.shape[1:]))}), "
            f"got {tuple(sources.shape)}"
        )


def stacked_input(target: torch.Tensor, sources: torch.Tensor, num_sources: int) -> torch.Tensor:
    """The pose nets' input: the target and its sources checked and stacked on the channels, normalised.

    Args:
        target: (B, 3, H, W) RGB in [0, 1].
        sources: (B, S, 3, H, W) RGB in [0, 1], S = `num_sources`.
    Returns:
        (B, 3·(1 + S), H, W), `normalize_image` of the stack.
    Raises:
        ValueError: `check_snippet`'s.
    """
    check_snippet(target, sources, num_sources)
    return normalize_image(torch.cat([target, sources.flatten(1, 2)], dim=1))


class PoseNet(nn.Module):
    """SfMLearner's PoseExpNet: seven stride-2 convolutions over the stacked frames, then a 1x1 conv.

    Encoder: 16-32-64-128-256-256-256 channels, kernels 7, 5, 3, ...; a 1x1 conv to 6·S channels,
    averaged over the image and scaled by 0.01. The explainability decoder (SfMLearner's baseline mask)
    upsamples the 1/32 features through 256-128-64-32-16 channels and predicts one mask per source at
    1/8, 1/4, 1/2 and 1, through a sigmoid, as SfmLearner-Pytorch (the TF original's softmax over two
    channels is the same function: softmax([a, b])[1] = sigmoid(b − a)).

    Args:
        num_sources: S, the number of source frames per target.
        explainability: also predict the explainability masks.
    """

    ENCODER_CHANNELS = (16, 32, 64, 128, 256, 256, 256)
    KERNEL_SIZES = (7, 5, 3, 3, 3, 3, 3)
    DECODER_CHANNELS = (256, 128, 64, 32, 16)  # 1/16 .. full resolution

    def __init__(self, num_sources: int = 2, explainability: bool = False):
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"num_sources must be at least 1, got {num_sources}")
        self.num_sources = num_sources
        self.explainability = explainability
        enc, dec = self.ENCODER_CHANNELS, self.DECODER_CHANNELS
        self.conv = nn.ModuleList(
            _conv(c_in, c_out, k) for c_in, c_out, k in zip((3 * (1 + num_sources),) + enc[:-1], enc, self.KERNEL_SIZES)
        )
        self.pose_pred = nn.Conv2d(enc[-1], 6 * num_sources, 1)
        if explainability:
            self.upconv = nn.ModuleList(_upconv(c_in, c_out) for c_in, c_out in zip((enc[4],) + dec[:-1], dec))
            # Mask heads at 1/8, 1/4, 1/2, 1: the last four upconvs.
            self.predict_mask = nn.ModuleList(nn.Conv2d(c, num_sources, 3, padding=1) for c in dec[1:])
        xavier_init(self)

    def forward(
        self, target: torch.Tensor, sources: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Relative poses (and explainability masks).

        Args:
            target: (B, 3, H, W) RGB in [0, 1], H, W >= 32.
            sources: (B, S, 3, H, W) RGB in [0, 1].
        Returns:
            poses: (B, S, 6) `[tx, ty, tz, rx, ry, rz]` of T_t2s per source (translation, then
                axis-angle in radians); with `explainability`, `(poses, masks)` where masks is
                [m_0, m_1, m_2, m_3], finest first, m_k (B, S, ceil(H/2^k), ceil(W/2^k)) in (0, 1).
        """
        x = stacked_input(target, sources, self.num_sources)
        features = []
        for conv in self.conv:
            x = conv(x)
            features.append(x)
        poses = POSE_SCALE * self.pose_pred(x).mean(dim=(2, 3)).reshape(-1, self.num_sources, 6)
        if not self.explainability:
            return poses
        # The decoder starts from conv5 (1/32) and is cropped to conv4 .. conv1 and then to the input.
        skips = [target] + features[:4]
        x = features[4]
        masks: list[torch.Tensor] = []
        for upconv, level in zip(self.upconv, range(4, -1, -1)):
            x = crop_like(upconv(x), skips[level])
            if level < NUM_SCALES:
                masks.append(torch.sigmoid(self.predict_mask[NUM_SCALES - 1 - level](x)))
        return poses, masks[::-1]


class ResNetPoseNet(nn.Module):
    """monodepth2's pose net: a ResNet-18 encoder over the stacked frames, then three convolutions.

    The encoder's first convolution takes the 3·(1 + S) stacked channels; its 1/32 features go
    through a 1x1 squeeze to 256 channels and two 3x3 convolutions of 256, each with a ReLU, then a
    1x1 convolution to 6·S channels, averaged over the image and scaled by 0.01 (as `PoseNet`).
    The encoder's batch normalisation uses the batch's statistics in training and the running ones
    in evaluation. Same interface as `PoseNet` without the explainability decoder.

    Args:
        num_sources: S, the number of source frames per target.
    """

    def __init__(self, num_sources: int = 2):
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"num_sources must be at least 1, got {num_sources}")
        self.num_sources = num_sources
        self.explainability = False
        self.encoder = ResNet18Encoder(in_channels=3 * (1 + num_sources))
        self.decoder = nn.Sequential(
            nn.Conv2d(RESNET18_CHANNELS[-1], 256, 1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 6 * num_sources, 1),
        )

    def forward(self, target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Relative poses: (B, S, 6) `[tx, ty, tz, rx, ry, rz]` of T_t2s per source (see `PoseNet.forward`)."""
        x = stacked_input(target, sources, self.num_sources)
        features = self.encoder(x)[-1]
        return POSE_SCALE * self.decoder(features).mean(dim=(2, 3)).reshape(-1, self.num_sources, 6)


def make_pose_net(num_sources: int, encoder: str = "conv", explainability: bool = False) -> nn.Module:
    """The pose net over a target and `num_sources` sources: SfMLearner's convolutions (`conv`) or
    monodepth2's ResNet-18 (`resnet18`, no explainability decoder)."""
    if encoder == "resnet18":
        if explainability:
            raise ValueError("the ResNet-18 pose net has no explainability decoder")
        return ResNetPoseNet(num_sources)
    return PoseNet(num_sources, explainability=explainability)


def invert_pose_vec(vec: torch.Tensor) -> torch.Tensor:
    """The 6-vector of the inverse transform: `[t, r]` -> `[−R(r)ᵀ t, −r]`.

    Args:
        vec: (..., 6) `[tx, ty, tz, rx, ry, rz]`, translation then axis-angle (radians).
    Returns:
        (..., 6) the same parameters of the inverse transform (exact, differentiable).
    """
    flat = vec.reshape(-1, 6)
    R = axis_angle_to_rotation_matrix(flat[:, 3:])
    t = -(R.transpose(1, 2) @ flat[:, :3, None])[..., 0]
    return torch.cat([t, -flat[:, 3:]], dim=1).reshape(vec.shape)


def onto_vehicle_path(vec: torch.Tensor, vertical: bool = False) -> torch.Tensor:
    """Pose vectors with the camera moved onto the path of a car's camera (Ackermann steering):
    the translation replaced by its part along the chord of the planar arc, t' = (t·u) u (the source's
    centre projected onto the chord, :func:`masksfm.geometry.onto_vehicle_chord`), with `vertical`
    onto the vertical plane through the chord (no sideways travel); the rotation is kept, and the
    heading change carries no gradient, so the photometric loss moves the speed along the chord and
    the rotation as before.

    Args:
        vec: (..., 6) `[t, axis-angle]` of T_t2s.
        vertical: keep the travel along the target camera's vertical axis too.
    Returns:
        (..., 6) the same rotation, the translation along the chord (or in its vertical plane).
    """
    flat = vec.reshape(-1, 6)
    t = onto_vehicle_chord(pose_vec_to_mat(flat), vertical)[:, :3, 3]
    return torch.cat([t, flat[:, 3:]], dim=1).reshape(vec.shape)


class VehicleMotion(nn.Module):
    """A pose net whose camera travels as a car's (`model.motion=vehicle`, or `vehicle_vertical`
    with `vertical`): its poses through :func:`onto_vehicle_path`, its explainability masks (if any)
    as they are. Same interface."""

    def __init__(self, net: nn.Module, vertical: bool = False):
        super().__init__()
        self.net = net
        self.vertical = vertical
        self.num_sources = net.num_sources
        self.explainability = net.explainability

    def forward(self, target: torch.Tensor, sources: torch.Tensor):
        out = self.net(target, sources)
        if isinstance(out, tuple):
            return onto_vehicle_path(out[0], self.vertical), out[1]
        return onto_vehicle_path(out, self.vertical)


class Downsampled(nn.Module):
    """A pose net that reads the frames at 1/`factor` of their size (`model.pose_downsample`): each
    frame averaged over factor x factor pixel blocks before the net. The ResNet-18 pose net costs about
    a quarter as much at half the size (the step's largest part after the depth net). Same interface;
    no explainability masks (they would come out at the smaller size)."""

    def __init__(self, net: nn.Module, factor: int):
        super().__init__()
        if net.explainability:
            raise ValueError("a downsampled pose net has no explainability masks")
        if factor < 1:
            raise ValueError(f"factor must be at least 1, got {factor}")
        self.net = net
        self.factor = factor
        self.num_sources = net.num_sources
        self.explainability = False

    def forward(self, target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """(B, S, 6) T_t2s from target (B, 3, H, W) and sources (B, S, 3, H, W), read at (H/f, W/f)."""
        small_target = F.avg_pool2d(target, self.factor)
        small_sources = F.avg_pool2d(sources.flatten(0, 1), self.factor).unflatten(0, sources.shape[:2])
        return self.net(small_target, small_sources)


def mirror_mean(read, target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """The mean of a pose reader's T_t2s for a snippet and the mirror of its T_t2s for the mirrored
    snippet (:func:`masksfm.geometry.mirror_pose_vec`): (B, S, 6).

    Args:
        read: (target (B, 3, H, W), sources (B, S, 3, H, W)) -> (B, S, 6) poses.
    """
    return 0.5 * (read(target, sources) + mirror_pose_vec(read(target.flip(-1), sources.flip(-1))))


class MirrorMean(nn.Module):
    """A pose net that cannot tell a snippet from its mirror image (`model.pose_mirror_mean`): its poses
    are the mean of the net's reading of the snippet and the mirror of its reading of the mirrored
    snippet (:func:`masksfm.geometry.mirror_pose_vec`), in training as at test time; `eval pose --flip`
    of a plain net. Twice the pose net's cost. No explainability masks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if net.explainability:
            raise ValueError("the mirror mean of a pose net has no explainability masks")
        self.net = net
        self.num_sources = net.num_sources
        self.explainability = False

    def forward(self, target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        return mirror_mean(self.net, target, sources)


class PairPoseNet(nn.Module):
    """One pose per ordered frame pair, as monodepth2 (`pose_model_input: pairs`).

    Each source is paired with the target in time order, (earlier, later), and one encoder (the
    PoseNet's convolutions over 2 stacked frames) predicts the camera motion of that pair, always
    forward in time: T_{later→earlier}. A source before the target takes it as is; a source after
    the target takes its inverse. The net thus learns one task (how far did the camera move from
    this frame to the next) instead of SfMLearner's two opposite outputs from one stacked snippet,
    and a pose between frames i and i+1 is the same computation whichever snippet it comes from.

    Same interface as `PoseNet` (no explainability decoder).

    Args:
        num_sources: S (even): the first S/2 sources come before the target, the rest after it.
        encoder: the pair net, `conv` (the PoseNet's) or `resnet18` (monodepth2's, `ResNetPoseNet`).
    """

    def __init__(self, num_sources: int = 2, encoder: str = "conv"):
        super().__init__()
        if num_sources < 2 or num_sources % 2:
            raise ValueError(f"num_sources must be even and at least 2, got {num_sources}")
        self.num_sources = num_sources
        self.explainability = False
        self.pair_net = make_pose_net(1, encoder)

    def forward(self, target: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """T_t2s of each source (see `PoseNet.forward`).

        Args:
            target: (B, 3, H, W) RGB in [0, 1].
            sources: (B, S, 3, H, W) RGB in [0, 1], in time order around the target.
        Returns:
            (B, S, 6) `[t, axis-angle]` of T_t2s per source.
        """
        check_snippet(target, sources, self.num_sources)
        b, num = sources.shape[:2]
        half = num // 2
        targets = target.unsqueeze(1).expand_as(sources)
        earlier = torch.cat([sources[:, :half], targets[:, half:]], dim=1).flatten(0, 1)
        later = torch.cat([targets[:, :half], sources[:, half:]], dim=1).flatten(0, 1)
        forward_motion = self.pair_net(later, earlier.unsqueeze(1)).view(b, num, 6)  # T_{later→earlier}
        return torch.cat([forward_motion[:, :half], invert_pose_vec(forward_motion[:, half:])], dim=1)
