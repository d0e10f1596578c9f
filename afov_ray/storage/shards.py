"""Reading shard folders the way every pass does: manifest checked, names safe, checksums verified.

A shard folder (``<dir>/<key>.parquet``, one shard per scene) is complete when its ``_manifest.json``
exists (``afov_ray.storage.manifest``; written last by the pass that produced the folder). Readers go
through this module:

- ``open_folder(uri)`` lists the shards of a folder from its manifest: names unique and safe as file
  names, every listed shard present with its recorded size. A folder without a manifest is an error
  naming the folder (its job has not finished) unless ``require_manifest=False``.
- ``read_table(shard)`` reads one shard's bytes once, checks size and sha256 against the manifest entry
  (so a shard swapped for another or edited after the fact is a clear error, not a silent wrong result)
  and parses the Parquet from memory.
- ``check_key_column(table, shard)`` checks that the shard's own ``scene`` column equals its file name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.storage.manifest import MANIFEST_NAME, ShardEntry, read_manifest

SUFFIX = ".parquet"


@dataclass(frozen=True)
class Shard:
    key: str                       # the item (scene) name: the file name without ".parquet"
    uri: str
    entry: ShardEntry | None = None  # rows / bytes / sha256 from the manifest (None: folder without one)


def shard_key(name: str) -> str:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def _listing(uri: str) -> dict[str, int]:
    fs, path = U.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return {U.basename(i.path): int(i.size or 0) for i in infos if i.type == pafs.FileType.File}


def open_folder(uri: str, *, require_manifest: bool = True, what: str = "shard folder") -> dict[str, Shard]:
    """``{key: Shard}`` of a shard folder, in key order (see the module docstring)."""
    doc = read_manifest(uri)
    files = _listing(uri)
    if doc is None:
        if require_manifest:
            if not files:
                raise DataError(uri, f"{what} is missing or empty")
            raise DataError(U.join(uri, MANIFEST_NAME),
                            f"{what} has no manifest: the job that writes it has not finished (or some of its items "
                            f"failed); rerun that job, or set require_manifest=false to use the shards present")
        out = {}
        for name in sorted(files):
            if name.endswith(SUFFIX) and not name.startswith(("_", ".")):
                key = shard_key(name)
                U.check_component(key, "shard name")
                out[key] = Shard(key, U.join(uri, name))
        return out
    out = {}
    for s in doc["shards"]:
        try:
            entry = ShardEntry(name=str(s["name"]), rows=int(s["rows"]), bytes=int(s["bytes"]), sha256=str(s["sha256"]))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(U.join(uri, MANIFEST_NAME), f"bad shard entry {s!r} ({e})") from None
        key = shard_key(entry.name)
        try:
            U.check_component(entry.name, "shard name")
        except U.UnsafePathError as e:
            raise DataError(U.join(uri, MANIFEST_NAME), str(e)) from None
        if key in out:
            raise DataError(U.join(uri, MANIFEST_NAME), f"shard {entry.name!r} is listed twice")
        if entry.name not in files:
            raise DataError(U.join(uri, entry.name), "listed in the manifest but missing")
        if files[entry.name] != entry.bytes:
            raise DataError(U.join(uri, entry.name), f"size {files[entry.name]} differs from the manifest's "
                                                     f"{entry.bytes}: the file changed after the manifest was written")
        out[key] = Shard(key, U.join(uri, entry.name), entry)
    return dict(sorted(out.items()))


def select(shards: dict[str, Shard], keys: Sequence[str] | None) -> dict[str, Shard]:
    """The shards of ``keys`` (None: all); keys without a shard are ignored."""
    if keys is None:
        return dict(shards)
    want = set(keys)
    return {k: v for k, v in shards.items() if k in want}


def read_bytes_verified(shard: Shard, verify: bool = True) -> bytes:
    try:
        data = U.read_bytes(shard.uri)
    except (OSError, FileNotFoundError) as e:
        raise DataError(shard.uri, f"cannot read shard ({e})") from None
    if verify and shard.entry is not None:
        if len(data) != shard.entry.bytes:
            raise DataError(shard.uri, f"read {len(data)} bytes, the manifest says {shard.entry.bytes}")
        if hashlib.sha256(data).hexdigest() != shard.entry.sha256:
            raise DataError(shard.uri, "sha256 differs from the manifest: the shard was changed or swapped after "
                                       "the manifest was written")
    return data


def read_table(shard: Shard, columns: Sequence[str] | None = None, verify: bool = True) -> pa.Table:
    """One shard as a Table (only ``columns`` if given), bytes checked against its manifest entry."""
    data = read_bytes_verified(shard, verify)
    try:
        return pq.read_table(pa.BufferReader(data), columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise DataError(shard.uri, f"not a readable Parquet shard ({e})") from None


def read_schema(shard: Shard) -> pa.Schema:
    fs, path = U.resolve(shard.uri)
    try:
        return pq.read_schema(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(shard.uri, f"not a readable Parquet shard ({e})") from None


def require_columns(schema_or_table, columns: Sequence[str], item: str, what: str = "shard") -> None:
    names = set(schema_or_table.schema.names if hasattr(schema_or_table, "schema") else schema_or_table.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(item, f"not a {what}: missing column(s) {missing}")


def check_key_column(table: pa.Table, shard: Shard, column: str = "scene") -> None:
    """Every row's ``column`` equals the shard's file name (a shard renamed or holding another scene)."""
    if column not in table.column_names or table.num_rows == 0:
        return
    values = set(table.column(column).unique().to_pylist())
    if values != {shard.key}:
        other = sorted(str(v) for v in values - {shard.key})[:3]
        raise DataError(shard.uri, f"shard {shard.key!r} holds rows of {column} {other}: its content does not match "
                                   f"its file name")
