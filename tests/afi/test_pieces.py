"""Unit tests of AFI pieces (afov-reference.md sections 1.2-1.5) and robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from afov_ray.afi import (AFIConfig, afi_refine, afi_refine_batch, assist_probability, decoder_kappas,
                          fibonacci_directions, furthest_point_sample, level_sizes, near_ego_ground)
from afov_ray.afi.network import Level, relevance
from afov_ray.errors import DataError
from tests.afi.reference_afi import fib_dirs, fps


def test_fibonacci_bins():
    v = fibonacci_directions(20)
    assert v.shape == (20, 3)
    torch.testing.assert_close(v[0], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(20, dtype=torch.float64))
    cos = v @ v.T
    cos.fill_diagonal_(-2.0)
    closest = math.degrees(math.acos(float(cos.max())))
    assert 26.4 < closest < 26.6
    np.testing.assert_allclose(v.numpy(), fib_dirs(20), atol=1e-15)


def test_level_sizes_and_kappas():
    cfg = AFIConfig()
    sizes = level_sizes(34000, cfg)
    assert sizes == [34000, 1365, 455, 151, 50]
    assert decoder_kappas(sizes, cfg) == [0.01, 0.01, 0.3, 0.01]     # steps 50->151, ..., 1365->N
    assert decoder_kappas(level_sizes(4095, cfg), cfg) == [0.01, 0.01, 0.3, 0.3]   # 4095 == 3*1365
    assert level_sizes(200, AFIConfig(points=96)) == [200, 32, 10, 3, 1]
    assert level_sizes(100, cfg) == [100, 100, 100, 100, 50]            # N < G_1: clamp
    assert level_sizes(0, cfg) == [0, 0, 0, 0, 0]
    lst = AFIConfig(kappa_mode="list", decoder_kappas=(0.1, 0.2, 0.3, 0.4))
    assert decoder_kappas(sizes, lst) == [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match="decoder_kappas"):
        AFIConfig(kappa_mode="list", decoder_kappas=(0.1,)).validate()


def test_fps_deterministic_origin_excluded_and_matches_reference():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(300, 3, generator=g, dtype=torch.float64) * 3
    near = [5, 17, 40]
    xyz[near] = torch.tensor([[0.0, 0.0, 0.0], [0.01, -0.01, 0.02], [0.0, 0.03, 0.0]], dtype=torch.float64)
    xyz[0] = torch.tensor([0.005, 0.0, 0.0], dtype=torch.float64)       # start point is near the origin too
    a = furthest_point_sample(xyz[None], 64)
    b = furthest_point_sample(xyz[None], 64)
    assert torch.equal(a, b) and a[0, 0] == 0
    assert not set(near) & set(a[0].tolist())
    assert a[0, 1:].unique().numel() == 63
    assert a[0].tolist() == fps(xyz.numpy(), 64)
    # batched with padding == unbatched
    pad = torch.cat([xyz[:200], torch.zeros(100, 3, dtype=torch.float64)])[None]
    both = torch.cat([xyz[None], pad])
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, 200:] = False
    ab = furthest_point_sample(both, 64, valid)
    assert torch.equal(ab[0], a[0])
    assert ab[1].tolist() == fps(xyz[:200].numpy(), 64)


def _bag(entries, A=20):
    """entries: list of (bin, weight, direction, extent) -> (w (A,), mu_hat (A,3), ell (A,))."""
    w = torch.zeros(A, dtype=torch.float64); mh = torch.zeros(A, 3, dtype=torch.float64)
    ell = torch.zeros(A, dtype=torch.float64)
    for a, wt, direction, ext in entries:
        d = torch.tensor(direction, dtype=torch.float64)
        w[a], mh[a], ell[a] = wt, d / d.norm(), ext
    return w, mh, ell


def test_relevance_two_point_hand_case():
    """c = (0,0,0), j = (1,0,0), u_cj = +x, d = 1.
    centre bag: +x (w .5, l .4), -x (w .3, l .2), +y (w .2, l 1)  -> A = .8, F_c = .4, R_c = .2
    neighbour bag: +x (w .6, l .3), 10 deg off x (w .4, l 5; cos .985 < .995) -> B = .6, F_j = .3, R_j = 0
    T = (.4 + .2 + .3 + 0) / (1 + .2 + .3) = .6; rho = .8 * .6 * .6 = .288; the centre's own rho = 0."""
    ten = math.radians(10)
    wc, mc, lc = _bag([(0, .5, (1, 0, 0), .4), (1, .3, (-1, 0, 0), .2), (2, .2, (0, 1, 0), 1.0)])
    wj, mj, lj = _bag([(3, .6, (1, 0, 0), .3), (4, .4, (math.cos(ten), math.sin(ten), 0), 5.0)])
    prev = Level(xyz=torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64), x=None,
                 w=torch.stack([wc, wj])[None], mu_hat=torch.stack([mc, mj])[None],
                 ell=torch.stack([lc, lj])[None])
    cidx = torch.tensor([[0]])
    nidx = torch.tensor([[[0, 1]]])
    u = torch.tensor([[[[0.0, 0, 0], [1.0, 0, 0]]]], dtype=torch.float64)
    d = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    rho = relevance(u, d, prev, cidx, nidx, 0.995)
    torch.testing.assert_close(rho[0, 0], torch.tensor([0.0, 0.288], dtype=torch.float64))
    # strict threshold: gamma equal to a cosine excludes that bin; no aligned bin at j -> T = 0
    wj2, mj2, lj2 = _bag([(4, 1.0, (math.cos(ten), math.sin(ten), 0), 5.0)])
    prev.w[0, 1], prev.mu_hat[0, 1], prev.ell[0, 1] = wj2, mj2, lj2
    assert float(relevance(u, d, prev, cidx, nidx, 0.995)[0, 0, 1]) == 0.0
    assert float(relevance(u, d, prev, cidx, nidx, 0.98)[0, 0, 1]) > 0.0


