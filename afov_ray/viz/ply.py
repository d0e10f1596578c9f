"""Point clouds as binary little-endian PLY (Open3D, CloudCompare, MeshLab read them).

One ``vertex`` element: ``x y z`` (float32), optional ``red green blue`` (uchar) and any extra
scalar properties (e.g. ``label`` int, ``score`` float), which CloudCompare shows as scalar fields.
``read_ply`` parses such files back with numpy (binary little/big endian, vertex element only).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from afov_ray.storage.atomic import atomic_write_bytes

# numpy dtype (kind, itemsize) -> PLY type name, and back.
_TO_PLY = {("i", 1): "char", ("u", 1): "uchar", ("i", 2): "short", ("u", 2): "ushort", ("i", 4): "int",
           ("u", 4): "uint", ("f", 4): "float", ("f", 8): "double"}
_FROM_PLY = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {"x", "y", "z", "red", "green", "blue", "comments"}


def _scalar_dtype(name: str, arr: np.ndarray) -> np.dtype:
    """The stored dtype of a scalar property: bool -> uchar, int64/uint64 -> int32/uint32 when the
    values fit (else an error), float16 -> float32; other numeric dtypes are kept."""
    if arr.dtype == np.bool_:
        return np.dtype("u1")
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        target = np.dtype("i4" if arr.dtype.kind == "i" else "u4")
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"scalar {name!r}: values outside the {target} range of PLY")
        return target
    if arr.dtype == np.float16:
        return np.dtype("f4")
    if (arr.dtype.kind, arr.dtype.itemsize) not in _TO_PLY:
        raise TypeError(f"scalar {name!r}: dtype {arr.dtype} has no PLY type")
    return arr.dtype.newbyteorder("<")


def _colors_u8(colors: np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(colors)
    if c.shape != (n, 3):
        raise ValueError(f"colors must be ({n}, 3), got {c.shape}")
    if c.dtype == np.uint8:
        return c
    if c.dtype.kind == "f":
        return np.clip(np.rint(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if c.dtype.kind in "iu" and (c.size == 0 or (c.min() >= 0 and c.max() <= 255)):
        return c.astype(np.uint8)
    raise ValueError("colors: float RGB in [0, 1] or integers 0..255 expected")


def write_ply(path: str | Path, xyz: np.ndarray, colors: np.ndarray | None = None,
              scalars: Mapping[str, np.ndarray] | None = None, comments: Sequence[str] = ()) -> str:
    """Write a binary little-endian PLY point cloud and return its path.

    ``xyz`` (N, 3) -> float32 x, y, z. ``colors`` (N, 3): float RGB in [0, 1] (rounded to 0..255) or
    uint8. ``scalars``: name -> (N,) array, one property each, in the given order (int64 labels are
    stored as int32, bool as uchar). ``comments``: header comment lines (e.g. class names).
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {xyz.shape}")
    n = len(xyz)
    fields: list[tuple[str, np.dtype, np.ndarray]] = [
        (a, np.dtype("<f4"), xyz[:, i]) for i, a in enumerate("xyz")]
    if colors is not None:
        c = _colors_u8(colors, n)
        fields += [(a, np.dtype("u1"), c[:, i]) for i, a in enumerate(("red", "green", "blue"))]
    for name, values in (scalars or {}).items():
        v = np.asarray(values)
        if not _NAME.match(name) or name in _RESERVED:
            raise ValueError(f"bad scalar property name {name!r}")
        if v.shape != (n,):
            raise ValueError(f"scalar {name!r} must be ({n},), got {v.shape}")
        fields.append((name, _scalar_dtype(name, v), v))
    rec = np.empty(n, dtype=[(name, dt) for name, dt, _ in fields])
    for name, _, v in fields:
        rec[name] = v
    header = ["ply", "format binary_little_endian 1.0"]
    for line in comments:
        header.append("comment " + " ".join(str(line).split()))
    header.append(f"element vertex {n}")
    for name, dt, _ in fields:
        header.append(f"property {_TO_PLY[(dt.kind, dt.itemsize)]} {name}")
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(path), ("\n".join(header) + "\n").encode("ascii") + rec.tobytes())
    return str(path)


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Properties of the ``vertex`` element of a binary PLY file, by name (file dtypes, native order).

    Header comments are returned under the key ``"comments"`` (a 1-D array of str). Only files whose
    first element is ``vertex`` with scalar (non-list) properties are supported.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    body = data.index(b"\n", end) + 1
    lines = data[:body].decode("ascii").splitlines()
    fmt, n, props, comments, element = None, 0, [], [], None
    for line in lines[1:]:
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "comment":
            comments.append(line[len("comment "):])
        elif tok[0] == "element":
            if element is not None:
                break  # later elements (faces ...) are not read
            element, n = tok[1], int(tok[2])
            if element != "vertex":
                raise ValueError(f"{path}: first element is {element!r}, not 'vertex'")
        elif tok[0] == "property":
            if tok[1] == "list":
                raise ValueError(f"{path}: list properties are not supported")
            props.append((tok[2], _FROM_PLY[tok[1]]))
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
    if order is None:
        raise ValueError(f"{path}: format {fmt!r} is not supported (binary only)")
    dtype = np.dtype([(name, order + code) for name, code in props])
    rec = np.frombuffer(data, dtype=dtype, count=n, offset=body)
    out = {name: rec[name].astype(rec[name].dtype.newbyteorder("="), copy=True) for name, _ in props}
    out["comments"] = np.asarray(comments, dtype=str)
    return out
