"""The small interface every sparse-convolution engine implements.

An engine turns plain tensors into a :class:`~afov_ray.models.sparse.SparseTensor` (``begin``), runs the
three convolution kinds the Res16UNet needs on canonical (MinkowskiEngine-layout) kernels, and maps the
stride-1 output back to the input order (``end``). Everything else (BN, ReLU, 1x1 convs, concatenation)
is engine-independent tensor code in :mod:`afov_ray.models.layers`.
"""

from __future__ import annotations

import abc

import torch

from afov_ray.models.sparse import SparseTensor


class SparseEngine(abc.ABC):
    """Engine interface. Kernels are canonical: (k**3, Cin, Cout), see ``engines/layout.py``."""

    name: str = "?"

    @abc.abstractmethod
    def begin(self, coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
        """Wrap unique stride-1 voxels ``coords`` (V, 4) int (b, x, y, z) and ``feats`` (V, C)."""

    @abc.abstractmethod
    def end(self, x: SparseTensor) -> torch.Tensor:
        """Features of a stride-1 tensor in the order of the ``coords`` given to ``begin``."""

    @abc.abstractmethod
    def subm_conv(self, x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
        """Submanifold k x k x k conv (odd k, stride 1): output on the input voxels, same order."""

    @abc.abstractmethod
    def down_conv(self, x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
        """2x2x2 stride-2 conv: output voxels ``floor(coords / 2)`` (order engine-defined)."""

    @abc.abstractmethod
    def up_conv(self, x: SparseTensor, kernel: torch.Tensor, target: SparseTensor) -> SparseTensor:
        """2x2x2 stride-2 transposed conv onto the voxels (and order) of the finer ``target``."""


def check_coords(coords: torch.Tensor, feats: torch.Tensor) -> None:
    """Validate the model-boundary tensors (shapes, dtypes)."""
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords: expected (V, 4) (batch, x, y, z), got {tuple(coords.shape)}")
    if coords.dtype.is_floating_point:
        raise ValueError(f"coords: expected an integer dtype, got {coords.dtype}")
    if feats.dim() != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(f"feats: expected ({coords.shape[0]}, C), got {tuple(feats.shape)}")
