"""NuScenesReader on a real scene-0916 dataroot (tables checked against the real devkit's); plan on the driver /
read in a worker; incomplete table sets; lidarseg warnings; robustness; nuScenes splits."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from afov_ray.datasets.nuscenes import NuScenesReader
from afov_ray.datasets.splits import (
    make_nuscenes_splits,
    nuscenes_skip_scenes,
    nuscenes_split_scenes,
    read_split_file,
    write_split_file,
)
from afov_ray.datasets.types import NUSCENES_CAMERAS
from afov_ray.errors import DataError

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def reader(nuscenes_root):
    return NuScenesReader(nuscenes_root, VERSION)


def test_scenes_and_keyframes(reader):
    assert reader.scenes() == ["scene-0916"]
    ids = reader.keyframe_ids("scene-0916")
    assert len(ids) == 5
    stamps = [reader.tables.get("sample", t)["timestamp"] for t in ids]
    assert stamps == sorted(stamps)
    assert ids[0] == reader.tables.scene[0]["first_sample_token"]
    with pytest.raises(DataError, match="scene-9999"):
        reader.keyframe_ids("scene-9999")


def test_split_filter(nuscenes_root):
    assert NuScenesReader(nuscenes_root, VERSION, split="val").scenes() == ["scene-0916"]  # -> mini_val
    assert NuScenesReader(nuscenes_root, VERSION, split="mini_val").scenes() == ["scene-0916"]
    assert NuScenesReader(nuscenes_root, VERSION, split="train").scenes() == []
    with pytest.raises(DataError, match="unknown nuScenes split"):
        NuScenesReader(nuscenes_root, VERSION, split="nope").scenes()


def test_read_keyframe(reader, real_data):
    for token in reader.keyframe_ids("scene-0916"):
        kf = reader.read(token)
        assert kf.dataset == "nuscenes" and kf.scene == "scene-0916" and kf.sample_token == token
        raw = np.fromfile(real_data / "nuscenes_scene0916" / kf.lidar_path, dtype=np.float32).reshape(-1, 5)
        assert kf.points.dtype == np.float32 and kf.points.shape == (raw.shape[0], 4)
        np.testing.assert_array_equal(kf.points, raw[:, :4])
        np.testing.assert_array_equal(kf.ring, raw[:, 4].astype(np.uint8))
        assert kf.ring.max() == 31  # 32-beam LiDAR
        assert kf.raw_labels is None and kf.labels is None  # no lidarseg table here
        assert [c.channel for c in kf.cameras] == list(NUSCENES_CAMERAS)
        for cam in kf.cameras:
            assert (cam.width, cam.height) == (1600, 900)
            assert cam.K.shape == (3, 3) and cam.lidar_to_cam.shape == (4, 4)
            assert cam.image_path.startswith(f"samples/{cam.channel}/")
            np.testing.assert_allclose(cam.lidar_to_cam[:3, :3] @ cam.lidar_to_cam[:3, :3].T, np.eye(3), atol=1e-9)
            sd = reader.tables.get("sample_data", cam.token)
            assert sd["channel"] == cam.channel and sd["sample_token"] == token
        # camera heights and devkit's sensor_modality: the lidar token is the LIDAR_TOP one
        assert reader.tables.get("sample_data", kf.lidar_token)["channel"] == "LIDAR_TOP"


def test_tables_match_the_devkit(reader, nuscenes_root):
    """Our keyframe tables give the records the devkit gives (same sample -> channel -> sample_data map)."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=VERSION, dataroot=str(nuscenes_root), verbose=False)
    assert [s["name"] for s in nusc.scene] == reader.table_scenes() == ["scene-0916"]
    for token in reader.keyframe_ids("scene-0916"):
        ours, theirs = reader.tables.get("sample", token), nusc.get("sample", token)
        assert ours["data"] == theirs["data"] and len(ours["data"]) >= 7   # LIDAR_TOP + 6 cameras (+ radars)
        for sd_token in theirs["data"].values():
            a, b = reader.tables.get("sample_data", sd_token), nusc.get("sample_data", sd_token)
            assert a["filename"] == b["filename"] and a["channel"] == b["channel"]
            assert reader.tables.get("ego_pose", a["ego_pose_token"]) == nusc.get("ego_pose", b["ego_pose_token"])


