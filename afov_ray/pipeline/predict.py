"""predict: a trained segmentation model over a set of scans -> prediction shards.

Inputs are pairing shards (``afov_ray.pipeline.pair``) or sweep shards (``afov_ray.datasets.sweeps``),
one Parquet file per scene; the kind is detected from the columns (``source="auto"``) or named. Items are
scenes on the shard-pass layer with ``compute="actors"``: each actor builds the model once (from the
weights the driver loaded once and shipped through the object store) and predicts one scene at a time.

The network is built from the model's own contract (``afov_ray.models.spec.ModelSpec``: architecture,
classes, voxel grid and size); ``grid`` / ``voxel_size`` set here must agree with it.

**Zero-shot from a TMP model** (``teacher_run`` set, docs/query.md): a TMP model has no classifier; its
features live in the teacher's text space. Each point then takes the evaluation class of its most similar
class-dictionary text (``afov_ray.eval.zeroshot``), mapped text -> category -> class as the pseudo-labels are;
``logits`` (if kept) are the per-class best cosines, and ``suppress_class0`` leaves out the texts of ignored
categories. The output is an ordinary prediction shard (evaluate, AFI and the viewer read it alike).

Prediction shard schema (``afov_ray.pipeline.predictions``), one row per scan:

=============  ===================  ==========================================================
sample_token   string
scene          string
lidar_token    string (null)        lidar sample_data token (sweeps; joined for pairing input)
num_points     int32                N
xyz            list<float32>        N*3, LiDAR frame, row-major
pred           list<uint8>          N predictions in 0..C-1 (voxel argmax through the inverse map)
gt             list<uint8> (null)   N ground-truth eval labels (0 = ignore)
pseudo         list<uint8> (null)   N 2D pseudo-labels (pairing input only; 0 = none)
visible        list<bool> (null)    N camera-visible mask = ``superpoint >= 0`` (pairing input)
logits         list<float16> (null) N*C point logits (``with_logits``; off by default)
pred_afi       list<uint8> (null)   N AFI-refined labels (``afi=True``; see ``afov_ray.pipeline.refine``)
afi_changed    float64 (null)       fraction of points AFI changed
=============  ===================  ==========================================================

Class 0 (ignore) suppression (paper section 4; official ``utils/metrics.py`` / ``downstream/evaluate.py``):
the official trainer's validation sets the class-0 probability to 0 before argmax, the official final
``evaluate()`` does not. Here it is an explicit option, ``suppress_class0``, **on by default** (a
prediction of 0 is never useful and the nuScenes lidarseg submission requires 1..16); set it False to
reproduce the official final evaluation, whose files (and therefore the official AFI inputs) can hold 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.cli import print_summary
from afov_ray.config import ConfigError, option
from afov_ray.datasets.splits import read_split_file
from afov_ray.errors import DataError
from afov_ray.eval.metrics import suppress_class0 as _suppress_class0
from afov_ray.eval.zeroshot import ZeroShotSegmenter
from afov_ray.models.res16unet import build_model
from afov_ray.models.spec import ModelSpec, check_overrides
from afov_ray.pipeline.export import SubmissionConfig, submission_scenes, write_submission
from afov_ray.pipeline.predictions import PREDICTION_SCHEMA_VERSION, prediction_schema
from afov_ray.pipeline.refine import refine_scan
from afov_ray.pipeline.shard_pass import ExecConfig, ItemResult, PassItem, PassSummary, ShardPass, run_pass
from afov_ray.pipeline.text_space import TextSpace, load_text_space
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import shards as S
from afov_ray.train.data import IngestConfig, collate, prepare_row
from afov_ray.train.registry import load_model


@dataclass
class PredictConfig:
    model: str = option("", "model URI: models:/name@alias, models:/name/version, runs:/..., a checkpoint "
                            "folder or .pt file, or s3://")
    tracking_uri: str | None = option(None, "MLflow tracking URI for models:/ and runs:/ (default "
                                            "$MLFLOW_TRACKING_URI)")
    engine: Literal["torch", "minkowski", "spconv"] = option("torch", "sparse-conv engine to run the model on")
    source: Literal["auto", "pairing", "sweeps"] = option("auto", "input shard kind (auto: from the columns)")
    sweeps: str = option("", "sweep shards folder, to join lidar_token onto pairing input (submissions)")
    scenes: list[str] | None = option(None, "restrict to these scenes")
    split_file: str | None = option(None, "split file (datasets.splits); restricts the scenes to `split`")
    split: str = option("val", "split name inside split_file")
    suppress_class0: bool = option(True, "never predict class 0 (the official final evaluate: false)")
    teacher_run: str = option("", "zero-shot segmentation from a TMP (features) model: the teacher run folder it "
                                  "learnt from; each point takes the class of its most similar dictionary text "
                                  "(docs/query.md)")
    with_logits: bool = option(False, "also store per-point logits (float16)")
    name: Literal["res16unet34c", "minkunet18"] | None = option(
        None, "architecture; null: the model's (needed only for a checkpoint without a contract, e.g. official)")
    num_classes: int | None = option(None, "output classes; null: the model's (needed only for a checkpoint "
                                           "without a contract)", min=2)
    grid: Literal["cylindrical", "cartesian"] | None = option(None, "voxel grid; null: the model's (a different "
                                                                    "value is an error)")
    voxel_size: float | None = option(None, "voxel size in m; null: the model's (a different value is an error)",
                                      gt=0)
    intensity_offset: float | None = option(None, "added to the intensity feature; null: the model's (official "
                                                  "checkpoints: 0 nuScenes, 1 SemanticKITTI)")
    scans_per_forward: int = option(1, "scans forwarded together (eval-mode BN: same result)", min=1)
    afi: bool = option(False, "also run AFI on every scan (adds pred_afi)")
    afi_cfg: AFIConfig = option(AFIConfig(), "AFI settings when afi=true")
    exec: ExecConfig = option(ExecConfig(), "how items run (an actor pool: each actor holds the model)")


def select_scenes(available: list[str], scenes: list[str] | None, split_file: str | None,
                  split: str) -> list[str]:
    """Scenes to process: ``available`` restricted to ``scenes`` and / or a split of a split file."""
    keep = set(available)
    if scenes is not None:
        keep &= set(scenes)
    if split_file:

        splits = read_split_file(split_file)
        if split not in splits:
            raise DataError(str(split_file), f"no split {split!r}; has {sorted(splits)}")
        keep &= set(splits[split].scenes)
    return sorted(keep)

# ------------------------------------------------------------------------------------------------
# model


def resolve_spec(spec: ModelSpec | None, cfg: PredictConfig) -> ModelSpec:
    """The model's spec with this job's settings checked against it (a model without a spec, e.g. an
    official checkpoint, takes grid / voxel size from the config and the official defaults otherwise)."""
    if spec is None:
        return ModelSpec(name=cfg.name or "res16unet34c", out_channels=cfg.num_classes or 17,
                         grid=cfg.grid or "cylindrical", voxel_size=cfg.voxel_size or 0.1,
                         intensity_offset=cfg.intensity_offset or 0.0)
    check_overrides(spec, cfg.model, **{"predict.name": ("name", cfg.name),
                                        "predict.num_classes": ("out_channels", cfg.num_classes
                                                                if spec.task == "segmentation" else None),
                                        "predict.grid": ("grid", cfg.grid),
                                        "predict.voxel_size": ("voxel_size", cfg.voxel_size),
                                        "predict.intensity_offset": ("intensity_offset", cfg.intensity_offset)})
    return spec


def build_network(spec: ModelSpec, state: dict[str, torch.Tensor], engine: str = "torch",
                  source: str = "state") -> torch.nn.Module:
    """The network of ``spec`` (segmentation head or TMP features) with ``state`` loaded strictly, in eval
    mode. A missing / unexpected key or a shape mismatch raises DataError naming the key."""
    model = build_model(spec.name, spec.in_channels, spec.out_channels, engine, spec.bn_momentum,
                        normalize_features=spec.normalize_features)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise DataError(source, f"weights do not fit {spec.name}: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise DataError(f"{source}:{k}", f"shape {tuple(state[k].shape)} != model's {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_segmentation_model(spec: ModelSpec, state: dict[str, torch.Tensor], engine: str = "torch",
                             source: str = "state") -> torch.nn.Module:
    """``build_network`` for a segmentation model (a TMP model needs ``predict.teacher_run``: zero-shot)."""

    if spec.task != "segmentation":
        raise ConfigError(f"model {source} is a {spec.task} model (e.g. TMP), not a segmentation model; set "
                          f"predict.teacher_run for zero-shot segmentation from its features")
    return build_network(spec, state, engine, source)


def build_zeroshot_model(spec: ModelSpec, state: dict[str, torch.Tensor], space: TextSpace, engine: str = "torch",
                         source: str = "state") -> torch.nn.Module:
    """A TMP features model + the teacher run's dictionary texts, used as a segmentation network (its
    outputs are per-class scores, ``afov_ray.eval.zeroshot``)."""
    d = space.dictionary
    return ZeroShotSegmenter(build_network(spec, state, engine, source), space.texts, d.text_to_eval,
                             d.num_eval_classes).eval()


@torch.inference_mode()
def forward_scans(model: torch.nn.Module, rows: list[dict], spec: ModelSpec, scans_per_forward: int = 1,
                  device: str | torch.device = "cpu"):
    """Voxelise the input rows (pairing or sweeps row dicts) on the model's grid, forward them
    ``scans_per_forward`` at a time and yield ``(outputs (V, C) float32 on device, [point -> row of outputs,
    one index array per scan of the group])``. Eval-mode BN: the result does not depend on grouping."""

    ing = IngestConfig(grid=spec.grid, voxel_size=spec.voxel_size, intensity_offset=spec.intensity_offset,
                       target="gt", augment=False)
    step = max(1, scans_per_forward)
    for i in range(0, len(rows), step):
        group = rows[i:i + step]
        prepared = []
        for r in group:
            n = int(r["num_points"])
            if r.get("pseudo") is None:
                r = dict(r, pseudo=np.zeros(n, np.int64))
            prepared.append(prepare_row(r, ing))
        batch = collate(prepared)
        outputs = model(batch["coords"].to(device), batch["feats"].to(device)).float()
        offs = batch["point_offsets"].tolist()
        inv = batch["inverse"]
        yield outputs, [inv[offs[j]:offs[j + 1]] for j in range(len(group))]


@torch.inference_mode()
def predict_scans(model: torch.nn.Module, rows: list[dict], spec: ModelSpec, suppress_class0: bool = True,
                  with_logits: bool = False, scans_per_forward: int = 1,
                  device: str | torch.device = "cpu") -> list[dict]:
    """Predict every point of each input row (pairing or sweeps row dict).

    Returns per scan {"pred": (N,) uint8, "logits": (N, C) float16 or None}. Scans are forwarded
    ``scans_per_forward`` at a time (eval-mode BN: the result does not depend on grouping)."""

    out: list[dict] = []
    for logits, inverses in forward_scans(model, rows, spec, scans_per_forward, device):
        if suppress_class0:
            logits = _suppress_class0(logits)
        vox_pred = logits.argmax(1).cpu()
        for idx in inverses:
            point_logits = None
            if with_logits:
                lg = logits.cpu()[idx]
                point_logits = torch.where(torch.isinf(lg), torch.full_like(lg, -65504.0), lg).half().numpy()
            out.append({"pred": vox_pred[idx].numpy().astype(np.uint8), "logits": point_logits})
    return out


def read_scans(shard: S.Shard, kind: str) -> tuple[list[dict], list[dict]]:
    """The scans of one pairing or sweeps shard as row dicts, and the scans left out (bad or non-finite
    points) as skipped records."""
    want = ["sample_token", "scene", "num_points", "points", "labels"]
    want += ["pseudo", "superpoint"] if kind == "pairing" else ["lidar_token"]
    table = S.read_table(shard, want)
    S.check_key_column(table, shard)
    good, skipped = [], []
    for r in table.to_pylist():
        name = f"{r['scene']}/{r['sample_token']}"
        n = int(r["num_points"])
        pts = r["points"]
        if pts is None or len(pts) != 4 * n or n == 0:
            skipped.append({"item": name, "message": f"points has {0 if pts is None else len(pts)} values, "
                                                      f"expected 4*num_points = {4 * n} > 0"})
            continue
        if not np.isfinite(np.asarray(pts, np.float32)).all():
            skipped.append({"item": name, "message": "non-finite point coordinates"})
            continue
        good.append(r)
    return good, skipped


def scan_columns(r: dict, tokens: dict[str, str]) -> dict:
    """The per-scan columns every output shard of a model pass carries (identity, points, gt, pseudo, visible)."""
    n = int(r["num_points"])
    sp = r.get("superpoint")
    return {"sample_token": str(r["sample_token"]), "scene": str(r["scene"]),
            "lidar_token": r.get("lidar_token") or tokens.get(str(r["sample_token"])),
            "num_points": n, "xyz": np.asarray(r["points"], np.float32).reshape(n, 4)[:, :3].ravel(),
            "gt": None if r.get("labels") is None else np.asarray(r["labels"], np.uint8),
            "pseudo": None if r.get("pseudo") is None else np.asarray(r["pseudo"], np.uint8),
            "visible": None if sp is None else np.asarray(sp, np.int64) >= 0}


def lidar_tokens(sweeps: dict[str, S.Shard], scene: str) -> dict[str, str]:
    """sample_token -> lidar_token of a scene's sweep shard ({} when there is none)."""
    if scene not in sweeps:
        return {}
    t = S.read_table(sweeps[scene], ["sample_token", "lidar_token"])
    return dict(zip(t.column("sample_token").to_pylist(), t.column("lidar_token").to_pylist()))


