"""The MLflow serving model of a registered afov_ray network: N x 4 LiDAR points in, per-point labels out.

``mlflow.pyfunc.load_model("models:/afov-distill@current").predict(points)`` works in any Python with torch,
numpy, pyyaml and mlflow installed, without this repository: the registered model carries the ``afov_ray``
package source (MLflow ``code_paths``), its weights (``weights.pt``, read with ``torch.load(weights_only=True)``:
no pickled objects) and its contract (``spec.json``: architecture, classes, voxel grid and size). The model is
logged "from code" (``afov_ray.train.registry``), so nothing in a model file is unpickled on load.

Input: an (N, 4) float array ``x, y, z, intensity`` in the LiDAR frame (raw intensity, as in the training data),
or a DataFrame with those columns. Output: (N,) int64 labels (class 0, the ignore class, is never predicted
unless ``params={"suppress_class0": False}``), or, for a TMP (feature) model, (N, D) float32 point features.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from afov_ray.geometry.voxelize import voxelize
from afov_ray.models.res16unet import build_model
from afov_ray.models.spec import ModelSpec

COLUMNS = ("x", "y", "z", "intensity")


def as_points(model_input: Any) -> np.ndarray:
    """(N, 4) float32 from an array or a DataFrame with columns x, y, z, intensity."""
    if hasattr(model_input, "columns"):
        missing = [c for c in COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {missing}; expected {list(COLUMNS)}")
        arr = model_input[list(COLUMNS)].to_numpy()
    else:
        arr = np.asarray(model_input)
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise ValueError(f"expected (N, 4) points [x, y, z, intensity], got shape {arr.shape}")
    arr = arr[:, :4].astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{int((~np.isfinite(arr)).any(1).sum())} points have NaN / inf values")
    return arr


class SegmentationModel(PythonModel):
    """Per-point inference with the registered network (CPU, or CUDA when available)."""

    def load_context(self, context) -> None:
        self.spec = ModelSpec.from_dict(json.loads(open(context.artifacts["spec"]).read()))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        s = self.spec
        self.model = build_model(s.name, s.in_channels, s.out_channels, "torch", s.bn_momentum,
                                 normalize_features=s.normalize_features)
        self.model.load_state_dict(state, strict=True)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def predict(self, context, model_input, params: dict | None = None):
        pts = as_points(model_input)
        s = self.spec
        vox = voxelize(torch.from_numpy(pts), grid=s.grid, voxel_size=s.voxel_size,
                       intensity_offset=s.intensity_offset)
        coords = torch.cat([torch.zeros(len(vox.coords), 1, dtype=torch.int32), vox.coords], dim=1)
        out = self.model(coords.to(self.device), vox.feats.to(self.device)).float()
        if s.task != "segmentation":
            return out.cpu()[vox.inverse].numpy()
        if (params or {}).get("suppress_class0", True):
            out[:, 0] = float("-inf")
        return out.argmax(1).cpu()[vox.inverse].numpy().astype(np.int64)
