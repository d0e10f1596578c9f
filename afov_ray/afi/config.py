"""AFI hyper-parameters.

Every constant of the official AFI code (``afi/afi.py``, ``afi/pointwidth_features.py``) is a field
here. The defaults are the effective values of the official ``config/annotation_free_*.yaml`` files
(not the ``Point_NN_Seg`` class defaults), and the official quirks are reproduced by default; each
quirk has a switch that gives the clean behaviour (see field comments and docs/afi.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from afov_ray.config import option


@dataclass
class AFIConfig:
    # --- network (official yaml keys: points, stages, k, de_k, alpha, beta2, gamma, delta, dim) ---
    points: int = option(4096, "G_0 used to derive FPS sizes G_s = G_{s-1} // delta", min=1)
    stages: int = option(4, "encoder (and decoder) stages", min=1)
    k: int = option(20, "kNN size per encoder stage, centre included", min=1)
    de_k: int = option(6, "sparse neighbours per dense point in the decoder", min=1)
    alpha: float = option(0.0, "stage-1 direction bins keep counts n > alpha", min=0)
    beta2: int = option(20, "number of Fibonacci-sphere direction bins", min=1)
    gamma: float = option(0.995, "strict |cos| > gamma means 'same line'", min=0, max=1)
    delta: int = option(3, "downsampling divisor between stages", min=1)
    num_classes: int = option(17, "official `dim`: one-hot width (0 = ignore + the classes)", min=2)

    # --- near-ego / ground step (official ``post_process``, only for dataset == "nuscenes") ---
    ground_step: bool = option(
        True, "near-ego mask + RANSAC ground step (official for nuScenes); false for other data")
    inner_radius: float = option(2.0, "points with r <= inner_radius (m) contribute no label mass", min=0)
    del_max_distance: float = option(5.0, "outer radius (m) of the ground ring", min=0)
    ground_z: float = option(-1.4, "ring points need z < ground_z (m; nuScenes LiDAR height)")
    ground_classes: tuple[int, ...] = option((11, 12, 13, 14), "classes the ground ring's RANSAC plane may relabel")
    ransac_min_samples: int = option(10, "RANSAC min_samples of the ground plane fit", min=1)
    ransac_residual_threshold: float = option(0.1, "RANSAC residual threshold (m)", gt=0)
    ransac_max_trials: int = option(20, "RANSAC trials", min=1)
    ransac_random_state: int = option(42, "RANSAC seed")

    # --- optional 2D assist (official ``post_process`` with ``ov_seg``) ---
    use_assist: bool = option(False, "2D assist: replace labels of far points by the teacher's (official if_ovseg)")
    assist_classes: tuple[int, ...] = option((1, 2, 3, 4, 5, 6, 7, 8, 9, 10), "classes the 2D assist may replace")
    beta: float = option(4.0, "2D assist: odds at zero range", gt=0)
    samep_dist: float = option(20.0, "2D assist: range (m) where the replacement probability is 0.5", gt=0)
    assist_seed: int = option(0, "2D assist seed when no generator is passed (official: unseeded)")

    # --- pooling (official ``Pooling``) ---
    pool_self_weight: float = option(0.1, "pooling: weight of the centre's own feature (official Pooling)")
    pool_max_weight: float = option(1e-8, "pooling: weight of the max-pooled feature (official Pooling)")

    # --- decoder kappa (official ``DecNP.propagate``) ---
    # "official": kappa_dense iff |dense| == ratio * |sparse| exactly (ratio = kappa_ratio, or delta
    # when None, as the official code), else kappa_sparse.
    # "list": decoder_kappas[i] for decoder step i, deepest step first (s = S, ..., 1).
    kappa_mode: Literal["official", "list"] = option(
        "official", "decoder kappa: official (kappa_dense iff |dense| == ratio*|sparse| exactly, else "
                    "kappa_sparse) | list (decoder_kappas, deepest step first)")
    kappa_dense: float = option(0.3, "decoder kappa for an exact-ratio step (official)")
    kappa_sparse: float = option(0.01, "decoder kappa otherwise (official)")
    kappa_ratio: int | None = option(
        None, "ratio tested by the official kappa rule (None: delta, as officially)", min=1)
    decoder_kappas: tuple[float, ...] = option(
        (0.01, 0.01, 0.3, 0.01), "kappa_mode=list: one kappa per decoder step, deepest first")

    # --- official quirks (True = official behaviour) ---
    class0_mass: bool = option(True, "official quirk: label-0 inputs carry one-hot mass; false: mass 0")
    centre_in_bin1_hist: bool = option(True, "official quirk: the centre's feature is added to bin 1's histogram")
    fps_origin_eps2: float = option(
        1e-3, "FPS never picks points with |p|^2 <= this (official CUDA op, ~3 cm)", min=0)

    # --- numerics ---
    # Network arithmetic (features, bins, relevance, decoder). FPS always runs in float32 (the
    # official op only takes float32), neighbour selection always on exact float64 distances.
    dtype: Literal["float32", "float64"] = option(
        "float32", "network arithmetic precision (FPS always float32, neighbours on float64 distances)")
    knn_chunk_elems: int = option(1 << 22, "max entries of the large intermediates held at once", min=1)
    # torch and BLAS threads during an AFI call on CPU (restored afterwards); 0 = leave the caller's
    # settings. 1 is fastest: the work is sequential or memory-bound (docs/afi.md, speed).
    cpu_threads: int = option(
        1, "torch/BLAS threads during an AFI call on CPU (restored afterwards); 0: leave the caller's; "
           "1 is fastest", min=0)

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
