"""The reader interface shared by the nuScenes and SemanticKITTI readers.

Readers enumerate scenes and keyframes cheaply and load one keyframe at a time; a bad keyframe
raises ``afov_ray.errors.DataError`` naming it, so callers (prepare, pair, ...) can log it and go on.
"""

from __future__ import annotations

from typing import Protocol

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
