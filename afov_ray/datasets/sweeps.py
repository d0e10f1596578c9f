"""The sweep shard schema (versioned): one Parquet row per keyframe (``Keyframe``, types.py).

Columns (cameras are parallel lists, one entry per camera, in the reader's camera order):

=================  ====================  ===================================================
dataset            string                "nuscenes" | "semantickitti"
scene              string                scene name / KITTI sequence
sample_token       string
lidar_token        string
timestamp          int64                 microseconds (nuScenes) / frame time (KITTI)
lidar_path         string                relative to the dataroot
num_points         int32                 N
points             list<float32>         N*4 flattened row-major: x, y, z, intensity
ring               list<uint8>   (null)  N beam indices if the format has them
raw_labels         list<uint16>  (null)  N raw dataset labels
labels             list<uint8>   (null)  N evaluation labels, 0 = ignore
cam_channel        list<string>          C
cam_token          list<string>          C
cam_image_path     list<string>          C, relative to the dataroot
cam_width          list<int32>           C
cam_height         list<int32>           C
cam_timestamp      list<int64>           C
cam_K              list<float64>         9*C, each 3x3 row-major
cam_lidar_to_cam   list<float64>         16*C, each 4x4 row-major (whole calibration chain)
=================  ====================  ===================================================

Conversions: ``keyframes_to_table`` (build one table, one copy of the point data),
``table_to_keyframes`` (zero-copy numpy views into the Arrow buffers), ``row_to_keyframe`` (a
``to_pylist`` row or a Ray Data row with numpy values) and ``batch_to_keyframes`` (a Ray
``map_batches`` batch, numpy dict or pyarrow Table).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError

SWEEPS_SCHEMA_NAME = "sweeps"
SWEEPS_SCHEMA_VERSION = 1
_MAX_LIST_VALUES = 2**31 - 1  # int32 list offsets per table chunk

_schema_cache: list = []


def sweeps_schema():
    """The ``pyarrow.Schema`` of sweep shards, with ``afov.schema`` / ``afov.schema_version`` metadata."""
    if _schema_cache:
        return _schema_cache[0]
    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("scene", pa.string(), nullable=False),
            pa.field("sample_token", pa.string(), nullable=False),
            pa.field("lidar_token", pa.string(), nullable=False),
            pa.field("timestamp", pa.int64(), nullable=False),
            pa.field("lidar_path", pa.string(), nullable=False),
            pa.field("num_points", pa.int32(), nullable=False),
            pa.field("points", pa.list_(pa.float32()), nullable=False),
            pa.field("ring", pa.list_(pa.uint8()), nullable=True),
            pa.field("raw_labels", pa.list_(pa.uint16()), nullable=True),
            pa.field("labels", pa.list_(pa.uint8()), nullable=True),
            pa.field("cam_channel", pa.list_(pa.string()), nullable=False),
            pa.field("cam_token", pa.list_(pa.string()), nullable=False),
            pa.field("cam_image_path", pa.list_(pa.string()), nullable=False),
            pa.field("cam_width", pa.list_(pa.int32()), nullable=False),
            pa.field("cam_height", pa.list_(pa.int32()), nullable=False),
            pa.field("cam_timestamp", pa.list_(pa.int64()), nullable=False),
            pa.field("cam_K", pa.list_(pa.float64()), nullable=False),
            pa.field("cam_lidar_to_cam", pa.list_(pa.float64()), nullable=False),
        ],
        metadata={"afov.schema": SWEEPS_SCHEMA_NAME, "afov.schema_version": str(SWEEPS_SCHEMA_VERSION)},
    )
    _schema_cache.append(schema)
    return schema


def schema_version_of(schema) -> int | None:
    """The sweeps schema version stored in a schema's metadata, or None if it is not a sweeps schema."""
    md = schema.metadata or {}
    if md.get(b"afov.schema") != SWEEPS_SCHEMA_NAME.encode():
        return None
    try:
        return int(md.get(b"afov.schema_version", b""))
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# Keyframes -> table


