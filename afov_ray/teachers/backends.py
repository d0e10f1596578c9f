"""Teacher backends: what turns one camera image of a keyframe into a ``TeacherImage``.

Every backend has the same three steps, so the teacher pass (``afov_ray.pipeline.teacher``) treats them
alike:

- ``run_record()`` (driver): the run's identity (``TeacherRun``: name, vocabulary hash, model id) and its
  text-embedding table, plus extra facts for ``run.json`` (settings, weights checksum);
- ``setup(text)`` (once per worker actor): load weights, dictionaries;
- ``label(keyframe, camera)`` (per image): the teacher's masks, mask text ids and mask features for
  that camera; a bad image raises ``DataError`` naming it and is skipped by the pass.

Backends here:

- ``official``: the files the official SAN / CAT-Seg / FC-CLIP code writes (``afov_ray.teachers.official``),
  read per camera image from a folder (local or s3://);
- ``oracle``: masks made from the dataset's own ground truth projected into each camera
  (``afov_ray.teachers.oracle``), an upper bound that needs no 2D weights;
- ``maskclip``: a built-in MaskCLIP teacher on local CLIP weights (``afov_ray.teachers.maskclip``);
- ``simulated``: generated data only (re-renders the camera's ground truth from the generator's scene and
  corrupts it, ``afov_ray.teachers.simulated``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from afov_ray.datasets.synth.nuscenes_writer import has_scene_record, render_sample_data
from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.teachers.maskclip import MaskCLIPTeacher, config_record, decode_image, model_id, weights_sha256
from afov_ray.teachers.official import (
    TEXT_EMBEDDING_FILE,
    file_sha256,
    import_official_image,
    import_text_table,
    official_stem,
)
from afov_ray.teachers.oracle import ClassTexts, oracle_mask_map
from afov_ray.teachers.schema import TeacherImage, TeacherRun, TextEmbeddingTable
from afov_ray.teachers.simulated import simulate_image, simulated_text_embeddings


class TeacherBackend(Protocol):
    kind: str

    def run_record(self) -> tuple[TeacherRun, TextEmbeddingTable, dict[str, Any]]:
        ...

    def setup(self, text: TextEmbeddingTable) -> None:
        ...

    def label(self, kf: Keyframe, cam: CameraFrame) -> TeacherImage:
        ...


def image_record(kf: Keyframe, cam: CameraFrame, mask_map: np.ndarray, text_of_mask: dict[int, int],
                 features: np.ndarray, is_thing: np.ndarray | None = None) -> TeacherImage:
    """A TeacherImage from a mask map and its {mask id: text index} table (ids ascending)."""
    ids = np.array(sorted(text_of_mask), dtype=np.int64)
    area = np.bincount(mask_map.ravel(), minlength=int(ids.max(initial=0)) + 1)[ids] if ids.size else ids
    return TeacherImage(sample_token=kf.sample_token, camera=cam.channel,
                        image_size=(int(mask_map.shape[0]), int(mask_map.shape[1])), mask_map=mask_map,
                        mask_ids=ids, text_index=np.array([text_of_mask[j] for j in ids], dtype=np.int64),
                        area=area.astype(np.int64), features=features, is_thing=is_thing,
                        camera_token=cam.token, scene_token=kf.scene)


class SimulatedBackend:
    """Generated datasets only: the generator's scene is re-rendered per camera and corrupted."""

    kind = "simulated"

    def __init__(self, cfg, dictionary: str, dataroot: str, version: str):
        self.cfg, self.dictionary, self.dataroot, self.version = cfg, dictionary, dataroot, version
        self._d: ClassDictionary | None = None
        self._emb: np.ndarray | None = None

    def run_record(self):
        self._check_dataroot()
        d = ClassDictionary.load(self.dictionary)
        emb = simulated_text_embeddings(list(d.texts), d.text_to_category, dim=self.cfg.feature_dim, seed=self.cfg.seed)
        s = self.cfg
        model_id = (f"simulated:{s.mask_style}:b{s.boundary_px}:c{s.confusion_prob}:a{s.min_area_px}:"
                    f"d{s.max_depth_m}:f{s.feature_noise}:t{s.random_text_prob}:s{s.seed}")
        run = TeacherRun(name=s.name, vocabulary_hash=d.vocabulary_hash(), model_id=model_id,
                         feature_dim=s.feature_dim, created="")
        return run, TextEmbeddingTable(embeddings=emb, void_row=False, num_texts=d.num_texts), {}

    def _check_dataroot(self) -> None:
        if U.is_s3(self.dataroot) or not has_scene_record(self.dataroot):
            raise DataError(self.dataroot, "the simulated teacher needs a dataroot made by the generator "
                                           "(afov_ray.datasets.synth); for real data use teacher.teacher=oracle "
                                           "(labelled data), official (SAN / CAT-Seg / FC-CLIP files) or maskclip")

    def setup(self, text: TextEmbeddingTable) -> None:
        self._d = ClassDictionary.load(self.dictionary)
        self._emb = text.vocabulary_rows
        self._check_dataroot()

    def label(self, kf: Keyframe, cam: CameraFrame) -> TeacherImage:
        d = self._d
        r = render_sample_data(self.dataroot, cam.token, version=self.version)
        mm, mt, feats, thing = simulate_image(r["semantic"], r["instance"], r["depth"], list(d.texts),
                                              d.text_to_category, d.category_to_raw, self._emb, self.cfg, key=cam.token)
        return image_record(kf, cam, mm, mt, feats, thing)


