"""AFI hyper-parameters (afov-reference.md section 1.2).

Every constant of the official ``AFOV:afi`` code is a field here. The defaults are the effective
values of the official ``annotation_free_*.yaml`` configs, and the official quirks are reproduced
by default; each quirk has a switch that gives the clean behaviour (see field comments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AFIConfig:
    # --- network (section 1.2) ---
    points: int = 4096            # G_0 used to derive FPS sizes G_s = G_{s-1} // delta
    stages: int = 4               # encoder (and decoder) stages
    k: int = 20                   # kNN size per encoder stage, centre included
    de_k: int = 6                 # sparse neighbours per dense point in the decoder
    alpha: float = 0.0            # stage-1 bins keep counts n > alpha
    beta2: int = 20               # number of Fibonacci-sphere direction bins
    gamma: float = 0.995          # strict |cos| > gamma means "same line"
    delta: int = 3                # downsampling divisor
    num_classes: int = 17         # one-hot width (0 = ignore + 16 classes)

    # --- near-ego / ground step (section 1.3 step 1, nuScenes-only in the official code) ---
    ground_step: bool = True      # False: no near-ego mask and no RANSAC (non-nuScenes data)
    inner_radius: float = 2.0     # points with r <= inner_radius contribute no label mass
    del_max_distance: float = 5.0 # outer radius of the ground ring (2 < r < 5)
    ground_z: float = -1.4        # ring points need z < ground_z (nuScenes LiDAR height)
    ground_classes: tuple[int, ...] = (11, 12, 13, 14)
    ransac_min_samples: int = 10
    ransac_residual_threshold: float = 0.1
    ransac_max_trials: int = 20
    ransac_random_state: int = 42

    # --- optional 2D assist (section 1.3 step 2) ---
    use_assist: bool = False      # official ``if_ovseg``
    assist_classes: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    beta: float = 4.0             # odds at zero range
    samep_dist: float = 20.0      # range (m) where the replacement probability is 0.5
    assist_seed: int = 0          # seeds the generator when none is passed (official: unseeded)

    # --- pooling (section 1.4 c) ---
    pool_self_weight: float = 0.1
    pool_max_weight: float = 1e-8

    # --- decoder kappa (section 1.5) ---
    # "official": kappa_dense iff |dense| == kappa_ratio * |sparse| exactly, else kappa_sparse.
    # "list": decoder_kappas[i] for decoder step i, deepest step first (s = S, ..., 1).
    kappa_mode: Literal["official", "list"] = "official"
    kappa_dense: float = 0.3
    kappa_sparse: float = 0.01
    kappa_ratio: int = 3
    decoder_kappas: tuple[float, ...] = (0.01, 0.01, 0.3, 0.01)

    # --- official quirks (True = official behaviour) ---
    class0_mass: bool = True          # label-0 inputs carry one-hot mass (official); False: mass 0
    centre_in_bin1_hist: bool = True  # centre's feature added to bin 1's histogram (official)
    fps_origin_eps2: float = 1e-3     # FPS never picks points with |p|^2 <= this (CUDA op, ~3 cm)

    # --- numerics ---
    dtype: Literal["float32", "float64"] = "float32"
    knn_chunk_elems: int = 1 << 22    # max distance-matrix entries held at once (kNN, decoder)

    def validate(self) -> None:
        if self.stages < 1 or self.k < 1 or self.de_k < 1 or self.delta < 1 or self.beta2 < 1:
            raise ValueError("AFIConfig: stages, k, de_k, delta and beta2 must be >= 1")
        if self.kappa_mode == "list" and len(self.decoder_kappas) != self.stages:
            raise ValueError(f"AFIConfig.decoder_kappas: need {self.stages} values (one per decoder "
                             f"step), got {len(self.decoder_kappas)}")
        if self.kappa_mode not in ("official", "list"):
            raise ValueError(f"AFIConfig.kappa_mode: {self.kappa_mode!r} is not 'official' or 'list'")
