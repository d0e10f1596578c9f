"""afov_ray.afi: Approximate Flat Interaction (AFI), the paper's training-free label refinement (paper section
3.4; official ``afi/``): configuration (``config``), Fibonacci bins and level sizes (``geometry``), farthest-point
sampling (``fps``), neighbour search (``neighbors``), small compiled kernels with a numpy fallback (``native``),
the encoder and decoder (``network``), the ground and 2D-assist pre-processing (``preprocess``) and the driver
(``refine``). See docs/afi.md."""

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.fps import furthest_point_sample
from afov_ray.afi.geometry import decoder_kappas, fibonacci_directions, level_sizes
from afov_ray.afi.neighbors import knn
from afov_ray.afi.preprocess import assist_probability, near_ego_ground
from afov_ray.afi.refine import AFITrace, afi_forward, afi_refine, afi_refine_batch, afi_trace

__all__ = ["AFIConfig", "AFITrace", "afi_forward", "afi_refine", "afi_refine_batch", "afi_trace",
           "assist_probability", "decoder_kappas", "fibonacci_directions", "furthest_point_sample", "knn",
           "level_sizes", "near_ego_ground"]