class MaskCLIPBackend:
    """The built-in MaskCLIP teacher; reads each camera image from the dataroot (local or s3://)."""

    kind = "maskclip"

    def __init__(self, cfg, dictionary: str, dataroot: str):
        self.cfg, self.dictionary, self.dataroot = cfg, dictionary, dataroot
        self._teacher = None

    def run_record(self):
        d = ClassDictionary.load(self.dictionary)
        teacher = MaskCLIPTeacher(self.cfg, list(d.texts))
        emb = teacher.text_embeddings.cpu().numpy().astype(np.float32)
        run = TeacherRun(name=self.cfg.name, vocabulary_hash=d.vocabulary_hash(), model_id=model_id(self.cfg),
                         feature_dim=teacher.feature_dim, created="")
        extra = {"maskclip": config_record(self.cfg), "random_weights": not self.cfg.weights,
                 "weights_sha256": weights_sha256(self.cfg.weights) if self.cfg.weights else None}
        return run, TextEmbeddingTable(embeddings=emb, void_row=False, num_texts=d.num_texts), extra

    def setup(self, text: TextEmbeddingTable) -> None:
        d = ClassDictionary.load(self.dictionary)
        self._teacher = MaskCLIPTeacher(self.cfg, list(d.texts), text_embeddings=text.vocabulary_rows)

    def label(self, kf: Keyframe, cam: CameraFrame) -> TeacherImage:
        path = U.join(self.dataroot, cam.image_path) if self.dataroot else cam.image_path
        try:
            data = U.read_bytes(path)
        except (OSError, FileNotFoundError) as exc:
            raise DataError(path, f"cannot read camera image: {exc}") from None
        image = decode_image(data, path)
        return self._teacher(image, sample_token=kf.sample_token, camera=cam.channel, camera_token=cam.token,
                             scene_token=kf.scene)


