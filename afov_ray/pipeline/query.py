"""query: text prompts against a TMP model's point features -> per-point scores + masks (docs/query.md).

A TMP model (``models:/afov-tmp@current``) puts every point in the 2D teacher's text-image space. A prompt's
embedding in that space (``afov_ray.pipeline.text_space``: the teacher's CLIP text tower when its weights are
given, else the teacher run's stored rows of the dictionary's texts) scores each point by cosine similarity
(``afov_ray.eval.zeroshot``). Per prompt and point the pass writes:

- ``scores``: the cosine of the point's (voxel's) feature with the prompt, in [-1, 1];
- ``mask``: ``score >= threshold`` when ``threshold`` is set; else "the prompt wins": its score is at least the
  score of every dictionary text of another category (the prompt's categories: those of its nearest texts).

Items are scenes on the shard-pass layer with ``compute="actors"``, as in predict: each actor builds the model
once and scores one scene at a time. Query shard schema, one row per scan (``P`` prompts, ``N`` points):

=============  ===================  ==========================================================
sample_token   string
scene          string
lidar_token    string (null)        lidar sample_data token
num_points     int32                N
xyz            list<float32>        N*3, LiDAR frame, row-major
gt             list<uint8> (null)   N ground-truth eval labels (0 = ignore)
pseudo         list<uint8> (null)   N 2D pseudo-labels (pairing input only)
visible        list<bool> (null)    N camera-visible mask (pairing input)
scores         list<float16>        P*N cosine scores, prompt-major (scores[p*N + i])
mask           list<bool>           P*N masks, prompt-major
=============  ===================  ==========================================================

The prompts (in order) are in the schema metadata (``afov.query_prompts``, JSON) and the manifest. When the
scans have ground truth, the summary says per prompt how well its scores pick out the prompt's class (the
class of its nearest dictionary text): mean score of that class's points vs the other labelled points and the
ROC AUC (from 0.005-wide score histograms merged over scenes), and the mean score per class.

After the pass, on the driver: BEV and camera pictures of the first ``pictures`` scans (scores on one colour
scale with a colour bar, ``afov_ray.viz.plots``) and 3D viewer pages + .ply of the first ``viewer_scans`` scans
(score layers, mask layers, ground truth; docs/viewer.md), under the local folder ``view``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch

from afov_ray.cli import print_summary
from afov_ray.config import ConfigError, option, to_dict
from afov_ray.eval.zeroshot import (
    SCORE_BINS,
    auc_from_histograms,
    prompt_categories,
    prompt_scores,
    score_histogram,
    winning_mask,
)
from afov_ray.log import get_logger
from afov_ray.models.spec import ModelSpec, check_overrides
from afov_ray.pipeline.predict import (
    build_network,
    forward_scans,
    input_kind,
    lidar_tokens,
    read_scans,
    scan_columns,
    select_scenes,
)
from afov_ray.pipeline.scan_views import camera_view, row_xyz, scan_tag, write_views
from afov_ray.pipeline.shard_pass import ExecConfig, ItemResult, PassItem, PassSummary, ShardPass, run_pass
from afov_ray.pipeline.text_space import TextSpace, encode_prompts, load_text_space, require_features_model
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import shards as S
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import atomic_write_json
from afov_ray.train.registry import load_model
from afov_ray.viz import plots
from afov_ray.viz.palette import IGNORE_RGB, score_colors
from afov_ray.viz.viewer import LayerSpec

log = get_logger(__name__)

QUERY_SCHEMA_VERSION = 1
PROMPTS_KEY = b"afov.query_prompts"
MASK_RGB = (0.95, 0.25, 0.2)


@dataclass
class QueryConfig:
    model: str = option("models:/afov-tmp@current", "TMP (features) model URI: models:/name@alias, "
                                                   "models:/name/version, runs:/..., a checkpoint folder or .pt")
    tracking_uri: str | None = option(None, "MLflow tracking URI for models:/ and runs:/ (default "
                                            "$MLFLOW_TRACKING_URI)")
    teacher_run: str = option("", "the teacher run folder the model learnt from (its text_embedding.npy and "
                                  "run.json: the text space of the features)")
    prompts: list[str] = option([], "text prompts, e.g. [car,road,tree]; without clip_weights only texts of the "
                                    "class dictionary")
    threshold: float | None = option(None, "mask = cosine score >= threshold; null: the prompt wins against every "
                                           "dictionary text of another category", min=-1, max=1)
    clip_weights: str = option("", "the teacher's local CLIP weights: encode free prompts with its text tower "
                                   "(MaskCLIP teacher runs); empty: only the dictionary texts the run stored")
    clip_model: Literal["ViT-B-16", "ViT-L-14-336", "tiny"] | None = option(
        None, "CLIP architecture; null: the teacher run's (needed for a run without MaskCLIP settings)")
    templates: Literal["imagenet", "vild", "plain"] | None = option(
        None, "prompt templates; null: the teacher run's")
    clip_check: bool = option(True, "refuse CLIP weights / templates that do not reproduce the teacher run's "
                                    "stored text embeddings")
    clip_device: str = option("auto", "device of the CLIP text tower: auto | cpu | cuda")
    dictionary: str | None = option(None, "class dictionary of the teacher run; null: the model's")
    engine: Literal["torch", "minkowski", "spconv"] = option("torch", "sparse-conv engine to run the model on")
    source: Literal["auto", "pairing", "sweeps"] = option("auto", "input shard kind (auto: from the columns)")
    sweeps: str = option("", "sweep shards folder: lidar tokens for pairing input, calibration for camera pictures")
    dataroot: str = option("", "dataset root with the camera images (camera pictures)")
    camera: str = option("CAM_FRONT", "camera of the overlay pictures")
    scenes: list[str] | None = option(None, "restrict to these scenes")
    samples: list[str] | None = option(None, "restrict to these sample tokens (e.g. one scan)")
    split_file: str | None = option(None, "split file (datasets.splits); restricts the scenes to `split`")
    split: str = option("val", "split name inside split_file")
    scans_per_forward: int = option(1, "scans forwarded together (eval-mode BN: same result)", min=1)
    pictures: int = option(2, "scans drawn as BEV + camera pictures (scores, colour bar)", min=0)
    viewer_scans: int = option(2, "scans written as 3D viewer pages (score and mask layers) + .ply", min=0)
    exec: ExecConfig = option(ExecConfig(), "how items run (an actor pool: each actor holds the model)")


@dataclass
class Prompts:
    """The prompts, their (P, D) embeddings and what the masks compare them with."""

    texts: list[str]
    embeddings: np.ndarray
    how: str
    own_categories: list[set[int]]          # categories of each prompt's nearest dictionary texts
    classes: list[int | None]               # the prompt's evaluation class (None: none or ambiguous)


def query_schema(prompts: list[str]) -> pa.Schema:
    return pa.schema([
        ("sample_token", pa.string()), ("scene", pa.string()), ("lidar_token", pa.string()),
        ("num_points", pa.int32()), ("xyz", pa.list_(pa.float32())), ("gt", pa.list_(pa.uint8())),
        ("pseudo", pa.list_(pa.uint8())), ("visible", pa.list_(pa.bool_())), ("scores", pa.list_(pa.float16())),
        ("mask", pa.list_(pa.bool_())),
    ], metadata={b"afov.query_schema": str(QUERY_SCHEMA_VERSION).encode(),
                 PROMPTS_KEY: json.dumps(list(prompts)).encode()})


def read_query_shard(shard: S.Shard | str, verify: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
    """(prompts, rows) of one query shard; each row's ``scores`` is (P, N) float32 and ``mask`` (P, N) bool."""
    if isinstance(shard, str):
        shard = S.Shard(shard.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet"), shard)
    table = S.read_table(shard, verify=verify)
    S.require_columns(table, ["sample_token", "scene", "num_points", "xyz", "scores", "mask"], shard.uri,
                      "query shard")
    prompts = json.loads((table.schema.metadata or {}).get(PROMPTS_KEY, b"[]"))
    rows = []
    for r in table.to_pylist():
        n = int(r["num_points"])
        out = dict(r)
        out["xyz"] = np.asarray(r["xyz"], np.float32)
        out["scores"] = np.asarray(r["scores"], np.float32).reshape(len(prompts), n)
        out["mask"] = np.asarray(r["mask"], bool).reshape(len(prompts), n)
        for k, dt in (("gt", np.uint8), ("pseudo", np.uint8), ("visible", bool)):
            if r.get(k) is not None:
                out[k] = np.asarray(r[k], dt)
        rows.append(out)
    return prompts, rows


def resolve_prompts(cfg: QueryConfig, space: TextSpace) -> Prompts:
    """Encode the prompts (CLIP text tower or stored rows) and find each one's categories and class."""
    emb, how = encode_prompts(space, list(cfg.prompts), "query.prompts", cfg.clip_weights, cfg.clip_model,
                              cfg.templates, cfg.clip_device, cfg.clip_check)
    d = space.dictionary
    own = prompt_categories(emb, space.texts, d.text_to_category)
    classes = []
    for cats in own:
        ids = {int(d.category_to_eval[c]) for c in cats}
        classes.append(ids.pop() if len(ids) == 1 and 0 not in ids else None)
    return Prompts(list(cfg.prompts), emb, how, own, classes)


class QueryPass(ShardPass):
    name = "query"
    compute = "actors"
    schema_name = "query"
    schema_version = QUERY_SCHEMA_VERSION

    def __init__(self, cfg: QueryConfig, inputs: dict[str, S.Shard], out_uri: str, spec: ModelSpec,
                 state: dict[str, torch.Tensor], kind: str, space: TextSpace, prompts: Prompts,
                 sweeps: dict[str, S.Shard] | None = None):
        super().__init__(out_uri, cfg.exec)
        self.cfg, self.inputs, self.spec, self.state, self.kind = cfg, inputs, spec, state, kind
        self.texts, self.text_to_category = space.texts, space.dictionary.text_to_category
        self.num_classes = space.dictionary.num_eval_classes
        self.prompts, self.sweeps = prompts, sweeps or {}
        self.model = None
        self.device = "cpu"

    def fingerprint(self) -> dict:
        return {"model": self.cfg.model, "spec": self.spec.to_dict(), "teacher_run": self.cfg.teacher_run,
                "prompts": self.prompts.texts, "threshold": self.cfg.threshold, "how": self.prompts.how,
                "embeddings": hashlib.sha256(np.ascontiguousarray(self.prompts.embeddings, np.float32)).hexdigest()[:16],
                "samples": self.cfg.samples}

    def items(self) -> list[PassItem]:
        chosen = select_scenes(list(self.inputs), self.cfg.scenes, self.cfg.split_file, self.cfg.split)
        if self.cfg.samples is not None:   # only the scenes holding a selected scan
            want = set(self.cfg.samples)
            chosen = [s for s in chosen
                      if want & set(S.read_table(self.inputs[s], ["sample_token"]).column(0).to_pylist())]
            if not chosen:
                raise ConfigError(f"config key 'query.samples': none of {sorted(want)[:3]} is a scan of the "
                                  f"selected scenes")
        return [PassItem(s) for s in chosen]

    def manifest_info(self) -> dict:
        return {"prompts": self.prompts.texts, "prompt_encoding": self.prompts.how}

    def setup(self) -> None:
        self.device = "cuda" if self.cfg.exec.use_gpu and torch.cuda.is_available() else "cpu"
        self.model = build_network(self.spec, self.state, self.cfg.engine, self.cfg.model).to(self.device)

    @torch.inference_mode()
    def score(self, rows: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per scan: (scores (P, N) float32, mask (P, N) bool)."""
        emb = torch.as_tensor(self.prompts.embeddings, device=self.device)
        texts = torch.as_tensor(self.texts, device=self.device)
        out = []
        for feats, inverses in forward_scans(self.model, rows, self.spec, self.cfg.scans_per_forward, self.device):
            s = prompt_scores(feats, emb)                                                   # (V, P)
            if self.cfg.threshold is not None:
                m = s >= self.cfg.threshold
            else:
                m = winning_mask(s, prompt_scores(feats, texts), self.text_to_category, self.prompts.own_categories)
            s, m = s.cpu(), m.cpu()
            out += [(s[idx].T.numpy(), m[idx].T.numpy()) for idx in inverses]
        return out

    def run_item(self, item: PassItem) -> ItemResult:
        good, skipped = read_scans(self.inputs[item.key], self.kind)
        if self.cfg.samples is not None:
            good = [r for r in good if str(r["sample_token"]) in set(self.cfg.samples)]
        tokens = lidar_tokens(self.sweeps, item.key) if self.kind == "pairing" else {}
        scored = self.score(good)
        P, C = len(self.prompts.texts), self.num_classes
        sums, counts = np.zeros((P, C)), np.zeros(C, np.int64)
        h_in, h_out = np.zeros((P, SCORE_BINS), np.int64), np.zeros((P, SCORE_BINS), np.int64)
        out_rows = []
        for r, (s, m) in zip(good, scored):
            row = scan_columns(r, tokens)
            out_rows.append({**row, "scores": s.astype(np.float16).ravel(), "mask": m.ravel()})
            gt = row["gt"]
            if gt is None or len(gt) != s.shape[1] or (len(gt) and int(gt.max()) >= C):
                continue    # no usable ground truth: the scan is scored, not measured
            gt = gt.astype(np.int64)
            counts += np.bincount(gt, minlength=C)
            for p in range(P):
                sums[p] += np.bincount(gt, weights=s[p], minlength=C)
                c = self.prompts.classes[p]
                if c is not None:
                    h_in[p] += score_histogram(s[p][gt == c])
                    h_out[p] += score_histogram(s[p][(gt != c) & (gt != 0)])
        if not out_rows:
            return ItemResult(item.key, skipped=skipped)
        entry = self.commit_table(item.key, pa.Table.from_pylist(out_rows, schema=query_schema(self.prompts.texts)))
        return ItemResult(item.key, shard=entry, skipped=skipped, stats={
            "scans": len(out_rows), "points": int(sum(int(r["num_points"]) for r in good)),
            "mask_points": [int(sum(int(m[p].sum()) for _, m in scored)) for p in range(P)],
            "class_sums": sums.tolist(), "class_counts": counts.tolist(), "hist_in": h_in.tolist(),
            "hist_out": h_out.tolist()})

    def summarize(self, records: list[dict]) -> dict:
        P, C = len(self.prompts.texts), self.num_classes
        sums, counts = np.zeros((P, C)), np.zeros(C, np.int64)
        h_in, h_out = np.zeros((P, SCORE_BINS), np.int64), np.zeros((P, SCORE_BINS), np.int64)
        mask = np.zeros(P, np.int64)
        scans = points = 0
        for rec in records:
            st = rec["stats"]
            if not st.get("scans"):
                continue
            scans, points = scans + int(st["scans"]), points + int(st["points"])
            mask += np.asarray(st["mask_points"], np.int64)
            sums += np.asarray(st["class_sums"])
            counts += np.asarray(st["class_counts"], np.int64)
            h_in += np.asarray(st["hist_in"], np.int64)
            h_out += np.asarray(st["hist_out"], np.int64)
        return {"scans": scans, "points": points, "prompts": self.prompts.texts, "prompt_encoding": self.prompts.how,
                "per_prompt": prompt_report(self.prompts, mask, sums, counts, h_in, h_out)}


def prompt_report(prompts: Prompts, mask: np.ndarray, sums: np.ndarray, counts: np.ndarray, h_in: np.ndarray,
                  h_out: np.ndarray) -> dict:
    """Per prompt: mask size, its class, mean score of that class's points vs the other labelled points, AUC
    (binned), and the mean score per class (labelled points)."""
    out = {}
    for p, text in enumerate(prompts.texts):
        c = prompts.classes[p]
        per_class = {int(k): float(sums[p, k] / counts[k]) for k in range(1, len(counts)) if counts[k]}
        rep: dict[str, Any] = {"mask_points": int(mask[p]), "class": c, "mean_score_by_class": per_class}
        if c is not None and counts[c]:
            n_in, n_out = int(counts[c]), int(counts[1:].sum() - counts[c])
            rep.update(mean_in=float(sums[p, c] / n_in),
                       mean_out=float((sums[p, 1:].sum() - sums[p, c]) / max(n_out, 1)) if n_out else float("nan"),
                       auc=auc_from_histograms(h_in[p], h_out[p]), n_in=n_in, n_out=n_out)
        out[text] = rep
    return out


def _fmt(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


def report_lines(stats: dict, class_names: list[str]) -> list[str]:
    """A readable table of the summary's per-prompt report."""
    lines = [stats.get("prompt_encoding", ""),
             "| prompt | its class | mask points | mean score: class points | other labelled points | AUC | "
             "top classes by mean score |", "|---|---|---:|---:|---:|---:|---|"]
    for text, r in stats.get("per_prompt", {}).items():
        top = sorted(r["mean_score_by_class"].items(), key=lambda kv: -kv[1])[:3]
        tops = ", ".join(f"{class_names[k]} {v:.3f}" for k, v in top)
        cname = class_names[r["class"]] if r.get("class") is not None else "–"
        mean_in, mean_out, auc = (_fmt(r.get(k)) for k in ("mean_in", "mean_out", "auc"))
        lines.append(f"| {text} | {cname} | {r['mask_points']} | {mean_in} | {mean_out} | {auc} | {tops} |")
    return lines

# ------------------------------------------------------------------------------------------------
# pictures and viewer pages


def score_range(scores: np.ndarray) -> tuple[float, float]:
    """A shared colour scale for one scan's prompts: 1st to 99.9th percentile, to 0.05."""
    s = scores[np.isfinite(scores)]
    if not s.size:
        return 0.0, 1.0
    lo, hi = np.floor(np.percentile(s, 1) * 20) / 20, np.ceil(np.percentile(s, 99.9) * 20) / 20
    return float(lo), float(hi if hi > lo else lo + 0.05)


def query_layers(prompts: list[str]):
    def layers(row: dict) -> dict[str, LayerSpec]:
        lo, hi = score_range(row["scores"])
        out: dict[str, LayerSpec] = {}
        for p, text in enumerate(prompts):
            out[f"score: {text}"] = LayerSpec.continuous(row["scores"][p], lo, hi, label=f"cosine with '{text}'")
        for p, text in enumerate(prompts):
            out[f"mask: {text}"] = LayerSpec.categorical(row["mask"][p].astype(np.int64), class_names=["other", text],
                                                         palette=np.asarray([IGNORE_RGB, MASK_RGB]))
        if row.get("gt") is not None and len(row["gt"]) == int(row["num_points"]):
            out["ground truth"] = LayerSpec.categorical(np.asarray(row["gt"], np.int64))
        return out
    return layers


def query_ply(prompts: list[str]):
    def ply(row: dict):
        lo, hi = score_range(row["scores"])
        scalars: dict[str, np.ndarray] = {}
        for p in range(len(prompts)):
            scalars[f"score_{p}"] = row["scores"][p].astype(np.float32)
            scalars[f"mask_{p}"] = row["mask"][p]
        if row.get("gt") is not None and len(row["gt"]) == int(row["num_points"]):
            scalars["gt"] = np.asarray(row["gt"], np.int64)
        return score_colors(row["scores"][0], lo, hi), scalars
    return ply


def write_pictures(out_uri: str, view: str, cfg: QueryConfig, class_names: list[str]) -> dict:
    """BEV + camera pictures of the first ``cfg.pictures`` scans and viewer pages + .ply of the first
    ``cfg.viewer_scans`` scans of the query shards, under the local folder ``view``."""
    shards = S.open_folder(out_uri, require_manifest=False, what="query folder")
    prompts = list(cfg.prompts)
    pics: list[str] = []

    def rows():
        for scene in sorted(shards):
            yield from read_query_shard(shards[scene])[1]

    n = 0
    for row in rows():
        if n >= cfg.pictures:
            break
        lo, hi = score_range(row["scores"])
        tag, head = scan_tag(row), f"{row['scene']} / {row['sample_token']}"
        quoted = [f"'{p}'" for p in prompts]
        pics.append(plots.plot_bev_scores(row_xyz(row), row["scores"], quoted, Path(view) / f"bev_{tag}.png",
                                          f"{head}: cosine score per prompt", lo, hi, label="cosine score",
                                          masks=row["mask"]))
        cam = camera_view(row, cfg.sweeps, cfg.dataroot, cfg.camera) if cfg.sweeps and cfg.dataroot else None
        if cam is not None:
            image, proj, channel = cam
            pics.append(plots.plot_camera_scores(image, proj.uv, row["scores"][:, proj.point_idx], quoted,
                                                 Path(view) / f"camera_{tag}.png", f"{head} {channel}", lo, hi,
                                                 label="cosine score"))
        n += 1
    views = None
    if cfg.viewer_scans:
        views = write_views(rows(), Path(view) / "viewer", cfg.viewer_scans, query_layers(prompts),
                            query_ply(prompts), class_names=class_names,
                            title="AFOV text queries: " + ", ".join(prompts),
                            comments=[f"score_{i}, mask_{i}: prompt {p!r}" for i, p in enumerate(prompts)])
    return {"pictures": pics, "pages": [p.path for p in views.pages] if views else [],
            "ply": views.plys if views else [], "index": views.index if views else None}

# ------------------------------------------------------------------------------------------------
# driver


def load_for_query(cfg: QueryConfig) -> tuple[ModelSpec, dict[str, torch.Tensor], TextSpace, Prompts]:
    """The TMP model (weights + contract), its text space and the encoded prompts, checked on the driver."""
    state, spec = load_model(cfg.model, tracking_uri=cfg.tracking_uri)
    spec = require_features_model(spec, cfg.model)
    check_overrides(spec, cfg.model, **{"query.dictionary": ("dictionary", cfg.dictionary)})
    space = load_text_space(cfg.teacher_run, spec, "query.teacher_run", cfg.dictionary)
    build_network(spec, state, "torch", cfg.model)   # fail fast on weights that do not fit
    prompts = resolve_prompts(cfg, space)
    return spec, state, space, prompts


def run_query(in_uri: str, out_uri: str, cfg: QueryConfig, view: str = "") -> PassSummary:
    """Score every selected scan of ``in_uri`` for the prompts (resuming); pictures and viewer pages go to the
    local folder ``view`` (none when empty). Returns the pass summary (``stats["per_prompt"]``, ``stats["view"]``)."""
    inputs = S.open_folder(in_uri, require_manifest=cfg.exec.require_manifest, what="input folder")
    first = next(iter(inputs.values()))
    kind = input_kind(S.read_schema(first).names, cfg.source, first.uri)
    sweeps = S.open_folder(cfg.sweeps, require_manifest=cfg.exec.require_manifest, what="sweeps folder") \
        if cfg.sweeps else None
    spec, state, space, prompts = load_for_query(cfg)
    log.info("query: %s", prompts.how)
    if cfg.exec.use_ray:
        init_ray()
    t0 = time.perf_counter()
    summary = run_pass(QueryPass(cfg, inputs, out_uri, spec, state, kind, space, prompts, sweeps))
    wall = time.perf_counter() - t0
    summary.stats["scans_per_second"] = summary.stats.get("scans", 0) / wall if wall > 0 else 0.0
    summary.stats["class_names"] = list(space.dictionary.eval_class_names)
    if view and summary.manifest_written:
        summary.stats["view"] = write_pictures(out_uri, view, cfg, summary.stats["class_names"])
        atomic_write_json(U.join(view, "query_summary.json"),
                          json.loads(json.dumps({"stats": summary.stats, "config": to_dict(cfg)}, default=str)))
    return summary


@dataclass
class QueryJob(RayKeys):
    input: str = option("outputs/demo/pairing", "pairing or sweeps shards folder URI")
    out: str = option("outputs/demo/query", "query shards folder URI (per-point scores and masks)")
    view: str = option("", "local folder for pictures, viewer pages and .ply; empty: <out>/view (out local)")
    query: QueryConfig = option(QueryConfig(), "model, prompts, masks, pictures")


def query_job(cfg: QueryJob) -> int:
    """The body of ``jobs/query.py``."""
    if not cfg.query.prompts:
        raise ConfigError("config key 'query.prompts': give at least one prompt, e.g. query.prompts=[car,road]")
    view = cfg.view or ("" if U.is_s3(cfg.out) else U.join(cfg.out, "view"))
    if cfg.query.exec.use_ray:
        cfg.start_ray()
    summary = run_query(cfg.input, cfg.out, cfg.query, view)
    print_summary(summary)
    print("\n".join(report_lines(summary.stats, summary.stats["class_names"])))
    v = summary.stats.get("view") or {}
    if v.get("index"):
        print(f"viewer: {v['index']} ({len(v['pages'])} pages, open in a browser); pictures: {len(v['pictures'])} "
              f"under {view}")
    return summary.exit_code
