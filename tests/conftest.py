"""Shared fixtures for tests on REAL data (vendored in ``tests/data``, see its README.md for licences).

* ``real_data``: the real-data folder: ``$AFOV_TEST_DATA``, else ``tests/data`` of this repository.
  Missing data is a test failure, not a skip (these tests are mandatory).
* ``make_nuscenes_root(dst, ...)``: builds a nuScenes dataroot the real devkit loads from
  ``nuscenes_scene0916`` (5 keyframes of scene-0916, 6 cameras): per-file symlinks to the real
  samples (so a test can replace one file), the 9 real tables of ``v1.0-extract`` plus minimal
  ``log``, ``map`` (+ a tiny PNG), ``attribute`` and ``visibility`` tables. Version ``v1.0-mini``
  (scene-0916 is in mini_val). Optional fake lidarseg (for format tests only).
* ``nuscenes_root``: one such dataroot per session, read-only by convention.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENE0916 = "nuscenes_scene0916"
NUSCENES_VERSION = "v1.0-mini"


def _find_real_data() -> Path | None:
    candidates = []
    if os.environ.get("AFOV_TEST_DATA"):
        candidates.append(Path(os.environ["AFOV_TEST_DATA"]))
    candidates.append(REPO_ROOT / "tests" / "data")
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = _find_real_data()
    if path is None:
        pytest.fail(f"real test data not found in {REPO_ROOT / 'tests' / 'data'} (or $AFOV_TEST_DATA)")
    return path


def _write_png(path: Path, width: int = 4, height: int = 4) -> None:
    from PIL import Image

    Image.new("L", (width, height), color=0).save(path)


def build_nuscenes_root(
    src: Path,
    dst: Path,
    version: str = NUSCENES_VERSION,
    lidarseg_labels: Callable[[str, int], np.ndarray] | None = None,
) -> Path:
    """Build the dataroot (see module doc) in ``dst``; returns ``dst``.

    ``lidarseg_labels(lidar_sd_token, num_points) -> uint8 array``: when given, a full 32-class
    category table and a lidarseg table + label files are written (fake labels: format tests only).
    """
    dst.mkdir(parents=True, exist_ok=True)
    tables = dst / version
    tables.mkdir()
    ext = src / "v1.0-extract"
    data = {p.stem: json.loads(p.read_text()) for p in sorted(ext.glob("*.json"))}

    # Real sample files: one symlink per file.
    for chan_dir in sorted((src / "samples").iterdir()):
        out = dst / "samples" / chan_dir.name
        out.mkdir(parents=True)
        for f in sorted(chan_dir.iterdir()):
            (out / f.name).symlink_to(f)

    # Minimal tables the extract lacks (placeholder values, clearly not nuScenes facts).
    log_tokens = sorted({s["log_token"] for s in data["scene"]})
    lidar_file = next(sd["filename"] for sd in data["sample_data"] if "LIDAR_TOP" in sd["filename"])
    logfile = Path(lidar_file).name.split("__")[0]
    data["log"] = [
        {"token": t, "logfile": logfile, "vehicle": logfile.split("-")[0], "date_captured": "2018-10-08",
         "location": "placeholder-location"}
        for t in log_tokens
    ]
    (dst / "maps").mkdir()
    _write_png(dst / "maps" / "placeholder.png")
    data["map"] = [{"token": "placeholder-map", "log_tokens": log_tokens, "category": "semantic_prior",
                    "filename": "maps/placeholder.png"}]
    attr_tokens = sorted({t for a in data["sample_annotation"] for t in a["attribute_tokens"]})
    data["attribute"] = [{"token": t, "name": f"placeholder.{t[:6]}", "description": ""} for t in attr_tokens]
    vis_tokens = sorted({a["visibility_token"] for a in data["sample_annotation"]})
    data["visibility"] = [{"token": t, "level": f"v{t}", "description": ""} for t in vis_tokens]

    if lidarseg_labels is not None:
        from nuscenes.utils.color_map import get_colormap

        names = list(get_colormap())  # devkit's 32 class names in index order
        have = {c["name"] for c in data["category"]}
        for idx, name in enumerate(names):
            if name not in have:
                data["category"].append({"token": f"placeholder-cat-{idx}", "name": name, "description": "",
                                         "index": idx})
        seg_dir = dst / "lidarseg" / version
        seg_dir.mkdir(parents=True)
        records = []
        for sd in data["sample_data"]:
            if "LIDAR_TOP" not in sd["filename"] or not sd["is_key_frame"]:
                continue
            n = os.path.getsize(src / sd["filename"]) // 20
            name = f"{sd['token']}_lidarseg.bin"
            np.asarray(lidarseg_labels(sd["token"], n), dtype=np.uint8).tofile(seg_dir / name)
            records.append({"token": sd["token"], "sample_data_token": sd["token"],
                            "filename": f"lidarseg/{version}/{name}"})
        data["lidarseg"] = records

    for name, rows in data.items():
        (tables / f"{name}.json").write_text(json.dumps(rows))
    return dst


@pytest.fixture(scope="session")
def make_nuscenes_root(real_data: Path) -> Callable[..., Path]:
    """Factory: ``make_nuscenes_root(dst, version="v1.0-mini", lidarseg_labels=None) -> dataroot``."""

    def make(dst: Path, version: str = NUSCENES_VERSION, lidarseg_labels=None) -> Path:
        return build_nuscenes_root(real_data / SCENE0916, Path(dst), version, lidarseg_labels)

    return make


@pytest.fixture(scope="session")
def nuscenes_root(make_nuscenes_root, tmp_path_factory) -> Path:
    """A session-wide scene-0916 dataroot (version v1.0-mini). Do not modify it."""
    return make_nuscenes_root(tmp_path_factory.mktemp("nuscenes") / "root")


def replace_symlink_with_copy(path: Path) -> Path:
    """Make ``path`` (a symlink into the real test data) a private writable copy; returns it."""
    target = path.resolve()
    path.unlink()
    shutil.copyfile(target, path)
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="session")
def private_copy() -> Callable[[Path], Path]:
    """``private_copy(path)``: turn a symlinked real-data file in a built dataroot into a writable copy."""
    return replace_symlink_with_copy
