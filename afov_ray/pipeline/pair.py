"""pair: sweep shards + teacher shards -> pairing shards (pairings, superpoints, pseudo-labels).

The third pass of the pipeline (paper section 3.1; official ``ov_segment/*/superpixel2superpoint.py`` and
the TMP loader ``pretrain/dataloader_nuscenes_ov.py``). For every keyframe (``afov_ray.geometry.pairing``):
project the points into the cameras, pair them with the teacher masks, build pseudo-labels and
superpoints, and store what TMP and distillation need so that neither ever opens a camera image:

    sample_token, scene, timestamp, num_points, points (N*4 float32), labels (N, GT eval, nullable),
    pseudo (N uint8 eval), pseudo_code (N int32, official id*100+raw encoding), superpoint (N int32),
    pair_point / pair_superpixel (E int32: pairings on non-zero masks; superpixel = camera*stride+mask),
    sp_id (S int32), sp_text (S int32), sp_feat (S*D float16 bytes), feat_dim.

Scenes run as Ray tasks on the shard-pass layer. Coverage and agreement statistics per class (as many
classes as the dictionary has: 16 nuScenes, 19 SemanticKITTI) are summed from every scene's record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from afov_ray.cli import print_summary
from afov_ray.config import ConfigError, option, to_dict
from afov_ray.datasets.sweeps import table_to_keyframes
from afov_ray.errors import DataError
from afov_ray.geometry.pairing import (
    PAIRING_SCHEMA_VERSION,
    PAIRING_WRITE_OPTIONS,
    CameraMasks,
    PairingConfig,
    encode_official,
    pair_keyframe,
    pairing_schema,
)
from afov_ray.pipeline.shard_pass import ExecConfig, ItemResult, PassItem, PassSummary, ShardPass, run_pass
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import shards as S
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.teachers.schema import IMAGES_DIR, from_table, read_run

SWEEP_COLUMNS = ["dataset", "scene", "sample_token", "lidar_token", "timestamp", "lidar_path", "num_points",
                 "points", "ring", "raw_labels", "labels", "cam_channel", "cam_token", "cam_image_path",
                 "cam_width", "cam_height", "cam_timestamp", "cam_K", "cam_lidar_to_cam"]


@dataclass
class PairPassConfig:
    pairing: PairingConfig = option(PairingConfig(), "projection and pseudo-label rule")
    dictionary: str = option("nuscenes", "class dictionary: nuscenes | kitti | a YAML file (must match the "
                                         "teacher run's vocabulary)")
    exec: ExecConfig = option(ExecConfig(), "how items run (Ray tasks)")


def _zeros_stats(num_classes: int) -> dict:
    return {"keyframes": 0, "num_points": 0, "labelled": 0, "scored": 0, "agree": 0, "missing_cameras": 0,
            "per_class_gt": np.zeros(num_classes, np.int64), "per_class_labelled": np.zeros(num_classes, np.int64),
            "per_class_agree": np.zeros(num_classes, np.int64)}


class PairPass(ShardPass):
    name = "pair"
    compute = "tasks"
    schema_name = "pairing"
    schema_version = PAIRING_SCHEMA_VERSION

    def __init__(self, cfg: PairPassConfig, sweeps: dict[str, S.Shard], teacher: dict[str, S.Shard],
                 teacher_run_id: str, out_uri: str):
        super().__init__(out_uri, cfg.exec)
        self.cfg, self.sweeps, self.teacher, self.teacher_run_id = cfg, sweeps, teacher, teacher_run_id
        self._d: ClassDictionary | None = None

    @property
    def dictionary(self) -> ClassDictionary:
        if self._d is None:
            self._d = ClassDictionary.load(self.cfg.dictionary)
        return self._d

    def fingerprint(self) -> dict:
        return {"teacher_run_id": self.teacher_run_id, "pairing": to_dict(self.cfg.pairing),
                "dictionary": self.cfg.dictionary}

    def items(self) -> list[PassItem]:
        return [PassItem(k) for k in self.sweeps if k in self.teacher]

    def setup(self) -> None:
        _ = self.dictionary

    def run_item(self, item: PassItem) -> ItemResult:
        d = self.dictionary
        C = d.num_eval_classes
        raw_to_eval = np.zeros(256, dtype=np.uint8)
        for r, e in d.raw_to_eval.items():
            raw_to_eval[int(r)] = e
        sweeps = S.read_table(self.sweeps[item.key], SWEEP_COLUMNS)
        S.check_key_column(sweeps, self.sweeps[item.key])
        teacher = S.read_table(self.teacher[item.key])
        S.check_key_column(teacher, self.teacher[item.key], column="scene_token")
        images = {(im.sample_token, im.camera): im for im in from_table(teacher)}
        rows, skipped, tot = [], [], _zeros_stats(C)
        stride = self.cfg.pairing.superpixel_stride
        for kf in table_to_keyframes(sweeps):
            try:
                masks, sp_ids, sp_text, sp_feat = [], [], [], []
                for ci, cam in enumerate(kf.cameras):
                    im = images.get((kf.sample_token, cam.channel))
                    if im is None:
                        masks.append(None)
                        continue
                    masks.append(CameraMasks(im.mask_map, dict(zip(im.mask_ids.tolist(), im.text_index.tolist()))))
                    sp_ids.append(ci * stride + np.asarray(im.mask_ids, dtype=np.int64))
                    sp_text.append(np.asarray(im.text_index, dtype=np.int64))
                    sp_feat.append(np.asarray(im.features, dtype=np.float16))
                if kf.cameras and all(m is None for m in masks):
                    raise DataError(f"{kf.scene}/{kf.sample_token}", "no teacher output for any camera")
                pr = pair_keyframe(kf, masks, d.text_to_raw, raw_to_eval, self.cfg.pairing, num_classes=C)
            except DataError as exc:
                skipped.append({"item": exc.item if "/" in exc.item else f"{kf.scene}/{exc.item}",
                                "message": exc.message})
                continue
            keep = pr.mask > 0
            feat = np.concatenate(sp_feat) if sp_feat else np.zeros((0, 0), np.float16)
            rows.append({
                "sample_token": kf.sample_token, "scene": kf.scene, "timestamp": int(kf.timestamp),
                "num_points": kf.num_points, "points": np.asarray(kf.points, np.float32).ravel(),
                "labels": None if kf.labels is None else np.asarray(kf.labels, np.uint8),
                "pseudo": pr.pseudo_eval, "pseudo_code": encode_official(pr.superpoint, np.maximum(pr.pseudo_raw, 0)),
                "superpoint": pr.superpoint, "pair_point": pr.point[keep].astype(np.int32),
                "pair_superpixel": pr.superpixel[keep].astype(np.int32),
                "sp_id": (np.concatenate(sp_ids) if sp_ids else np.zeros(0)).astype(np.int32),
                "sp_text": (np.concatenate(sp_text) if sp_text else np.zeros(0)).astype(np.int32),
                "sp_feat": feat.astype("<f2").tobytes(), "feat_dim": int(feat.shape[1]) if feat.ndim == 2 else 0,
            })
            st = pr.stats
            tot["keyframes"] += 1
            tot["missing_cameras"] += len(st["missing_cameras"])
            for k in ("num_points", "labelled", "scored", "agree"):
                tot[k] += int(st.get(k) or 0)
            for k in ("per_class_gt", "per_class_labelled", "per_class_agree"):
                if k in st:
                    tot[k] += np.asarray(st[k], dtype=np.int64)
        if not rows:
            return ItemResult(item.key, skipped=skipped)
        entry = self.commit_table(item.key, pa.Table.from_pylist(rows, schema=pairing_schema()),
                                  **PAIRING_WRITE_OPTIONS)
        return ItemResult(item.key, shard=entry, skipped=skipped,
                          stats={k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in tot.items()})

    def summarize(self, records: list[dict]) -> dict:
        return summarize(records, list(self.dictionary.eval_class_names))


def summarize(records: list[dict], class_names: list[str]) -> dict:
    """Sum per-scene statistics (from done records): coverage, agreement, per-class coverage / agreement."""
    C = len(class_names)
    stats = [r["stats"] for r in records]
    keys = ("keyframes", "num_points", "labelled", "scored", "agree", "missing_cameras")
    tot: dict = {k: int(sum(int(s.get(k, 0)) for s in stats)) for k in keys}
    per = {k: np.sum([np.asarray(s[k], np.int64) for s in stats if k in s], axis=0)
           if any(k in s for s in stats) else np.zeros(C, np.int64)
           for k in ("per_class_gt", "per_class_labelled", "per_class_agree")}
    for k, v in per.items():
        if len(v) != C:
            raise DataError(k, f"per-class statistics have {len(v)} classes, the dictionary {C}")
    tot["coverage"] = tot["labelled"] / max(tot["num_points"], 1)
    tot["agreement"] = tot["agree"] / tot["scored"] if tot["scored"] else None
    tot["per_class"] = {
        class_names[c]: {"points": int(per["per_class_gt"][c]),
                         "coverage": float(per["per_class_labelled"][c] / max(per["per_class_gt"][c], 1)),
                         "agreement": (float(per["per_class_agree"][c] / per["per_class_labelled"][c])
                                       if per["per_class_labelled"][c] else None)}
        for c in range(1, C) if per["per_class_gt"][c] > 0}
    return tot


def run_pair_pass(sweeps_uri: str, teacher_run_uri: str, out_uri: str, cfg: PairPassConfig) -> PassSummary:
    """Pair every scene that has both a sweep shard and a teacher shard (resuming)."""

    run, text = read_run(teacher_run_uri)
    d = ClassDictionary.load(cfg.dictionary)
    if run.vocabulary_hash != d.vocabulary_hash() or text.num_texts != d.num_texts:
        raise DataError(teacher_run_uri, f"the teacher run's vocabulary ({text.num_texts} texts, hash "
                                         f"{run.vocabulary_hash[:12]}) is not the dictionary {cfg.dictionary!r} "
                                         f"({d.num_texts} texts, hash {d.vocabulary_hash()[:12]}); set dictionary=")
    req = cfg.exec.require_manifest
    sweeps = S.open_folder(sweeps_uri, require_manifest=req, what="sweeps folder")
    teacher = S.open_folder(f"{teacher_run_uri.rstrip('/')}/{IMAGES_DIR}", require_manifest=req,
                            what="teacher images folder")
    common = sorted(set(sweeps) & set(teacher))
    if not common:
        raise DataError(teacher_run_uri, f"no scene has both a sweep shard ({len(sweeps)} in {sweeps_uri}) and a "
                                         f"teacher shard ({len(teacher)})")
    if cfg.exec.use_ray:
        init_ray()
    summary = run_pass(PairPass(cfg, sweeps, teacher, run.run_id, out_uri))
    summary.stats["scenes_without_teacher"] = sorted(set(sweeps) - set(teacher))
    return summary


@dataclass
class PairJob(RayKeys):
    sweeps: str = option("outputs/demo/sweeps", "sweeps folder URI")
    teacher_run: str = option("", "teacher run folder URI (<teacher out>/<run_id>, printed by jobs/teacher.py)")
    out: str = option("outputs/demo/pairing", "pairing output folder URI")
    pair: PairPassConfig = option(PairPassConfig(), "projection and pseudo-label rule")


def pair_job(cfg: PairJob) -> int:
    """The body of ``jobs/pair.py``."""

    if not cfg.teacher_run:
        raise ConfigError("config key 'teacher_run': required (<teacher out>/<run_id>)")
    if cfg.pair.exec.use_ray:
        cfg.start_ray()
    summary = run_pair_pass(cfg.sweeps, cfg.teacher_run, cfg.out, cfg.pair)
    print_summary(summary)
    st = summary.stats
    agree = "n/a (no ground truth)" if st.get("agreement") is None else f"{st['agreement']:.3f}"
    print(f"keyframes {st.get('keyframes', 0)}, coverage {st.get('coverage', 0):.3f}, agreement with GT {agree}")
    for name, c in st.get("per_class", {}).items():
        a = "n/a" if c["agreement"] is None else f"{c['agreement']:.3f}"
        print(f"  {name:22s} points {c['points']:8d}  coverage {c['coverage']:.3f}  agreement {a}")
    return summary.exit_code
