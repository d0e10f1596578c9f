"""The prediction shard schema and its readers (written by predict and AFI, read by evaluate and export).

One row per scan: sample_token, scene, lidar_token, num_points, xyz (N*3), pred (N), gt (N, null), pseudo
(N, null), visible (N, null), logits (N*C float16, null), pred_afi (N, null), afi_changed (null); see
``afov_ray.pipeline.predict`` for the meaning of each column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from afov_ray.storage import shards as S

PREDICTION_SCHEMA_VERSION = 1


def prediction_schema():
    return pa.schema([
        ("sample_token", pa.string()), ("scene", pa.string()), ("lidar_token", pa.string()),
        ("num_points", pa.int32()), ("xyz", pa.list_(pa.float32())), ("pred", pa.list_(pa.uint8())),
        ("gt", pa.list_(pa.uint8())), ("pseudo", pa.list_(pa.uint8())), ("visible", pa.list_(pa.bool_())),
        ("logits", pa.list_(pa.float16())), ("pred_afi", pa.list_(pa.uint8())), ("afi_changed", pa.float64()),
    ], metadata={b"afov.prediction_schema": str(PREDICTION_SCHEMA_VERSION).encode()})


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a prediction table as dicts of numpy arrays (``xyz`` flat, float32)."""
    rows = []
    for r in table.to_pylist():
        out = dict(r)
        for k, dt in (("xyz", np.float32), ("pred", np.uint8), ("gt", np.uint8), ("pseudo", np.uint8),
                      ("visible", bool), ("pred_afi", np.uint8), ("logits", np.float16)):
            if r.get(k) is not None:
                out[k] = np.asarray(r[k], dt)
        rows.append(out)
    return rows


def read_prediction_shard(shard: S.Shard | str, verify: bool = True) -> list[dict[str, Any]]:
    """Rows of one prediction shard as dicts of numpy arrays (``xyz`` flat (N*3,))."""
    if isinstance(shard, str):
        shard = S.Shard(shard.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet"), shard)
    table = S.read_table(shard, verify=verify)
    S.require_columns(table, ["sample_token", "scene", "num_points", "xyz", "pred"], shard.uri, "prediction shard")
    S.check_key_column(table, shard)
    return rows_of(table)
