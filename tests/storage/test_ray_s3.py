"""prepare with Ray tasks writing to S3 (moto), read back with ray.data.read_parquet. One Ray session."""

import pytest

from afov_ray.datasets.sweeps import batch_to_keyframes, row_to_keyframe
from afov_ray.storage import uri as U
from afov_ray.storage.manifest import verify_manifest
from tests.s3_fixture import s3_bucket, s3_server  # noqa: F401
from tests.storage.random_reader import RandomReader, assert_same_keyframe
from tests.storage.random_reader import run_prepare_on as prepare

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session(s3_server):  # after the S3 env is set, so the workers inherit it
    import ray

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


def test_prepare_with_ray_to_s3_and_read_back(ray_session, s3_bucket):
    ray = ray_session
    reader = RandomReader(num_scenes=3, keyframes_per_scene=3, bad=("scene-0002/kf001",))
    out = U.join(s3_bucket, "prep")
    s = prepare(reader, out, use_ray=True)
    assert s.written == ["scene-0000", "scene-0001", "scene-0002"] and s.failed == []
    assert s.stats["keyframes"] == 8 and [e["item"] for e in s.skipped] == ["scene-0002/kf001"]
    assert verify_manifest(s.out) == []
    assert ray.is_initialized()  # prepare used the running Ray and left it up

    fs, _ = U.resolve(s.out)
    ds = ray.data.read_parquet(s.out, filesystem=fs).materialize()  # ignores _manifest/_errors/_done
    assert ds.count() == 8
    expected = {k: reader.read(k) for sc in reader.scenes() for k in reader.keyframe_ids(sc)
                if k != "scene-0002/kf001"}
    rows = ds.take_all()
    assert sorted(r["sample_token"] for r in rows) == sorted(expected)
    for r in rows:
        assert_same_keyframe(expected[r["sample_token"]], row_to_keyframe(r))
    seen = []
    for batch in ds.iter_batches(batch_size=3, batch_format="numpy"):
        for kf in batch_to_keyframes(batch):
            assert_same_keyframe(expected[kf.sample_token], kf)
            seen.append(kf.sample_token)
    assert sorted(seen) == sorted(expected)
    # map_batches on the workers: per-keyframe point counts
    counts = ds.map_batches(lambda b: {"tok": [k.sample_token for k in batch_to_keyframes(b)],
                                       "n": [k.num_points for k in batch_to_keyframes(b)]},
                            batch_format="numpy").take_all()
    assert {c["tok"]: c["n"] for c in counts} == {k: v.num_points for k, v in expected.items()}
