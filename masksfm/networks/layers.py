"""What the depth and pose nets share: the input check and normalisation, bilinear upsampling,
cropping after an upsampling, SfMLearner's initialisation, the number of scales."""

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


def _interpolation_matrix(size_out: int, size_in: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size_out, size_in) weights of 1-D linear interpolation, align_corners=False (`F.interpolate`'s)."""
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * size_in / size_out - 0.5).clamp(min=0)
    left = source.floor().long().clamp(max=size_in - 1)
    right = (left + 1).clamp(max=size_in - 1)
    weight_right = source - left
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, left), 1 - weight_right, accumulate=True)
    matrix.index_put_((rows, right), weight_right, accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)` as two matrix products, A_h · x · A_wᵀ.

    The same values to float rounding; written out because on the CPU the backward of PyTorch's
    `upsample_bilinear2d` is 3-8x slower than the two products' for the disparity maps of a training
    step (12 x 1 x 128 x 416 from 1/2, 1/4, 1/8: 26 / 23 / 25 ms against 7 / 4 / 3 ms forward + backward,
    one thread; docs/results.md).

    Args:
        x: (..., h, w).
        size: (H, W), the output size.
    Returns:
        (..., H, W).
    """
    rows = _interpolation_matrix(size[0], x.shape[-2], x.device, x.dtype)
    columns = _interpolation_matrix(size[1], x.shape[-1], x.device, x.dtype)
    return rows @ x @ columns.transpose(0, 1)


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