# ------------------------------------------------------------------------------------------------
# the pass


def input_kind(columns: list[str], source: str, item: str) -> str:
    if source in ("pairing", "sweeps"):
        return source
    if "pseudo" in columns and "superpoint" in columns:
        return "pairing"
    if "lidar_token" in columns and "cam_K" in columns:
        return "sweeps"
    raise DataError(item, f"neither a pairing nor a sweeps shard (columns {columns[:8]}...)")


class PredictPass(ShardPass):
    name = "predict"
    compute = "actors"
    schema_name = "predictions"
    schema_version = PREDICTION_SCHEMA_VERSION

    def __init__(self, cfg: PredictConfig, inputs: dict[str, S.Shard], out_uri: str, spec: ModelSpec,
                 state: dict[str, torch.Tensor], kind: str, sweeps: dict[str, S.Shard] | None = None,
                 space: TextSpace | None = None):
        super().__init__(out_uri, cfg.exec)
        self.cfg, self.inputs, self.spec, self.state, self.kind = cfg, inputs, spec, state, kind
        self.sweeps = sweeps or {}
        self.space = space          # zero-shot from a TMP model: the teacher run's text table
        self.model = None
        self.device = "cpu"

    def fingerprint(self) -> dict:
        fp = {"model": self.cfg.model, "spec": self.spec.to_dict(), "suppress_class0": self.cfg.suppress_class0,
              "afi": self.cfg.afi, "with_logits": self.cfg.with_logits}
        if self.space is not None:
            fp["zeroshot_teacher_run"] = self.cfg.teacher_run
        return fp

    def items(self) -> list[PassItem]:
        chosen = select_scenes(list(self.inputs), self.cfg.scenes, self.cfg.split_file, self.cfg.split)
        if not chosen:
            why = (f"split {self.cfg.split!r} of {self.cfg.split_file}" if self.cfg.split_file else "") + \
                (f"{' and ' if self.cfg.split_file else ''}predict.scenes" if self.cfg.scenes is not None else "")
            raise DataError(self.out, f"no scene to predict: none of the {len(self.inputs)} input scenes is in {why}")
        return [PassItem(s) for s in chosen]

    def setup(self) -> None:
        self.device = "cuda" if self.cfg.exec.use_gpu and torch.cuda.is_available() else "cpu"
        if self.space is not None:
            model = build_zeroshot_model(self.spec, self.state, self.space, self.cfg.engine, self.cfg.model)
        else:
            model = build_segmentation_model(self.spec, self.state, self.cfg.engine, self.cfg.model)
        self.model = model.to(self.device)

    def run_item(self, item: PassItem) -> ItemResult:
        good, skipped = read_scans(self.inputs[item.key], self.kind)
        tokens = lidar_tokens(self.sweeps, item.key) if self.kind == "pairing" else {}
        preds = predict_scans(self.model, good, self.spec, self.cfg.suppress_class0, self.cfg.with_logits,
                              self.cfg.scans_per_forward, self.device)
        refined: list[tuple[np.ndarray | None, float | None]] = [(None, None)] * len(good)
        if self.cfg.afi:

            refined = []
            for r, p in zip(good, preds):
                xyz = np.asarray(r["points"], np.float32).reshape(-1, 4)[:, :3]
                pseudo = None if r.get("pseudo") is None else np.asarray(r["pseudo"], np.int64)
                try:
                    lab, st = refine_scan(f"{r['scene']}/{r['sample_token']}", xyz, p["pred"], pseudo,
                                          self.cfg.afi_cfg, self.device)
                    refined.append((lab, st["changed_fraction"]))
                except DataError as exc:
                    skipped.append({"item": exc.item, "message": f"AFI: {exc.message}"})
                    refined.append((None, None))
        out_rows = [{**scan_columns(r, tokens), "pred": p["pred"],
                     "logits": None if p["logits"] is None else p["logits"].ravel(),
                     "pred_afi": afi_lab, "afi_changed": changed}
                    for r, p, (afi_lab, changed) in zip(good, preds, refined)]
        if not out_rows:
            return ItemResult(item.key, skipped=skipped)
        entry = self.commit_table(item.key, pa.Table.from_pylist(out_rows, schema=prediction_schema()))
        return ItemResult(item.key, shard=entry, skipped=skipped,
                          stats={"scans": len(out_rows), "points": int(sum(int(r["num_points"]) for r in good))})

    def summarize(self, records: list[dict]) -> dict:
        scans = sum(int(r["stats"].get("scans", 0)) for r in records)
        points = sum(int(r["stats"].get("points", 0)) for r in records)
        secs = sum(float(r.get("seconds", 0.0)) for r in records)
        return {"scans": scans, "points": points, "item_seconds": secs,
                "scans_per_item_second": scans / secs if secs > 0 else 0.0}


