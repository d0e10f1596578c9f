"""Ray Train V2 plumbing shared by every training stage (TMP, distillation, fine-tuning).

A *stage* is a small picklable object (see ``Stage``) that knows how to build its model, compute the
loss of a batch and, optionally, validate. ``run_stage`` wraps it in a ``TorchTrainer`` with the
user's ``ScalingConfig`` / ``RunConfig`` (storage path local or ``s3://``, ``CheckpointConfig``,
``FailureConfig``) and the per-worker loop ``stage_loop`` does the rest the same way for all stages:

- DDP via ``ray.train.torch.prepare_model`` after converting BatchNorm to SyncBatchNorm when there is
  more than one GPU worker (docs/method.md "TMP training": SyncBN with more than one GPU; torch's SyncBN has
  no CPU implementation, so CPU workers keep per-worker BN statistics);
- SGD with dampening + head group and the cosine schedule of ``afov_ray.train.optim``;
- ``ray.train.report`` with a checkpoint at the end of every epoch and every ``checkpoint_every_steps``
  steps; every worker reports (it is a barrier), rank 0 attaches the checkpoint;
- resume: ``ray.train.get_checkpoint()`` (set after a worker failure under ``FailureConfig`` or when a
  job is restarted with the same run name and storage path) restores model, optimiser, schedule,
  epoch and step, and skips the steps already done in the interrupted epoch;
- MLflow tracking on rank 0 (``afov_ray.train.tracking``), resumed into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from afov_ray.config import ConfigError, option, validate
from afov_ray.errors import DataError
from afov_ray.log import format_duration, get_logger, worker_progress
from afov_ray.models.checkpoint import load_official_checkpoint
from afov_ray.models.spec import ModelSpec
from afov_ray.runtime import init_ray, require_resources
from afov_ray.storage import uri as U
from afov_ray.train.checkpoint import load_checkpoint, save_checkpoint
from afov_ray.train.optim import CosineSchedule, OptimConfig, build_optimizer, freeze_for_linear_probe
from afov_ray.train.registry import register
from afov_ray.train.resume import check_resume, checkpoint_dirs, previous_run_id, training_settings
from afov_ray.train.tracking import Tracker, TrackingConfig, check_connection, log_job_config

log = get_logger(__name__)
SCORE = "afov/score"   # the checkpoint ranking metric: validation mIoU (TMP: minus the training loss)


@dataclass
class ScaleConfig:
    num_workers: int = option(1, "Ray Train workers (one GPU each with use_gpu)", min=1)
    use_gpu: bool = option(False, "one GPU per worker")
    cpus_per_worker: float = option(1.0, "CPUs reserved per Train worker", gt=0)
    torch_threads: int | None = option(None, "torch intra-op threads per worker; None: Ray's default "
                                             "(OMP_NUM_THREADS = CPUs reserved). More than cpus_per_worker lets a small "
                                             "machine give the worker the cores the data side leaves idle", min=1)
    address: str | None = option(None, "Ray address to join; None: $RAY_ADDRESS (set by `ray job submit`), else "
                                       "a local Ray")
    wait_for_resources: bool = option(False, "do not check the request against the cluster's resources (an "
                                             "autoscaling cluster grows to fit); false: an infeasible request is an "
                                             "error before training starts")


@dataclass
class RunSettings:
    name: str = option("afov", "Ray Train run name; re-running with the same name + storage_path resumes")
    storage_path: str = option("outputs/ray_results", "checkpoint storage: local folder or s3://bucket/prefix "
                                                      "(shared storage on multi-node)")
    max_failures: int = option(0, "worker-group restarts from the last checkpoint after a worker or node "
                                  "failure (-1: unlimited)", min=-1)
    num_to_keep: int | None = option(2, "checkpoints kept (None: all)", min=1)
    checkpoint_every_steps: int = option(0, "extra mid-epoch checkpoints every N steps; 0: epoch ends only", min=0)


@dataclass
class LoopConfig:
    num_epochs: int = option(1, "training epochs", min=1)
    batch_size: int = option(2, "scans per worker per step", min=1)
    amp: bool = option(False, "bf16 autocast (GPU only)")
    seed: int = option(0, "torch seed (model init)")
    linear_probe: bool = option(False, "freeze all but the head, BN in eval mode (official linear probing)")
    log_every_steps: int = option(1, "MLflow step-metric interval", min=1)
    val_every_epochs: int = option(1, "validate every N epochs (the last epoch always validates); training is the "
                                      "same either way", min=1)
    optim: OptimConfig = option(OptimConfig(), "optimiser and schedule")
    tracking: TrackingConfig = option(TrackingConfig(), "MLflow tracking and registration")


class Stage:
    """Interface of a training stage; subclasses are plain picklable objects."""

    name = "stage"

    def model_spec(self) -> ModelSpec | None:
        """The contract of the model this stage trains (stored in checkpoints and registered models)."""
        return None

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def init_state(self) -> dict | None:
        """An initial state dict (e.g. from the registry), loaded on the driver and shape-filtered into the
        model on the workers, or None."""
        return None

    def check_inputs(self) -> None:
        """Driver-side checks of the stage's own inputs (e.g. the teacher run), before any worker starts."""

    def batches(self, shard, batch_size: int, epoch: int) -> Iterator[Any]:
        """Iterate the worker's data shard (a Ray DataIterator) as model-ready batches."""
        return shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True)

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def validate(self, model: torch.nn.Module, shard, device: torch.device) -> dict:
        return {}

    def params(self) -> dict:
        """Stage parameters to log (the resolved config)."""
        return {}

    def lineage(self) -> dict[str, str]:
        """Tags for the registered model naming what it was made from (teacher run, data shards, init
        model); evaluated on the driver by ``run_stage``, which adds ``stage`` and the caller's tags."""
        return {}


