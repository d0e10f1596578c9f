"""Res16UNet34C (official AFOV/SLidR backbone) and MinkUNet18, engine-independent.

docs/method.md "Backbone". Module names, parameter shapes and BN-momentum rules are those of the
official ``model/res16unet.py`` so official MinkowskiEngine checkpoints load key for key:
stem ``conv0p1s1``/``bn0``; encoder ``conv{1..4}p*s2``/``bn{1..4}``/``block{1..4}``; decoder
``convtr{4..7}p*s2``/``bntr{4..7}``/``block{5..8}``; head ``final`` (1x1, bias).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from afov_ray.models.engines import SparseEngine, get_engine
from afov_ray.models.layers import BasicBlock, Projection, SparseBatchNorm, SparseConv, SparseLinear, cat, relu
from afov_ray.models.sparse import SparseTensor


@dataclasses.dataclass(frozen=True)
class UNetSpec:
    """Widths and block counts of the 8 stages (4 encoder, 4 decoder)."""

    planes: tuple[int, ...]
    layers: tuple[int, ...]
    init_dim: int = 32


ARCHITECTURES: dict[str, UNetSpec] = {
    # Official code (section 5.2): MinkUNet34C, layers (2,3,4,6,2,2,2,2).
    "res16unet34c": UNetSpec((32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2)),
    # Paper wording ("MinkowskiNet18"): same widths, 2 blocks per stage.
    "minkunet18": UNetSpec((32, 64, 128, 256, 256, 128, 96, 96), (2, 2, 2, 2, 2, 2, 2, 2)),
}


class Res16UNet(nn.Module):
    """Sparse U-Net; ``forward(coords, feats) -> feats_out`` per voxel in the input order.

    ``coords``: (V, 4) int (batch, x, y, z), unique voxels at stride 1; ``feats``: (V, in_channels).
    ``normalize_features``: L2-normalise each output voxel (TMP, ``normalize_features`` in the config).
    """

    def __init__(self, spec: UNetSpec, in_channels: int, out_channels: int, engine: str | SparseEngine = "torch",
                 bn_momentum: float = 0.05, kernel_size: int = 3, normalize_features: bool = False):
        super().__init__()
        p, n, d = spec.planes, spec.layers, spec.init_dim
        self.spec, self.in_channels, self.out_channels = spec, in_channels, out_channels
        self.normalize_features = normalize_features
        self.set_engine(engine)
        m = bn_momentum
        self.inplanes = d
        self.conv0p1s1 = SparseConv(in_channels, d, kernel_size)
        self.bn0 = SparseBatchNorm(d, m)
        self.conv1p1s2, self.bn1 = SparseConv(d, d, 2, "down"), SparseBatchNorm(d, m)
        self.block1 = self._make_layer(p[0], n[0], m)
        self.conv2p2s2, self.bn2 = SparseConv(self.inplanes, self.inplanes, 2, "down"), SparseBatchNorm(self.inplanes, m)
        self.block2 = self._make_layer(p[1], n[1], m)
        self.conv3p4s2, self.bn3 = SparseConv(self.inplanes, self.inplanes, 2, "down"), SparseBatchNorm(self.inplanes, m)
        self.block3 = self._make_layer(p[2], n[2], m)
        self.conv4p8s2, self.bn4 = SparseConv(self.inplanes, self.inplanes, 2, "down"), SparseBatchNorm(self.inplanes, m)
        self.block4 = self._make_layer(p[3], n[3], m)
        self.convtr4p16s2, self.bntr4 = SparseConv(self.inplanes, p[4], 2, "up"), SparseBatchNorm(p[4], m)
        self.inplanes = p[4] + p[2]
        self.block5 = self._make_layer(p[4], n[4], m)
        self.convtr5p8s2, self.bntr5 = SparseConv(self.inplanes, p[5], 2, "up"), SparseBatchNorm(p[5], m)
        self.inplanes = p[5] + p[1]
        self.block6 = self._make_layer(p[5], n[5], m)
        self.convtr6p4s2, self.bntr6 = SparseConv(self.inplanes, p[6], 2, "up"), SparseBatchNorm(p[6], m)
        self.inplanes = p[6] + p[0]
        self.block7 = self._make_layer(p[6], n[6], m)
        self.convtr7p2s2, self.bntr7 = SparseConv(self.inplanes, p[7], 2, "up"), SparseBatchNorm(p[7], m)
        self.inplanes = p[7] + d
        self.block8 = self._make_layer(p[7], n[7], m)
        self.final = SparseLinear(p[7], out_channels, bias=True)

    def _make_layer(self, planes: int, blocks: int, bn_momentum: float) -> nn.Sequential:
        downsample = Projection(self.inplanes, planes, bn_momentum) if self.inplanes != planes else None
        layers = [BasicBlock(self.inplanes, planes, downsample=downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def set_engine(self, engine: str | SparseEngine) -> None:
        """Switch the sparse engine; parameters are untouched (same canonical layout in all engines)."""
        self.engine = get_engine(engine) if isinstance(engine, str) else engine

    def replace_head(self, out_channels: int) -> None:
        """New ``final`` 1x1 head (e.g. TMP 768-d -> 17-way), freshly initialised."""
        self.final = SparseLinear(self.final.kernel.shape[0], out_channels, bias=True).to(self.final.kernel)
        self.out_channels = out_channels

    def forward_sparse(self, x: SparseTensor) -> SparseTensor:
        out_p1 = relu(self.bn0(self.conv0p1s1(x)))
        out = relu(self.bn1(self.conv1p1s2(out_p1)))
        out_b1p2 = self.block1(out)
        out = relu(self.bn2(self.conv2p2s2(out_b1p2)))
        out_b2p4 = self.block2(out)
        out = relu(self.bn3(self.conv3p4s2(out_b2p4)))
        out_b3p8 = self.block3(out)
        out = relu(self.bn4(self.conv4p8s2(out_b3p8)))
        out = self.block4(out)
        out = relu(self.bntr4(self.convtr4p16s2(out, out_b3p8)))
        out = self.block5(cat(out, out_b3p8))
        out = relu(self.bntr5(self.convtr5p8s2(out, out_b2p4)))
        out = self.block6(cat(out, out_b2p4))
        out = relu(self.bntr6(self.convtr6p4s2(out, out_b1p2)))
        out = self.block7(cat(out, out_b1p2))
        out = relu(self.bntr7(self.convtr7p2s2(out, out_p1)))
        out = self.block8(cat(out, out_p1))
        out = self.final(out)
        if self.normalize_features:
            out = out.with_feats(out.feats / torch.norm(out.feats, p=2, dim=1, keepdim=True))
        return out

    def forward(self, coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        x = self.engine.begin(coords, feats)
        return self.engine.end(self.forward_sparse(x))


def build_model(name: str = "res16unet34c", in_channels: int = 1, out_channels: int = 17,
                engine: str | SparseEngine = "torch", bn_momentum: float = 0.05, kernel_size: int = 3,
                normalize_features: bool = False) -> Res16UNet:
    """Build a backbone by name (``res16unet34c`` official, ``minkunet18`` paper) on an engine."""
    key = name.lower()
    if key not in ARCHITECTURES:
        raise ValueError(f"model name: unknown {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return Res16UNet(ARCHITECTURES[key], in_channels, out_channels, engine, bn_momentum, kernel_size,
                     normalize_features)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm (the ``.bn`` inside SparseBatchNorm) by SyncBatchNorm for multi-worker DDP."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
