"""Pure-PyTorch engine against dense torch convolutions (float64), gradcheck, kernel ordering."""

import torch
import torch.nn.functional as F

from afov_ray.models.engines.layout import (
    canonical_to_dense,
    canonical_to_dense_transposed,
    canonical_to_spconv,
    dense_to_canonical,
    kernel_offsets,
    spconv_to_canonical,
)
from afov_ray.models.engines.torch_engine import TorchEngine, _GatherGemmScatter, submanifold_map
from afov_ray.models.layers import SparseConv

G = 6  # dense grid side (even); coordinates span [-4, 1] so floor semantics on negatives are exercised
LO = -4


def _sparse_grid(seed, occupancy=0.3, cin=3):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(G, G, G, generator=g) < occupancy
    idx = torch.nonzero(occ)
    coords = torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), idx + LO], 1)
    feats = torch.randn(len(idx), cin, generator=g, dtype=torch.float64)
    return coords, feats


def _dense(coords, feats, side, lo):
    d = torch.zeros(1, feats.shape[1], side, side, side, dtype=feats.dtype)
    i = (coords[:, 1:] - lo).long()
    d[0, :, i[:, 0], i[:, 1], i[:, 2]] = feats.t()
    return d


def _at(dense, coords, lo):
    i = (coords[:, 1:] - lo).long()
    return dense[0, :, i[:, 0], i[:, 1], i[:, 2]].t()


def test_kernel_offsets_minkowski_order():
    off = kernel_offsets(3)
    assert off[0].tolist() == [-1, -1, -1] and off[1].tolist() == [0, -1, -1]  # x fastest
    assert off[3].tolist() == [-1, 0, -1] and off[9].tolist() == [-1, -1, 0] and off[13].tolist() == [0, 0, 0]
    assert kernel_offsets(2).tolist()[:3] == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_layout_conversions_round_trip():
    k = torch.randn(27, 4, 5)
    assert torch.equal(dense_to_canonical(canonical_to_dense(k)), k)
    assert torch.equal(dense_to_canonical(canonical_to_dense_transposed(k), transposed=True), k)
    assert torch.equal(spconv_to_canonical(canonical_to_spconv(k)), k)
    assert canonical_to_spconv(k).shape == (5, 3, 3, 3, 4)
    one = torch.randn(4, 5)
    assert torch.equal(spconv_to_canonical(canonical_to_spconv(one), one_by_one=True), one)


def test_submanifold_conv_matches_dense_conv3d():
    coords, feats = _sparse_grid(0)
    conv = SparseConv(3, 4, 3).double()
    x = TorchEngine().begin(coords, feats)
    out = conv(x).feats
    dense = F.conv3d(_dense(coords, feats, G, LO), canonical_to_dense(conv.kernel.detach()), padding=1)
    torch.testing.assert_close(out.detach(), _at(dense, coords, LO), rtol=1e-12, atol=1e-12)


def test_stride2_conv_matches_dense_conv3d():
    coords, feats = _sparse_grid(1)
    conv = SparseConv(3, 4, 2, "down").double()
    y = conv(TorchEngine().begin(coords, feats))
    assert y.stride == 2
    expect_coords = torch.unique(torch.div(coords[:, 1:], 2, rounding_mode="floor"), dim=0)
    assert torch.equal(torch.unique(y.coords[:, 1:].long(), dim=0), expect_coords)
    dense = F.conv3d(_dense(coords, feats, G, LO), canonical_to_dense(conv.kernel.detach()), stride=2)
    torch.testing.assert_close(y.feats.detach(), _at(dense, y.coords, LO // 2), rtol=1e-12, atol=1e-12)


def test_transposed_conv_matches_dense_conv_transpose3d():
    coords, feats = _sparse_grid(2)
    eng = TorchEngine()
    x = eng.begin(coords, feats)
    coarse = SparseConv(3, 3, 2, "down").double()(x)
    up = SparseConv(3, 5, 2, "up").double()
    out = up(coarse, x)
    dense_in = _dense(coarse.coords, coarse.feats.detach(), G // 2, LO // 2)
    dense = F.conv_transpose3d(dense_in, canonical_to_dense_transposed(up.kernel.detach()), stride=2)
    torch.testing.assert_close(out.feats.detach(), _at(dense, coords, LO), rtol=1e-12, atol=1e-12)


def test_gradcheck_gather_gemm_scatter():
    coords, _ = _sparse_grid(3, occupancy=0.15)
    kmap = submanifold_map(coords, 3)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(coords), 2, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(27, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    fn = lambda f, w: _GatherGemmScatter.apply(f, w, kmap.in_idx, kmap.out_idx, kmap.counts, len(coords))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (feats, weight))


def test_duplicate_voxels_rejected():
    import pytest

    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match="duplicate"):
        SparseConv(1, 1, 3)(TorchEngine().begin(coords, torch.ones(2, 1)))
