"""SemanticKITTI reader on a real scan, KITTI calibration (object format, real frame 000008), KITTI splits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from afov_ray.datasets.kitti import SemanticKITTIReader, read_kitti_object_calib, read_semantickitti_calib
from afov_ray.datasets.labels import kitti_raw_to_eval, kitti_semantic
from afov_ray.datasets.splits import make_kitti_splits, read_split_file, write_split_file
from afov_ray.errors import DataError
from afov_ray.geometry import project_points

# Hand-written odometry-style calib: P2 / Tr values of the real KITTI frame 000008 (R0_rect folded
# into Tr is not needed for the checks below, which only compare against P2 @ Tr).
P2 = np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]])
TR = np.array(
    [
        [7.533745e-03, -9.999714e-01, -6.166020e-04, -4.069766e-03],
        [1.480249e-02, 7.280733e-04, -9.998902e-01, -7.631618e-02],
        [9.998621e-01, 7.523790e-03, 1.480755e-02, -2.717806e-01],
    ]
)
P0 = np.array([[721.5377, 0.0, 609.5593, 0.0], [0.0, 721.5377, 172.854, 0.0], [0.0, 0.0, 1.0, 0.0]])
W, H = 1241, 376


def _fmt(M: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in M.reshape(-1))


@pytest.fixture()
def kitti_root(tmp_path, real_data):
    src = real_data / "semantickitti_000000"
    seq = tmp_path / "kitti" / "sequences" / "08"
    for sub in ("velodyne", "labels", "image_2"):
        (seq / sub).mkdir(parents=True)
    (seq / "velodyne" / "000000.bin").symlink_to(src / "000000.bin")
    (seq / "labels" / "000000.label").symlink_to(src / "000000.label")
    Image.new("L", (W, H)).save(seq / "image_2" / "000000.png")
    lines = [f"P0: {_fmt(P0)}", f"P1: {_fmt(P0)}", f"P2: {_fmt(P2)}", f"P3: {_fmt(P2)}", f"Tr: {_fmt(TR)}"]
    (seq / "calib.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "kitti"


def test_read_real_scan(kitti_root, real_data):
    r = SemanticKITTIReader(kitti_root)
    assert r.scenes() == ["08"] and r.keyframe_ids("08") == ["08/000000"]
    kf = r.read("08/000000")
    assert kf.dataset == "semantickitti" and kf.scene == "08" and kf.sample_token == "08/000000"
    assert kf.points.shape == (123389, 4) and kf.points.dtype == np.float32
    lab = np.fromfile(real_data / "semantickitti_000000" / "000000.label", dtype=np.uint32)
    np.testing.assert_array_equal(kf.raw_labels, kitti_semantic(lab))
    np.testing.assert_array_equal(kf.labels, kitti_raw_to_eval(lab))
    assert kf.labels.dtype == np.uint8 and kf.lidar_path == "sequences/08/velodyne/000000.bin"
    (cam,) = kf.cameras
    assert (cam.channel, cam.width, cam.height) == ("image_2", W, H)
    np.testing.assert_allclose(cam.K, P2[:, :3])
    # K @ lidar_to_cam[:3] == P2 @ Tr (the image_2 baseline is inside lidar_to_cam)
    np.testing.assert_allclose(cam.K @ cam.lidar_to_cam[:3], P2 @ np.vstack([TR, [0, 0, 0, 1]]), atol=1e-9)
    # projection equals the classic P2 @ Tr pixel formula on the real points
    proj = project_points(kf.points[:, :3], cam.lidar_to_cam, cam.K, cam.width, cam.height)
    hom = np.c_[kf.points[:, :3].astype(np.float64), np.ones(kf.num_points)] @ (P2 @ np.vstack([TR, [0, 0, 0, 1]])).T
    np.testing.assert_allclose(proj.uv, hom[proj.point_idx, :2] / hom[proj.point_idx, 2:], atol=1e-6)
    frac = len(proj) / kf.num_points
    assert 0.05 < frac < 0.5, frac  # a front camera sees a fraction of a 360 deg scan
    road = kf.labels[proj.point_idx] == 9
    assert road.sum() > 1000 and np.mean(proj.uv[road, 1] > H / 2) > 0.9  # road below the horizon


def test_lidar_only_without_calib_and_images(kitti_root):
    (kitti_root / "sequences" / "08" / "calib.txt").unlink()
    shutil.rmtree(kitti_root / "sequences" / "08" / "image_2")
    kf = SemanticKITTIReader(kitti_root, sequences=["08"], cameras=()).read("08/000000")
    assert kf.cameras == [] and kf.num_points == 123389
    with pytest.raises(DataError, match="calibration file missing .*prepare.cameras=false") as e:
        SemanticKITTIReader(kitti_root).read("08/000000")
    assert e.value.item.endswith("sequences/08/calib.txt") and "\n" not in str(e.value)


def test_kitti_robustness(kitti_root, real_data):
    seq = kitti_root / "sequences" / "08"
    # second frame: truncated scan
    data = (real_data / "semantickitti_000000" / "000000.bin").read_bytes()
    (seq / "velodyne" / "000001.bin").write_bytes(data[:-6])
    # third frame: labels shorter than the scan
    (seq / "velodyne" / "000002.bin").symlink_to(real_data / "semantickitti_000000" / "000000.bin")
    (seq / "labels" / "000002.label").write_bytes(np.zeros(10, np.uint32).tobytes())
    # fourth frame: no label file (test-split style), no image
    (seq / "velodyne" / "000003.bin").symlink_to(real_data / "semantickitti_000000" / "000000.bin")
    r = SemanticKITTIReader(kitti_root)
    assert r.keyframe_ids("08") == ["08/000000", "08/000001", "08/000002", "08/000003"]
    with pytest.raises(DataError, match="multiple of 16") as e:
        r.read("08/000001")
    assert e.value.item.endswith("000001.bin")
    with pytest.raises(DataError, match="10 labels") as e:
        r.read("08/000002")
    assert e.value.item.endswith("000002.label")
    with pytest.raises(DataError) as e:
        r.read("08/000003")
    assert "08/000003" in e.value.item and "image_2" in e.value.item
    kf = SemanticKITTIReader(kitti_root, cameras=()).read("08/000003")
    assert kf.labels is None and kf.raw_labels is None
    assert r.read("08/000000").num_points == 123389  # the good frame still reads
    with pytest.raises(DataError):
        r.read("000000")
    (seq / "calib.txt").write_text("P2: 1 2 3\nTr: " + _fmt(TR) + "\n")
    with pytest.raises(DataError, match="P2") as e:
        read_semantickitti_calib(seq / "calib.txt")
    assert e.value.item.endswith("calib.txt")


def test_kitti_object_calib_real_frame(real_data):
    d = real_data / "kitti_object_000008"
    calib = read_kitti_object_calib(d / "calib.txt")
    P2_4x4 = np.array([float(x) for x in (d / "000008.txt").read_text().split()]).reshape(4, 4)
    np.testing.assert_allclose(calib["P2"], P2_4x4[:3], rtol=1e-9)
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"]
    Tr = np.vstack([calib["Tr_velo_to_cam"], [0, 0, 0, 1]])
    np.testing.assert_allclose(calib["K"] @ calib["lidar_to_cam"][:3], calib["P2"] @ R0 @ Tr, atol=1e-9)

    with Image.open(d / "000008.png") as im:
        width, height = im.size
    assert (width, height) == (1242, 375)
    pts = np.fromfile(d / "000008.bin", dtype=np.float32).reshape(-1, 4)
    assert pts.shape == (17238, 4)
    proj = project_points(pts[:, :3], calib["lidar_to_cam"], calib["K"], width, height, min_depth=0.0)
    # the scan is FOV-cropped: (almost) every point lands inside the image in front of the camera
    assert len(proj) / len(pts) > 0.99, len(proj)
    assert np.all(proj.depth > 0)


def test_kitti_splits_from_a_listed_root(tmp_path):
    """Official sequence split + the frame-level 1 % rule over sorted full paths, from the reader's listing."""
    from afov_ray.datasets.reader import make_reader

    root = tmp_path / "kitti"
    counts = {"00": 150, "01": 60, "05": 1, "08": 7, "11": 3}
    for seq, n in counts.items():
        vdir = root / "sequences" / seq / "velodyne"
        vdir.mkdir(parents=True)
        for i in range(n):
            (vdir / f"{i:06d}.bin").write_bytes(b"")
    reader = SemanticKITTIReader(root, cameras=())
    assert reader.all_sequences() == ["00", "01", "05", "08", "11"]
    frames = {s: reader.frames(s) for s in reader.all_sequences()}
    splits = make_kitti_splits(frames, skip_step=100)
    assert sorted(splits) == ["test", "train", "train_1pct", "val"]
    # sorted full paths: 00/000000..000149, 01/000000..000059, 05/000000 -> indices 0, 100, 200
    one = splits["train_1pct"]
    assert one.keyframes == ["00/000000", "00/000100", "01/000050"]
    assert one.scenes == ["00", "01"] and one.rule["frames_total"] == 211 and one.rule["level"] == "frame"
    assert splits["train"].scenes == ["00", "01", "05"] and len(splits["train"].keyframes) == 211
    assert splits["train"].rule["level"] == "scene"
    assert splits["val"].keyframes == [f"08/{i:06d}" for i in range(7)] and splits["val"].scenes == ["08"]
    assert splits["test"].scenes == ["11"]
    assert make_kitti_splits(frames, skip_step=1)["train_1pct"].keyframes == splits["train"].keyframes
    write_split_file(tmp_path / "k.json", splits)
    assert read_split_file(tmp_path / "k.json") == splits
    # prepare.split=train_1pct: a reader of exactly those scans
    r1 = make_reader("semantickitti", str(root), split="train_1pct", cameras=False)
    assert r1.scenes() == ["00", "01"]
    assert [k for s in r1.scenes() for k in r1.keyframe_ids(s)] == one.keyframes
    assert make_reader("semantickitti", str(root), split="val", cameras=False).scenes() == ["08"]
