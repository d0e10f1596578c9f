"""Resuming a Train run: its checkpoint folders, its MLflow run, and the guard against resuming it with
other settings.

A fit is found by ``run.name`` + ``run.storage_path``: re-running the same name resumes from its latest
checkpoint (after a crash, a killed driver or a lost node). Each checkpoint's ``meta.json`` records the
settings that define what the fit trains (``training_settings``); a re-run whose settings differ is refused
before any worker starts (``check_resume``), naming the settings that changed, instead of silently
continuing the old fit under the new settings (or skipping it because the old fit had finished).

Settings that only change how a fit is logged, validated or fed (``RESUME_FREE``) may change on resume.
"""

from __future__ import annotations

import json
from typing import Any

from afov_ray.config import ConfigError, flatten, to_dict
from afov_ray.storage import uri as U

# dotted setting prefixes that do not change the trained weights (logging, validation cadence, ingest
# parallelism, where models:/ initial weights are looked up)
RESUME_FREE = ("loop.tracking.", "loop.log_every_steps", "loop.val_every_epochs", "ingest.cpus_per_task",
               "ingest.prefetch_batches", "model.tracking_uri")


def checkpoint_dirs(storage: str, name: str) -> list[str]:
    """Checkpoint folders of a Train run (``<storage>/<name>/checkpoint_*``, folders only), sorted."""
    import pyarrow.fs as pafs

    root = U.join(storage, name)
    fs, path = U.resolve(root)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(U.join(root, U.basename(i.path)) for i in infos
                  if i.type == pafs.FileType.Directory and U.basename(i.path).startswith("checkpoint_"))


def _metas(storage: str, name: str):
    """(folder, meta.json contents) of the run's checkpoints, newest first (unreadable ones skipped)."""
    for d in sorted(checkpoint_dirs(storage, name), reverse=True):
        meta = U.join(d, "meta.json")
        if U.exists(meta):
            try:
                yield d, json.loads(U.read_bytes(meta))
            except ValueError:
                continue


def previous_run_id(storage: str, name: str) -> str | None:
    """The MLflow run of an earlier, interrupted fit with the same run name and storage (resume)."""
    for _, meta in _metas(storage, name):
        if meta.get("mlflow_run_id"):
            return meta["mlflow_run_id"]
    return None


def training_settings(stage_name: str, stage_params: dict, loop) -> dict[str, Any]:
    """Flat ``{dotted key: value}`` of what a fit trains: the stage, its parameters and the loop, without
    ``RESUME_FREE`` settings (plain JSON values)."""
    flat = flatten({"stage": stage_name, **stage_params, "loop": to_dict(loop)})
    flat = {k: v for k, v in flat.items() if not k.startswith(RESUME_FREE)}
    return json.loads(json.dumps(flat, default=str, sort_keys=True))


def settings_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs (absent on one side: ``<unset>``), sorted."""
    missing = "<unset>"
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in sorted(set(old) | set(new))
            if old.get(k, missing) != new.get(k, missing)]


def check_resume(storage: str, name: str, settings: dict) -> None:
    """Raise ConfigError when the run's latest checkpoint that records its settings was trained with other
    ones. Checkpoints written before settings were recorded are not checked."""
    for d, meta in _metas(storage, name):
        if "settings" not in meta:
            continue
        diff = settings_diff(meta["settings"], settings)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise ConfigError(
                f"run.name={name!r} in {storage} holds a fit trained with other settings ({shown}); re-running a "
                f"run name resumes that fit, so pick a new run.name, or delete {U.join(storage, name)} to start "
                f"it over")
        return
