"""An in-test Reader over random keyframes (the real nuScenes / KITTI readers land separately).

Implements the ``afov_ray.datasets.reader.Reader`` protocol: ``dataset``, ``dataroot``,
``scenes()``, ``keyframe_ids()``, ``describe()`` / ``load()`` / ``read()``, ``warnings()``. Keyframes listed in
``bad`` raise DataError when loaded; with ``exit_at=(scene, index)`` loading that keyframe kills the process
(simulates a killed job).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np

from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError

CHANNELS = ("CAM_FRONT", "CAM_BACK")


@dataclass(frozen=True)
class RandomReader:
    num_scenes: int = 3
    keyframes_per_scene: int = 4
    max_points: int = 300
    bad: tuple[str, ...] = ()          # keyframe ids whose read() raises DataError
    exit_at: tuple[str, int] | None = None
    seed: int = 0
    dataset: str = "nuscenes"
    dataroot: str = "/nonexistent/random"

    def scenes(self) -> list[str]:
        return [f"scene-{i:04d}" for i in range(self.num_scenes)]

    def keyframe_ids(self, scene: str) -> list[str]:
        return [f"{scene}/kf{j:03d}" for j in range(self.keyframes_per_scene)]

    def describe(self, keyframe_id: str) -> dict:
        return {"id": keyframe_id}

    def load(self, descriptor: dict) -> Keyframe:
        return self.read(descriptor["id"])

    def warnings(self) -> list[str]:
        return []

    def read(self, keyframe_id: str) -> Keyframe:
        scene, _, kf = keyframe_id.partition("/")
        index = int(kf[2:])
        if self.exit_at is not None and self.exit_at == (scene, index):
            os._exit(17)
        if keyframe_id in self.bad:
            raise DataError(keyframe_id, "corrupt point file (test)")
        return make_keyframe(keyframe_id, self.seed, self.max_points, self.dataset)


def make_keyframe(keyframe_id: str, seed: int = 0, max_points: int = 300, dataset: str = "nuscenes") -> Keyframe:
    """A deterministic random keyframe; odd-numbered keyframes have no ring / raw labels."""
    scene, _, kf = keyframe_id.partition("/")
    index = int(kf[2:])
    rng = np.random.default_rng([seed, zlib.crc32(keyframe_id.encode())])
    n = int(rng.integers(1, max_points + 1))
    points = rng.normal(0, 10, size=(n, 4)).astype(np.float32)
    points[:, 3] = rng.uniform(0, 255, n)
    cams = []
    for c, ch in enumerate(CHANNELS):
        l2c = np.eye(4)
        l2c[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64) if c == 0 else \
            np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=np.float64)
        l2c[:3, 3] = rng.normal(0, 0.1, 3)
        cams.append(CameraFrame(channel=ch, token=f"{keyframe_id}/{ch}", image_path=f"samples/{ch}/{scene}_{index}.jpg",
                                width=160, height=90, K=np.array([[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]]),
                                lidar_to_cam=l2c, timestamp=1000 * index + c))
    even = index % 2 == 0
    return Keyframe(
        dataset=dataset, sample_token=keyframe_id, lidar_token=f"{keyframe_id}/lidar", scene=scene,
        timestamp=1_000_000 + 1000 * index, points=points,
        raw_labels=rng.integers(0, 32, n).astype(np.uint16) if even else None,
        labels=rng.integers(0, 17, n).astype(np.uint8),
        cameras=cams, lidar_path=f"samples/LIDAR_TOP/{scene}_{index}.pcd.bin",
        ring=rng.integers(0, 32, n).astype(np.uint8) if even else None,
    )


def assert_same_keyframe(a: Keyframe, b: Keyframe) -> None:
    """Field-by-field equality (exact: float32 / float64 survive Parquet bit for bit)."""
    for name in ("dataset", "sample_token", "lidar_token", "scene", "timestamp", "lidar_path"):
        assert getattr(a, name) == getattr(b, name), name
    np.testing.assert_array_equal(a.points, b.points)
    assert a.points.dtype == b.points.dtype == np.float32
    for name in ("raw_labels", "labels", "ring"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype, name
    assert len(a.cameras) == len(b.cameras)
    for ca, cb in zip(a.cameras, b.cameras):
        assert (ca.channel, ca.token, ca.image_path, ca.width, ca.height, ca.timestamp) == \
            (cb.channel, cb.token, cb.image_path, cb.width, cb.height, cb.timestamp)
        np.testing.assert_array_equal(ca.K, cb.K)
        np.testing.assert_array_equal(ca.lidar_to_cam, cb.lidar_to_cam)


def run_prepare_on(reader, out: str, *, use_ray: bool = False, rows_per_group: int = 32, scenes=None,
                   write_splits: bool = False):
    """``run_prepare`` with a test reader (no real dataroot): returns the pass summary."""
    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.shard_pass import ExecConfig

    cfg = PrepareConfig(dataset=reader.dataset, dataroot=reader.dataroot, rows_per_group=rows_per_group,
                        scenes=scenes, write_splits=write_splits,
                        exec=ExecConfig(use_ray=use_ray, progress=False))
    return run_prepare(cfg, out, reader)