def _rank_world() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def allreduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce across Train workers (no-op with one process); ``op`` "sum" or "mean"."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        if op == "mean":
            t /= dist.get_world_size()
    return t


NO_SCORE = -1e30   # checkpoints of epochs without validation rank below every validated one


def _kv_get(key: str) -> str | None:
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not key or not _internal_kv_initialized():
        return None
    v = _internal_kv_get(key, namespace="afov")
    return v.decode() if v else None


def _kv_put(key: str, value: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_initialized, _internal_kv_put

    if key and _internal_kv_initialized():
        _internal_kv_put(key, value.encode(), overwrite=True, namespace="afov")


def stage_loop(config: dict) -> None:
    """``train_loop_per_worker`` for every stage.

    A ``ConfigError`` / ``DataError`` (bad data or settings, found in a worker) is recorded in the cluster's
    key-value store before the worker fails; a worker group that Ray restarts after it (``run.max_failures``)
    finds the record and stops at once instead of repeating the same error, and the driver raises it."""
    error_key = config.get("error_key", "")
    if _kv_get(error_key):
        return
    try:
        _stage_loop(config)
    except (ConfigError, DataError) as e:
        _kv_put(error_key, json.dumps({"type": type(e).__name__, "message": str(e)}))
        raise


def _stage_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    stage: Stage = config["stage"]
    loop: LoopConfig = config["loop"]
    rank, world = _rank_world()
    if config.get("torch_threads") is not None:
        torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(loop.seed)
    device = ray.train.torch.get_device()

    model = stage.build_model()
    init = ray.get(config["init_ref"]) if config.get("init_ref") is not None else None
    if init is not None:
        # shape-filtered, official prefixes stripped (docs/method.md#initialisation): a TMP 768-d head is skipped
        load_official_checkpoint(model, init)
    if loop.linear_probe:
        freeze_for_linear_probe(model)
    if world > 1 and device.type == "cuda":
        # torch's SyncBatchNorm runs on CUDA only; CPU (gloo) workers keep per-worker BN statistics
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    inner = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(inner, loop.optim)
    steps_hint = int(config.get("steps_per_epoch") or 0)
    schedule = CosineSchedule(optimizer, loop.num_epochs, steps_per_epoch=max(steps_hint, 1),
                              per_iteration=loop.optim.per_iteration_schedule)

    start_epoch, step, skip_in_epoch = 0, 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            st = load_checkpoint(d)
        inner.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        schedule.load_state_dict(st["schedule"])
        start_epoch, step = st["epoch"], st["step"]
        skip_in_epoch = int(st["config"].get("steps_done_in_epoch", 0))
        if rank == 0:
            log.info("%s: resumed from the checkpoint of epoch %d, step %d", stage.name, start_epoch, step)

    run_id = config.get("mlflow_run_id")
    tracker = Tracker(loop.tracking, rank=rank)
    tracker.attach(run_id)
    shard = ray.train.get_dataset_shard("train")
    val_shard = None
    try:
        val_shard = ray.train.get_dataset_shard("val")
    except Exception:  # noqa: BLE001 - no validation dataset
        val_shard = None

    spec_obj = stage.model_spec()
    spec = None if spec_obj is None else spec_obj.to_dict()

    def report(epoch_done: int, steps_in_epoch: int, metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as td:
            checkpoint = None
            if rank == 0:
                save_checkpoint(td, model_state=inner.state_dict(), optimizer_state=optimizer.state_dict(),
                                schedule_state=schedule.state_dict(), epoch=epoch_done, step=step,
                                config={"steps_done_in_epoch": steps_in_epoch, "mlflow_run_id": run_id},
                                metrics=metrics, model_spec=spec, settings=config.get("settings"))
                checkpoint = ray.train.Checkpoint.from_directory(td)
            ray.train.report(metrics, checkpoint=checkpoint)

    epoch_times: list[float] = []
    for epoch in range(start_epoch, loop.num_epochs):
        if loop.linear_probe:
            model.eval()  # BN statistics frozen (official linear probing)
        else:
            model.train()
        t_epoch, wait, n_steps, loss_sum, losses = time.perf_counter(), 0.0, 0, 0.0, []
        bar = worker_progress(total=steps_hint, desc=f"{stage.name} epoch {epoch + 1}/{loop.num_epochs}",
                              enabled=rank == 0 and steps_hint > 1)
        t0 = time.perf_counter()
        for i, batch in enumerate(stage.batches(shard, loop.batch_size, epoch)):
            if i < skip_in_epoch:
                t0 = time.perf_counter()
                continue
            wait += time.perf_counter() - t0
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=loop.amp and device.type == "cuda"):
                loss, logs = stage.loss(model, batch, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step_iteration()
            step += 1
            n_steps += 1
            bar.update(1)
            global_loss = float(allreduce_(loss.detach().clone().float(), "mean"))
            loss_sum += global_loss
            losses.append(global_loss)
            if step % max(loop.log_every_steps, 1) == 0:
                tracker.log_metrics({"train/loss": global_loss, **{f"train/{k}": v for k, v in logs.items()},
                                     "lr": schedule.lrs()[0]}, step=step, step_metric=True)
            if loop_every := config.get("checkpoint_every_steps", 0):
                if step % loop_every == 0:
                    report(epoch, i + 1, {"epoch": epoch, "step": step, "train/loss": global_loss,
                                          SCORE: NO_SCORE})
            t0 = time.perf_counter()
        bar.close()
        skip_in_epoch = 0
        schedule.step_epoch()
        elapsed = time.perf_counter() - t_epoch
        metrics = {"epoch": epoch, "step": step, "train/loss_epoch": loss_sum / max(n_steps, 1),
                   "train/losses": losses,
                   "train/steps": n_steps, "train/data_wait_fraction": wait / max(elapsed, 1e-9),
                   "train/epoch_s": elapsed, "train/torch_threads": torch.get_num_threads()}
        validated = val_shard is not None and ((epoch + 1) % loop.val_every_epochs == 0
                                               or epoch + 1 == loop.num_epochs)
        if validated:
            model.eval()
            with torch.no_grad():
                metrics.update({f"val/{k}": v for k, v in stage.validate(model, val_shard, device).items()})
        metrics[SCORE] = (float(metrics.get("val/mIoU", NO_SCORE)) if val_shard is not None
                          else -float(metrics["train/loss_epoch"]))
        if not validated and val_shard is not None:
            metrics[SCORE] = NO_SCORE
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != SCORE}, step=step)
        if rank == 0:
            epoch_times.append(elapsed)
            log.info(epoch_line(stage.name, epoch, loop.num_epochs, n_steps, metrics, epoch_times,
                                loop.batch_size * world))
        report(epoch + 1, 0, metrics)
    tracker.flush()
    if tracker.lost_metrics:
        log.warning("%s: %d metric values could not be logged to MLflow", stage.name, tracker.lost_metrics)


