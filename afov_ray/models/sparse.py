"""Engine-independent sparse tensor passed between the U-Net layers.

The model boundary is plain tensors: ``coords`` (V, 4) int (batch, x, y, z) at stride 1 and ``feats``
(V, C). Inside the network a :class:`SparseTensor` carries the features, the coordinates *in units of its
own level* (coarse coordinates, i.e. ``floor(fine / stride)``) and the tensor stride. A shared
:class:`SparseContext` holds the engine and whatever the engine caches for one forward pass (kernel maps,
engine-native coordinate handles); every tensor derived from the same input shares it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class SparseContext:
    """Per-forward state shared by all tensors derived from one input: the engine and its cache."""

    engine: Any
    cache: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SparseTensor:
    """Features (V, C), coordinates (V, 4) int (b, x, y, z) at this level, tensor stride (int)."""

    feats: torch.Tensor
    coords: torch.Tensor
    stride: int
    context: SparseContext

    def with_feats(self, feats: torch.Tensor) -> "SparseTensor":
        """Same voxels (same order), new features."""
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"feats: expected {self.feats.shape[0]} rows, got {feats.shape[0]}")
        return dataclasses.replace(self, feats=feats)

    @property
    def engine(self):
        return self.context.engine

    def __len__(self) -> int:
        return int(self.feats.shape[0])
