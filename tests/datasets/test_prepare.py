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

from afov_ray.config import ConfigError
from afov_ray.datasets.reader import ReaderSpec, make_reader
from afov_ray.datasets.sweeps import table_to_keyframes
from afov_ray.errors import DataError
from afov_ray.pipeline.shard_pass import ERRORS_NAME
from afov_ray.storage.manifest import read_manifest, verify_manifest
from tests.storage.random_reader import RandomReader, assert_same_keyframe
from tests.storage.random_reader import run_prepare_on as prepare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tmp_entries(folder):
    d = os.path.join(folder, "_tmp")
    return os.listdir(d) if os.path.isdir(d) else []


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
    s = prepare(reader, str(tmp_path), rows_per_group=3)
    sweeps = s.out
    assert s.written == ["scene-0000", "scene-0001", "scene-0002"] and s.failed == []
    assert s.stats["keyframes"] == 10 and s.stats["keyframes_skipped"] == 2 and s.manifest_written
    assert s.exit_code == 1  # keyframes were skipped: the summary names them
    assert sorted(n for n in os.listdir(sweeps) if n.endswith(".parquet")) == [
        "scene-0000.parquet", "scene-0001.parquet", "scene-0002.parquet"]
    errs = _errors(sweeps)
    assert [(e["key"], e["item"]) for e in errs] == [("scene-0001", "scene-0001/kf002"),
                                                      ("scene-0002", "scene-0002/kf000")]
    assert all(e["message"] == "corrupt point file (test)" for e in errs)
    assert any("skipped scene-0001/kf002: corrupt point file (test)" in line for line in s.lines())
    man = read_manifest(sweeps)
    assert man["totals"]["rows"] == 10 and man["job"]["skipped"] == 2
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
    s2 = prepare(reader, str(tmp_path))
    assert s2.done_before == ["scene-0000", "scene-0001", "scene-0002"] and s2.written == []
    assert s2.stats["keyframes"] == 10 and len(s2.skipped) == 2 and verify_manifest(sweeps) == []
    assert os.path.getmtime(os.path.join(sweeps, "scene-0000.parquet")) == mtime


def test_all_bad_scene_is_never_marked_done(tmp_path):
    """A scene with zero good keyframes fails with the reasons and is redone once the data is fixed."""
    bad = RandomReader(num_scenes=2, keyframes_per_scene=2, bad=("scene-0000/kf000", "scene-0000/kf001"))
    s = prepare(bad, str(tmp_path))
    assert s.written == ["scene-0001"] and [f["item"] for f in s.failed] == ["scene-0000"]
    assert "produced no rows" in s.failed[0]["message"] and "corrupt point file" in s.failed[0]["message"]
    assert not s.manifest_written and s.exit_code == 1
    assert not os.path.exists(os.path.join(s.out, "scene-0000.parquet"))
    assert not os.path.exists(os.path.join(s.out, "_done", "scene-0000.json"))
    nothing = prepare(RandomReader(num_scenes=1, keyframes_per_scene=1, bad=("scene-0000/kf000",)),
                      str(tmp_path / "empty"))
    assert nothing.exit_code == 3 and nothing.written == []  # nothing produced: its own exit code
    fixed = prepare(RandomReader(num_scenes=2, keyframes_per_scene=2), str(tmp_path))
    assert fixed.written == ["scene-0000"] and fixed.done_before == ["scene-0001"] and fixed.manifest_written


@dataclass(frozen=True)
class FailingReader(RandomReader):
    """Raises a non-data error in the middle of scene-0001, after row groups were written."""

    def read(self, keyframe_id):
        if keyframe_id == "scene-0001/kf002":
            raise RuntimeError("disk on fire")
        return super().read(keyframe_id)


def test_exception_mid_write_then_resume(tmp_path):
    s = prepare(FailingReader(num_scenes=3), str(tmp_path), rows_per_group=1)
    sweeps = s.out
    assert [f["item"] for f in s.failed] == ["scene-0001"] and s.written == ["scene-0000", "scene-0002"]
    assert not s.manifest_written and read_manifest(sweeps) is None
    assert not os.path.exists(os.path.join(sweeps, "scene-0001.parquet"))
    assert _tmp_entries(sweeps) == []  # the partial temp was removed
    (err,) = _errors(sweeps)
    assert err["item"] == "scene-0001" and "RuntimeError: disk on fire" in err["message"] and err["fatal"]
    assert _visible_rows(sweeps) == 8
    s2 = prepare(RandomReader(num_scenes=3), str(tmp_path))
    assert s2.written == ["scene-0001"] and s2.done_before == ["scene-0000", "scene-0002"]
    assert s2.manifest_written and s2.stats["keyframes"] == 12 and s2.skipped == [] and verify_manifest(sweeps) == []


