"""The single-key voxelisation is bit-identical to the row-wise ``torch.unique(dim=0)`` reference
(tests/geometry/reference_voxelize.py, the implementation before issue 22): real nuScenes and
SemanticKITTI scans, generated and random scans, and the edge cases; the key packing refuses
coordinate ranges it cannot address."""

import math

import numpy as np
import pytest
import reference_voxelize as ref
import torch

from afov_ray.geometry.voxel_kernels import unique_first_cells
from afov_ray.geometry.voxelize import (
    majority_labels,
    unique_first,
    voxelize,
    voxelize_batch,
)
from afov_ray.models.synthetic_scan import lidar_like_scan

FIELDS = ("coords", "feats", "indexes", "inverse", "labels", "voxel_offsets", "point_offsets")


def assert_identical(a, b):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if x is None or y is None:
            assert x is None and y is None, f
            continue
        assert x.dtype == y.dtype, (f, x.dtype, y.dtype)
        assert x.shape == y.shape, (f, x.shape, y.shape)
        assert torch.equal(x, y), f


def check(points, labels=None, **kw):
    new, old = voxelize(points, labels, **kw), ref.voxelize(points, labels, **kw)
    assert_identical(new, old)
    return new


@pytest.fixture(scope="module")
def nuscenes_scans(real_data):
    files = sorted((real_data / "nuscenes_scene0916" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    assert len(files) == 5
    return [torch.from_numpy(np.fromfile(f, dtype=np.float32).reshape(-1, 5)) for f in files]


@pytest.mark.parametrize("grid", ["cylindrical", "cartesian"])
@pytest.mark.parametrize("label_mode", ["majority", "first"])
def test_real_nuscenes_scans(nuscenes_scans, grid, label_mode):
    g = torch.Generator().manual_seed(0)
    for pts in nuscenes_scans:
        labels = torch.randint(0, 17, (pts.shape[0],), generator=g)
        labels[torch.rand(pts.shape[0], generator=g) < 0.3] = 0  # ignored points
        v = check(pts, labels, grid=grid, label_mode=label_mode)
        assert 10_000 < v.coords.shape[0] < pts.shape[0]  # a real scan: many voxels, many shared


@pytest.mark.parametrize("kw", [{"voxel_size": 0.2}, {"phi_bin_deg": 2.0}, {"feature": "xyz_intensity"},
                                {"feature": "ones", "grid": "cartesian", "voxel_size": 0.05}])
def test_real_nuscenes_other_settings(nuscenes_scans, kw):
    check(nuscenes_scans[0], torch.randint(0, 17, (nuscenes_scans[0].shape[0],)), **kw)


def test_real_semantickitti_scan(real_data):
    d = real_data / "semantickitti_000000"
    pts = torch.from_numpy(np.fromfile(d / "000000.bin", dtype=np.float32).reshape(-1, 4))
    sem = torch.from_numpy((np.fromfile(d / "000000.label", dtype=np.uint32) & 0xFFFF).astype(np.int64))
    assert pts.shape[0] == 123_389
    for mode in ("majority", "first"):
        check(pts, sem, intensity_offset=1.0, label_mode=mode)
        check(pts, sem, grid="cartesian", voxel_size=0.05, label_mode=mode, ignore_label=0)


def test_generated_and_random_scans():
    for seed in range(4):
        pts = lidar_like_scan(20_000, seed=seed)
        check(pts, torch.randint(0, 5, (pts.shape[0],)))
        check(pts, grid="cartesian")
    rng = np.random.default_rng(1)
    for scale, n in ((0.5, 5000), (30.0, 20_000), (1e3, 20_000)):
        pts = torch.from_numpy((rng.standard_normal((n, 4)) * scale).astype(np.float32))
        lab = torch.from_numpy(rng.integers(0, 4, n))
        for grid in ("cylindrical", "cartesian"):
            check(pts, lab, grid=grid)
            check(pts, lab, grid=grid, label_mode="first")


def test_points_on_and_next_to_angular_bin_edges():
    # atan2 exactly at / one float step either side of whole degrees (the bins whose floor the fast
    # vectorised atan2 could get wrong), the axes, signed zeros and x = 0
    deg = np.arange(-180, 181, dtype=np.float64)
    r = np.array([0.5, 1.0, 7.3, 42.0])
    x = (np.cos(np.radians(deg))[:, None] * r).astype(np.float32).ravel()
    y = (np.sin(np.radians(deg))[:, None] * r).astype(np.float32).ravel()
    xs = np.concatenate([x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf), x, x])
    ys = np.concatenate([y, y, y, np.nextafter(y, np.inf), np.nextafter(y, -np.inf)])
    special = np.array([[0.0, 0.0], [-0.0, 0.0], [0.0, -0.0], [-1.0, 0.0], [-1.0, -0.0], [0.0, 3.0], [0.0, -3.0],
                        [-0.0, -1e-30], [1e-30, -2.0]], dtype=np.float32)
    xy = np.concatenate([np.stack([xs, ys], 1), special])
    pts = np.zeros((len(xy), 4), dtype=np.float32)
    pts[:, :2] = xy
    pts[:, 2] = np.linspace(-2, 2, len(xy))
    pts = torch.from_numpy(pts)
    for bin_deg in (1.0, 0.5, 3.0):
        check(pts, phi_bin_deg=bin_deg)
    check(pts.t().contiguous().t())  # column-major points: contiguous columns in the reference too
    check(pts[:, :3].contiguous(), feature="ones")  # (N, 3) points


def test_edge_cases():
    empty = torch.zeros(0, 4)
    v = check(empty, torch.zeros(0, dtype=torch.int64))
    assert v.coords.shape == (0, 3) and v.inverse.shape == (0,)
    check(empty, torch.zeros(0, dtype=torch.int64), label_mode="first")
    check(empty)
    one = torch.tensor([[-3.21, 1.5, -0.7, 9.0]])
    v = check(one, torch.tensor([4]))
    assert v.indexes.tolist() == [0] and v.inverse.tolist() == [0] and v.labels.tolist() == [4]
    neg = torch.tensor([[-0.05, -0.05, -0.05, 1.0], [-0.15, -10.0, -99.9, 2.0], [-0.05, -0.05, -0.05, 3.0]])
    for grid in ("cylindrical", "cartesian"):
        v = check(neg, torch.tensor([1, 2, 1]), grid=grid)
        assert v.inverse.tolist() == [0, 1, 0]
    dup = lidar_like_scan(500, seed=9).repeat(3, 1)  # every point three times
    v = check(dup, torch.arange(dup.shape[0]) % 3)
    assert v.inverse.view(3, -1).eq(v.inverse[: dup.shape[0] // 3]).all()
    same_voxel = torch.tensor([[5.01, 0.02, 1.01, 1.0]]) + torch.rand(50, 4) * torch.tensor([0.05, 0.0, 0.05, 0.0])
    v = check(same_voxel, torch.tensor([0, 2, 2, 3, 3] * 10), grid="cartesian")
    assert v.coords.shape[0] == 1 and v.labels.tolist() == [2]  # tie 2/3 -> smallest
    all_ignored = check(same_voxel, torch.zeros(50, dtype=torch.int64), grid="cartesian")
    assert all_ignored.labels.tolist() == [0]


def test_large_coordinate_ranges_pack_or_refuse():
    # +-1e5 m on a 0.1 m cartesian grid: 2e6 cells per axis, 8e18 cells in all -> one int64 key each
    far = torch.tensor([[1e5, -1e5, 1e5, 0.0], [-1e5, 1e5, -1e5, 1.0], [0.0, 0.0, 0.0, 2.0], [1e5, -1e5, 1e5, 3.0]])
    v = check(far, grid="cartesian")
    assert v.inverse.tolist() == [0, 1, 2, 0]
    # +-2e8 m: 4e9 cells per axis; the product overflows the packing -> a clear error, no collision
    huge = torch.tensor([[2e8, -2e8, 2e8, 0.0], [-2e8, 2e8, -2e8, 1.0]])
    with pytest.raises(ValueError, match=r"axis ranges .*int64"):
        voxelize(huge, grid="cartesian")


def test_cell_keys_span_int32_extremes_and_refuse_what_cannot_be_packed():
    top = np.array([0, 2**31 - 1], dtype=np.int32)
    bot = np.array([-(2**31), 0], dtype=np.int32)
    # rows (-2**31, 0) and (0, 2**31 - 1): extents 2**31 + 1 and 2**31, one int64 key, no wrap
    idx, inv = unique_first_cells(np.stack([bot, top], axis=1)[[0, 1, 0]])
    assert idx.tolist() == [0, 1] and inv.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"\[-2147483648, 0\]"):   # three such axes: 2**93 cells
        unique_first_cells(np.stack([bot, top, bot], axis=1))
    assert [a.shape for a in unique_first_cells(np.zeros((0, 3), np.int32))] == [(0,), (0,)]
    with pytest.raises(ValueError, match="integers"):
        unique_first_cells(np.zeros((3, 3), np.float32))


def test_unique_first_matches_reference_on_int_rows():
    rng = np.random.default_rng(3)
    for d in (1, 2, 3, 4):
        for n in (0, 1, 7, 3000):
            c = torch.from_numpy(rng.integers(-5, 6, (n, d)).astype(np.int32))
            for x, y in zip(unique_first(c), ref.unique_first(c)):
                assert torch.equal(x, y)
    idx, inv = unique_first_cells(np.array([[5], [3], [5], [5], [1], [3]], dtype=np.int64))
    assert idx.tolist() == [0, 1, 4] and inv.tolist() == [0, 1, 0, 0, 2, 1]  # hand-computed


def test_unique_first_cells_on_wide_and_colliding_keys():
    # values near 2**62 and negative ones hash like any other
    key = np.array([2**62 + 5, 7, 2**62 + 5, 7, 2**62, -3, -3], dtype=np.int64)
    idx, inv = unique_first_cells(key[:, None])
    assert idx.tolist() == [0, 1, 4, 5] and inv.tolist() == [0, 1, 0, 1, 2, 3, 3]
    # many keys that share their low bits (multiples of 2**40), in a scrambled order, against numpy
    rng = np.random.default_rng(0)
    key = rng.integers(0, 5000, 40_000).astype(np.int64) << 40
    idx, inv = unique_first_cells(key[:, None])
    _, first, back = np.unique(key, return_index=True, return_inverse=True)
    assert idx.tolist() == sorted(first.tolist())
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    assert np.array_equal(inv, rank[back.ravel()])


@pytest.mark.parametrize("ignore", [0, 255, 3, -1])
def test_majority_labels_match_reference(ignore):
    rng = np.random.default_rng(abs(ignore))
    for trial in range(60):
        n = int(rng.integers(0, 200))
        nv = int(rng.integers(1, 15)) if n else 0
        inv = torch.from_numpy(rng.integers(0, nv, n) if n else np.zeros(0, np.int64))
        lab = rng.integers(0, 6, n)
        lab[rng.random(n) < 0.4] = max(ignore, 0)
        lab = torch.from_numpy(lab)
        want = ref.majority_labels(lab, inv, nv, ignore)
        assert torch.equal(majority_labels(lab, inv, nv, ignore), want)
        if ignore >= 0:  # the compiled vote also runs on the shards' uint8 labels as stored
            assert torch.equal(majority_labels(lab.to(torch.uint8), inv, nv, ignore), want)
    with pytest.raises(ValueError, match="negative"):
        majority_labels(torch.tensor([-2, 1]), torch.tensor([0, 0]), 1)


def test_batched_form_matches_reference():
    scans = [lidar_like_scan(1500, seed=1), lidar_like_scan(1200, seed=2), torch.zeros(0, 4)]
    labels = [torch.randint(0, 5, (s.shape[0],)) for s in scans]
    assert_identical(voxelize_batch(scans, labels), ref.voxelize_batch(scans, labels))
    assert_identical(voxelize_batch(scans, grid="cartesian"), ref.voxelize_batch(scans, grid="cartesian"))


def test_numpy_labels_accepted():
    pts = lidar_like_scan(800, seed=4)
    lab = np.random.default_rng(0).integers(0, 5, pts.shape[0]).astype(np.uint8)
    lab.setflags(write=False)  # e.g. a view of an Arrow buffer
    assert_identical(voxelize(pts, lab), ref.voxelize(pts, torch.from_numpy(lab.astype(np.int64))))
    assert math.isclose(float(voxelize(pts).feats.sum()), float(ref.voxelize(pts).feats.sum()))
