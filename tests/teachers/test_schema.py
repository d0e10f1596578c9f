"""Teacher schema: round trips through Parquet, run versioning, and validation errors."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from afov_ray.errors import DataError
from afov_ray.storage.atomic import atomic_write_parquet
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.teachers.schema import (
    TeacherImage,
    TeacherRun,
    TextEmbeddingTable,
    decode_mask_map,
    encode_mask_map,
    from_row,
    image_schema,
    images_table,
    read_run,
    read_run_record,
    read_scene_shard,
    to_table,
    write_run,
)


def make_image(n: int = 3, h: int = 5, w: int = 7, d: int = 768, seed: int = 0, **kw) -> TeacherImage:
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if n <= 255 else np.uint16
    mask = rng.integers(0, n + 1, size=(h, w)).astype(dtype)
    return TeacherImage(
        sample_token=kw.pop("sample_token", "s1"),
        camera=kw.pop("camera", "CAM_FRONT"),
        image_size=kw.pop("image_size", (h, w)),
        mask_map=mask,
        mask_ids=np.arange(1, n + 1, dtype=np.uint16),
        text_index=rng.integers(0, 175, size=n).astype(np.int32),
        area=np.bincount(mask.ravel(), minlength=n + 1)[1:].astype(np.int64),
        features=rng.normal(size=(n, d)).astype(np.float16),
        **kw,
    )


def assert_same(a: TeacherImage, b: TeacherImage) -> None:
    assert (a.sample_token, a.camera, a.camera_token, a.scene_token) == (b.sample_token, b.camera, b.camera_token, b.scene_token)
    assert a.image_size == b.image_size
    assert a.mask_map.dtype == b.mask_map.dtype
    np.testing.assert_array_equal(a.mask_map, b.mask_map)
    np.testing.assert_array_equal(a.mask_ids, b.mask_ids)
    np.testing.assert_array_equal(a.text_index, b.text_index)
    np.testing.assert_array_equal(a.area, b.area)
    np.testing.assert_array_equal(a.features, b.features)
    assert b.features.dtype == np.float16
    if a.is_thing is None:
        assert b.is_thing is None
    else:
        np.testing.assert_array_equal(a.is_thing, b.is_thing)


def test_mask_png_roundtrip_uint8_and_uint16():
    for arr in (np.array([[0, 1], [255, 7]], np.uint8), np.array([[0, 300], [65535, 2]], np.uint16)):
        out = decode_mask_map(encode_mask_map(arr))
        assert out.dtype == arr.dtype
        np.testing.assert_array_equal(out, arr)


def test_table_roundtrip_and_shard(tmp_path):
    a = make_image(camera_token="tokA", scene_token="scene1")
    b = make_image(n=300, h=20, w=30, d=16, seed=1, camera="CAM_BACK", is_thing=np.arange(300) % 2 == 0)
    table = to_table([a, b], run_id="san-abc")
    assert table.schema.equals(image_schema(), check_metadata=False)
    assert table.schema.metadata[b"afov.run_id"] == b"san-abc"
    rows = table.to_pylist()
    assert_same(a, from_row(rows[0]))
    assert_same(b, from_row(rows[1]))
    assert from_row(rows[1]).mask_map.dtype == np.uint16

    path = tmp_path / "run" / "images" / "scene1.parquet"
    atomic_write_parquet(str(path), images_table([a], num_texts=175, run_id="san-abc"))
    assert pq.read_schema(path).metadata[b"afov.run_id"] == b"san-abc"
    (back,) = read_scene_shard(path)
    assert_same(a, back)


def test_run_versioning_and_text_table(tmp_path):
    voc = ClassDictionary.load("nuscenes").vocabulary_hash()
    run = TeacherRun("FC-CLIP", voc, "fcclip_cocopan.pth", 768, "2025-01-01T00:00:00+00:00")
    assert run.run_id.startswith("fc-clip-") and len(run.run_id) == len("fc-clip-") + 12
    assert run.run_id == TeacherRun("FC-CLIP", voc, "fcclip_cocopan.pth", 768, "2025-01-01T00:00:00+00:00").run_id
    assert run.run_id != TeacherRun("FC-CLIP", voc, "other.pth", 768, run.created).run_id
    emb = np.random.default_rng(0).normal(size=(176, 768)).astype(np.float32)
    text = TextEmbeddingTable(emb, void_row=True, num_texts=175)
    assert text.vocabulary_rows.shape == (175, 768)
    np.testing.assert_array_equal(text.void, emb[175])
    folder = write_run(tmp_path, run, text, extra={"weights_sha256": "abc"})
    assert folder == str(tmp_path / run.run_id)
    assert read_run_record(folder)["weights_sha256"] == "abc"
    run2, text2 = read_run(folder)
    assert run2 == run and text2.void_row and text2.num_texts == 175
    np.testing.assert_array_equal(text2.embeddings, emb)
    with pytest.raises(DataError):
        TextEmbeddingTable(emb, void_row=False, num_texts=175)  # 176 rows without a void row: explicit error
    assert TextEmbeddingTable(emb[:175], void_row=False, num_texts=175).void is None


def test_validation_errors_name_sample_and_camera():
    ok = make_image()
    ok.validate(175, 768)

    bad = make_image(image_size=(900, 1600))
    with pytest.raises(DataError, match="differs from the image size") as e:
        bad.validate(175)
    assert e.value.item == "s1/CAM_FRONT"

    bad = make_image()
    bad.text_index[1] = 175
    with pytest.raises(DataError, match="outside the vocabulary"):
        bad.validate(175)

    bad = make_image()
    bad.features = bad.features[:2]
    with pytest.raises(DataError, match="do not match the mask count"):
        bad.validate(175)

    bad = make_image()
    bad.mask_map[0, 0] = 9
    with pytest.raises(DataError, match=r"\[9\].*not in the mask table"):
        bad.validate(175)

    with pytest.raises(DataError, match="768"):
        make_image(d=16).validate(175, 768)


def test_shard_table_refuses_invalid_image(tmp_path):
    bad = make_image(camera="CAM_BACK_LEFT")
    bad.text_index[0] = -1
    with pytest.raises(DataError) as e:
        images_table([make_image(), bad], num_texts=175)
    assert e.value.item == "s1/CAM_BACK_LEFT"


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="run.json missing"):
        read_run(tmp_path / "no-such-run")
