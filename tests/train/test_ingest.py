"""Training ingest (afov_ray.train.data) without Ray: column selection, zero-copy Arrow views, the
vectorised collate against the pre-issue-22 ingest (bench/legacy_ingest.py) on the same rows of real
nuScenes frames, and augmentation determinism."""

import importlib.util
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from afov_ray.datasets.synth.pairing_rows import pairing_table
from afov_ray.train.arrow_lists import list_array, list_view
from afov_ray.train.data import (
    PAIRING_COLUMNS,
    IngestConfig,
    augment_points,
    collate,
    ingest_columns,
    prepare_batch,
    prepare_row,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def legacy():
    spec = importlib.util.spec_from_file_location("legacy_ingest", REPO / "bench" / "legacy_ingest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def shard(real_data, tmp_path_factory):
    """A pairing shard (pairing pass schema, Parquet) of the 5 real keyframes with synthetic pairings;
    keyframe 3 has no ground truth (null labels), keyframe 4 no superpixels."""
    files = sorted((real_data / "nuscenes_scene0916" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    scans = [np.fromfile(f, dtype=np.float32).reshape(-1, 5) for f in files]
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 17, len(s)).astype(np.uint8) for s in scans]
    t = pairing_table(scans, scene="scene-0916", labels=labels, masks_per_camera=12, feat_dim=32)
    t = t.set_column(t.schema.get_field_index("labels"), "labels",
                     pa.array([None if i == 3 else lab for i, lab in enumerate(labels)], pa.list_(pa.uint8())))
    empty = {"pair_point": [], "pair_superpixel": [], "sp_id": [], "sp_text": []}
    for name, v in empty.items():
        col = t.column(name).to_pylist()
        col[4] = v
        t = t.set_column(t.schema.get_field_index(name), name, pa.array(col, t.schema.field(name).type))
    col = t.column("sp_feat").to_pylist()
    col[4] = b""
    t = t.set_column(t.schema.get_field_index("sp_feat"), "sp_feat", pa.array(col, pa.binary()))
    path = tmp_path_factory.mktemp("pairing") / "scene-0916.parquet"
    pq.write_table(t, path)
    return path


CFGS = {"distill": IngestConfig(target="pseudo"), "tmp": IngestConfig(target="pseudo", with_pairings=True),
        "finetune": IngestConfig(target="gt"), "first": IngestConfig(target="pseudo", label_mode="first"),
        "cartesian": IngestConfig(target="gt", grid="cartesian", voxel_size=0.2)}


def _unread(cfg):
    return "point_labels" if cfg.target == "pseudo" else "pseudo"


def assert_same_batch(old, new, skip=()):
    assert set(old) == set(new)
    for k in old:
        if k in skip:
            continue
        assert old[k].dtype == new[k].dtype, (k, old[k].dtype, new[k].dtype)
        assert old[k].shape == new[k].shape, (k, old[k].shape, new[k].shape)
        assert torch.equal(old[k], new[k]), k


def test_ingest_columns_per_stage():
    assert ingest_columns(IngestConfig(target="pseudo")) == ["sample_token", "num_points", "points", "pseudo"]
    assert ingest_columns(IngestConfig(target="gt")) == ["sample_token", "num_points", "points", "labels"]
    tmp = ingest_columns(IngestConfig(target="pseudo", with_pairings=True))
    assert tmp[:4] == ["sample_token", "num_points", "points", "pseudo"] and tmp[4:] == list(PAIRING_COLUMNS)
    with pytest.raises(ValueError, match="ingest.target"):
        ingest_columns(IngestConfig(target="labels"))


def test_prepare_batch_needs_only_its_columns(shard):
    for cfg in CFGS.values():
        table = pq.read_table(shard, columns=ingest_columns(cfg))
        assert "pseudo_code" not in table.column_names and "superpoint" not in table.column_names
        out = prepare_batch(table.slice(0, 2), replace(cfg, augment=False))
        assert out.num_rows == 2 and ("pair_voxel" in out.column_names) == cfg.with_pairings
    with pytest.raises(KeyError):  # TMP cannot run on the annotation-free columns
        prepare_batch(pq.read_table(shard, columns=ingest_columns(CFGS["distill"])), replace(CFGS["tmp"], augment=False))


@pytest.mark.parametrize("name", list(CFGS))
def test_collate_equals_legacy_on_the_same_rows(shard, legacy, name):
    """No augmentation: legacy (every column, to_pylist, row-wise unique, Ray numpy batches, per-row collate)
    vs new (its columns, Arrow views, single-key voxels, Arrow batches, vectorised collate): same tensors,
    except the column the new ingest does not read (empty instead)."""
    from ray.data.block import BlockAccessor

    cfg = replace(CFGS[name], augment=False)
    full = pq.read_table(shard)
    mine = pq.read_table(shard, columns=ingest_columns(cfg))
    for i in range(0, full.num_rows, 2):
        old_tab = legacy.prepare_batch(full.slice(i, 2), cfg)
        old = legacy.collate(BlockAccessor.for_block(old_tab).to_batch_format("numpy"), with_pairings=cfg.with_pairings)
        new_tab = prepare_batch(mine.slice(i, 2), cfg)
        new = collate(new_tab, with_pairings=cfg.with_pairings)
        assert_same_batch(old, new, skip=(_unread(cfg),))
        assert new[_unread(cfg)].numel() == 0 and new[_unread(cfg)].dtype == torch.int64
        # the other collate inputs give the same batch: prepared rows, and Ray's numpy batch format
        rows = [prepare_row(r, cfg) for r in full.slice(i, 2).to_pylist()]
        assert_same_batch(old, collate(rows, with_pairings=cfg.with_pairings), skip=(_unread(cfg),))
        as_numpy = BlockAccessor.for_block(new_tab).to_batch_format("numpy")
        assert_same_batch(new, collate(as_numpy, with_pairings=cfg.with_pairings))
        # and the legacy prepared rows (read from every column) collate to the legacy batch exactly
        assert_same_batch(old, collate([legacy.prepare_row(r, cfg) for r in full.slice(i, 2).to_pylist()],
                                       with_pairings=cfg.with_pairings))


def test_augmented_rows_equal_legacy_with_the_same_nonce(shard, legacy):
    full = pq.read_table(shard)
    for cfg in (CFGS["tmp"], CFGS["finetune"], replace(CFGS["distill"], seed=7)):
        rows = full.to_pylist()
        for nonce in (0, 12345):
            old = legacy.collate([legacy.prepare_row(r, cfg, nonce) for r in rows], with_pairings=cfg.with_pairings)
            new = collate([prepare_row(r, cfg, nonce) for r in rows], with_pairings=cfg.with_pairings)
            assert_same_batch(old, new)


def test_augment_points_matches_legacy_and_writes_out(legacy):
    xyz = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32) * 20
    for seed in range(20):
        old = legacy.augment_points(xyz[:, :3], np.random.default_rng(seed))
        new = augment_points(xyz[:, :3], np.random.default_rng(seed))
        buf = np.full((1000, 4), np.nan, dtype=np.float32)
        into = augment_points(xyz[:, :3], np.random.default_rng(seed), out=buf[:, :3])
        assert old.dtype == new.dtype and np.array_equal(old, new) and np.array_equal(into, old)
        assert np.isnan(buf[:, 3]).all()  # only the three columns were written


def test_augmentation_fresh_per_call_and_deterministic_without(shard):
    table = pq.read_table(shard, columns=ingest_columns(CFGS["distill"])).slice(0, 2)
    cfg = CFGS["distill"]
    a, b = prepare_batch(table, cfg), prepare_batch(table, cfg)
    assert a.column("coords") != b.column("coords")  # a new rotation / flip per call (per epoch)
    off = replace(cfg, augment=False)
    assert prepare_batch(table, off).equals(prepare_batch(table, off))
    rows = [prepare_row(r, cfg, nonce=5) for r in table.to_pylist()]
    again = [prepare_row(r, cfg, nonce=5) for r in table.to_pylist()]
    assert all(np.array_equal(x["coords"], y["coords"]) for x, y in zip(rows, again))  # same nonce, same draw


def test_collate_hand_computed_offsets():
    def row(nv, n, pp, sp, dim=2):
        return {"sample_token": "t", "num_voxels": nv, "coords": np.arange(3 * nv, dtype=np.int32),
                "feats": np.ones(nv, np.float32), "inverse": np.arange(n) % nv, "target": np.zeros(nv, np.uint8),
                "point_labels": np.zeros(0, np.uint8), "pseudo": np.ones(n, np.uint8),
                "pair_voxel": np.array(pp), "pair_superpixel": np.array(sp), "sp_id": np.array(sp[:1]),
                "sp_text": np.array([4][: len(sp[:1])]), "sp_feat": np.ones(len(sp[:1]) * dim, np.float16),
                "feat_dim": dim}
    rows = [row(2, 3, [1, 0], [151, 3]), row(3, 4, [2], [305])]
    table = pa.table({k: list_array([r[k] for r in rows], np.asarray(rows[0][k]).dtype)
                      if isinstance(rows[0][k], np.ndarray) else [r[k] for r in rows] for k in rows[0]})
    for batch in (rows, table):
        out = collate(batch, with_pairings=True, stride=150)
        assert out["coords"][:, 0].tolist() == [0, 0, 1, 1, 1]
        assert out["inverse"].tolist() == [0, 1, 0, 2, 3, 4, 2]
        assert out["voxel_offsets"].tolist() == [0, 2, 5] and out["point_offsets"].tolist() == [0, 3, 7]
        assert out["pair_voxel"].tolist() == [1, 0, 4]
        assert out["pair_superpixel"].tolist() == [151, 3, 900 + 305]   # + b * 6 * 150
        assert out["sp_id"].tolist() == [151, 900 + 305] and out["sp_feat"].shape == (2, 2)
        assert out["sp_feat"].dtype == torch.float32 and out["point_labels"].shape == (0,)
    rows[1]["feat_dim"], rows[1]["sp_feat"] = 4, np.ones(4, np.float16)
    with pytest.raises(ValueError, match="feature sizes"):
        collate(rows, with_pairings=True)


def test_list_view_slices_nulls_and_chunks():
    arr = pa.array([[1, 2], None, [3], [], [4, 5, 6]], pa.list_(pa.int32()))
    v = list_view(arr.slice(1, 4))
    assert len(v) == 4 and v.row(0) is None and v.row(1).tolist() == [3] and v.row(3).tolist() == [4, 5, 6]
    assert v.lengths().tolist() == [0, 1, 0, 3] and v.flat().tolist() == [3, 4, 5, 6]
    assert np.shares_memory(v.flat(), v.values)  # zero-copy
    # a null row whose offsets span values (legal Arrow) is not read into the flat values
    spanning = pa.ListArray.from_arrays(pa.array([0, 2, 3, 5], pa.int32()), pa.array([1, 2, 3, 4, 5], pa.int8()),
                                        mask=pa.array([False, True, False]))
    sv = list_view(spanning)
    assert sv.lengths().tolist() == [2, 0, 2] and sv.flat().tolist() == [1, 2, 4, 5]
    chunked = pa.chunked_array([pa.array([[1], [2, 3]], pa.list_(pa.int64())), pa.array([[4]], pa.list_(pa.int64()))])
    assert list_view(chunked).flat().tolist() == [1, 2, 3, 4]
    b = list_view(pa.array([b"ab", None, b"cde"], pa.binary()).slice(1))
    assert b.row(0) is None and bytes(b.row(1)) == b"cde"
    built = list_array([np.arange(3, dtype=np.int64), np.zeros(0, np.int64)], np.uint8)
    assert built.type == pa.list_(pa.uint8()) and built.to_pylist() == [[0, 1, 2], []]
    with pytest.raises(ValueError, match=r"\[-1, 300\] do not fit uint8"):
        list_array([np.array([300, -1])], np.uint8)  # a value that does not fit is refused, not wrapped
    with pytest.raises(TypeError, match="list or binary"):
        list_view(pa.array([1, 2]))
