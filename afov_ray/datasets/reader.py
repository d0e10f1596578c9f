"""The reader interface shared by the nuScenes and SemanticKITTI readers.

Readers enumerate scenes and keyframes cheaply and load one keyframe at a time; a bad keyframe
raises ``afov_ray.errors.DataError`` naming it, so callers (prepare, pair, ...) can log it and go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from afov_ray.datasets.kitti import KITTI_CAMERAS, SemanticKITTIReader
from afov_ray.datasets.nuscenes import NUSCENES_CAMERAS, NuScenesReader
from afov_ray.datasets.types import Keyframe


class Reader(Protocol):
    dataset: str       # "nuscenes" | "semantickitti"
    dataroot: str

    def scenes(self) -> list[str]:
        """Scene names (nuScenes) or sequence ids (KITTI), in table / sorted order."""
        ...

    def keyframe_ids(self, scene: str) -> list[str]:
        """Keyframe ids of one scene in time order (nuScenes sample tokens, KITTI '<seq>/<frame>')."""
        ...

    def read(self, keyframe_id: str) -> Keyframe:
        """Load one keyframe (points, labels, cameras with calibration). Raises DataError."""
        ...


# SemanticKITTI's standard split (sequences), used when ``split`` names one.
KITTI_SPLITS = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{i:02d}" for i in range(11, 22)],
}


def make_reader(dataset: str, dataroot: str, version: str | None = None, split: str | None = None,
                cameras: bool = True) -> Reader:
    """Build the reader of a raw dataset.

    nuscenes: ``NuScenesReader(dataroot, version, split=split)`` (version e.g. "v1.0-trainval").
    semantickitti: ``SemanticKITTIReader(dataroot, sequences=...)`` where ``split`` is "train" / "val" /
    "test" or a comma-separated list of sequence ids; ``version`` is unused. ``cameras=False`` reads
    LiDAR only (no images or calibration needed).
    """
    if dataset == "nuscenes":

        return NuScenesReader(dataroot, version or "v1.0-trainval", split=split,
                              cameras=NUSCENES_CAMERAS if cameras else ())
    if dataset == "semantickitti":

        sequences = None
        if split:
            sequences = KITTI_SPLITS.get(split) or [s.strip() for s in split.split(",") if s.strip()]
        return SemanticKITTIReader(dataroot, sequences=sequences, cameras=KITTI_CAMERAS if cameras else ())
    raise ValueError(f"dataset: unknown {dataset!r} (expected 'nuscenes' or 'semantickitti')")


@dataclass(frozen=True)
class ReaderSpec:
    """A picklable reader factory: ``ReaderSpec(...)()`` calls ``make_reader`` (built where it runs)."""

    dataset: str
    dataroot: str
    version: str | None = None
    split: str | None = None
    cameras: bool = True

    def __call__(self) -> Reader:
        return make_reader(self.dataset, self.dataroot, self.version, self.split, self.cameras)
