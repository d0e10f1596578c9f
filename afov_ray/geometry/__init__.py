"""afov_ray.geometry: LiDAR -> camera projection (afov-reference.md section 4.3)."""

from afov_ray.geometry.projection import (
    Projection,
    devkit_chain_points,
    invert_rigid,
    lidar_to_cam_matrix,
    pose_matrix,
    project_camera_points,
    project_points,
    quaternion_to_matrix,
    transform_points,
)

__all__ = [
    "Projection",
    "devkit_chain_points",
    "invert_rigid",
    "lidar_to_cam_matrix",
    "pose_matrix",
    "project_camera_points",
    "project_points",
    "quaternion_to_matrix",
    "transform_points",
]
