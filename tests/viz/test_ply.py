"""Binary little-endian PLY: exact round trip, the header Open3D / CloudCompare read, byte layout."""

import struct

import numpy as np
import pytest

from afov_ray.viz.ply import read_ply, write_ply


def _header(path) -> list[str]:
    data = open(path, "rb").read()
    return data[: data.index(b"end_header\n") + len(b"end_header\n")].decode("ascii").splitlines()


def test_round_trip_is_exact_with_colours_and_scalars(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    xyz = rng.normal(scale=30, size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(n, 3)).astype(np.uint8)
    label = rng.integers(0, 17, size=n)  # int64 -> stored as int32
    score = rng.random(n).astype(np.float32)
    flag = rng.random(n) < 0.5
    path = write_ply(tmp_path / "sub" / "scan.ply", xyz, rgb, {"label": label, "score": score, "flag": flag},
                     comments=["classes: ignore barrier bicycle", "made by a test"])
    assert _header(path) == [
        "ply", "format binary_little_endian 1.0", "comment classes: ignore barrier bicycle",
        "comment made by a test", f"element vertex {n}", "property float x", "property float y",
        "property float z", "property uchar red", "property uchar green", "property uchar blue",
        "property int label", "property float score", "property uchar flag", "end_header"]
    hdr_len = len("\n".join(_header(path))) + 1
    record = 3 * 4 + 3 + 4 + 4 + 1
    raw = open(path, "rb").read()
    assert len(raw) == hdr_len + n * record
    # first record, decoded independently with struct
    rec0 = struct.unpack("<fffBBBifB", raw[hdr_len: hdr_len + record])
    assert rec0 == (*xyz[0].tolist(), *rgb[0].tolist(), int(label[0]), float(score[0]), int(flag[0]))

    back = read_ply(path)
    assert list(back) == ["x", "y", "z", "red", "green", "blue", "label", "score", "flag", "comments"]
    assert np.array_equal(np.stack([back["x"], back["y"], back["z"]], 1), xyz)
    assert np.array_equal(np.stack([back["red"], back["green"], back["blue"]], 1), rgb)
    assert back["label"].dtype == np.int32 and np.array_equal(back["label"], label)
    assert back["score"].dtype == np.float32 and np.array_equal(back["score"], score)
    assert np.array_equal(back["flag"].astype(bool), flag)
    assert list(back["comments"]) == ["classes: ignore barrier bicycle", "made by a test"]


def test_float_colours_are_rounded_and_xyz_only_files(tmp_path):
    xyz = np.array([[1.5, -2.25, 3.0], [0, 0, 0]], dtype=np.float64)
    path = write_ply(tmp_path / "c.ply", xyz, np.array([[1.0, 0.5, 0.0], [0.2, 0.8, 0.999]]))
    back = read_ply(path)
    assert back["x"].dtype == np.float32 and back["x"].tolist() == [1.5, 0.0]
    assert back["red"].tolist() == [255, 51] and back["green"].tolist() == [128, 204]
    assert back["blue"].tolist() == [0, 255]
    plain = read_ply(write_ply(tmp_path / "p.ply", xyz))
    assert sorted(plain) == ["comments", "x", "y", "z"] and plain["z"].tolist() == [3.0, 0.0]
    empty = read_ply(write_ply(tmp_path / "e.ply", np.zeros((0, 3)), scalars={"label": np.zeros(0, int)}))
    assert empty["x"].shape == (0,) and empty["label"].shape == (0,)


def test_big_endian_files_are_read(tmp_path):
    body = struct.pack(">fffh", 1.0, 2.0, 3.0, -7) + struct.pack(">fffh", 4.0, 5.0, 6.0, 300)
    head = ("ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
            "property float z\nproperty int16 label\nend_header\n").encode()
    (tmp_path / "be.ply").write_bytes(head + body)
    back = read_ply(tmp_path / "be.ply")
    assert back["y"].tolist() == [2.0, 5.0] and back["label"].tolist() == [-7, 300]


def test_bad_inputs_are_refused(tmp_path):
    xyz = np.zeros((3, 3))
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", np.zeros((3, 2)))
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", xyz, colors=np.zeros((2, 3)))
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", xyz, scalars={"label": np.zeros(4)})
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", xyz, scalars={"red": np.zeros(3)})
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", xyz, scalars={"bad name": np.zeros(3)})
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", xyz, scalars={"big": np.array([0, 1, 2**40])})
    (tmp_path / "ascii.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError):
        read_ply(tmp_path / "ascii.ply")