def epoch_line(stage: str, epoch: int, num_epochs: int, steps: int, metrics: dict, epoch_times: list[float],
               scans_per_step: int) -> str:
    """One line per epoch on rank 0: epoch, steps, loss, validation mIoU, scans/s, time left."""
    secs = epoch_times[-1]
    left = (num_epochs - epoch - 1) * (sum(epoch_times) / len(epoch_times))
    val = metrics.get("val/mIoU")
    return (f"{stage} epoch {epoch + 1}/{num_epochs}: {steps} steps, loss {metrics['train/loss_epoch']:.4f}"
            + (f", val mIoU {100 * val:.1f}" if val is not None else "")
            + f", {steps * scans_per_step / max(secs, 1e-9):.2f} scans/s, data wait "
              f"{metrics['train/data_wait_fraction']:.0%}, {format_duration(secs)}/epoch, ~{format_duration(left)} left")


@dataclass
class StageResult:
    """What a fit produced: the Ray ``Result``, the MLflow run, the best checkpoint (by validation mIoU, else by
    training loss) and the registered model version."""

    result: Any
    run_id: str | None = None
    best_checkpoint: Any = None
    best_metrics: dict | None = None
    registration: Any = None

    @property
    def error(self):
        return self.result.error

    @property
    def metrics(self):
        return self.result.metrics

    @property
    def checkpoint(self):
        return self.result.checkpoint

    @property
    def metrics_dataframe(self):
        return self.result.metrics_dataframe


