"""afov_ray.afi: Approximate Flat Interaction (AFI), the training-free label refinement of AFOV
(paper section 3.3; official code ``afi/``). See docs/afi.md."""

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.fps import furthest_point_sample
from afov_ray.afi.geometry import decoder_kappas, fibonacci_directions, level_sizes
from afov_ray.afi.neighbors import knn
from afov_ray.afi.preprocess import assist_probability, near_ego_ground
from afov_ray.afi.refine import AFITrace, afi_forward, afi_refine, afi_refine_batch, afi_trace

__all__ = ["AFIConfig", "AFITrace", "afi_forward", "afi_refine", "afi_refine_batch", "afi_trace",
           "assist_probability", "decoder_kappas", "fibonacci_directions", "furthest_point_sample", "knn",
           "level_sizes", "near_ego_ground"]
