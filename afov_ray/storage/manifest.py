"""The manifest of a shard folder: ``<dir>/_manifest.json``, written LAST by a job.

Its presence says "this folder is complete"; it lists every shard with rows, bytes and sha256, the
totals, the schema name/version and creation info (docs/architecture.md: commit via a manifest
written last). ``verify_manifest`` re-reads the shards and recomputes everything.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from typing import Any

from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import atomic_write_json

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT_VERSION = 1
_CHUNK = 8 * 2**20


@dataclass(frozen=True)
class ShardEntry:
    name: str       # file name relative to the folder, e.g. "scene-0001.parquet"
    rows: int
    bytes: int
    sha256: str


def sha256_of(uri: str) -> tuple[str, int]:
    """Streaming sha256 and size of one file / object."""
    fs, path = U.resolve(uri)
    h = hashlib.sha256()
    n = 0
    with fs.open_input_stream(path) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def parquet_rows(uri: str) -> int:
    """Row count from the Parquet footer (raises DataError naming the file if it does not parse)."""
    import pyarrow.parquet as pq

    fs, path = U.resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants
        raise DataError(uri, f"not a readable Parquet file ({e})") from e


def shard_entry(dir_uri: str, name: str) -> ShardEntry:
    """Describe one Parquet shard of a folder (reads it once for the checksum)."""
    path = U.join(dir_uri, name)
    sha, size = sha256_of(path)
    return ShardEntry(name=name, rows=parquet_rows(path), bytes=size, sha256=sha)


def write_manifest(
    dir_uri: str,
    shards: list[ShardEntry],
    *,
    schema: str,
    schema_version: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<dir_uri>/_manifest.json`` atomically and return its content.

    ``extra`` (job arguments, error counts, ...) is stored under ``"job"``.
    """
    shards = sorted(shards, key=lambda s: s.name)
    doc = {
        "manifest_version": MANIFEST_FORMAT_VERSION,
        "schema": schema,
        "schema_version": int(schema_version),
        "created": {   # no host or user names: a manifest travels with the data
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
        },
        "job": extra or {},
        "totals": {
            "shards": len(shards),
            "rows": sum(s.rows for s in shards),
            "bytes": sum(s.bytes for s in shards),
        },
        "shards": [asdict(s) for s in shards],
    }
    atomic_write_json(U.join(dir_uri, MANIFEST_NAME), doc)
    return doc


def read_manifest(dir_uri: str) -> dict[str, Any] | None:
    """The manifest of a folder, or ``None`` if the folder has none (job not finished)."""
    path = U.join(dir_uri, MANIFEST_NAME)
    if not U.exists(path):
        return None
    try:
        doc = json.loads(U.read_bytes(path))
    except ValueError as e:
        raise DataError(path, f"manifest is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or "shards" not in doc:
        raise DataError(path, "manifest has no 'shards' list")
    return doc


def verify_manifest(dir_uri: str, check_unlisted: bool = True) -> list[str]:
    """Recompute rows / bytes / sha256 of every listed shard; return the problems found.

    An empty list means the folder is exactly what the manifest says. Each problem names the file.
    With ``check_unlisted``, ``*.parquet`` files present but not listed are reported too.
    """
    doc = read_manifest(dir_uri)
    if doc is None:
        return [f"{U.join(dir_uri, MANIFEST_NAME)}: no manifest"]
    problems: list[str] = []
    listed = set()
    for s in doc["shards"]:
        name = s["name"]
        listed.add(name)
        path = U.join(dir_uri, name)
        if not U.exists(path):
            problems.append(f"{path}: listed in the manifest but missing")
            continue
        try:
            got = shard_entry(dir_uri, name)
        except DataError as e:
            problems.append(str(e))
            continue
        for key in ("rows", "bytes", "sha256"):
            if getattr(got, key) != s[key]:
                problems.append(f"{path}: {key} is {getattr(got, key)}, manifest says {s[key]}")
    totals = doc.get("totals", {})
    if totals.get("rows") != sum(s["rows"] for s in doc["shards"]):
        problems.append(f"{U.join(dir_uri, MANIFEST_NAME)}: totals.rows does not match the shards")
    if check_unlisted:
        for name in U.listdir(dir_uri):
            if name.endswith(".parquet") and name not in listed:
                problems.append(f"{U.join(dir_uri, name)}: shard present but not in the manifest")
    return problems


def write_folder_manifest(dir_uri: str, *, schema: str, schema_version: int, extra: dict[str, Any] | None = None
                          ) -> dict[str, Any]:
    """Describe every ``*.parquet`` shard present in a folder and write its manifest (for shard folders made
    by other tools, or by hand, that a pass should accept as complete)."""
    names = [n for n in U.listdir(dir_uri) if n.endswith(".parquet") and not n.startswith(("_", "."))]
    return write_manifest(dir_uri, [shard_entry(dir_uri, n) for n in names], schema=schema,
                          schema_version=schema_version, extra=extra)