def best_of(result) -> tuple[Any, dict]:
    """The best reported checkpoint by the score (validation mIoU; TMP: lowest training loss); the last one
    when none was scored."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(SCORE, NO_SCORE) > NO_SCORE]
    if scored:
        return max(scored, key=lambda cm: cm[1][SCORE])
    return result.checkpoint, dict(result.metrics or {})


def remove_unreported_checkpoints(storage: str, name: str, result) -> list[str]:
    """Checkpoint folders Ray Train never registered (a worker killed while one was being written) are
    removed after the fit, so a run's folder holds exactly the checkpoints its result lists."""

    keep = {os.path.basename(str(c.path).rstrip("/")) for c, _ in (result.best_checkpoints or [])}
    if result.checkpoint is not None:
        keep.add(os.path.basename(str(result.checkpoint.path).rstrip("/")))
    removed = []
    for d in checkpoint_dirs(storage, name):
        if U.basename(d) not in keep:
            fs, path = U.resolve(d)
            fs.delete_dir(path)
            removed.append(d)
    return removed


def run_stage(stage: Stage, loop: LoopConfig, scale: ScaleConfig, run: RunSettings,
              datasets: dict, val_split: bool = True, callbacks: list | None = None, lineage: dict | None = None,
              job_config: dict | None = None, init_state: dict | None = None,
              steps_per_epoch: int | None = None) -> StageResult:
    """Fit the ``TorchTrainer`` of ``stage``; returns a ``StageResult``.

    The driver owns the MLflow run (created, or reopened when the fit resumes, before training; params =
    ``job_config`` flattened; final status set on every exit path) and registers the best checkpoint's weights
    with their contract when ``loop.tracking.register_as`` is set. ``callbacks``: Ray Train V2 ``UserCallback``s
    (e.g. Tune's ``TuneReportCallback``); ``lineage``: extra tags for the run and the registered model;
    ``init_state``: initial weights, loaded once here and shipped to the workers through the object store."""
    import uuid

    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    for section, prefix in ((loop, "loop."), (scale, "scale."), (run, "run.")):
        validate(section, prefix)   # configs built in code skip the parser's checks
    storage = run.storage_path
    if "://" not in storage:
        storage = os.path.abspath(storage)
        os.makedirs(storage, exist_ok=True)
    settings = training_settings(stage.name, stage.params(), loop)
    check_resume(storage, run.name, settings)   # re-running a run name with other settings: refused here
    tracker = Tracker(loop.tracking)
    if tracker.active:   # before Ray starts: a store that is down is a quick one-line error
        check_connection(tracker.tracking_uri)
    init_ray(scale.address)
    require_resources({"CPU": scale.cpus_per_worker, "GPU": 1.0 if scale.use_gpu else 0.0}, scale.num_workers,
                      f"scale.num_workers={scale.num_workers} x (scale.cpus_per_worker={scale.cpus_per_worker}"
                      + (", 1 GPU)" if scale.use_gpu else ")"), wait=scale.wait_for_resources)
    tags = {"stage": stage.name, **stage.lineage(), **(lineage or {})}
    run_id = tracker.start(params=job_config or {"stage": stage.name, **stage.params()}, tags=tags,
                           run_id=previous_run_id(storage, run.name))
    if job_config is not None:
        log_job_config(tracker, job_config, {k: v for k, v in tags.items() if k.startswith("data.")})
    error_key = f"train-error/{uuid.uuid4().hex}"
    split = ["train", "val"] if val_split and "val" in datasets else ["train"]
    trainer = TorchTrainer(
        stage_loop,
        train_loop_config={"stage": stage, "loop": loop, "checkpoint_every_steps": run.checkpoint_every_steps,
                           "torch_threads": scale.torch_threads, "mlflow_run_id": run_id, "error_key": error_key,
                           "steps_per_epoch": steps_per_epoch, "settings": settings,
                           "init_ref": None if init_state is None else ray.put(init_state)},
        scaling_config=ScalingConfig(num_workers=scale.num_workers, use_gpu=scale.use_gpu,
                                     resources_per_worker={"CPU": scale.cpus_per_worker}),
        run_config=RunConfig(name=run.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep,
                                                                checkpoint_score_attribute=SCORE,
                                                                checkpoint_score_order="max"),
                             callbacks=list(callbacks or [])),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split),
    )
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    recorded = _kv_get(error_key)
    if recorded:
        tracker.end("FAILED")
        err = json.loads(recorded)
        raise (ConfigError if err["type"] == "ConfigError" else DataError)(*(
            [err["message"]] if err["type"] == "ConfigError" else ["training data", err["message"]]))
    out = StageResult(result, run_id)
    if result.error is not None:
        tracker.end("FAILED")
        return out
    out.best_checkpoint, out.best_metrics = best_of(result)
    removed = remove_unreported_checkpoints(storage, run.name, result)
    if removed:
        log.info("removed %d checkpoint folder(s) that were never reported: %s", len(removed), removed)
    try:
        best = out.best_metrics or {}
        tracker.set_tags({"afov.best_epoch": int(best.get("epoch", -1)) + 1,
                          "afov.best_checkpoint": str(getattr(out.best_checkpoint, "path", ""))})
        iou = {k[len("val/iou/"):]: v for k, v in best.items() if k.startswith("val/iou/")}
        if iou:
            tracker.log_dict({"epoch": int(best.get("epoch", -1)) + 1, "mIoU": best.get("val/mIoU"), "iou": iou},
                             "per_class_iou.json")
            tracker.log_text(per_class_table(iou, best.get("val/mIoU")), "per_class_iou.md")
        if loop.tracking.register_as:
            out.registration = register_best(stage, loop, tracker, out, tags)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return out


