"""afov_ray.afi: Approximate Flat Interaction, the paper's training-free label refinement (paper section 3.4;
official ``afi/``): configuration (``config``), Fibonacci bins / FPS / kNN (``geometry``), the encoder and decoder
(``network``), the ground and 2D-assist pre-processing (``preprocess``) and the batched driver (``refine``).
See docs/afi.md."""


from afov_ray.afi.config import AFIConfig
from afov_ray.afi.geometry import decoder_kappas, fibonacci_directions, furthest_point_sample, knn, level_sizes
from afov_ray.afi.preprocess import assist_probability, near_ego_ground
from afov_ray.afi.refine import afi_forward, afi_refine, afi_refine_batch

__all__ = ["AFIConfig", "afi_refine", "afi_refine_batch", "afi_forward", "fibonacci_directions",
           "level_sizes", "decoder_kappas", "furthest_point_sample", "knn", "near_ego_ground",
           "assist_probability"]