def load_for_predict(cfg: PredictConfig) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The model's weights and spec (loaded once on the driver), with the job's settings checked."""

    state, spec = load_model(cfg.model, tracking_uri=cfg.tracking_uri)
    spec = resolve_spec(spec, cfg)
    if spec.task == "segmentation" or not cfg.teacher_run:
        build_segmentation_model(spec, state, "torch", cfg.model)  # fail fast on a mismatching model
    else:
        build_network(spec, state, "torch", cfg.model)
    return spec, state


def zeroshot_space(cfg: PredictConfig, spec: ModelSpec) -> TextSpace | None:
    """The teacher run's text table when ``cfg`` predicts zero-shot from a TMP model, else None."""
    if spec.task != "features":
        if cfg.teacher_run:
            raise ConfigError("config key 'predict.teacher_run': only for a TMP (features) model; "
                              f"{cfg.model} is a {spec.task} model")
        return None
    space = load_text_space(cfg.teacher_run, spec, "predict.teacher_run")
    if cfg.num_classes is not None and cfg.num_classes != space.dictionary.num_eval_classes:
        raise ConfigError(f"config key 'predict.num_classes' = {cfg.num_classes}: zero-shot labels are the "
                          f"{space.dictionary.num_eval_classes} classes of the {space.dictionary.name!r} dictionary")
    return space