def test_plan_on_the_driver_read_without_tables(tmp_path, make_nuscenes_root):
    """Descriptors are JSON-able and small; the reader a worker gets carries no tables; with the table folder
    deleted after planning, every keyframe still loads, bit-exact with the driver's read."""
    import shutil

    root = make_nuscenes_root(tmp_path / "root")
    r = NuScenesReader(root, VERSION)
    ids = r.keyframe_ids("scene-0916")
    descs = [r.describe(t) for t in ids]
    expected = [r.read(t) for t in ids]
    blob = json.dumps(descs)
    assert len(blob) < 6000 * len(ids) and json.loads(blob) == descs
    shipped = pickle.dumps(r)
    assert len(shipped) < 1000, len(shipped)
    shutil.rmtree(root / VERSION)            # no worker could load the tables now
    worker = pickle.loads(shipped)
    assert worker._tables is None
    for d, e in zip(descs, expected):
        kf = worker.load(json.loads(json.dumps(d)))
        np.testing.assert_array_equal(kf.points, e.points)
        assert [c.token for c in kf.cameras] == [c.token for c in e.cameras]
        for a, b in zip(kf.cameras, e.cameras):
            np.testing.assert_array_equal(a.lidar_to_cam, b.lidar_to_cam)
            np.testing.assert_array_equal(a.K, b.K)
    assert worker._tables is None
    with pytest.raises(DataError, match="v1.0-mini"):
        worker.scenes()                       # planning needs the tables: one line naming the version


def test_the_nine_real_tables_are_enough(tmp_path, real_data):
    """The vendored extract has 9 of the devkit's 13 tables (no log, map, attribute, visibility): we read it
    as it is."""
    root = tmp_path / "root"
    (root / VERSION).mkdir(parents=True)
    (root / "samples").symlink_to(real_data / "nuscenes_scene0916" / "samples")
    for f in (real_data / "nuscenes_scene0916" / "v1.0-extract").glob("*.json"):
        (root / VERSION / f.name).symlink_to(f)
    r = NuScenesReader(root, VERSION)
    kfs = [r.read(t) for t in r.keyframe_ids("scene-0916")]
    assert len(kfs) == 5 and all(len(k.cameras) == 6 for k in kfs) and r.warnings() == []


@pytest.mark.parametrize("removed", [("ego_pose",), ("sample_data", "calibrated_sensor")])
def test_incomplete_table_set_is_one_line(tmp_path, make_nuscenes_root, removed):
    root = make_nuscenes_root(tmp_path / "root")
    for t in removed:
        (root / VERSION / f"{t}.json").unlink()
    with pytest.raises(DataError) as e:
        NuScenesReader(root, VERSION).scenes()
    msg = str(e.value)
    assert "\n" not in msg and "incomplete nuScenes table set" in msg and e.value.item.endswith(VERSION)
    for t in removed:
        assert f"{t}.json" in msg
    assert "scene.json" not in msg.split("missing")[1].split("(")[0]


def _fake_labels(tok, n):
    return np.arange(n) % 32


def test_lidarseg_table_without_files_and_files_without_table_warn(tmp_path, make_nuscenes_root):
    import shutil

    root = make_nuscenes_root(tmp_path / "a", lidarseg_labels=_fake_labels)
    r = NuScenesReader(root, VERSION)
    assert r.warnings() == [] and r.read(r.keyframe_ids("scene-0916")[0]).labels is not None
    (root / VERSION / "lidarseg.json").rename(tmp_path / "lidarseg.json")
    r = NuScenesReader(root, VERSION)
    (w,) = r.warnings()
    assert "5 lidarseg label files" in w and "lidarseg.json is missing" in w and "WITHOUT labels" in w
    assert r.read(r.keyframe_ids("scene-0916")[0]).labels is None
    (tmp_path / "lidarseg.json").rename(root / VERSION / "lidarseg.json")
    shutil.rmtree(root / "lidarseg")
    r = NuScenesReader(root, VERSION)
    (w,) = r.warnings()
    assert "lists 5 label files" in w and "has none" in w
    assert r.read(r.keyframe_ids("scene-0916")[0]).labels is None


