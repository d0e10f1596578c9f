"""The pairing pass: sweep shards + teacher shards -> pairing shards (one per scene).

For every keyframe (afov-reference.md 2.1, 4.3-4.4; ``afov_ray.geometry.pairing``): project the points
into the six cameras, pair them with the teacher masks, build pseudo-labels and superpoints, and store
what TMP and distillation need so that neither ever opens a camera image:

    sample_token, scene, timestamp, num_points, points (N*4 float32), labels (N, GT eval, nullable),
    pseudo (N uint8 eval), pseudo_code (N int32, official id*100+raw encoding), superpoint (N int32),
    pair_point / pair_superpixel (E int32: pairings on non-zero masks; superpixel = camera*stride+mask),
    sp_id (S int32), sp_text (S int32), sp_feat (S*D float16 bytes), feat_dim.

Scenes run in parallel as Ray tasks; each shard is committed atomically and skipped when present.
Coverage and agreement statistics (per class) go to ``_stats.json`` and are returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from afov_ray.geometry.pairing import PairingConfig

PAIRING_SCHEMA_VERSION = "1"


@dataclass
class PairPassConfig:
    pairing: PairingConfig = field(default_factory=PairingConfig)
    dictionary: str = "nuscenes"
    num_cpus: int | None = None


def pairing_schema():
    import pyarrow as pa

    return pa.schema([
        ("sample_token", pa.string()), ("scene", pa.string()), ("timestamp", pa.int64()),
        ("num_points", pa.int32()), ("points", pa.list_(pa.float32())), ("labels", pa.list_(pa.uint8())),
        ("pseudo", pa.list_(pa.uint8())), ("pseudo_code", pa.list_(pa.int32())),
        ("superpoint", pa.list_(pa.int32())), ("pair_point", pa.list_(pa.int32())),
        ("pair_superpixel", pa.list_(pa.int32())), ("sp_id", pa.list_(pa.int32())),
        ("sp_text", pa.list_(pa.int32())), ("sp_feat", pa.binary()), ("feat_dim", pa.int32()),
    ], metadata={b"afov.pairing_schema": PAIRING_SCHEMA_VERSION.encode()})


def pair_scene(sweeps_shard: str, teacher_shard: str, out_uri: str, cfg: PairPassConfig) -> dict:
    """Pair one scene and commit ``<out_uri>/<scene>.parquet``; returns summed statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from afov_ray.errors import DataError
    from afov_ray.geometry.pairing import CameraMasks, encode_official, pair_keyframe
    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_parquet
    from afov_ray.storage.sweeps import table_to_keyframes
    from afov_ray.teachers.dictionary import ClassDictionary
    from afov_ray.teachers.schema import from_table

    d = ClassDictionary.load(cfg.dictionary)
    raw_to_eval = np.zeros(256, dtype=np.uint8)
    for r, e in d.raw_to_eval.items():
        raw_to_eval[int(r)] = e
    fs, p = suri.resolve(sweeps_shard)
    keyframes = table_to_keyframes(pq.read_table(p, filesystem=fs))
    fs, p = suri.resolve(teacher_shard)
    images = {(im.sample_token, im.camera): im for im in from_table(pq.read_table(p, filesystem=fs))}
    rows, errors = [], []
    totals = {"keyframes": 0, "num_points": 0, "labelled": 0, "scored": 0, "agree": 0,
              "per_class_gt": np.zeros(17, np.int64), "per_class_labelled": np.zeros(17, np.int64),
              "per_class_agree": np.zeros(17, np.int64), "missing_cameras": 0}
    stride = cfg.pairing.superpixel_stride
    for kf in keyframes:
        try:
            masks = []
            for cam in kf.cameras:
                im = images.get((kf.sample_token, cam.channel))
                masks.append(None if im is None else CameraMasks(im.mask_map, dict(zip(
                    im.mask_ids.tolist(), im.text_index.tolist()))))
            pr = pair_keyframe(kf, masks, d.text_to_raw, raw_to_eval, cfg.pairing)
        except DataError as exc:
            errors.append({"item": exc.item, "message": exc.message})
            continue
        keep = pr.mask > 0
        sp_ids, sp_text, sp_feat = [], [], []
        for ci, cam in enumerate(kf.cameras):
            im = images.get((kf.sample_token, cam.channel))
            if im is None:
                continue
            sp_ids.append(ci * stride + np.asarray(im.mask_ids, dtype=np.int64))
            sp_text.append(np.asarray(im.text_index, dtype=np.int64))
            sp_feat.append(np.asarray(im.features, dtype=np.float16))
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
        totals["keyframes"] += 1
        totals["missing_cameras"] += len(st["missing_cameras"])
        for k in ("num_points", "labelled", "scored", "agree"):
            totals[k] += int(st.get(k, 0))
        for k in ("per_class_gt", "per_class_labelled", "per_class_agree"):
            if k in st:
                totals[k] += np.asarray(st[k], dtype=np.int64)
    if rows:
        table = pa.Table.from_pylist(rows, schema=pairing_schema())
        scene = keyframes[0].scene
        atomic_write_parquet(suri.join(out_uri, f"{scene}.parquet"), table)
    totals = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in totals.items()}
    totals["errors"] = errors
    return totals


