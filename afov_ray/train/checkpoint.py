"""Training checkpoints: plain state dicts, written atomically, loaded with ``weights_only=True``.

A checkpoint is a directory holding ``state.pt`` (model / optimiser / schedule state, epoch, step,
the resolved config as plain data) and ``meta.json`` (the same small metadata, readable without
torch). ``state.pt`` is written to a temporary name and renamed into place, so a crash never leaves
a half-written file under the final name; Ray Train then uploads the whole directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, *, model_state: dict, epoch: int, step: int,
                    optimizer_state: dict | None = None, schedule_state: dict | None = None,
                    config: dict | None = None, metrics: dict | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {"model": model_state, "optimizer": optimizer_state, "schedule": schedule_state,
             "epoch": int(epoch), "step": int(step), "config": config or {}}
    _atomic_torch_save(state, d / STATE_FILE)
    meta = {"epoch": int(epoch), "step": int(step), "metrics": metrics or {}}
    _atomic_text(json.dumps(meta, indent=1, default=float), d / META_FILE)
    return d


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> dict:
    p = Path(directory)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.exists():
        raise FileNotFoundError(f"checkpoint file not found: {f}")
    return torch.load(f, map_location=map_location, weights_only=True)
