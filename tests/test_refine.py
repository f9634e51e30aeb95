"""Photometric pose refinement against exact ground truth: ray-cast street views with their true depth
and poses, and Middlebury's motorcycle stereo pair (scikit-image) with its true disparity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from masksfm.data.synthetic import Camera, kitti_intrinsics, make_scene, make_trajectory, render_view
from masksfm.geometry import (
    backproject,
    inverse_warp,
    invert_pose,
    pose_vec_to_mat,
    project,
    relative_pose,
    scale_intrinsics,
    transform_points,
    vehicle_chord,
    yaw_rotation,
)
from masksfm.refine import (
    ROBUST_SCALE,
    _gradients,
    _linearise,
    refine_pose,
    refine_relative_poses,
    refine_sequence,
    robust_cost_and_weight,
    se3_exp,
)

HEIGHT, WIDTH = 128, 416
# A perturbation of 5 cm and 0.5° (the rotation axis is oblique, so every angle moves).
PERTURBATION = [0.03, -0.02, 0.034, 0.005, -0.006, 0.004]


def pose_error(T: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: translation error (input units) and rotation error (degrees) of T against truth."""
    E = invert_pose(truth.double()) @ T.double()
    cos = ((E[:, 0, 0] + E[:, 1, 1] + E[:, 2, 2] - 1) / 2).clamp(-1, 1)
    return E[:, :3, 3].norm(dim=1).cpu().numpy(), np.degrees(torch.arccos(cos).cpu().numpy())


def perturb(T: torch.Tensor, vec=PERTURBATION) -> torch.Tensor:
    return pose_vec_to_mat(torch.tensor(np.asarray(vec)[None], dtype=T.dtype).expand(len(T), 6)) @ T


def image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def street():
    """Three consecutive frames of a rendered drive with their exact depth, poses and K, and a
    fourth view from frame 1's centre turned by 1° about an oblique axis (a pure rotation)."""
    rng = np.random.default_rng(1)
    poses = make_trajectory(rng, 3)
    scene = make_scene(rng, 200.0)
    K = kitti_intrinsics(HEIGHT, WIDTH)
    views = [render_view(scene.at(i), Camera(poses[i], K, HEIGHT, WIDTH)) for i in range(3)]
    turned = poses[1].copy()
    turn = pose_vec_to_mat(torch.tensor([[0, 0, 0, *(np.radians(1.0) * np.array([0.3, 0.9, 0.3]) / math.sqrt(0.99))]],
                                        dtype=torch.float64))[0].numpy()
    turned = turned @ turn
    rotated = render_view(scene.at(1), Camera(turned, K, HEIGHT, WIDTH))
    return {
        "images": torch.cat([image(v.rgb) for v in views]),
        "depth": torch.stack([torch.from_numpy(v.depth)[None] for v in views]),
        "poses": torch.from_numpy(poses),
        "K": torch.from_numpy(K).float(),
        "rotated": image(rotated.rgb),
        "turned": torch.from_numpy(turned),
    }


def pair(street, target: int = 1, source: int = 0):
    """(target, source, depth_t, K, T_true) of two frames of the street, batch of one."""
    T = torch.from_numpy(relative_pose(street["poses"][target].numpy(), street["poses"][source].numpy()))[None]
    return (street["images"][target:target + 1], street["images"][source:source + 1],
            street["depth"][target:target + 1], street["K"][None], T)


