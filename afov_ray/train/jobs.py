"""Job-level configs and drivers of the three training jobs (``jobs/tmp.py``, ``jobs/distill.py``,
``jobs/finetune.py``); the scripts stay thin.

Every hyper-parameter of the official configs (official ``config/*.yaml``) is a config key; the presets
in ``configs/nuscenes/`` and ``configs/semantickitti/`` reproduce the official TMP / annotation-free /
downstream settings (docs/method.md lists them), and ``configs/demo.yaml`` composes tiny versions for
the generated demo dataset.

Splits come from a split file (``afov_ray.datasets.splits.write_split_file``): ``train_split`` names
the scenes trained on (``train``, the 1 % ``train_1pct``, ...), ``val_split`` those validated on. A
frame-level split (rule ``level: frame``, e.g. SemanticKITTI's ``train_1pct``) selects its keyframes, not
whole scenes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from afov_ray.cli import run_job
from afov_ray.config import ConfigError, config_hash, option, section, to_dict, validate
from afov_ray.datasets.splits import read_split_file
from afov_ray.errors import DataError
from afov_ray.runtime import init_ray
from afov_ray.storage import shards as S
from afov_ray.train.data import IngestConfig, scan_dataset
from afov_ray.train.optim import OptimConfig
from afov_ray.train.runner import LoopConfig, RunSettings, ScaleConfig, run_stage
from afov_ray.train.stages import ModelConfig, SegConfig, SegStage, TMPConfig, TMPStage
from afov_ray.train.tracking import TrackingConfig, check_connection, default_tracking_uri, git_commit, run_config


@dataclass
class DataConfig:
    pairing: str = option("outputs/demo/pairing", "pairing shards folder URI (local or s3://)")
    require_manifest: bool = option(True, "the pairing folder must be complete (have _manifest.json)")
    split_file: str | None = option(None, "split file (JSON, written by prepare); None = all scenes")
    train_split: str = option("train", "split trained on (train, train_1pct, ...)")
    val_split: str | None = option("val", "split validated on each epoch (segmentation stages); None: none")


@dataclass
class TrainJob:
    data: DataConfig = section(DataConfig, "training data")
    model: ModelConfig = section(ModelConfig, "network")
    ingest: IngestConfig = section(IngestConfig, "voxelisation and augmentation")
    loop: LoopConfig = section(LoopConfig, "epochs, batch, optimiser, tracking")
    scale: ScaleConfig = section(ScaleConfig, "Ray Train workers and resources")
    run: RunSettings = section(RunSettings, "Ray Train run: name, checkpoint storage, failures")
    tmp: TMPConfig = section(TMPConfig, "TMP losses and the teacher run")
    seg: SegConfig = section(SegConfig, "segmentation head (distillation, fine-tuning, probing)")


def split_scenes(cfg: DataConfig, name: str | None) -> list[str] | None:
    """Scenes of split ``name`` in the split file (None: no restriction); an empty split is a DataError
    saying which split is empty and why."""
    return split_selection(cfg, name)[0]


def split_selection(cfg: DataConfig, name: str | None) -> tuple[list[str] | None, list[str] | None]:
    """(scenes, keyframes) of split ``name``: keyframes only for a frame-level split (None otherwise: every
    keyframe of the scenes); (None, None) without a split file."""
    if cfg.split_file is None or name is None:
        return None, None

    splits = read_split_file(cfg.split_file)
    if name not in splits:
        raise DataError(cfg.split_file, f"no split {name!r} (the file has {sorted(splits)}); set data.train_split / "
                                        f"data.val_split")
    sp = splits[name]
    if not sp.scenes:
        why = sp.rule.get("rule", "") if isinstance(sp.rule, dict) else ""
        raise DataError(cfg.split_file, f"split {name!r} is empty (no scene of the prepared data is in it"
                                        + (f"; rule: {why}" if why else "") + ")")
    frame_level = isinstance(sp.rule, dict) and sp.rule.get("level") == "frame"
    return list(sp.scenes), (list(sp.keyframes) if frame_level else None)


def build_datasets(cfg: TrainJob, with_pairings: bool, train_target: str) -> dict:
    train_ingest = replace(cfg.ingest, with_pairings=with_pairings, target=train_target)
    ds = {"train": scan_dataset(cfg.data.pairing, train_ingest, *split_selection(cfg.data, cfg.data.train_split))}
    if cfg.data.val_split and cfg.data.split_file and not with_pairings:
        val_ingest = replace(cfg.ingest, with_pairings=False, target="gt", augment=False)
        ds["val"] = scan_dataset(cfg.data.pairing, val_ingest, *split_selection(cfg.data, cfg.data.val_split))
    return ds


TRAIN_KINDS = ("tmp", "distill", "finetune")


def make_stage(kind: str, cfg: TrainJob):
    """The ``Stage`` of a job kind, with its data sources for the lineage tags."""
    if kind == "tmp":
        return TMPStage(cfg.model, cfg.tmp, cfg.ingest, pairing=cfg.data.pairing)
    if kind in ("distill", "finetune"):
        # tmp.teacher_run, when set, names the teacher whose pseudo-labels the pairing shards hold
        return SegStage(cfg.model, cfg.seg, cfg.ingest, name=kind, pairing=cfg.data.pairing,
                        teacher_run=cfg.tmp.teacher_run or None)
    raise ValueError(f"unknown training job kind {kind!r} (one of {TRAIN_KINDS})")


def job_lineage(cfg: TrainJob) -> dict[str, str]:
    """Job-level lineage tags: hash of the resolved job config and the code's git commit."""

    return {"config_hash": config_hash(cfg), "git_commit": git_commit()}


