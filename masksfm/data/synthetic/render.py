"""Render a view of a street scene, and the exact visibility of its points in another view.

Depth, the points and the moving mask come from the ray through each pixel centre and are never
filtered. Only colour is anti-aliased: textures are pre-filtered (mip levels matched to each
pixel's footprint), paint stripes box-filtered, silhouettes supersampled, and the image goes
through a slight lens blur. Shading is Lambertian with a fixed sun and ambient light: it depends
on the surface, not the viewpoint, as brightness constancy assumes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from masksfm.data.synthetic.raycast import PLANE, Camera, Scene, Stripe, _rotate, cast, surfaces
from masksfm.data.synthetic.textures import RESOLUTION, sample

# Sun direction (unit, towards the sun; y is down) and the light mix: mild, so that texture
# rather than shading dominates, as on an overcast-to-sunny street.
SUN = np.array([0.35, -1.0, -0.45]) / np.linalg.norm([0.35, -1.0, -0.45])
AMBIENT, DIFFUSE = 0.62, 0.38
PAINT = np.array([0.92, 0.92, 0.88])
SKY_HORIZON = np.array([0.80, 0.85, 0.90])
SKY_ZENITH = np.array([0.38, 0.56, 0.85])
# A point counts as hidden from another camera when something is hit before this fraction of the way
# to it (1e-4 = 5 mm at 50 m): far below any gap in the scene, far above float64 round-off.
VISIBILITY_EPS = 1e-4


class View(NamedTuple):
    """A rendered frame.

    Attributes:
        rgb: (H, W, 3) uint8.
        depth: (H, W) float32 z-depth, metres; 0 on sky (no hit).
        points: (3, H, W) float64 world point seen at each pixel; nan on sky.
        moving: (H, W) bool, True on independently moving objects.
        primitive: (H, W) int64 index of the scene primitive seen at each pixel; −1 on sky.
    """

    rgb: np.ndarray
    depth: np.ndarray
    points: np.ndarray
    moving: np.ndarray
    primitive: np.ndarray


def rays_through(camera: Camera, pixels: np.ndarray) -> np.ndarray:
    """World directions R K⁻¹ [u, v, 1] of rays through pixels (2, N); camera-frame z = 1, so t = z-depth."""
    K = camera.K
    y = (pixels[1] - K[1, 2]) / K[1, 1]
    x = (pixels[0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return _rotate(camera.pose[:3, :3], np.stack([x, y, np.ones_like(x)]))


def pixel_grid(camera: Camera) -> np.ndarray:
    """(u, v) of every pixel centre, row-major, (2, H·W)."""
    h, w = camera.height, camera.width
    return np.stack([np.tile(np.arange(w, dtype=np.float64), h), np.repeat(np.arange(h, dtype=np.float64), w)])


def _stripe_coverage(x: np.ndarray, z: np.ndarray, sx: np.ndarray, sz: np.ndarray, stripe: Stripe) -> np.ndarray:
    """Fraction of a pixel footprint (sx by sz metres, centred at x, z) covered by a paint stripe.

    The exact box filter of the stripe: no shimmer however far away the line is.
    """
    def inside(a, b, lo, hi):  # length of [a, b] ∩ [lo, hi]
        return np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0.0, None)

    cover = inside(x - sx / 2, x + sx / 2, stripe.x - stripe.half_width, stripe.x + stripe.half_width) / sx
    if stripe.period > 0:
        def on(a):  # length of dash in [0, a]
            return np.floor(a / stripe.period) * stripe.dash + np.minimum(np.mod(a, stripe.period), stripe.dash)

        cover = cover * (on(z + sz / 2) - on(z - sz / 2)) / sz
    return cover


def _shade(scene: Scene, index: np.ndarray, points: np.ndarray, directions: np.ndarray, t: np.ndarray,
           focal: float) -> np.ndarray:
    """Linear RGB (3, N) of hits: texture × tint × Lambert light, plus paint stripes on planes.

    Args:
        scene: the scene.
        index: (N,) primitive hit by each ray (all ≥ 0).
        points: (3, N) world hit points; directions: (3, N) ray directions; t: (N,) z-depths.
        focal: the camera's focal length, pixels.
    """
    normal, uv = surfaces(scene, index, points)
    texture, scale = scene.texture[index], scene.scale[index]
    length = np.sqrt(directions[0] ** 2 + directions[1] ** 2 + directions[2] ** 2)
    cos = np.abs(normal[0] * directions[0] + normal[1] * directions[1] + normal[2] * directions[2]) / length
    cos = np.maximum(cos, 0.02)
    # Pixel footprint on the surface, metres: area-preserving (geometric mean of the across- and
    # along-slope sizes), a compromise between aliasing and blurring grazing surfaces. Half a
    # level coarser than the footprint: warping resamples the image again, and detail right at
    # the pixel's Nyquist limit does not survive that.
    across = t / focal
    lod = np.log2(np.maximum(across / np.sqrt(cos) * (RESOLUTION // 2) / scale, 1e-6)) + 0.5
    u = (uv[0] + scene.offset[0][index]) / scale
    v = (uv[1] + scene.offset[1][index]) / scale
    value = sample(texture, u, v, lod)
    light = AMBIENT + DIFFUSE * np.maximum(normal[0] * SUN[0] + normal[1] * SUN[1] + normal[2] * SUN[2], 0.0)
    shade = value * light
    rgb = np.stack([scene.tint[c][index] * shade for c in range(3)])
    for k in np.flatnonzero(scene.kind == PLANE):
        p = scene.primitives[k]
        if p.material.stripes:
            rays = np.flatnonzero(index == k)
            x, z, a = points[0, rays], points[2, rays], across[rays]
            cover = sum(_stripe_coverage(x, z, a, a / cos[rays], s) for s in p.material.stripes)
            cover = np.clip(cover, 0.0, 1.0)
            rgb[:, rays] = rgb[:, rays] * (1 - cover) + PAINT[:, None] * light[rays] * cover
    return rgb


def _sky(directions: np.ndarray) -> np.ndarray:
    """Linear RGB (3, N) of the sky: a function of direction only, as for anything at infinity."""
    up = -directions[1] / np.linalg.norm(directions, axis=0)
    mix = np.clip(up * 3.0, 0.0, 1.0)
    return SKY_HORIZON[:, None] * (1 - mix) + SKY_ZENITH[:, None] * mix


def _colour(scene: Scene, camera: Camera, directions: np.ndarray, t: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Linear RGB (3, N) of cast rays: shaded surfaces where they hit, sky where they miss."""
    hit = index >= 0
    rgb = np.empty((3, index.size))
    rgb[:, ~hit] = _sky(directions[:, ~hit])
    points = camera.centre[:, None] + t[hit] * directions[:, hit]
    focal = float(np.sqrt(camera.K[0, 0] * camera.K[1, 1]))
    rgb[:, hit] = _shade(scene, index[hit], points, directions[:, hit], t[hit], focal)
    return rgb


