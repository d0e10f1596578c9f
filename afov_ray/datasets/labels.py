"""Raw dataset labels -> evaluation classes (docs/method.md "Label maps and the ignore index").

nuScenes-lidarseg: 32 raw classes (devkit names, index 0..31) -> 16 evaluation classes (ids 1..16),
ignore = 0. This is the standard nuScenes-lidarseg challenge map, identical to the devkit's
``nuscenes.eval.lidarseg.utils.LidarsegClassMapper`` (tests check it class by class). Any value
outside the 32 raw classes (e.g. 99, the "unprojected" value of the zero-shot loader) maps to 0.

SemanticKITTI: the low 16 bits of a ``.label`` value are the raw semantic class; they map to 19
evaluation classes (ids 1..19), ignore = 0, moving classes folded onto their static class as in
``AFOV:downstream/dataloader_kitti.py``. Unknown raw values map to 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Raw nuScenes-lidarseg class names, by raw index (the devkit's category.json "index" / colormap order).
NUSCENES_RAW_NAMES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)

# Evaluation class names by id; id 0 is the ignore class.
NUSCENES_EVAL_NAMES: tuple[str, ...] = (
    "ignore",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
)
NUSCENES_NUM_CLASSES = len(NUSCENES_EVAL_NAMES)  # 17 including ignore

# raw:eval, docs/method.md "nuScenes dictionary"; 99 and every other value -> 0.
NUSCENES_RAW_TO_EVAL: dict[int, int] = {
    0: 0, 1: 0, 2: 7, 3: 7, 4: 7, 5: 0, 6: 7, 7: 0, 8: 0, 9: 1, 10: 0, 11: 0, 12: 8, 13: 0, 14: 2,
    15: 3, 16: 3, 17: 4, 18: 5, 19: 0, 20: 0, 21: 6, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 29: 0, 30: 16, 31: 0,
}

KITTI_EVAL_NAMES: tuple[str, ...] = (
    "ignore",
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)
KITTI_NUM_CLASSES = len(KITTI_EVAL_NAMES)  # 20 including ignore (model_n_out: 20)

# raw (low 16 bits):eval, docs/method.md "SemanticKITTI dictionary"; every other value -> 0.
KITTI_RAW_TO_EVAL: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}


# eval id -> raw class for SemanticKITTI submissions: the benchmark's ``learning_map_inv`` (semantic-kitti-api
# ``config/semantic-kitti.yaml``): each evaluation class back to its static raw class.
KITTI_EVAL_TO_RAW: dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48, 12: 49, 13: 50,
    14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}


@lru_cache(maxsize=None)
def nuscenes_lut() -> np.ndarray:
    """uint8 lookup table of size 256: raw lidarseg value -> eval id (unknown -> 0). Read-only."""
    lut = np.zeros(256, dtype=np.uint8)
    for raw, ev in NUSCENES_RAW_TO_EVAL.items():
        lut[raw] = ev
    lut.flags.writeable = False
    return lut


@lru_cache(maxsize=None)
def kitti_lut() -> np.ndarray:
    """uint8 lookup table of size 2**16: raw semantic class (low 16 bits) -> eval id. Read-only."""
    lut = np.zeros(1 << 16, dtype=np.uint8)
    for raw, ev in KITTI_RAW_TO_EVAL.items():
        lut[raw] = ev
    lut.flags.writeable = False
    return lut


def nuscenes_raw_to_eval(raw: np.ndarray) -> np.ndarray:
    """Map raw nuScenes-lidarseg labels (any integer dtype) to uint8 eval ids 0..16.

    Values outside 0..255 (e.g. -1) and raw values without a class map to 0 (ignore).
    """
    raw = np.asarray(raw)
    lut = nuscenes_lut()
    if raw.dtype == np.uint8:
        return lut[raw]
    if not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"nuscenes_raw_to_eval: integer labels expected, got {raw.dtype}")
    out = np.zeros(raw.shape, dtype=np.uint8)
    valid = (raw >= 0) & (raw < lut.size)
    out[valid] = lut[raw[valid]]
    return out


def kitti_semantic(label: np.ndarray) -> np.ndarray:
    """Raw SemanticKITTI semantic class: the low 16 bits of the uint32 ``.label`` value."""
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"kitti_semantic: integer labels expected, got {label.dtype}")
    return (label.astype(np.uint32) & np.uint32(0xFFFF)).astype(np.uint16)


def kitti_raw_to_eval(label_uint32: np.ndarray) -> np.ndarray:
    """Map SemanticKITTI ``.label`` values (uint32, instance in the high 16 bits) to uint8 eval ids 0..19."""
    return kitti_lut()[kitti_semantic(label_uint32)]
