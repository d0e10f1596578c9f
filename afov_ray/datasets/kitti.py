"""SemanticKITTI reader and KITTI calibration files.

docs/method.md "SemanticKITTI dictionary", "Voxelisation" and "One-percent splits".

Layout: ``root/sequences/<seq>/{velodyne/<frame>.bin (float32 x4), labels/<frame>.label (uint32,
low 16 bits = semantic class), calib.txt (P0..P3, Tr as 3x4), image_2/<frame>.png}``; ``root`` is a local
folder or ``s3://`` (every listing and read goes through ``afov_ray.storage.uri``).

Camera ``image_2``: ``Tr`` maps velodyne into the rectified cam0 frame; ``P2 = K [I | t]`` adds the
image_2 baseline, so ``K = P2[:, :3]`` and ``lidar_to_cam = [I | K^-1 P2[:, 3]] @ Tr`` (4x4).

The reader plans on the driver (``describe``: listings and ``calib.txt`` read once per sequence) and reads a
descriptor anywhere (``load``: file I/O only, ``afov_ray.datasets.descriptors``). With ``cameras=()`` it is
LiDAR-only: neither ``image_2`` nor ``calib.txt`` is needed.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from afov_ray.datasets.descriptors import camera_descriptor, load_keyframe
from afov_ray.datasets.splits import KITTI_TRAIN_SEQUENCES, KITTI_VAL_SEQUENCES
from afov_ray.datasets.types import Keyframe
from afov_ray.errors import DataError
from afov_ray.storage import uri as U

KITTI_CAMERAS = ("image_2",)


def _parse_calib(path: str) -> dict[str, np.ndarray]:
    try:
        lines = U.read_bytes(str(path)).decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise DataError(str(path), "calibration file missing") from None
    except OSError as exc:
        raise DataError(str(path), f"cannot read calibration: {exc}") from None
    out: dict[str, np.ndarray] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DataError(path, f"line {n}: expected 'KEY: numbers'")
        key, values = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(x) for x in values.split()], dtype=np.float64)
        except ValueError:
            raise DataError(path, f"line {n} ({key.strip()}): non-numeric value") from None
    return out


def _matrix(calib: dict[str, np.ndarray], key: str, shape: tuple[int, int], path: str) -> np.ndarray:
    if key not in calib:
        raise DataError(path, f"missing {key!r}")
    v = calib[key]
    if v.size != shape[0] * shape[1]:
        raise DataError(path, f"{key!r} needs {shape[0] * shape[1]} numbers, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise DataError(path, f"{key!r} has non-finite values")
    return v.reshape(shape)


def _to4x4(M: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[: M.shape[0], : M.shape[1]] = M
    return T


def camera_from_projection(P: np.ndarray, velo_to_rect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, lidar_to_cam) for a rectified camera with projection ``P`` (3x4) and velodyne -> rectified
    cam0 transform ``velo_to_rect`` (4x4): ``K = P[:, :3]``, ``lidar_to_cam = [I | K^-1 P[:, 3]] @ velo_to_rect``."""
    K = P[:, :3].copy()
    baseline = np.eye(4)
    baseline[:3, 3] = np.linalg.solve(K, P[:, 3])
    return K, baseline @ velo_to_rect