def test_lidarseg_file_missing_for_one_keyframe(tmp_path, make_nuscenes_root):
    root = make_nuscenes_root(tmp_path / "a", lidarseg_labels=_fake_labels)
    r = NuScenesReader(root, VERSION)
    ids = r.keyframe_ids("scene-0916")
    gone = root / "lidarseg" / VERSION / f"{r.describe(ids[2])['lidar_token']}_lidarseg.bin"
    gone.unlink()
    r = NuScenesReader(root, VERSION)
    (w,) = r.warnings()
    assert "5 records" in w and "4 label files" in w and "skipped" in w
    with pytest.raises(DataError) as e:
        r.read(ids[2])
    assert gone.name in e.value.item and "cannot read label file" in e.value.message
    assert all(r.read(t).labels is not None for t in ids if t != ids[2])


# -- robustness --------------------------------------------------------------------------------------
@pytest.fixture()
def broken_root(tmp_path, make_nuscenes_root):
    return make_nuscenes_root(tmp_path / "root")


def _sd(root, sample_token: str, channel: str) -> dict:
    rows = json.loads((root / VERSION / "sample_data.json").read_text())
    sensors = {s["token"]: s["channel"] for s in json.loads((root / VERSION / "sensor.json").read_text())}
    cs = {c["token"]: sensors[c["sensor_token"]] for c in json.loads((root / VERSION / "calibrated_sensor.json").read_text())}
    return next(r for r in rows if r["sample_token"] == sample_token and cs[r["calibrated_sensor_token"]] == channel)


def _others_ok(root, bad_token: str) -> None:
    r = NuScenesReader(root, VERSION)
    good = [t for t in r.keyframe_ids("scene-0916") if t != bad_token]
    assert len(good) == 4
    for t in good:
        assert len(r.read(t).cameras) == 6


