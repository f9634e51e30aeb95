"""Analytic ray casting of the street's primitives: a ground plane, oriented boxes, vertical cylinders, spheres.

World frame: x right across the street, y down, z along the street (the camera frame of a camera
looking down the street, docs/design.md §2); the road surface is the plane y = 0.

All rays of one cast share an origin (a camera centre) and come as directions (3, N); a hit is the
smallest t > 0 with o + t·d on a surface. With d = R K⁻¹ [u, v, 1] (camera-frame z = 1) t *is* the
z-depth, and with d = X − o a hit before t = 1 is something in front of X. Every primitive is
tested only against the rays inside its projected bounding box in the camera the rays leave from,
nearest primitives first, and only on rays whose current hit lies beyond its nearest point; the
many small ones are tested together in one vectorized call per batch. A cast costs about the
pixels each primitive covers, not pixels × primitives, and gives exactly what testing every ray
against every primitive gives (tested).

numpy in float64 throughout: elementwise operations only (no BLAS, no threaded reductions), so a
seed gives the same bytes on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

PLANE, BOX, CYLINDER, SPHERE = range(4)

# Hits closer than this (in t) are ignored; rays start at a camera centre, never on a surface.
T_MIN = 1e-9
# Corners closer than this (metres along the optical axis) cannot be projected for culling.
NEAR = 1e-2


@dataclass(frozen=True)
class Stripe:
    """A painted line on a plane, along z: centre x and half width (metres); dashed when period > 0."""

    x: float
    half_width: float
    period: float = 0.0
    dash: float = 0.0


@dataclass(frozen=True)
class Material:
    """How a primitive looks.

    Attributes:
        texture: texture id (textures.ASPHALT, ...).
        tint: RGB multiplier of the texture, linear, about [0, 1].
        scale: metres covered by one tile of the texture photo.
        offset: (u, v) shift of the texture, metres, so that equal materials do not look identical.
        stripes: painted lines (planes only).
    """

    texture: int
    tint: tuple[float, float, float]
    scale: float
    offset: tuple[float, float] = (0.0, 0.0)
    stripes: tuple[Stripe, ...] = ()


@dataclass(frozen=True)
class Primitive:
    """One surface of the scene.

    Attributes:
        kind: PLANE (horizontal, y = centre[1], facing up), BOX, CYLINDER (vertical axis) or SPHERE.
        centre: world position, metres (a box's / cylinder's centre, a sphere's centre).
        size: box: half extents along its local x, y, z; cylinder: (radius, half height, radius);
            sphere: (radius, radius, radius); plane: unused.
        yaw: box rotation about the vertical axis, radians (local x, z -> world by R_y(yaw)).
        velocity: metres per frame; non-zero for independently moving objects.
        material: its look.
    """

    kind: int
    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    material: Material
    yaw: float = 0.0
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def moving(self) -> bool:
        return any(v != 0.0 for v in self.velocity)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounding box (lo, hi), each (3,); infinite for a plane."""
        c, s = np.asarray(self.centre, dtype=np.float64), np.asarray(self.size, dtype=np.float64)
        if self.kind == PLANE:
            return np.full(3, -np.inf), np.full(3, np.inf)
        if self.kind == BOX:
            cos, sin = abs(np.cos(self.yaw)), abs(np.sin(self.yaw))
            s = np.array([cos * s[0] + sin * s[2], s[1], sin * s[0] + cos * s[2]])
        return c - s, c + s


@dataclass(frozen=True, eq=False)
class Scene:
    """The primitives at one instant, with their parameters stacked into arrays for vectorized work.

    `at(frame)` gives the scene at another frame: moving primitives shifted by velocity × frames.

    Attributes (P primitives):
        primitives: the primitives; frame: the instant they describe.
        kind: (P,) int; centre: (3, P); size: (3, P); yaw, cos, sin: (P,); velocity: (3, P) metres per frame;
        lo, hi: (P, 3) world bounding boxes (±inf for planes); moving: (P,) bool;
        texture: (P,) int; tint: (3, P); scale: (P,); offset: (2, P) (see Material).
    """

    primitives: tuple[Primitive, ...]
    frame: int = 0
    kind: np.ndarray = field(init=False, repr=False)
    centre: np.ndarray = field(init=False, repr=False)
    size: np.ndarray = field(init=False, repr=False)
    yaw: np.ndarray = field(init=False, repr=False)
    cos: np.ndarray = field(init=False, repr=False)
    sin: np.ndarray = field(init=False, repr=False)
    velocity: np.ndarray = field(init=False, repr=False)
    lo: np.ndarray = field(init=False, repr=False)
    hi: np.ndarray = field(init=False, repr=False)
    moving: np.ndarray = field(init=False, repr=False)
    texture: np.ndarray = field(init=False, repr=False)
    tint: np.ndarray = field(init=False, repr=False)
    scale: np.ndarray = field(init=False, repr=False)
    offset: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        prims = self.primitives
        bounds = [p.bounds() for p in prims]
        materials = [p.material for p in prims]
        arrays = {
            "kind": np.array([p.kind for p in prims], dtype=np.int64),
            "centre": np.array([p.centre for p in prims], dtype=np.float64).reshape(-1, 3).T.copy(),
            "size": np.array([p.size for p in prims], dtype=np.float64).reshape(-1, 3).T.copy(),
            "yaw": np.array([p.yaw for p in prims], dtype=np.float64),
            "cos": np.cos(np.array([p.yaw for p in prims], dtype=np.float64)),
            "sin": np.sin(np.array([p.yaw for p in prims], dtype=np.float64)),
            "velocity": np.array([p.velocity for p in prims], dtype=np.float64).reshape(-1, 3).T.copy(),
            "lo": np.array([b[0] for b in bounds]).reshape(-1, 3),
            "hi": np.array([b[1] for b in bounds]).reshape(-1, 3),
            "moving": np.array([p.moving for p in prims], dtype=bool),
            "texture": np.array([m.texture for m in materials], dtype=np.int64),
            "tint": np.array([m.tint for m in materials], dtype=np.float64).reshape(-1, 3).T.copy(),
            "scale": np.array([m.scale for m in materials], dtype=np.float64),
            "offset": np.array([m.offset for m in materials], dtype=np.float64).reshape(-1, 2).T.copy(),
        }
        for name, value in arrays.items():
            object.__setattr__(self, name, value)

    def at(self, frame: int) -> Scene:
        """The scene at `frame` (this scene's primitives are at `self.frame`)."""
        steps = frame - self.frame
        if steps == 0 or not self.moving.any():
            return self
        moved = tuple(
            replace(p, centre=tuple(c + v * steps for c, v in zip(p.centre, p.velocity))) if p.moving else p
            for p in self.primitives
        )
        # Only centres and bounds change: shift those arrays rather than rebuilding every one.
        out = object.__new__(Scene)
        for name in self.__dataclass_fields__:
            object.__setattr__(out, name, getattr(self, name))
        shift = self.velocity * steps
        object.__setattr__(out, "primitives", moved)
        object.__setattr__(out, "frame", frame)
        object.__setattr__(out, "centre", self.centre + shift)
        object.__setattr__(out, "lo", self.lo + shift.T)
        object.__setattr__(out, "hi", self.hi + shift.T)
        return out


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: pose (4, 4) camera-to-world, intrinsics K (3, 3), image size."""

    pose: np.ndarray
    K: np.ndarray
    height: int
    width: int

    @property
    def centre(self) -> np.ndarray:
        return self.pose[:3, 3]


def _rotate(R: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R @ v for v (3, N), as explicit sums: a BLAS call could split work differently run to run."""
    return np.stack([R[i, 0] * v[0] + R[i, 1] * v[1] + R[i, 2] * v[2] for i in range(3)])


# --- intersections: t of the nearest hit with t > T_MIN, inf where the ray misses ---------------
# Each takes the ray origin relative to the primitive's centre, oc (3, M), directions d (3, M) and
# the primitive's parameters per ray, so that many rays against many primitives are one call.
# A direction component of exactly 0 divides to ±inf (or nan on a slab's very boundary, which then
# reads as a miss): callers silence those warnings on purpose.


def _hit_plane(oc: np.ndarray, d: np.ndarray, size: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    t = -oc[1] / d[1]
    return np.where(t > T_MIN, t, np.inf)


def _hit_box(oc: np.ndarray, d: np.ndarray, size: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # Slab method in the box's frame (rotated by -yaw about the vertical).
    local_o = (cos * oc[0] - sin * oc[2], oc[1], sin * oc[0] + cos * oc[2])
    local_d = (cos * d[0] - sin * d[2], d[1], sin * d[0] + cos * d[2])
    t_near = t_far = None
    for axis in range(3):
        inv = 1.0 / local_d[axis]
        t1 = (-size[axis] - local_o[axis]) * inv
        t2 = (size[axis] - local_o[axis]) * inv
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = near if t_near is None else np.maximum(t_near, near)
        t_far = far if t_far is None else np.minimum(t_far, far)
    return np.where((t_near <= t_far) & (t_near > T_MIN), t_near, np.inf)


def _hit_cylinder(oc: np.ndarray, d: np.ndarray, size: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    radius, half = size[0], size[1]
    a = d[0] ** 2 + d[2] ** 2
    b = d[0] * oc[0] + d[2] * oc[2]
    c = oc[0] ** 2 + oc[2] ** 2 - radius**2
    disc = b**2 - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    side = (disc >= 0) & (a > 0) & (t_side > T_MIN) & (np.abs(oc[1] + t_side * d[1]) <= half)
    best = np.where(side, t_side, np.inf)
    for y_cap in (-half, half):
        t = (y_cap - oc[1]) / d[1]
        inside = (oc[0] + t * d[0]) ** 2 + (oc[2] + t * d[2]) ** 2 <= radius**2
        best = np.where(inside & (t > T_MIN) & (t < best), t, best)
    return best


def _hit_sphere(oc: np.ndarray, d: np.ndarray, size: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    a = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
    c = oc[0] ** 2 + oc[1] ** 2 + oc[2] ** 2 - size[0] ** 2
    disc = b**2 - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (t > T_MIN), t, np.inf)


_HIT = {PLANE: _hit_plane, BOX: _hit_box, CYLINDER: _hit_cylinder, SPHERE: _hit_sphere}


def _columns(a: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """The components a[c][index] of a (C, N) array: 1-D gathers are much faster than a[:, index]."""
    return tuple(row[index] for row in a)


def _hits(scene: Scene, prims: np.ndarray, origin: np.ndarray, directions: tuple) -> np.ndarray:
    """t of ray i against primitive prims[i], for directions (3 components of M) from one origin; inf = miss."""
    t = np.full(prims.size, np.inf)
    kinds = scene.kind[prims]
    for kind, hit in _HIT.items():
        m = np.flatnonzero(kinds == kind)
        if m.size:
            k = prims[m]
            oc = tuple(o - c for o, c in zip(origin, _columns(scene.centre, k)))
            t[m] = hit(oc, tuple(d[m] for d in directions), _columns(scene.size, k), scene.cos[k], scene.sin[k])
    return t


def intersect(p: Primitive, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Nearest hit of rays with one primitive, no culling.

    Args:
        p: the primitive.
        origin: (3,) the rays' common origin, world metres.
        directions: (3, N) ray directions.
    Returns:
        (N,) t of the nearest hit with t > T_MIN, inf where the ray misses.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _hits(Scene((p,)), np.zeros(directions.shape[1], dtype=np.int64),
                     np.asarray(origin, dtype=np.float64), tuple(directions))


# --- culling -----------------------------------------------------------------------------------

_CORNERS = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(8, 3)
# The 12 edges of a box, as pairs of corner indices (corners differing in one coordinate).
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if np.sum(_CORNERS[a] != _CORNERS[b]) == 1])


def _screen_boxes(scene: Scene, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per primitive: can it be seen, must every ray test it, its pixel box and its nearest depth.

    The bounding box is clipped to the near plane before it is projected (the corners in front,
    and where its edges cross the plane), so a long sidewalk reaching behind the camera still
    gets a tight pixel box.

    Returns:
        candidate: (P,) bool, some part is in front of the camera and inside the image;
        everywhere: (P,) bool, unbounded (a plane): every ray tests it;
        box: (P, 4) umin, umax, vmin, vmax, pixels;
        z_near: (P,) smallest camera z of the (clipped) bounding box, metres.
    """
    finite = np.all(np.isfinite(scene.lo), axis=1)
    lo = np.where(finite[:, None], scene.lo, 0.0)
    hi = np.where(finite[:, None], scene.hi, 0.0)
    points = lo[:, None, :] + _CORNERS[None] * (hi - lo)[:, None, :]  # (P, 8, 3)
    R, C = camera.pose[:3, :3], camera.pose[:3, 3]
    rel = points - C
    cam = rel[..., 0:1] * R[0] + rel[..., 1:2] * R[1] + rel[..., 2:3] * R[2]  # Rᵀ (X − C)
    z = cam[..., 2]
    a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]  # (P, 12, 3)
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - NEAR) * (zb - NEAR) < 0
    cut = a + ((NEAR - za) / np.where(crosses, zb - za, 1.0))[..., None] * (b - a)
    hull = np.concatenate([cam, cut], axis=1)  # (P, 20, 3)
    keep = np.concatenate([z >= NEAR, crosses], axis=1)
    zc = np.maximum(hull[..., 2], NEAR)
    K = camera.K
    u = K[0, 0] * hull[..., 0] / zc + K[0, 1] * hull[..., 1] / zc + K[0, 2]
    v = K[1, 1] * hull[..., 1] / zc + K[1, 2]
    box = np.stack([np.where(keep, u, np.inf).min(1), np.where(keep, u, -np.inf).max(1),
                    np.where(keep, v, np.inf).min(1), np.where(keep, v, -np.inf).max(1)], axis=1)
    z_near = np.where(keep, hull[..., 2], np.inf).min(1)
    inside = (box[:, 1] >= -1) & (box[:, 0] <= camera.width) & (box[:, 3] >= -1) & (box[:, 2] <= camera.height)
    candidate = ~finite | (np.any(keep, axis=1) & inside)
    return candidate, ~finite, box, np.where(finite, z_near, 0.0)


def _bucket(pixels: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort rays by the pixel cell they cross (row-major), so that a pixel box is a few contiguous runs.

    Returns:
        order: (N,) ray indices sorted by cell;
        first: (H·W + 1,) where each cell's rays start in `order`;
        table: (H + 1, W + 1) summed-area table of rays per cell (rays in a box in four lookups).
    """
    h, w = camera.height, camera.width
    # Rays just outside the image (sub-pixel samples of border pixels) join the border cells; the
    # one-cell margin of a pixel box still covers them.
    row = np.clip(np.floor(pixels[1]), 0, h - 1).astype(np.int64)
    key = row * w + np.clip(np.floor(pixels[0]), 0, w - 1).astype(np.int64)
    order = np.argsort(key, kind="stable")
    count = np.bincount(key, minlength=h * w)
    first = np.zeros(h * w + 1, dtype=np.int64)
    np.cumsum(count, out=first[1:])
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = count.reshape(h, w).cumsum(0).cumsum(1)
    return order, first, table


def _cells(box: np.ndarray, camera: Camera) -> tuple[np.ndarray, ...]:
    """Pixel boxes (P, 4) to inclusive cell ranges c0, c1, r0, r1, with one cell of margin for
    round-off in the projected corners, clipped to the image (c0 > c1 or r0 > r1: empty)."""
    w, h = camera.width, camera.height
    return (np.clip(np.floor(box[:, 0]) - 1, 0, w - 1).astype(np.int64),
            np.clip(np.floor(box[:, 1]) + 1, -1, w - 1).astype(np.int64),
            np.clip(np.floor(box[:, 2]) - 1, 0, h - 1).astype(np.int64),
            np.clip(np.floor(box[:, 3]) + 1, -1, h - 1).astype(np.int64))


def _pairs_in_boxes(order: np.ndarray, first: np.ndarray, prims: np.ndarray, cells: tuple,
                    camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(ray, primitive) pairs: every ray whose pixel cell lies in a primitive's cell range.

    The runs of rays (one per box row) are expanded with repeat/arange, without a Python loop.

    Returns:
        rays, owners: (M,) ray indices and the primitive (from `prims`) each is paired with.
    """
    w = camera.width
    c0, c1, r0, r1 = (c[prims] for c in cells)
    rows = np.where((c0 <= c1) & (r0 <= r1), r1 - r0 + 1, 0)
    run = np.repeat(np.arange(prims.size), rows)
    row = r0[run] + np.arange(run.size) - np.repeat(np.cumsum(rows) - rows, rows)
    starts, ends = first[row * w + c0[run]], first[row * w + c1[run] + 1]
    lengths = ends - starts
    shift = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return order[shift + np.arange(shift.size)], np.repeat(prims[run], lengths)


# A primitive with more rays in its pixel box than this is cast on its own (the work on its rays
# dwarfs the per-call overhead, and it culls the rays of everything behind it); the others are
# cast together, up to BATCH at a time, after the large ones.
LARGE = 4096
BATCH = 256


def cast(scene: Scene, camera: Camera, directions: np.ndarray, pixels: np.ndarray,
         t_max: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays leaving the camera centre.

    Args:
        scene: the primitives.
        camera: where the rays start (its centre) and the image used to cull primitives.
        directions: (3, N) world ray directions (not necessarily unit), all in front of the camera.
        pixels: (2, N) (u, v) where each ray crosses the camera's image, within half a pixel of
            [0, W−1] × [0, H−1].
        t_max: only hits with t < t_max count (1 − ε for "anything in front of the point at t = 1").
    Returns:
        t: (N,) ray parameter of the nearest hit, `t_max` where nothing is hit before it;
        index: (N,) int64 index of the primitive hit, −1 where nothing is (on an exact tie
            between two surfaces, one of them, the same on every run).
    """
    n = directions.shape[1]
    t_best = np.full(n, float(t_max))
    index = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return t_best, index
    order, first, table = _bucket(pixels, camera)
    origin = camera.centre
    # Camera-frame z of each direction: a hit at t lies at depth t · z_dir.
    z_dir = _rotate(camera.pose[:3, :3].T, directions)[2]
    candidate, everywhere, box, z_near = _screen_boxes(scene, camera)
    ks = np.flatnonzero(candidate)
    ks = ks[np.argsort(z_near[ks], kind="stable")]
    cells = _cells(box, camera)
    c0, c1, r0, r1 = (c[ks] for c in cells)
    c1, r1 = np.maximum(c1, c0 - 1), np.maximum(r1, r0 - 1)  # empty ranges count 0
    in_box = table[r1 + 1, c1 + 1] - table[r0, c1 + 1] - table[r1 + 1, c0] + table[r0, c0]
    large = everywhere[ks] | (in_box > LARGE)
    small = ks[~large]
    batches = [ks[large][i:i + 1] for i in range(int(large.sum()))]
    batches += [small[i:i + BATCH] for i in range(0, small.size, BATCH)]
    none = len(scene.primitives)
    with np.errstate(divide="ignore", invalid="ignore"):
        for batch in batches:
            if everywhere[batch[0]]:
                rays, owners = np.arange(n), np.full(n, batch[0])
            else:
                rays, owners = _pairs_in_boxes(order, first, batch, cells, camera)
            keep = t_best[rays] * z_dir[rays] > z_near[owners]
            rays, owners = rays[keep], owners[keep]
            if batch.size == 1:
                # One primitive: its parameters are scalars and each ray occurs once.
                k = batch[0]
                oc = origin - scene.centre[:, k]
                t = _HIT[scene.kind[k]](oc, _columns(directions, rays), scene.size[:, k], scene.cos[k], scene.sin[k])
                nearer = t < t_best[rays]
                t_best[rays[nearer]] = t[nearer]
                index[rays[nearer]] = k
                continue
            t = _hits(scene, owners, origin, _columns(directions, rays))
            nearer = t < t_best[rays]
            rays, owners, t = rays[nearer], owners[nearer], t[nearer]
            # Nearest per ray, then the lowest primitive index among exact ties: ufunc.at reduces
            # in a fixed order, so the result does not depend on how pairs were generated.
            np.minimum.at(t_best, rays, t)
            win = t == t_best[rays]
            index[rays] = none
            np.minimum.at(index, rays[win], owners[win])
    return t_best, index


# --- surface attributes of hits -----------------------------------------------------------------


def surfaces(scene: Scene, index: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normals and texture coordinates of points on the scene's primitives.

    Texture coordinates are anchored to the primitive (to the world for a plane), so a surface
    point keeps its texture from frame to frame, and a moving car carries its texture along.

    Args:
        scene: the scene.
        index: (N,) the primitive each point lies on.
        points: (3, N) world points on those surfaces, metres.
    Returns:
        normal: (3, N) unit outward normals, world;
        uv: (2, N) texture coordinates, metres.
    """
    n = index.size
    kind = scene.kind[index]
    # Component by component: 1-D gathers and arithmetic are several times faster than (3, N) fancy indexing.
    qx, qy, qz = (points[a] - scene.centre[a][index] for a in range(3))
    normal, uv = np.zeros((3, n)), np.empty((2, n))

    m = kind == PLANE
    normal[1, m] = -1.0
    uv[0, m], uv[1, m] = qx[m], qz[m]

    m = np.flatnonzero(kind == BOX)
    k = index[m]
    cos, sin = scene.cos[k], scene.sin[k]
    x, y, z = qx[m], qy[m], qz[m]
    lx, lz = cos * x - sin * z, sin * x + cos * z
    # The face a point lies on is the one it is nearest to, in metres.
    gx, gy, gz = scene.size[0][k] - np.abs(lx), scene.size[1][k] - np.abs(y), scene.size[2][k] - np.abs(lz)
    on_x = (gx <= gy) & (gx <= gz)
    on_y = ~on_x & (gy <= gz)
    on_z = ~on_x & ~on_y
    nx, ny, nz = np.where(on_x, np.sign(lx), 0.0), np.where(on_y, np.sign(y), 0.0), np.where(on_z, np.sign(lz), 0.0)
    normal[0, m], normal[1, m], normal[2, m] = cos * nx + sin * nz, ny, -sin * nx + cos * nz
    uv[0, m] = np.where(on_x, lz, lx)
    uv[1, m] = np.where(on_y, lz, y)

    m = kind == SPHERE
    radius = scene.size[0][index[m]]
    normal[0, m], normal[1, m], normal[2, m] = qx[m] / radius, qy[m] / radius, qz[m] / radius
    uv[0, m], uv[1, m] = radius * np.arctan2(qx[m], qz[m]), qy[m]

    m = np.flatnonzero(kind == CYLINDER)
    x, y, z = qx[m], qy[m], qz[m]
    radius, half = scene.size[0][index[m]], scene.size[1][index[m]]
    radial = np.sqrt(x**2 + z**2)
    cap = np.abs(np.abs(y) - half) < np.abs(radial - radius)
    safe = np.maximum(radial, 1e-12)
    normal[0, m] = np.where(cap, 0.0, x / safe)
    normal[1, m] = np.where(cap, np.sign(y), 0.0)
    normal[2, m] = np.where(cap, 0.0, z / safe)
    uv[0, m] = np.where(cap, x, radius * np.arctan2(x, z))
    uv[1, m] = np.where(cap, z, y)
    return normal, uv
