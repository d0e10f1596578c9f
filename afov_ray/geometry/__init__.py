"""afov_ray.geometry: the geometry of LiDAR points and images.

LiDAR -> camera projection on the official chain (``projection``), superpixel-superpoint pairing and
pseudo-labels with the official or the z-buffer rule (``pairing``), and voxelisation on cylindrical or
cartesian grids (``voxelize``)."""


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