class TestSE3Exp:
    def test_small_and_large_angles_against_a_matrix_exponential(self):
        xi = torch.tensor([[0.3, -0.2, 1.0, 0.4, -0.7, 0.2], [0.1, 0.2, 0.3, 1e-6, 0, -2e-6], [1.0, 0, 0, 0, 0, 0]],
                          dtype=torch.float64)
        hat = torch.zeros(3, 4, 4, dtype=torch.float64)
        w, v = xi[:, 3:], xi[:, :3]
        hat[:, 0, 1], hat[:, 0, 2], hat[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
        hat[:, 1, 0], hat[:, 2, 0], hat[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
        hat[:, :3, 3] = v
        assert torch.allclose(se3_exp(xi), torch.linalg.matrix_exp(hat), atol=1e-12)


class TestJacobian:
    def test_against_finite_differences(self):
        """The analytic ∂r/∂δ (left perturbation, exp(δ)·T) against central differences of a smooth
        image function at the projected points: agreement to the image gradient's discretisation
        (second order: 0.7 % here, 0.2 % at half the frequencies)."""
        h, w = 24, 32

        def image(u, v):
            return 0.5 + 0.2 * torch.sin(0.17 * u + 0.05 * v) + 0.2 * torch.cos(0.12 * v - 0.08 * u)

        v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
        source = image(u, v)[None, None]
        depth = (4.0 + 0.05 * u + 0.03 * v)[None, None]
        K = torch.tensor([[[30.0, 0.5, 15.2], [0, 28.0, 11.7], [0, 0, 1]]], dtype=torch.float64)  # with skew
        T = pose_vec_to_mat(torch.tensor([[0.1, -0.05, 0.2, 0.02, -0.03, 0.01]], dtype=torch.float64))
        points = backproject(depth, K)
        r, valid, J = _linearise(T, points, depth > 0, torch.zeros_like(source), torch.cat([source, _gradients(source)], 1),
                                 K)

        def warp(delta):
            pixels, _ = project(transform_points(se3_exp(delta[None]) @ T, points), K)
            return pixels[0], image(pixels[0, 0], pixels[0, 1]).flatten()

        eps = 1e-6
        expected = torch.stack([(warp(e)[1] - warp(-e)[1]) / (2 * eps) for e in eps * torch.eye(6, dtype=torch.float64)],
                               dim=1)  # (N, 6)
        pixels = warp(torch.zeros(6, dtype=torch.float64))[0]
        # off the border, where the image gradient is one-sided
        inside = ((pixels[0] > 1) & (pixels[0] < w - 2) & (pixels[1] > 1) & (pixels[1] < h - 2)).flatten()
        keep = valid[0, 0] & inside
        assert keep.sum() > 500
        error = (J[0, 0][keep] - expected[keep]).norm(dim=0) / expected[keep].norm(dim=0)
        assert (error < 0.02).all(), error


class TestRefinePose:
    def test_smoke_and_checks(self, street):
        target, source, depth, K, T = pair(street)
        out = refine_pose(target, source, depth, K, T, iterations=1, levels=1)
        assert out.shape == (1, 4, 4) and out.dtype == T.dtype
        with pytest.raises(ValueError, match="depth_t must have shape"):
            refine_pose(target, source, depth[:, :, :-1], K, T)
        with pytest.raises(ValueError, match="robust"):
            refine_pose(target, source, depth, K, T, robust="l2")
        with pytest.raises(ValueError, match="channels"):
            refine_pose(target, source, depth, K, T, channels="hsv")

    def test_perturbed_pose_comes_back_to_the_truth(self, street):
        """5 cm and 0.5° off, with the true depth: the translation error drops over 5x, the rotation's over 3x."""
        target, source, depth, K, T = pair(street)
        start = perturb(T)
        t0, r0 = pose_error(start, T)
        t1, r1 = pose_error(refine_pose(target, source, depth, K, start), T)
        assert 0.04 < t0[0] < 0.06 and r0[0] == pytest.approx(0.5, abs=0.01)
        assert t1[0] < t0[0] / 5 and r1[0] < r0[0] / 3, (t1, r1)

    def test_true_pose_stays(self, street):
        """From the truth it moves by the cost's own bias only (the renderer's resampling), under 1 cm and 0.05°."""
        target, source, depth, K, T = pair(street, 2, 1)
        t1, r1 = pose_error(refine_pose(target, source, depth, K, T), T)
        assert t1[0] < 0.01 and r1[0] < 0.05, (t1, r1)

    def test_identical_frames(self, street):
        """A frame against itself: the identity stays (to float32 round-off in the warp), and a
        perturbed start comes back to it."""
        target, _, depth, K, _ = pair(street)
        eye = torch.eye(4, dtype=torch.float64)[None]
        assert torch.allclose(refine_pose(target, target, depth, K, eye), eye, atol=1e-5)
        t1, r1 = pose_error(refine_pose(target, target, depth, K, perturb(eye)), eye)
        assert t1[0] < 1e-4 and r1[0] < 1e-3, (t1, r1)

    def test_rotation_only(self, street):
        """The camera turned 1° on the spot: from the identity, the rotation is found and no translation."""
        target, _, depth, K, _ = pair(street)
        truth = relative_pose(street["poses"][1:2], street["turned"][None])  # T_{frame 1 → turned view}
        start = torch.eye(4, dtype=torch.float64)[None]
        t1, r1 = pose_error(refine_pose(target, street["rotated"], depth, K, start), truth)
        assert pose_error(start, truth)[1][0] == pytest.approx(1.0, abs=1e-6)
        assert t1[0] < 0.005 and r1[0] < 0.02, (t1, r1)

    def test_a_step_that_raises_the_cost_is_refused(self):
        """White noise seen shifted by 1-5 pixels: the linearisation says little, and one LM step
        either lowers the robust cost on the pixels valid before and after, or the start is kept
        exactly (which happens here)."""
        generator = torch.Generator().manual_seed(0)
        h, w, b = 32, 48, 6
        noise = torch.rand(1, 1, h, w, generator=generator).expand(b, 1, h, w)
        depth = torch.full((b, 1, h, w), 5.0)
        K = torch.tensor([[40.0, 0, 23.5], [0, 40.0, 15.5], [0, 0, 1]]).expand(b, 3, 3)
        vec = torch.zeros(b, 6, dtype=torch.float64)
        vec[:, 0], vec[:, 4] = torch.linspace(0.1, 0.6, b), 0.01
        starts = pose_vec_to_mat(vec)
        out = refine_pose(noise, noise, depth, K, starts, iterations=1, levels=1)

        def cost(T):
            warped, pixels = inverse_warp(noise, depth, T.float(), K)
            u, v = pixels[:, 0:1], pixels[:, 1:2]
            return robust_cost_and_weight(warped - noise, "cauchy", ROBUST_SCALE)[0], (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)

        (before, valid_before), (after, valid_after) = cost(starts), cost(out)
        kept = [torch.equal(out[k], starts[k]) for k in range(b)]
        assert any(kept) and not all(kept), kept
        for k in range(b):
            both = valid_before[k] & valid_after[k]
            assert kept[k] or after[k][both].sum() < before[k][both].sum()

    @pytest.mark.parametrize("batch", [1, 3])
    def test_batch_is_each_pair_alone(self, street, batch):
        """Pairs of a batch do not interact: the batch's result is each pair's own (at a quarter size)."""
        small = torch.nn.functional.avg_pool2d
        pairs = [(1, 0), (2, 1), (0, 1)][:batch]
        target = small(torch.stack([street["images"][t] for t, _ in pairs]), 4)
        source = small(torch.stack([street["images"][s] for _, s in pairs]), 4)
        depth = small(torch.stack([street["depth"][t] for t, _ in pairs]), 4)
        K = scale_intrinsics(street["K"], 0.25, 0.25)[None].expand(batch, 3, 3)
        truth = torch.stack([torch.from_numpy(relative_pose(street["poses"][t].numpy(), street["poses"][s].numpy()))
                             for t, s in pairs])
        starts = torch.stack([perturb(truth[k:k + 1], np.roll(PERTURBATION, k))[0] for k in range(batch)])
        together = refine_pose(target, source, depth, K, starts, levels=2)
        assert together.shape == (batch, 4, 4)
        for k in range(batch):
            alone = refine_pose(target[k:k + 1], source[k:k + 1], depth[k:k + 1], K[k:k + 1], starts[k:k + 1], levels=2)
            assert torch.allclose(together[k], alone[0], atol=1e-5)
        assert (pose_error(together, truth)[0] < pose_error(starts, truth)[0]).all()

    def test_device_and_dtype(self, street, device):
        """float32 and float64 images agree; the result is on the inputs' device in T_init's dtype."""
        target, source, depth, K, T = pair(street)
        start = perturb(T)
        results = []
        for dtype in (torch.float32, torch.float64):
            out = refine_pose(target.to(device, dtype), source.to(device, dtype), depth.to(device, dtype),
                              K.to(device), start.to(device), levels=3)
            assert out.device.type == device.type and out.dtype == torch.float64
            results.append(out.cpu())
        t, r = pose_error(results[0], results[1])
        assert t[0] < 1e-3 and r[0] < 5e-3, (t, r)
        assert pose_error(results[1], T)[0][0] < 0.01

    def test_real_stereo_pair(self):
        """Middlebury's motorcycle (scikit-image): from a pose 3 cm and 0.5° off, the 193 mm baseline
        along −x comes back with the true depth (z = baseline·f / (disparity + doffs))."""
        from skimage.data import stereo_motorcycle

        left, right, disparity = stereo_motorcycle()
        # The calibration of these (already 4x down-sampled) images, from the function's docstring.
        f, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
        depth = baseline * f / (disparity.astype(np.float64) + doffs)  # metres; inf where unknown
        k = 4  # down-sample 4x again by block means; a block with an unknown pixel is left out
        h, w = left.shape[0] // k * k, left.shape[1] // k * k

        def blocks(a):
            return a[:h, :w].reshape(h // k, k, w // k, k, *a.shape[2:]).mean(axis=(1, 3))

        depth = np.where(np.isfinite(blocks(depth)), blocks(np.nan_to_num(depth, posinf=0.0)), 0.0)
        K_left = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
        K_right = K_left + np.array([[0, 0, doffs], [0, 0, 0], [0, 0, 0]])  # the principal points differ by doffs
        K_left, K_right = (torch.from_numpy(scale_intrinsics(K, 1 / k, 1 / k))[None].float() for K in (K_left, K_right))
        target, source = (torch.from_numpy(blocks(a / 255.0)).permute(2, 0, 1)[None].float() for a in (left, right))
        truth = torch.eye(4, dtype=torch.float64)[None].clone()
        truth[0, 0, 3] = -baseline  # the right camera sits baseline to the right: x_right = x_left − b
        start = perturb(truth, [0.01, 0.02, -0.02, 0.004, 0.0065, -0.003])
        out = refine_pose(target, source, torch.from_numpy(depth)[None, None].float(), K_left, start, K_source=K_right)
        direction = out[0, :3, 3] / out[0, :3, 3].norm()
        angle = math.degrees(math.acos(min(1.0, -direction[0].item())))
        start_angle = math.degrees(math.acos(-(start[0, 0, 3] / start[0, :3, 3].norm()).item()))
        t1, r1 = pose_error(out, truth)
        assert start_angle > 5 and angle < 1.0, (start_angle, angle)
        assert t1[0] < 0.2 * pose_error(start, truth)[0][0] and r1[0] < 0.1, (t1, r1)


def car_pair(pitch_degrees: float = 0.0):
    """Two views of a static street whose car moved exactly along the chord of a 1.5° turn, 1 m (the
    second camera turned 1.5° about its vertical axis, its centre at half the turn), the camera pitched
    `pitch_degrees` up on the car. (target, source, depth_t, K, T_true), batch of one."""
    rng = np.random.default_rng(3)
    start = make_trajectory(rng, 1)[0]
    scene = make_scene(rng, 200.0)
    K = kitti_intrinsics(HEIGHT, WIDTH)
    turn, pitch = math.radians(1.5), math.radians(pitch_degrees)
    move, mount = np.eye(4), np.eye(4)
    move[:3, :3] = yaw_rotation(torch.tensor(turn, dtype=torch.float64)).numpy()
    move[:3, 3] = [math.sin(turn / 2), 0.0, math.cos(turn / 2)]
    mount[1:3, 1:3] = [[math.cos(pitch), -math.sin(pitch)], [math.sin(pitch), math.cos(pitch)]]
    poses = [start @ mount, start @ move @ mount]
    views = [render_view(scene.at(0), Camera(P, K, HEIGHT, WIDTH)) for P in poses]
    T = torch.from_numpy(relative_pose(*poses))[None]
    return image(views[0].rgb), image(views[1].rgb), torch.from_numpy(views[0].depth)[None, None], \
        torch.from_numpy(K).float()[None], T


@pytest.fixture(scope="module")
def chord_pair():
    """`car_pair` with the camera level on the car: T_true = T_t2s is on the chord by construction."""
    return car_pair()


@pytest.fixture(scope="module")
def pitched_pair():
    """`car_pair` with the camera pitched 1.5° up on the car: in the camera's frame the car travels
    2.6 cm down per metre from the chord."""
    return car_pair(1.5)


def off_chord(T: torch.Tensor) -> torch.Tensor:
    """Per pose, the sine of the angle between its translation and its chord (0 on a car's path)."""
    t = T[:, :3, 3]
    return torch.linalg.cross(t, vehicle_chord(T[:, :3, :3]), dim=1).norm(dim=1) / t.norm(dim=1)


class TestVehicleMotion:
    def test_the_constructed_motion_is_on_its_chord(self, chord_pair):
        T = chord_pair[-1]
        assert off_chord(T)[0] < 1e-12 and T[0, :3, 3].norm() == pytest.approx(1.0)

    def test_perturbed_pose_comes_back_on_the_chord(self, chord_pair):
        """5 cm and 0.5° off (sideways and vertical included), with the true depth: every step stays
        on the chord and ends nearer the truth than the free refinement's bound (1 cm, 0.05°)."""
        target, source, depth, K, T = chord_pair
        start = perturb(T)
        assert off_chord(start)[0] > 0.02
        out = refine_pose(target, source, depth, K, start, motion="vehicle")
        t1, r1 = pose_error(out, T)
        assert off_chord(out)[0] < 1e-9
        assert t1[0] < 0.01 and r1[0] < 0.05, (t1, r1)

    def test_a_wrong_depth_cannot_turn_the_direction_of_travel(self, chord_pair):
        """The true depth times 1 ± 20 % of smooth noise (a net's kind of error), six draws in one
        batch: the free refinement's direction of travel is 0.09-0.32° off, the car's on its chord
        8-60x nearer, with a rotation no worse on average."""
        target, source, depth, K, T = chord_pair
        batch = 6
        noise = torch.randn(batch, 1, 8, 26, generator=torch.Generator().manual_seed(0))
        noisy = depth * (1 + 0.2 * torch.nn.functional.interpolate(noise, size=depth.shape[-2:], mode="bilinear"))
        inputs = [x.expand(batch, *x.shape[1:]) for x in (target, source)]
        K, T, start = K.expand(batch, 3, 3), T.expand(batch, 4, 4), perturb(T).expand(batch, 4, 4)
        free = refine_pose(*inputs, noisy, K, start)
        vehicle = refine_pose(*inputs, noisy, K, start, motion="vehicle")

        def direction_error(P):
            cos = (P[:, :3, 3] * T[:, :3, 3]).sum(1) / P[:, :3, 3].norm(dim=1) / T[:, :3, 3].norm(dim=1)
            return np.degrees(torch.arccos(cos.clamp(-1, 1)).numpy())

        assert (off_chord(free) > 1e-3).all() and (off_chord(vehicle) < 1e-9).all()
        assert (direction_error(vehicle) < direction_error(free) / 5).all(), (direction_error(free), direction_error(vehicle))
        assert pose_error(vehicle, T)[1].mean() < pose_error(free, T)[1].mean()

    def test_a_pitched_camera_travels_in_the_chords_vertical_plane(self, pitched_pair):
        """The camera pitched 1.5° on the car, 5 cm and 0.5° off, the true depth: on the chord alone
        the direction of travel stays 1.5° off; in its vertical plane (`vehicle_vertical`) it comes
        back to the truth, within the free refinement's bound (1 cm, 0.05°)."""
        target, source, depth, K, T = pitched_pair
        assert off_chord(T)[0] > 0.02  # the climb: 1.5° off the chord
        start = perturb(T)
        chord = refine_pose(target, source, depth, K, start, motion="vehicle")
        plane = refine_pose(target, source, depth, K, start, motion="vehicle_vertical")
        t_chord, _ = pose_error(chord, T)
        t_plane, r_plane = pose_error(plane, T)
        assert t_plane[0] < 0.01 and r_plane[0] < 0.05, (t_plane, r_plane)
        assert t_chord[0] > 0.02, t_chord
        sideways = plane[0, :3, 3] @ torch.linalg.cross(vehicle_chord(plane[:, :3, :3])[0], plane[0, :3, 1])
        assert abs(float(sideways)) < 1e-9  # never off the chord's vertical plane

    def test_unknown_motion(self, chord_pair):
        target, source, depth, K, T = chord_pair
        with pytest.raises(ValueError, match="motion"):
            refine_pose(target, source, depth, K, T, motion="boat")


class TestRefineSequence:
    def test_numpy_in_numpy_out_and_closer(self, street):
        frames, depth = street["images"], street["depth"]
        truth = (np.linalg.inv(street["poses"][:-1].numpy()) @ street["poses"][1:].numpy())
        start = perturb(torch.from_numpy(truth)).numpy()
        out = refine_sequence(frames, depth, start, street["K"].numpy(), batch_size=1, levels=3)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (2, 4, 4)
        before, after = pose_error(torch.from_numpy(start), torch.from_numpy(truth)), \
            pose_error(torch.from_numpy(out), torch.from_numpy(truth))
        # pair i: target i+1 with its depth, source i; the wrong frame's depth would not converge
        assert (after[0] < before[0] / 4).all() and (after[1] < before[1] / 3).all(), (before, after)
        with pytest.raises(ValueError, match="rel must have shape"):
            refine_sequence(frames, depth, start[:1], street["K"].numpy())

    def test_depth_net_gives_the_target_frames_depth(self, street):
        """refine_relative_poses = refine_sequence with the (untrained, real) net's depth of each
        pair's later frame, in tensors when given tensors."""
        from masksfm.config import load_config
        from masksfm.inference import predict_disparity
        from masksfm.networks import build_depth_net

        torch.manual_seed(0)
        net = build_depth_net(load_config(None).model.depth).eval()
        frames = torch.nn.functional.avg_pool2d(street["images"], 2)
        K = scale_intrinsics(street["K"], 0.5, 0.5)
        rel = torch.from_numpy(np.linalg.inv(street["poses"][:-1].numpy()) @ street["poses"][1:].numpy())
        start = perturb(rel)
        out = refine_relative_poses(net, frames, start, K, batch_size=2, levels=2, iterations=3)
        # The later frames' depth, batched as the refinement batches them (the pairs' targets, 2 at a
        # time): float32 convolutions summed in another order would differ in the last bits, and the
        # accept / reject decisions of an untrained net's refinement could then part ways.
        depth = torch.cat([torch.zeros(1, 1, *frames.shape[-2:]),
                           1.0 / predict_disparity(net, frames[1:], torch.device("cpu"), batch_size=2)])
        assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 4)
        assert torch.allclose(out, refine_sequence(frames, depth, start, K, levels=2, iterations=3), atol=1e-9)
        # With flip (eval pose / predict --flip --refine): against the depth of the frames read both ways.
        flipped = refine_relative_poses(net, frames, start, K, batch_size=2, flip=True, levels=2, iterations=3)
        depth[1:] = 1.0 / predict_disparity(net, frames[1:], torch.device("cpu"), batch_size=2, flip=True)
        assert torch.allclose(flipped, refine_sequence(frames, depth, start, K, levels=2, iterations=3), atol=1e-9)
        assert not torch.allclose(flipped, out, atol=1e-6)
