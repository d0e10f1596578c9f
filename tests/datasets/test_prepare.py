"""prepare: bad keyframes, resumability, killed jobs (local output, no Ray; Ray runs in tests/storage/test_ray_s3.py)."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from afov_ray.pipeline.prepare import ERRORS_NAME, ReaderSpec, make_reader, prepare
from afov_ray.storage.manifest import read_manifest, verify_manifest
from afov_ray.datasets.sweeps import table_to_keyframes
from tests.storage.random_reader import RandomReader, assert_same_keyframe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _errors(sweeps):
    return [json.loads(line) for line in open(os.path.join(sweeps, ERRORS_NAME))]


def _visible_rows(sweeps):
    """What a reader of the folder sees (pyarrow dataset; skips _-prefixed entries)."""
    for name in os.listdir(sweeps):
        if name.endswith(".parquet"):
            pq.read_metadata(os.path.join(sweeps, name))  # every visible shard parses
    return pads.dataset(sweeps, format="parquet").to_table().num_rows


def test_prepare_writes_shards_and_records_bad_keyframes(tmp_path):
    reader = RandomReader(num_scenes=3, keyframes_per_scene=4, bad=("scene-0001/kf002", "scene-0002/kf000"))
    s = prepare(reader, str(tmp_path), use_ray=False, progress=False, rows_per_group=3)
    sweeps = s.sweeps_uri
    assert s.scenes_written == ["scene-0000", "scene-0001", "scene-0002"] and s.scenes_failed == []
    assert s.keyframes_written == s.keyframes_total == 10 and s.manifest_written
    assert sorted(n for n in os.listdir(sweeps) if n.endswith(".parquet")) == [
        "scene-0000.parquet", "scene-0001.parquet", "scene-0002.parquet"]
    errs = _errors(sweeps)
    assert [(e["scene"], e["item"]) for e in errs] == [("scene-0001", "scene-0001/kf002"),
                                                        ("scene-0002", "scene-0002/kf000")]
    assert all(e["message"] == "corrupt point file (test)" for e in errs)
    man = read_manifest(sweeps)
    assert man["totals"]["rows"] == 10 and man["job"]["keyframes_skipped"] == 2
    assert {x["name"]: x["rows"] for x in man["shards"]} == {
        "scene-0000.parquet": 4, "scene-0001.parquet": 3, "scene-0002.parquet": 3}
    assert verify_manifest(sweeps) == []
    # content: exactly the good keyframes, in order, bit-exact
    t = pq.read_table(os.path.join(sweeps, "scene-0001.parquet"))
    assert t.num_rows == 3 and len(pq.ParquetFile(os.path.join(sweeps, "scene-0001.parquet")).metadata.to_dict()["row_groups"]) == 1
    got = table_to_keyframes(t)
    assert [k.sample_token for k in got] == ["scene-0001/kf000", "scene-0001/kf001", "scene-0001/kf003"]
    for k in got:
        assert_same_keyframe(reader.read(k.sample_token), k)
    # rerun: everything skipped, nothing rewritten, errors kept
    mtime = os.path.getmtime(os.path.join(sweeps, "scene-0000.parquet"))
    s2 = prepare(reader, str(tmp_path), use_ray=False, progress=False)
    assert s2.scenes_skipped == ["scene-0000", "scene-0001", "scene-0002"] and s2.scenes_written == []
    assert s2.keyframes_total == 10 and len(s2.errors) == 2 and verify_manifest(sweeps) == []
    assert os.path.getmtime(os.path.join(sweeps, "scene-0000.parquet")) == mtime


def test_all_bad_scene_gives_empty_shard(tmp_path):
    reader = RandomReader(num_scenes=1, keyframes_per_scene=2, bad=("scene-0000/kf000", "scene-0000/kf001"))
    s = prepare(reader, str(tmp_path), use_ray=False, progress=False)
    assert s.scenes_written == ["scene-0000"] and s.keyframes_total == 0 and len(s.errors) == 2
    assert pq.read_table(os.path.join(s.sweeps_uri, "scene-0000.parquet")).num_rows == 0


@dataclass(frozen=True)
class FailingReader(RandomReader):
    """Raises a non-data error in the middle of scene-0001, after row groups were written."""

    def read(self, keyframe_id):
        if keyframe_id == "scene-0001/kf002":
            raise RuntimeError("disk on fire")
        return super().read(keyframe_id)


def test_exception_mid_write_then_resume(tmp_path):
    s = prepare(FailingReader(num_scenes=3), str(tmp_path), use_ray=False, progress=False, rows_per_group=1)
    sweeps = s.sweeps_uri
    assert s.scenes_failed == ["scene-0001"] and s.scenes_written == ["scene-0000", "scene-0002"]
    assert not s.manifest_written and read_manifest(sweeps) is None
    assert not os.path.exists(os.path.join(sweeps, "scene-0001.parquet"))
    assert os.listdir(os.path.join(sweeps, "_tmp")) == []  # the partial temp was removed
    (err,) = _errors(sweeps)
    assert err["item"] == "scene-0001/scene-0001/kf002" and "disk on fire" in err["message"] and err["fatal"]
    assert _visible_rows(sweeps) == 8
    s2 = prepare(RandomReader(num_scenes=3), str(tmp_path), use_ray=False, progress=False)
    assert s2.scenes_written == ["scene-0001"] and s2.scenes_skipped == ["scene-0000", "scene-0002"]
    assert s2.manifest_written and s2.keyframes_total == 12 and s2.errors == [] and verify_manifest(sweeps) == []


def test_killed_job_leaves_no_half_shard_and_resumes(tmp_path):
    out = str(tmp_path)
    script = textwrap.dedent(f"""
        from tests.storage.random_reader import RandomReader
        from afov_ray.pipeline.prepare import prepare
        prepare(RandomReader(num_scenes=4, exit_at=("scene-0002", 2), bad=("scene-0000/kf001",)),
                {out!r}, use_ray=False, progress=False, rows_per_group=1)
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr  # os._exit in the middle of scene-0002
    sweeps = os.path.join(out, "sweeps")
    names = sorted(os.listdir(sweeps))
    assert "scene-0002.parquet" not in names and "_manifest.json" not in names
    assert [n for n in names if n.endswith(".parquet")] == ["scene-0000.parquet", "scene-0001.parquet"]
    (tmp,) = os.listdir(os.path.join(sweeps, "_tmp"))  # the half-written shard, under a temp name
    assert tmp.startswith("scene-0002.parquet.") and tmp.endswith(".tmp")
    assert _visible_rows(sweeps) == 7
    # rerun resumes: scene 0 and 1 skipped, 2 and 3 written, the bad keyframe of scene 0 still reported
    s = prepare(RandomReader(num_scenes=4, bad=("scene-0000/kf001",)), out, use_ray=False, progress=False)
    assert s.scenes_skipped == ["scene-0000", "scene-0001"] and s.scenes_written == ["scene-0002", "scene-0003"]
    assert s.keyframes_total == 15 and [e["item"] for e in s.errors] == ["scene-0000/kf001"]
    assert verify_manifest(sweeps) == [] and os.listdir(os.path.join(sweeps, "_tmp")) == []
    assert _visible_rows(sweeps) == 15


