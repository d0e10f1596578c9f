"""The reader interface shared by the nuScenes and SemanticKITTI readers.

Readers enumerate scenes and keyframes cheaply and load one keyframe at a time; a bad keyframe
raises ``afov_ray.errors.DataError`` naming it, so callers (prepare, pair, ...) can log it and go on.
Work is split between the driver and the workers: ``describe`` plans a keyframe where the dataset's tables
are (the driver) and returns a small JSON-able descriptor; ``load`` reads a descriptor anywhere with file
I/O only (``afov_ray.datasets.descriptors``). A reader pickles without its tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from afov_ray.datasets.kitti import KITTI_CAMERAS, SemanticKITTIReader
from afov_ray.datasets.nuscenes import NUSCENES_CAMERAS, NuScenesReader
from afov_ray.datasets.splits import (
    KITTI_TEST_SEQUENCES,
    KITTI_TRAIN_SEQUENCES,
    KITTI_VAL_SEQUENCES,
    make_kitti_splits,
)
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

    def describe(self, keyframe_id: str) -> dict:
        """Plan one keyframe (driver side: tables, listings, calibration): a JSON-able descriptor. DataError."""
        ...

    def load(self, descriptor: dict) -> Keyframe:
        """Read a described keyframe (worker side: file I/O only). Raises DataError."""
        ...

    def read(self, keyframe_id: str) -> Keyframe:
        """``load(describe(keyframe_id))``: points, labels, cameras with calibration. Raises DataError."""
        ...

    def warnings(self) -> list[str]:
        """What the user should know about the dataroot (e.g. labels that will be missing)."""
        ...


# SemanticKITTI's standard split (sequences), used when ``split`` names one.
KITTI_SPLITS = {"train": list(KITTI_TRAIN_SEQUENCES), "val": list(KITTI_VAL_SEQUENCES),
                "test": list(KITTI_TEST_SEQUENCES)}


def make_reader(dataset: str, dataroot: str, version: str | None = None, split: str | None = None,
                cameras: bool = True) -> Reader:
    """Build the reader of a raw dataset.

    nuscenes: ``NuScenesReader(dataroot, version, split=split)`` (version e.g. "v1.0-trainval").
    semantickitti: ``SemanticKITTIReader(dataroot, sequences=...)`` where ``split`` is "train" / "val" /
    "test", "train_1pct" (the frame-level 1 % rule: only those scans) or a comma-separated list of sequence
    ids; ``version`` is unused. ``cameras=False`` reads LiDAR only (no images or calibration needed).
    """
    if dataset == "nuscenes":

        return NuScenesReader(dataroot, version or "v1.0-trainval", split=split,
                              cameras=NUSCENES_CAMERAS if cameras else ())
    if dataset == "semantickitti":

        cams = KITTI_CAMERAS if cameras else ()
        if split == "train_1pct":
            full = SemanticKITTIReader(dataroot, cameras=cams)
            one = make_kitti_splits({s: full.frames(s) for s in full.all_sequences()})["train_1pct"]
            return SemanticKITTIReader(dataroot, sequences=one.scenes, cameras=cams, frames=one.keyframes)
        sequences = None
        if split:
            sequences = KITTI_SPLITS.get(split) or [s.strip() for s in split.split(",") if s.strip()]
        return SemanticKITTIReader(dataroot, sequences=sequences, cameras=cams)
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
