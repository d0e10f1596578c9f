"""Engine parity: MinkowskiEngine and spconv vs the pure-PyTorch engine, same voxels and weights.

Forward outputs and gradients (input features, all weights) agree within 1e-4 relative (max abs error
over max abs value), for single layers and for the whole Res16UNet34C in eval and train BN mode.
"""

import copy

import pytest
import torch

from afov_ray.models.layers import SparseConv
from afov_ray.models.res16unet import build_model
from tests.models.conftest import require_engine

ENGINES = [pytest.param("minkowski", marks=pytest.mark.minkowski), pytest.param("spconv", marks=pytest.mark.spconv)]


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _sorted_rows(t):
    c = t.coords.long()
    key = ((c[:, 0] * 4096 + c[:, 1] + 2048) * 4096 + c[:, 2] + 2048) * 4096 + c[:, 3] + 2048
    return t.feats[torch.argsort(key)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["subm", "down", "up"])
def test_single_layer_parity(engine, mode, small_scan):
    other = require_engine(engine)
    coords, feats0 = small_scan
    g = torch.Generator().manual_seed(0)
    feats0 = torch.randn(coords.shape[0], 8, generator=g)
    conv = SparseConv(8, 16, 3 if mode == "subm" else 2, mode)
    pre = SparseConv(8, 8, 2, "down")
    results = {}
    for name, eng in (("torch", require_engine("torch")), (engine, other)):
        feats = feats0.clone().requires_grad_(True)
        x = eng.begin(coords, feats)
        y = conv(pre(x), x) if mode == "up" else conv(x)
        out = _sorted_rows(y) if mode == "down" else eng.end(y) if mode != "down" else None
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        conv.zero_grad()
        pre.zero_grad()
        (out * w).sum().backward()
        results[name] = (out.detach(), feats.grad, conv.kernel.grad.clone())
    for a, b in zip(results[engine], results["torch"]):
        assert rel_err(a, b) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("train", [False, True])
def test_res16unet34c_parity(engine, train, small_scan):
    """Eval BN in float32. Train BN in float64: with batch statistics the float32 gradients of the
    stride-16 kernels are ill-conditioned (few voxels per channel statistic), so float32 rounding
    differences alone reach 1e-3..1e-1 relative there in *every* engine pair; in float64 the three
    engines agree to ~1e-14 (measured), which is what this test asserts (at 1e-4)."""
    other = require_engine(engine)
    coords, feats0 = small_scan
    dtype = torch.float64 if train else torch.float32
    feats0 = feats0.to(dtype)
    torch.manual_seed(0)
    base = build_model("res16unet34c", 1, 17, engine="torch", bn_momentum=0.05).to(dtype)
    # non-trivial BN statistics for eval mode
    with torch.no_grad():
        for mod in base.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    results = {}
    for name, eng in (("torch", "torch"), (engine, other)):
        m = copy.deepcopy(base)
        m.set_engine(eng)
        m.train(train)
        feats = feats0.clone().requires_grad_(True)
        out = m(coords, feats)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
        (out * w).sum().backward()
        grads = {k: p.grad for k, p in m.named_parameters()}
        results[name] = (out.detach(), feats.grad, grads, m.state_dict())
    out_o, gf_o, gw_o, sd_o = results[engine]
    out_t, gf_t, gw_t, sd_t = results["torch"]
    assert rel_err(out_o, out_t) < 1e-4
    assert rel_err(gf_o, gf_t) < 1e-4
    worst = max(rel_err(gw_o[k], gw_t[k]) for k in gw_t)
    assert worst < 1e-4, worst
    if train:  # running statistics updated identically
        assert rel_err(sd_o["bntr7.bn.running_var"], sd_t["bntr7.bn.running_var"]) < 1e-4


@pytest.mark.minkowski
def test_layer_layout_equals_minkowski_modules():
    """Our parameter names/shapes are those of the real ME modules used by the official code."""
    from afov_ray.models.engines.minkowski_engine import import_minkowski
    from afov_ray.models.layers import SparseBatchNorm, SparseLinear

    require_engine("minkowski")
    ME = import_minkowski()
    pairs = [
        (ME.MinkowskiConvolution(1, 32, kernel_size=3, dimension=3), SparseConv(1, 32, 3)),
        (ME.MinkowskiConvolution(32, 32, kernel_size=2, stride=2, dimension=3), SparseConv(32, 32, 2, "down")),
        (ME.MinkowskiConvolutionTranspose(256, 128, kernel_size=2, stride=2, dimension=3), SparseConv(256, 128, 2, "up")),
        (ME.MinkowskiConvolution(96, 17, kernel_size=1, bias=True, dimension=3), SparseLinear(96, 17, bias=True)),
        (ME.MinkowskiBatchNorm(32, momentum=0.05), SparseBatchNorm(32, 0.05)),
    ]
    for me_mod, ours in pairs:
        a = {k: tuple(v.shape) for k, v in me_mod.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert a == b


@pytest.mark.minkowski
@pytest.mark.spconv
def test_checkpoint_round_trip_across_engines(small_scan):
    """Official-layout state dict -> our model (ME) -> spconv engine + spconv-native dict -> back: bitwise."""
    from afov_ray.models.checkpoint import from_native_state_dict, load_official_checkpoint, to_native_state_dict

    require_engine("minkowski")
    require_engine("spconv")
    src = build_model("res16unet34c", 1, 17)
    official = {"model_points": {"model." + k: v.clone() for k, v in src.state_dict().items()}}
    m = build_model("res16unet34c", 1, 17, engine="minkowski").eval()
    assert load_official_checkpoint(m, official).skipped == []
    coords, feats = small_scan
    out_me = m(coords, feats)
    m.set_engine("spconv")
    out_sp = m(coords, feats)
    assert rel_err(out_sp, out_me) < 1e-4
    native = to_native_state_dict(m.state_dict(), "spconv")
    m2 = build_model("res16unet34c", 1, 17, engine="minkowski")
    m2.load_state_dict(from_native_state_dict(native, "spconv"))
    for k, v in src.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k