def test_killed_job_leaves_no_half_shard_and_resumes(tmp_path):
    out = str(tmp_path)
    script = textwrap.dedent(f"""
        from tests.storage.random_reader import RandomReader, run_prepare_on
        run_prepare_on(RandomReader(num_scenes=4, exit_at=("scene-0002", 2), bad=("scene-0000/kf001",)),
                       {out!r}, rows_per_group=1)
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr  # os._exit in the middle of scene-0002
    sweeps = os.path.join(out, "sweeps")
    names = sorted(os.listdir(sweeps))
    assert "scene-0002.parquet" not in names and "_manifest.json" not in names
    assert [n for n in names if n.endswith(".parquet")] == ["scene-0000.parquet", "scene-0001.parquet"]
    (tmp,) = _tmp_entries(sweeps)  # the half-written shard, under a temp name
    assert tmp.startswith("scene-0002.parquet.") and tmp.endswith(".tmp")
    assert _visible_rows(sweeps) == 7
    # rerun resumes: scene 0 and 1 skipped, 2 and 3 written, the bad keyframe of scene 0 still reported
    s = prepare(RandomReader(num_scenes=4, bad=("scene-0000/kf001",)), out)
    assert s.done_before == ["scene-0000", "scene-0001"] and s.written == ["scene-0002", "scene-0003"]
    assert s.stats["keyframes"] == 15 and [e["item"] for e in s.skipped] == ["scene-0000/kf001"]
    assert verify_manifest(sweeps) == [] and _tmp_entries(sweeps) == []
    assert _visible_rows(sweeps) == 15


def test_shard_without_done_record_is_redone(tmp_path):
    reader = RandomReader(num_scenes=2)
    s = prepare(reader, str(tmp_path))
    os.remove(os.path.join(s.out, "_done", "scene-0001.json"))  # killed between shard and record
    with open(os.path.join(s.out, "scene-0000.parquet"), "ab") as f:
        f.write(b"x")  # size no longer matches its record
    s2 = prepare(reader, str(tmp_path))
    assert s2.written == ["scene-0000", "scene-0001"] and verify_manifest(s2.out) == []


def test_scene_selection_unknown_and_duplicate_scenes(tmp_path):
    s = prepare(RandomReader(num_scenes=3), str(tmp_path), scenes=["scene-0002"])
    assert s.items_total == 1 and s.written == ["scene-0002"] and s.stats["keyframes"] == 4
    with pytest.raises(DataError, match="scene-9"):
        prepare(RandomReader(), str(tmp_path), scenes=["scene-9"])

    @dataclass(frozen=True)
    class Duplicates(RandomReader):
        def scenes(self):
            return ["scene-0000", "scene-0001", "scene-0000"]

    with pytest.raises(DataError, match="duplicate scene names"):
        prepare(Duplicates(), str(tmp_path / "dup"))


def test_other_settings_into_the_same_folder_is_an_error(tmp_path):
    prepare(RandomReader(num_scenes=1), str(tmp_path))
    with pytest.raises(ConfigError, match="other settings"):
        prepare(RandomReader(num_scenes=1, dataroot="/another/root"), str(tmp_path))


def test_make_reader_factory():
    with pytest.raises(ValueError, match="unknown 'waymo'"):
        make_reader("waymo", "/x")
    spec = ReaderSpec("nuscenes", "/x", "v1.0-mini")
    assert hash(spec) == hash(ReaderSpec("nuscenes", "/x", "v1.0-mini"))  # cacheable per worker


def test_cli_help_and_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "jobs/prepare.py", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    proc = run("--help")
    assert proc.returncode == 0
    for key in ("prepare.dataroot", "prepare.dataset", "prepare.version", "out ", "prepare.split", "num_cpus",
                "address", "prepare.cameras"):
        assert key in proc.stdout
    bad = run("prepare.dataset=waymo")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "prepare.dataset" in bad.stderr
    missing = run(f"out={tmp_path}")
    assert missing.returncode == 2 and "prepare.dataroot" in missing.stderr and "Traceback" not in missing.stderr
