"""Kernel layouts and conversions between engine-native and canonical convolution weights.

Canonical layout (the one every engine's model exposes in ``state_dict``) is MinkowskiEngine 0.5.4's,
so official SLidR/AFOV checkpoints load unchanged (docs/method.md "Sparse engines and weight layout"):

- k x k x k convolution (k > 1), plain or transposed: ``kernel`` of shape (k**3, Cin, Cout);
- 1 x 1 x 1 stride-1 convolution: ``kernel`` of shape (Cin, Cout); optional ``bias`` of shape (1, Cout).

MinkowskiEngine's kernel-offset ordering (``src/kernel_region.hpp``, ``coordinate_at``): kernel index
``k = i_x + k*i_y + k*k*i_z`` (the first spatial axis varies fastest); the offset along an axis is
``i - k//2`` for odd k and ``i`` (0 .. k-1) for even k, times the tensor stride. The pure-PyTorch
engine uses the same ordering, so its native layout *is* the canonical one.

spconv 2.x native layout: ``weight`` (Cout, k, k, k, Cin) with the spatial axes in the order of the
index columns (x, y, z here), offsets ``i - k//2`` (odd k, submanifold) or ``i`` (k = 2, stride 2).

Dense torch layout (for reference tests): conv3d (Cout, Cin, kx, ky, kz); conv_transpose3d (Cin, Cout,
kx, ky, kz).
"""

from __future__ import annotations

import torch


def kernel_offsets(kernel_size: int) -> torch.Tensor:
    """(K, 3) int64 offsets (in units of the input stride) in MinkowskiEngine's kernel order."""
    k = kernel_size
    r = torch.arange(k, dtype=torch.int64)
    if k % 2 == 1:
        r = r - k // 2
    iz, iy, ix = torch.meshgrid(r, r, r, indexing="ij")  # x fastest after flattening
    return torch.stack([ix.reshape(-1), iy.reshape(-1), iz.reshape(-1)], dim=1)


def kernel_size_of(kernel: torch.Tensor) -> int:
    """Kernel size k of a canonical kernel ((k**3, Cin, Cout) or (Cin, Cout) for k = 1)."""
    if kernel.dim() == 2:
        return 1
    k = round(kernel.shape[0] ** (1.0 / 3.0))
    if k**3 != kernel.shape[0]:
        raise ValueError(f"kernel: first dim {kernel.shape[0]} is not a cube")
    return k


def _grid(kernel: torch.Tensor) -> torch.Tensor:
    """Canonical (K, Cin, Cout) -> (kz, ky, kx, Cin, Cout) view (x fastest in K)."""
    k = kernel_size_of(kernel)
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(0)
    return kernel.reshape(k, k, k, kernel.shape[-2], kernel.shape[-1])


def canonical_to_dense(kernel: torch.Tensor) -> torch.Tensor:
    """Canonical -> torch conv3d weight (Cout, Cin, kx, ky, kz)."""
    return _grid(kernel).permute(4, 3, 2, 1, 0).contiguous()


def canonical_to_dense_transposed(kernel: torch.Tensor) -> torch.Tensor:
    """Canonical transposed-conv kernel -> torch conv_transpose3d weight (Cin, Cout, kx, ky, kz)."""
    return _grid(kernel).permute(3, 4, 2, 1, 0).contiguous()


def dense_to_canonical(weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """Inverse of :func:`canonical_to_dense` / :func:`canonical_to_dense_transposed`."""
    w = weight.permute(4, 3, 2, 0, 1) if not transposed else weight.permute(4, 3, 2, 0, 1)
    # w: (kz, ky, kx, Cout, Cin) for conv3d; (kz, ky, kx, Cin, Cout) for transposed
    if not transposed:
        w = w.transpose(3, 4)
    k = weight.shape[-1]
    return w.reshape(k**3, w.shape[3], w.shape[4]).contiguous()


def canonical_to_spconv(kernel: torch.Tensor) -> torch.Tensor:
    """Canonical -> spconv 2.x weight (Cout, kx, ky, kz, Cin). Differentiable (a permute)."""
    return _grid(kernel).permute(4, 2, 1, 0, 3)


def spconv_to_canonical(weight: torch.Tensor, one_by_one: bool = False) -> torch.Tensor:
    """spconv 2.x weight (Cout, kx, ky, kz, Cin) -> canonical (K, Cin, Cout), or (Cin, Cout) for 1x1."""
    k = weight.shape[1]
    w = weight.permute(3, 2, 1, 4, 0).reshape(k**3, weight.shape[4], weight.shape[0])
    if one_by_one:
        if k != 1:
            raise ValueError(f"weight: 1x1 requested but kernel size is {k}")
        return w[0].contiguous()
    return w.contiguous()
