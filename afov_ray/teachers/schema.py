"""Teacher outputs: versioned runs, per-image records and their Parquet storage (docs/method.md "Teacher outputs").

A *teacher run* is one pass of one 2D open-vocabulary model over the camera images with one vocabulary.
It owns a text-embedding table and, per (sample, camera), a :class:`TeacherImage`:

- ``mask_map``  (H, W) uint8 (<= 255 masks) or uint16 mask ids, 0 = no mask;
- a mask table: ``mask_ids`` (n,) >= 1, ``text_index`` (n,) vocabulary index, ``area`` (n,) pixels,
  optional ``is_thing`` (n,) instance flag (FC-CLIP);
- ``features`` (n, D) float16 mask features, row j for ``mask_ids[j]`` (D = 768 by default).

Layout of a run on disk (a local folder; the storage layer routes the same layout to S3)::

    <root>/<run_id>/run.json                    TeacherRun fields, run_id, void_row, num_texts
    <root>/<run_id>/text_embedding.npy          float32 (num_texts + void_row, D)
    <root>/<run_id>/images/<scene_token>.parquet  one row per (sample, camera), schema IMAGE_SCHEMA

Storage choices: the mask map is stored as **lossless PNG bytes** (8-bit greyscale when every id fits
in uint8, else 16-bit greyscale), small and viewable with any image tool. Mask features are stored as
raw little-endian float16 bytes, row-major (n, D), with ``num_masks`` and ``feature_dim`` columns.
The text-embedding table states whether it carries a trailing void row (``void_row``): nothing is
ever dropped implicitly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np

from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json

DEFAULT_FEATURE_DIM = 768
SCHEMA_VERSION = "1"


# ---------------------------------------------------------------------- runs and text embeddings
@dataclass(frozen=True)
class TeacherRun:
    """Identity of one teacher pass. ``run_id`` is derived from all fields (stable, filesystem-safe)."""

    name: str
    vocabulary_hash: str
    model_id: str
    feature_dim: int = DEFAULT_FEATURE_DIM
    created: str = ""

    @classmethod
    def new(cls, name: str, vocabulary_hash: str, model_id: str, feature_dim: int = DEFAULT_FEATURE_DIM) -> "TeacherRun":
        """A run stamped with the current UTC time (ISO 8601, seconds)."""
        created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        return cls(name, vocabulary_hash, model_id, feature_dim, created)

    @property
    def run_id(self) -> str:
        """``<name slug>-<first 12 hex of sha256 over the fields>``."""
        payload = json.dumps(
            {"name": self.name, "vocabulary_hash": self.vocabulary_hash, "model_id": self.model_id,
             "feature_dim": int(self.feature_dim), "created": self.created},
            sort_keys=True,
        ).encode("utf-8")
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "teacher"
        return f"{slug}-{hashlib.sha256(payload).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vocabulary_hash": self.vocabulary_hash, "model_id": self.model_id,
                "feature_dim": int(self.feature_dim), "created": self.created, "run_id": self.run_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any], item: str = "run.json") -> "TeacherRun":
        try:
            run = cls(str(d["name"]), str(d["vocabulary_hash"]), str(d["model_id"]), int(d["feature_dim"]),
                      str(d.get("created", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(item, f"bad teacher run record: {exc!r}") from exc
        if "run_id" in d and d["run_id"] != run.run_id:
            raise DataError(item, f"run_id {d['run_id']!r} does not match its fields ({run.run_id!r})")
        return run


@dataclass(frozen=True)
class TextEmbeddingTable:
    """Text embeddings of one run: ``num_texts`` vocabulary rows, then one void row iff ``void_row``.

    FC-CLIP writes 176 rows (175 texts + a learned void embedding): ``void_row=True``. SAN and CAT-Seg
    write 175: ``void_row=False``. Losses take :attr:`vocabulary_rows`.
    """

    embeddings: np.ndarray
    void_row: bool
    num_texts: int

    def __post_init__(self) -> None:
        e = self.embeddings
        if e.ndim != 2 or e.shape[0] != self.num_texts + int(self.void_row):
            raise DataError(
                "text_embedding",
                f"expected ({self.num_texts + int(self.void_row)}, D) rows for num_texts={self.num_texts}, "
                f"void_row={self.void_row}; got {e.shape}",
            )

    @property
    def feature_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def vocabulary_rows(self) -> np.ndarray:
        """(num_texts, D): the rows of the vocabulary texts, in text-index order."""
        return self.embeddings[: self.num_texts]

    @property
    def void(self) -> np.ndarray | None:
        """(D,) void embedding, or None when the run has none."""
        return self.embeddings[self.num_texts] if self.void_row else None


RUN_RECORD = "run.json"
TEXT_EMBEDDING = "text_embedding.npy"
IMAGES_DIR = "images"


def run_uri(root: str | os.PathLike, run: TeacherRun) -> str:
    return U.join(str(root), run.run_id)


def write_run(root: str | os.PathLike, run: TeacherRun, text: TextEmbeddingTable, extra: dict | None = None) -> str:
    """Write ``run.json`` and ``text_embedding.npy`` under ``<root>/<run_id>/`` (local or s3://, atomic);
    returns that folder's URI. ``extra`` (the teacher's settings, weights checksum, ...) goes into run.json."""

    if text.feature_dim != run.feature_dim:
        raise DataError(run.run_id, f"text embeddings are {text.feature_dim}-d, run says {run.feature_dim}")
    d = run_uri(root, run)
    atomic_write_bytes(U.join(d, TEXT_EMBEDDING),
                       _npy_bytes(np.ascontiguousarray(text.embeddings, dtype=np.float32)))
    meta = run.to_dict() | {"void_row": bool(text.void_row), "num_texts": int(text.num_texts),
                            "schema_version": SCHEMA_VERSION} | (extra or {})
    atomic_write_json(U.join(d, RUN_RECORD), json.loads(json.dumps(meta, default=str)))
    return d


def read_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run folder (local or s3://) as a dict; DataError naming the file."""

    item = U.join(str(path), RUN_RECORD)
    try:
        meta = json.loads(U.read_bytes(item))
    except FileNotFoundError:
        raise DataError(item, "no teacher run here (run.json missing): check the teacher_run URI") from None
    except (OSError, ValueError) as exc:
        raise DataError(item, f"cannot read run record: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(item, "run record is not a JSON object")
    return meta


def read_run(path: str | os.PathLike) -> tuple[TeacherRun, TextEmbeddingTable]:
    """Read a run folder written by :func:`write_run` (local or s3://)."""

    meta = read_run_record(path)
    run = TeacherRun.from_dict(meta, U.join(str(path), RUN_RECORD))
    emb_uri = U.join(str(path), TEXT_EMBEDDING)
    try:
        emb = np.load(io.BytesIO(U.read_bytes(emb_uri)), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(emb_uri, f"cannot read text embeddings: {exc}") from None
    try:
        return run, TextEmbeddingTable(emb, bool(meta.get("void_row", False)), int(meta["num_texts"]))
    except DataError as e:
        raise DataError(emb_uri, e.message) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(U.join(str(path), RUN_RECORD), f"bad run record: {exc!r}") from None


# ---------------------------------------------------------------------- per-image records
@dataclass
class TeacherImage:
    """Teacher output for one (sample, camera); see the module docstring for the fields."""

    sample_token: str
    camera: str
    image_size: tuple[int, int]
    mask_map: np.ndarray
    mask_ids: np.ndarray
    text_index: np.ndarray
    area: np.ndarray
    features: np.ndarray
    is_thing: np.ndarray | None = None
    camera_token: str = ""
    scene_token: str = ""

    @property
    def item(self) -> str:
        """Name used in errors: ``<sample_token>/<camera>``."""
        return f"{self.sample_token}/{self.camera}"

    @property
    def num_masks(self) -> int:
        return int(len(self.mask_ids))

    def validate(self, num_texts: int, feature_dim: int | None = None) -> None:
        """Raise DataError(item="<sample_token>/<camera>") on any inconsistency."""
        item = self.item
        m = self.mask_map
        if m.ndim != 2:
            raise DataError(item, f"mask map must be 2-D, got shape {m.shape}")
        if m.dtype not in (np.uint8, np.uint16):
            raise DataError(item, f"mask map must be uint8 or uint16, got {m.dtype}")
        if tuple(m.shape) != tuple(self.image_size):
            raise DataError(item, f"mask map size {tuple(m.shape)} differs from the image size {tuple(self.image_size)}")
        n = self.num_masks
        ids = np.asarray(self.mask_ids)
        if ids.ndim != 1 or (n and (ids.min() < 1 or len(np.unique(ids)) != n)):
            raise DataError(item, "mask ids must be unique and >= 1")
        for name, arr in (("text_index", self.text_index), ("area", self.area)):
            if np.asarray(arr).shape != (n,):
                raise DataError(item, f"{name} has shape {np.asarray(arr).shape}, expected ({n},) for {n} masks")
        if self.is_thing is not None and np.asarray(self.is_thing).shape != (n,):
            raise DataError(item, f"is_thing has shape {np.asarray(self.is_thing).shape}, expected ({n},)")
        txt = np.asarray(self.text_index)
        if n and (txt.min() < 0 or txt.max() >= num_texts):
            bad = txt[(txt < 0) | (txt >= num_texts)]
            raise DataError(item, f"text index {int(bad[0])} outside the vocabulary 0..{num_texts - 1}")
        f = self.features
        if f.ndim != 2 or f.shape[0] != n:
            raise DataError(item, f"feature rows {f.shape[0] if f.ndim else 'n/a'} do not match the mask count {n}")
        if feature_dim is not None and f.shape[1] != feature_dim:
            raise DataError(item, f"features are {f.shape[1]}-d, expected {feature_dim}")
        present = np.flatnonzero(np.bincount(m.ravel()))   # ids in the map (uint8 / uint16: a bincount, no sort)
        missing = np.setdiff1d(present[present != 0], ids)
        if missing.size:
            raise DataError(item, f"mask ids {missing[:10].tolist()} appear in the mask map but not in the mask table")


def superpixel_feature_table(
    images: Sequence[TeacherImage], superpixel_size: int = 150
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature table of a local batch for the TMP id join (docs/method.md "TMP data", "Superpoint pooling").

    Image ``i`` of ``images`` (the batch's global image index, e.g. b*6 + camera slot) contributes rows
    with global id ``i * superpixel_size + mask_id``. Returns (ids int64 (M,), features float16 (M, D),
    text_index int64 (M,)); join them with ``afov_ray.losses.join_superpixel_features``.
    """
    ids, feats, texts = [], [], []
    for i, im in enumerate(images):
        mids = np.asarray(im.mask_ids, dtype=np.int64)
        if mids.size and mids.max() >= superpixel_size:
            raise DataError(im.item, f"mask id {int(mids.max())} does not fit superpixel_size={superpixel_size}")
        ids.append(i * superpixel_size + mids)
        feats.append(np.asarray(im.features, dtype=np.float16))
        texts.append(np.asarray(im.text_index, dtype=np.int64))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float16), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(feats), np.concatenate(texts)


def encode_mask_map(mask_map: np.ndarray) -> bytes:
    """Lossless PNG bytes: 8-bit greyscale for uint8 maps, 16-bit greyscale for uint16 maps."""
    from PIL import Image

    if mask_map.dtype not in (np.uint8, np.uint16) or mask_map.ndim != 2:
        raise ValueError(f"mask map must be 2-D uint8/uint16, got {mask_map.dtype} {mask_map.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask_map)).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_map(data: bytes, item: str = "mask_map") -> np.ndarray:
    """Inverse of :func:`encode_mask_map` (uint8 or uint16 array)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "I;16", "P"):
                raise DataError(item, f"mask PNG must be greyscale (mode L or I;16), got mode {im.mode}")
            arr = np.array(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(item, f"unreadable mask PNG: {exc}") from exc
    return arr.astype(np.uint16) if arr.dtype != np.uint8 else arr


def image_schema():
    """The pyarrow schema of teacher image shards (pyarrow is imported on first use)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("sample_token", pa.string()),
            ("camera", pa.string()),
            ("camera_token", pa.string()),
            ("scene_token", pa.string()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("mask_png", pa.binary()),
            ("num_masks", pa.int32()),
            ("mask_ids", pa.list_(pa.uint16())),
            ("text_index", pa.list_(pa.int32())),
            ("area", pa.list_(pa.int64())),
            ("is_thing", pa.list_(pa.bool_())),  # null when the teacher has no instance flag
            ("feature_dim", pa.int32()),
            ("features_f16", pa.binary()),  # little-endian float16, row-major (num_masks, feature_dim)
        ],
        metadata={b"afov.teacher_image_schema": SCHEMA_VERSION.encode()},
    )


def to_table(images: Iterable[TeacherImage], run_id: str | None = None):
    """TeacherImages -> pyarrow Table with :func:`image_schema` (run id in the schema metadata)."""
    import pyarrow as pa

    cols: dict[str, list[Any]] = {name: [] for name in image_schema().names}
    for im in images:
        feats = np.ascontiguousarray(im.features, dtype="<f2")
        cols["sample_token"].append(im.sample_token)
        cols["camera"].append(im.camera)
        cols["camera_token"].append(im.camera_token)
        cols["scene_token"].append(im.scene_token)
        cols["height"].append(int(im.image_size[0]))
        cols["width"].append(int(im.image_size[1]))
        cols["mask_png"].append(encode_mask_map(im.mask_map))
        cols["num_masks"].append(im.num_masks)
        cols["mask_ids"].append(np.asarray(im.mask_ids, dtype=np.uint16))
        cols["text_index"].append(np.asarray(im.text_index, dtype=np.int32))
        cols["area"].append(np.asarray(im.area, dtype=np.int64))
        cols["is_thing"].append(None if im.is_thing is None else np.asarray(im.is_thing, dtype=bool))
        cols["feature_dim"].append(int(feats.shape[1]) if feats.ndim == 2 else 0)
        cols["features_f16"].append(feats.tobytes())
    schema = image_schema()
    if run_id is not None:
        schema = schema.with_metadata(schema.metadata | {b"afov.run_id": run_id.encode()})
    return pa.Table.from_pydict(cols, schema=schema)


def from_row(row: dict[str, Any]) -> TeacherImage:
    """One row (``table.to_pylist()`` element) -> TeacherImage; errors name ``<sample_token>/<camera>``."""
    item = f"{row.get('sample_token')}/{row.get('camera')}"
    n, d = int(row["num_masks"]), int(row["feature_dim"])
    raw = row["features_f16"]
    if len(raw) != n * d * 2:
        raise DataError(item, f"feature bytes {len(raw)} do not match {n} masks x {d} dims (float16)")
    is_thing = row.get("is_thing")
    return TeacherImage(
        sample_token=row["sample_token"],
        camera=row["camera"],
        image_size=(int(row["height"]), int(row["width"])),
        mask_map=decode_mask_map(row["mask_png"], item),
        mask_ids=np.asarray(row["mask_ids"], dtype=np.uint16),
        text_index=np.asarray(row["text_index"], dtype=np.int32),
        area=np.asarray(row["area"], dtype=np.int64),
        features=np.frombuffer(raw, dtype="<f2").reshape(n, d).astype(np.float16),
        is_thing=None if is_thing is None else np.asarray(is_thing, dtype=bool),
        camera_token=row.get("camera_token") or "",
        scene_token=row.get("scene_token") or "",
    )


def from_table(table) -> list[TeacherImage]:
    return [from_row(r) for r in table.to_pylist()]


def images_table(images: Sequence[TeacherImage], *, num_texts: int, feature_dim: int | None = DEFAULT_FEATURE_DIM,
                 run_id: str | None = None):
    """Validate a scene's images and build its teacher-shard table (committed by the teacher pass)."""
    for im in images:
        im.validate(num_texts, feature_dim)
    return to_table(images, run_id=run_id)


def read_scene_shard(path: str | os.PathLike) -> list[TeacherImage]:
    """All images of one teacher shard (local path or s3:// URI; no manifest check)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(U.read_bytes(str(path))))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(str(path), f"cannot read teacher shard: {exc}") from exc
    return from_table(table)


# ---------------------------------------------------------------------- helpers
def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()