def read_semantickitti_calib(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Odometry ``calib.txt``: P0..P3 (3x4) and Tr (4x4, velodyne -> rectified cam0)."""
    path = str(path)
    calib = _parse_calib(path)
    out = {f"P{i}": _matrix(calib, f"P{i}", (3, 4), path) for i in range(4) if f"P{i}" in calib}
    if "P2" not in out:
        raise DataError(path, "missing 'P2'")
    out["Tr"] = _to4x4(_matrix(calib, "Tr", (3, 4), path))
    return out


def read_kitti_object_calib(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """KITTI object-format calibration: P2 (3x4), R0_rect (3x3), Tr_velo_to_cam (3x4); also returns
    ``K`` and ``lidar_to_cam`` (4x4) for image_2 = ``[I | K^-1 P2[:,3]] @ R0_rect @ Tr_velo_to_cam``."""
    path = str(path)
    calib = _parse_calib(path)
    P2 = _matrix(calib, "P2", (3, 4), path)
    R0 = _matrix(calib, "R0_rect", (3, 3), path)
    Tr = _matrix(calib, "Tr_velo_to_cam", (3, 4), path)
    K, T = camera_from_projection(P2, _to4x4(R0) @ _to4x4(Tr))
    return {"P2": P2, "R0_rect": R0, "Tr_velo_to_cam": Tr, "K": K, "lidar_to_cam": T}


class SemanticKITTIReader:
    """Reader (``afov_ray.datasets.reader.Reader``) for a SemanticKITTI root, local or ``s3://``.

    ``sequences``: ids to expose (default: every folder under ``root/sequences``, sorted).
    ``cameras``: ("image_2",) by default; () for LiDAR-only use (then calib.txt and images are not needed).
    ``frames``: keep only these keyframe ids (e.g. the frame-level 1 % split); None: every scan.
    Keyframe ids are ``"<seq>/<frame>"``, e.g. ``"08/000123"``. Labels are optional (test sequences have
    none): raw_labels/labels are None when the ``.label`` file is absent.
    """

    dataset = "semantickitti"

    def __init__(self, root: str | os.PathLike, sequences: list[str] | tuple[str, ...] | None = None,
                 cameras: tuple[str, ...] = KITTI_CAMERAS, frames: Iterable[str] | None = None) -> None:
        self.dataroot = str(root)
        for cam in cameras:
            if cam not in KITTI_CAMERAS:
                raise ValueError(f"unsupported KITTI camera {cam!r}; supported: {KITTI_CAMERAS}")
        self.cameras = tuple(cameras)
        self._sequences = list(sequences) if sequences is not None else None
        self._frames = None if frames is None else frozenset(frames)
        self._calib: dict[str, dict[str, np.ndarray] | DataError] = {}
        self._listing: dict[str, list[str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_calib"], state["_listing"] = {}, {}
        return state

    def _seq(self, seq: str, *parts: str) -> str:
        return U.join(self.dataroot, "sequences", U.check_component(seq, "sequence"), *parts)

    def all_sequences(self) -> list[str]:
        """Every sequence folder under ``root/sequences`` (sorted), whatever ``sequences`` selects."""
        base = U.join(self.dataroot, "sequences")
        names = U.listdir(base, kind="dir")
        if not names:
            raise DataError(self.dataroot, "no 'sequences' folder (or it is empty): expected "
                                           "sequences/<seq>/velodyne/<frame>.bin")
        return names

    def scenes(self) -> list[str]:
        return list(self._sequences) if self._sequences is not None else self.all_sequences()

    def frames(self, seq: str) -> list[str]:
        """Every scan (frame name) of a sequence, sorted (cached; the listing is read once)."""
        if seq not in self._listing:
            vdir = self._seq(seq, "velodyne")
            names = U.listdir(vdir, kind="file")
            if not names and not U.exists(vdir):
                raise DataError(f"sequence {seq}", f"no velodyne folder {vdir}")
            self._listing[seq] = sorted(n[:-4] for n in names if n.endswith(".bin"))
        return self._listing[seq]

    def keyframe_ids(self, scene: str) -> list[str]:
        ids = [f"{scene}/{f}" for f in self.frames(scene)]
        return ids if self._frames is None else [k for k in ids if k in self._frames]

    def warnings(self) -> list[str]:
        """Labelled sequences (train / val: 00-10) whose scans will have no ground truth (no labels/ folder)."""
        labelled = set(KITTI_TRAIN_SEQUENCES) | set(KITTI_VAL_SEQUENCES)
        return [f"sequence {s}: no labels/ folder, its scans are prepared without ground truth"
                for s in self.scenes() if s in labelled and not U.exists(self._seq(s, "labels"))]

    def calib(self, seq: str) -> dict[str, np.ndarray]:
        """Parsed ``calib.txt`` of a sequence (read once; a bad file is remembered and re-raised)."""
        if seq not in self._calib:
            try:
                self._calib[seq] = read_semantickitti_calib(self._seq(seq, "calib.txt"))
            except DataError as e:
                self._calib[seq] = e
        c = self._calib[seq]
        if isinstance(c, DataError):
            raise DataError(c.item, c.message + " (needed for the camera; LiDAR-only data: set prepare.cameras=false)")
        return c

    def describe(self, keyframe_id: str) -> dict[str, Any]:
        """The descriptor of one scan (``afov_ray.datasets.descriptors``)."""
        parts = keyframe_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise DataError(keyframe_id, "KITTI keyframe id must be '<seq>/<frame>'")
        seq, frame = parts
        U.check_component(frame, "frame")
        cameras = []
        for ch in self.cameras:
            calib = self.calib(seq)
            K, T = camera_from_projection(calib["P" + ch[-1]], calib["Tr"])
            cameras.append(camera_descriptor(ch, f"{seq}/{frame}/{ch}", f"sequences/{seq}/{ch}/{frame}.png", K, T,
                                             timestamp=int(frame) if frame.isdigit() else 0))
        return {"dataset": self.dataset, "id": keyframe_id, "item": keyframe_id, "scene": seq,
                "timestamp": int(frame) if frame.isdigit() else 0, "lidar_token": keyframe_id,
                "points": f"sequences/{seq}/velodyne/{frame}.bin", "point_columns": 4,
                "labels": f"sequences/{seq}/labels/{frame}.label", "labels_format": "semantickitti",
                "labels_optional": True, "cameras": cameras}

    def load(self, descriptor: dict) -> Keyframe:
        """Read a described scan (file I/O only, local or s3://)."""
        return load_keyframe(descriptor, self.dataroot)

    def read(self, keyframe_id: str) -> Keyframe:
        return self.load(self.describe(keyframe_id))
