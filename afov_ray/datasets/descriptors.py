"""Keyframe descriptors: the driver plans, a worker reads.

Readers split their work in two (``afov_ray.datasets.reader``):

- **plan** (on the driver, where the dataset's tables / listings / calibration files are read once):
  ``reader.describe(keyframe_id)`` returns a *descriptor*, a small JSON-able dict that says everything
  needed to load one keyframe: file paths relative to the dataroot and the calibration of every camera;
- **read** (in any worker, no tables): :func:`load_keyframe` turns a descriptor into a ``Keyframe`` with file
  I/O only, through the storage layer (``afov_ray.storage.uri``), so a dataroot may be local or ``s3://``.

Descriptor fields::

    dataset          "nuscenes" | "semantickitti"
    id               keyframe id (nuScenes sample token, KITTI "<seq>/<frame>")
    item             how errors name the keyframe ("sample <token>", "<seq>/<frame>")
    scene, timestamp, lidar_token
    points           point file, relative to the dataroot
    point_columns    float32 values per point on disk (nuScenes 5: x y z intensity ring; KITTI 4)
    labels           label file relative to the dataroot, or None
    labels_format    "lidarseg" (uint8 raw lidarseg ids) | "semantickitti" (uint32, low 16 bits = raw class)
    labels_optional  True: a missing label file means "no labels" (KITTI test sequences); False: an error
    cameras          [{channel, token, image_path, width, height (0 = read the image header), K (9 floats,
                      row-major), lidar_to_cam (16 floats, row-major), timestamp}]
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from afov_ray.datasets.labels import kitti_raw_to_eval, kitti_semantic, nuscenes_raw_to_eval
from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError
from afov_ray.storage import uri as U

LABEL_FORMATS = ("lidarseg", "semantickitti")
HEADER_BYTES = 1 << 16   # an image header (PNG IHDR, JPEG SOF) lies in the first 64 KiB


def camera_descriptor(channel: str, token: str, image_path: str, K: np.ndarray, lidar_to_cam: np.ndarray,
                      width: int = 0, height: int = 0, timestamp: int = 0) -> dict[str, Any]:
    """One camera entry of a descriptor (``width`` / ``height`` 0: read from the image header)."""
    return {"channel": channel, "token": token, "image_path": image_path, "width": int(width),
            "height": int(height), "K": np.asarray(K, np.float64).reshape(9).tolist(),
            "lidar_to_cam": np.asarray(lidar_to_cam, np.float64).reshape(16).tolist(), "timestamp": int(timestamp)}


def read_points(dataroot: str, rel: str, columns: int) -> np.ndarray:
    """(N, columns) float32 from a raw point file; DataError naming the file if missing or its size is not
    a multiple of ``4 * columns`` bytes."""
    try:
        data = U.read_bytes(U.join(dataroot, rel))
    except OSError as exc:
        raise DataError(rel, f"cannot read point file: {exc}") from None
    if len(data) % (4 * columns):
        raise DataError(rel, f"size {len(data)} B is not a multiple of {4 * columns} B (float32 x {columns})")
    return np.frombuffer(data, dtype=np.float32).reshape(-1, columns)


def _header_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:   # parses the header only
        return int(im.size[0]), int(im.size[1])


def image_size(dataroot: str, rel: str, item: str) -> tuple[int, int]:
    """(width, height) of an image from its header: one ranged read, the whole file only if the header
    lies further in."""
    from PIL import UnidentifiedImageError

    uri = U.join(dataroot, rel)
    try:
        head = U.read_head(uri, HEADER_BYTES)
    except OSError:
        raise DataError(item, f"image file missing: {rel}") from None
    bad = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
    try:
        return _header_size(head)
    except bad as exc:
        if len(head) < HEADER_BYTES:
            raise DataError(item, f"cannot read image header of {rel}: {exc}") from None
    try:
        return _header_size(U.read_bytes(uri))
    except bad as exc:
        raise DataError(item, f"cannot read image header of {rel}: {exc}") from None


def _labels(desc: dict, dataroot: str, num_points: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    rel = desc.get("labels")
    if not rel:
        return None, None
    fmt = desc.get("labels_format")
    if fmt not in LABEL_FORMATS:
        raise DataError(desc["item"], f"unknown labels_format {fmt!r} (expected one of {LABEL_FORMATS})")
    try:
        data = U.read_bytes(U.join(dataroot, rel))
    except OSError as exc:
        if desc.get("labels_optional"):
            return None, None
        raise DataError(rel, f"cannot read label file: {exc}") from None
    if fmt == "lidarseg":
        raw = np.frombuffer(data, dtype=np.uint8)
        labels = nuscenes_raw_to_eval(raw)
    else:
        if len(data) % 4:
            raise DataError(rel, f"size {len(data)} B is not a multiple of 4 B (uint32)")
        lab = np.frombuffer(data, dtype=np.uint32)
        raw, labels = kitti_semantic(lab), kitti_raw_to_eval(lab)
    if raw.shape[0] != num_points:
        raise DataError(rel, f"{raw.shape[0]} labels for {num_points} points ({desc['item']})")
    return raw, labels


def _camera(dataroot: str, cam: dict, item: str) -> CameraFrame:
    where = f"{item} {cam['channel']}"
    width, height = int(cam.get("width") or 0), int(cam.get("height") or 0)
    if width > 0 and height > 0:
        if not U.is_file(U.join(dataroot, cam["image_path"])):
            raise DataError(where, f"image file missing: {cam['image_path']}")
    else:
        width, height = image_size(dataroot, cam["image_path"], where)
    return CameraFrame(channel=cam["channel"], token=cam["token"], image_path=cam["image_path"], width=width,
                       height=height, K=np.asarray(cam["K"], np.float64).reshape(3, 3),
                       lidar_to_cam=np.asarray(cam["lidar_to_cam"], np.float64).reshape(4, 4),
                       timestamp=int(cam.get("timestamp", 0)))


def load_keyframe(desc: dict, dataroot: str) -> Keyframe:
    """Read the keyframe a descriptor names (points, labels, camera files checked) from ``dataroot`` (local
    or s3://). File I/O only: no tables. Raises DataError naming the file or the keyframe."""
    item = desc["item"]
    raw = read_points(dataroot, desc["points"], int(desc["point_columns"]))
    bad = ~np.isfinite(raw[:, :4]).all(axis=1)
    if bad.any():
        raise DataError(item, f"{int(bad.sum())} points with NaN/inf coordinates or intensity in {desc['points']}")
    points = np.ascontiguousarray(raw[:, :4])
    ring = raw[:, 4].astype(np.uint8) if raw.shape[1] > 4 else None
    raw_labels, labels = _labels(desc, dataroot, points.shape[0])
    cameras = [_camera(dataroot, c, item) for c in desc.get("cameras", [])]
    return Keyframe(dataset=desc["dataset"], sample_token=desc["id"], lidar_token=desc["lidar_token"],
                    scene=desc["scene"], timestamp=int(desc["timestamp"]), points=points, raw_labels=raw_labels,
                    labels=labels, cameras=cameras, lidar_path=desc["points"], ring=ring)
