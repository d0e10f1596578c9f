"""Ray Tune sweeps over training jobs: teacher run x loss weights x temperature x learning rates.

The Ray Train V2 + Tune pattern (Ray's ``ray/train/doc_code/train_tune_interop`` example):

- the Tune trainable is a small *driver function* per trial (``sweep_trial``) that resolves the trial's
  ``TrainJob`` (``trial_job``) and fits its own ``TorchTrainer`` through
  ``afov_ray.train.jobs.run_train_job`` with ``TuneReportCallback`` in the Train ``RunConfig``, which
  forwards every ``ray.train.report`` (one per epoch) to Tune;
- the driver is placed with ``tune.with_resources(fn, {"CPU": trial_driver_cpus})`` (0.01 by default) so
  trials never hold the CPU / GPU slots their Train workers and Ray Data tasks need;
- each trial is initialised from the registry (``sweep.init``, e.g. ``models:/afov-tmp@current``) and
  tracked twice in MLflow: trial-level results by ``MLflowLoggerCallback`` on the *Tuner's* RunConfig
  (Train V2's RunConfig rejects it) and the full run by the trial's own ``Tracker``; both runs
  carry the tags ``sweep`` and ``tune.trial_id``;
- ASHA stops weak trials early (``training_iteration`` = epoch);
- the best trial's last checkpoint is registered (``sweep.register_as`` with alias ``sweep.alias``,
  default ``best``) under its Train MLflow run, with the lineage tags of any trained model (teacher run,
  data fingerprint, config hash, git commit, stage) plus the sweep, trial id and metric;
- resumable: re-running with the same ``sweep.name`` and ``sweep.storage_path`` restores the experiment
  (``Tuner.can_restore`` / ``Tuner.restore``): finished trials are kept, unfinished ones resume, and a
  resumed trial's ``TorchTrainer`` (same Train run name and storage) restarts from its last epoch
  checkpoint.

Sweep kinds: ``distill`` (default; metric ``val/mIoU``, mode max) and ``tmp`` (``train/loss_epoch``,
min). The search space is a mapping of dotted ``TrainJob`` keys to value lists
(``{"tmp": {"tau": [0.05, 0.07]}, "loop": {"optim": {"lr": [0.1, 0.5]}}}``) plus the ``teachers`` axis:
named teacher runs, each with the pairing shards made from it (SAN, CAT-Seg, FC-CLIP, MaskCLIP, or
simulated runs).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from afov_ray.config import ConfigError, deep_merge, flatten, from_dict, to_dict
from afov_ray.runtime import init_ray
from afov_ray.storage import uri as suri
from afov_ray.train.checkpoint import load_checkpoint
from afov_ray.train.jobs import TrainJob, job_lineage, make_stage, run_train_job
from afov_ray.train.registry import register
from afov_ray.train.tracking import Tracker, client_for, default_tracking_uri, ensure_experiment

KIND_DEFAULTS = {"distill": ("val/mIoU", "max"), "tmp": ("train/loss_epoch", "min")}
TEACHER_KEY = "teacher"


@dataclass
class TeacherChoice:
    name: str = field(default="", metadata={"help": "label of the teacher run (SAN, CAT-Seg, FC-CLIP, ...)"})
    run: str = field(default="", metadata={"help": "teacher run folder URI (run.json, text_embedding.npy)"})
    pairing: str = field(default="", metadata={"help": "pairing shards folder made from this teacher run"})


@dataclass
class ASHASettings:
    enabled: bool = field(default=True, metadata={"help": "ASHA early stopping (time attribute: epoch)"})
    grace_period: int = field(default=1, metadata={"help": "epochs every trial runs before it can be stopped"})
    reduction_factor: float = field(default=2.0, metadata={"help": "ASHA halving rate"})


@dataclass
class SweepSettings:
    kind: Literal["distill", "tmp"] = field(default="distill", metadata={
        "help": "distill (val/mIoU, max) | tmp (train/loss_epoch, min)"})
    name: str = field(default="sweep", metadata={
        "help": "experiment name; re-running with the same name + storage_path resumes the sweep"})
    storage_path: str = field(default="outputs/tune", metadata={"help": "Tune experiment storage (folder or s3://)"})
    teachers: list[TeacherChoice] = field(default_factory=list, metadata={
        "help": "teacher axis: [{name, run, pairing}, ...]; empty: the job's data.pairing / tmp.teacher_run"})
    space: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "dotted job keys -> value lists, e.g. {tmp: {tau: [0.05, 0.07]}, loop: {optim: {lr: [0.1]}}}"})
    search: Literal["grid", "random"] = field(default="grid", metadata={
        "help": "grid (every combination, x num_samples) | random (num_samples draws, tune.choice per key)"})
    num_samples: int = field(default=1, metadata={"help": "Tune num_samples", "min": 1})
    metric: str | None = field(default=None, metadata={"help": "metric to optimise; None: the kind's default"})
    mode: Literal["max", "min"] | None = field(default=None, metadata={"help": "max | min; None: the kind's default"})
    max_concurrent_trials: int = field(default=1, metadata={
        "help": "trials at once (each needs scale.num_workers x cpus_per_worker plus data-task CPUs)", "min": 1})
    trial_driver_cpus: float = field(default=0.01, metadata={
        "help": "CPU reserved by each trial's driver function (not its Train workers)"})
    max_failures: int = field(default=0, metadata={"help": "Tune-level retries of a failed trial"})
    asha: ASHASettings = field(default_factory=ASHASettings, metadata={"help": "ASHA early stopping"})
    init: str | None = field(default=None, metadata={
        "help": "initial weights of every trial, e.g. models:/afov-tmp@current; None: keep model.init"})
    register_as: str | None = field(default=None, metadata={
        "help": "registered model name for the best trial; None: loop.tracking.register_as; both None: none"})
    alias: str = field(default="best", metadata={"help": "alias given to the best trial's model version"})
    mlflow_callback: bool = field(default=True, metadata={
        "help": "also log trial-level results with Tune's MLflowLoggerCallback"})
    address: str | None = field(default=None, metadata={
        "help": "Ray address; None: scale.address, $RAY_ADDRESS, else a local Ray"})
    free_leaked_placement_groups: bool = field(default=True, metadata={
        "help": "work around Ray 2.60 keeping a finished trial's Train placement group reserved (the next trial's "
                "data tasks then wait forever on a small cluster): after each trial, remove the groups it created "
                "that are still reserved. Only with max_concurrent_trials = 1, where no other trial owns one"})


@dataclass
class SweepJob(TrainJob):
    """The base training job (same keys as jobs/tmp.py and jobs/distill.py) plus ``sweep``."""

    sweep: SweepSettings = field(default_factory=SweepSettings, metadata={"help": "the sweep"})


def metric_and_mode(s: SweepSettings) -> tuple[str, str]:
    if s.kind not in KIND_DEFAULTS:
        raise ConfigError(f"config key 'sweep.kind': {s.kind!r} is not one of {sorted(KIND_DEFAULTS)}")
    metric, mode = KIND_DEFAULTS[s.kind]
    mode = s.mode or mode
    if mode not in ("max", "min"):
        raise ConfigError(f"config key 'sweep.mode': {mode!r} is not one of ['max', 'min']")
    return s.metric or metric, mode


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return out


def space_keys(s: SweepSettings) -> dict[str, list]:
    """The flat search space (dotted key -> values), validated against ``TrainJob``."""
    flat = flatten(s.space)
    base = to_dict(TrainJob())
    for key, values in flat.items():
        cur: Any = base
        for p in key.split("."):
            if not isinstance(cur, dict) or p not in cur:
                raise ConfigError(f"config key 'sweep.space.{key}': {key!r} is not a training-job key")
            cur = cur[p]
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"config key 'sweep.space.{key}': expected a non-empty list of values, got {values!r}")
        if key.startswith(("data.pairing", "tmp.teacher_run")):
            raise ConfigError(f"config key 'sweep.space.{key}': sweep teacher runs with sweep.teachers")
    if s.kind == "distill" and any(k.startswith("tmp.") for k in flat):
        raise ConfigError("sweep.space: tmp.* keys have no effect on a distill sweep (use sweep.kind=tmp)")
    return {k: list(v) for k, v in flat.items()}


def param_space(s: SweepSettings) -> dict:
    """Tune ``param_space``: ``teacher`` (names) and every dotted key of ``space``."""
    from ray import tune

    axes: dict[str, list] = {}
    if s.teachers:
        names = [t.name for t in s.teachers]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"config key 'sweep.teachers': names must be unique and non-empty, got {names}")
        axes[TEACHER_KEY] = names
    axes.update(space_keys(s))
    if s.search == "grid":
        return {k: tune.grid_search(v) for k, v in axes.items()}
    if s.search == "random":
        return {k: tune.choice(v) for k, v in axes.items()}
    raise ConfigError(f"config key 'sweep.search': {s.search!r} is not one of ['grid', 'random']")


def trial_job(base: TrainJob, params: dict, teachers: list[TeacherChoice], trial_id: str, sweep_name: str,
              train_storage: str, tracking_uri: str, init: str | None, driver_cpus: float = 0.0) -> TrainJob:
    """The resolved ``TrainJob`` of one trial (pure: also used to describe the best trial afterwards).

    The trial's Train run is ``<train_storage>/<trial_id>`` (stable: a resumed trial resumes its
    TorchTrainer), it reports once per epoch (``checkpoint_every_steps`` = 0), registers nothing
    itself, and its MLflow run is tagged with the sweep and the trial id. The trial driver's
    ``driver_cpus`` are taken from the workers' share (``scale.cpus_per_worker``), so a trial holds
    exactly what its job would alone: on a full cluster a 0.01-CPU driver beside whole-CPU workers
    would leave 0.99 CPU, and Ray Data's 1-CPU read tasks would never be scheduled."""
    d = to_dict(base)
    flat = {k: v for k, v in params.items() if k != TEACHER_KEY}
    d = deep_merge(d, _nest(flat))
    if TEACHER_KEY in params:
        by_name = {t.name: t for t in teachers}
        t = by_name.get(params[TEACHER_KEY])
        if t is None:
            raise ConfigError(f"trial {trial_id}: teacher {params[TEACHER_KEY]!r} not in sweep.teachers")
        d["data"]["pairing"] = t.pairing
        d["tmp"]["teacher_run"] = t.run
    cfg = from_dict(TrainJob, d)
    model = replace(cfg.model, init=init if init is not None else cfg.model.init,
                    tracking_uri=cfg.model.tracking_uri or tracking_uri)
    tags = {**cfg.loop.tracking.tags, "sweep": sweep_name, "tune.trial_id": trial_id, "afov.role": "train"}
    if TEACHER_KEY in params:
        tags["sweep.teacher"] = str(params[TEACHER_KEY])
    tracking = replace(cfg.loop.tracking, tracking_uri=tracking_uri, register_as=None,
                       run_name=f"{sweep_name}/{trial_id}", tags=tags)
    scale = replace(cfg.scale, cpus_per_worker=cfg.scale.cpus_per_worker - driver_cpus / max(cfg.scale.num_workers, 1))
    if scale.cpus_per_worker <= 0:
        raise ConfigError(f"sweep.trial_driver_cpus={driver_cpus} leaves no CPU for scale.cpus_per_worker")
    return replace(cfg, model=model, loop=replace(cfg.loop, tracking=tracking), scale=scale,
                   run=replace(cfg.run, name=trial_id, storage_path=train_storage, checkpoint_every_steps=0))


