"""Depth networks: disparity at four scales from one RGB image (docs/design.md §2, §3).

Both nets share one interface: `forward(image)` takes (B, 3, H, W) RGB in [0, 1] (the net normalises it
itself, so every caller and every exported model feeds plain RGB) and returns four disparities, finest
first, `disp_k` of shape (B, 1, ceil(H / 2^k), ceil(W / 2^k)), each `10·sigmoid(x) + 0.01` (SfMLearner),
so depth = 1 / disp lies in (0.1, 100); `with_logits(image)` also returns the four x (the training loss
can hold them where the sigmoid still has a gradient, `loss.logit_bound`).

Any size of at least 32x32: every stride-2 layer pads so that n pixels become ceil(n / 2) with output
pixel i over input pixel 2i, and the decoders upsample x2 and crop to the skip's size (as
SfmLearner-Pytorch's DispNetS does), so the skips stay aligned at every size without padding the input.
Padding to the stride multiple (128 for DispNet) instead, as first planned, would make DispNet
process 128x256 pixels for a 64x208 image and 128x512 for KITTI's 128x416 (the cost:
docs/results.md), and the pose net would average over the padding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from masksfm.errors import MasksfmError
from masksfm.networks.layers import NUM_SCALES, check_image, crop_like, normalize_image, upsample_bilinear, xavier_init
from masksfm.networks.resnet import RESNET18_CHANNELS, ResNet18Encoder, load_resnet18_weights

# SfMLearner's disparity activation: disp in (0.01, 10.01), depth in (0.1, 100).
DISP_SCALE = 10.0
DISP_MIN = 0.01


def disparity(logits: torch.Tensor) -> torch.Tensor:
    """SfMLearner's disparity activation, `10·sigmoid(x) + 0.01`."""
    return DISP_SCALE * torch.sigmoid(logits) + DISP_MIN


# --- DispNet (SfMLearner's DispNetS) ---------------------------------------------------------------


def _down(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    pad = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=pad),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size, padding=pad),
        nn.ReLU(inplace=True),
    )


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


def _upconv(in_channels: int, out_channels: int) -> nn.Sequential:
    # Exactly doubles the size, with output pixel 2i over input pixel i like the encoder's strides.
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True)
    )


class DispNet(nn.Module):
    """SfMLearner's DispNetS (Zhou et al., CVPR 2017): a DispNet-style encoder-decoder, no batch norm.

    Encoder: seven stride-2 blocks of two convolutions, 32-64-128-256-512-512-512 channels, kernels
    7, 5, 3, 3, 3, 3, 3. Decoder: at each level an `upconv` (x2), the encoder's skip, and below 1/8 the
    upsampled coarser disparity, fused by an `iconv`; disparity predicted at 1/8, 1/4, 1/2 and 1.
    Without batch norm its output depends on one image only, which DDP training relies on.
    """

    ENCODER_CHANNELS = (32, 64, 128, 256, 512, 512, 512)
    KERNEL_SIZES = (7, 5, 3, 3, 3, 3, 3)
    DECODER_CHANNELS = (16, 32, 64, 128, 256, 512, 512)  # levels 1 (finest) .. 7

    def __init__(self):
        super().__init__()
        enc, dec = self.ENCODER_CHANNELS, self.DECODER_CHANNELS
        self.down = nn.ModuleList(
            _down(c_in, c_out, k) for c_in, c_out, k in zip((3,) + enc[:-1], enc, self.KERNEL_SIZES)
        )
        # Decoder modules are listed coarsest first, level 7 down to level 1 (full resolution).
        self.upconv = nn.ModuleList()
        self.iconv = nn.ModuleList()
        for level in range(7, 0, -1):
            c_up = dec[level - 1]
            c_skip = enc[level - 2] if level >= 2 else 0
            c_disp = 1 if level <= 3 else 0
            self.upconv.append(_upconv(enc[-1] if level == 7 else dec[level], c_up))
            self.iconv.append(_conv(c_up + c_skip + c_disp, c_up))
        # Disparity heads for levels 4, 3, 2, 1 (1/8 .. full resolution).
        self.predict_disp = nn.ModuleList(nn.Conv2d(dec[level - 1], 1, 3, padding=1) for level in range(4, 0, -1))
        xavier_init(self)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Disparity at four scales.

        Args:
            image: (B, 3, H, W) RGB in [0, 1], H, W >= 32.
        Returns:
            [disp_0, disp_1, disp_2, disp_3], finest first, disp_k (B, 1, ceil(H/2^k), ceil(W/2^k)),
            in (0.01, 10.01), inverse depth units.
        """
        return self.with_logits(image)[0]

    def with_logits(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`forward`'s disparities, and the logits x they are `disparity(x)` of (same shapes)."""
        check_image("image", image)
        x = normalize_image(image)
        features = []
        for down in self.down:
            x = down(x)
            features.append(x)
        # skips[level] is what the decoder's output at `level` must match: the input, then conv1..conv6.
        skips = [image] + features[:-1]
        disps: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for upconv, iconv, level in zip(self.upconv, self.iconv, range(7, 0, -1)):
            skip = skips[level - 1]
            parts = [crop_like(upconv(x), skip)]
            if level >= 2:
                parts.append(skip)
            if level <= 3:
                parts.append(crop_like(upsample_bilinear(disps[-1], (2 * disps[-1].shape[-2], 2 * disps[-1].shape[-1])), skip))
            x = iconv(torch.cat(parts, dim=1))
            if level <= 4:
                logits.append(self.predict_disp[4 - level](x))
                disps.append(disparity(logits[-1]))
        return disps[::-1], logits[::-1]


