"""The masks against analytic scenes and an obviously-correct loop implementation (docs/design.md §4)."""

import math

import numpy as np
import pytest
import torch

from masksfm import geometry as G
from masksfm.masks import Masks, blank_mask, compute_masks, edge_mask, overlap_mask, project_into_other, valid_depth


def make_K(height, width, batch=1, dtype=torch.float64, device="cpu"):
    K = torch.tensor([[0.6 * width, 0, (width - 1) / 2], [0, 0.6 * width, (height - 1) / 2], [0, 0, 1]],
                     dtype=dtype, device=device)
    return K.expand(batch, 3, 3).clone()


def translation(tx=0.0, ty=0.0, tz=0.0, batch=1, dtype=torch.float64, device="cpu"):
    """T_t2s for a source camera displaced by (tx, ty, tz) in the target frame (no rotation)."""
    T = torch.eye(4, dtype=dtype, device=device).repeat(batch, 1, 1)
    T[:, :3, 3] = -torch.tensor([tx, ty, tz], dtype=dtype, device=device)
    return T


# --- a slow, obviously-correct reference: loops over samples and pixels, dicts for cells -----------

def reference_masks(depth_t, depth_s, T_t2s, K, repeats=0, tol=0.0):
    depth_t, depth_s, T, K = (x.double().numpy() for x in (depth_t, depth_s, T_t2s, K))
    B, _, H, W = depth_t.shape
    out_t = {k: np.zeros((B, 1, H, W)) for k in ("edge", "overlap", "blank", "combined")}
    out_s = {k: np.zeros((B, 1, H, W)) for k in ("edge", "overlap", "blank", "combined")}
    for b in range(B):
        Kb, Kinv = K[b], np.linalg.inv(K[b])

        def project_all(depth, T_b):
            proj = {}
            for v in range(H):
                for u in range(W):
                    d = depth[b, 0, v, u]
                    if not (np.isfinite(d) and d > 0):
                        continue
                    X = T_b[:3, :3] @ (d * (Kinv @ [u, v, 1.0])) + T_b[:3, 3]
                    p = Kb @ X
                    z = max(p[2], 1e-3)
                    proj[(v, u)] = (p[0] / z, p[1] / z, X[2], np.linalg.norm(X))
            return proj

        def edges(proj):
            e = np.zeros((H, W), bool)
            for (v, u), (x, y, z, _) in proj.items():
                e[v, u] = -1e-3 <= x <= W - 1 + 1e-3 and -1e-3 <= y <= H - 1 + 1e-3 and z > 1e-3
            return e

        def overlaps(proj, e):
            best = {}
            for (v, u), (x, y, _, dist) in proj.items():
                if e[v, u]:
                    cell = (math.floor(y + 0.5), math.floor(x + 0.5))
                    best[cell] = min(best.get(cell, np.inf), dist)
            o = np.zeros((H, W), bool)
            for (v, u), (x, y, _, dist) in proj.items():
                if e[v, u]:
                    cell = (math.floor(y + 0.5), math.floor(x + 0.5))
                    o[v, u] = dist <= best[cell] * (1 + tol) * (1 + 1e-6)
            return o

        def blanks(proj_other, marks_other, depth):
            c = np.zeros((H, W), bool)
            for (v, u), (x, y, _, _) in proj_other.items():
                if marks_other[v, u]:
                    for dy in (0, 1):
                        for dx in (0, 1):
                            cy, cx = math.floor(y) + dy, math.floor(x) + dx
                            if 0 <= cy < H and 0 <= cx < W:
                                c[cy, cx] = True
            return c & np.isfinite(depth[b, 0]) & (depth[b, 0] > 0)

        proj_t = project_all(depth_t, T[b])
        proj_s = project_all(depth_s, np.linalg.inv(T[b]))
        e_t, e_s = edges(proj_t), edges(proj_s)
        o_t, o_s = overlaps(proj_t, e_t), overlaps(proj_s, e_s)
        m_t, m_s = e_t, e_s
        for _ in range(repeats + 1):
            bl_t, bl_s = blanks(proj_s, m_s, depth_t), blanks(proj_t, m_t, depth_s)
            m_t, m_s = e_t & o_t & bl_t, e_s & o_s & bl_s
        for out, vals in ((out_t, (e_t, o_t, bl_t, m_t)), (out_s, (e_s, o_s, bl_s, m_s))):
            for key, val in zip(("edge", "overlap", "blank", "combined"), vals):
                out[key][b, 0] = val
    return out_t, out_s


