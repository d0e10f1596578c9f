"""Arrow list / binary columns as numpy views (no Python objects), and list columns built from numpy.

A list column is a flat ``values`` buffer and ``offsets`` (row ``i`` = ``values[offsets[i]:offsets[i+1]]``);
``ListView`` exposes both as zero-copy numpy arrays, so a row is an O(1) slice and a whole batch's values
are one slice of the buffer. Binary columns (bytes per row) read as uint8 values the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ListView:
    """values: the flat buffer the offsets index; offsets: (n+1,) ints; valid: (n,) bool or None (no nulls)."""

    values: np.ndarray
    offsets: np.ndarray
    valid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray | None:
        """Row ``i`` as a view, None where the row is null."""
        if self.valid is not None and not self.valid[i]:
            return None
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """(n,) int64 row lengths, 0 for null rows."""
        n = np.diff(self.offsets).astype(np.int64)
        return n if self.valid is None else np.where(self.valid, n, 0)

    def flat(self) -> np.ndarray:
        """The values of every row in row order: a view of the buffer unless a null row spans values."""
        if self.valid is not None and np.any(np.diff(self.offsets)[~self.valid] != 0):
            parts = [self.row(i) for i in range(len(self))]
            return np.concatenate([p for p in parts if p is not None] or [self.values[:0]])
        return self.values[self.offsets[0]:self.offsets[-1]]


def list_view(column) -> ListView:
    """``ListView`` of a pyarrow list / large_list / binary / large_binary Array or ChunkedArray.

    Zero-copy for an Array or a one-chunk ChunkedArray; several chunks are concatenated first."""
    import pyarrow as pa

    arr = column
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else pa.concat_arrays(arr.chunks)
    t = arr.type
    valid = None if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ListView(arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy(), valid)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        bufs = arr.buffers()
        odt = np.int64 if pa.types.is_large_binary(t) else np.int32
        offsets = np.frombuffer(bufs[1], dtype=odt)[arr.offset:arr.offset + len(arr) + 1]
        values = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        return ListView(values, offsets, valid)
    raise TypeError(f"expected a list or binary column, got {t}")


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``; integers that do not fit raise ValueError instead of wrapping."""
    if values.dtype == dtype:
        return values
    if dtype.kind in "iu" and values.dtype.kind in "iu" and values.size:
        info, lo, hi = np.iinfo(dtype), values.min(), values.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"values in [{lo}, {hi}] do not fit {dtype}")
    return values.astype(dtype)


def list_array(parts: Sequence[np.ndarray], dtype):
    """A pyarrow list column of ``dtype`` values with one row per (flat) numpy array; large_list beyond
    int32 offsets. Values of another dtype are converted (an integer that does not fit raises)."""
    import pyarrow as pa

    dtype = np.dtype(dtype)
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(parts) == 1:
        values = parts[0]
    else:
        values = np.concatenate(parts) if parts else np.zeros(0, dtype)
    values = pa.array(_as_dtype(values, dtype))
    if offsets[-1] > _INT32_MAX:
        return pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
