"""The AFOV learning stages as ``Stage`` objects for ``afov_ray.train.runner``.

- ``TMPStage`` (paper section 3.2; official ``pretrain/lightning_trainer_ov.py``): Res16UNet34C with a 768-d head and per-voxel L2
  normalisation; loss alpha_i * L_IP + alpha_t * L_TP on the worker's local batch (negatives are local,
  nothing is all-gathered, as coded), text loss in the official soft-target form or the paper form.
- ``SegStage`` (paper sections 3.3 and 4; official ``zeroshot/`` and ``downstream/``): the same backbone with a
  17-way (nuScenes) or 20-way (KITTI) head,
  CE + Lovasz-Softmax on voxels whose target is not 0; targets are the pseudo-labels (annotation-free
  distillation) or ground truth (1 % fine-tuning, linear probing). Validation scores every point of
  the val set in one confusion matrix all-reduced across workers, with class 0 suppressed at argmax
  as in the official trainer's validation (switchable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from afov_ray.config import ConfigError, option, to_dict
from afov_ray.errors import DataError
from afov_ray.eval.metrics import confusion_matrix, iou_per_class
from afov_ray.losses import ce_lovasz_loss, join_superpixel_features, superpoint_pooling, tmp_loss
from afov_ray.models.res16unet import build_model
from afov_ray.models.spec import ModelSpec
from afov_ray.storage import uri as suri
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.teachers.schema import read_run
from afov_ray.train.data import IngestConfig, torch_batches
from afov_ray.train.registry import load_model_state
from afov_ray.train.runner import Stage, allreduce_
from afov_ray.train.tracking import data_fingerprint, teacher_lineage


@dataclass
class ModelConfig:
    name: Literal["res16unet34c", "minkunet18"] = option(
        "res16unet34c", "backbone: res16unet34c (official code) | minkunet18 (the paper's wording)")
    engine: Literal["torch", "minkowski", "spconv"] = option(
        "torch", "sparse-conv engine: torch (built in, runs everywhere) | minkowski | spconv")
    in_channels: int = option(1, "input feature channels (1: intensity, official)", min=1)
    bn_momentum: float = option(0.05, "BatchNorm momentum of stem / transitions (official 0.05; 0.1 inside "
                                      "residual blocks as coded)", gt=0, max=1)
    init: str | None = option(None, "initial weights (shape-filtered): models:/name@alias, models:/name/version, "
                                    "runs:/..., a checkpoint folder / .pt file or s3:// URI")
    tracking_uri: str | None = option(None, "MLflow tracking URI for a models:/ init (default: the job's "
                                            "loop.tracking.tracking_uri, else $MLFLOW_TRACKING_URI)")


def _init_lineage(cfg: ModelConfig) -> dict[str, str]:
    return {"init": cfg.init} if cfg.init else {}


def _data_lineage(pairing: str | None, teacher_run: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if teacher_run:
        out.update(teacher_lineage(teacher_run))
    if pairing:
        out.update(data_fingerprint(pairing))
    return out


def _init_state(cfg: ModelConfig) -> dict | None:
    if not cfg.init:
        return None

    return load_model_state(cfg.init, tracking_uri=cfg.tracking_uri)


def _spec(m: ModelConfig, ingest: IngestConfig, out_channels: int, task: str, normalize: bool, dictionary: str,
          teacher_run: str, class_names: tuple[str, ...] = ()) -> ModelSpec:
    run_id = teacher_run.rstrip("/").rsplit("/", 1)[-1] if teacher_run else ""
    return ModelSpec(name=m.name, out_channels=out_channels, in_channels=m.in_channels, bn_momentum=m.bn_momentum,
                     normalize_features=normalize, task=task, class_names=class_names, grid=ingest.grid,
                     voxel_size=ingest.voxel_size, intensity_offset=ingest.intensity_offset, dictionary=dictionary,
                     dataset="semantickitti" if dictionary == "kitti" else "nuscenes", teacher_run=run_id)


def _shuffle(ingest: IngestConfig, epoch: int) -> dict:
    """Training-batch shuffle settings of an epoch: a seed per (ingest seed, epoch), so epochs differ and a
    rerun repeats them (within one worker's shard)."""
    return {"shuffle_buffer": ingest.shuffle_buffer, "shuffle_seed": ingest.seed * 100_003 + epoch}


def _build(spec: ModelSpec, engine: str):
    return build_model(spec.name, spec.in_channels, spec.out_channels, engine, spec.bn_momentum,
                       normalize_features=spec.normalize_features)


def _forward(model, batch, device):
    return model(batch["coords"].to(device), batch["feats"].to(device))


@dataclass
class TMPConfig:
    teacher_run: str = option("", "teacher run folder URI (text_embedding.npy, run.json); the pairing shards must "
                                  "come from it")
    dictionary: str = option("nuscenes", "class dictionary of the teacher's vocabulary (nuscenes | kitti | YAML)")
    tau: float = option(0.07, "InfoNCE temperature", gt=0)
    alpha_image: float = option(0.5, "weight of the superpixel-superpoint loss", min=0)
    alpha_text: float = option(0.5, "weight of the text-superpoint loss", min=0)
    text_form: Literal["official", "paper"] = option(
        "official", "text-superpoint loss: official soft targets over the 175 texts | paper semi-positive form")
    nce_direction: Literal["official", "paper"] = option(
        "official", "superpixel-superpoint InfoNCE rows: superpoints (official) | superpixels (paper Eq. 1)")
    renormalize: bool = option(False, "paper: L2-renormalise pooled superpoint features (official: no)")


class TMPStage(Stage):
    name = "tmp"

    def __init__(self, model: ModelConfig, tmp: TMPConfig, ingest: IngestConfig, pairing: str | None = None):
        self.model_cfg, self.cfg, self.ingest, self.pairing = model, tmp, ingest, pairing
        self._text = None

    def lineage(self) -> dict[str, str]:
        return {**_data_lineage(self.pairing, self.cfg.teacher_run), **_init_lineage(self.model_cfg)}

    def params(self) -> dict:
        return {"model": to_dict(self.model_cfg), "tmp": to_dict(self.cfg), "ingest": to_dict(self.ingest)}

    def model_spec(self) -> ModelSpec:
        return _spec(self.model_cfg, self.ingest, out_channels=768, task="features", normalize=True,
                     dictionary=self.cfg.dictionary, teacher_run=self.cfg.teacher_run)

    def build_model(self):
        return _build(self.model_spec(), self.model_cfg.engine)

    def init_state(self):
        return _init_state(self.model_cfg)

    def check_inputs(self) -> None:
        """Driver-side: the teacher run exists and its text table fits the dictionary (before any worker starts)."""
        self.text_table()

    def text_table(self) -> np.ndarray:
        """(num_texts, D) vocabulary rows of the teacher run (the void row, if any, is not a text)."""
        if not self.cfg.teacher_run:
            raise ConfigError("config key 'tmp.teacher_run': required for TMP (the teacher run folder)")
        run, text = read_run(self.cfg.teacher_run)
        d = ClassDictionary.load(self.cfg.dictionary)
        if text.num_texts != d.num_texts or run.vocabulary_hash != d.vocabulary_hash():
            raise DataError(suri.join(self.cfg.teacher_run, "text_embedding.npy"),
                            f"{text.embeddings.shape[0]} rows for {text.num_texts} texts (vocabulary "
                            f"{run.vocabulary_hash[:12]}) do not fit the dictionary {self.cfg.dictionary!r} "
                            f"({d.num_texts} texts, {d.vocabulary_hash()[:12]}); set tmp.dictionary")
        return text.vocabulary_rows

    def _text_tables(self, device):
        if self._text is None:
            d = ClassDictionary.load(self.cfg.dictionary)
            t = torch.nn.functional.normalize(torch.as_tensor(self.text_table(), dtype=torch.float32), dim=1)
            self._text = (t, torch.as_tensor(d.same_category_matrix(), dtype=torch.float32))
        return self._text[0].to(device), self._text[1].to(device)

    def batches(self, shard, batch_size, epoch):
        yield from torch_batches(shard, batch_size, with_pairings=True, stride=self.ingest.stride,
                                 prefetch_batches=self.ingest.prefetch_batches, **_shuffle(self.ingest, epoch))

    def loss(self, model, batch, device):
        feats = _forward(model, batch, device)
        ids, k = superpoint_pooling(feats, batch["pair_voxel"].to(device), batch["pair_superpixel"].to(device),
                                    superpixel_size=self.ingest.stride, renormalize=self.cfg.renormalize)
        q, y = join_superpixel_features(ids, batch["sp_id"].to(device), batch["sp_feat"].to(device),
                                        batch["sp_text"].to(device))
        text, same = self._text_tables(device)
        out = tmp_loss(k, q, y, text, same, tau=self.cfg.tau, alpha_image=self.cfg.alpha_image,
                       alpha_text=self.cfg.alpha_text, nce_direction=self.cfg.nce_direction,
                       text_form=self.cfg.text_form)
        return out.total, {"loss_image": float(out.image.detach()), "loss_text": float(out.text.detach()),
                           "superpoints": float(len(ids))}


@dataclass
class SegConfig:
    num_classes: int = option(17, "output classes incl. ignore 0: 17 (nuScenes) | 20 (SemanticKITTI)", min=2)
    suppress_class0_in_val: bool = option(True, "never predict class 0 in validation (official trainer "
                                                "validation; the official final evaluate does not)")
    dictionary: str = option("nuscenes", "class names of the outputs (nuscenes | kitti | YAML)")


class SegStage(Stage):
    """Annotation-free distillation (target = pseudo) and fine-tuning / linear probing (target = gt)."""

    def __init__(self, model: ModelConfig, seg: SegConfig, ingest: IngestConfig, name: str = "distill",
                 pairing: str | None = None, teacher_run: str | None = None):
        self.model_cfg, self.cfg, self.ingest, self.name = model, seg, ingest, name
        self.pairing, self.teacher_run = pairing, teacher_run

    def lineage(self) -> dict[str, str]:
        """Data shards (and, when known, the teacher run whose pseudo-labels they hold) + init model."""
        return {**_data_lineage(self.pairing, self.teacher_run), **_init_lineage(self.model_cfg)}

    def params(self) -> dict:
        return {"model": to_dict(self.model_cfg), "seg": to_dict(self.cfg), "ingest": to_dict(self.ingest)}

    def model_spec(self) -> ModelSpec:
        names = list(ClassDictionary.load(self.cfg.dictionary).eval_class_names)
        if len(names) != self.cfg.num_classes:
            names = [str(i) for i in range(self.cfg.num_classes)]
        return _spec(self.model_cfg, self.ingest, out_channels=self.cfg.num_classes, task="segmentation",
                     normalize=False, dictionary=self.cfg.dictionary, teacher_run=self.teacher_run or "",
                     class_names=tuple(names))

    def build_model(self):
        return _build(self.model_spec(), self.model_cfg.engine)

    def init_state(self):
        return _init_state(self.model_cfg)

    def batches(self, shard, batch_size, epoch):
        yield from torch_batches(shard, batch_size, prefetch_batches=self.ingest.prefetch_batches,
                                 **_shuffle(self.ingest, epoch))

    def loss(self, model, batch, device):
        logits = _forward(model, batch, device)
        target = batch["target"].to(device)
        return ce_lovasz_loss(logits, target, ignore_index=0), {"labelled_voxels": float((target > 0).sum())}

    def validate(self, model, shard, device) -> dict:
        return validate_segmentation(model, shard, device, self.cfg.num_classes, self.cfg.suppress_class0_in_val,
                                     self.model_spec().class_names)


def predict_points(model, batch, device, suppress_class0: bool) -> torch.Tensor:
    """Per-point predictions: voxel argmax copied to every point through the inverse map."""
    logits = _forward(model, batch, device)
    if suppress_class0:
        logits = logits.clone()
        logits[:, 0] = float("-inf")
    return logits.argmax(1).cpu()[batch["inverse"]]


def validate_segmentation(model, shard, device, num_classes: int, suppress_class0: bool,
                          class_names: tuple[str, ...] | list[str] = ()) -> dict:
    """Point-level confusion matrix over the worker's val shard, all-reduced, -> mIoU and per-class IoU."""
    H = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in torch_batches(shard, 1, drop_last=False):
        if batch["point_labels"].numel() == 0:
            continue
        pred = predict_points(model, batch, device, suppress_class0)
        H += torch.as_tensor(confusion_matrix(batch["point_labels"].numpy(), pred.numpy(), num_classes))
    H = allreduce_(H.to(device)).cpu()
    iou = np.asarray(iou_per_class(H.numpy()), dtype=np.float64)
    out = {"mIoU": float(np.nanmean(iou[1:])), "points": int(H[1:].sum())}
    names = list(class_names) if len(class_names) == num_classes else [str(c) for c in range(num_classes)]
    out.update({f"iou/{names[c]}": float(iou[c]) for c in range(1, num_classes)})
    return out