def summarize(stats: list[dict], class_names: list[str] | None = None) -> dict:
    """Sum per-scene statistics; coverage, agreement, and per-class coverage/agreement."""
    keys = ("keyframes", "num_points", "labelled", "scored", "agree", "missing_cameras")
    tot = {k: int(sum(s.get(k, 0) for s in stats)) for k in keys}
    per = {k: np.sum([s[k] for s in stats if k in s], axis=0) if stats else np.zeros(17)
           for k in ("per_class_gt", "per_class_labelled", "per_class_agree")}
    tot["coverage"] = tot["labelled"] / max(tot["num_points"], 1)
    tot["agreement"] = tot["agree"] / max(tot["scored"], 1)
    names = class_names or [str(i) for i in range(len(per["per_class_gt"]))]
    tot["per_class"] = {
        names[c]: {"points": int(per["per_class_gt"][c]),
                   "coverage": float(per["per_class_labelled"][c] / max(per["per_class_gt"][c], 1)),
                   "agreement": float(per["per_class_agree"][c] / max(per["per_class_labelled"][c], 1))}
        for c in range(1, len(per["per_class_gt"])) if per["per_class_gt"][c] > 0}
    tot["errors"] = [e for s in stats for e in s.get("errors", [])]
    return tot


def run_pair_pass(sweeps_uri: str, teacher_run_uri: str, out_uri: str, cfg: PairPassConfig,
                  progress: bool = True) -> dict:
    """Pair every scene that has both a sweep shard and a teacher shard; skip committed scenes."""
    import ray
    from tqdm import tqdm

    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_json
    from afov_ray.teachers.dictionary import ClassDictionary

    images_uri = suri.join(teacher_run_uri, "images")
    sweeps = {n[:-8] for n in suri.listdir(sweeps_uri) if n.endswith(".parquet")}
    teach = {n[:-8] for n in suri.listdir(images_uri) if n.endswith(".parquet")}
    done = {n[:-8] for n in suri.listdir(out_uri) if n.endswith(".parquet")} if suri.exists(out_uri) else set()
    todo = sorted((sweeps & teach) - done)
    remote = ray.remote(num_cpus=1)(pair_scene)
    refs = [remote.remote(suri.join(sweeps_uri, f"{s}.parquet"), suri.join(images_uri, f"{s}.parquet"),
                          out_uri, cfg) for s in todo]
    stats = []
    bar = tqdm(total=len(refs), unit="scene", desc="pair", disable=not progress)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        stats.append(ray.get(ready[0]))
        bar.update(1)
    bar.close()
    d = ClassDictionary.load(cfg.dictionary)
    summary = summarize(stats, list(d.eval_class_names))
    summary.update(scenes_new=len(todo), scenes_done=len(done), scenes_without_teacher=sorted(sweeps - teach))
    if todo:
        atomic_write_json(suri.join(out_uri, "_stats.json"), summary)
    return summary
