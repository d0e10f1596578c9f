"""Ray Train V2 plumbing shared by every training stage (TMP, distillation, fine-tuning).

A *stage* is a small picklable object (see ``Stage``) that knows how to build its model, compute the
loss of a batch and, optionally, validate. ``run_stage`` wraps it in a ``TorchTrainer`` with the
user's ``ScalingConfig`` / ``RunConfig`` (storage path local or ``s3://``, ``CheckpointConfig``,
``FailureConfig``) and the per-worker loop ``stage_loop`` does the rest the same way for all stages:

- DDP via ``ray.train.torch.prepare_model`` after converting BatchNorm to SyncBatchNorm when there is
  more than one GPU worker (afov-reference.md 2.5: SyncBN with more than one GPU; torch's SyncBN has
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

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from afov_ray.config import option
from afov_ray.log import format_duration, get_logger
from afov_ray.models.checkpoint import load_official_checkpoint
from afov_ray.models.spec import ModelSpec
from afov_ray.runtime import init_ray, require_resources
from afov_ray.train.checkpoint import load_checkpoint, save_checkpoint
from afov_ray.train.optim import CosineSchedule, OptimConfig, build_optimizer, freeze_for_linear_probe
from afov_ray.train.tracking import Tracker, TrackingConfig

log = get_logger(__name__)

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

    def model_spec(self) -> ModelSpec:
        """The contract of the model this stage trains (stored in checkpoints and registered models)."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def init_state(self) -> dict | None:
        """An initial state dict (e.g. from the registry) loaded shape-filtered, or None."""
        return None

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

