"""Photographic textures for the synthetic street, pre-filtered so that distant surfaces do not shimmer.

Only images whose files ship inside the installed scikit-image are used (read from its package
folder, so nothing is ever fetched). Each greyscale photo is normalised to mean 1 and a chosen
contrast, mirrored into a seamless 2x2 tile, and stored as a box-filtered mip pyramid; a lookup is
trilinear (bilinear in the two levels around the pixel's footprint). Matching the blur to the
footprint is what keeps photometric matching between neighbouring frames working: a texture
sampled below its Nyquist rate aliases differently in every frame.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

# (file in skimage/data, relative contrast = standard deviation of the normalised texture).
TEXTURE_FILES = (
    ("gravel.png", 0.22),  # ASPHALT
    ("brick.png", 0.28),  # BRICK
    ("grass.png", 0.30),  # GRASS
    ("moon.png", 0.18),  # STUCCO (plaster, concrete, car paint at a large scale)
)
ASPHALT, BRICK, GRASS, STUCCO = range(len(TEXTURE_FILES))

# Texels along one side of a (mirrored) texture tile: the 512 px photos mirrored to 1024.
RESOLUTION = 1024


def _data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _load(name: str, contrast: float) -> np.ndarray:
    path = _data_dir() / name
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L").resize((RESOLUTION // 2, RESOLUTION // 2), Image.BOX), dtype=np.float64)
    normalised = 1.0 + contrast * (grey - grey.mean()) / max(grey.std(), 1e-6)
    tile = np.clip(normalised, 0.2, 1.8)
    # Mirroring makes the tile periodic without a seam, so wrap-around lookups stay continuous.
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
    return np.concatenate([tile, tile[::-1]], axis=0)


class TextureAtlas(NamedTuple):
    """All textures' mip levels in one flat array, so a lookup is one vectorized gather.

    Attributes:
        texels: (M,) float32, every level of every texture, rows concatenated.
        offsets: (T, L) int64, where level l of texture t starts in `texels`.
        levels: L, the number of mip levels (level l is RESOLUTION >> l texels wide).
    """

    texels: np.ndarray
    offsets: np.ndarray
    levels: int


@lru_cache(maxsize=1)
def texture_atlas() -> TextureAtlas:
    """Build (once per process) the mip pyramids of TEXTURE_FILES."""
    levels = int(np.log2(RESOLUTION)) + 1
    chunks, offsets, start = [], np.zeros((len(TEXTURE_FILES), levels), dtype=np.int64), 0
    for t, (name, contrast) in enumerate(TEXTURE_FILES):
        level = _load(name, contrast)
        for l in range(levels):
            offsets[t, l] = start
            chunks.append(level.astype(np.float32).ravel())
            start += level.size
            if level.shape[0] > 1:
                level = 0.25 * (level[0::2, 0::2] + level[1::2, 0::2] + level[0::2, 1::2] + level[1::2, 1::2])
    return TextureAtlas(np.concatenate(chunks), offsets, levels)


def _bilinear(atlas: TextureAtlas, texture: np.ndarray, level: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup at one integer level per sample; x, y in level-0 texel units."""
    size = RESOLUTION >> level
    scale = 1.0 / (1 << level)
    # Texel centres sit at half-integers in these units (texel k covers [k, k+1)).
    xs, ys = x * scale - 0.5, y * scale - 0.5
    x0, y0 = np.floor(xs), np.floor(ys)
    fx, fy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x0, x1 = np.mod(x0, size), np.mod(x0 + 1, size)
    y0, y1 = np.mod(y0, size), np.mod(y0 + 1, size)
    base = atlas.offsets[texture, level]
    t = atlas.texels
    top = t[base + y0 * size + x0] * (1 - fx) + t[base + y0 * size + x1] * fx
    bottom = t[base + y1 * size + x0] * (1 - fx) + t[base + y1 * size + x1] * fx
    return top * (1 - fy) + bottom * fy


def sample(texture: np.ndarray, u: np.ndarray, v: np.ndarray, lod: np.ndarray) -> np.ndarray:
    """Trilinear texture lookup.

    Args:
        texture: (N,) texture ids (ASPHALT, BRICK, ...).
        u, v: (N,) coordinates in tiles of the unmirrored photo (1 tile = RESOLUTION / 2 texels).
        lod: (N,) level of detail, log2 of the pixel footprint in level-0 texels.
    Returns:
        (N,) float32 texture values, mean about 1.
    """
    atlas = texture_atlas()
    lod = np.clip(lod, 0.0, atlas.levels - 1.0)
    l0 = np.minimum(np.floor(lod).astype(np.int64), atlas.levels - 1)
    l1 = np.minimum(l0 + 1, atlas.levels - 1)
    frac = (lod - l0).astype(np.float32)
    x, y = u * (RESOLUTION // 2), v * (RESOLUTION // 2)
    return _bilinear(atlas, texture, l0, x, y) * (1 - frac) + _bilinear(atlas, texture, l1, x, y) * frac
