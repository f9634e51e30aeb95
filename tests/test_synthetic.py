"""The synthetic street: ray casting and visibility against cases worked out by hand, then the rendered
dataset's ground truth against itself (docs/design.md §5: warping and reprojection figures), splits, determinism
and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masksfm import geometry as G
from masksfm.cli import main
from masksfm.data import layout
from masksfm.data.synthetic import (Camera, Scene, kitti_intrinsics, make_scene, make_trajectory, render_dataset,
                                    render_view, split_scenes, visibility)
from masksfm.data.synthetic.raycast import BOX, CYLINDER, PLANE, SPHERE, Material, Primitive, cast, intersect
from masksfm.data.synthetic.render import VISIBILITY_EPS, pixel_grid, project_points, rays_through
from masksfm.data.synthetic.textures import STUCCO, TEXTURE_FILES, _data_dir, sample, texture_atlas
from masksfm.errors import MasksfmError

GREY = Material(STUCCO, (0.5, 0.5, 0.5), 2.0)
H, W = 48, 96
# Integer principal point: the ray through pixel (47, 23) is the optical axis.
K_SIMPLE = np.array([[60.0, 0.0, 47.0], [0.0, 60.0, 23.0], [0.0, 0.0, 1.0]])


def camera_at(x=0.0, y=0.0, z=0.0, K=K_SIMPLE, height=H, width=W) -> Camera:
    pose = np.eye(4)
    pose[:3, 3] = x, y, z
    return Camera(pose, K, height, width)


def box(centre, half, yaw=0.0, velocity=(0.0, 0.0, 0.0)) -> Primitive:
    return Primitive(BOX, tuple(centre), tuple(half), GREY, yaw, tuple(velocity))


def pole(x, z, radius, top=-30.0, bottom=0.0) -> Primitive:
    return Primitive(CYLINDER, (x, (top + bottom) / 2, z), (radius, (bottom - top) / 2, radius), GREY)


GROUND = Primitive(PLANE, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), GREY)


def brute_cast(scene: Scene, origin, directions, t_max=np.inf):
    """Every primitive against every ray: the reference the culled caster must equal."""
    t_best = np.full(directions.shape[1], t_max)
    index = np.full(directions.shape[1], -1)
    for k, p in enumerate(scene.primitives):
        t = intersect(p, origin, directions)
        nearer = t < t_best
        t_best[nearer], index[nearer] = t[nearer], k
    return t_best, index


class TestRayCasting:
    def test_ground_plane_depth_exact(self):
        # Camera 1.65 m above the road looking along it: row v sees the road at z = h·fy / (v − cy).
        view = render_view(Scene((GROUND,)), camera_at(y=-1.65))
        v = np.arange(H, dtype=np.float64)
        expected = np.where(v > 23, 1.65 * 60.0 / np.maximum(v - 23, 1e-9), 0.0)
        np.testing.assert_allclose(view.depth, np.broadcast_to(expected[:, None], (H, W)).astype(np.float32), rtol=1e-6)
        assert np.all(np.isnan(view.points[:, v <= 23]))  # sky: no point
        assert view.rgb.dtype == np.uint8 and view.rgb.shape == (H, W, 3)

    def test_box_face_and_yaw(self):
        # A box whose front face is the plane z = 10; turned by 90° with its x and z extents swapped it
        # is the same solid.
        straight = render_view(Scene((box((0, 0, 12), (2.9, 1.9, 2)),)), camera_at())
        turned = render_view(Scene((box((0, 0, 12), (2, 1.9, 2.9), yaw=np.pi / 2),)), camera_at())
        inside = straight.depth > 0
        # The face spans |x| ≤ 2.9, |y| ≤ 1.9 at z = 10: pixels within 60·0.29 = 17.4 columns and
        # 11.4 rows of the axis.
        assert inside[23, 47] and inside[23 + 11, 47 + 17] and inside[23 - 11, 47 - 17]
        assert not inside[23, 47 + 18] and not inside[23 + 12, 47] and inside.sum() == 35 * 23
        np.testing.assert_allclose(straight.depth[inside], 10.0, rtol=1e-7)
        np.testing.assert_allclose(turned.depth, straight.depth, rtol=1e-6)

    def test_cylinder_and_sphere_exact(self):
        cam = camera_at()
        pixels = pixel_grid(cam)
        d = rays_through(cam, pixels)
        t_cyl = intersect(pole(0.0, 10.0, 0.5, top=-5.0, bottom=5.0), cam.centre, d)
        t_sph = intersect(Primitive(SPHERE, (0.0, 0.0, 10.0), (1.0, 1.0, 1.0), GREY), cam.centre, d)
        axis = 23 * W + 47
        assert t_cyl[axis] == pytest.approx(9.5, rel=1e-12) and t_sph[axis] == pytest.approx(9.0, rel=1e-12)
        # Sphere: |t·d − c|² = r² solved by hand for every ray.
        a, b, c = np.sum(d * d, 0), -10.0 * d[2], 100.0 - 1.0
        disc = b**2 - a * c
        expected = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
        np.testing.assert_allclose(t_sph, expected, rtol=1e-12)
        # Cylinder side (|y| within its half height): the same in the x-z plane.
        a, b, c = d[0] ** 2 + d[2] ** 2, -10.0 * d[2], 100.0 - 0.25
        disc = b**2 - a * c
        side = (-b - np.sqrt(np.maximum(disc, 0))) / a
        ok = (disc >= 0) & (np.abs(side * d[1]) < 5.0 - 1e-9)
        np.testing.assert_allclose(t_cyl[ok], side[ok], rtol=1e-12)

    def test_culling_is_exact_on_a_street(self):
        # The caster tests each primitive only on rays inside its projected box, front to back;
        # that must change nothing, for pixel rays and for visibility rays.
        rng = np.random.default_rng(5)
        poses = make_trajectory(rng, 4)
        scene = make_scene(rng, 120.0, moving_cars=3, speed=1.0)
        K = kitti_intrinsics(48, 160)
        cams = [Camera(p, K, 48, 160) for p in poses]
        for i in (0, 3):
            pixels = pixel_grid(cams[i])
            d = rays_through(cams[i], pixels)
            t, index = cast(scene.at(i), cams[i], d, pixels)
            t_ref, index_ref = brute_cast(scene.at(i), cams[i].centre, d)
            np.testing.assert_array_equal(index, index_ref)
            np.testing.assert_array_equal(t[index >= 0], t_ref[index_ref >= 0])
        view = render_view(scene.at(1), cams[1])
        X = view.points[:, view.depth > 0]
        pixels, z = project_points(cams[2], X)
        inside = (z > 0) & (pixels[0] >= 0) & (pixels[0] <= 159) & (pixels[1] >= 0) & (pixels[1] <= 47)
        d = X[:, inside] - cams[2].centre[:, None]
        _, index = cast(scene.at(2), cams[2], d, pixels[:, inside], t_max=1 - VISIBILITY_EPS)
        _, index_ref = brute_cast(scene.at(2), cams[2].centre, d, t_max=1 - VISIBILITY_EPS)
        np.testing.assert_array_equal(index, index_ref)

    def test_moving_primitives_move(self):
        scene = Scene((box((0, 0, 12), (1, 1, 1), velocity=(0.0, 0.0, 0.5)), box((5, 0, 12), (1, 1, 1))))
        later = scene.at(4)
        assert later.primitives[0].centre == (0.0, 0.0, 14.0) and later.primitives[1] is scene.primitives[1]
        np.testing.assert_allclose(later.lo[0], [-1, -1, 13]) and np.testing.assert_allclose(later.hi[1], [6, 1, 13])
        assert later.at(0).primitives[0].centre == (0.0, 0.0, 12.0)
        view = render_view(later, camera_at())
        assert view.depth[23, 47] == pytest.approx(13.0) and view.moving[23, 47] and not view.moving[23, 0]


class TestVisibility:
    def test_points_leaving_the_view_are_zero(self):
        # Nothing occludes: visibility must be exactly "projects inside frame j", pixel-centre bounds.
        scene = Scene((box((0, 0, 40), (200, 200, 10)),))
        cam_i, cam_j = camera_at(), camera_at(x=0.7, y=0.2, z=3.0)
        view = render_view(scene, cam_i)
        vis = visibility(scene, cam_j, view.points, view.depth > 0)
        T = torch.tensor(G.relative_pose(cam_i.pose, cam_j.pose))[None]
        Kt = torch.tensor(K_SIMPLE)[None]
        depth = torch.tensor(view.depth, dtype=torch.float64)[None, None]
        pix, z = G.project(G.transform_points(T, G.backproject(depth, Kt)), Kt)
        u, v = pix[0, 0].numpy(), pix[0, 1].numpy()
        inside = (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1) & (z[0, 0].numpy() > 0)
        on_bound = np.minimum.reduce([np.abs(u), np.abs(u - (W - 1)), np.abs(v), np.abs(v - (H - 1))]) < 1e-6
        assert (~inside).sum() > 500  # moving forward: a frame's border leaves the view
        np.testing.assert_array_equal(vis[~on_bound], inside[~on_bound].astype(np.uint8))

    def test_pole_hides_the_facade_behind_it(self):
        # A facade at z = 20 and a pole of radius 0.3 at z = 10 in front of it; camera j is 1 m to the
        # right. A facade point X is hidden from j exactly when the segment C_j -> X passes within
        # 0.3 m of the pole's axis (distance in the x-z plane).
        radius = 0.3
        scene = Scene((box((0, -5, 25), (200, 30, 5)), pole(0.0, 10.0, radius, top=-40.0, bottom=40.0)))
        cam_i, cam_j = camera_at(y=-1.65), camera_at(x=1.0, y=-1.65)
        view = render_view(scene, cam_i)
        vis = visibility(scene, cam_j, view.points, view.depth > 0)
        facade = np.abs(view.depth - 20.0) < 1e-4
        X = view.points[:, facade]
        # Distance from the pole axis (0, 10) to the line through C_j = (1, 0) and (X_x, X_z).
        dx, dz = X[0] - 1.0, X[2]
        distance = np.abs(dx * 10.0 - dz * (0.0 - 1.0)) / np.hypot(dx, dz)
        hidden = distance < radius
        pixels, _ = project_points(cam_j, X)
        inside = (pixels[0] >= 0) & (pixels[0] <= W - 1)
        clear = np.abs(distance - radius) > 1e-6
        assert (hidden & inside).sum() >= 20  # the case is not vacuous
        np.testing.assert_array_equal(vis[facade][clear], (~hidden & inside)[clear].astype(np.uint8))
        # ... and those facade points are visible in their own frame: the pole is not in front of them there.
        assert np.all(view.depth[facade] > 19.9)

    def test_moving_objects_occlude_at_the_other_instant(self):
        # A car drives across in front of a wall: at frame 1 it covers wall points seen at frame 0.
        car = box((-3.0, 0.0, 10.0), (1.0, 1.0, 1.0), velocity=(3.0, 0.0, 0.0))
        scene = Scene((box((0, 0, 40), (200, 200, 10)), car))
        cam = camera_at()
        view = render_view(scene, cam)
        valid = (view.depth > 0) & ~view.moving
        vis = visibility(scene.at(1), cam, view.points, valid)
        covered = render_view(scene.at(1), cam).moving  # where the car is at frame 1 (same camera)
        assert covered.sum() > 50
        assert np.all(vis[covered & valid] == 0) and np.all(vis[~covered & valid] == 1)
        assert np.all(vis[view.moving] == 0)


class TestTextures:
    def test_only_files_shipped_with_scikit_image(self):
        for name, _ in TEXTURE_FILES:
            assert (_data_dir() / name).is_file(), name

    def test_level_zero_at_texel_centres_is_the_texel(self):
        atlas = texture_atlas()
        n = 1024
        level0 = atlas.texels[atlas.offsets[STUCCO, 0]:atlas.offsets[STUCCO, 0] + n * n].reshape(n, n)
        ys, xs = np.array([0, 5, 700]), np.array([3, 511, 1023])
        # Texel (x, y) has its centre at (x + 0.5, y + 0.5) level-0 texels = that / 512 tiles.
        value = sample(np.full(3, STUCCO), (xs + 0.5) / 512, (ys + 0.5) / 512, np.zeros(3))
        np.testing.assert_allclose(value, level0[ys, xs], rtol=1e-6)
        # The coarsest level is the mean, about 1 by construction, and wraps seamlessly.
        one = np.array([STUCCO])
        assert sample(one, np.array([0.3]), np.array([0.7]), np.array([99.0]))[0] == pytest.approx(1.0, abs=0.05)
        two, lod = np.full(2, STUCCO), np.full(2, 2.0)
        wrapped = sample(two, np.array([0.1, 2.1]), np.array([0.2, -1.8]), lod)  # the mirrored tile repeats every 2
        np.testing.assert_allclose(wrapped, sample(two, np.array([0.1, 0.1]), np.array([0.2, 0.2]), lod), rtol=1e-5)


class TestSplits:
    @pytest.mark.parametrize("n, sizes", [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (4, (2, 1, 1)),
                                          (7, (5, 1, 1)), (10, (6, 2, 2)), (20, (14, 3, 3))])
    def test_sizes(self, n, sizes):
        names = [f"s{k}" for k in range(n)]
        split = split_scenes(names, np.random.default_rng(0))
        assert (len(split["train"]), len(split["val"]), len(split["test"])) == sizes
        assert sorted(split["train"] + split["val"] + split["test"]) == sorted(names)


def _warp_figures(scene: layout.Scene) -> list[tuple[int, int, float, float]]:
    """For every neighbouring pair (i, j): warp error / no-warp error and the median relative depth
    error, on the pixels of frame i visible in frame j. All pairs of the scene in one batch."""
    n = len(scene)
    pairs = [(i, j) for i in range(n) for j in (i - 1, i + 1) if 0 <= j < n]
    ii, jj = [p[0] for p in pairs], [p[1] for p in pairs]
    images = torch.tensor(np.stack([scene.read_frame(k) for k in range(n)]) / 255.0).permute(0, 3, 1, 2)
    depths = torch.tensor(np.stack([scene.read_depth(k) for k in range(n)]), dtype=torch.float64)[:, None]
    visible = torch.tensor(np.stack([scene.read_visibility(i, j) for i, j in pairs])).bool()[:, None]
    T = torch.tensor(np.stack([G.relative_pose(scene.poses[i], scene.poses[j]) for i, j in pairs]))
    K = torch.tensor(scene.K).expand(len(pairs), 3, 3)
    warped, pixels = G.inverse_warp(images[jj], depths[ii], T, K)
    warp_error = (images[ii] - warped).abs().mean(1, keepdim=True)
    still_error = (images[ii] - images[jj]).abs().mean(1, keepdim=True)
    z = G.transform_points(T, G.backproject(depths[ii], K))[:, 2:3]
    depth_j = F.grid_sample(depths[jj], G.pixels_to_grid(pixels), align_corners=True)
    relative = (z - depth_j).abs() / depth_j
    out = []
    for b, (i, j) in enumerate(pairs):
        m = visible[b]
        out.append((i, j, float(warp_error[b][m].mean() / still_error[b][m].mean()), float(relative[b][m].median())))
    return out


class TestDataset:
    def test_layout(self, synth_dataset):
        info = json.loads((synth_dataset / "dataset.json").read_text())
        assert info["kind"] == "synthetic" and info["seed"] == 0 and (info["height"], info["width"]) == (64, 208)
        splits = {s: layout.read_split(synth_dataset, s) for s in ("train", "val", "test")}
        assert [len(v) for v in splits.values()] == [1, 1, 1]
        assert sorted(sum(splits.values(), [])) == ["scene_000", "scene_001", "scene_002"]
        for name in sum(splits.values(), []):
            scene = layout.read_scene(synth_dataset / name)
            assert len(scene) == 10 and scene.size == (64, 208)
            np.testing.assert_allclose(scene.K, kitti_intrinsics(64, 208), rtol=1e-9)
            np.testing.assert_allclose(scene.poses[0], np.eye(4), atol=1e-12)
            steps = np.linalg.norm(np.diff(scene.poses[:, :3, 3], axis=0), axis=1)
            assert np.all((steps >= 0.5 - 1e-9) & (steps <= 1.5 + 1e-9))
            # Height kept (the road is flat): positions leave frame 0's horizontal only by its small pitch.
            travelled = np.linalg.norm(scene.poses[:, :3, 3], axis=1)
            assert np.all(np.abs(scene.poses[:, 1, 3]) <= np.tan(np.radians(2.0)) * travelled + 1e-12)
            names = sorted(p.name for p in (scene.path / "visibility").iterdir())
            assert names == sorted([f"{i:06d}_{j:06d}.npy" for i in range(10) for j in (i - 1, i + 1) if 0 <= j < 10])
            for i in range(10):
                depth = scene.read_depth(i)
                assert depth.dtype == np.float32 and np.all(np.isfinite(depth)) and depth.min() >= 0
                assert (depth == 0).mean() < 0.3  # sky well under half a frame

    def test_ground_truth_is_exact_on_every_neighbouring_pair(self, synth_dataset):
        # docs/design.md §5: warping with the true depth and pose leaves under half the no-warp photometric
        # error on visible pixels, and reprojected depth agrees to within 1% (median).
        for name in ("scene_000", "scene_001", "scene_002"):
            for i, j, ratio, depth_error in _warp_figures(layout.read_scene(synth_dataset / name)):
                assert ratio < 0.5, (name, i, j, ratio)
                assert depth_error < 0.01, (name, i, j, depth_error)

    def test_moving_car_and_sky_are_not_visible(self, synth_dataset):
        moving_pixels = 0
        for name in ("scene_000", "scene_001", "scene_002"):
            scene = layout.read_scene(synth_dataset / name)
            for i in range(len(scene)):
                moving = scene.read_moving(i)
                sky = scene.read_depth(i) == 0
                moving_pixels += moving.sum()
                for j in (i - 1, i + 1):
                    if 0 <= j < len(scene):
                        vis = scene.read_visibility(i, j)
                        assert set(np.unique(vis)) <= {0, 1}
                        assert not vis[moving | sky].any()
        assert moving_pixels > 100  # the car ahead is in view


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class TestDeterminism:
    def test_same_seed_same_bytes(self, tmp_path):
        kwargs = dict(scenes=2, frames=3, height=32, width=96, moving_cars=2, progress=False)
        a = _tree_bytes(render_dataset(tmp_path / "a", seed=7, workers=1, **kwargs))
        b = _tree_bytes(render_dataset(tmp_path / "b", seed=7, workers=2, **kwargs))  # worker processes too
        assert a == b and len(a) > 20
        c = _tree_bytes(render_dataset(tmp_path / "c", seed=8, workers=1, **kwargs))
        assert a["scene_000/000000.png"] != c["scene_000/000000.png"]
        # A scene depends on (seed, its index) only, not on how many scenes are rendered.
        one = _tree_bytes(render_dataset(tmp_path / "one", seed=7, **{**kwargs, "scenes": 1}))
        assert all(one[k] == a[k] for k in one if k.startswith("scene_000"))

    def test_refuses_to_overwrite_other_data(self, tmp_path):
        precious = tmp_path / "mine"
        precious.mkdir()
        (precious / "notes.txt").write_text("keep me")
        with pytest.raises(MasksfmError, match="refusing to overwrite"):
            render_dataset(precious, scenes=1, frames=1, height=16, width=32, progress=False)
        assert (precious / "notes.txt").read_text() == "keep me"
        with pytest.raises(MasksfmError, match="moving_cars"):
            render_dataset(tmp_path / "x", scenes=1, frames=1, moving_cars=-1, progress=False)


class TestCommandLine:
    def test_synth(self, tmp_path, capsys):
        out = tmp_path / "data"
        args = ["synth", str(out), "--scenes", "2", "--frames", "2", "--height", "24", "--width", "64", "--seed", "3"]
        main(args)
        assert "wrote 2 scenes" in capsys.readouterr().out
        assert layout.read_dataset_info(out)["kind"] == "synthetic"
        assert len(layout.read_scene(out / "scene_001")) == 2
        main(args)  # an earlier synthetic dataset is replaced
        assert not out.with_name("data.partial").exists()

    def test_bad_input_is_one_line_and_exit_2(self, tmp_path, capsys):
        with pytest.raises(SystemExit) as exit_info:
            main(["synth", str(tmp_path / "d"), "--moving-cars", "-2"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "moving_cars" in err
        (tmp_path / "file").write_text("x")
        with pytest.raises(SystemExit):
            main(["synth", str(tmp_path / "file")])
        assert "not a folder" in capsys.readouterr().err
