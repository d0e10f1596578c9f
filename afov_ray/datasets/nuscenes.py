"""nuScenes reader on top of the real nuscenes-devkit (docs/method.md "Projection", "Voxelisation").

One keyframe = the keyframe ``LIDAR_TOP`` sweep of a sample (x, y, z, intensity; the ring column
kept separately), its lidarseg labels when the ``lidarseg`` table exists, and the 6 cameras of the
sample, each with its intrinsics K and the whole lidar -> camera chain as one 4x4 matrix.
Bad input raises :class:`afov_ray.errors.DataError` naming the file, sample/camera or record.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from afov_ray.datasets.labels import nuscenes_raw_to_eval
from afov_ray.datasets.splits import nuscenes_split_scenes
from afov_ray.datasets.types import NUSCENES_CAMERAS, CameraFrame, Keyframe
from afov_ray.errors import DataError
from afov_ray.geometry.projection import devkit_chain_points, lidar_to_cam_matrix

LIDAR_CHANNEL = "LIDAR_TOP"
POINT_DIM = 5  # x, y, z, intensity, ring (float32 each) in a .pcd.bin


def load_pcd_bin(path: str, item: str | None = None) -> np.ndarray:
    """(N, 5) float32 from a nuScenes ``.pcd.bin``. DataError naming the file if missing or its
    size is not a multiple of 20 bytes."""
    item = item or path
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DataError(item, f"cannot read point file: {exc}") from None
    if size % (4 * POINT_DIM) != 0:
        raise DataError(item, f"size {size} B is not a multiple of {4 * POINT_DIM} B (float32 x {POINT_DIM})")
    return np.fromfile(path, dtype=np.float32).reshape(-1, POINT_DIM)


def _image_size(path: str, item: str) -> tuple[int, int]:
    from PIL import Image  # lazy: only when the table has no size

    try:
        with Image.open(path) as im:  # reads the header only
            return int(im.size[0]), int(im.size[1])
    except OSError as exc:
        raise DataError(item, f"cannot read image header of {path}: {exc}") from None


def _bad_table(folder: str) -> str | None:
    """The first ``*.json`` table of ``folder`` that is not valid JSON, if any (to name it in an error)."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    json.load(f)
            except (OSError, ValueError):
                return os.path.join(folder, name)
    return None


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


