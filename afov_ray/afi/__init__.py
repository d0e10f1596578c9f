"""afov_ray.afi: Approximate Flat Interaction, a training-free label refinement
(afov-reference.md section 1)."""

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.geometry import (decoder_kappas, fibonacci_directions, furthest_point_sample,
                                   knn, level_sizes)
from afov_ray.afi.preprocess import assist_probability, near_ego_ground
from afov_ray.afi.refine import afi_forward, afi_refine, afi_refine_batch

__all__ = ["AFIConfig", "afi_refine", "afi_refine_batch", "afi_forward", "fibonacci_directions",
           "level_sizes", "decoder_kappas", "furthest_point_sample", "knn", "near_ego_ground",
           "assist_probability"]
