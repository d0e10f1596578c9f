"""afov_ray.afi equals the independent oracle (tests/afi/reference_afi.py) on small generated
scenes, intermediate by intermediate, with points=96 so the levels are N -> 32 -> 10 -> 3 -> 1.
The real scans are in test_parity_real.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from afov_ray.afi import AFIConfig, afi_trace, near_ego_ground
from afov_ray.afi.network import Level, decode_step
from tests.afi.reference_afi import OfficialSettings, decoder_step, reference_afi

SETTING_KEYS = [k for k in vars(OfficialSettings) if not k.startswith("_")]


def settings_like(cfg: AFIConfig) -> OfficialSettings:
    """The oracle's settings with the same values as a product config."""
    return OfficialSettings(**{k: getattr(cfg, k) for k in SETTING_KEYS})


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


def assert_trace_matches(tr, ref, n_stages: int) -> None:
    """Every intermediate of a float64 product trace equals the oracle's (indices exactly)."""
    assert tr.sizes == ref["sizes"]
    assert tr.kappas == ref["kappas"]
    np.testing.assert_array_equal(tr.vote.numpy(), ref["vote"])
    np.testing.assert_array_equal(tr.ground.inliers, ref["inliers"])
    for s in range(1, n_stages + 1):
        lv, st = tr.levels[s], ref["stages"][s - 1]
        np.testing.assert_array_equal(lv.centre_idx.numpy(), st["centres"], err_msg=f"FPS, stage {s}")
        np.testing.assert_array_equal(lv.knn_idx.numpy(), st["knn"], err_msg=f"kNN, stage {s}")
        np.testing.assert_array_equal(lv.bins.numpy(), st["bins"], err_msg=f"bins, stage {s}")
        np.testing.assert_array_equal(lv.counts.numpy(), st["counts"], err_msg=f"counts, stage {s}")
        for name, ours, theirs in [("w", lv.w, st["w"]), ("mu", lv.mu, st["mu"]), ("ell", lv.ell, st["ell"]),
                                   ("h", lv.h, st["h"]), ("I", lv.influence, st["I"]), ("x", lv.x, st["x"])]:
            np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name}, stage {s}")
    for i, (ours, theirs) in enumerate(zip(tr.decoded, ref["decoded"])):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-12, err_msg=f"decoder step {i}")
    np.testing.assert_allclose(tr.z0.numpy(), ref["z0"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(tr.labels.numpy(), ref["labels"])


@pytest.mark.parametrize("scene", sorted(SCENES))
@pytest.mark.parametrize("variant", ["official", "clean"])
def test_product_equals_oracle_on_small_scenes(scene, variant):
    rng = np.random.default_rng(sorted(SCENES).index(scene) + 11)
    xyz, lab = SCENES[scene](rng)
    noisy = _noisy(lab, rng)
    cfg = AFIConfig(points=96, dtype="float64", ground_step=False)
    if variant == "clean":
        cfg = AFIConfig(points=96, dtype="float64", ground_step=False, centre_in_bin1_hist=False,
                        class0_mass=False, kappa_mode="list", decoder_kappas=(0.05, 0.1, 0.2, 0.3), gamma=0.97)
        noisy[:10] = 0
    ref = reference_afi(xyz, noisy, settings_like(cfg))
    tr = afi_trace(torch.from_numpy(xyz), torch.from_numpy(noisy), cfg)
    assert tr.sizes == [len(xyz), 32, 10, 3, 1]
    assert_trace_matches(tr, ref, cfg.stages)
    assert tr.levels[2].influence.abs().sum() > 0          # the relevance path is exercised
    # and float32 gives the same labels on these scenes
    tr32 = afi_trace(torch.from_numpy(xyz).float(), torch.from_numpy(noisy), replace(cfg, dtype="float32"))
    assert (tr32.labels.numpy() == ref["labels"]).mean() >= 0.99


def test_ground_step_scene_matches_oracle():
    """With the nuScenes ground step (RANSAC on the 2-5 m ring), vote mask, inliers, forcing and
    labels equal the oracle; ground inliers end in classes 11..14 (or 0 if they have no ground mass)."""
    rng = np.random.default_rng(3)
    ang = rng.uniform(-np.pi, np.pi, 150)
    rad = rng.uniform(1.0, 6.0, 150)
    ring = np.c_[rad * np.cos(ang), rad * np.sin(ang), -1.84 + rng.normal(0, 0.01, 150)]
    box, lb = _two_boxes(rng, 80)
    xyz = np.concatenate([ring, box]).astype(np.float32)
    lab = np.concatenate([np.full(150, 11), lb])
    noisy = _noisy(lab, rng, 0.3)
    cfg = AFIConfig(points=96, dtype="float64")
    g = near_ego_ground(xyz, cfg)
    assert g.status == "ok" and g.inliers.sum() > 50
    ref = reference_afi(xyz, noisy, settings_like(cfg))
    tr = afi_trace(torch.from_numpy(xyz), torch.from_numpy(noisy), cfg)
    assert_trace_matches(tr, ref, cfg.stages)
    assert set(tr.labels.numpy()[g.inliers].tolist()) <= {0, 11, 12, 13, 14}


def test_decoder_self_term_keeps_the_official_1e8():
    """A decoder step where no sparse point has an aligned direction (all bin weights 0): every
    Lambda is 1e-8 and the dense feature is weighted by (1e-8 + kappa * 1e-8), as the official
    ``DecNP.propagate``; dropping the 1e-8 (the old product) gives a different z."""
    rng = np.random.default_rng(0)
    ns, nd, C, A = 12, 40, 5, 20
    ps = rng.normal(size=(ns, 3))
    pd = rng.normal(size=(nd, 3))
    xd = rng.dirichlet(np.ones(C), nd)
    zs = rng.dirichlet(np.ones(C), ns)
    mu = rng.normal(size=(ns, A, 3))
    ell = np.sqrt(mu[..., 0] ** 2 + mu[..., 1] ** 2 + mu[..., 2] ** 2)
    w = np.zeros((ns, A))
    sparse = Level(xyz=torch.from_numpy(ps), x=torch.from_numpy(zs), w=torch.from_numpy(w),
                   mu=torch.from_numpy(mu), ell=torch.from_numpy(ell))
    cfg = AFIConfig(dtype="float64", num_classes=C)
    kappa = 0.3
    z, lam, _ = decode_step(torch.from_numpy(pd), torch.from_numpy(xd), sparse, torch.from_numpy(zs), kappa, cfg)
    ref = decoder_step(pd, xd, ps, zs, {"w": w, "mu": mu}, kappa, OfficialSettings(num_classes=C))
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-12, atol=1e-15)
    assert torch.all(lam == 1e-8)
    # by hand: each of the 6 nearest gets pi = 1e-6 + 1e-10, normalised by (6 pi + 1e-8); then
    # z = normalize(interp * 1e-8 + (1e-8 + kappa * 1e-8) * x) with the official sum + 1e-9
    d = ((ps[None] - pd[:, None]) ** 2).sum(-1)
    pi = 1e-6 + 1e-10
    interp = zs[np.argsort(d, axis=1, kind="stable")[:, :6]].sum(1) * (pi / (6 * pi + 1e-8))
    with_eps = interp * 1e-8 + (1e-8 + kappa * 1e-8) * xd
    np.testing.assert_allclose(ref, with_eps / (with_eps.sum(1, keepdims=True) + 1e-9), rtol=1e-6)
    without = interp * 1e-8 + kappa * 1e-8 * xd
    without /= without.sum(1, keepdims=True) + 1e-9
    assert np.abs(without - ref).max() > 1e-2