class OfficialBackend:
    """Official SAN / CAT-Seg / FC-CLIP files (``teacher.official.*``), one camera image at a time: masks, mask
    text ids and mask features as the official code wrote them; a camera without files is skipped and named."""

    kind = "official"

    def __init__(self, cfg, dictionary: str):
        self.cfg, self.dictionary = cfg, dictionary
        self._num_texts = 0
        self._dim: int | None = None

    def _text_uri(self) -> str:
        return U.join(self.cfg.dir, TEXT_EMBEDDING_FILE)

    def run_record(self):
        d = ClassDictionary.load(self.dictionary)
        uri = self._text_uri()
        text = import_text_table(uri, self.cfg.kind, num_texts=d.num_texts)
        sha = file_sha256(uri)
        run = TeacherRun(name=self.cfg.name or self.cfg.kind, vocabulary_hash=d.vocabulary_hash(),
                         model_id=f"official:{self.cfg.kind}:{sha[:16]}", feature_dim=text.feature_dim, created="")
        extra = {"official": {"dir": self.cfg.dir, "kind": self.cfg.kind, "text_embedding_sha256": sha,
                              "text_embedding_rows": int(text.embeddings.shape[0])}}
        return run, text, extra

    def setup(self, text: TextEmbeddingTable) -> None:
        self._num_texts, self._dim = text.num_texts, text.feature_dim

    def label(self, kf: Keyframe, cam: CameraFrame) -> TeacherImage:
        im = import_official_image(self.cfg.dir, official_stem(cam.token), self.cfg.kind, sample_token=kf.sample_token,
                                   camera=cam.channel, scene_token=kf.scene, image_size=(cam.height, cam.width),
                                   num_texts=self._num_texts, feature_dim=self._dim)
        im.camera_token = cam.token
        return im


class OracleBackend:
    """Ground truth projected into the cameras (``teacher.oracle.*``, ``afov_ray.teachers.oracle``)."""

    kind = "oracle"

    def __init__(self, cfg, dictionary: str):
        self.cfg, self.dictionary = cfg, dictionary
        self._d: ClassDictionary | None = None
        self._emb: np.ndarray | None = None
        self._texts: dict[str, ClassTexts] = {}

    def run_record(self):
        c = self.cfg
        d = ClassDictionary.load(self.dictionary)
        if c.text_embedding:
            text = import_text_table(c.text_embedding, "fc-clip", num_texts=d.num_texts)  # 175 rows, or 176 with void
            source = {"text_embedding": c.text_embedding, "text_embedding_sha256": file_sha256(c.text_embedding)}
        else:
            emb = simulated_text_embeddings(list(d.texts), d.text_to_category, dim=c.feature_dim, seed=c.seed)
            text = TextEmbeddingTable(embeddings=emb, void_row=False, num_texts=d.num_texts)
            source = {"text_embedding": "synthetic", "seed": c.seed}
        model = f"oracle:r{c.radius_px}:d{c.min_depth}:" + (source.get("text_embedding_sha256", "")[:16]
                                                           or f"synthetic{text.feature_dim}s{c.seed}")
        run = TeacherRun(name=c.name, vocabulary_hash=d.vocabulary_hash(), model_id=model,
                         feature_dim=text.feature_dim, created="")
        extra = {"oracle": True, "label_source": "ground truth of the sweep shards projected into each camera",
                 "oracle_settings": {"radius_px": c.radius_px, "min_depth": c.min_depth, **source}}
        return run, text, extra

    def setup(self, text: TextEmbeddingTable) -> None:
        self._d = ClassDictionary.load(self.dictionary)
        rows = np.asarray(text.vocabulary_rows, np.float32)
        self._emb = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    def label(self, kf: Keyframe, cam: CameraFrame) -> TeacherImage:
        if kf.dataset not in self._texts:
            self._texts[kf.dataset] = ClassTexts(self._d, kf.dataset)
        point_text = self._texts[kf.dataset].of_keyframe(kf)
        mm, mt = oracle_mask_map(kf.points[:, :3], point_text, cam, self.cfg.radius_px, self.cfg.min_depth)
        feats = self._emb[[mt[i] for i in sorted(mt)]].astype(np.float16) if mt else \
            np.zeros((0, self._emb.shape[1]), np.float16)
        return image_record(kf, cam, mm, mt, feats)
