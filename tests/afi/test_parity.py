"""The fast AFI equals the slow float64 transcription (tests/afi/reference_afi.py) on small
hand-built scenes, with points=96 so the levels are N -> 32 -> 10 -> 3 -> 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afov_ray.afi import AFIConfig, afi_forward, afi_refine, decoder_kappas, level_sizes, near_ego_ground
from tests.afi.reference_afi import reference_afi


def _plane(rng, n=160):
    uv = rng.uniform(-3, 3, (n, 2))
    xyz = np.c_[uv[:, 0] + 6.0, uv[:, 1], -1.8 + 0.05 * uv[:, 0] + 0.02 * uv[:, 1]]
    lab = np.where(uv[:, 0] > 1.0, 13, 11)
    return xyz, lab


def _line(rng, n=120):
    t = np.sort(rng.uniform(0, 8, n))
    direction = np.array([0.6, 0.8, 0.0])
    xyz = np.array([3.0, 1.0, 0.5]) + t[:, None] * direction
    lab = np.where(t > 5, 15, 5)
    return xyz, lab


def _two_boxes(rng, n=180):
    pts, labs = [], []
    for centre, size, L in [((5, 2, -1), (2, 1.5, 1), 4), ((9, -3, -0.5), (1.5, 2.5, 2), 10)]:
        m = n // 2
        face = rng.integers(0, 6, m)
        p = rng.uniform(-0.5, 0.5, (m, 3))
        ax = face % 3
        p[np.arange(m), ax] = np.where(face < 3, -0.5, 0.5)
        pts.append(np.array(centre) + p * np.array(size))
        labs.append(np.full(m, L))
    return np.concatenate(pts), np.concatenate(labs)


def _mixed(rng):
    a, la = _plane(rng, 120)
    b, lb = _two_boxes(rng, 100)
    return np.concatenate([a, b]), np.concatenate([la, lb])


SCENES = {"plane": _plane, "line": _line, "two_boxes": _two_boxes, "mixed": _mixed}


def _noisy(lab, rng, frac=0.2):
    out = lab.copy()
    idx = rng.choice(len(lab), int(frac * len(lab)), replace=False)
    out[idx] = rng.integers(1, 17, len(idx))
    return out


def _small_cfg(**kw):
    base = dict(points=96, dtype="float64", ground_step=False)
    base.update(kw)
    return AFIConfig(**base)


def _run_fast(xyz, lab, cfg, vote=None):
    x = torch.from_numpy(xyz)
    y = torch.from_numpy(lab)
    x0 = torch.nn.functional.one_hot(y, cfg.num_classes).double()
    if vote is not None:
        x0 = x0 * torch.from_numpy(vote)[:, None]
    if not cfg.class0_mass:
        x0 = x0 * (y != 0)[:, None]
    sizes = level_sizes(len(xyz), cfg)
    kap = torch.tensor(decoder_kappas(sizes, cfg), dtype=torch.float64)[:, None]
    z0, levels = afi_forward(x[None], x0[None], torch.ones(1, len(xyz), dtype=torch.bool), sizes, kap, cfg)
    return z0[0].numpy(), levels


@pytest.mark.parametrize("scene", sorted(SCENES))
@pytest.mark.parametrize("variant", ["official", "clean"])
def test_fast_equals_reference(scene, variant):
    rng = np.random.default_rng(sorted(SCENES).index(scene) + 11)
    xyz, lab = SCENES[scene](rng)
    noisy = _noisy(lab, rng)
    if variant == "official":
        cfg = _small_cfg()
    else:
        cfg = _small_cfg(centre_in_bin1_hist=False, class0_mass=False, kappa_mode="list",
                         decoder_kappas=(0.05, 0.1, 0.2, 0.3), gamma=0.97)
        noisy[:10] = 0
    ref = reference_afi(xyz, noisy, cfg)
    z0, levels = _run_fast(xyz, noisy, cfg)
    assert [lv.xyz.shape[1] for lv in levels] == [len(xyz), 32, 10, 3, 1]
    for s in range(1, cfg.stages + 1):
        P, X, bag = ref["levels"][s]
        lv = levels[s]
        np.testing.assert_allclose(lv.xyz[0].numpy(), P, atol=0)
        np.testing.assert_allclose(lv.w[0].numpy(), bag["w"], atol=1e-10)
        np.testing.assert_allclose(lv.influence[0].numpy(), bag["I"], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(lv.ell[0].numpy(), bag["ell"], atol=1e-10)
        np.testing.assert_allclose(lv.h[0].numpy(), bag["h"], atol=1e-10)
        np.testing.assert_allclose(lv.x[0].numpy(), X, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(z0, ref["z0"], rtol=1e-8, atol=1e-10)
    refined, stats = afi_refine(torch.from_numpy(xyz), torch.from_numpy(noisy), cfg)
    np.testing.assert_array_equal(refined.numpy(), ref["labels"])
    # the relevance path is exercised (not all-zero) at stage 2
    assert levels[2].influence.abs().sum() > 0


def test_ground_step_matches_reference():
    """Driver with the nuScenes ground step (RANSAC on the 2-5 m ring) equals the transcription
    fed with the same vote mask and ground inliers; ground inliers end in classes 11..14 or 0."""
    rng = np.random.default_rng(3)
    ang = rng.uniform(-np.pi, np.pi, 150)
    rad = rng.uniform(1.0, 6.0, 150)
    ring = np.c_[rad * np.cos(ang), rad * np.sin(ang), -1.84 + rng.normal(0, 0.01, 150)]
    box, lb = _two_boxes(rng, 80)
    xyz = np.concatenate([ring, box])
    lab = np.concatenate([np.full(150, 11), lb])
    noisy = _noisy(lab, rng, 0.3)
    cfg = _small_cfg(ground_step=True)
    g = near_ego_ground(xyz, cfg)
    assert g.status == "ok" and g.inliers.sum() > 50
    ref = reference_afi(xyz, noisy, cfg, vote_mask=g.vote_mask, ground_inliers=g.inliers)
    refined, stats = afi_refine(torch.from_numpy(xyz), torch.from_numpy(noisy), cfg)
    np.testing.assert_array_equal(refined.numpy(), ref["labels"])
    assert stats["n_ground_inliers"] == int(g.inliers.sum())
    assert set(refined.numpy()[g.inliers].tolist()) <= {0, 11, 12, 13, 14}


def test_float32_close_to_reference():
    rng = np.random.default_rng(7)
    xyz, lab = _mixed(rng)
    noisy = _noisy(lab, rng)
    ref = reference_afi(xyz, noisy, _small_cfg())
    refined, _ = afi_refine(torch.from_numpy(xyz).float(), torch.from_numpy(noisy), _small_cfg(dtype="float32"))
    assert (refined.numpy() == ref["labels"]).mean() > 0.97
