"""What the depth and pose nets share: the input check and normalisation, cropping after an
upsampling, SfMLearner's initialisation, the number of scales."""

from __future__ import annotations

import torch
from torch import nn

# monodepth2's input normalisation, close to ImageNet's per-channel statistics, so that an ImageNet
# ResNet sees the inputs it was trained on; the other nets use it too, for one convention.
IMAGE_MEAN = 0.45
IMAGE_STD = 0.225
MIN_IMAGE_SIZE = 32
NUM_SCALES = 4


def check_image(name: str, image: torch.Tensor) -> None:
    """Raise a ValueError unless `image` is (B, 3, H, W) with H, W >= 32."""
    if image.dim() != 4 or image.shape[1] != 3 or min(image.shape[2], image.shape[3]) < MIN_IMAGE_SIZE:
        raise ValueError(f"{name} must have shape (B, 3, H, W) with H, W >= {MIN_IMAGE_SIZE}, got {tuple(image.shape)}")


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to the nets' input: (image − 0.45) / 0.225."""
    return (image - IMAGE_MEAN) / IMAGE_STD


def crop_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop `x` at the bottom and right to the spatial size of `ref` (upsampling x2 overshoots odd sizes)."""
    return x[..., : ref.shape[-2], : ref.shape[-1]]


def xavier_init(module: nn.Module) -> None:
    """SfMLearner's initialisation: xavier-uniform weights and zero biases for every (transposed) conv."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