def check_keyframe(kf: Keyframe) -> None:
    """Raise DataError naming the field if a keyframe does not fit the schema."""
    item = f"{kf.dataset}/{kf.scene}/{kf.sample_token}"
    pts = kf.points
    if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] != 4:
        raise DataError(f"{item}.points", f"expected an (N, 4) array, got {getattr(pts, 'shape', type(pts))}")
    n = pts.shape[0]
    for name in ("ring", "raw_labels", "labels"):
        arr = getattr(kf, name)
        if arr is not None and np.shape(arr) != (n,):
            raise DataError(f"{item}.{name}", f"expected shape ({n},), got {np.shape(arr)}")
    if kf.raw_labels is not None and kf.raw_labels.size and (
        int(np.max(kf.raw_labels)) > 65535 or int(np.min(kf.raw_labels)) < 0
    ):
        raise DataError(f"{item}.raw_labels", "values outside uint16 (store the low 16 bits)")
    for cam in kf.cameras:
        if np.shape(cam.K) != (3, 3):
            raise DataError(f"{item}.{cam.channel}.K", f"expected (3, 3), got {np.shape(cam.K)}")
        if np.shape(cam.lidar_to_cam) != (4, 4):
            raise DataError(f"{item}.{cam.channel}.lidar_to_cam", f"expected (4, 4), got {np.shape(cam.lidar_to_cam)}")


def _list_array(parts: Sequence[np.ndarray | None], dtype: np.dtype, value_type, name: str):
    """ListArray from per-row 1-D arrays (None = null row) with one concatenation copy."""
    import pyarrow as pa

    lengths = np.array([0 if p is None else np.size(p) for p in parts], dtype=np.int64)
    total = int(lengths.sum())
    if total > _MAX_LIST_VALUES:
        raise DataError(name, f"{total} values exceed one table chunk; write fewer keyframes per table")
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [np.asarray(p, dtype=dtype).reshape(-1) for p in parts if p is not None]
    values = np.concatenate(present) if present else np.zeros(0, dtype=dtype)
    nulls = np.array([p is None for p in parts], dtype=bool)
    mask = pa.array(nulls) if nulls.any() else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type), mask=mask)


def keyframes_to_table(keyframes: Sequence[Keyframe]):
    """Build one sweeps-schema ``pa.Table`` from keyframes (raises DataError naming a bad field)."""
    import pyarrow as pa

    for kf in keyframes:
        check_keyframe(kf)
    schema = sweeps_schema()
    cams = [kf.cameras for kf in keyframes]

    def strs(values: list[list[str]]):
        return pa.array(values, type=pa.list_(pa.string()))

    cols = {
        "dataset": pa.array([kf.dataset for kf in keyframes], pa.string()),
        "scene": pa.array([kf.scene for kf in keyframes], pa.string()),
        "sample_token": pa.array([kf.sample_token for kf in keyframes], pa.string()),
        "lidar_token": pa.array([kf.lidar_token for kf in keyframes], pa.string()),
        "timestamp": pa.array([int(kf.timestamp) for kf in keyframes], pa.int64()),
        "lidar_path": pa.array([kf.lidar_path for kf in keyframes], pa.string()),
        "num_points": pa.array([kf.num_points for kf in keyframes], pa.int32()),
        "points": _list_array([kf.points for kf in keyframes], np.float32, pa.float32(), "points"),
        "ring": _list_array([kf.ring for kf in keyframes], np.uint8, pa.uint8(), "ring"),
        "raw_labels": _list_array([kf.raw_labels for kf in keyframes], np.uint16, pa.uint16(), "raw_labels"),
        "labels": _list_array([kf.labels for kf in keyframes], np.uint8, pa.uint8(), "labels"),
        "cam_channel": strs([[c.channel for c in cs] for cs in cams]),
        "cam_token": strs([[c.token for c in cs] for cs in cams]),
        "cam_image_path": strs([[c.image_path for c in cs] for cs in cams]),
        "cam_width": _list_array([[c.width for c in cs] for cs in cams], np.int32, pa.int32(), "cam_width"),
        "cam_height": _list_array([[c.height for c in cs] for cs in cams], np.int32, pa.int32(), "cam_height"),
        "cam_timestamp": _list_array([[c.timestamp for c in cs] for cs in cams], np.int64, pa.int64(), "cam_timestamp"),
        "cam_K": _list_array(
            [np.concatenate([np.asarray(c.K, np.float64).reshape(9) for c in cs]) if cs else [] for cs in cams],
            np.float64, pa.float64(), "cam_K"),
        "cam_lidar_to_cam": _list_array(
            [np.concatenate([np.asarray(c.lidar_to_cam, np.float64).reshape(16) for c in cs]) if cs else []
             for cs in cams],
            np.float64, pa.float64(), "cam_lidar_to_cam"),
    }
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


# ------------------------------------------------------------------------------------------------
# Rows / batches / tables -> keyframes


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _arr(value: Any, dtype) -> np.ndarray | None:
    if _is_null(value):
        return None
    return np.asarray(value, dtype=dtype)


def _strs(value: Any) -> list[str]:
    return [] if _is_null(value) else [str(v) for v in value]