class NuScenesReader:
    """Reader (afov_ray.datasets.reader.Reader) for a nuScenes dataroot.

    ``split``: None = every scene of the table; otherwise a name of
    ``nuscenes.utils.splits.create_splits_scenes()`` ("train", "val", "mini_train", ...). For a
    ``*-mini`` version "train"/"val" mean "mini_train"/"mini_val" (see :func:`splits.resolve_nuscenes_split`).
    The devkit instance is created on first use and cached (not pickled: a copy sent to another
    process reloads the tables there).
    """

    dataset = "nuscenes"

    def __init__(
        self,
        dataroot: str | os.PathLike,
        version: str = "v1.0-trainval",
        split: str | None = None,
        cameras: tuple[str, ...] | list[str] = NUSCENES_CAMERAS,
    ) -> None:
        self.dataroot = str(dataroot)
        self.version = version
        self.split = split
        self.cameras = tuple(cameras)
        self._nusc = None
        self._scene_samples: dict[str, list[str]] | None = None

    # -- pickling: never ship the devkit tables -------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_nusc"] = None
        state["_scene_samples"] = None
        return state

    @property
    def nusc(self):
        """The cached ``nuscenes.nuscenes.NuScenes`` instance."""
        if self._nusc is None:
            from nuscenes.nuscenes import NuScenes

            tables = os.path.join(self.dataroot, self.version)
            if not os.path.isdir(tables):
                raise DataError(self.dataroot, f"no table folder {self.version!r} in the dataroot")
            try:
                self._nusc = NuScenes(version=self.version, dataroot=self.dataroot, verbose=False)
            except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:   # the devkit's own errors
                raise DataError(_bad_table(tables) or tables,
                                f"cannot load the nuScenes tables ({type(exc).__name__}: {exc})") from None
        return self._nusc

    # -- enumeration ----------------------------------------------------------------------------
    def _index(self) -> dict[str, list[str]]:
        if self._scene_samples is None:
            nusc = self.nusc
            by_scene_token: dict[str, list[tuple[int, str]]] = {}
            for s in nusc.sample:
                by_scene_token.setdefault(s["scene_token"], []).append((int(s["timestamp"]), s["token"]))
            self._scene_samples = {
                sc["name"]: [tok for _, tok in sorted(by_scene_token.get(sc["token"], []))] for sc in nusc.scene
            }
        return self._scene_samples

    def scenes(self) -> list[str]:
        """Scene names in table order, restricted to ``split`` when given."""
        names = [sc["name"] for sc in self.nusc.scene]
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

    # -- loading --------------------------------------------------------------------------------
    def _get(self, table: str, token: str, item: str) -> dict[str, Any]:
        try:
            return self.nusc.get(table, token)
        except KeyError:
            raise DataError(item, f"no {table} record with token {token!r}") from None

    def read(self, keyframe_id: str) -> Keyframe:
        """Load one sample (by sample token). Raises DataError naming the bad item."""
        nusc = self.nusc
        sample = self._get("sample", keyframe_id, f"sample {keyframe_id}")
        item = f"sample {keyframe_id}"
        scene = self._get("scene", sample["scene_token"], item)["name"]
        if LIDAR_CHANNEL not in sample["data"]:
            raise DataError(item, f"no {LIDAR_CHANNEL} sample_data")
        lidar_sd = self._get("sample_data", sample["data"][LIDAR_CHANNEL], item)
        lidar_path = os.path.join(self.dataroot, lidar_sd["filename"])
        raw = load_pcd_bin(lidar_path)
        if not np.all(np.isfinite(raw[:, :4])):
            bad = int(np.count_nonzero(~np.isfinite(raw[:, :4]).all(axis=1)))
            raise DataError(item, f"{bad} points with NaN/inf coordinates or intensity in {lidar_sd['filename']}")
        points = np.ascontiguousarray(raw[:, :4])
        ring = raw[:, 4].astype(np.uint8)

        raw_labels = labels = None
        if getattr(nusc, "lidarseg", None):
            raw_labels = self._lidarseg(lidar_sd["token"], points.shape[0], item)
            labels = nuscenes_raw_to_eval(raw_labels)

        lidar_cs = self._get("calibrated_sensor", lidar_sd["calibrated_sensor_token"], item)
        lidar_pose = self._get("ego_pose", lidar_sd["ego_pose_token"], item)
        cameras = [self._camera(sample, ch, lidar_cs, lidar_pose) for ch in self.cameras]
        return Keyframe(
            dataset=self.dataset,
            sample_token=sample["token"],
            lidar_token=lidar_sd["token"],
            scene=scene,
            timestamp=int(sample["timestamp"]),
            points=points,
            raw_labels=raw_labels,
            labels=labels,
            cameras=cameras,
            lidar_path=lidar_sd["filename"],
            ring=ring,
        )

    def _lidarseg(self, lidar_sd_token: str, num_points: int, item: str) -> np.ndarray:
        rec = self._get("lidarseg", lidar_sd_token, item)
        path = os.path.join(self.dataroot, rec["filename"])
        try:
            lab = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise DataError(rec["filename"], f"cannot read lidarseg labels: {exc}") from None
        if lab.shape[0] != num_points:
            raise DataError(rec["filename"], f"{lab.shape[0]} labels for {num_points} points ({item})")
        return lab

    def _camera(self, sample: dict[str, Any], channel: str, lidar_cs: dict, lidar_pose: dict) -> CameraFrame:
        item = f"sample {sample['token']} {channel}"
        if channel not in sample["data"]:
            raise DataError(item, "camera missing from the sample")
        sd = self._get("sample_data", sample["data"][channel], item)
        path = os.path.join(self.dataroot, sd["filename"])
        if not os.path.isfile(path):
            raise DataError(item, f"image file missing: {sd['filename']}")
        cs = self._get("calibrated_sensor", sd["calibrated_sensor_token"], item)
        pose = self._get("ego_pose", sd["ego_pose_token"], item)
        K = _intrinsic(cs)
        T = lidar_to_cam_matrix(lidar_cs, lidar_pose, pose, cs)
        width, height = int(sd.get("width") or 0), int(sd.get("height") or 0)
        if width <= 0 or height <= 0:
            width, height = _image_size(path, item)
        return CameraFrame(
            channel=channel,
            token=sd["token"],
            image_path=sd["filename"],
            width=width,
            height=height,
            K=K,
            lidar_to_cam=T,
            timestamp=int(sd["timestamp"]),
        )

    def devkit_camera_points(self, keyframe: Keyframe, channel: str) -> np.ndarray:
        """(N, 3) float32 camera-frame points of ``keyframe`` for camera ``channel``, computed with the
        devkit's float32 step-by-step chain (:func:`afov_ray.geometry.devkit_chain_points`); pass to
        ``project_camera_points`` to reproduce official/devkit pixels exactly."""
        cam = next((c for c in keyframe.cameras if c.channel == channel), None)
        if cam is None:
            raise DataError(f"sample {keyframe.sample_token} {channel}", "camera not in this keyframe")
        lidar = self._get("sample_data", keyframe.lidar_token, keyframe.sample_token)
        sd = self._get("sample_data", cam.token, keyframe.sample_token)
        return devkit_chain_points(
            keyframe.points,
            self._get("calibrated_sensor", lidar["calibrated_sensor_token"], keyframe.sample_token),
            self._get("ego_pose", lidar["ego_pose_token"], keyframe.sample_token),
            self._get("ego_pose", sd["ego_pose_token"], keyframe.sample_token),
            self._get("calibrated_sensor", sd["calibrated_sensor_token"], keyframe.sample_token),
        )
