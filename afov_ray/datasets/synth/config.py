"""Configuration of the procedural driving-scene generator (nuScenes and SemanticKITTI writers)."""

from __future__ import annotations

from dataclasses import dataclass

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

    seed: int = 0
    num_scenes: int = 2
    keyframes_per_scene: int = 4
    num_val_scenes: int = 1
    image_width: int = 1600
    image_height: int = 900
    num_beams: int = 32
    azimuth_steps: int = 1084
    version: str = "v1.0-trainval"
    keyframe_interval_us: int = 500_000
    write_images: bool = True
    lidar_max_range: float = 70.0
    lidar_range_noise: float = 0.01
    lidar_dropout: float = 0.0
    ego_hits: str = "label"
    ego_speed_mps: float = 8.0
    jpeg_quality: int = 90
    image_noise: float = 4.0
    cover_all_classes: bool = False
    base_timestamp_us: int = 1_533_151_600_000_000
    kitti_num_beams: int = 64
    kitti_azimuth_steps: int = 2048
    kitti_image_width: int = 1241
    kitti_image_height: int = 376
    kitti_frame_interval_us: int = 100_000
    kitti_max_range: float = 80.0

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