# Sub-pixel offsets of the 4 colour samples of a pixel on a silhouette (a 2x2 grid in the pixel).
SUBPIXELS = np.array([[-0.25, 0.25, -0.25, 0.25], [-0.25, -0.25, 0.25, 0.25]])


# The camera's point-spread function, pixels: real lenses are never sharper than a pixel, and the
# slight blur keeps resampling (warping) errors at edges well below the motion's photometric change.
LENS_SIGMA = 0.6


def _lens_blur(rgb: np.ndarray) -> np.ndarray:
    """A camera's point-spread function: a separable Gaussian of LENS_SIGMA pixels, edges replicated."""
    if LENS_SIGMA <= 0:
        return rgb
    taps = np.exp(-0.5 * (np.arange(-2, 3) / LENS_SIGMA) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (2, 2)
        padded = np.pad(rgb, pad, mode="edge")
        n = rgb.shape[axis]
        rgb = sum(tap * np.take(padded, np.arange(k, k + n), axis=axis) for k, tap in enumerate(taps))
    return rgb


def render_view(scene: Scene, camera: Camera) -> View:
    """Ray-cast one frame: colour, exact z-depth, the world points seen, and moving objects.

    Depth, points and the moving mask come from the ray through each pixel centre. Colour is
    that ray's, except on silhouettes (a neighbour sees another primitive), where it is the mean
    of 4 sub-pixel rays: a hard, aliased edge lands differently in every frame and would be
    photometric noise that no warp removes.

    Args:
        scene: the scene at this frame's instant.
        camera: pose (camera-to-world), K, image size.
    Returns:
        View(rgb, depth, points, moving, primitive).
    """
    h, w = camera.height, camera.width
    pixels = pixel_grid(camera)
    directions = rays_through(camera, pixels)
    t, index = cast(scene, camera, directions, pixels)
    hit = index >= 0
    points = np.full((3, h * w), np.nan)
    points[:, hit] = camera.centre[:, None] + t[hit] * directions[:, hit]

    grid = index.reshape(h, w)
    edge = np.zeros((h, w), dtype=bool)
    edge[:, 1:] |= grid[:, 1:] != grid[:, :-1]
    edge[:, :-1] |= grid[:, 1:] != grid[:, :-1]
    edge[1:] |= grid[1:] != grid[:-1]
    edge[:-1] |= grid[1:] != grid[:-1]
    inner, edge = np.flatnonzero(~edge), np.flatnonzero(edge)
    rgb = np.empty((3, h * w))
    rgb[:, inner] = _colour(scene, camera, directions[:, inner], t[inner], index[inner])
    if edge.size:
        sub = (pixels[:, edge][:, None, :] + SUBPIXELS[:, :, None]).reshape(2, -1)
        sub_dirs = rays_through(camera, sub)
        sub_t, sub_index = cast(scene, camera, sub_dirs, sub)
        rgb[:, edge] = _colour(scene, camera, sub_dirs, sub_t, sub_index).reshape(3, 4, -1).mean(axis=1)

    rgb = _lens_blur(rgb.reshape(3, h, w))
    rgb8 = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return View(
        rgb=np.ascontiguousarray(rgb8.reshape(3, h, w).transpose(1, 2, 0)),
        depth=np.where(hit, t, 0.0).astype(np.float32).reshape(h, w),
        points=points.reshape(3, h, w),
        moving=(hit & scene.moving[np.maximum(index, 0)]).reshape(h, w),
        primitive=index.reshape(h, w),
    )


def project_points(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (3, N) to the camera's pixels (2, N) and z-depths (N,), metres."""
    cam = _rotate(camera.pose[:3, :3].T, points - camera.centre[:, None])
    K = camera.K
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = cam[0] / cam[2], cam[1] / cam[2]
    return np.stack([K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]]), cam[2]


def visibility(scene: Scene, camera: Camera, points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Exact visibility of one frame's points in another camera, by ray casting from that camera.

    A point is visible when it projects inside the other image (pixel-centre bounds [0, W−1] ×
    [0, H−1], in front of the camera) and the ray from that camera's centre to it meets nothing
    before it. Pixels that are not `valid` (sky, moving objects: the point they see is elsewhere
    at the other instant) are 0.

    Args:
        scene: the scene at the other camera's instant (moving objects there occlude).
        camera: the other camera.
        points: (3, H, W) world points seen at each pixel of this frame, metres.
        valid: (H, W) bool, pixels to test.
    Returns:
        (H, W) uint8, 1 = visible in `camera`.
    """
    out = np.zeros(valid.shape, dtype=np.uint8)
    which = np.flatnonzero(valid)
    X = np.stack([points[c].ravel()[which] for c in range(3)])
    pixels, z = project_points(camera, X)
    u, v = pixels
    inside = np.flatnonzero((z > 0) & (u >= 0) & (u <= camera.width - 1) & (v >= 0) & (v <= camera.height - 1))
    # Directions X − C put X at t = 1: any hit before it is an occluder.
    rays = np.stack([X[c][inside] - camera.centre[c] for c in range(3)])
    _, index = cast(scene, camera, rays, np.stack([u[inside], v[inside]]), t_max=1.0 - VISIBILITY_EPS)
    out.ravel()[which[inside]] = index < 0
    return out
