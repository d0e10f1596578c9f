"""The AFOV learning stages as ``Stage`` objects for ``afov_ray.train.runner``.

- ``TMPStage`` (afov-reference.md section 2): Res16UNet34C with a 768-d head and per-voxel L2
  normalisation; loss alpha_i * L_IP + alpha_t * L_TP on the worker's local batch (negatives are local,
  nothing is all-gathered, as coded), text loss in the official soft-target form or the paper form.
- ``SegStage`` (sections 5 and 6): the same backbone with a 17-way (nuScenes) or 20-way (KITTI) head,
  CE + Lovasz-Softmax on voxels whose target is not 0; targets are the pseudo-labels (annotation-free
  distillation) or ground truth (1 % fine-tuning, linear probing). Validation scores every point of
  the val set in one confusion matrix all-reduced across workers, with class 0 suppressed at argmax
  as in the official trainer's validation (switchable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from afov_ray.train.data import IngestConfig, torch_batches
from afov_ray.train.runner import Stage, allreduce_


@dataclass
class ModelConfig:
    name: str = field(default="res16unet34c", metadata={"help": "res16unet34c (official) | minkunet18 (paper)"})
    engine: str = field(default="torch", metadata={"help": "sparse-conv engine: torch | minkowski | spconv"})
    in_channels: int = 1
    bn_momentum: float = 0.05
    init: str | None = field(default=None, metadata={
        "help": "initial weights (shape-filtered): models:/name@alias, models:/name/version, runs:/..., "
                "a checkpoint folder / .pt file or s3:// URI"})
    tracking_uri: str | None = field(default=None, metadata={"help": "MLflow tracking URI for models:/ init"})


def _init_lineage(cfg: ModelConfig) -> dict[str, str]:
    return {"init": cfg.init} if cfg.init else {}


def _data_lineage(pairing: str | None, teacher_run: str | None) -> dict[str, str]:
    from afov_ray.train.tracking import data_fingerprint, teacher_lineage

    out: dict[str, str] = {}
    if teacher_run:
        out.update(teacher_lineage(teacher_run))
    if pairing:
        out.update(data_fingerprint(pairing))
    return out


def _init_state(cfg: ModelConfig) -> dict | None:
    if not cfg.init:
        return None
    from afov_ray.train.tracking import load_model_state

    return load_model_state(cfg.init, tracking_uri=cfg.tracking_uri)


def _forward(model, batch, device):
    return model(batch["coords"].to(device), batch["feats"].to(device))


@dataclass
class TMPConfig:
    teacher_run: str = field(default="", metadata={
        "help": "teacher run folder URI (text_embedding.npy, run.json); the pairing shards must come from it"})
    dictionary: str = "nuscenes"
    tau: float = field(default=0.07, metadata={"help": "InfoNCE temperature"})
    alpha_image: float = field(default=0.5, metadata={"help": "weight of the superpixel-superpoint loss"})
    alpha_text: float = field(default=0.5, metadata={"help": "weight of the text-superpoint loss"})
    text_form: str = "official"       # "official" soft targets | "paper" semi-positive form
    nce_direction: str = "official"   # rows = superpoints (official) | "paper"
    renormalize: bool = False         # paper: renormalise pooled superpoint features


class TMPStage(Stage):
    name = "tmp"

    def __init__(self, model: ModelConfig, tmp: TMPConfig, ingest: IngestConfig, pairing: str | None = None):
        self.model_cfg, self.cfg, self.ingest, self.pairing = model, tmp, ingest, pairing
        self._text = None

    def lineage(self) -> dict[str, str]:
        return {**_data_lineage(self.pairing, self.cfg.teacher_run), **_init_lineage(self.model_cfg)}

    def params(self) -> dict:
        from afov_ray.config import to_dict

        return {"model": to_dict(self.model_cfg), "tmp": to_dict(self.cfg), "ingest": to_dict(self.ingest)}

    def build_model(self):
        from afov_ray.models.res16unet import build_model

        return build_model(self.model_cfg.name, self.model_cfg.in_channels, 768, self.model_cfg.engine,
                           self.model_cfg.bn_momentum, normalize_features=True)

    def init_state(self):
        return _init_state(self.model_cfg)

    def _text_tables(self, device):
        if self._text is None:
            import io

            from afov_ray.storage import uri as suri
            from afov_ray.teachers.dictionary import ClassDictionary

            d = ClassDictionary.load(self.cfg.dictionary)
            emb = np.load(io.BytesIO(suri.read_bytes(suri.join(self.cfg.teacher_run, "text_embedding.npy"))))
            meta = __import__("json").loads(suri.read_bytes(suri.join(self.cfg.teacher_run, "run.json")))
            if meta.get("void_row"):
                emb = emb[: d.num_texts]  # explicit: the void row is not a vocabulary text
            t = torch.nn.functional.normalize(torch.as_tensor(emb, dtype=torch.float32), dim=1)
            self._text = (t, torch.as_tensor(d.same_category_matrix(), dtype=torch.float32))
        return self._text[0].to(device), self._text[1].to(device)

    def batches(self, shard, batch_size, epoch):
        yield from torch_batches(shard, batch_size, with_pairings=True, stride=self.ingest.stride,
                                 prefetch_batches=self.ingest.prefetch_batches)

    def loss(self, model, batch, device):
        from afov_ray.losses import join_superpixel_features, superpoint_pooling, tmp_loss

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
    num_classes: int = field(default=17, metadata={"help": "17 (nuScenes) | 20 (SemanticKITTI), class 0 ignored"})
    suppress_class0_in_val: bool = True    # official trainer validation; the final evaluate does not


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
        from afov_ray.config import to_dict

        return {"model": to_dict(self.model_cfg), "seg": to_dict(self.cfg), "ingest": to_dict(self.ingest)}

    def build_model(self):
        from afov_ray.models.res16unet import build_model

        return build_model(self.model_cfg.name, self.model_cfg.in_channels, self.cfg.num_classes,
                           self.model_cfg.engine, self.model_cfg.bn_momentum)

    def init_state(self):
        return _init_state(self.model_cfg)

    def batches(self, shard, batch_size, epoch):
        yield from torch_batches(shard, batch_size, prefetch_batches=self.ingest.prefetch_batches)

    def loss(self, model, batch, device):
        from afov_ray.losses import ce_lovasz_loss

        logits = _forward(model, batch, device)
        target = batch["target"].to(device)
        return ce_lovasz_loss(logits, target, ignore_index=0), {"labelled_voxels": float((target > 0).sum())}

    def validate(self, model, shard, device) -> dict:
        return validate_segmentation(model, shard, device, self.cfg.num_classes, self.cfg.suppress_class0_in_val)


def predict_points(model, batch, device, suppress_class0: bool) -> torch.Tensor:
    """Per-point predictions: voxel argmax copied to every point through the inverse map."""
    logits = _forward(model, batch, device)
    if suppress_class0:
        logits = logits.clone()
        logits[:, 0] = float("-inf")
    return logits.argmax(1).cpu()[batch["inverse"]]


def validate_segmentation(model, shard, device, num_classes: int, suppress_class0: bool) -> dict:
    """Point-level confusion matrix over the worker's val shard, all-reduced, -> mIoU and per-class IoU."""
    from afov_ray.eval.metrics import confusion_matrix, iou_per_class

    H = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in torch_batches(shard, 1, drop_last=False):
        if batch["point_labels"].numel() == 0:
            continue
        pred = predict_points(model, batch, device, suppress_class0)
        H += torch.as_tensor(confusion_matrix(batch["point_labels"].numpy(), pred.numpy(), num_classes))
    H = allreduce_(H.to(device)).cpu()
    iou = np.asarray(iou_per_class(H.numpy()), dtype=np.float64)
    out = {"mIoU": float(np.nanmean(iou[1:])), "points": int(H[1:].sum())}
    out.update({f"IoU_{c}": float(iou[c]) for c in range(1, num_classes)})
    return out
