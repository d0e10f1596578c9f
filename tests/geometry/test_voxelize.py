"""Voxelisation (docs/method.md "Voxelisation"): hand-computed indices, label rules, index maps."""

import pytest
import torch

from afov_ray.geometry.voxelize import grid_coordinates, majority_labels, voxelize, voxelize_batch
from afov_ray.models.synthetic_scan import lidar_like_scan


def test_cylindrical_indices_hand_computed():
    pts = torch.tensor([[3.03, 4.04, 0.25, 7.0],      # rho 5.05 -> 50, phi 53.13 deg -> 53, z 2.5 -> 2
                        [-1.0, -1e-3, -0.33, 1.0],    # rho 1.0000005 -> 10, phi -179.94 -> -180, z -3.3 -> -4
                        [0.01, 2.55, 1.05, 2.0]])     # rho 25.5 -> 25, phi 89.78 -> 89, z 10.5 -> 10
    expect = torch.tensor([[50, 53, 2], [10, -180, -4], [25, 89, 10]], dtype=torch.int32)
    assert torch.equal(grid_coordinates(pts), expect)
    v = voxelize(pts)
    assert torch.equal(v.coords, expect) and v.coords.dtype == torch.int32
    assert torch.equal(v.feats[:, 0], torch.tensor([7.0, 1.0, 2.0]))


def test_cartesian_indices_and_phi_bins():
    pts = torch.tensor([[0.15, -0.05, 1.05, 0.0]])
    assert grid_coordinates(pts, "cartesian").tolist() == [[1, -1, 10]]
    assert grid_coordinates(pts, "cartesian", voxel_size=0.5).tolist() == [[0, -1, 2]]
    p2 = torch.tensor([[1.0, 1.0, 0.0]])  # phi 45 deg
    assert grid_coordinates(p2, phi_bin_deg=2.0)[0, 1].item() == 22


def test_first_point_vs_majority_on_crafted_voxel():
    base = torch.tensor([1.234, 0.011, 0.55, 0.0])
    pts = base.repeat(7, 1)
    pts[:, 3] = torch.arange(7, dtype=torch.float32) * 10
    pts[5:, :3] = torch.tensor([5.55, 0.011, 0.55])  # a second voxel
    labels = torch.tensor([0, 3, 5, 5, 0, 7, 2])
    first = voxelize(pts, labels, label_mode="first")
    major = voxelize(pts, labels, label_mode="majority")
    assert first.coords.shape[0] == 2
    assert first.labels.tolist() == [0, 7]           # labels of points 0 and 5
    assert major.labels.tolist() == [5, 2]           # 0 ignored; tie 7/2 -> smallest
    assert first.feats[:, 0].tolist() == [0.0, 50.0]  # representative point's intensity
    assert first.indexes.tolist() == [0, 5]


def test_majority_all_ignored_is_ignored():
    inv = torch.tensor([0, 0, 1])
    assert majority_labels(torch.tensor([0, 0, 4]), inv, 2).tolist() == [0, 4]
    assert majority_labels(torch.tensor([255, 255, 4]), inv, 2, ignore_label=255).tolist() == [255, 4]


def test_inverse_reconstructs_and_indexes_are_first_points():
    pts = lidar_like_scan(3000, seed=3)
    v = voxelize(pts)
    grid = grid_coordinates(pts)
    assert torch.equal(v.coords[v.inverse], grid)
    assert torch.equal(v.inverse[v.indexes], torch.arange(v.coords.shape[0]))
    assert bool((v.indexes[v.inverse] <= torch.arange(pts.shape[0])).all())  # first point of its voxel
    assert bool((v.indexes[1:] > v.indexes[:-1]).all())  # voxels ordered by first point
    assert torch.unique(v.coords, dim=0).shape[0] == v.coords.shape[0]
    v2 = voxelize(pts)
    assert torch.equal(v.coords, v2.coords) and torch.equal(v.inverse, v2.inverse)  # deterministic


def test_batched_form():
    a, b = lidar_like_scan(1500, seed=1), lidar_like_scan(1200, seed=2)
    la, lb = torch.randint(0, 5, (a.shape[0],)), torch.randint(0, 5, (b.shape[0],))
    vb = voxelize_batch([a, b], [la, lb], label_mode="first")
    va, vbb = voxelize(a, la, label_mode="first"), voxelize(b, lb, label_mode="first")
    assert vb.coords.shape == (va.coords.shape[0] + vbb.coords.shape[0], 4)
    assert vb.voxel_offsets.tolist() == [0, va.coords.shape[0], va.coords.shape[0] + vbb.coords.shape[0]]
    assert torch.equal(vb.coords[va.coords.shape[0]:, 1:], vbb.coords)
    assert set(vb.coords[:, 0].tolist()) == {0, 1}
    pts = torch.cat([a, b])
    assert torch.equal(vb.coords[vb.inverse, 1:], torch.cat([grid_coordinates(a), grid_coordinates(b)]))
    assert torch.equal(vb.feats[:, 0], pts[vb.indexes, 3])
    assert torch.equal(vb.labels, torch.cat([la, lb])[vb.indexes])


def test_bad_input_names_field():
    with pytest.raises(ValueError, match="points"):
        voxelize(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="labels"):
        voxelize(torch.zeros(4, 4), torch.zeros(3))


@pytest.mark.minkowski
def test_matches_minkowski_sparse_quantize():
    from afov_ray.errors import EngineNotInstalled
    from afov_ray.models.engines.minkowski_engine import import_minkowski

    try:
        ME = import_minkowski()
    except EngineNotInstalled as exc:
        pytest.skip(str(exc))
    pts = lidar_like_scan(4000, seed=5)
    x, y, z = pts[:, :3].T
    import numpy as np
    coords_aug = torch.cat(((torch.sqrt(x**2 + y**2) / 0.1)[:, None], (torch.atan2(y, x) * 180 / np.pi)[:, None],
                            (z / 0.1)[:, None]), 1)
    disc, idx, inv = ME.utils.sparse_quantize(coords_aug, return_index=True, return_inverse=True)
    v = voxelize(pts)
    assert torch.equal(v.coords, disc.int())
    assert torch.equal(v.indexes, idx.long())
    assert torch.equal(v.inverse, inv.long())
