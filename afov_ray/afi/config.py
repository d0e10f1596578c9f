"""AFI hyper-parameters.

Every constant of the official AFI code (``afi/afi.py``, ``afi/pointwidth_features.py``) is a field
here. The defaults are the effective values of the official ``config/annotation_free_*.yaml`` files
(not the ``Point_NN_Seg`` class defaults), and the official quirks are reproduced by default; each
quirk has a switch that gives the clean behaviour (see field comments and docs/afi.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AFIConfig:
    # --- network (official yaml keys: points, stages, k, de_k, alpha, beta2, gamma, delta, dim) ---
    points: int = 4096            # G_0 used to derive FPS sizes G_s = G_{s-1} // delta
    stages: int = 4               # encoder (and decoder) stages
    k: int = 20                   # kNN size per encoder stage, centre included
    de_k: int = 6                 # sparse neighbours per dense point in the decoder
    alpha: float = 0.0            # stage-1 bins keep counts n > alpha
    beta2: int = 20               # number of Fibonacci-sphere direction bins
    gamma: float = 0.995          # strict |cos| > gamma means "same line"
    delta: int = 3                # downsampling divisor
    num_classes: int = 17         # official `dim`: one-hot width (0 = ignore + 16 classes)

    # --- near-ego / ground step (official ``post_process``, only for dataset == "nuscenes") ---
    ground_step: bool = True      # False: no near-ego mask and no RANSAC (non-nuScenes data)
    inner_radius: float = 2.0     # points with r <= inner_radius contribute no label mass
    del_max_distance: float = 5.0 # outer radius of the ground ring (2 < r < 5)
    ground_z: float = -1.4        # ring points need z < ground_z (nuScenes LiDAR height)
    ground_classes: tuple[int, ...] = (11, 12, 13, 14)
    ransac_min_samples: int = 10
    ransac_residual_threshold: float = 0.1
    ransac_max_trials: int = 20
    ransac_random_state: int = 42

    # --- optional 2D assist (official ``post_process`` with ``ov_seg``) ---
    use_assist: bool = False      # official ``if_ovseg``
    assist_classes: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    beta: float = 4.0             # odds at zero range
    samep_dist: float = 20.0      # range (m) where the replacement probability is 0.5
    assist_seed: int = 0          # seeds the generator when none is passed (official: unseeded)

    # --- pooling (official ``Pooling``) ---
    pool_self_weight: float = 0.1
    pool_max_weight: float = 1e-8

    # --- decoder kappa (official ``DecNP.propagate``) ---
    # "official": kappa_dense iff |dense| == ratio * |sparse| exactly (ratio = kappa_ratio, or delta
    # when None, as the official code), else kappa_sparse.
    # "list": decoder_kappas[i] for decoder step i, deepest step first (s = S, ..., 1).
    kappa_mode: Literal["official", "list"] = "official"
    kappa_dense: float = 0.3
    kappa_sparse: float = 0.01
    kappa_ratio: int | None = None
    decoder_kappas: tuple[float, ...] = (0.01, 0.01, 0.3, 0.01)

    # --- official quirks (True = official behaviour) ---
    class0_mass: bool = True          # label-0 inputs carry one-hot mass (official); False: mass 0
    centre_in_bin1_hist: bool = True  # centre's feature added to bin 1's histogram (official)
    fps_origin_eps2: float = 1e-3     # FPS never picks points with |p|^2 <= this (CUDA op, ~3 cm)

    # --- numerics ---
    # Network arithmetic (features, bins, relevance, decoder). FPS always runs in float32 (the
    # official op only takes float32), neighbour selection always on exact float64 distances.
    dtype: Literal["float32", "float64"] = "float32"
    knn_chunk_elems: int = 1 << 22    # max entries of the large intermediates held at once
    # torch and BLAS threads during an AFI call on CPU (restored afterwards); 0 = leave the caller's
    # settings. 1 is fastest: the work is sequential or memory-bound (docs/afi.md, speed).
    cpu_threads: int = 1

    def validate(self) -> None:
        if self.stages < 1 or self.k < 1 or self.de_k < 1 or self.delta < 1 or self.beta2 < 1:
            raise ValueError("AFIConfig: stages, k, de_k, delta and beta2 must be >= 1")
        if self.kappa_mode == "list" and len(self.decoder_kappas) != self.stages:
            raise ValueError(f"AFIConfig.decoder_kappas: need {self.stages} values (one per decoder "
                             f"step), got {len(self.decoder_kappas)}")
        if self.cpu_threads < 0:
            raise ValueError("AFIConfig.cpu_threads must be >= 0")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"AFIConfig.dtype: {self.dtype!r} is not 'float32' or 'float64'")
        if self.kappa_mode not in ("official", "list"):
            raise ValueError(f"AFIConfig.kappa_mode: {self.kappa_mode!r} is not 'official' or 'list'")