# --- ResNet-18 encoder + monodepth2 decoder --------------------------------------------------------


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # monodepth2 pads by reflection to keep zeros from darkening the borders; reflection needs two
    # pixels and the 1/32 map of a 32-pixel input has one, so we replicate the border instead.
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate"), nn.ELU(inplace=True))


class ResNetDepthNet(nn.Module):
    """A ResNet-18 encoder with monodepth2's depth decoder (Godard et al., ICCV 2019).

    Decoder: from 1/32, five times a conv block, nearest x2 upsampling, the encoder's skip and another
    conv block (16-32-64-128-256 channels, ELU); disparity predicted at 1/8, 1/4, 1/2 and 1.

    Args:
        pretrained_weights: an optional safetensors file of ResNet-18 weights with torchvision's
            names (e.g. ImageNet weights the user converted), loaded strictly into `self.encoder`.
            Nothing is ever downloaded.
    """

    DECODER_CHANNELS = (16, 32, 64, 128, 256)

    def __init__(self, pretrained_weights: Path | None = None):
        super().__init__()
        self.encoder = ResNet18Encoder()
        enc, dec = RESNET18_CHANNELS, self.DECODER_CHANNELS
        # Index i works at 1/2^i after its upsampling; listed coarsest first (i = 4 .. 0).
        self.upconv_0 = nn.ModuleList(_conv_block(enc[-1] if i == 4 else dec[i + 1], dec[i]) for i in range(4, -1, -1))
        self.upconv_1 = nn.ModuleList(
            _conv_block(dec[i] + (enc[i - 1] if i > 0 else 0), dec[i]) for i in range(4, -1, -1)
        )
        self.dispconv = nn.ModuleList(
            nn.Conv2d(dec[i], 1, 3, padding=1, padding_mode="replicate") for i in range(NUM_SCALES - 1, -1, -1)
        )
        xavier_init(self.upconv_0)
        xavier_init(self.upconv_1)
        xavier_init(self.dispconv)
        if pretrained_weights is not None:
            load_resnet18_weights(self.encoder, pretrained_weights)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Disparity at four scales.

        Args:
            image: (B, 3, H, W) RGB in [0, 1], H, W >= 32. In training mode the batch norm needs more
                than one value per channel: B > 1 when H or W <= 32.
        Returns:
            [disp_0, disp_1, disp_2, disp_3], finest first, disp_k (B, 1, ceil(H/2^k), ceil(W/2^k)),
            in (0.01, 10.01), inverse depth units.
        """
        return self.with_logits(image)[0]

    def with_logits(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`forward`'s disparities, and the logits x they are `disparity(x)` of (same shapes)."""
        check_image("image", image)
        features = self.encoder(normalize_image(image))
        skips = [image] + features[:-1]
        x = features[-1]
        disps: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for upconv_0, upconv_1, i in zip(self.upconv_0, self.upconv_1, range(4, -1, -1)):
            x = crop_like(F.interpolate(upconv_0(x), scale_factor=2, mode="nearest"), skips[i])
            if i > 0:
                x = torch.cat([x, skips[i]], dim=1)
            x = upconv_1(x)
            if i < NUM_SCALES:
                logits.append(self.dispconv[NUM_SCALES - 1 - i](x))
                disps.append(disparity(logits[-1]))
        return disps[::-1], logits[::-1]


DEPTH_NETS = {"dispnet": DispNet, "resnet18": ResNetDepthNet}


def build_depth_net(name: str, pretrained_weights: Path | None = None) -> nn.Module:
    """The depth network the configuration names (`model.depth`).

    Args:
        name: `dispnet` or `resnet18`.
        pretrained_weights: optional safetensors ResNet-18 weights (torchvision names); `resnet18` only.
    Raises:
        MasksfmError: an unknown name, or weights for a net that takes none.
    """
    if name not in DEPTH_NETS:
        raise MasksfmError(f"model.depth: unknown depth network {name!r} (choose one of {', '.join(DEPTH_NETS)})")
    if name == "dispnet":
        if pretrained_weights is not None:
            raise MasksfmError(f"{pretrained_weights}: pretrained weights are for model.depth = resnet18, not dispnet")
        return DispNet()
    return ResNetDepthNet(pretrained_weights)