def test_ground_step_few_ring_points_is_skipped_not_crash():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(6, 20, (300, 2)), rng.uniform(-1, 1, 300)]
    xyz[:5] = [[3.0, 0, -1.8], [0, 3.0, -1.8], [-3, 0, -1.8], [1.0, 0.5, -1.8], [0, -4, -1.8]]
    g = near_ego_ground(xyz, AFIConfig())
    assert g.status == "skipped_few_points" and g.n_ring == 4 and not g.inliers.any()
    assert not g.vote_mask[3] and g.vote_mask[0]        # r <= 2 still masked
    lab = torch.from_numpy(rng.integers(1, 17, 300))
    out, stats = afi_refine(torch.from_numpy(xyz), lab, AFIConfig())
    assert stats["ground_status"] == "skipped_few_points" and out.shape == (300,)


def test_empty_small_zero_and_duplicate_scans():
    cfg = AFIConfig()
    out, st = afi_refine(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), cfg)
    assert out.shape == (0,) and st["changed_fraction"] == 0.0
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 7, 50):
        xyz = torch.randn(n, 3, generator=g) * 5
        lab = torch.randint(1, 17, (n,), generator=g)
        out, st = afi_refine(xyz, lab, cfg)
        assert out.shape == (n,) and st["level_sizes"][1] == n and (out >= 0).all()
    cfg = AFIConfig(points=96)
    xyz = torch.randn(500, 3, generator=g) * 5
    out, st = afi_refine(xyz, torch.zeros(500, dtype=torch.long), cfg)
    assert (out == 0).all()
    out, st = afi_refine(xyz, torch.zeros(500, dtype=torch.long), AFIConfig(class0_mass=False, points=96))
    assert (out == 0).all()
    dup = torch.cat([xyz[:100], xyz[:100], torch.zeros(5, 3)])
    lab = torch.randint(1, 17, (205,), generator=g)
    out, st = afi_refine(dup, lab, cfg)
    assert out.shape == (205,) and 0 <= st["changed_fraction"] <= 1


def test_class0_mass_switch():
    """Unlabelled (0) points surrounded by a labelled line: with class0_mass=False they are
    relabelled from the line; officially label 0 is a real class with mass."""
    t = torch.linspace(0, 20, 400, dtype=torch.float64)
    xyz = torch.stack([t + 3, 0.3 * t + 1, torch.zeros_like(t)], 1)
    lab = torch.full((400,), 15)
    lab[::10] = 0
    off, _ = afi_refine(xyz, lab, AFIConfig(class0_mass=False, ground_step=False, points=384))
    assert (off[::10] == 15).float().mean() > 0.9


def test_batch_equals_sequential_and_bad_input():
    g = torch.Generator().manual_seed(2)
    cfg = AFIConfig(points=150)
    scans = []
    for n in (600, 900, 40, 0, 700):
        scans.append((torch.randn(n, 3, generator=g) * 8, torch.randint(0, 17, (n,), generator=g)))
    batch = afi_refine_batch(scans, cfg)
    for (xyz, lab), (out, st) in zip(scans, batch):
        single, st1 = afi_refine(xyz, lab, cfg)
        assert torch.equal(out, single)
        assert st["changed_fraction"] == st1["changed_fraction"]
    with pytest.raises(DataError, match="scan\\[1\\].*labels outside"):
        afi_refine_batch([scans[0], (scans[1][0], scans[1][1] + 17)], cfg)
    with pytest.raises(DataError, match="frame-7"):
        afi_refine_batch([{"name": "frame-7", "xyz": torch.zeros(4, 2), "labels": torch.zeros(4)}], cfg)


def test_assist_probability_and_seeding():
    r = torch.tensor([0.0, 10.0, 20.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(assist_probability(r, 4.0, 20.0),
                               torch.tensor([0.8, 2 / 3, 0.5, 0.2], dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    n = 4000
    ang = torch.rand(n, generator=g) * 6.283
    xyz = torch.stack([10 * torch.cos(ang), 10 * torch.sin(ang), torch.rand(n, generator=g)], 1)
    lab = torch.full((n,), 15)
    pseudo = torch.randint(0, 17, (n,), generator=g)
    cfg = AFIConfig(use_assist=True, ground_step=False, points=96)
    a, sa = afi_refine(xyz, lab, cfg, pseudo=pseudo, generator=torch.Generator().manual_seed(9))
    b, sb = afi_refine(xyz, lab, cfg, pseudo=pseudo, generator=torch.Generator().manual_seed(9))
    c, sc = afi_refine(xyz, lab, cfg, pseudo=pseudo, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and sa["n_assist_replaced"] == sb["n_assist_replaced"]
    assert sa["n_assist_replaced"] != sc["n_assist_replaced"]
    eligible = int(((pseudo >= 1) & (pseudo <= 10)).sum())
    assert abs(sa["n_assist_replaced"] / eligible - 2 / 3) < 0.05           # pi(10 m) = 2/3
    d, sd = afi_refine(xyz, lab, cfg, pseudo=pseudo)                        # default: cfg.assist_seed
    e, se = afi_refine(xyz, lab, cfg, pseudo=pseudo)
    assert torch.equal(d, e)
