"""SemanticKITTI reader and KITTI calibration files.

docs/method.md "SemanticKITTI dictionary", "Voxelisation" and "One-percent splits".

Layout: ``root/sequences/<seq>/{velodyne/<frame>.bin (float32 x4), labels/<frame>.label (uint32,
low 16 bits = semantic class), calib.txt (P0..P3, Tr as 3x4), image_2/<frame>.png}``.

Camera ``image_2``: ``Tr`` maps velodyne into the rectified cam0 frame; ``P2 = K [I | t]`` adds the
image_2 baseline, so ``K = P2[:, :3]`` and ``lidar_to_cam = [I | K^-1 P2[:, 3]] @ Tr`` (4x4).
"""

from __future__ import annotations

import os

import numpy as np

from afov_ray.datasets.labels import kitti_raw_to_eval, kitti_semantic
from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError

KITTI_CAMERAS = ("image_2",)


def _parse_calib(path: str) -> dict[str, np.ndarray]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DataError(path, f"cannot read calibration: {exc}") from None
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


def load_kitti_bin(path: str, item: str | None = None) -> np.ndarray:
    """(N, 4) float32 velodyne scan; DataError naming the file if missing / size not a multiple of 16 B."""
    item = item or path
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DataError(item, f"cannot read point file: {exc}") from None
    if size % 16 != 0:
        raise DataError(item, f"size {size} B is not a multiple of 16 B (float32 x 4)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


class SemanticKITTIReader:
    """Reader (afov_ray.datasets.reader.Reader) for a SemanticKITTI root.

    ``sequences``: ids to expose (default: every folder under ``root/sequences``, sorted).
    ``cameras``: ("image_2",) by default; pass () for LiDAR-only use (then calib.txt and images are
    not needed). Keyframe ids are ``"<seq>/<frame>"``, e.g. ``"08/000123"``. Labels are optional
    (test sequences have none): raw_labels/labels are None when the ``.label`` file is absent.
    """

    dataset = "semantickitti"

    def __init__(
        self,
        root: str | os.PathLike,
        sequences: list[str] | tuple[str, ...] | None = None,
        cameras: tuple[str, ...] = KITTI_CAMERAS,
    ) -> None:
        self.dataroot = str(root)
        for cam in cameras:
            if cam not in KITTI_CAMERAS:
                raise ValueError(f"unsupported KITTI camera {cam!r}; supported: {KITTI_CAMERAS}")
        self.cameras = tuple(cameras)
        self._sequences = list(sequences) if sequences is not None else None
        self._calib: dict[str, dict[str, np.ndarray]] = {}

    def _seq_dir(self, seq: str) -> str:
        return os.path.join(self.dataroot, "sequences", seq)

    def scenes(self) -> list[str]:
        if self._sequences is not None:
            return list(self._sequences)
        base = os.path.join(self.dataroot, "sequences")
        if not os.path.isdir(base):
            raise DataError(self.dataroot, "no 'sequences' folder")
        return sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))

    def keyframe_ids(self, scene: str) -> list[str]:
        vdir = os.path.join(self._seq_dir(scene), "velodyne")
        if not os.path.isdir(vdir):
            raise DataError(f"sequence {scene}", f"no velodyne folder {vdir}")
        return [f"{scene}/{f[:-4]}" for f in sorted(os.listdir(vdir)) if f.endswith(".bin")]

    def calib(self, seq: str) -> dict[str, np.ndarray]:
        """Parsed ``calib.txt`` of a sequence (cached)."""
        if seq not in self._calib:
            self._calib[seq] = read_semantickitti_calib(os.path.join(self._seq_dir(seq), "calib.txt"))
        return self._calib[seq]

    def read(self, keyframe_id: str) -> Keyframe:
        parts = keyframe_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise DataError(keyframe_id, "KITTI keyframe id must be '<seq>/<frame>'")
        seq, frame = parts
        rel_bin = os.path.join("sequences", seq, "velodyne", f"{frame}.bin")
        points = load_kitti_bin(os.path.join(self.dataroot, rel_bin), rel_bin)
        if not np.all(np.isfinite(points)):
            raise DataError(keyframe_id, f"NaN/inf values in {rel_bin}")

        raw_labels = labels = None
        rel_label = os.path.join("sequences", seq, "labels", f"{frame}.label")
        label_path = os.path.join(self.dataroot, rel_label)
        if os.path.exists(label_path):
            size = os.path.getsize(label_path)
            if size % 4 != 0:
                raise DataError(rel_label, f"size {size} B is not a multiple of 4 B (uint32)")
            lab = np.fromfile(label_path, dtype=np.uint32)
            if lab.shape[0] != points.shape[0]:
                raise DataError(rel_label, f"{lab.shape[0]} labels for {points.shape[0]} points")
            raw_labels = kitti_semantic(lab)
            labels = kitti_raw_to_eval(lab)

        cameras = [self._camera(seq, frame, ch) for ch in self.cameras]
        return Keyframe(
            dataset=self.dataset,
            sample_token=keyframe_id,
            lidar_token=keyframe_id,
            scene=seq,
            timestamp=int(frame) if frame.isdigit() else 0,
            points=points,
            raw_labels=raw_labels,
            labels=labels,
            cameras=cameras,
            lidar_path=rel_bin,
            ring=None,
        )

    def _camera(self, seq: str, frame: str, channel: str) -> CameraFrame:
        from PIL import Image  # lazy

        item = f"{seq}/{frame} {channel}"
        rel_img = os.path.join("sequences", seq, channel, f"{frame}.png")
        path = os.path.join(self.dataroot, rel_img)
        if not os.path.isfile(path):
            raise DataError(item, f"image file missing: {rel_img}")
        try:
            with Image.open(path) as im:  # header only, no decode
                width, height = im.size
        except OSError as exc:
            raise DataError(item, f"cannot read image header of {rel_img}: {exc}") from None
        calib = self.calib(seq)
        K, T = camera_from_projection(calib["P" + channel[-1]], calib["Tr"])
        return CameraFrame(
            channel=channel,
            token=f"{seq}/{frame}/{channel}",
            image_path=rel_img,
            width=int(width),
            height=int(height),
            K=K,
            lidar_to_cam=T,
            timestamp=int(frame) if frame.isdigit() else 0,
        )