def per_class_table(iou: dict[str, float], miou: float | None) -> str:
    lines = ["| class | IoU (%) |", "|---|---:|"] + [f"| {k} | {100 * v:.1f} |" for k, v in iou.items()]
    if miou is not None:
        lines.append(f"| **mIoU** | {100 * miou:.1f} |")
    return "\n".join(lines) + "\n"


def register_best(stage: Stage, loop: LoopConfig, tracker: Tracker, out: StageResult, tags: dict):
    """Register the best checkpoint's weights + contract; never a model that trained zero steps."""
    best = out.best_metrics or {}
    if int(best.get("step", 0)) <= 0 or out.best_checkpoint is None:
        raise DataError("training data", f"{stage.name} trained zero steps (the train split has fewer scans than "
                                         f"loop.batch_size x scale.num_workers?): no model registered")
    with out.best_checkpoint.as_directory() as d:
        state = load_checkpoint(d)["model"]
    score = best.get("val/mIoU")
    reg = register(tracker.tracking_uri, out.run_id, state, stage.model_spec(), loop.tracking.register_as,
                   alias=loop.tracking.alias, tags={**tags, "afov.best_epoch": int(best.get("epoch", -1)) + 1,
                                                    "afov.best_step": int(best.get("step", 0))},
                   score=score, force_alias=loop.tracking.force_alias)
    log.info("registered %s (epoch %s%s)%s", reg.uri, int(best.get("epoch", -1)) + 1,
             f", val mIoU {100 * score:.1f}" if score is not None else "",
             f"; alias {reg.alias!r} {'moved' if reg.alias_moved else 'NOT moved'}: {reg.reason}" if reg.alias else "")
    return reg
