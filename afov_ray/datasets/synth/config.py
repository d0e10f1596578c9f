"""Configuration of the procedural driving-scene generator (nuScenes and SemanticKITTI writers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from afov_ray.config import option
from afov_ray.errors import DataError


@dataclass
class SynthConfig:
    """All knobs of the synthetic dataset generator. Same config + same seed -> byte-identical files.

    nuScenes output (``generate_nuscenes``):
      seed: master seed; every scene / keyframe / camera derives its own generator from it.
      num_scenes: scenes written; the first ``num_scenes - num_val_scenes`` take real scene names of
        the official 'train' split, the rest of 'val' ('mini_train' / 'mini_val' for v1.0-mini), so
        ``nuscenes.utils.splits.create_splits_scenes()`` assigns them correctly.
      keyframes_per_scene: LiDAR keyframes (samples) per scene, ``keyframe_interval_us`` apart.
      image_width / image_height: camera image size; the real 1600x900 intrinsics are scaled to it.
      num_beams / azimuth_steps: LiDAR rays per sweep (HDL-32E-like: 32 beams, -30.67..+10.67 deg).
      lidar_max_range: metres; rays without a hit closer than this are dropped (misses).
      lidar_range_noise: std of the Gaussian range noise in metres (labels come from the exact cast).
      lidar_dropout: fraction of returns dropped at random (0 disables).
      ego_hits: "label" keeps returns on the ego body as lidarseg 31 vehicle.ego (nuScenes style),
        "drop" removes them.
      ego_speed_mps: ego speed along the road (the ego also sways laterally so its yaw changes).
      write_images: write the 6 camera JPEGs per keyframe (tables list them either way).
      jpeg_quality: PIL JPEG quality.
      image_noise: std of per-pixel Gaussian noise added to the rendered RGB (0..255 scale).
      cover_all_classes: add a close-range showcase to every scene (a bicycle and a motorcycle in the
        next lane, a bus passing in the oncoming lane, a parked truck, a work zone with cones, barriers
        and a construction vehicle, other-flat lots with fences), so that a handful of scenes does not
        leave rare classes in val only. Off by default: scenes are then exactly those drawn before this
        option existed. Also used by the KITTI writer.

    SemanticKITTI output (``generate_semantickitti``):
      kitti_num_beams / kitti_azimuth_steps: HDL-64E-like sensor (+2..-24.8 deg).
      kitti_image_width / kitti_image_height: image_2 size; KITTI odometry seq-00 intrinsics scaled.
      kitti_frame_interval_us: time between scans (10 Hz).
      kitti_max_range: metres, as lidar_max_range.
    """

    seed: int = option(0, "master seed; every scene / keyframe / camera derives its own generator from it")
    num_scenes: int = option(2, "scenes written (named after real scenes of the official train / val splits)", min=1)
    keyframes_per_scene: int = option(4, "LiDAR keyframes (samples) per scene", min=1)
    num_val_scenes: int = option(1, "how many of the scenes take names of the official val split", min=0)
    image_width: int = option(1600, "camera image width (the real intrinsics are scaled to it)", min=8)
    image_height: int = option(900, "camera image height", min=8)
    num_beams: int = option(32, "LiDAR beams (HDL-32E-like: -30.67..+10.67 deg)", min=1)
    azimuth_steps: int = option(1084, "LiDAR rays per beam per sweep", min=8)
    version: str = option("v1.0-trainval", "nuScenes table version written")
    keyframe_interval_us: int = option(500_000, "time between keyframes (microseconds)", min=1)
    write_images: bool = option(True, "write the camera JPEGs (the tables list them either way)")
    lidar_max_range: float = option(70.0, "metres; rays without a closer hit are dropped", gt=0)
    lidar_range_noise: float = option(0.01, "std of the Gaussian range noise in metres (labels from the exact cast)",
                                      min=0)
    lidar_dropout: float = option(0.0, "fraction of returns dropped at random", min=0, max=1)
    ego_hits: Literal["label", "drop"] = option("label", "returns on the ego body: label them vehicle.ego (nuScenes "
                                                         "style) or drop them")
    ego_speed_mps: float = option(8.0, "ego speed along the road (it also sways laterally)", min=0)
    jpeg_quality: int = option(90, "JPEG quality of the camera images", min=1, max=100)
    image_noise: float = option(4.0, "std of per-pixel Gaussian noise added to the rendered RGB (0..255)", min=0)
    cover_all_classes: bool = option(False, "add a close-range showcase of the rare classes to every scene (bicycle, "
                                            "motorcycle, passing bus, parked truck, work zone, other-flat lots)")
    base_timestamp_us: int = option(1_533_151_600_000_000, "timestamp of the first keyframe (microseconds)")
    kitti_num_beams: int = option(64, "SemanticKITTI writer: LiDAR beams (HDL-64E-like, +2..-24.8 deg)", min=1)
    kitti_azimuth_steps: int = option(2048, "SemanticKITTI writer: rays per beam", min=8)
    kitti_image_width: int = option(1241, "SemanticKITTI writer: image_2 width", min=8)
    kitti_image_height: int = option(376, "SemanticKITTI writer: image_2 height", min=8)
    kitti_frame_interval_us: int = option(100_000, "SemanticKITTI writer: time between scans (10 Hz)", min=1)
    kitti_max_range: float = option(80.0, "SemanticKITTI writer: maximum range in metres", gt=0)

    def validate(self) -> None:
        if self.num_scenes < 1 or not (0 <= self.num_val_scenes <= self.num_scenes):
            raise DataError("SynthConfig.num_val_scenes", f"need 0 <= num_val_scenes <= num_scenes >= 1, "
                            f"got {self.num_val_scenes}, {self.num_scenes}")
        if self.keyframes_per_scene < 1:
            raise DataError("SynthConfig.keyframes_per_scene", "must be >= 1")
        if self.ego_hits not in ("label", "drop"):
            raise DataError("SynthConfig.ego_hits", f"must be 'label' or 'drop', got {self.ego_hits!r}")
        if self.image_width < 8 or self.image_height < 8:
            raise DataError("SynthConfig.image_width", "image must be at least 8x8")