def test_shard_without_done_record_is_redone(tmp_path):
    reader = RandomReader(num_scenes=2)
    s = prepare(reader, str(tmp_path), use_ray=False, progress=False)
    os.remove(os.path.join(s.sweeps_uri, "_done", "scene-0001.json"))  # killed between shard and record
    with open(os.path.join(s.sweeps_uri, "scene-0000.parquet"), "ab") as f:
        f.write(b"x")  # size no longer matches its record
    s2 = prepare(reader, str(tmp_path), use_ray=False, progress=False)
    assert s2.scenes_written == ["scene-0000", "scene-0001"] and verify_manifest(s2.sweeps_uri) == []


def test_scene_selection_and_unknown_scene(tmp_path):
    s = prepare(RandomReader(num_scenes=3), str(tmp_path), scenes=["scene-0002"], use_ray=False, progress=False)
    assert s.scenes_total == 1 and s.scenes_written == ["scene-0002"] and s.keyframes_total == 4
    with pytest.raises(Exception, match="scene-9"):
        prepare(RandomReader(), str(tmp_path), scenes=["scene-9"], use_ray=False, progress=False)


def test_make_reader_factory():
    with pytest.raises(ValueError, match="unknown 'waymo'"):
        make_reader("waymo", "/x")
    spec = ReaderSpec("nuscenes", "/x", "v1.0-mini")
    assert hash(spec) == hash(ReaderSpec("nuscenes", "/x", "v1.0-mini"))  # cacheable per worker


def test_cli_help():
    proc = subprocess.run([sys.executable, "jobs/prepare.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0
    for opt in ("--dataroot", "--dataset", "--version", "--out", "--split", "--num-cpus", "--address"):
        assert opt in proc.stdout
