"""A procedurally generated street and a drive down it (docs/design.md §5).

World frame as in `raycast`: x across the street (right), y down, z along the street; the road is
y = 0 and the street's centre line x = 0. Right-hand traffic: the camera drives in the lane at
x ≈ +lane/2, parked cars line both kerbs, then raised sidewalks with poles and trees near their
edges, then building facades of varying setback and height, and a taller row of buildings behind
(which fills alleys and the sky above low buildings, keeping sky well under half a frame).
"""

from __future__ import annotations

import numpy as np

from masksfm.data.synthetic.raycast import BOX, CYLINDER, PLANE, SPHERE, Material, Primitive, Scene, Stripe
from masksfm.data.synthetic.textures import ASPHALT, BRICK, GRASS, STUCCO

CAMERA_HEIGHT = 1.65  # metres above the road, KITTI's camera 2
SPEED_RANGE = (0.5, 1.5)  # metres per frame
LANE_WIDTH = 3.5
PARKING_WIDTH = 2.2
CURB_HEIGHT = 0.15

# KITTI's rectified camera 2 (2011_09_26), at its native 1242x375; scaled to the requested size.
KITTI_K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
KITTI_SIZE = (375, 1242)

# Linear RGB tints.
FACADE_TINTS = ((0.85, 0.55, 0.45), (0.95, 0.85, 0.7), (0.75, 0.75, 0.78), (0.9, 0.75, 0.55),
                (0.6, 0.5, 0.45), (0.8, 0.85, 0.75), (0.95, 0.9, 0.85))
CAR_TINTS = ((0.75, 0.1, 0.1), (0.1, 0.2, 0.6), (0.85, 0.85, 0.85), (0.15, 0.15, 0.15), (0.5, 0.5, 0.55),
             (0.8, 0.7, 0.2), (0.2, 0.45, 0.3))
GLASS = (0.12, 0.14, 0.18)


def kitti_intrinsics(height: int, width: int) -> np.ndarray:
    """KITTI camera 2's intrinsics scaled to a `height` x `width` image (docs/design.md §2 resizing rule).

    Returns:
        (3, 3) float64, pixels.
    """
    # Imported here: masksfm.geometry pulls in torch, which render workers otherwise never need.
    from masksfm.geometry import scale_intrinsics

    return scale_intrinsics(KITTI_K, width / KITTI_SIZE[1], height / KITTI_SIZE[0])


