"""Checkpoint loading (official SLidR/AFOV MinkowskiEngine checkpoints) and engine-native layouts.

docs/method.md "Initialisation" and "Downstream settings": loading is shape-filtered (a 768-d TMP head is skipped, a
matching 17-way head is loaded) after stripping the prefixes ``model.``, ``model_points.``, ``module.``
and ``encoder.``. The canonical layout is MinkowskiEngine's, so official weights load without change.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import torch
from torch import nn

from afov_ray.models.engines.layout import canonical_to_spconv, spconv_to_canonical

PREFIXES = ("model.", "model_points.", "module.", "encoder.")
NATIVE_LAYOUTS = ("minkowski", "torch", "spconv")


@dataclasses.dataclass
class LoadReport:
    """Keys of the model that were loaded, and checkpoint keys skipped (with the reason)."""

    loaded: list[str]
    skipped: list[str]
    missing: list[str]


def strip_prefixes(key: str, prefixes: tuple[str, ...] = PREFIXES) -> str:
    """Remove any of ``prefixes`` from the start of ``key``, repeatedly (``module.model.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def extract_state_dict(checkpoint: Mapping) -> Mapping[str, torch.Tensor]:
    """The 3D network's weights from an official checkpoint dict (``model_points`` / ``state_dict``)."""
    for key in ("model_points", "state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def load_official_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping) -> LoadReport:
    """Shape-filtered load of an official (MinkowskiEngine-layout) checkpoint into ``model``.

    ``source``: a path (read with ``torch.load(weights_only=True)``) or an already-loaded dict.
    Returns the loaded model keys, the skipped checkpoint keys (``"key: reason"``), and the model keys
    absent from the checkpoint (e.g. a fresh head).
    """
    if isinstance(source, (str, os.PathLike)):
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    else:
        checkpoint = source
    weights = {strip_prefixes(k): v for k, v in extract_state_dict(checkpoint).items()}
    own = model.state_dict()
    to_load, skipped = {}, []
    for key, value in weights.items():
        if key not in own:
            skipped.append(f"{key}: not in model")
        elif tuple(own[key].shape) != tuple(value.shape):
            skipped.append(f"{key}: shape {tuple(value.shape)} != {tuple(own[key].shape)}")
        else:
            to_load[key] = value
    model.load_state_dict(to_load, strict=False)
    missing = [k for k in own if k not in to_load]
    return LoadReport(sorted(to_load), skipped, missing)


def to_native_state_dict(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Canonical (MinkowskiEngine) state dict -> an engine's native layout.

    ``minkowski`` and ``torch``: unchanged (same kernel order). ``spconv``: every ``*.kernel`` becomes
    ``*.weight`` of shape (Cout, k, k, k, Cin) (1x1 kernels: (Cout, 1, 1, 1, Cin)); other entries unchanged.
    """
    if layout not in NATIVE_LAYOUTS:
        raise ValueError(f"layout: expected one of {NATIVE_LAYOUTS}, got {layout!r}")
    if layout != "spconv":
        return {k: v.clone() for k, v in state_dict.items()}
    out = {}
    for k, v in state_dict.items():
        if k.endswith(".kernel"):
            out[k[: -len("kernel")] + "weight"] = canonical_to_spconv(v).contiguous()
        else:
            out[k] = v.clone()
    return out


def from_native_state_dict(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_native_state_dict` (bitwise: only permutations and reshapes)."""
    if layout not in NATIVE_LAYOUTS:
        raise ValueError(f"layout: expected one of {NATIVE_LAYOUTS}, got {layout!r}")
    if layout != "spconv":
        return {k: v.clone() for k, v in state_dict.items()}
    out = {}
    for k, v in state_dict.items():
        if k.endswith(".weight") and v.dim() == 5:
            out[k[: -len("weight")] + "kernel"] = spconv_to_canonical(v, one_by_one=v.shape[1] == 1)
        else:
            out[k] = v.clone()
    return out