def _created_placement_groups() -> dict[str, list]:
    import ray

    return {k: list(v["bundles"].values()) for k, v in ray.util.placement_group_table().items()
            if v["state"] == "CREATED"}


def _remove_leaked_placement_groups(before: dict[str, list], bundles: list[dict]) -> list[str]:
    """Remove placement groups created during this trial's fit that are still reserved after it with
    exactly the Train worker bundles. Workaround, Ray 2.60 on a 2-CPU node: when a Tune trial's
    TorchTrainer finishes, its worker placement group stays CREATED (its detached PlacementGroupCleaner
    keeps polling) and the next trial's 1-CPU Ray Data tasks never get scheduled. Only used with
    ``max_concurrent_trials == 1``, where no other trial can own such a group."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = []
    own = ray.util.get_current_placement_group()
    for pg_id, b in _created_placement_groups().items():
        if pg_id in before or (own is not None and own.id.hex() == pg_id):
            continue
        if [dict(x) for x in b] == bundles:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
            removed.append(pg_id)
    return removed


def sweep_trial(config: dict, *, kind: str, base: dict, teachers: list[dict], sweep_name: str,
                train_storage: str, tracking_uri: str, init: str | None, driver_cpus: float,
                remove_leaked_pgs: bool = False) -> None:
    """The Tune trainable: fit this trial's TorchTrainer, reporting each epoch to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_job(from_dict(TrainJob, base), config, [from_dict(TeacherChoice, t) for t in teachers], trial_id,
                    sweep_name, train_storage, tracking_uri, init, driver_cpus)
    before = _created_placement_groups() if remove_leaked_pgs else {}
    result = run_train_job(kind, cfg, callbacks=[TuneReportCallback()],
                           lineage={"sweep": sweep_name, "tune.trial_id": trial_id})
    if remove_leaked_pgs:
        worker = {"CPU": cfg.scale.cpus_per_worker, **({"GPU": 1.0} if cfg.scale.use_gpu else {})}
        _remove_leaked_placement_groups(before, [worker] * cfg.scale.num_workers)
    if result.error is not None:
        raise RuntimeError(f"trial {trial_id} failed: {result.error}") from result.error


