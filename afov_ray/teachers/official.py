"""Importers of the official AFOV teacher files (docs/method.md "Official teacher files").

Per camera image, named by the camera ``sample_data`` token ``<tok>`` in the teacher's ``sp_dir``
(official ``ov_segment/*/superpixel_generation.py``):

- ``<tok>.png``  uint8 mask ids, 1..n for the n masks, 0 = no mask (only FC-CLIP has 0s);
- ``<tok>.json`` n dicts in PNG-id order: SAN / CAT-Seg ``{"id", "category_id", "area"}``,
  FC-CLIP ``{"id", "isthing", "category_id"}`` (``category_id`` = text index);
- ``<tok>.pt``   SAN / CAT-Seg: float32 tensor [n+1, D] with a zero row 0; FC-CLIP: a list [f_in, f_out],
  each [n+1, D] with a zero row 0; TMP uses f_out (index 1), so that is what is imported;
- ``text_embedding.pt`` once per teacher: [175, D] (SAN, CAT-Seg) or [176, D] with a void last row (FC-CLIP).

Files are loaded with ``torch.load(weights_only=True)`` (no pickle code execution) from a local folder or
``s3://`` (through ``afov_ray.storage.uri``). Every problem is a DataError naming the token (or file).

``OfficialTeacherConfig`` is the ``teacher.official.*`` block of ``jobs/teacher.py``; the backend that labels
every camera image of a teacher pass from these files is ``afov_ray.teachers.backends.OfficialBackend``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from afov_ray.config import option
from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.teachers.schema import DEFAULT_FEATURE_DIM, TeacherImage, TextEmbeddingTable, decode_mask_map

Teacher = Literal["san", "cat-seg", "fc-clip"]
TEXT_EMBEDDING_FILE = "text_embedding.pt"


@dataclass
class OfficialTeacherConfig:
    dir: str = option("", "folder (local or s3://) of one official teacher's files: <stem>.png / <stem>.json / "
                          "<stem>.pt per camera image and text_embedding.pt once; <stem> is the camera token "
                          "(nuScenes: the camera sample_data token; SemanticKITTI: <seq>_<frame>_image_2)")
    kind: Literal["san", "catseg", "fcclip"] = option(
        "san", "which official teacher wrote the files: san | catseg (JSON {id, category_id, area}, .pt [n+1, D]) | "
               "fcclip (JSON {id, isthing, category_id}, .pt [f_in, f_out]: f_out is used; text table with a "
               "void last row)")
    name: str = option("", "teacher run name (the run id derives from it); empty: the kind")


def official_stem(camera_token: str) -> str:
    """The file stem of a camera image's official files: the camera token, '/' replaced by '_'
    (nuScenes tokens have none; SemanticKITTI's ``08/000123/image_2`` -> ``08_000123_image_2``)."""
    return U.check_component(camera_token.replace("/", "_"), "camera token")


_ALIASES = {"san": "san", "cat-seg": "cat-seg", "catseg": "cat-seg", "cat_seg": "cat-seg",
            "fc-clip": "fc-clip", "fcclip": "fc-clip", "fc_clip": "fc-clip"}
NUM_TEXTS = 175


def normalize_teacher(teacher: str) -> Teacher:
    """Canonical teacher name (``san``, ``cat-seg``, ``fc-clip``); accepts case and _/- variants."""
    key = teacher.lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown teacher {teacher!r}; expected one of san, cat-seg, fc-clip")
    return _ALIASES[key]  # type: ignore[return-value]


def _read(uri: str, item: str) -> bytes:
    try:
        return U.read_bytes(uri)
    except OSError:
        raise DataError(item, f"missing file {uri}") from None


def _torch_load(uri: str, item: str) -> Any:
    import torch

    data = _read(uri, item)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe files
        raise DataError(item, f"cannot load {U.basename(uri)} with weights_only=True: "
                              f"{str(exc).splitlines()[0][:300]}") from None


def _as_2d_float(obj: Any, item: str, what: str) -> np.ndarray:
    import torch

    if not isinstance(obj, torch.Tensor) or obj.dim() != 2 or not obj.is_floating_point():
        desc = f"{type(obj).__name__}{tuple(obj.shape) if isinstance(obj, torch.Tensor) else ''}"
        raise DataError(item, f"{what} must be a 2-D float tensor, got {desc}")
    return obj.detach().float().numpy()


def import_text_embedding(
    path: str | os.PathLike, teacher: str, num_texts: int = NUM_TEXTS
) -> tuple[np.ndarray, bool]:
    """Load ``text_embedding.pt``: returns (float32 array as stored, void_row).

    ``void_row`` is True only for FC-CLIP with num_texts + 1 rows (the last row is the void embedding);
    any other row count is an error, never silently trimmed.
    """
    teacher = normalize_teacher(teacher)
    path = str(path)
    emb = _as_2d_float(_torch_load(path, path), path, "text embedding")
    rows = emb.shape[0]
    if rows == num_texts:
        return emb, False
    if teacher == "fc-clip" and rows == num_texts + 1:
        return emb, True
    expect = f"{num_texts} or {num_texts + 1} (void row)" if teacher == "fc-clip" else str(num_texts)
    raise DataError(str(path), f"{teacher} text embedding has {rows} rows, expected {expect}")


def import_text_table(path: str | os.PathLike, teacher: str, num_texts: int = NUM_TEXTS) -> TextEmbeddingTable:
    """:func:`import_text_embedding` wrapped in a :class:`TextEmbeddingTable`."""
    emb, void = import_text_embedding(path, teacher, num_texts)
    return TextEmbeddingTable(emb, void, num_texts)


def import_official_image(
    directory: str | os.PathLike,
    token: str,
    teacher: str,
    *,
    sample_token: str | None = None,
    camera: str = "",
    scene_token: str = "",
    image_size: tuple[int, int] | None = None,
    num_texts: int = NUM_TEXTS,
    feature_dim: int | None = DEFAULT_FEATURE_DIM,
) -> TeacherImage:
    """Read ``<token>.png/.json/.pt`` from ``directory`` into a validated TeacherImage.

    Args:
        token: camera ``sample_data`` token (the file stem); stored as ``camera_token``.
        teacher: ``san``, ``cat-seg`` or ``fc-clip`` (decides the JSON keys and the .pt layout).
        sample_token, camera, scene_token: identity of the record (``sample_token`` defaults to ``token``).
        image_size: (H, W) of the camera image; the mask map must match it. None = take the PNG size.
        feature_dim: expected D (None = accept any).

    Features become float16 rows 1..n of the tensor (row 0, the zero placeholder, is dropped after
    checking it is zero); ``area`` comes from the JSON (SAN / CAT-Seg) or is counted in the PNG (FC-CLIP);
    ``is_thing`` is set for FC-CLIP only. Raises DataError(item=token) on any mismatch.
    """
    teacher = normalize_teacher(teacher)
    d = str(directory)
    item = token
    mask_map = decode_mask_map(_read(U.join(d, f"{token}.png"), item), item)
    if mask_map.dtype != np.uint8:
        raise DataError(item, f"official mask PNG must be 8-bit, got {mask_map.dtype}")

    json_name = f"{token}.json"
    try:
        entries = json.loads(_read(U.join(d, json_name), item).decode("utf-8"))
    except ValueError as exc:
        raise DataError(item, f"invalid JSON in {json_name}: {exc}") from None
    if not isinstance(entries, list):
        raise DataError(item, f"{json_name} must hold a list of masks")
    keys = ("id", "isthing", "category_id") if teacher == "fc-clip" else ("id", "category_id", "area")
    for j, e in enumerate(entries):
        if not isinstance(e, dict) or any(k not in e for k in keys):
            raise DataError(item, f"{json_name}[{j}] must have keys {keys}, got {e!r}")
    n = len(entries)
    ids = np.array([int(e["id"]) for e in entries], dtype=np.int64)
    if not np.array_equal(ids, np.arange(1, n + 1)):
        raise DataError(item, f"{json_name} ids must be 1..{n} in order, got {ids[:10].tolist()}")
    text_index = np.array([int(e["category_id"]) for e in entries], dtype=np.int32)

    obj = _torch_load(U.join(d, f"{token}.pt"), item)
    if teacher == "fc-clip":
        if not isinstance(obj, (list, tuple)) or len(obj) != 2:
            raise DataError(item, f"fc-clip {token}.pt must be a list [f_in, f_out], got {type(obj).__name__}")
        feats = _as_2d_float(obj[1], item, "f_out")
    else:
        feats = _as_2d_float(obj, item, "mask features")
    if feats.shape[0] != n + 1:
        raise DataError(item, f"{token}.pt has {feats.shape[0]} rows, expected n+1 = {n + 1} for {n} masks")
    if np.any(feats[0] != 0):
        raise DataError(item, f"{token}.pt row 0 must be the zero placeholder")

    if teacher == "fc-clip":
        area = np.bincount(mask_map.ravel(), minlength=n + 1)[1 : n + 1].astype(np.int64)
        is_thing = np.array([bool(e["isthing"]) for e in entries], dtype=bool)
    else:
        area = np.array([int(e["area"]) for e in entries], dtype=np.int64)
        is_thing = None

    feats16 = feats[1:].astype(np.float16)
    if not np.isfinite(feats16).all():
        raise DataError(item, f"{token}.pt features are not finite in float16 (|x| > 65504 or NaN)")

    image = TeacherImage(
        sample_token=sample_token if sample_token is not None else token,
        camera=camera,
        image_size=tuple(image_size) if image_size is not None else tuple(mask_map.shape),  # type: ignore[arg-type]
        mask_map=mask_map,
        mask_ids=np.arange(1, n + 1, dtype=np.uint16),
        text_index=text_index,
        area=area,
        features=feats16,
        is_thing=is_thing,
        camera_token=token,
        scene_token=scene_token,
    )
    try:
        image.validate(num_texts, feature_dim)
    except DataError as exc:  # re-name the item by token, keep the reason
        raise DataError(item, exc.message) from exc
    return image


def file_sha256(uri: str) -> str:
    """sha256 of a file (local or s3://), e.g. ``text_embedding.pt`` for the run record."""
    return hashlib.sha256(_read(str(uri), str(uri))).hexdigest()
