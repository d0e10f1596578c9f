"""URIs, atomic writes, manifest and the sweeps schema on a local folder."""

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afov_ray.datasets.sweeps import (
    batch_to_keyframes,
    keyframes_to_table,
    row_to_keyframe,
    schema_version_of,
    sweeps_schema,
    table_to_keyframes,
)
from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import (
    AtomicParquetWriter,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    cleanup_stale,
    is_hidden_name,
)
from afov_ray.storage.manifest import read_manifest, shard_entry, verify_manifest, write_manifest
from tests.storage.random_reader import RandomReader, assert_same_keyframe, make_keyframe


def test_uri_local_roundtrip(tmp_path):
    root = str(tmp_path)
    f = U.join(root, "a", "b.bin")
    assert f == os.path.join(root, "a", "b.bin")
    assert not U.exists(f) and U.listdir(U.join(root, "a")) == []
    U.write_bytes(f, b"xyz")
    assert U.exists(f) and U.read_bytes(f) == b"xyz" and U.listdir(U.join(root, "a")) == ["b.bin"]
    fs, path = U.resolve("file://" + f)
    assert path == f and fs.get_file_info(path).size == 3
    assert U.join("s3://bkt/pre/", "x", "/y.parquet") == "s3://bkt/pre/x/y.parquet"
    assert U.split_s3("s3://bkt/pre/x") == ("bkt", "pre/x") and U.parent("s3://bkt/pre/x") == "s3://bkt/pre"


def test_s3_settings_from_env(monkeypatch):
    monkeypatch.delenv("AFOV_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.5:9000")
    assert U.s3_endpoint() == ("10.0.0.5:9000", "http")
    monkeypatch.setenv("AFOV_S3_ENDPOINT", "minio:9000")  # AFOV_ wins; bare host -> https
    assert U.s3_endpoint() == ("minio:9000", "https")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    fs, path = U.resolve("s3://bkt/k/x.parquet")
    assert path == "bkt/k/x.parquet" and fs.region == "eu-west-3"
    assert U.boto3_client().meta.endpoint_url == "https://minio:9000"


def test_atomic_writes_and_failure_leaves_nothing(tmp_path):
    d = str(tmp_path)
    atomic_write_bytes(U.join(d, "a.bin"), b"123")
    atomic_write_json(U.join(d, "b.json"), {"k": [1, 2]})
    table = pa.table({"x": np.arange(10)})
    atomic_write_parquet(U.join(d, "c.parquet"), table)
    assert open(U.join(d, "a.bin"), "rb").read() == b"123"
    assert json.load(open(U.join(d, "b.json"))) == {"k": [1, 2]}
    assert pq.read_table(U.join(d, "c.parquet")).column("x").to_pylist() == list(range(10))
    # an exception in the middle of a streaming write: no final file, no temp left, old version kept
    with pytest.raises(RuntimeError):
        with AtomicParquetWriter(U.join(d, "c.parquet"), table.schema) as w:
            w.write_table(pa.table({"x": np.arange(5)}))
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with AtomicParquetWriter(U.join(d, "d.parquet"), table.schema) as w:
            w.write_table(table)
            raise RuntimeError("boom")
    assert not os.path.exists(U.join(d, "d.parquet")) and os.listdir(U.join(d, "_tmp")) == []
    assert pq.read_table(U.join(d, "c.parquet")).num_rows == 10
    # successful streaming write reports the committed file's size and sha256
    with AtomicParquetWriter(U.join(d, "e.parquet"), table.schema) as w:
        w.write_table(table)
        w.write_table(table)
    data = open(U.join(d, "e.parquet"), "rb").read()
    assert w.rows == 20 and w.stream.bytes_written == len(data)
    assert w.stream.sha256 == hashlib.sha256(data).hexdigest()


def test_cleanup_stale_and_hidden_names(tmp_path):
    d = str(tmp_path)
    U.write_bytes(U.join(d, "_tmp", "x.parquet.abc.tmp"), b"half")
    assert cleanup_stale(d, older_than_s=3600) == 0  # too fresh
    assert cleanup_stale(d, older_than_s=0) == 1 and os.listdir(U.join(d, "_tmp")) == []
    assert is_hidden_name("_manifest.json") and is_hidden_name("x.parquet.abc.tmp")
    assert not is_hidden_name("scene-0001.parquet")