def _cameras(row: Mapping[str, Any]) -> list[CameraFrame]:
    channels = _strs(row["cam_channel"])
    c = len(channels)
    if c == 0:
        return []
    tokens = _strs(row["cam_token"])
    paths = _strs(row["cam_image_path"])
    widths = np.asarray(row["cam_width"], np.int64)
    heights = np.asarray(row["cam_height"], np.int64)
    stamps = np.asarray(row["cam_timestamp"], np.int64)
    ks = np.asarray(row["cam_K"], np.float64).reshape(c, 3, 3)
    l2c = np.asarray(row["cam_lidar_to_cam"], np.float64).reshape(c, 4, 4)
    return [
        CameraFrame(channel=channels[i], token=tokens[i], image_path=paths[i], width=int(widths[i]),
                    height=int(heights[i]), K=ks[i], lidar_to_cam=l2c[i], timestamp=int(stamps[i]))
        for i in range(c)
    ]


def row_to_keyframe(row: Mapping[str, Any]) -> Keyframe:
    """One row (``Table.to_pylist()`` dict, or a Ray Data row with numpy values) -> Keyframe.

    Numpy inputs are viewed, not copied, where the dtype already matches.
    """
    item = f"{row.get('dataset')}/{row.get('scene')}/{row.get('sample_token')}"
    points = np.asarray(row["points"], dtype=np.float32)
    if points.size % 4:
        raise DataError(f"{item}.points", f"{points.size} values is not a multiple of 4")
    return Keyframe(
        dataset=str(row["dataset"]),
        sample_token=str(row["sample_token"]),
        lidar_token=str(row["lidar_token"]),
        scene=str(row["scene"]),
        timestamp=int(row["timestamp"]),
        points=points.reshape(-1, 4),
        raw_labels=_arr(row.get("raw_labels"), np.uint16),
        labels=_arr(row.get("labels"), np.uint8),
        cameras=_cameras(row),
        lidar_path=str(row.get("lidar_path", "")),
        ring=_arr(row.get("ring"), np.uint8),
    )


def batch_to_keyframes(batch: Any) -> list[Keyframe]:
    """A ``map_batches`` batch -> keyframes: a dict of numpy arrays (``batch_format="numpy"``,
    list columns as object arrays of arrays or 2-D arrays), a pandas DataFrame, or a pyarrow Table."""
    try:
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            return table_to_keyframes(batch)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        batch = {c: batch[c].to_numpy() for c in batch.columns}
    n = len(batch["sample_token"])
    return [row_to_keyframe({k: v[i] for k, v in batch.items()}) for i in range(n)]


def _list_slices(column, dtype) -> list[np.ndarray | None]:
    """Per-row numpy views into a (chunked) list column's value buffer; None for null rows."""
    out: list[np.ndarray | None] = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False)
        if values.dtype != dtype:
            values = values.astype(dtype)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else None
        for i in range(len(chunk)):
            if valid is not None and not valid[i]:
                out.append(None)
            else:
                out.append(values[offsets[i]:offsets[i + 1]])
    return out


def table_to_keyframes(table) -> list[Keyframe]:
    """A sweeps-schema table -> keyframes; point / label arrays are zero-copy views into Arrow memory."""
    n = table.num_rows
    if n == 0:
        return []
    scalars = {name: table.column(name).to_pylist()
               for name in ("dataset", "scene", "sample_token", "lidar_token", "timestamp", "lidar_path")}
    lists = {
        "points": _list_slices(table.column("points"), np.float32),
        "ring": _list_slices(table.column("ring"), np.uint8),
        "raw_labels": _list_slices(table.column("raw_labels"), np.uint16),
        "labels": _list_slices(table.column("labels"), np.uint8),
        "cam_width": _list_slices(table.column("cam_width"), np.int32),
        "cam_height": _list_slices(table.column("cam_height"), np.int32),
        "cam_timestamp": _list_slices(table.column("cam_timestamp"), np.int64),
        "cam_K": _list_slices(table.column("cam_K"), np.float64),
        "cam_lidar_to_cam": _list_slices(table.column("cam_lidar_to_cam"), np.float64),
    }
    strings = {name: table.column(name).to_pylist() for name in ("cam_channel", "cam_token", "cam_image_path")}
    rows = []
    for i in range(n):
        row = {k: v[i] for k, v in scalars.items()}
        row.update({k: v[i] for k, v in lists.items()})
        row.update({k: v[i] for k, v in strings.items()})
        rows.append(row_to_keyframe(row))
    return rows


def iter_keyframes(tables: Iterable[Any]) -> Iterable[Keyframe]:
    for t in tables:
        yield from table_to_keyframes(t)
