"""Scene classes ("kinds") of the generator and their maps to nuScenes-lidarseg and SemanticKITTI ids.

A kind is finer than a nuScenes class where SemanticKITTI distinguishes more (trunk vs crown, pole vs
sign vs building vs fence, parking vs road). Maps (class lists: docs/method.md "Class dictionary and label maps"):

| kind | nuScenes raw lidarseg (0..31) | SemanticKITTI raw id |
|---|---|---|
| NONE (sky / miss) | 0 noise | 0 unlabeled |
| ROAD | 24 flat.driveable_surface | 40 road |
| PARKING | 24 flat.driveable_surface | 44 parking |
| SIDEWALK | 26 flat.sidewalk | 48 sidewalk |
| OTHER_FLAT | 25 flat.other | 49 other-ground |
| TERRAIN | 27 flat.terrain | 72 terrain |
| BUILDING | 28 static.manmade | 50 building |
| FENCE | 28 static.manmade | 51 fence |
| POLE | 28 static.manmade | 80 pole |
| SIGN | 28 static.manmade | 81 traffic-sign |
| TRUNK | 30 static.vegetation | 71 trunk |
| VEGETATION | 30 static.vegetation | 70 vegetation |
| CAR | 17 vehicle.car | 10 car |
| TRUCK | 23 vehicle.truck | 18 truck |
| BUS | 16 vehicle.bus.rigid | 13 bus |
| TRAILER | 22 vehicle.trailer | 20 other-vehicle |
| CONSTRUCTION | 18 vehicle.construction | 20 other-vehicle |
| MOTORCYCLE | 21 vehicle.motorcycle (rider included, nuScenes convention) | 15 motorcycle |
| BICYCLE | 14 vehicle.bicycle (rider included) | 11 bicycle |
| PEDESTRIAN | 2 human.pedestrian.adult | 30 person |
| TRAFFIC_CONE | 12 movable_object.trafficcone | 99 other-object |
| BARRIER | 9 movable_object.barrier | 51 fence |
| EGO | 31 vehicle.ego | never written (KITTI drops ego hits) |
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Kind(IntEnum):
    NONE = 0
    ROAD = 1
    PARKING = 2
    SIDEWALK = 3
    OTHER_FLAT = 4
    TERRAIN = 5
    BUILDING = 6
    FENCE = 7
    POLE = 8
    SIGN = 9
    TRUNK = 10
    VEGETATION = 11
    CAR = 12
    TRUCK = 13
    BUS = 14
    TRAILER = 15
    CONSTRUCTION = 16
    MOTORCYCLE = 17
    BICYCLE = 18
    PEDESTRIAN = 19
    TRAFFIC_CONE = 20
    BARRIER = 21
    EGO = 22


NUM_KINDS = len(Kind)

# The devkit's 32 default lidarseg class names in index order (nuscenes.utils.color_map.get_colormap()).
NUSCENES_LIDARSEG_NAMES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
)

_NUSC = {
    Kind.NONE: 0, Kind.ROAD: 24, Kind.PARKING: 24, Kind.SIDEWALK: 26, Kind.OTHER_FLAT: 25,
    Kind.TERRAIN: 27, Kind.BUILDING: 28, Kind.FENCE: 28, Kind.POLE: 28, Kind.SIGN: 28,
    Kind.TRUNK: 30, Kind.VEGETATION: 30, Kind.CAR: 17, Kind.TRUCK: 23, Kind.BUS: 16,
    Kind.TRAILER: 22, Kind.CONSTRUCTION: 18, Kind.MOTORCYCLE: 21, Kind.BICYCLE: 14,
    Kind.PEDESTRIAN: 2, Kind.TRAFFIC_CONE: 12, Kind.BARRIER: 9, Kind.EGO: 31,
}
_KITTI = {
    Kind.NONE: 0, Kind.ROAD: 40, Kind.PARKING: 44, Kind.SIDEWALK: 48, Kind.OTHER_FLAT: 49,
    Kind.TERRAIN: 72, Kind.BUILDING: 50, Kind.FENCE: 51, Kind.POLE: 80, Kind.SIGN: 81,
    Kind.TRUNK: 71, Kind.VEGETATION: 70, Kind.CAR: 10, Kind.TRUCK: 18, Kind.BUS: 13,
    Kind.TRAILER: 20, Kind.CONSTRUCTION: 20, Kind.MOTORCYCLE: 15, Kind.BICYCLE: 11,
    Kind.PEDESTRIAN: 30, Kind.TRAFFIC_CONE: 99, Kind.BARRIER: 51, Kind.EGO: 0,
}
# SemanticKITTI raw ids this generator can write (low 16 bits of .label).
KITTI_IDS_WRITTEN = frozenset(v for k, v in _KITTI.items() if k != Kind.EGO) | {0}

KIND_TO_NUSCENES = np.array([_NUSC[k] for k in Kind], dtype=np.uint8)
KIND_TO_KITTI = np.array([_KITTI[k] for k in Kind], dtype=np.uint32)

# Natural-looking base colours (RGB) for the camera renders; per-instance tint is added on top.
KIND_COLOUR = np.array([
    (0, 0, 0),          # NONE (sky handled separately)
    (88, 88, 92),       # ROAD
    (110, 105, 100),    # PARKING
    (170, 165, 155),    # SIDEWALK
    (140, 120, 95),     # OTHER_FLAT
    (95, 130, 60),      # TERRAIN
    (185, 160, 130),    # BUILDING
    (120, 100, 80),     # FENCE
    (140, 140, 145),    # POLE
    (30, 90, 200),      # SIGN
    (95, 70, 50),       # TRUNK
    (45, 110, 40),      # VEGETATION
    (60, 70, 150),      # CAR
    (200, 200, 205),    # TRUCK
    (210, 170, 40),     # BUS
    (150, 150, 160),    # TRAILER
    (230, 160, 20),     # CONSTRUCTION
    (150, 30, 30),      # MOTORCYCLE
    (40, 140, 160),     # BICYCLE
    (190, 110, 90),     # PEDESTRIAN
    (250, 110, 20),     # TRAFFIC_CONE
    (220, 220, 210),    # BARRIER
    (40, 40, 45),       # EGO
], dtype=np.float32)

# LiDAR reflectivity (nuScenes intensity scale 0..255) per kind, before incidence and noise.
KIND_REFLECTIVITY = np.array([
    0, 8, 10, 20, 15, 25, 40, 35, 50, 180, 30, 35, 30, 35, 40, 35, 45, 30, 25, 15, 120, 70, 5,
], dtype=np.float32)

# Kinds that are "things" (carry an instance id).
THING_KINDS = frozenset({Kind.CAR, Kind.TRUCK, Kind.BUS, Kind.TRAILER, Kind.CONSTRUCTION,
                         Kind.MOTORCYCLE, Kind.BICYCLE, Kind.PEDESTRIAN, Kind.TRAFFIC_CONE,
                         Kind.BARRIER})