def test_manifest_write_read_verify(tmp_path):
    d = str(tmp_path)
    for i in range(2):
        atomic_write_parquet(U.join(d, f"s{i}.parquet"), pa.table({"x": np.arange(3 + i)}))
    entries = [shard_entry(d, f"s{i}.parquet") for i in range(2)]
    assert [e.rows for e in entries] == [3, 4]
    assert entries[0].sha256 == hashlib.sha256(open(U.join(d, "s0.parquet"), "rb").read()).hexdigest()
    doc = write_manifest(d, entries, schema="t", schema_version=3, extra={"who": "test"})
    assert read_manifest(d) == doc and doc["totals"] == {"shards": 2, "rows": 7, "bytes": sum(e.bytes for e in entries)}
    assert verify_manifest(d) == []
    # tamper: change one shard, add an unlisted one
    atomic_write_parquet(U.join(d, "s1.parquet"), pa.table({"x": np.arange(9)}))
    atomic_write_parquet(U.join(d, "s2.parquet"), pa.table({"x": np.arange(1)}))
    problems = verify_manifest(d)
    assert any("s1.parquet: rows is 9" in p for p in problems)
    assert any("s2.parquet: shard present but not in the manifest" in p for p in problems)
    open(U.join(d, "s0.parquet"), "wb").write(b"garbage")
    assert any("s0.parquet" in p and "Parquet" in p for p in verify_manifest(d))
    assert read_manifest(str(tmp_path / "none")) is None


def test_sweeps_roundtrip_all_paths():
    r = RandomReader(num_scenes=2, keyframes_per_scene=3)
    kfs = [r.read(k) for s in r.scenes() for k in r.keyframe_ids(s)]
    table = keyframes_to_table(kfs)
    assert table.schema.equals(sweeps_schema()) and schema_version_of(table.schema) == 1
    assert table.column("num_points").to_pylist() == [k.num_points for k in kfs]
    assert table.column("ring").null_count == 2  # odd keyframes (kf001 of each scene) carry no ring
    # hand-check the flattening of the first keyframe
    np.testing.assert_array_equal(np.asarray(table.column("points")[0].values), kfs[0].points.reshape(-1))
    np.testing.assert_array_equal(np.asarray(table.column("cam_K")[0].values)[9:],
                                  kfs[0].cameras[1].K.reshape(-1))
    for a, b in zip(kfs, table_to_keyframes(table)):
        assert_same_keyframe(a, b)
    for a, row in zip(kfs, table.to_pylist()):
        assert_same_keyframe(a, row_to_keyframe(row))
    # a Ray-style numpy batch: list columns as object arrays of numpy arrays
    batch = {name: np.array([None if v is None else np.asarray(v) if isinstance(v, list) else v
                             for v in table.column(name).to_pylist()] + [None], dtype=object)[:-1]
             for name in table.column_names}
    for a, b in zip(kfs, batch_to_keyframes(batch)):
        assert_same_keyframe(a, b)
    assert [k.sample_token for k in batch_to_keyframes(table.slice(1))] == [k.sample_token for k in kfs[1:]]
    assert_same_keyframe(kfs[2], batch_to_keyframes(table.slice(1))[1])
    # zero-copy: the points of a keyframe view the Arrow buffer
    back = table_to_keyframes(table)[0]
    assert back.points.base is not None and not back.points.flags.owndata


def test_sweeps_bad_keyframes_named():
    kf = make_keyframe("scene-0000/kf000")
    kf.points = kf.points[:, :3]
    with pytest.raises(DataError) as e:
        keyframes_to_table([kf])
    assert "scene-0000/kf000.points" in str(e.value)
    kf = make_keyframe("scene-0000/kf000")
    kf.labels = kf.labels[:-1]
    with pytest.raises(DataError, match="scene-0000/kf000.labels"):
        keyframes_to_table([kf])
    kf = make_keyframe("scene-0000/kf000")
    kf.raw_labels = kf.raw_labels.astype(np.uint32) + 70000
    with pytest.raises(DataError, match="raw_labels"):
        keyframes_to_table([kf])
