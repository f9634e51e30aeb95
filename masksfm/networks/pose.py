"""Pose network: the target and its sources in, one 6-vector T_t2s per source out (docs/design.md §2, §3).

SfMLearner's PoseExpNet (Zhou et al., CVPR 2017) with its optional explainability decoder. The output
`[tx, ty, tz, rx, ry, rz]` is a translation (model units) and an axis-angle rotation (radians) of the
transform that maps target-frame points into source s; `masksfm.geometry.pose_vec_to_mat` turns it into
the 4x4 `T_t2s`.
"""

from __future__ import annotations

import torch
from torch import nn

from masksfm.networks.layers import NUM_SCALES, check_image, crop_like, normalize_image, xavier_init

# SfMLearner scales the pose output by 0.01 so that the untrained net predicts near-identity motion.
POSE_SCALE = 0.01


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2), nn.ReLU(inplace=True)
    )


def _upconv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU(inplace=True))


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
        check_image("target", target)
        if sources.dim() != 5 or tuple(sources.shape[1:]) != (self.num_sources, *target.shape[1:]):
            raise ValueError(
                f"sources must have shape (B, {self.num_sources}, {', '.join(map(str, target.shape[1:]))}), "
                f"got {tuple(sources.shape)}"
            )
        x = normalize_image(torch.cat([target, sources.flatten(1, 2)], dim=1))
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