def run_predict(in_uri: str, out_uri: str, cfg: PredictConfig) -> PassSummary:
    """Predict every selected scene of ``in_uri`` (resuming); returns the pass summary."""

    inputs = S.open_folder(in_uri, require_manifest=cfg.exec.require_manifest, what="input folder")
    first = next(iter(inputs.values()))
    kind = input_kind(S.read_schema(first).names, cfg.source, first.uri)
    sweeps = S.open_folder(cfg.sweeps, require_manifest=cfg.exec.require_manifest, what="sweeps folder") \
        if cfg.sweeps else None
    spec, state = load_for_predict(cfg)
    space = zeroshot_space(cfg, spec)
    if cfg.exec.use_ray:
        init_ray()
    t0 = time.perf_counter()
    summary = run_pass(PredictPass(cfg, inputs, out_uri, spec, state, kind, sweeps, space))
    wall = time.perf_counter() - t0
    summary.stats["scans_per_second"] = summary.stats.get("scans", 0) / wall if wall > 0 else 0.0
    return summary


@dataclass
class PredictJob(RayKeys):
    input: str = option("outputs/demo/pairing", "pairing or sweeps shards folder URI")
    out: str = option("outputs/demo/pred", "prediction shards folder URI")
    submission: str = option("", "if set: write benchmark submission files here (sub.format: nuScenes lidarseg "
                                 ".bin or SemanticKITTI .label; see sub.*)")
    predict: PredictConfig = option(PredictConfig(), "model and inference settings")
    sub: SubmissionConfig = option(SubmissionConfig(), "submission files")
    sub_version: str = option("v1.0-trainval", "nuScenes version (submission split names)")


def predict_job(cfg: PredictJob) -> int:
    """The body of ``jobs/predict.py``."""

    if not cfg.predict.model:
        raise ConfigError("config key 'predict.model': required (models:/name@alias, a checkpoint folder, ...)")
    if cfg.submission and not cfg.predict.suppress_class0 and cfg.sub.column == "pred":
        raise ConfigError("config key 'predict.suppress_class0': a submission needs true (predictions in 1..C-1)")
    if cfg.predict.exec.use_ray:
        cfg.start_ray()
    summary = run_predict(cfg.input, cfg.out, cfg.predict)
    print_summary(summary)
    print(f"{summary.stats.get('scans', 0)} scans predicted ({summary.stats.get('scans_per_second', 0):.2f} scans/s)")
    if cfg.submission and summary.manifest_written:
        info = write_submission(cfg.out, cfg.submission, cfg.sub,
                                scenes=submission_scenes(cfg.sub.split, cfg.sub_version, cfg.sub.format))
        print(f"submission: {info['files']} files, {info['points']} points -> {cfg.submission}")
    return summary.exit_code
