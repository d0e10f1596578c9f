"""Storage on a real S3 protocol endpoint (moto server on loopback): pyarrow.fs and boto3."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afov_ray.datasets.sweeps import keyframes_to_table, sweeps_schema, table_to_keyframes
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import AtomicParquetWriter, atomic_write_json, cleanup_stale
from afov_ray.storage.manifest import read_manifest, verify_manifest
from tests.s3_fixture import s3_bucket, s3_server  # noqa: F401
from tests.storage.random_reader import RandomReader, assert_same_keyframe
from tests.storage.random_reader import run_prepare_on as prepare


def _keys(bucket_uri, prefix=""):
    bucket, _ = U.split_s3(bucket_uri)
    resp = U.boto3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_uri_ops_on_s3(s3_bucket):
    f = U.join(s3_bucket, "pre", "a.bin")
    assert not U.exists(f) and U.listdir(U.join(s3_bucket, "pre")) == []
    U.write_bytes(f, b"hello")
    assert U.exists(f) and U.read_bytes(f) == b"hello" and U.file_size(f) == 5
    assert U.listdir(U.join(s3_bucket, "pre")) == ["a.bin"]
    assert _keys(s3_bucket) == ["pre/a.bin"]
    U.delete(f)
    assert not U.exists(f)


def test_shards_write_read_pyarrow_and_boto3_listing(s3_bucket):
    r = RandomReader(num_scenes=2, keyframes_per_scene=3)
    prefix = U.join(s3_bucket, "data", "sweeps")
    kfs = {}
    for scene in r.scenes():
        kfs[scene] = [r.read(k) for k in r.keyframe_ids(scene)]
        with AtomicParquetWriter(U.join(prefix, f"{scene}.parquet"), sweeps_schema()) as w:
            w.write_table(keyframes_to_table(kfs[scene][:2]))
            w.write_table(keyframes_to_table(kfs[scene][2:]))
    atomic_write_json(U.join(prefix, "_manifest.json"), {"shards": []})
    # boto3 listing: final objects only, the temp objects were deleted after the server-side copy
    assert _keys(s3_bucket, "data/") == ["data/sweeps/_manifest.json", "data/sweeps/scene-0000.parquet",
                                        "data/sweeps/scene-0001.parquet"]
    # pyarrow.fs read back, bit-exact
    fs, path = U.resolve(U.join(prefix, "scene-0001.parquet"))
    table = pq.read_table(path, filesystem=fs)
    assert table.num_rows == 3 and table.schema.equals(sweeps_schema())
    for a, b in zip(kfs["scene-0001"], table_to_keyframes(table)):
        assert_same_keyframe(a, b)
    # a failed write leaves nothing under the final name (and its temp is removed)
    with pytest.raises(RuntimeError):
        with AtomicParquetWriter(U.join(prefix, "scene-0002.parquet"), sweeps_schema()) as w:
            w.write_table(keyframes_to_table(kfs["scene-0000"]))
            raise RuntimeError("killed")
    assert not U.exists(U.join(prefix, "scene-0002.parquet")) and _keys(s3_bucket, "data/sweeps/_tmp") == []
    U.write_bytes(U.join(prefix, "_tmp", "x.parquet.1.tmp"), b"stale")
    assert cleanup_stale(prefix, older_than_s=0) == 1 and _keys(s3_bucket, "data/sweeps/_tmp") == []


def test_prepare_to_s3_resume_and_verify(s3_bucket):
    out = U.join(s3_bucket, "run1")
    s = prepare(RandomReader(num_scenes=2, bad=("scene-0000/kf003",)), out)
    assert s.manifest_written and s.stats["keyframes"] == 7
    assert verify_manifest(s.out) == []
    man = read_manifest(s.out)
    assert [x["name"] for x in man["shards"]] == ["scene-0000.parquet", "scene-0001.parquet"]
    keys = _keys(s3_bucket, "run1/")
    assert "run1/sweeps/_errors.jsonl" in keys and not any("_tmp" in k for k in keys)
    assert b"scene-0000/kf003" in U.read_bytes(U.join(s.out, "_errors.jsonl"))
    # tamper with a shard on S3: verify names it
    U.write_bytes(U.join(s.out, "scene-0001.parquet"),
                  U.read_bytes(U.join(s.out, "scene-0000.parquet")))
    assert any("scene-0001.parquet" in p for p in verify_manifest(s.out))
    s2 = prepare(RandomReader(num_scenes=3, bad=("scene-0000/kf003",)), out)
    # scene-0001's size changed -> redone; scene-0002 new; scene-0000 skipped
    assert s2.done_before == ["scene-0000"] and s2.written == ["scene-0001", "scene-0002"]
    assert verify_manifest(s2.out) == [] and s2.stats["keyframes"] == 11


def test_pyarrow_table_roundtrip_plain(s3_bucket):
    fs, path = U.resolve(U.join(s3_bucket, "t", "x.parquet"))
    pq.write_table(pa.table({"v": np.arange(100, dtype=np.float32)}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("v").to_numpy().sum() == np.arange(100).sum()
