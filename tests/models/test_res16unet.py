"""Res16UNet34C / MinkUNet18 structure (docs/method.md "Backbone"), head swap, SyncBN, checkpoints."""

import sys

import pytest
import torch

from afov_ray.errors import EngineNotInstalled
from afov_ray.models.checkpoint import from_native_state_dict, load_official_checkpoint, to_native_state_dict
from afov_ray.models.engines import get_engine
from afov_ray.models.res16unet import build_model, convert_sync_batchnorm


def test_official_layout_shapes_and_bn_momentum():
    m = build_model("res16unet34c", 1, 17, bn_momentum=0.05)
    sd = m.state_dict()
    assert sd["conv0p1s1.kernel"].shape == (27, 1, 32)
    assert sd["conv1p1s2.kernel"].shape == (8, 32, 32)
    assert sd["block2.0.downsample.0.kernel"].shape == (32, 64)
    assert sd["convtr4p16s2.kernel"].shape == (8, 256, 256)
    assert sd["block5.0.downsample.0.kernel"].shape == (384, 256)
    assert sd["block6.0.conv1.kernel"].shape == (27, 192, 128)
    assert sd["block8.0.conv1.kernel"].shape == (27, 128, 96)
    assert sd["final.kernel"].shape == (96, 17) and sd["final.bias"].shape == (1, 17)
    assert [len(getattr(m, f"block{i}")) for i in range(1, 9)] == [2, 3, 4, 6, 2, 2, 2, 2]
    assert "block1.0.downsample.0.kernel" not in sd and "block4.5.conv2.kernel" in sd
    assert sum(k.endswith("bias") and not k.startswith("final") and ".bn." not in k for k in sd) == 0
    assert m.bn0.bn.momentum == 0.05 and m.bntr7.bn.momentum == 0.05 and m.bn3.bn.momentum == 0.05
    assert m.block2[0].downsample[1].bn.momentum == 0.05
    assert m.block2[0].norm1.bn.momentum == 0.1 and m.block8[1].norm2.bn.momentum == 0.1
    assert float(m.bn0.bn.weight.detach().min()) == 1.0 and float(m.bn0.bn.bias.detach().abs().max()) == 0.0
    m18 = build_model("minkunet18", 1, 20)
    assert [len(getattr(m18, f"block{i}")) for i in range(1, 9)] == [2] * 8


def test_forward_order_equivariance_and_normalisation(small_scan):
    coords, feats = small_scan
    coords, feats = coords[:1500], feats[:1500]
    m = build_model("minkunet18", 1, 8, normalize_features=True).eval()
    out = m(coords, feats)
    assert out.shape == (1500, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1500))
    perm = torch.randperm(1500, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(coords[perm], feats[perm]), out[perm], rtol=1e-5, atol=1e-5)


def test_head_swap_and_shape_filtered_official_checkpoint(tmp_path):
    tmp = build_model("res16unet34c", 1, 768, normalize_features=True)
    for p in tmp.parameters():
        torch.nn.init.normal_(p)
    ckpt = {"model_points": {"module." + k: v for k, v in tmp.state_dict().items()}, "config": {"a": 1}}
    path = tmp_path / "tmp.pt"
    torch.save(ckpt, path)
    m = build_model("res16unet34c", 1, 17)
    report = load_official_checkpoint(m, path)
    assert sorted(s.split(":")[0] for s in report.skipped) == ["final.bias", "final.kernel"]
    assert report.missing == ["final.kernel", "final.bias"]
    assert torch.equal(m.state_dict()["block4.5.conv2.kernel"], tmp.state_dict()["block4.5.conv2.kernel"])
    # A 17-way (annotation-free) checkpoint loads its head too (section 6.2).
    af = build_model("res16unet34c", 1, 17)
    rep2 = load_official_checkpoint(af, {"state_dict": {"model.encoder." + k: v for k, v in m.state_dict().items()}})
    assert rep2.skipped == [] and rep2.missing == []
    m.replace_head(20)
    assert m.final.kernel.shape == (96, 20)


def test_native_layout_round_trip_bitwise():
    m = build_model("res16unet34c", 1, 17)
    sd = m.state_dict()
    native = to_native_state_dict(sd, "spconv")
    assert native["conv0p1s1.weight"].shape == (32, 3, 3, 3, 1)
    assert native["final.weight"].shape == (17, 1, 1, 1, 96)
    back = from_native_state_dict(native, "spconv")
    assert list(back) == list(sd) or sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_sync_batchnorm_conversion(small_scan):
    coords, feats = small_scan
    coords, feats = coords[:800], feats[:800]
    m = build_model("minkunet18", 1, 4).eval()
    ref = m(coords, feats)
    s = convert_sync_batchnorm(m).eval()
    assert isinstance(s.bn0.bn, torch.nn.SyncBatchNorm)
    assert list(s.state_dict()) == list(m.state_dict())
    torch.testing.assert_close(s(coords, feats), ref)


def test_missing_engine_raises_engine_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv", None)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    with pytest.raises(EngineNotInstalled, match="pip install spconv"):
        get_engine("spconv")
    with pytest.raises(ValueError, match="unknown"):
        get_engine("cuda-magic")