def _join(root: str, *parts: str) -> str:
    if "://" in root:
        return suri.join(root, *parts)
    return os.path.join(os.path.abspath(root), *parts)


def _read_checkpoint(path: str, storage_root: str) -> dict:
    """Checkpoint reported through Tune (``checkpoint_path``: a local path, or a bucket path for s3)."""
    import tempfile

    if "://" not in storage_root:
        return load_checkpoint(path)

    uri = path if "://" in path else f"{storage_root.split('://', 1)[0]}://{path.lstrip('/')}"
    fs, remote = suri.resolve(suri.join(uri, "state.pt"))
    with tempfile.TemporaryDirectory() as td:
        local = os.path.join(td, "state.pt")
        # copied in 8 MiB reads: one read of a whole state (~250 MB with AdamW) holds it twice in memory, and
        # one ranged GET of that size took minutes on an S3-compatible server (moto) where 8 MiB reads take seconds
        with fs.open_input_stream(remote) as src, open(local, "wb") as f:
            shutil.copyfileobj(src, f, 8 << 20)
        return load_checkpoint(local)


def register_best(cfg: SweepJob, results, tracking_uri: str, train_storage: str) -> dict:
    """Register the best trial's last checkpoint with lineage tags and ``sweep.alias``."""

    s = cfg.sweep
    metric, mode = metric_and_mode(s)
    best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    trial_id = str(best.metrics["trial_id"])
    params = {k: v for k, v in best.config.items()}
    tcfg = trial_job(_base_job(cfg), params, s.teachers, trial_id, s.name, train_storage, tracking_uri, s.init,
                     s.trial_driver_cpus)
    out = {"trial_id": trial_id, "config": params, "metric": metric, "value": best.metrics.get(metric),
           "checkpoint": best.metrics.get("checkpoint_path")}
    name = s.register_as or cfg.loop.tracking.register_as
    if not name:
        return out
    if not out["checkpoint"]:
        raise RuntimeError(f"best trial {trial_id} reported no checkpoint; nothing to register")
    state = _read_checkpoint(out["checkpoint"], train_storage)
    stage = make_stage(s.kind, tcfg)
    run_id = (state.get("config") or {}).get("mlflow_run_id")
    if not run_id:   # tracking was off inside the trial: a run of its own for the model
        tracker = Tracker(replace(tcfg.loop.tracking, enabled=True))
        run_id = tracker.start(params={"sweep": s.name, "trial_id": trial_id})
        tracker.end()
    tags = {"stage": stage.name, **stage.lineage(), **job_lineage(tcfg), "sweep": s.name, "tune.trial_id": trial_id,
            "sweep.metric": metric, "sweep.value": out["value"],
            **({"sweep.teacher": params[TEACHER_KEY]} if TEACHER_KEY in params else {})}
    score = out["value"] if metric == "val/mIoU" else None
    reg = register(tracking_uri, run_id, state["model"], stage.model_spec(), name, alias=s.alias, tags=tags,
                   score=score, force_alias=True)   # the sweep's own alias names its best trial
    out["registered"] = {"name": name, "version": reg.version, "alias": s.alias, "run_id": run_id,
                         "uri": f"models:/{name}@{s.alias}"}
    return out


