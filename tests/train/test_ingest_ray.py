"""The ingest on a real local Ray: scan_dataset (column selection, scene and sample-token selection,
map_batches) -> iter_torch_batches with the Arrow collate, as the training stages iterate it."""

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from afov_ray.datasets.synth.pairing_rows import pairing_table
from afov_ray.models.synthetic_scan import lidar_like_scan
from afov_ray.train.data import IngestConfig, collate, ingest_columns, prepare_row, scan_dataset, torch_batches

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pairing(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairing")
    for s, scene in enumerate(("scene-0001", "scene-0002")):
        scans = [lidar_like_scan(3000, seed=10 * s + i).numpy() for i in range(3)]
        labels = [np.random.default_rng(i).integers(0, 17, len(p)).astype(np.uint8) for i, p in enumerate(scans)]
        pq.write_table(pairing_table(scans, scene=scene, labels=labels, masks_per_camera=8, feat_dim=16, seed=s),
                       folder / f"{scene}.parquet")
    return folder


def _match(batches, expected):
    """Every batch equals exactly one expected batch (Ray may reorder rows)."""
    left = list(expected)
    for b in batches:
        hit = [i for i, e in enumerate(left) if b.keys() == e.keys() and all(
            b[k].dtype == e[k].dtype and b[k].shape == e[k].shape and torch.equal(b[k], e[k]) for k in b)]
        assert hit, "a batch matches no expected batch"
        left.pop(hit[0])
    assert not left


@pytest.mark.parametrize("with_pairings", [False, True])
def test_scan_dataset_batches_equal_collated_rows(ray_session, pairing, with_pairings):
    cfg = IngestConfig(target="pseudo", with_pairings=with_pairings, augment=False)
    rows = pq.read_table(pairing / "scene-0002.parquet", columns=ingest_columns(cfg)).to_pylist()
    keep = [rows[0]["sample_token"], rows[2]["sample_token"]]
    ds = scan_dataset(str(pairing), cfg, scenes=["scene-0002"], sample_tokens=keep)
    got = list(torch_batches(ds.iterator(), 1, with_pairings=with_pairings, drop_last=False))
    expected = [collate([prepare_row(r, cfg)], with_pairings=with_pairings) for r in (rows[0], rows[2])]
    _match(got, expected)
    assert all(b["point_labels"].numel() == 0 for b in got)  # ground truth not read for pseudo-label training


def test_stage_batches_and_validation_ingest(ray_session, pairing):
    from afov_ray.train.stages import ModelConfig, SegConfig, SegStage, TMPConfig, TMPStage

    ing = IngestConfig(target="pseudo", augment=True)
    seg = SegStage(ModelConfig(), SegConfig(), ing)
    ds = scan_dataset(str(pairing), ing)
    batches = list(seg.batches(ds.iterator(), 2, epoch=0))
    assert len(batches) == 3 and all(b["coords"].shape[1] == 4 and b["voxel_offsets"].shape == (3,) for b in batches)
    tmp = TMPStage(ModelConfig(), TMPConfig(), replace(ing, with_pairings=True))
    b = next(iter(tmp.batches(scan_dataset(str(pairing), replace(ing, with_pairings=True)).iterator(), 2, 0)))
    assert b["sp_feat"].shape[1] == 16 and int(b["pair_voxel"].max()) < b["coords"].shape[0]
    val = scan_dataset(str(pairing), IngestConfig(target="gt", augment=False))
    vb = list(torch_batches(val.iterator(), 1, drop_last=False))
    assert len(vb) == 6 and all(b["point_labels"].numel() == b["inverse"].numel() > 0 for b in vb)
