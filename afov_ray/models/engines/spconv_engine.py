"""spconv 2.x adapter (SubMConv3d / SparseConv3d / SparseInverseConv3d).

On CPU, spconv 2.3.8 needs ``spconv.pytorch.ops.get_current_stream`` patched to return 0
(docs/install.md "spconv"); the patch is applied lazily when the engine is created on a machine
without CUDA. Canonical kernels are converted to spconv's (Cout, kx, ky, kz, Cin) layout inside the
autograd graph (a permute), so gradients land on the canonical parameters.

spconv needs non-negative indices: coordinates are shifted by a multiple of 32 (so ``floor(c/2)``
grouping is unchanged at every level) and the spatial shape is taken from the shifted maximum.
"""

from __future__ import annotations

import torch

from afov_ray.errors import EngineNotInstalled
from afov_ray.models.engines.base import SparseEngine, check_coords
from afov_ray.models.engines.layout import canonical_to_spconv, kernel_size_of
from afov_ray.models.sparse import SparseContext, SparseTensor

INSTALL_HINT = "spconv is not importable: pip install spconv==2.3.8 (CPU) or spconv-cu126 (CUDA 12)"
_SHIFT_QUANTUM = 32  # divisible by every tensor stride used (<= 32)


def import_spconv():
    """Import ``spconv.pytorch`` (with the CPU stream patch); EngineNotInstalled if absent."""
    try:
        import spconv.pytorch as spconv
        import spconv.pytorch.ops as ops
    except ImportError as exc:
        raise EngineNotInstalled(f"{INSTALL_HINT} ({exc})") from exc
    if not torch.cuda.is_available():
        ops.get_current_stream = lambda: 0
    return spconv


class _Threads:
    """Single-threaded spconv on CPU. spconv 2.3.8's CPU kernels race under torch's intra-op thread
    pool (measured: sporadic errors up to 1e-2 with 2 threads, none with 1), so each spconv call, and
    its backward, runs with ``torch.set_num_threads(1)``; the previous count is restored afterwards."""

    saved: int | None = None

    @classmethod
    def enter(cls) -> None:
        if cls.saved is None:
            cls.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    @classmethod
    def exit(cls) -> None:
        if cls.saved is not None:
            torch.set_num_threads(cls.saved)
            cls.saved = None


class _EnterOnBackward(torch.autograd.Function):
    """Identity on the spconv output; its backward (which runs before spconv's) goes single-threaded."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _Threads.enter()
        return g


class _ExitOnBackward(torch.autograd.Function):
    """Identity on the spconv inputs; its backward (after spconv's) restores the thread count."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _Threads.exit()
        return g


def _call_single_threaded(mod, weight, native, feats_device):
    if feats_device.type != "cpu":
        return torch.func.functional_call(mod, {"weight": weight}, (native,))
    if torch.is_grad_enabled():
        weight = _ExitOnBackward.apply(weight)
        native = native.replace_feature(_ExitOnBackward.apply(native.features))
    _Threads.enter()
    try:
        out = torch.func.functional_call(mod, {"weight": weight}, (native,))
    finally:
        _Threads.exit()
    if torch.is_grad_enabled() and out.features.requires_grad:
        out = out.replace_feature(_EnterOnBackward.apply(out.features))
    return out


def _lex_order(indices: torch.Tensor) -> torch.Tensor:
    """Permutation sorting (b, x, y, z) non-negative int indices lexicographically."""
    c = indices.to(torch.int64)
    key = ((c[:, 0] * (1 << 20) + c[:, 1]) * (1 << 20) + c[:, 2]) * (1 << 20) + c[:, 3]
    return torch.argsort(key)


class SpconvEngine(SparseEngine):
    """Runs the convolutions with spconv modules, indice pairs cached in the shared indice_dict."""

    name = "spconv"

    def __init__(self):
        self.sp = import_spconv()
        self._modules: dict[tuple, torch.nn.Module] = {}

    def _module(self, kind: str, cin: int, cout: int, k: int, stride: int) -> torch.nn.Module:
        key = (kind, cin, cout, k, stride)
        if key not in self._modules:
            sp = self.sp
            if kind == "subm":
                mod = sp.SubMConv3d(cin, cout, k, bias=False, indice_key=f"subm{stride}_{k}")
            elif kind == "down":
                mod = sp.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key=f"down{stride}")
            else:  # "up" from stride 2s to s: inverse of the conv that made stride 2s from s
                mod = sp.SparseInverseConv3d(cin, cout, 2, bias=False, indice_key=f"down{stride // 2}")
            self._modules[key] = mod
        return self._modules[key]

    def _run(self, kind: str, x: SparseTensor, kernel: torch.Tensor):
        k = kernel_size_of(kernel)
        mod = self._module(kind, kernel.shape[1], kernel.shape[2], k, x.stride)
        native = x.context.cache[("sp", x.stride)].replace_feature(x.feats)
        return _call_single_threaded(mod, canonical_to_spconv(kernel).contiguous(), native, x.feats.device)

    def _wrap(self, out, stride: int, context: SparseContext) -> SparseTensor:
        context.cache[("sp", stride)] = out
        coords = out.indices.clone()
        coords[:, 1:] += context.cache["shift"] // stride
        return SparseTensor(out.features, coords, stride, context)

    def begin(self, coords, feats):
        check_coords(coords, feats)
        c = coords.to(torch.int32)
        if c.shape[0]:
            shift = torch.div(c[:, 1:].min(0).values, _SHIFT_QUANTUM, rounding_mode="floor") * _SHIFT_QUANTUM
        else:
            shift = torch.zeros(3, dtype=torch.int32, device=c.device)
        shifted = c.clone()
        shifted[:, 1:] -= shift
        # A multiple of the quantum, so every stride-2 level keeps all voxels (out = floor((S-2)/2)+1).
        top = shifted[:, 1:].max(0).values + 1 if c.shape[0] else torch.ones(3, dtype=torch.int32)
        spatial = ((top + _SHIFT_QUANTUM - 1) // _SHIFT_QUANTUM * _SHIFT_QUANTUM).tolist()
        batch = int(c[:, 0].max()) + 1 if c.shape[0] else 1
        order = _lex_order(shifted)
        native = self.sp.SparseConvTensor(feats[order], shifted[order].contiguous(), spatial, batch)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        context = SparseContext(self, {"shift": shift, "inverse": inverse})
        context.cache[("sp", 1)] = native
        return SparseTensor(feats[order], c[order], 1, context)

    def end(self, x):
        return x.feats[x.context.cache["inverse"]]

    def subm_conv(self, x, kernel):
        return self._wrap(self._run("subm", x, kernel), x.stride, x.context)

    def down_conv(self, x, kernel):
        return self._wrap(self._run("down", x, kernel), x.stride * 2, x.context)

    def up_conv(self, x, kernel, target):
        out = self._run("up", x, kernel)  # output on the down conv's input voxels = target's, same order
        return target.with_feats(out.features)