def _base_job(cfg: SweepJob) -> TrainJob:
    d = to_dict(cfg)
    d.pop("sweep")
    return from_dict(TrainJob, d)


def _check(cfg: SweepJob, metric: str) -> None:
    if cfg.sweep.kind == "distill" and metric.startswith("val/") and not (cfg.data.split_file and cfg.data.val_split):
        raise ConfigError(f"sweep metric {metric!r} needs validation: set data.split_file and data.val_split")
    for t in cfg.sweep.teachers:
        if not (t.run and t.pairing):
            raise ConfigError(f"config key 'sweep.teachers': teacher {t.name!r} needs both run and pairing")


def run_sweep(cfg: SweepJob) -> dict:
    """Run (or resume) the sweep; returns a summary with the trials, the best one and its registration."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    s = cfg.sweep
    metric, mode = metric_and_mode(s)
    _check(cfg, metric)
    space = param_space(s)
    tracking_uri = cfg.loop.tracking.tracking_uri or default_tracking_uri()
    ensure_experiment(tracking_uri, cfg.loop.tracking.experiment)   # our artifact root, before Tune's callback
    storage = s.storage_path if "://" in s.storage_path else os.path.abspath(s.storage_path)
    if "://" not in storage:
        os.makedirs(storage, exist_ok=True)
    experiment_path = _join(storage, s.name)
    train_storage = _join(storage, f"{s.name}-train")
    init_ray(s.address or cfg.scale.address)

    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, kind=s.kind, base=to_dict(_base_job(cfg)),
                             teachers=[to_dict(t) for t in s.teachers], sweep_name=s.name,
                             train_storage=train_storage, tracking_uri=tracking_uri, init=s.init,
                             driver_cpus=s.trial_driver_cpus,
                             remove_leaked_pgs=s.free_leaked_placement_groups and s.max_concurrent_trials == 1),
        {"CPU": s.trial_driver_cpus})
    restored = bool(tune.Tuner.can_restore(experiment_path))
    if restored:
        mark_orphaned_runs(tracking_uri, cfg.loop.tracking.experiment, s.name)
    if restored:
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        callbacks = []
        if s.mlflow_callback:
            callbacks.append(MLflowLoggerCallback(tracking_uri=tracking_uri, registry_uri=tracking_uri,
                                                  experiment_name=cfg.loop.tracking.experiment,
                                                  tags={"sweep": s.name, "afov.role": "tune-trial"}))
        scheduler = None
        if s.asha.enabled:
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(cfg.loop.num_epochs, 1),
                                      grace_period=s.asha.grace_period, reduction_factor=s.asha.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, num_samples=s.num_samples,
                                        max_concurrent_trials=s.max_concurrent_trials, reuse_actors=False),
            run_config=tune.RunConfig(name=s.name, storage_path=storage, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures)))
    results = tuner.fit()
    trials = []
    for r in results:
        trials.append({"config": dict(r.config or {}), "metric": (r.metrics or {}).get(metric),
                       "epochs": (r.metrics or {}).get("training_iteration"),
                       "trial_id": (r.metrics or {}).get("trial_id"),
                       "error": None if r.error is None else str(r.error)[:500]})
    summary: dict[str, Any] = {"experiment_path": experiment_path, "restored": restored, "metric": metric,
                               "mode": mode, "trials": trials, "tracking_uri": tracking_uri}
    if any(t["error"] is None and t["metric"] is not None for t in trials):
        summary["best"] = register_best(cfg, results, tracking_uri, train_storage)
    else:
        summary["best"] = None
    return summary


def mark_orphaned_runs(tracking_uri: str, experiment: str, sweep_name: str) -> int:
    """Runs of this sweep still RUNNING belong to a driver that died: mark them KILLED (a resumed trial
    reopens its own run). Returns how many were marked."""
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], f"tags.sweep = '{sweep_name}' and attributes.status = 'RUNNING'")
    for r in runs:
        client.set_terminated(r.info.run_id, status="KILLED")
    return len(runs)


def sweep_job(cfg: SweepJob) -> int:
    """The body of ``jobs/sweep.py``."""
    import json

    summary = run_sweep(cfg)
    # one line, for scripts; starts a fresh line after any progress bar Ray relayed from a worker
    print("\nsweep summary: " + json.dumps(summary, default=str), flush=True)
    errors = [t for t in summary["trials"] if t["error"]]
    if summary["best"] is None:
        print(f"sweep {cfg.sweep.name}: no trial finished ({len(errors)} errors)")
        return 1
    print(f"sweep {cfg.sweep.name}: best trial {summary['best']['trial_id']} "
          f"{summary['metric']}={summary['best']['value']} -> {summary['best'].get('registered')}")
    return 0


__all__ = ["sweep_job", "SweepJob", "SweepSettings", "TeacherChoice", "ASHASettings", "run_sweep", "trial_job", "sweep_trial",
           "param_space", "register_best", "metric_and_mode"]