def _smooth_noise(rng: np.random.Generator, n: int, std: float, width: float = 4.0) -> np.ndarray:
    """Gaussian noise low-passed over about `width` samples, rescaled to standard deviation `std`."""
    pad = int(3 * width)
    raw = rng.normal(size=n + 2 * pad)
    taps = np.exp(-0.5 * (np.arange(-pad, pad + 1) / width) ** 2)
    smooth = np.convolve(raw, taps / taps.sum(), mode="valid")[:n]
    return std * smooth / max(smooth.std(), 1e-12) if n > 1 else np.zeros(n)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: heading `yaw` about y (positive turns right), then pitch about x, roll about z."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def make_trajectory(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A drive down the lane at x = +LANE_WIDTH/2: 0.5–1.5 m per frame, gentle yaw, small pitch/roll noise.

    The heading swings sinusoidally (amplitude 0.5–3°), which keeps the lateral wander under a
    metre; pitch and roll are smooth noise of 0.1–0.4° standard deviation, as a car's suspension.

    Returns:
        (frames, 4, 4) float64 camera-to-world poses in the street's world frame.
    """
    base = rng.uniform(0.6, 1.4)
    speed = np.clip(base + _smooth_noise(rng, frames, rng.uniform(0.02, 0.12)), *SPEED_RANGE)
    amplitude = np.radians(rng.uniform(0.5, 3.0))
    period = rng.uniform(25.0, 70.0)
    phase = rng.uniform(0, 2 * np.pi)
    yaw = amplitude * np.sin(2 * np.pi * np.arange(frames) / period + phase)
    pitch = _smooth_noise(rng, frames, np.radians(rng.uniform(0.1, 0.4)))
    roll = _smooth_noise(rng, frames, np.radians(rng.uniform(0.1, 0.4)))
    poses = np.tile(np.eye(4), (frames, 1, 1))
    position = np.array([LANE_WIDTH / 2, -CAMERA_HEIGHT, 0.0])
    for k in range(frames):
        poses[k, :3, :3] = _rotation(yaw[k], pitch[k], roll[k])
        poses[k, :3, 3] = position
        position = position + speed[k] * np.array([np.sin(yaw[k]), 0.0, np.cos(yaw[k])])
    return poses


def _box(centre, half, material, yaw=0.0, velocity=(0.0, 0.0, 0.0)) -> Primitive:
    return Primitive(BOX, tuple(map(float, centre)), tuple(map(float, half)), material, float(yaw),
                     tuple(map(float, velocity)))


def _material(rng, texture, tint, scale, stripes=()) -> Material:
    return Material(texture, tuple(map(float, tint)), float(scale), tuple(rng.uniform(0, 50, 2)), stripes)


def _car(rng: np.random.Generator, x: float, z: float, yaw: float = 0.0, velocity=(0.0, 0.0, 0.0)) -> list[Primitive]:
    """A car as two boxes (body and glazed cabin) standing on the road at (x, z), facing +z."""
    length, width = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.9)
    tint = np.asarray(CAR_TINTS[rng.integers(len(CAR_TINTS))]) * rng.uniform(0.85, 1.1)
    paint = _material(rng, STUCCO, tint, 6.0)
    glass = _material(rng, STUCCO, GLASS, 6.0)
    bottom, body_top, roof = 0.25, rng.uniform(0.9, 1.05), rng.uniform(1.35, 1.55)
    cabin = rng.uniform(0.45, 0.6) * length
    back = rng.uniform(-0.25, 0.0) * length
    cos, sin = np.cos(yaw), np.sin(yaw)
    return [
        _box((x, -(bottom + body_top) / 2, z), (width / 2, (body_top - bottom) / 2, length / 2), paint, yaw, velocity),
        _box((x + sin * back, -(body_top + roof) / 2, z + cos * back),
             (width / 2 - 0.08, (roof - body_top) / 2, cabin / 2), glass, yaw, velocity),
    ]


def _buildings(rng, side: int, x_front: float, z0: float, z1: float, back_row: bool) -> list[Primitive]:
    """Facades along one side between z0 and z1: widths, heights, setbacks and alleys vary."""
    out, z = [], z0
    while z < z1:
        width = rng.uniform(15, 40) if back_row else rng.uniform(6, 22)
        if not back_row and rng.random() < 0.2:
            z += rng.uniform(2.0, 5.0)  # an alley: the back row shows through
        height = rng.uniform(14, 32) if back_row else rng.uniform(6, 20)
        depth = rng.uniform(8, 15)
        setback = 0.0 if back_row or rng.random() < 0.5 else rng.uniform(0.5, 3.5)
        if rng.random() < 0.55:
            material = _material(rng, BRICK, FACADE_TINTS[rng.integers(len(FACADE_TINTS))], rng.uniform(1.0, 1.6))
        else:
            material = _material(rng, STUCCO, FACADE_TINTS[rng.integers(len(FACADE_TINTS))], rng.uniform(3.0, 6.0))
        x = side * (x_front + setback + depth / 2)
        out.append(_box((x, -height / 2, z + width / 2), (depth / 2, height / 2, width / 2), material))
        z += width
    return out


def make_scene(rng: np.random.Generator, length: float, moving_cars: int = 0, speed: float = 1.0) -> Scene:
    """A street `length` metres long (from z = −10) with everything on it.

    Args:
        rng: the scene's random generator.
        length: metres of street the camera drives, plus what it must see ahead.
        moving_cars: independently moving cars: one ahead in the camera's lane going a little
            faster than `speed`, the others oncoming in the other lane.
        speed: the camera's mean speed, metres per frame (so the car ahead stays ahead).
    Returns:
        The scene at frame 0.
    """
    road_half = LANE_WIDTH + PARKING_WIDTH
    sidewalk = rng.uniform(2.0, 4.0)
    x_facade = road_half + sidewalk
    z0, z1 = -10.0, length
    z_mid, z_half = (z0 + z1) / 2, (z1 - z0) / 2
    lines = (Stripe(0.0, 0.06, 6.0, 3.0), Stripe(LANE_WIDTH, 0.06), Stripe(-LANE_WIDTH, 0.06))
    prims = [Primitive(PLANE, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0),
                       _material(rng, ASPHALT, np.full(3, rng.uniform(0.3, 0.42)), rng.uniform(2.0, 3.5), lines))]
    paving = _material(rng, STUCCO, np.full(3, rng.uniform(0.6, 0.75)), rng.uniform(2.0, 4.0))
    verge = _material(rng, GRASS, (0.3, 0.5, 0.2), rng.uniform(1.0, 2.0))
    for side in (-1, 1):
        prims.append(_box((side * (road_half + sidewalk / 2), -CURB_HEIGHT / 2, z_mid),
                          (sidewalk / 2, CURB_HEIGHT / 2, z_half), paving))
        # Front yards of set-back buildings, and the ground of alleys, out to the back row.
        prims.append(_box((side * (x_facade + 12.0), -0.06, z_mid), (12.0, 0.06, z_half), verge))
        prims += _buildings(rng, side, x_facade, z0, z1, back_row=False)
        prims += _buildings(rng, side, x_facade + 22.0, z0, z1, back_row=True)
        # Parked cars along the kerb.
        z = z0 + rng.uniform(0, 6)
        while z < z1:
            if rng.random() < 0.55:
                prims += _car(rng, side * (road_half - 1.1 + rng.uniform(-0.1, 0.1)), z, rng.uniform(-0.03, 0.03))
            z += rng.uniform(5.5, 8.0)
        # Poles at the kerb side of the sidewalk, trees towards the facades: both occlude facades.
        z = z0 + rng.uniform(0, 20)
        while z < z1:
            radius, height = rng.uniform(0.05, 0.1), rng.uniform(4.0, 8.0)
            metal = _material(rng, STUCCO, np.full(3, rng.uniform(0.35, 0.6)), 2.0)
            prims.append(Primitive(CYLINDER, (side * (road_half + 0.4), -height / 2, z),
                                   (radius, height / 2, radius), metal))
            z += rng.uniform(15, 30)
        z = z0 + rng.uniform(0, 10)
        while z < z1:
            trunk_r, trunk_h, crown = rng.uniform(0.12, 0.2), rng.uniform(2.5, 3.8), rng.uniform(1.2, 2.0)
            x = side * (x_facade - rng.uniform(0.6, 1.0))
            bark = _material(rng, GRASS, (0.3, 0.22, 0.15), 1.0)
            leaves = _material(rng, GRASS, (0.2, 0.42, 0.15) * rng.uniform(0.8, 1.2, 3), rng.uniform(0.8, 1.4))
            prims.append(Primitive(CYLINDER, (x, -trunk_h / 2, z), (trunk_r, trunk_h / 2, trunk_r), bark))
            prims.append(Primitive(SPHERE, (x, -trunk_h - 0.6 * crown, z), (crown,) * 3, leaves))
            z += rng.uniform(8, 25)
    # The end of the street: a wide, tall block across it.
    end = _material(rng, STUCCO, FACADE_TINTS[rng.integers(len(FACADE_TINTS))], 5.0)
    height = rng.uniform(20, 35)
    prims.append(_box((0.0, -height / 2, z1 + 5.0), (x_facade + 40.0, height / 2, 5.0), end))
    # Moving cars alternate between the camera's lane (ahead, a little faster than the camera) and
    # the oncoming lane; cars of a lane share a speed and keep 15 m apart, so they never collide.
    ahead, oncoming = speed * rng.uniform(1.05, 1.3), -rng.uniform(0.5, 1.5)
    z_ahead, z_oncoming = rng.uniform(10, 20), rng.uniform(20, 60)
    for k in range(moving_cars):
        if k % 2 == 0:
            prims += _car(rng, LANE_WIDTH / 2, z_ahead + 15.0 * (k // 2), 0.0, velocity=(0.0, 0.0, ahead))
        else:
            prims += _car(rng, -LANE_WIDTH / 2, z_oncoming + 15.0 * (k // 2), np.pi, velocity=(0.0, 0.0, oncoming))
    return Scene(tuple(prims))
