"""Pure-PyTorch sparse convolution engine (default; runs on any device; the test reference).

Sparse conv on CPU: kernel maps by sort + searchsorted over linearised int64 keys,
gather-GEMM-scatter with ``index_add_``, and a custom autograd.Function whose backward recomputes the
gathers instead of storing K gathered copies. Stride-2 convs map each input to ``coords // 2`` (floor)
with kernel offset ``coords % 2``; the transposed conv is the same map read backwards.
"""

from __future__ import annotations

import torch

from afov_ray.models.engines.base import SparseEngine, check_coords
from afov_ray.models.engines.layout import kernel_offsets, kernel_size_of
from afov_ray.models.sparse import SparseContext, SparseTensor

_BITS = 18  # bits per spatial axis in the linear key (|coord| < 2**17); batch index < 2**9


class KernelMap:
    """Pairs (in_idx, out_idx) grouped by kernel index: ``in_idx[start[k]:start[k+1]]`` etc."""

    def __init__(self, in_idx: torch.Tensor, out_idx: torch.Tensor, counts: list[int]):
        self.in_idx = in_idx
        self.out_idx = out_idx
        self.counts = counts


def linear_keys(coords: torch.Tensor) -> torch.Tensor:
    """Linearise (b, x, y, z) int coords into int64 keys preserving equality (and offsets by +-1)."""
    c = coords.to(torch.int64)
    half = 1 << (_BITS - 1)
    xyz = c[:, 1:] + half
    if xyz.numel() and (int(xyz.min()) < 1 or int(xyz.max()) >= (1 << _BITS) - 1):
        raise ValueError(f"coords: spatial coordinates outside +-{half - 1}")
    return (((c[:, 0] << _BITS | xyz[:, 0]) << _BITS | xyz[:, 1]) << _BITS) | xyz[:, 2]


def _offset_key(offset: torch.Tensor) -> int:
    dx, dy, dz = (int(v) for v in offset)
    return (dx << (2 * _BITS)) + (dy << _BITS) + dz


def submanifold_map(coords: torch.Tensor, kernel_size: int) -> KernelMap:
    """Kernel map of a stride-1 submanifold conv: out voxel j reads in voxel i = j + offset_k."""
    keys = linear_keys(coords)
    sorted_keys, order = torch.sort(keys)
    if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ValueError("coords: duplicate voxels (voxelise first)")
    n = keys.numel()
    ins, outs, counts = [], [], []
    for off in kernel_offsets(kernel_size):
        q = keys + _offset_key(off)
        pos = torch.searchsorted(sorted_keys, q).clamp_(max=max(n - 1, 0))
        hit = sorted_keys[pos] == q if n else torch.zeros(0, dtype=torch.bool)
        out_idx = torch.nonzero(hit).squeeze(1)
        ins.append(order[pos[out_idx]])
        outs.append(out_idx)
        counts.append(int(out_idx.numel()))
    return KernelMap(torch.cat(ins), torch.cat(outs), counts)


def downsample_map(coords: torch.Tensor) -> tuple[torch.Tensor, KernelMap]:
    """Coarse coords (sorted unique ``floor(coords/2)``) and the 2x2x2 stride-2 kernel map."""
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coords[:, 1:], 2, rounding_mode="floor")
    rem = coords[:, 1:] - 2 * coarse[:, 1:]
    k_index = (rem[:, 0] + 2 * rem[:, 1] + 4 * rem[:, 2]).to(torch.int64)  # ME order, x fastest
    keys = linear_keys(coarse)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel()), reduce="amin")
    out_coords = coarse[first]
    order = torch.argsort(k_index, stable=True)
    counts = torch.bincount(k_index, minlength=8).tolist()
    return out_coords, KernelMap(order, inverse[order], counts)


class _GatherGemmScatter(torch.autograd.Function):
    """out[out_idx_k] += feats[in_idx_k] @ W[k]; backward recomputes the gathers."""

    @staticmethod
    def forward(ctx, feats, weight, in_idx, out_idx, counts, n_out):
        out = feats.new_zeros((n_out, weight.shape[-1]))
        start = 0
        for k, c in enumerate(counts):
            if c:
                i, o = in_idx[start:start + c], out_idx[start:start + c]
                out.index_add_(0, o, feats.index_select(0, i) @ weight[k])
            start += c
        ctx.save_for_backward(feats, weight, in_idx, out_idx)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight, in_idx, out_idx = ctx.saved_tensors
        grad_feats = torch.zeros_like(feats) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_out = grad_out.contiguous()
        start = 0
        for k, c in enumerate(ctx.counts):
            if c:
                i, o = in_idx[start:start + c], out_idx[start:start + c]
                g = grad_out.index_select(0, o)
                if grad_feats is not None:
                    grad_feats.index_add_(0, i, g @ weight[k].t())
                if grad_w is not None:
                    grad_w[k] = feats.index_select(0, i).t() @ g
            start += c
        return grad_feats, grad_w, None, None, None, None


def gather_gemm_scatter(feats, weight, kmap: KernelMap, n_out: int, transpose_map: bool = False):
    """Apply a kernel map with weight (K, Cin, Cout); ``transpose_map`` swaps in/out (transposed conv)."""
    i, o = (kmap.out_idx, kmap.in_idx) if transpose_map else (kmap.in_idx, kmap.out_idx)
    return _GatherGemmScatter.apply(feats, weight, i.to(feats.device), o.to(feats.device),
                                    kmap.counts, n_out)


class TorchEngine(SparseEngine):
    """Pure-PyTorch engine. Kernel maps are cached per forward in the shared context."""

    name = "torch"

    def begin(self, coords, feats):
        check_coords(coords, feats)
        return SparseTensor(feats, coords.to(torch.int32), 1, SparseContext(self))

    def end(self, x):
        return x.feats

    def subm_conv(self, x, kernel):
        k = kernel_size_of(kernel)
        key = ("subm", x.stride, k)
        cache = x.context.cache
        if key not in cache:
            cache[key] = submanifold_map(x.coords.cpu(), k)
        feats = gather_gemm_scatter(x.feats, kernel, cache[key], len(x))
        return x.with_feats(feats)

    def _down(self, x: SparseTensor):
        key = ("down", x.stride)
        cache = x.context.cache
        if key not in cache:
            cache[key] = downsample_map(x.coords.cpu())
        return cache[key]

    def down_conv(self, x, kernel):
        if kernel_size_of(kernel) != 2:
            raise ValueError("down_conv: only 2x2x2 stride-2 kernels are supported")
        out_coords, kmap = self._down(x)
        feats = gather_gemm_scatter(x.feats, kernel, kmap, out_coords.shape[0])
        return SparseTensor(feats, out_coords.to(x.coords.device), x.stride * 2, x.context)

    def up_conv(self, x, kernel, target):
        if target.stride * 2 != x.stride:
            raise ValueError(f"up_conv: target stride {target.stride} is not half of {x.stride}")
        out_coords, kmap = self._down(target)
        if out_coords.shape[0] != len(x):
            raise ValueError("up_conv: input is not the downsampling of target")
        feats = gather_gemm_scatter(x.feats, kernel, kmap, len(target), transpose_map=True)
        return target.with_feats(feats)
