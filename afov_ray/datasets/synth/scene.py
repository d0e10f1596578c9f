"""Procedural driving scene: primitives in a scene-local frame, per-object linear motion, ego trajectory.

Local frame: x along the road, y to the left, z up, ground plane z = 0. ``Scene.origin`` = (gx, gy,
gyaw) places the local frame in the global (map) frame, so global poses are far from 0 and rotated
like real nuScenes ego poses. Road layout across y (metres): road |y| < 7 with four 3.5 m lanes
(y = -5.25, -1.75 drive +x; y = +1.75 drives -x; y = +5.25 is a parking / work lane), sidewalks
7 < |y| < 10, a terrain strip 10 < |y| < 13 with trees and bushes, then buildings, fences and
other-flat lots. Primitives: yawed boxes, vertical capped cylinders (poles, trunks, pedestrians,
cones), axis-aligned ellipsoids (tree crowns, bushes). Each primitive has a kind (classes.Kind),
an instance id (0 for stuff) and a constant planar velocity; its position at time t (seconds from
the scene start) is p0 + v * t.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afov_ray.datasets.synth.classes import Kind
from afov_ray.datasets.synth.rig import EGO_BODY_BOXES, make_transform, yaw_to_quat
from afov_ray.errors import DataError

ROAD_HALF = 7.0
SIDEWALK_OUT = 10.0
TERRAIN_OUT = 13.0
LANES = (-5.25, -1.75, 1.75, 5.25)


@dataclass
class Snapshot:
    """All primitives at one time, in the local frame, as arrays ready for ray casting."""

    boxes: np.ndarray          # (B, 7) cx, cy, cz, hx, hy, hz, yaw
    box_kind: np.ndarray       # (B,) int
    box_inst: np.ndarray       # (B,) int32
    cyls: np.ndarray           # (C, 5) cx, cy, z0, z1, r
    cyl_kind: np.ndarray
    cyl_inst: np.ndarray
    ells: np.ndarray           # (E, 6) cx, cy, cz, rx, ry, rz
    ell_kind: np.ndarray
    ell_inst: np.ndarray
    ground_rects: np.ndarray   # (G, 4) x0, x1, y0, y1 (later rects win)
    ground_kind: np.ndarray    # (G,)
    ground_default: int


@dataclass
class Scene:
    """A scene description; JSON-serialisable with ``to_dict`` / ``from_dict``."""

    name: str
    seed: int
    duration_s: float
    origin: tuple[float, float, float]               # local -> global: (gx, gy, gyaw)
    ego: dict                                        # x0, lane_y, speed, sway_amp, sway_period, sway_phase
    start_us: int = 0                                # timestamp (us) of t = 0
    ground_default: int = int(Kind.TERRAIN)
    ground_rects: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    ground_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))      # cx,cy,cz,hx,hy,hz,yaw,vx,vy
    box_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_inst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    cyls: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))       # cx,cy,z0,z1,r,vx,vy
    cyl_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cyl_inst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    ells: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))       # cx,cy,cz,rx,ry,rz,vx,vy
    ell_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ell_inst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    # ---- frames -------------------------------------------------------------------------------
    def time_s(self, timestamp_us: int) -> float:
        """Scene time (seconds) of an absolute timestamp in microseconds."""
        return (int(timestamp_us) - int(self.start_us)) / 1e6

    def local_to_global(self) -> np.ndarray:
        gx, gy, gyaw = self.origin
        return make_transform(yaw_to_quat(gyaw), [gx, gy, 0.0])

    def global_to_local(self) -> np.ndarray:
        return np.linalg.inv(self.local_to_global())

    def ego_pose_local(self, t: float) -> tuple[float, float, float]:
        """Ego (x, y, yaw) in the local frame at time t: constant speed along x, sinusoidal sway."""
        e = self.ego
        w = 2 * np.pi / e["sway_period"]
        x = e["x0"] + e["speed"] * t
        y = e["lane_y"] + e["sway_amp"] * np.sin(w * t + e["sway_phase"])
        dy = e["sway_amp"] * w * np.cos(w * t + e["sway_phase"])
        return float(x), float(y), float(np.arctan2(dy, e["speed"]))

    def ego_pose(self, t: float) -> np.ndarray:
        """4x4 ego -> global at time t."""
        x, y, yaw = self.ego_pose_local(t)
        return self.local_to_global() @ make_transform(yaw_to_quat(yaw), [x, y, 0.0])

    # ---- state ----------------------------------------------------------------------------------
    def state(self, t: float, ego_body: bool = True) -> Snapshot:
        """Primitives at time t (local frame); with ``ego_body`` the ego's boxes (kind EGO) are added."""
        b = self.boxes.copy()
        b[:, 0:2] += b[:, 7:9] * t
        boxes, bk, bi = b[:, :7], self.box_kind, self.box_inst
        if ego_body:
            x, y, yaw = self.ego_pose_local(t)
            c, s = np.cos(yaw), np.sin(yaw)
            eb = []
            for x0, x1, y0, y1, z0, z1 in EGO_BODY_BOXES:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                eb.append([x + c * cx - s * cy, y + s * cx + c * cy, (z0 + z1) / 2,
                           (x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2, yaw])
            boxes = np.concatenate([boxes, np.array(eb)])
            bk = np.concatenate([bk, np.full(len(eb), int(Kind.EGO))])
            bi = np.concatenate([bi, np.zeros(len(eb), np.int32)])
        cy_ = self.cyls.copy()
        cy_[:, 0:2] += cy_[:, 5:7] * t
        el = self.ells.copy()
        el[:, 0:2] += el[:, 6:8] * t
        return Snapshot(boxes, np.asarray(bk), np.asarray(bi, np.int32), cy_[:, :5], self.cyl_kind,
                        self.cyl_inst, el[:, :6], self.ell_kind, self.ell_inst, self.ground_rects,
                        self.ground_kind, self.ground_default)

    # ---- (de)serialisation ------------------------------------------------------------------
    _ARRAYS = ("ground_rects", "ground_kind", "boxes", "box_kind", "box_inst", "cyls", "cyl_kind",
               "cyl_inst", "ells", "ell_kind", "ell_inst")

    def to_dict(self) -> dict:
        d = {"name": self.name, "seed": self.seed, "duration_s": self.duration_s,
             "origin": list(self.origin), "ego": dict(self.ego), "ground_default": self.ground_default,
             "start_us": int(self.start_us)}
        for k in self._ARRAYS:
            d[k] = np.asarray(getattr(self, k)).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        widths = {"ground_rects": 4, "boxes": 9, "cyls": 7, "ells": 8}
        kw = {}
        for k in cls._ARRAYS:
            if k in widths:
                kw[k] = np.asarray(d[k], dtype=np.float64).reshape(-1, widths[k])
            else:
                kw[k] = np.asarray(d[k], dtype=np.int32 if k.endswith("inst") else np.int64)
        return cls(name=d["name"], seed=int(d["seed"]), duration_s=float(d["duration_s"]),
                   origin=tuple(d["origin"]), ego=dict(d["ego"]), ground_default=int(d["ground_default"]),
                   start_us=int(d.get("start_us", 0)), **kw)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Scene":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(str(path), f"cannot load synthetic scene description: {e}") from e


def _aabb_xy(prim: list, kind: str) -> tuple[float, float, float, float]:
    """Planar axis-aligned footprint (x0, x1, y0, y1) at t = 0 of a builder primitive row."""
    if kind == "box":
        cx, cy, _, hx, hy, _, yaw = prim[:7]
        c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
        ex, ey = hx * c + hy * s, hx * s + hy * c
    elif kind == "cyl":
        cx, cy, r = prim[0], prim[1], prim[4]
        ex = ey = r
    else:
        cx, cy, ex, ey = prim[0], prim[1], prim[3], prim[4]
    return cx - ex, cx + ex, cy - ey, cy + ey


class _Builder:
    """Accumulates primitives while laying out a scene."""

    def __init__(self):
        self.rects, self.rect_kind = [], []
        self.boxes, self.box_kind, self.box_inst = [], [], []
        self.cyls, self.cyl_kind, self.cyl_inst = [], [], []
        self.ells, self.ell_kind, self.ell_inst = [], [], []
        self.next_inst = 1

    def inst(self) -> int:
        self.next_inst += 1
        return self.next_inst - 1

    def rect(self, x0, x1, y0, y1, kind):
        self.rects.append([x0, x1, min(y0, y1), max(y0, y1)])
        self.rect_kind.append(int(kind))

    def box(self, cx, cy, z0, z1, length, width, yaw, kind, inst=0, v=(0.0, 0.0)):
        self.boxes.append([cx, cy, (z0 + z1) / 2, length / 2, width / 2, (z1 - z0) / 2, yaw, v[0], v[1]])
        self.box_kind.append(int(kind))
        self.box_inst.append(inst)

    def cyl(self, cx, cy, z0, z1, r, kind, inst=0, v=(0.0, 0.0)):
        self.cyls.append([cx, cy, z0, z1, r, v[0], v[1]])
        self.cyl_kind.append(int(kind))
        self.cyl_inst.append(inst)

    def ell(self, cx, cy, cz, rx, ry, rz, kind, inst=0, v=(0.0, 0.0)):
        self.ells.append([cx, cy, cz, rx, ry, rz, v[0], v[1]])
        self.ell_kind.append(int(kind))
        self.ell_inst.append(inst)

    def clear(self, x0: float, x1: float, y0: float, y1: float, centre_only: bool = False) -> None:
        """Removes every primitive whose footprint at t = 0 overlaps the rectangle (with ``centre_only``:
        whose centre lies in it), and the other parts of any object instance that loses a part (a
        vehicle goes whole or not at all)."""
        groups = (("box", self.boxes, self.box_kind, self.box_inst), ("cyl", self.cyls, self.cyl_kind, self.cyl_inst),
                  ("ell", self.ells, self.ell_kind, self.ell_inst))
        hit_inst = set()
        drop = {}
        for kind, prims, _, insts in groups:
            d = set()
            for i, p in enumerate(prims):
                a0, a1, b0, b1 = _aabb_xy(p, kind)
                if centre_only:
                    a0 = a1 = (a0 + a1) / 2
                    b0 = b1 = (b0 + b1) / 2
                if a1 >= x0 and a0 <= x1 and b1 >= min(y0, y1) and b0 <= max(y0, y1):
                    d.add(i)
                    if insts[i] > 0:
                        hit_inst.add(insts[i])
            drop[kind] = d
        for kind, prims, kinds, insts in groups:
            keep = [i for i in range(len(prims)) if i not in drop[kind] and insts[i] not in hit_inst]
            prims[:] = [prims[i] for i in keep]
            kinds[:] = [kinds[i] for i in keep]
            insts[:] = [insts[i] for i in keep]

    # ---- composite objects (position = centre on the ground, heading yaw, velocity v) --------
    def vehicle(self, kind: Kind, x, y, yaw, v, rng) -> float:
        """Adds a vehicle centred at (x, y); returns its length along the heading."""
        c, s = np.cos(yaw), np.sin(yaw)

        def part(dx, z0, z1, length, width, k, inst):
            self.box(x + c * dx, y + s * dx, z0, z1, length, width, yaw, k, inst, v)

        if kind == Kind.CAR:
            L, W = rng.uniform(3.9, 4.9), rng.uniform(1.7, 1.95)
            i = self.inst()
            part(0.0, 0.3, rng.uniform(0.9, 1.05), L, W, kind, i)
            part(-0.15 * L, 0.9, rng.uniform(1.4, 1.6), 0.5 * L, W - 0.15, kind, i)
            return L
        if kind == Kind.TRUCK:
            i = self.inst()
            L = rng.uniform(6.5, 8.5)
            part(L / 2 - 1.1, 0.4, 3.0, 2.2, 2.4, kind, i)
            part(-1.1, 0.9, rng.uniform(3.2, 3.8), L - 2.2, 2.5, kind, i)
            return L
        if kind == Kind.TRAILER:      # tractor (truck) + trailer, two instances
            part(5.5, 0.4, 3.1, 2.6, 2.5, Kind.TRUCK, self.inst())
            part(-1.3, 1.0, 3.9, 10.0, 2.55, Kind.TRAILER, self.inst())
            return 14.0
        if kind == Kind.BUS:
            L = rng.uniform(10.5, 12.5)
            part(0.0, 0.3, 3.2, L, 2.6, kind, self.inst())
            return L
        if kind == Kind.CONSTRUCTION:
            i = self.inst()
            part(0.0, 0.5, 3.0, 5.5, 2.7, kind, i)
            part(3.6, 2.2, 2.9, 4.0, 0.5, kind, i)
            return 7.5
        if kind == Kind.MOTORCYCLE:
            part(0.0, 0.25, 1.55, 2.1, 0.8, kind, self.inst())
            return 2.1
        if kind == Kind.BICYCLE:
            part(0.0, 0.0, 1.7, 1.8, 0.6, kind, self.inst())
            return 1.8
        raise ValueError(f"not a vehicle kind: {kind}")

    def tree(self, x, y, rng):
        h = rng.uniform(1.8, 3.2)
        r = rng.uniform(0.15, 0.3)
        self.cyl(x, y, 0.0, h + 0.5, r, Kind.TRUNK)
        cr = rng.uniform(1.6, 3.0)
        self.ell(x, y, h + cr * 0.7, cr, cr, cr * rng.uniform(0.8, 1.2), Kind.VEGETATION)


def _showcase(b: _Builder, rng: np.random.Generator, T: float, ego_speed: float, lane_speed: float,
              oncoming_speed: float) -> None:
    """Close-range instances of the classes a short random layout may miss, cleared into place.

    - lane y = -5.25 (same direction as the ego, moving at that lane's speed, so they never catch up
      with the traffic around them): a bicycle and a motorcycle, placed to stay within about 25 m of the
      ego for the whole scene;
    - lane y = +1.75 (oncoming, at that lane's speed): a bus that passes the ego at mid-scene;
    - the parking / work lane: a parked truck just behind the ego's mid-scene position, and ahead of it a
      work zone (cones, barriers, a construction vehicle) on road surface;
    - both sides beyond the terrain strip, around the ego's mid-scene position: an other-flat lot with a fence.
    """
    mid = ego_speed * T / 2
    for kind, rel, L in ((Kind.BICYCLE, rng.uniform(4.0, 12.0), 1.8), (Kind.MOTORCYCLE, -rng.uniform(6.0, 14.0), 2.1)):
        x0 = mid + rel - lane_speed * T / 2    # at ego + rel at mid-scene (ego at mid then)
        b.clear(x0 - L / 2 - 4.0, x0 + L / 2 + 4.0, -7.0, -3.5)
        b.vehicle(kind, x0, -5.25 + rng.uniform(-0.2, 0.2), 0.0, (lane_speed, 0.0), rng)
    # a bus in the oncoming lane, passing the ego at mid-scene: the teacher confuses buses with trucks
    # (bus -> truck), and a few random buses per scene, mostly far away, leave too few clean examples in a
    # small training set (measured at stop 11: ~4 buses in 6 train scenes, a third of their points
    # pseudo-labelled truck; the network then called the one val bus a truck)
    L = 12.5                                   # the longest bus; cleared for before its length is drawn
    x0 = mid + rng.uniform(-3.0, 3.0) + oncoming_speed * T / 2
    b.clear(x0 - L / 2 - 4.0, x0 + L / 2 + 4.0, 0.0, 3.5)
    b.vehicle(Kind.BUS, x0, 1.75 + rng.uniform(-0.2, 0.2), np.pi, (-oncoming_speed, 0.0), rng)
    # and a truck parked just behind the ego's mid-scene position (the work zone below clears most of the
    # parked trucks near the ego otherwise)
    L = 8.5                                    # the longest truck
    x0 = mid - rng.uniform(6.0, 10.0)
    b.clear(x0 - L / 2 - 1.0, x0 + L / 2 + 1.0, 3.5, ROAD_HALF)
    b.vehicle(Kind.TRUCK, x0, 5.3 + rng.uniform(-0.2, 0.2), np.pi * rng.integers(0, 2) + rng.uniform(-0.05, 0.05),
              (0.0, 0.0), rng)
    w0 = mid + rng.uniform(6.0, 12.0)
    seg = 20.0
    b.clear(w0, w0 + seg, 3.5, ROAD_HALF)
    b.rect(w0, w0 + seg, 3.5, ROAD_HALF, Kind.ROAD)
    for cx in np.arange(w0 + 1, w0 + seg - 1, 3.0):
        b.cyl(cx, 3.75, 0.0, 0.7, 0.16, Kind.TRAFFIC_CONE, b.inst())
    for bx in np.arange(w0 + 1.5, w0 + 7.0, 2.2):
        b.box(bx, 6.6, 0.0, 1.0, 2.0, 0.5, 0.0, Kind.BARRIER, b.inst())
    b.vehicle(Kind.CONSTRUCTION, w0 + 13.0, 5.3, rng.uniform(-0.1, 0.1), (0.0, 0.0), rng)
    for s in (-1, 1):
        l0 = mid + rng.uniform(-20.0, 0.0)
        ln = rng.uniform(20.0, 30.0)
        b.clear(l0, l0 + ln, s * TERRAIN_OUT, s * (TERRAIN_OUT + 40), centre_only=True)   # keeps the strip's trees
        b.rect(l0, l0 + ln, s * TERRAIN_OUT, s * (TERRAIN_OUT + 25), Kind.OTHER_FLAT)
        b.box(l0 + ln / 2, s * (TERRAIN_OUT + 0.2), 0.0, rng.uniform(1.0, 1.4), ln, 0.08, 0.0, Kind.FENCE)


def build_scene(rng: np.random.Generator, name: str = "synth", duration_s: float = 2.0,
                ego_speed: float = 8.0, seed: int = 0, start_us: int = 0, cover_all_classes: bool = False) -> Scene:
    """Lays out a random street scene long enough for the ego to drive for ``duration_s`` seconds.

    Everything is drawn from ``rng`` in a fixed order, so the same generator state gives the same scene.
    With ``cover_all_classes`` a close-range showcase is added after the random layout (see ``_showcase``):
    every scene then holds the rare classes near the ego, so a few generated scenes do not split them
    unevenly between train and val. Without it the scene is exactly the one drawn before this option existed.
    """
    b = _Builder()
    T = float(duration_s)
    x_lo, x_hi = -100.0, ego_speed * T + 100.0        # region seen from the ego path (LiDAR ~70 m)
    big = 1000.0
    # ---- ground ------------------------------------------------------------------------------
    b.rect(x_lo - big, x_hi + big, -ROAD_HALF, ROAD_HALF, Kind.ROAD)
    for s in (-1, 1):
        b.rect(x_lo - big, x_hi + big, s * ROAD_HALF, s * SIDEWALK_OUT, Kind.SIDEWALK)
    # ---- parking / work lane (y in [3.5, 7]) --------------------------------------------------
    x = x_lo
    while x < x_hi:
        seg = rng.uniform(15, 40)
        what = rng.choice(["parking", "work", "empty"], p=[0.5, 0.3, 0.2])
        if what == "parking":
            b.rect(x, x + seg, 3.5, ROAD_HALF, Kind.PARKING)
            px = x + rng.uniform(0.5, 3)
            while px < x + seg - 5:
                k = Kind(rng.choice([Kind.CAR, Kind.CAR, Kind.CAR, Kind.TRUCK]))
                L = b.vehicle(k, px + 2.5, 5.3 + rng.uniform(-0.2, 0.2), np.pi * rng.integers(0, 2)
                              + rng.uniform(-0.05, 0.05), (0.0, 0.0), rng)
                px += L + rng.uniform(1.0, 4.0)
        elif what == "work":
            for cx in np.arange(x + 1, x + seg - 1, 3.0):
                b.cyl(cx, 3.75, 0.0, 0.7, 0.16, Kind.TRAFFIC_CONE, b.inst())
            for bx in np.arange(x + 3, x + seg - 3, 2.2):
                b.box(bx, 6.6, 0.0, 1.0, 2.0, 0.5, 0.0, Kind.BARRIER, b.inst())
            kind = Kind(rng.choice([Kind.CONSTRUCTION, Kind.TRAILER]))
            if seg > 17:
                b.vehicle(kind, x + seg / 2, 5.3, rng.uniform(-0.1, 0.1), (0.0, 0.0), rng)
        x += seg
    # ---- moving traffic -----------------------------------------------------------------------------
    lanes = [(-5.25, rng.uniform(4.0, 11.0), 0.0), (-1.75, ego_speed, 0.0), (1.75, rng.uniform(5.0, 12.0), np.pi)]
    for y_lane, speed, yaw in lanes:
        direction = np.cos(yaw)
        vx = direction * speed
        # cover [x_lo, x_hi] at every t in [0, T]: start where objects will be swept in from
        start, stop = (x_lo - speed * T, x_hi) if direction > 0 else (x_lo, x_hi + speed * T)
        x = start + rng.uniform(0, 10)
        while x < stop:
            if y_lane == -5.25:
                k = rng.choice([Kind.CAR, Kind.TRUCK, Kind.BUS, Kind.MOTORCYCLE, Kind.BICYCLE, Kind.TRAILER],
                               p=[0.55, 0.1, 0.08, 0.1, 0.12, 0.05])
            else:
                k = rng.choice([Kind.CAR, Kind.TRUCK, Kind.BUS, Kind.MOTORCYCLE], p=[0.7, 0.12, 0.08, 0.1])
            k = Kind(k)
            # ego lane: keep [ego - 12 m, ego + 12 m] free (same speed, so it stays free)
            if y_lane == -1.75 and -18.0 < x < 18.0:
                x = 18.0
            L = b.vehicle(k, x, y_lane + rng.uniform(-0.25, 0.25), yaw, (vx, 0.0), rng)
            x += L + rng.uniform(6.0, 30.0)
    # ---- sidewalk furniture and pedestrians ----------------------------------------------------
    for s in (-1, 1):
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            b.cyl(x, s * 7.4, 0.0, rng.uniform(6.0, 8.0), 0.11, Kind.POLE)
            if rng.random() < 0.45:
                b.box(x, s * 7.4 - s * 0.4, 2.2, 2.9, 0.06, 0.7, 0.0, Kind.SIGN)
            else:
                b.box(x, s * 7.4 - s * 0.9, 6.0, 6.2, 0.2, 1.8, 0.0, Kind.POLE)   # street-lamp arm
            x += rng.uniform(15.0, 30.0)
        x = x_lo - 1.6 * T
        while x < x_hi + 1.6 * T:
            speed = rng.choice([0.0, 1.0, 1.3, 1.5]) * rng.choice([-1, 1])
            b.cyl(x, s * rng.uniform(7.9, 9.6), 0.0, rng.uniform(1.55, 1.9), rng.uniform(0.22, 0.3),
                  Kind.PEDESTRIAN, b.inst(), (float(speed), 0.0))
            x += rng.uniform(3.0, 14.0)
        # terrain strip: trees and bushes
        x = x_lo + rng.uniform(0, 6)
        while x < x_hi:
            if rng.random() < 0.7:
                b.tree(x, s * rng.uniform(11.0, 12.0), rng)
            else:
                r = rng.uniform(0.6, 1.4)
                b.ell(x, s * rng.uniform(10.8, 12.2), r * 0.3, r * rng.uniform(1.0, 1.8), r, r * 0.9, Kind.VEGETATION)
            x += rng.uniform(5.0, 12.0)
        # building line
        x = x_lo - 30
        while x < x_hi + 30:
            seg = rng.uniform(10, 30)
            what = rng.choice(["building", "lot", "park"], p=[0.65, 0.2, 0.15])
            if what == "building":
                depth = rng.uniform(8, 20)
                y0 = s * (TERRAIN_OUT + rng.uniform(0.3, 2.0))
                b.box(x + seg / 2, y0 + s * depth / 2, 0.0, rng.uniform(6, 25), seg, depth, 0.0, Kind.BUILDING)
            elif what == "lot":
                b.rect(x, x + seg, s * TERRAIN_OUT, s * (TERRAIN_OUT + 25), Kind.OTHER_FLAT)
                b.box(x + seg / 2, s * (TERRAIN_OUT + 0.2), 0.0, rng.uniform(1.2, 2.0), seg, 0.08, 0.0, Kind.FENCE)
            else:
                for _ in range(int(rng.integers(1, 4))):
                    b.tree(x + rng.uniform(0, seg), s * (TERRAIN_OUT + rng.uniform(2, 12)), rng)
            x += seg + rng.uniform(2.0, 8.0)

    ego = {"x0": 0.0, "lane_y": -1.75, "speed": float(ego_speed), "sway_amp": float(rng.uniform(0.2, 0.45)),
           "sway_period": float(rng.uniform(5.0, 9.0)), "sway_phase": float(rng.uniform(0, 2 * np.pi))}
    origin = (float(rng.uniform(300, 2000)), float(rng.uniform(300, 2000)), float(rng.uniform(-np.pi, np.pi)))
    if cover_all_classes:      # drawn last: everything above is the same with or without it
        _showcase(b, rng, T, ego_speed, lane_speed=lanes[0][1], oncoming_speed=lanes[2][1])

    def arr(x, w):
        return np.asarray(x, dtype=np.float64).reshape(-1, w)

    return Scene(name=name, seed=seed, duration_s=T, origin=origin, ego=ego, start_us=int(start_us),
                 ground_default=int(Kind.TERRAIN),
                 ground_rects=arr(b.rects, 4), ground_kind=np.asarray(b.rect_kind, np.int64),
                 boxes=arr(b.boxes, 9), box_kind=np.asarray(b.box_kind, np.int64),
                 box_inst=np.asarray(b.box_inst, np.int32), cyls=arr(b.cyls, 7),
                 cyl_kind=np.asarray(b.cyl_kind, np.int64), cyl_inst=np.asarray(b.cyl_inst, np.int32),
                 ells=arr(b.ells, 8), ell_kind=np.asarray(b.ell_kind, np.int64),
                 ell_inst=np.asarray(b.ell_inst, np.int32))
