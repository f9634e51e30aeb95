"""ResNet-18 (He et al., CVPR 2016) as a depth encoder, in plain torch, with torchvision's parameter names.

The module and parameter names are exactly those of torchvision's `resnet18` state dict (`conv1.weight`,
`bn1.running_mean`, `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ...), so that a user can
convert torchvision's ImageNet weights to safetensors on their own machine and hand us the file. We never
download weights and never unpickle a file we are given.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from masksfm.checkpoints import refuse_pickle
from masksfm.errors import MasksfmError

# Channels of the five feature maps the encoder returns, at strides 2, 4, 8, 16, 32.
RESNET18_CHANNELS = (64, 64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's `BasicBlock`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _layer(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels))


class ResNet18Encoder(nn.Module):
    """ResNet-18 without its classifier: five feature maps for a U-Net decoder.

    Every stride-2 layer pads so that a side of n pixels becomes ceil(n / 2), with output pixel i over
    input pixel 2i; a decoder that upsamples x2 and crops to the skip's size stays aligned at any size.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        # in_channels > 3: stacked frames (monodepth2's pose encoder takes a pair, 6 channels).
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)
        # torchvision's initialisation, so that training from scratch behaves like torchvision's resnet18.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of a normalised image.

        Args:
            x: (B, in_channels, H, W) normalised image(s).
        Returns:
            Five feature maps, (B, C_k, ceil(H / 2^(k+1)), ceil(W / 2^(k+1))) for k = 0..4, with
            C_k = 64, 64, 128, 256, 512.
        """
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


def load_resnet18_weights(encoder: ResNet18Encoder, path: Path) -> None:
    """Load a user's ResNet-18 weights (torchvision names, safetensors) into `encoder`, in place.

    Strict: every encoder key must be in the file with the right shape, and the file may hold no other
    key except torchvision's classifier `fc.*`, which the encoder drops. `num_batches_tracked` may be
    absent (some converters leave these counters out; eval and the default BN momentum never read them).

    Raises:
        MasksfmError: the file is missing, not safetensors, or its keys / shapes / values do not fit,
            naming the file and the first offending key.
    """
    path = Path(path)
    refuse_pickle(path, "ResNet-18 weights file")
    try:
        # safetensors parses a JSON header and raw buffers: nothing in the file is executed.
        state = load_file(path)
    except FileNotFoundError:
        raise MasksfmError(f"{path}: missing ResNet-18 weights file") from None
    except (SafetensorError, OSError) as error:
        raise MasksfmError(f"{path}: not a safetensors file ({error})") from None
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    expected = encoder.state_dict()
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise MasksfmError(
            f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); expected torchvision "
            "resnet18 names such as 'conv1.weight', 'layer1.0.conv1.weight'"
        )
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    if missing:
        raise MasksfmError(f"{path}: missing key {missing[0]!r} ({len(missing)} in all) of a torchvision resnet18")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise MasksfmError(f"{path}: {key!r} has shape {tuple(value.shape)}, resnet18 needs {tuple(expected[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise MasksfmError(f"{path}: {key!r} holds values that are not finite")
    encoder.load_state_dict(state, strict=False)
