"""Class balance of a pairing between splits (afov_ray.eval.class_balance) on hand-built shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afov_ray.datasets.splits import Split, write_split_file
from afov_ray.errors import DataError
from afov_ray.eval.class_balance import balance_rows, markdown, pairing_confusions

NAMES = ["ignore", "bus", "truck", "car"] + [f"c{i}" for i in range(4, 17)]


def _shard(path, rows):
    pq.write_table(pa.table({
        "sample_token": [r[0] for r in rows],
        "labels": pa.array([list(r[1]) for r in rows], pa.list_(pa.uint8())),
        "pseudo": pa.array([list(r[2]) for r in rows], pa.list_(pa.uint8())),
    }), path)


@pytest.fixture()
def pairing(tmp_path):
    d = tmp_path / "pairing"
    d.mkdir()
    # train: bus points 1,1,1,1 labelled bus,truck,bus,0 (0 = no camera: not counted); a truck labelled truck;
    # a point without ground truth labelled car (not counted)
    _shard(d / "scene-a.parquet", [("t1", [1, 1, 1, 1, 2, 0], [1, 2, 1, 0, 2, 3])])
    # val: one bus labelled bus, one car labelled truck; "x" is in no split -> other
    _shard(d / "scene-b.parquet", [("v1", [1, 3], [1, 2]), ("x", [2], [2])])
    (d / "_stats.json").write_text("{}")                  # not a shard
    split_file = tmp_path / "splits.json"
    write_split_file(split_file, {
        "train": Split("train", ["scene-a"], ["t1"]),
        "train_1pct": Split("train_1pct", ["scene-a"], ["t1"]),
        "val": Split("val", ["scene-b"], ["v1"]),
    })
    return str(d), str(split_file)


def test_confusions_per_split(pairing):
    d, split_file = pairing
    m = pairing_confusions(d, split_file)
    assert set(m) == {"train", "val", "other"}
    tr = np.zeros((17, 17), np.int64)
    tr[1, 1], tr[1, 2], tr[2, 2] = 2, 1, 1
    np.testing.assert_array_equal(m["train"], tr)
    va = np.zeros((17, 17), np.int64)
    va[1, 1], va[3, 2] = 1, 1
    np.testing.assert_array_equal(m["val"], va)
    assert m["other"][2, 2] == 1 and m["other"].sum() == 1
    # the first listed split owns a keyframe: with train_1pct first, t1 is counted there
    m1 = pairing_confusions(d, split_file, splits=("train_1pct", "val"))
    np.testing.assert_array_equal(m1["train_1pct"], tr)
    assert "train" not in m1


def test_rows_and_markdown(pairing):
    d, split_file = pairing
    rows = balance_rows(pairing_confusions(d, split_file), NAMES)
    assert [r["class"] for r in rows] == ["bus", "truck", "car"]
    bus, truck, car = rows
    assert bus["train"]["points"] == 3 and bus["train"]["recall"] == pytest.approx(2 / 3)
    assert bus["train"]["top_confusion"] == "truck" and bus["train"]["top_confusion_points"] == 1
    assert bus["train"]["iou"] == pytest.approx(2 / 3)                 # 2 / (3 + 2 - 2)
    assert truck["train"]["iou"] == pytest.approx(1 / 2)               # 1 / (1 + 2 - 1)
    assert truck["val"]["points"] == 0 and np.isnan(truck["val"]["recall"])
    assert car["val"] == {"points": 1, "recall": 0.0, "iou": 0.0, "top_confusion": "truck",
                          "top_confusion_points": 1}
    assert car["train"]["points"] == 0 and car["train"]["top_confusion"] is None
    md = markdown(rows)
    assert md[0].startswith("| class | train points | train pseudo recall")
    assert "| bus | 3 | 67% | truck (1) | 1 | 100% | - |" in md
    assert "| car | 0 | - | - | 1 | 0% | truck (1) |" in md


def test_errors_name_the_item(pairing, tmp_path):
    d, split_file = pairing
    with pytest.raises(DataError, match="splits.json.*no split"):
        pairing_confusions(d, split_file, splits=("train", "test"))
    _shard(f"{d}/scene-c.parquet", [("t9", [1, 2], [1])])
    with pytest.raises(DataError, match=r"scene-c\.parquet/t9.*1 pseudo-labels for 2"):
        pairing_confusions(d, split_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no pairing shards"):
        pairing_confusions(str(empty), split_file)
