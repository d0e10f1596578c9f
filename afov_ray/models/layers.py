"""Engine-independent sparse layers holding parameters in the canonical (MinkowskiEngine) layout.

State-dict keys and shapes match MinkowskiEngine 0.5.4 modules (docs/method.md "Backbone"):
``MinkowskiConvolution`` -> ``kernel`` (k**3, Cin, Cout) or (Cin, Cout) for 1x1 and ``bias`` (1, Cout);
``MinkowskiBatchNorm`` -> ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.
Initialisation follows MinkowskiEngine: U(-1/sqrt(n), 1/sqrt(n)) with n = Cin*K (Cout*K if transposed).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from afov_ray.models.sparse import SparseTensor


class SparseConv(nn.Module):
    """k x k x k sparse conv: ``mode`` 'subm' (stride 1), 'down' (2x2x2 stride 2) or 'up' (transposed)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mode: str = "subm"):
        super().__init__()
        if mode not in ("subm", "down", "up"):
            raise ValueError(f"mode: expected subm/down/up, got {mode!r}")
        if mode in ("down", "up") and kernel_size != 2:
            raise ValueError(f"kernel_size: {mode} convs are 2x2x2, got {kernel_size}")
        if mode == "subm" and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: submanifold convs need an odd size, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.mode = kernel_size, mode
        self.kernel = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = (self.out_channels if self.mode == "up" else self.in_channels) * self.kernel.shape[0]
        bound = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.kernel.uniform_(-bound, bound)

    def forward(self, x: SparseTensor, target: SparseTensor | None = None) -> SparseTensor:
        if self.mode == "subm":
            return x.engine.subm_conv(x, self.kernel)
        if self.mode == "down":
            return x.engine.down_conv(x, self.kernel)
        if target is None:
            raise ValueError("up conv: target (the finer tensor) is required")
        return x.engine.up_conv(x, self.kernel, target)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, mode={self.mode}"


class SparseLinear(nn.Module):
    """1x1x1 stride-1 conv (a matrix product per voxel): ``kernel`` (Cin, Cout), optional ``bias`` (1, Cout)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(1, out_channels)) if bias else None
        bound = 1.0 / math.sqrt(in_channels)
        with torch.no_grad():
            self.kernel.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = x.feats @ self.kernel
        if self.bias is not None:
            out = out + self.bias
        return x.with_feats(out)


class SparseBatchNorm(nn.Module):
    """BatchNorm over voxels; wraps ``nn.BatchNorm1d`` as ``.bn`` (so SyncBN conversion works)."""

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)
        nn.init.constant_(self.bn.weight, 1.0)
        nn.init.constant_(self.bn.bias, 0.0)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(self.bn(x.feats))


def relu(x: SparseTensor) -> SparseTensor:
    return x.with_feats(torch.relu(x.feats))


def cat(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Channel concatenation of two tensors on the same voxels in the same order (``me.cat``)."""
    if a.stride != b.stride or len(a) != len(b):
        raise ValueError(f"cat: tensors differ (stride {a.stride}/{b.stride}, {len(a)}/{len(b)} voxels)")
    return a.with_feats(torch.cat([a.feats, b.feats], dim=1))


class BasicBlock(nn.Module):
    """Residual block: conv3-BN-ReLU-conv3-BN + (1x1 conv + BN projection) -> ReLU.

    Official quirk (section 5.2): the two inner BNs keep momentum 0.1; only the projection BN gets
    ``bn_momentum``.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, kernel_size: int = 3,
                 downsample: nn.Module | None = None, inner_bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = SparseConv(inplanes, planes, kernel_size)
        self.norm1 = SparseBatchNorm(planes, inner_bn_momentum)
        self.conv2 = SparseConv(planes, planes, kernel_size)
        self.norm2 = SparseBatchNorm(planes, inner_bn_momentum)
        self.downsample = downsample

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return relu(out.with_feats(out.feats + residual.feats))


class Projection(nn.Sequential):
    """``downsample`` of a BasicBlock: index 0 = 1x1 conv (no bias), index 1 = BN (``bn_momentum``)."""

    def __init__(self, inplanes: int, planes: int, bn_momentum: float):
        super().__init__(SparseLinear(inplanes, planes), SparseBatchNorm(planes, bn_momentum))