def piecewise_planar_depth(rng, H, W, K):
    """Ground plane, a facade, a few boxes (nearer rectangles) and invalid sky."""
    Kinv = np.linalg.inv(K)
    v, u = np.mgrid[0:H, 0:W].astype(float)
    rays = np.einsum("ij,jhw->ihw", Kinv, np.stack([u, v, np.ones_like(u)]))
    depth = np.full((H, W), rng.uniform(15, 40))  # facade
    cam_height = rng.uniform(1.2, 2.0)
    ground = np.where(rays[1] > 1e-3, cam_height / np.maximum(rays[1], 1e-6), np.inf)
    depth = np.minimum(depth, ground)
    for _ in range(rng.integers(1, 4)):
        y0, x0 = rng.integers(0, H - 3), rng.integers(0, W - 3)
        y1, x1 = y0 + rng.integers(2, H // 2), x0 + rng.integers(2, W // 2)
        depth[y0:y1, x0:x1] = np.minimum(depth[y0:y1, x0:x1], rng.uniform(3, 12))
    depth[: rng.integers(0, H // 4)] = 0.0  # sky
    return depth


def random_pair(seed, B=2, H=16, W=24):
    rng = np.random.default_rng(seed)
    K = make_K(H, W, B)
    depth_t = torch.stack([torch.from_numpy(piecewise_planar_depth(rng, H, W, K[0].numpy()))[None] for _ in range(B)])
    depth_s = torch.stack([torch.from_numpy(piecewise_planar_depth(rng, H, W, K[0].numpy()))[None] for _ in range(B)])
    vec = torch.from_numpy(np.concatenate([rng.normal(0, 0.6, (B, 3)), rng.normal(0, 0.03, (B, 3))], 1))
    return depth_t, depth_s, G.pose_vec_to_mat(vec), K


class TestComputeMasks:
    def test_smoke_and_types(self, device):
        depth = torch.full((2, 1, 8, 12), 5.0, device=device)
        masks_t, masks_s = compute_masks(depth, depth, torch.eye(4, device=device).expand(2, 4, 4), make_K(8, 12, 2, torch.float32, device))
        assert isinstance(masks_t, Masks) and isinstance(masks_s, Masks)
        for m in (*masks_t, *masks_s):
            assert m.shape == (2, 1, 8, 12) and m.dtype == torch.float32 and m.device.type == device.type

    def test_identity_pose_keeps_everything(self, device):
        rng = np.random.default_rng(0)
        H, W = 32, 48
        K = make_K(H, W, 3, device=device)
        depth = torch.from_numpy(rng.uniform(1, 50, (3, 1, H, W))).to(device)
        for m in (*compute_masks(depth, depth, translation(batch=3, device=device), K, repeats=3)[0],):
            assert m.min().item() == 1.0

    def test_invalid_depth_is_in_no_mask_and_marks_nothing(self):
        H, W = 10, 14
        depth = torch.full((1, 1, H, W), 4.0, dtype=torch.float64)
        depth[0, 0, 2, 3] = 0.0
        depth[0, 0, 5, 5] = float("nan")
        depth[0, 0, 7, 9] = -1.0
        masks_t, masks_s = compute_masks(depth, depth, translation(batch=1), make_K(H, W))
        for m in (*masks_t, *masks_s):
            assert m[0, 0, 2, 3] == 0 and m[0, 0, 5, 5] == 0 and m[0, 0, 7, 9] == 0
        # The source's invalid pixel marks nothing: with identity pose only it covers its own cell,
        # but its neighbours' landing points cover it too, so the target pixel (valid) stays covered.
        assert masks_t.blank.sum() == H * W - 3

    def test_lateral_translation_edge_strip_has_analytic_width(self):
        H, W, Z, tx = 12, 60, 10.0, 0.9
        K = make_K(H, W)
        shift = K[0, 0, 0].item() * tx / Z  # pixels every point moves left in the source
        assert shift % 1 != 0
        depth = torch.full((1, 1, H, W), Z, dtype=torch.float64)
        masks_t, masks_s = compute_masks(depth, depth, translation(tx), K)
        width = math.ceil(shift)  # target columns u with u - shift < 0 leave the view
        expected_t = torch.ones(H, W, dtype=torch.float64)
        expected_t[:, :width] = 0
        assert torch.equal(masks_t.edge[0, 0], expected_t)
        expected_s = torch.ones(H, W, dtype=torch.float64)
        expected_s[:, W - width:] = 0  # source columns u with u + shift > W - 1 leave the target
        assert torch.equal(masks_s.edge[0, 0], expected_s)
        assert torch.equal(masks_t.overlap, masks_t.edge)  # a plane moving sideways hides nothing

    def test_box_in_front_of_wall_occludes_analytic_band(self):
        H, W, Z_wall, Z_box, tx = 20, 120, 30.0, 6.0, 0.6
        K = make_K(H, W)
        fx = K[0, 0, 0].item()
        a, b = 60, 80  # box columns in the target
        depth = torch.full((1, 1, H, W), Z_wall, dtype=torch.float64)
        depth[..., 5:15, a:b] = Z_box
        masks_t, _ = compute_masks(depth, depth.clone(), translation(tx), K)
        band = fx * tx / Z_box - fx * tx / Z_wall  # wall pixels left of the box hidden behind it in the source
        occluded = (masks_t.edge - masks_t.overlap)[0, 0]
        row_counts = occluded[5:15].sum(dim=1)
        assert torch.all((row_counts - band).abs() <= 1.0), (row_counts, band)
        assert occluded[:5].sum() == 0 and occluded[15:].sum() == 0
        cols = occluded[10].nonzero().flatten()
        assert cols.min() >= a - band - 1 and cols.max() < a  # the band sits just left of the box

    def test_tolerance_does_not_hide_real_occluders(self):
        H, W, K = 20, 120, make_K(20, 120)
        depth = torch.full((1, 1, H, W), 30.0, dtype=torch.float64)
        depth[..., 5:15, 60:80] = 6.0
        m0 = compute_masks(depth, depth, translation(0.6), K)[0].overlap
        m5 = compute_masks(depth, depth, translation(0.6), K, overlap_tolerance=0.05)[0].overlap
        assert torch.equal(m0, m5)

    def test_forward_motion_blank_border_band(self):
        H, W, Z, tz = 40, 64, 10.0, 2.0
        K = make_K(H, W)
        depth_t = torch.full((1, 1, H, W), Z, dtype=torch.float64)
        depth_s = torch.full((1, 1, H, W), Z + tz, dtype=torch.float64)
        masks_t, masks_s = compute_masks(depth_t, depth_s, translation(tz=-tz), K)  # source behind: it sees more
        # The source is farther: target pixels contract towards the centre in the source, and source
        # pixels spread out over the target, covering it all.
        assert masks_t.blank.min() == 1.0
        # The source sees a wider field: its border band lands outside the target (edge) and no
        # target pixel lands there (blank). Width of the band: cx·(1 − Z/(Z + tz)).
        cx = K[0, 0, 2].item()
        band = cx * (1 - Z / (Z + tz))
        for mask in (masks_s.blank, masks_s.edge):
            dropped = (mask[0, 0, H // 2] == 0).nonzero().flatten()
            assert abs(len(dropped[dropped < W // 2]) - band) <= 1.0, (len(dropped), band)
            assert abs(len(dropped[dropped >= W // 2]) - band) <= 1.0, (len(dropped), band)

    def test_tolerance_recovers_contracting_surfaces(self):
        # Forward motion with the source farther away: target pixels of one plane contract into
        # shared source cells; τ = 0 marks all but one of them occluded, a small τ keeps them.
        H, W, Z, tz = 40, 64, 10.0, 2.0
        K = make_K(H, W)
        depth_t = torch.full((1, 1, H, W), Z, dtype=torch.float64)
        depth_s = torch.full((1, 1, H, W), Z + tz, dtype=torch.float64)
        strict = compute_masks(depth_t, depth_s, translation(tz=-tz), K)[0].overlap.mean()
        loose = compute_masks(depth_t, depth_s, translation(tz=-tz), K, overlap_tolerance=0.02)[0].overlap.mean()
        assert strict < 0.9 and loose == 1.0

    @pytest.mark.parametrize("repeats,tol", [(0, 0.0), (3, 0.0), (3, 0.03)])
    def test_agrees_with_loop_reference(self, repeats, tol):
        agreement = []
        for seed in range(4):
            depth_t, depth_s, T, K = random_pair(seed)
            masks_t, masks_s = compute_masks(depth_t, depth_s, T, K, repeats=repeats, overlap_tolerance=tol)
            ref_t, ref_s = reference_masks(depth_t, depth_s, T, K, repeats=repeats, tol=tol)
            for ours, ref in ((masks_t, ref_t), (masks_s, ref_s)):
                for key in ("edge", "overlap", "blank", "combined"):
                    agreement.append((getattr(ours, key).numpy() == ref[key]).mean())
        assert min(agreement) >= 0.995, agreement
        # and the scenes are not trivial: something is masked out
        assert masks_t.combined.mean() < 0.99

    def test_batch_independence(self):
        depth_t, depth_s, T, K = random_pair(7, B=3)
        batched = compute_masks(depth_t, depth_s, T, K, repeats=2, overlap_tolerance=0.01)
        for b in range(3):
            alone = compute_masks(depth_t[b:b + 1], depth_s[b:b + 1], T[b:b + 1], K[b:b + 1], repeats=2, overlap_tolerance=0.01)
            for x, y in zip((*batched[0], *batched[1]), (*alone[0], *alone[1])):
                assert torch.equal(x[b:b + 1], y)

    def test_repeats_only_remove_pixels(self):
        depth_t, depth_s, T, K = random_pair(3)
        kept = [compute_masks(depth_t, depth_s, T, K, repeats=r)[0].combined.sum().item() for r in range(4)]
        assert all(a >= b for a, b in zip(kept, kept[1:]))

    def test_device_agreement(self, device):
        depth_t, depth_s, T, K = random_pair(11)
        cpu = compute_masks(depth_t.float(), depth_s.float(), T.float(), K.float(), repeats=3)
        dev = compute_masks(depth_t.float().to(device), depth_s.float().to(device), T.float().to(device), K.float().to(device), repeats=3)
        for x, y in zip((*cpu[0], *cpu[1]), (*dev[0], *dev[1])):
            assert (x != y.cpu()).float().mean() < 0.005

    def test_no_gradient(self):
        depth = torch.full((1, 1, 8, 8), 3.0, requires_grad=True)
        masks_t, _ = compute_masks(depth, depth, torch.eye(4)[None], make_K(8, 8, 1, torch.float32))
        assert not masks_t.combined.requires_grad

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match="depth_t and depth_s"):
            compute_masks(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 5), torch.eye(4)[None], make_K(4, 4, 1, torch.float32))


class TestSingleMasks:
    """Each mask alone on a case worked out by hand."""

    def test_edge_mask_bounds_and_behind_camera(self):
        pixels = torch.tensor([[-0.0005, 3.0005, 3.002, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(1, 2, 1, 4)
        points = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1.0, 1.0, 1.0, -1.0]]).view(1, 3, 1, 4)
        valid = torch.ones(1, 1, 1, 4, dtype=torch.bool)
        # image width 4 (x in [0, 3]); H = 1
        assert edge_mask(pixels, points, valid).flatten().tolist() == [True, True, False, False]

    def test_overlap_keeps_nearest_and_ties(self):
        # Three pixels land in cell x=1 (1.2, 0.6, 1.4), distances 5, 3, 3 -> the two at 3 are kept.
        pixels = torch.tensor([[1.2, 0.6, 1.4, 2.9], [0.0, 0.0, 0.0, 0.0]]).view(1, 2, 1, 4)
        points = torch.zeros(1, 3, 1, 4)
        points[0, 2, 0] = torch.tensor([5.0, 3.0, 3.0, 9.0])
        edge = torch.ones(1, 1, 1, 4, dtype=torch.bool)
        assert overlap_mask(pixels, points, edge).flatten().tolist() == [False, True, True, True]
        assert overlap_mask(pixels, points, edge, tolerance=0.7).flatten().tolist() == [True, True, True, True]

    def test_blank_marks_four_neighbours_without_wraparound(self):
        H, W = 3, 4
        pixels = torch.full((1, 2, H, W), -50.0)  # everything lands far away ...
        pixels[0, :, 0, 0] = torch.tensor([1.5, 0.5])  # ... but one pixel covers (x,y) in {1,2}x{0,1}
        pixels[0, :, 0, 1] = torch.tensor([-0.0005, 1.2])  # floor -> x = -1: covers only x = 0, y in {1, 2}
        marks = torch.ones(1, 1, H, W, dtype=torch.bool)
        valid = torch.ones(1, 1, H, W, dtype=torch.bool)
        covered = blank_mask(pixels, marks, valid)[0, 0].int().tolist()
        assert covered == [[0, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]]

    def test_project_into_other_handles_invalid(self):
        depth = torch.tensor([[[[0.0, float("inf")], [2.0, 3.0]]]])
        pixels, points = project_into_other(depth, torch.eye(4)[None], make_K(2, 2, 1, torch.float32))
        assert torch.isfinite(pixels).all() and torch.isfinite(points).all()
        assert valid_depth(depth).flatten().tolist() == [False, False, True, True]
