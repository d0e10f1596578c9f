"""nuScenes reader: the tables are read once, on the driver; keyframes are read anywhere from descriptors.

One keyframe = the keyframe ``LIDAR_TOP`` sweep of a sample (x, y, z, intensity; the ring column kept
separately), its lidarseg labels when the ``lidarseg`` table and its label files exist, and the 6 cameras
of the sample, each with its intrinsics K and the whole lidar -> camera chain as one 4x4 matrix
(docs/method.md#projection).

- :class:`NuScenesTables` reads the JSON tables of ``<dataroot>/<version>/`` through the storage layer (local
  or ``s3://``) and keeps the keyframe part only: scene, sample, the keyframe ``sample_data`` records, their
  ``ego_pose`` / ``calibrated_sensor`` / ``sensor`` records and the ``lidarseg`` records. These are the six
  (seven with labels) tables the readers use; the devkit's other tables (log, map, attribute, visibility,
  instance, sample_annotation) are not needed and not read. A missing needed table is ONE error listing every
  missing table; a lidarseg table without label files (or label files without the table) is a warning.
- :class:`NuScenesReader` plans on the driver (``describe``: a JSON-able descriptor per sample,
  ``afov_ray.datasets.descriptors``) and reads a descriptor anywhere (``load``: file I/O only). It pickles
  without its tables, so a copy shipped to a Ray worker is a few hundred bytes and never loads them.

Bad input raises :class:`afov_ray.errors.DataError` naming the table, file, sample/camera or record.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from afov_ray.datasets.descriptors import camera_descriptor, load_keyframe
from afov_ray.datasets.splits import nuscenes_split_scenes
from afov_ray.datasets.types import NUSCENES_CAMERAS, Keyframe
from afov_ray.errors import DataError
from afov_ray.geometry.projection import devkit_chain_points, lidar_to_cam_matrix
from afov_ray.log import get_logger
from afov_ray.storage import uri as U

log = get_logger(__name__)

LIDAR_CHANNEL = "LIDAR_TOP"
POINT_DIM = 5  # x, y, z, intensity, ring (float32 each) in a .pcd.bin
NEEDED_TABLES = ("scene", "sample", "sample_data", "sensor", "calibrated_sensor", "ego_pose")
DEVKIT_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
                 "log", "scene", "sample", "sample_data", "sample_annotation", "map")


def _intrinsic(cs: dict[str, Any]) -> np.ndarray:
    item = f"calibrated_sensor {cs.get('token', '?')}"
    try:
        K = np.asarray(cs.get("camera_intrinsic"), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(item, f"field 'camera_intrinsic' is not numeric: {exc}") from None
    if K.shape != (3, 3):
        raise DataError(item, f"field 'camera_intrinsic' must have shape (3, 3), got {K.shape}")
    if not np.all(np.isfinite(K)) or K[2, 2] == 0:
        raise DataError(item, f"field 'camera_intrinsic' is invalid: {K.tolist()}")
    return K


class NuScenesTables:
    """The keyframe part of a nuScenes table set (see the module docstring), read once.

    ``get(table, token)`` returns a record (DataError naming the table and token if absent); ``scene`` and
    ``sample`` are the table lists; ``sample["data"]`` maps channel -> keyframe sample_data token, as the
    devkit's reverse index does; ``lidarseg_file(lidar_sd_token)`` is the label file of a LIDAR_TOP
    keyframe (None when the dataset has no usable lidarseg). ``warnings`` lists what a user should know.
    """

    def __init__(self, dataroot: str, version: str):
        self.dataroot, self.version = str(dataroot), version
        self.table_root = U.join(self.dataroot, version)
        self.warnings: list[str] = []
        present = {n[:-5] for n in U.listdir(self.table_root, kind="file") if n.endswith(".json")}
        if not present:
            found = [d for d in U.listdir(self.dataroot, kind="dir") if d.startswith("v1.0")]
            raise DataError(self.dataroot, f"no table folder {version!r} with nuScenes tables (*.json) in the dataroot"
                                           + (f"; found {found} (set prepare.version)" if found else ""))
        missing = [t for t in NEEDED_TABLES if t not in present]
        if missing:
            raise DataError(self.table_root, f"incomplete nuScenes table set: missing {', '.join(t + '.json' for t in missing)}"
                                             f" (needed: {', '.join(NEEDED_TABLES)})")
        unused = [t for t in DEVKIT_TABLES if t not in present and t not in NEEDED_TABLES]
        if unused:
            log.info("%s: tables %s are absent; afov_ray does not need them", self.table_root, ", ".join(unused))
        self.scene = self._read("scene")
        self.sample = self._read("sample")
        sensor = {r["token"]: r for r in self._read("sensor")}
        cal = {r["token"]: r for r in self._read("calibrated_sensor")}
        sample_data = [r for r in self._read("sample_data") if r.get("is_key_frame")]
        poses = {r["ego_pose_token"] for r in sample_data}
        ego = {r["token"]: r for r in self._read("ego_pose") if r["token"] in poses}
        self._by = {"scene": {r["token"]: r for r in self.scene}, "sample": {r["token"]: r for r in self.sample},
                    "sample_data": {r["token"]: r for r in sample_data}, "sensor": sensor,
                    "calibrated_sensor": cal, "ego_pose": ego}
        for s in self.sample:
            s["data"] = {}
        for sd in sample_data:
            cs = cal.get(sd["calibrated_sensor_token"])
            channel = sensor.get(cs["sensor_token"], {}).get("channel") if cs else None
            sd["channel"] = channel
            smp = self._by["sample"].get(sd["sample_token"])
            if channel and smp is not None:
                smp["data"][channel] = sd["token"]
        self._lidarseg = self._lidarseg_files("lidarseg" in present, sample_data)

    def _read(self, table: str) -> list[dict]:
        uri = U.join(self.table_root, f"{table}.json")
        try:
            rows = json.loads(U.read_bytes(uri))
        except (OSError, ValueError) as exc:
            raise DataError(uri, f"cannot read table: {exc}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "token" in r for r in rows):
            raise DataError(uri, "a nuScenes table must be a JSON list of records with a 'token'")
        return rows

    def _lidarseg_files(self, has_table: bool, sample_data: list[dict]) -> dict[str, str] | None:
        label_dir = f"lidarseg/{self.version}"
        files = [n for n in U.listdir(U.join(self.dataroot, label_dir), kind="file") if n.endswith(".bin")]
        if not has_table:
            if files:
                self.warnings.append(f"{label_dir}/ holds {len(files)} lidarseg label files but {self.version}/"
                                     f"lidarseg.json is missing: keyframes are prepared WITHOUT labels (copy the "
                                     f"lidarseg table into {self.version}/)")
            return None
        records = self._read("lidarseg")
        if not files:
            self.warnings.append(f"{self.version}/lidarseg.json lists {len(records)} label files but {label_dir}/ "
                                 f"has none: keyframes are prepared WITHOUT labels (extract the lidarseg label files)")
            return None
        if len(files) != len(records):
            self.warnings.append(f"{self.version}/lidarseg.json has {len(records)} records and {label_dir}/ "
                                 f"{len(files)} label files: keyframes whose label file is missing are skipped")
        lidar = {sd["token"] for sd in sample_data if sd.get("channel") == LIDAR_CHANNEL}
        return {r.get("sample_data_token", r["token"]): r["filename"] for r in records
                if r.get("sample_data_token", r["token"]) in lidar}

    def get(self, table: str, token: str) -> dict[str, Any]:
        try:
            return self._by[table][token]
        except KeyError:
            raise DataError(f"{table} {token}", f"no {table} record with token {token!r}") from None

    @property
    def has_lidarseg(self) -> bool:
        return self._lidarseg is not None

    def lidarseg_file(self, lidar_sd_token: str) -> str | None:
        if self._lidarseg is None:
            return None
        if lidar_sd_token not in self._lidarseg:
            raise DataError(f"sample_data {lidar_sd_token}", "no lidarseg record for this LIDAR_TOP keyframe")
        return self._lidarseg[lidar_sd_token]


class NuScenesReader:
    """Reader (``afov_ray.datasets.reader.Reader``) for a nuScenes dataroot, local or ``s3://``.

    ``split``: None = every scene of the table; otherwise a name of ``nuscenes.utils.splits.create_splits_scenes()``
    ("train", "val", "mini_train", ...). For a ``*-mini`` version "train"/"val" mean "mini_train"/"mini_val"
    (see :func:`splits.resolve_nuscenes_split`). The tables (:class:`NuScenesTables`) are read on first use and
    cached; they are not pickled.
    """

    dataset = "nuscenes"

    def __init__(self, dataroot: str, version: str = "v1.0-trainval", split: str | None = None,
                 cameras: tuple[str, ...] | list[str] = NUSCENES_CAMERAS) -> None:
        self.dataroot = str(dataroot)
        self.version = version
        self.split = split
        self.cameras = tuple(cameras)
        self._tables: NuScenesTables | None = None
        self._scene_samples: dict[str, list[str]] | None = None

    # -- pickling: never ship the tables ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = None
        state["_scene_samples"] = None
        return state

    @property
    def tables(self) -> NuScenesTables:
        """The tables, read on first use (on the driver)."""
        if self._tables is None:
            self._tables = NuScenesTables(self.dataroot, self.version)
        return self._tables

    def warnings(self) -> list[str]:
        return list(self.tables.warnings)

    # -- enumeration ----------------------------------------------------------------------------
    def _index(self) -> dict[str, list[str]]:
        if self._scene_samples is None:
            t = self.tables
            by_scene: dict[str, list[tuple[int, str]]] = {}
            for s in t.sample:
                by_scene.setdefault(s["scene_token"], []).append((int(s["timestamp"]), s["token"]))
            self._scene_samples = {sc["name"]: [tok for _, tok in sorted(by_scene.get(sc["token"], []))]
                                   for sc in t.scene}
        return self._scene_samples

    def table_scenes(self) -> list[str]:
        """Every scene name in table order (the order the 1 % rule counts in)."""
        return [sc["name"] for sc in self.tables.scene]

    def scenes(self) -> list[str]:
        """Scene names in table order, restricted to ``split`` when given."""
        names = self.table_scenes()
        if self.split is None:
            return names
        wanted = set(nuscenes_split_scenes(self.split, self.version))
        return [n for n in names if n in wanted]

    def keyframe_ids(self, scene: str) -> list[str]:
        """Sample tokens of one scene, sorted by timestamp (the samples present in the table)."""
        index = self._index()
        if scene not in index:
            raise DataError(scene, f"unknown scene in {self.version}")
        return list(index[scene])

    # -- plan (driver) and read (anywhere) --------------------------------------------------------
    def describe(self, keyframe_id: str) -> dict[str, Any]:
        """The descriptor of one sample (``afov_ray.datasets.descriptors``); DataError naming the bad record."""
        t = self.tables
        item = f"sample {keyframe_id}"
        try:
            sample = t.get("sample", keyframe_id)
            scene = t.get("scene", sample["scene_token"])["name"]
            if LIDAR_CHANNEL not in sample["data"]:
                raise DataError(item, f"no {LIDAR_CHANNEL} sample_data")
            lidar_sd = t.get("sample_data", sample["data"][LIDAR_CHANNEL])
            lidar_cs = t.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
            lidar_pose = t.get("ego_pose", lidar_sd["ego_pose_token"])
            labels = t.lidarseg_file(lidar_sd["token"])
        except DataError as e:
            raise DataError(e.item if e.item.startswith("sample ") else f"{item} ({e.item})", e.message) from None
        cameras = [self._camera(sample, ch, lidar_cs, lidar_pose) for ch in self.cameras]
        return {"dataset": self.dataset, "id": sample["token"], "item": item, "scene": scene,
                "timestamp": int(sample["timestamp"]), "lidar_token": lidar_sd["token"],
                "points": lidar_sd["filename"], "point_columns": POINT_DIM, "labels": labels,
                "labels_format": "lidarseg", "labels_optional": False, "cameras": cameras}

    def _camera(self, sample: dict[str, Any], channel: str, lidar_cs: dict, lidar_pose: dict) -> dict:
        t = self.tables
        item = f"sample {sample['token']} {channel}"
        if channel not in sample["data"]:
            raise DataError(item, "camera missing from the sample")
        try:
            sd = t.get("sample_data", sample["data"][channel])
            cs = t.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = t.get("ego_pose", sd["ego_pose_token"])
        except DataError as e:
            raise DataError(f"{item} ({e.item})", e.message) from None
        K = _intrinsic(cs)
        T = lidar_to_cam_matrix(lidar_cs, lidar_pose, pose, cs)
        return camera_descriptor(channel, sd["token"], sd["filename"], K, T, width=int(sd.get("width") or 0),
                                 height=int(sd.get("height") or 0), timestamp=int(sd["timestamp"]))

    def load(self, descriptor: dict) -> Keyframe:
        """Read a described keyframe (file I/O only, local or s3://)."""
        return load_keyframe(descriptor, self.dataroot)

    def read(self, keyframe_id: str) -> Keyframe:
        """Plan and read one sample (by sample token). Raises DataError naming the bad item."""
        return self.load(self.describe(keyframe_id))

    def devkit_camera_points(self, keyframe: Keyframe, channel: str) -> np.ndarray:
        """(N, 3) float32 camera-frame points of ``keyframe`` for camera ``channel``, computed with the
        devkit's float32 step-by-step chain (:func:`afov_ray.geometry.devkit_chain_points`); pass to
        ``project_camera_points`` to reproduce official/devkit pixels exactly."""
        t = self.tables
        cam = next((c for c in keyframe.cameras if c.channel == channel), None)
        if cam is None:
            raise DataError(f"sample {keyframe.sample_token} {channel}", "camera not in this keyframe")
        lidar = t.get("sample_data", keyframe.lidar_token)
        sd = t.get("sample_data", cam.token)
        return devkit_chain_points(keyframe.points, t.get("calibrated_sensor", lidar["calibrated_sensor_token"]),
                                   t.get("ego_pose", lidar["ego_pose_token"]), t.get("ego_pose", sd["ego_pose_token"]),
                                   t.get("calibrated_sensor", sd["calibrated_sensor_token"]))
