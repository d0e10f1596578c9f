"""Training checkpoints: plain state dicts, written atomically, loaded with ``weights_only=True``.

A checkpoint is a directory holding ``state.pt`` (model / optimiser / schedule state, epoch, step,
the resolved config as plain data) and ``meta.json`` (the same small metadata plus the model's contract
``model_spec`` and the settings the fit trains with, ``afov_ray.train.resume``; readable without torch).
Both are written with the one atomic writer (``afov_ray.storage.atomic``), so a crash never leaves a
half-written file under the final name; Ray Train then uploads the whole directory.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save_checkpoint(directory: str | Path, *, model_state: dict, epoch: int, step: int,
                    optimizer_state: dict | None = None, schedule_state: dict | None = None,
                    config: dict | None = None, metrics: dict | None = None, model_spec: dict | None = None,
                    settings: dict | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {"model": model_state, "optimizer": optimizer_state, "schedule": schedule_state,
             "epoch": int(epoch), "step": int(step), "config": config or {}, "model_spec": model_spec}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(str(d / STATE_FILE), buf.getvalue())
    meta = {"epoch": int(epoch), "step": int(step), "metrics": _plain(metrics or {}), "model_spec": model_spec,
            "mlflow_run_id": (config or {}).get("mlflow_run_id")}
    if settings is not None:   # what the fit trains (afov_ray.train.resume): a resume with others is refused
        meta["settings"] = settings
    atomic_write_json(str(d / META_FILE), meta, indent=1)
    return d


def _plain(metrics: dict) -> dict:
    return json.loads(json.dumps(metrics, default=float))


def read_meta(directory: str | Path) -> dict:
    p = Path(directory) / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> dict:
    p = Path(directory)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.exists():
        raise FileNotFoundError(f"checkpoint file not found: {f}")
    return torch.load(f, map_location=map_location, weights_only=True)