def stage_loop(config: dict) -> None:
    """``train_loop_per_worker`` for every stage. ``config`` = {"stage": Stage, "loop": LoopConfig}."""
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
    init = stage.init_state()
    if init is not None:
        # shape-filtered, official prefixes stripped (afov-reference.md 5.4): a TMP 768-d head is skipped

        load_official_checkpoint(model, init)
    if loop.linear_probe:
        freeze_for_linear_probe(model)
    if world > 1 and device.type == "cuda":
        # torch's SyncBatchNorm runs on CUDA only; CPU (gloo) workers keep per-worker BN statistics
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    inner = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(inner, loop.optim)
    schedule = CosineSchedule(optimizer, loop.num_epochs, per_iteration=loop.optim.per_iteration_schedule)

    start_epoch, step, skip_in_epoch, run_id = 0, 0, 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            st = load_checkpoint(d)
        inner.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        schedule.load_state_dict(st["schedule"])
        start_epoch, step = st["epoch"], st["step"]
        skip_in_epoch = int(st["config"].get("steps_done_in_epoch", 0))
        run_id = st["config"].get("mlflow_run_id")

    tracker = Tracker(loop.tracking, rank=rank)
    run_id = tracker.start(params={"stage": stage.name, **stage.params(), "world_size": world},
                           tags=config.get("lineage"), run_id=run_id)
    shard = ray.train.get_dataset_shard("train")
    val_shard = None
    try:
        val_shard = ray.train.get_dataset_shard("val")
    except Exception:  # noqa: BLE001 - no validation dataset
        val_shard = None

    spec = stage.model_spec().to_dict()

    def report(epoch_done: int, steps_in_epoch: int, metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as td:
            checkpoint = None
            if rank == 0:
                save_checkpoint(td, model_state=inner.state_dict(), optimizer_state=optimizer.state_dict(),
                                schedule_state=schedule.state_dict(), epoch=epoch_done, step=step,
                                config={"steps_done_in_epoch": steps_in_epoch, "mlflow_run_id": run_id},
                                metrics=metrics, model_spec=spec)
                checkpoint = ray.train.Checkpoint.from_directory(td)
            ray.train.report(metrics, checkpoint=checkpoint)

    epoch_times: list[float] = []
    for epoch in range(start_epoch, loop.num_epochs):
        if loop.linear_probe:
            model.eval()  # BN statistics frozen (afov-reference.md 6.2)
        else:
            model.train()
        t_epoch, wait, n_steps, loss_sum, losses = time.perf_counter(), 0.0, 0, 0.0, []
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
            global_loss = float(allreduce_(loss.detach().clone().float(), "mean"))
            loss_sum += global_loss
            losses.append(global_loss)
            if step % max(loop.log_every_steps, 1) == 0:
                tracker.log_metrics({"train/loss": global_loss, **{f"train/{k}": v for k, v in logs.items()},
                                     "lr": schedule.lrs()[0]}, step=step)
            if loop_every := config.get("checkpoint_every_steps", 0):
                if step % loop_every == 0:
                    report(epoch, i + 1, {"epoch": epoch, "step": step, "train/loss": global_loss})
            t0 = time.perf_counter()
        skip_in_epoch = 0
        schedule.step_epoch()
        elapsed = time.perf_counter() - t_epoch
        metrics = {"epoch": epoch, "step": step, "train/loss_epoch": loss_sum / max(n_steps, 1),
                   "train/losses": losses,
                   "train/steps": n_steps, "train/data_wait_fraction": wait / max(elapsed, 1e-9),
                   "train/epoch_s": elapsed, "train/torch_threads": torch.get_num_threads()}
        if val_shard is not None and ((epoch + 1) % loop.val_every_epochs == 0 or epoch + 1 == loop.num_epochs):
            model.eval()
            with torch.no_grad():
                metrics.update({f"val/{k}": v for k, v in stage.validate(model, val_shard, device).items()})
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if rank == 0:
            epoch_times.append(elapsed)
            log.info(epoch_line(stage.name, epoch, loop.num_epochs, n_steps, metrics, epoch_times,
                                loop.batch_size * world))
        report(epoch + 1, 0, metrics)
    if rank == 0 and loop.tracking.register_as:
        tracker.register_model(inner.cpu(), tags=config.get("lineage") or {"stage": stage.name},
                               spec=stage.model_spec())
    tracker.end()

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

def run_stage(stage: Stage, loop: LoopConfig, scale: ScaleConfig, run: RunSettings,
              datasets: dict, val_split: bool = True, callbacks: list | None = None, lineage: dict | None = None):
    """Build and fit the ``TorchTrainer``; returns the Ray ``Result``.

    ``callbacks``: Ray Train V2 ``UserCallback``s for the ``RunConfig`` (e.g. Tune's
    ``TuneReportCallback`` when called from a Tune trial); ``lineage``: extra tags for the registered
    model (merged over ``{"stage": ..., **stage.lineage()}``)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = run.storage_path
    if "://" not in storage:
        storage = os.path.abspath(storage)
        os.makedirs(storage, exist_ok=True)
    init_ray(scale.address)
    require_resources({"CPU": scale.cpus_per_worker, "GPU": 1.0 if scale.use_gpu else 0.0}, scale.num_workers,
                      f"scale.num_workers={scale.num_workers} x (scale.cpus_per_worker={scale.cpus_per_worker}"
                      + (", 1 GPU)" if scale.use_gpu else ")"), wait=scale.wait_for_resources)
    split = ["train", "val"] if val_split and "val" in datasets else ["train"]
    trainer = TorchTrainer(
        stage_loop,
        train_loop_config={"stage": stage, "loop": loop, "checkpoint_every_steps": run.checkpoint_every_steps,
                           "torch_threads": scale.torch_threads,
                           "lineage": {"stage": stage.name, **stage.lineage(), **(lineage or {})}},
        scaling_config=ScalingConfig(num_workers=scale.num_workers, use_gpu=scale.use_gpu,
                                     resources_per_worker={"CPU": scale.cpus_per_worker}),
        run_config=RunConfig(name=run.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep),
                             callbacks=list(callbacks or [])),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split),
    )
    return trainer.fit()