# columns each kind reads from the pairing shards
REQUIRED_COLUMNS = {
    "tmp": ["sample_token", "scene", "num_points", "points", "pseudo", "pair_point", "pair_superpixel", "sp_id",
            "sp_text", "sp_feat", "feat_dim"],
    "distill": ["sample_token", "scene", "num_points", "points", "pseudo"],
    "finetune": ["sample_token", "scene", "num_points", "points", "labels"],
}


def check_data(kind: str, cfg: TrainJob) -> int:
    """Driver-side checks of the training data before Ray Train starts: the pairing folder (manifest,
    names, schema of the first shard), the splits, and enough scans for one step. Returns the number of
    training scans (from the manifest)."""
    shards = S.open_folder(cfg.data.pairing, require_manifest=cfg.data.require_manifest, what="pairing folder")
    scenes, keyframes = split_selection(cfg.data, cfg.data.train_split)
    train = S.select(shards, scenes)
    if not train:
        raise DataError(cfg.data.pairing, f"no shard of split {cfg.data.train_split!r} in the pairing folder")
    first = next(iter(train.values()))
    S.require_columns(S.read_schema(first), REQUIRED_COLUMNS[kind], first.uri, "pairing shard")
    if cfg.data.val_split and cfg.data.split_file and kind != "tmp":
        if not S.select(shards, split_scenes(cfg.data, cfg.data.val_split)):
            raise DataError(cfg.data.pairing, f"no shard of split {cfg.data.val_split!r} (data.val_split)")
    rows = sum(s.entry.rows for s in train.values() if s.entry is not None)
    if keyframes is not None:       # frame-level split: at most its keyframes (those prepared)
        rows = min(rows, len(keyframes))
    need = cfg.loop.batch_size * cfg.scale.num_workers
    if all(s.entry is not None for s in train.values()) and rows < need:
        raise ConfigError(f"config keys 'loop.batch_size' x 'scale.num_workers': {cfg.loop.batch_size} scans x "
                          f"{cfg.scale.num_workers} workers per step, but split {cfg.data.train_split!r} has {rows} "
                          f"scans: not one step would run")
    return rows


def run_train_job(kind: str, cfg: TrainJob, callbacks: list | None = None, lineage: dict | None = None):
    """kind: "tmp" | "distill" | "finetune" (fine-tuning or, with loop.linear_probe, linear probing).

    Everything that can be checked is checked here, on the driver, before a worker starts: the data, the
    stage's inputs (teacher run, text table), the initial weights (loaded once and shipped to the workers).
    ``callbacks`` go to the Train ``RunConfig`` (a Tune trial passes ``TuneReportCallback``);
    ``lineage`` adds tags to the run and the registered model beside the stage's and the job's own."""
    validate(cfg)
    as_given, given_lineage = to_dict(cfg), job_lineage(cfg)
    if cfg.model.tracking_uri is None and cfg.loop.tracking.tracking_uri:
        # one tracking store per job unless told otherwise: models:/ init resolves where the run is logged
        cfg = replace(cfg, model=replace(cfg.model, tracking_uri=cfg.loop.tracking.tracking_uri))
    stage = make_stage(kind, cfg)
    rows = check_data(kind, cfg)
    stage.check_inputs()
    init_state = stage.init_state()
    if cfg.loop.tracking.enabled:   # before Ray starts: a tracking store that is down is a quick one-line error
        check_connection(cfg.loop.tracking.tracking_uri or default_tracking_uri())
    init_ray(cfg.scale.address)
    if kind == "tmp":
        datasets = build_datasets(cfg, with_pairings=True, train_target="pseudo")
    else:
        datasets = build_datasets(cfg, with_pairings=False, train_target="pseudo" if kind == "distill" else "gt")
    steps = rows // max(cfg.loop.batch_size * cfg.scale.num_workers, 1) if rows else None
    return run_stage(stage, cfg.loop, cfg.scale, cfg.run, datasets, callbacks=callbacks,
                     lineage={**given_lineage, **(lineage or {})}, job_config=as_given,
                     init_state=init_state, steps_per_epoch=steps)


__all__ = ["DataConfig", "TrainJob", "run_train_job", "make_stage", "job_lineage", "TRAIN_KINDS", "job_main",
           "OptimConfig", "TrackingConfig"]


def job_main(kind: str, description: str, argv=None) -> int:
    """The body of ``jobs/tmp.py`` / ``jobs/distill.py`` / ``jobs/finetune.py``."""

    def body(cfg: TrainJob) -> int:
        result = run_train_job(kind, cfg)
        if result.error is not None:
            print(f"{kind} failed: {str(result.error).splitlines()[0]}")
            return 1
        m = {k: v for k, v in dict(result.metrics or {}).items() if not isinstance(v, list)}
        print(f"{kind} finished; checkpoint: {result.checkpoint.path if result.checkpoint else None}")
        print("final metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in sorted(m.items()) if "/iou/" not in k))
        return 0

    return run_job(TrainJob, body, description, argv, default_config=f"configs/nuscenes/{kind}.yaml",
                   run_config=rerun_config)


def rerun_config(run_id: str, tracking_uri: str | None) -> dict:
    """The config of MLflow run ``run_id`` for ``--from-run``: as stored, with a fresh Ray Train run name
    (``<name>-rerun-<run id[:8]>``) so the rerun starts anew instead of resuming the original's checkpoints."""
    cfg = run_config(run_id, tracking_uri or default_tracking_uri())
    run = cfg.setdefault("run", {})
    run["name"] = f"{run.get('name') or 'afov'}-rerun-{run_id[:8]}"
    return cfg
