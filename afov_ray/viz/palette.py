"""The product's one class palette, error colours and score colour scale.

Colours are float RGB in [0, 1] (``(C, 3)`` arrays, index = evaluation class id, id 0 = ignore).

- nuScenes-lidarseg (17 ids): each evaluation class takes the nuscenes-devkit colour
  (``nuscenes.utils.color_map.get_colormap()``) of its main raw class (``NUSCENES_COLOR_SOURCE``);
  the values are copied here so that no devkit import is needed, and a test compares them with
  the devkit.
- SemanticKITTI (20 ids): the ``color_map`` of semantic-kitti-api/config/semantic-kitti.yaml
  (stored there as BGR per raw label) for the raw label that each evaluation class maps back to
  (``learning_map_inv``), written here in RGB.
- Any other dataset or class count: a deterministic fallback (tab20, then golden-ratio hues).

The ignore class is light grey everywhere. Scores use a continuous scale (viridis by default).
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np

from afov_ray.datasets import labels

IGNORE_RGB: tuple[float, float, float] = (0.8, 0.8, 0.8)

# Evaluation class -> the raw nuScenes-lidarseg class whose devkit colour it takes.
NUSCENES_COLOR_SOURCE: dict[str, str] = {
    "barrier": "movable_object.barrier",
    "bicycle": "vehicle.bicycle",
    "bus": "vehicle.bus.rigid",
    "car": "vehicle.car",
    "construction_vehicle": "vehicle.construction",
    "motorcycle": "vehicle.motorcycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
    "trailer": "vehicle.trailer",
    "truck": "vehicle.truck",
    "driveable_surface": "flat.driveable_surface",
    "other_flat": "flat.other",
    "sidewalk": "flat.sidewalk",
    "terrain": "flat.terrain",
    "manmade": "static.manmade",
    "vegetation": "static.vegetation",
}

# RGB 0..255 per nuScenes evaluation class: get_colormap()[NUSCENES_COLOR_SOURCE[name]]
# (nuscenes-devkit 1.2.0, nuscenes/utils/color_map.py).
NUSCENES_RGB: dict[str, tuple[int, int, int]] = {
    "barrier": (112, 128, 144),
    "bicycle": (220, 20, 60),
    "bus": (255, 69, 0),
    "car": (255, 158, 0),
    "construction_vehicle": (233, 150, 70),
    "motorcycle": (255, 61, 99),
    "pedestrian": (0, 0, 230),
    "traffic_cone": (47, 79, 79),
    "trailer": (255, 140, 0),
    "truck": (255, 99, 71),
    "driveable_surface": (0, 207, 191),
    "other_flat": (175, 0, 75),
    "sidewalk": (75, 0, 75),
    "terrain": (112, 180, 60),
    "manmade": (222, 184, 135),
    "vegetation": (0, 175, 0),
}

# RGB 0..255 per SemanticKITTI evaluation class, from semantic-kitti-api/config/semantic-kitti.yaml:
# color_map[learning_map_inv[id]] with the file's BGR triple reversed. Raw label in the comment.
KITTI_RGB: dict[str, tuple[int, int, int]] = {
    "car": (100, 150, 245),  # 10
    "bicycle": (100, 230, 245),  # 11
    "motorcycle": (30, 60, 150),  # 15
    "truck": (80, 30, 180),  # 18
    "other-vehicle": (0, 0, 255),  # 20
    "person": (255, 30, 30),  # 30
    "bicyclist": (255, 40, 200),  # 31
    "motorcyclist": (150, 30, 90),  # 32
    "road": (255, 0, 255),  # 40
    "parking": (255, 150, 255),  # 44
    "sidewalk": (75, 0, 75),  # 48
    "other-ground": (175, 0, 75),  # 49
    "building": (255, 200, 0),  # 50
    "fence": (255, 120, 50),  # 51
    "vegetation": (0, 175, 0),  # 70
    "trunk": (135, 60, 0),  # 71
    "terrain": (150, 240, 80),  # 72
    "pole": (255, 240, 150),  # 80
    "traffic-sign": (255, 0, 0),  # 81
}

# Error layer: code 0 = ignored (GT ignore), 1 = correct, 2 = wrong.
ERROR_NAMES: tuple[str, ...] = ("ignored", "correct", "wrong")
ERROR_RGB: tuple[tuple[float, float, float], ...] = ((0.55, 0.55, 0.55), (0.2, 0.7, 0.2), (0.9, 0.1, 0.1))

# Spellings (lower case, without "-" and "_") -> canonical dataset name.
_ALIASES = {"nuscenes": "nuscenes", "nusceneslidarseg": "nuscenes", "semantickitti": "semantickitti",
            "kitti": "semantickitti"}


def canonical_dataset(dataset: str | None) -> str | None:
    """``"nuscenes"`` / ``"semantickitti"`` for the known spellings (case, ``-`` and ``_`` ignored),
    else None."""
    if dataset is None:
        return None
    return _ALIASES.get(str(dataset).strip().lower().replace("-", "").replace("_", ""))


def class_names(dataset: str) -> list[str] | None:
    """Evaluation class names (index = class id, 0 = "ignore") of a known dataset, else None."""

    return {"nuscenes": list(labels.NUSCENES_EVAL_NAMES),
            "semantickitti": list(labels.KITTI_EVAL_NAMES)}.get(canonical_dataset(dataset) or "")


def _dataset_table(dataset: str) -> dict[str, tuple[int, int, int]]:
    return {"nuscenes": NUSCENES_RGB, "semantickitti": KITTI_RGB}[dataset]


def infer_dataset(num_classes: int) -> str | None:
    """The known dataset with this many class ids (17 -> nuScenes, 20 -> SemanticKITTI), else None."""
    for ds in ("nuscenes", "semantickitti"):
        if len(class_names(ds)) == num_classes:
            return ds
    return None


def fallback_colors(num_classes: int) -> np.ndarray:
    """Deterministic (C, 3) palette: 0 light grey, 1..20 tab20, beyond that golden-ratio hues."""
    tab20 = _tab20()
    out = np.empty((max(int(num_classes), 0), 3), dtype=np.float64)
    for c in range(len(out)):
        if c == 0:
            out[c] = IGNORE_RGB
        elif c <= len(tab20):
            out[c] = tab20[c - 1]
        else:
            h = (c * 0.618033988749895) % 1.0
            out[c] = colorsys.hsv_to_rgb(h, 0.75 if c % 2 else 0.55, 0.9 if c % 3 else 0.7)
    return out


def class_colors(dataset: str | None, num_classes: int | None = None) -> np.ndarray:
    """(C, 3) float RGB in [0, 1] for class ids 0..C-1 (row 0 = ignore, light grey).

    ``dataset`` None infers it from ``num_classes`` (17 nuScenes, 20 SemanticKITTI). ``num_classes``
    None takes the dataset's own count. A dataset whose count differs from ``num_classes``, or an
    unknown dataset, gets :func:`fallback_colors`.
    """
    ds = canonical_dataset(dataset) if dataset is not None else (
        infer_dataset(int(num_classes)) if num_classes is not None else None)
    names = class_names(ds) if ds else None
    if num_classes is None:
        if names is None:
            raise ValueError(f"unknown dataset {dataset!r}: pass num_classes")
        num_classes = len(names)
    if names is None or len(names) != int(num_classes):
        return fallback_colors(int(num_classes))
    table = _dataset_table(ds)
    out = np.empty((len(names), 3), dtype=np.float64)
    out[0] = IGNORE_RGB
    for c, name in enumerate(names[1:], start=1):
        out[c] = np.asarray(table[name], dtype=np.float64) / 255.0
    return out


def error_colors() -> np.ndarray:
    """(3, 3) float RGB for the error codes 0 ignored, 1 correct, 2 wrong."""
    return np.asarray(ERROR_RGB, dtype=np.float64)


def colorscale(name: str = "viridis", n: int = 256) -> np.ndarray:
    """(n, 3) float RGB samples of a matplotlib colour map, from its low end to its high end."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return np.asarray(cmap(np.linspace(0.0, 1.0, int(n)))[:, :3], dtype=np.float64)


def score_colors(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis",
                 nan_rgb: Sequence[float] = IGNORE_RGB, n: int = 256) -> np.ndarray:
    """(N, 3) float RGB of scalar values on a continuous scale; values are clipped to [vmin, vmax]
    and non-finite values get ``nan_rgb``. Uses the same n-step table as the HTML viewer."""
    lut = colorscale(cmap, n)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    span = float(vmax) - float(vmin)
    t = np.clip((v - float(vmin)) / span if span > 0 else np.zeros_like(v), 0.0, 1.0)
    idx = np.floor(np.nan_to_num(t) * (n - 1) + 0.5).astype(np.int64)  # as the viewer's JS rounds
    out = lut[idx]
    out[~np.isfinite(v)] = np.asarray(nan_rgb, dtype=np.float64)
    return out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> uint8 0..255 (rounded)."""
    return np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_hex(rgb: np.ndarray) -> list[str]:
    """Float RGB rows in [0, 1] -> ``#rrggbb`` strings."""
    return ["#%02x%02x%02x" % tuple(int(v) for v in row) for row in to_uint8(np.atleast_2d(rgb))]


def _tab20() -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return np.array([cmap(i)[:3] for i in range(20)], dtype=np.float64)