def test_truncated_point_file(broken_root, private_copy):
    r = NuScenesReader(broken_root, VERSION)
    token = r.keyframe_ids("scene-0916")[1]
    sd = _sd(broken_root, token, "LIDAR_TOP")
    path = private_copy(broken_root / sd["filename"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(DataError) as e:
        r.read(token)
    assert sd["filename"] in e.value.item and "multiple of 20" in e.value.message
    _others_ok(broken_root, token)


def test_nan_coordinates(broken_root, private_copy):
    r = NuScenesReader(broken_root, VERSION)
    token = r.keyframe_ids("scene-0916")[2]
    sd = _sd(broken_root, token, "LIDAR_TOP")
    path = private_copy(broken_root / sd["filename"])
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    pts[[5, 100], 1] = np.nan
    pts[7, 0] = np.inf
    pts.tofile(path)
    with pytest.raises(DataError) as e:
        r.read(token)
    assert token in e.value.item and "3 points" in e.value.message
    _others_ok(broken_root, token)


def test_missing_camera_image(broken_root):
    r = NuScenesReader(broken_root, VERSION)
    token = r.keyframe_ids("scene-0916")[3]
    sd = _sd(broken_root, token, "CAM_BACK_LEFT")
    (broken_root / sd["filename"]).unlink()
    with pytest.raises(DataError) as e:
        r.read(token)
    assert token in e.value.item and "CAM_BACK_LEFT" in e.value.item
    assert sd["filename"] in e.value.message
    _others_ok(broken_root, token)
    # a reader restricted to the other cameras still reads that keyframe
    assert len(NuScenesReader(broken_root, VERSION, cameras=("CAM_FRONT",)).read(token).cameras) == 1


@pytest.mark.parametrize(
    "field,value,match",
    [("rotation", [1.0, 0.0, 0.0], "rotation"), ("translation", [[0.0, 1.0, 2.0]], "translation"),
     ("camera_intrinsic", [[1.0, 0.0], [0.0, 1.0]], "camera_intrinsic")],
)
def test_bad_calibrated_sensor(broken_root, field, value, match):
    """A new calibrated_sensor record with a wrong-shaped field, used by one camera of one keyframe."""
    r0 = NuScenesReader(broken_root, VERSION)
    token = r0.keyframe_ids("scene-0916")[0]
    sd_rows = json.loads((broken_root / VERSION / "sample_data.json").read_text())
    cs_rows = json.loads((broken_root / VERSION / "calibrated_sensor.json").read_text())
    target = _sd(broken_root, token, "CAM_FRONT")
    bad = dict(next(c for c in cs_rows if c["token"] == target["calibrated_sensor_token"]))
    bad["token"] = "bad-calibration-record"
    bad[field] = value
    cs_rows.append(bad)
    for row in sd_rows:
        if row["token"] == target["token"]:
            row["calibrated_sensor_token"] = bad["token"]
    (broken_root / VERSION / "calibrated_sensor.json").write_text(json.dumps(cs_rows))
    (broken_root / VERSION / "sample_data.json").write_text(json.dumps(sd_rows))
    r = NuScenesReader(broken_root, VERSION)
    with pytest.raises(DataError, match=match) as e:
        r.read(token)
    assert "bad-calibration-record" in e.value.item
    _others_ok(broken_root, token)


def test_lidarseg_labels_and_length_mismatch(tmp_path, make_nuscenes_root, real_data):
    """Fake lidarseg (format test): label = ring index % 32 -> raw/eval labels; one file too short -> DataError."""
    lidar_files = {}

    def labels(tok, n):
        lidar_files[tok] = n
        return np.arange(n) % 32

    root = make_nuscenes_root(tmp_path / "root", lidarseg_labels=labels)
    r = NuScenesReader(root, VERSION)
    ids = r.keyframe_ids("scene-0916")
    kf = r.read(ids[0])
    assert kf.raw_labels.dtype == np.uint8 and kf.raw_labels.shape == (kf.num_points,)
    np.testing.assert_array_equal(kf.raw_labels, np.arange(kf.num_points) % 32)
    from afov_ray.datasets.labels import nuscenes_lut

    np.testing.assert_array_equal(kf.labels, nuscenes_lut()[np.arange(kf.num_points) % 32])

    bad = r.read(ids[4]).lidar_token
    seg = root / "lidarseg" / VERSION / f"{bad}_lidarseg.bin"
    seg.write_bytes(seg.read_bytes()[:-3])
    r2 = NuScenesReader(root, VERSION)
    with pytest.raises(DataError) as e:
        r2.read(ids[4])
    assert f"{bad}_lidarseg.bin" in e.value.item and "labels for" in e.value.message
    for t in ids[:4]:
        assert r2.read(t).labels is not None


def test_unknown_sample_and_missing_tables(reader, tmp_path):
    with pytest.raises(DataError, match="no-such-token"):
        reader.read("no-such-token")
    with pytest.raises(DataError, match="v1.0-mini"):
        NuScenesReader(tmp_path, VERSION).scenes()


# -- splits ------------------------------------------------------------------------------------------
def test_skip_rule_counts_split_scenes_in_table_order():
    from nuscenes.utils.splits import create_splits_scenes

    official = create_splits_scenes()
    train = official["train"]
    assert len(train) == 700 and len(official["val"]) == 150
    # a shuffled table mixing val scenes: table order, and only train scenes are counted
    table = list(np.random.default_rng(0).permutation(train + official["val"]))
    train_in_table = [s for s in table if s in set(train)]
    chosen, rule = nuscenes_skip_scenes(table, train, 100)
    assert chosen == [train_in_table[i] for i in range(99, 700, 100)] and len(chosen) == 7
    assert chosen != [train[i] for i in range(99, 700, 100)]  # split-list order would differ
    assert rule["selected_by_rule"] == 7 and rule["topped_up"] == 0
    assert nuscenes_skip_scenes(table, train, 1)[0] == train_in_table
    # tiny data: the rule selects nothing unless min_scenes is set explicitly
    assert nuscenes_skip_scenes(train[:5], train, 100)[0] == []
    chosen, rule = nuscenes_skip_scenes(train[:250], train, 100, min_scenes=3)
    assert chosen == [train[0], train[99], train[199]]
    assert rule["selected_by_rule"] == 2 and rule["topped_up"] == 1


def test_nuscenes_split_file_roundtrip(reader, tmp_path):
    assert "scene-0916" in nuscenes_split_scenes("val") and "scene-0916" in nuscenes_split_scenes("val", VERSION)
    splits = make_nuscenes_splits(reader, phases=("train", "val"), skip_step=100)
    assert splits["train"].scenes == [] and splits["train"].keyframes == []
    assert splits["val"].scenes == ["scene-0916"] and splits["val"].keyframes == reader.keyframe_ids("scene-0916")
    assert splits["val"].rule["devkit_split"] == "mini_val" and splits["val"].rule["skip_step"] == 1
    path = tmp_path / "splits.json"
    write_split_file(path, splits)
    assert read_split_file(path) == splits
    path.write_text("{}")
    with pytest.raises(DataError, match="splits.json"):
        read_split_file(path)
