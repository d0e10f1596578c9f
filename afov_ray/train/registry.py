"""The model registry: registering a trained network as weights + contract, and loading one back.

A registered version is an MLflow pyfunc model logged *from code* (``afov_ray.serving.model``) with:

- ``artifacts/weights.pt``: the state dict (engine-independent layout), read with ``torch.load(weights_only=True)``;
- ``artifacts/spec.json``: the model's contract (``afov_ray.models.spec.ModelSpec``);
- the ``afov_ray`` package source (``code_paths``), a signature, an input example and complete pip requirements,
  so ``mlflow.pyfunc.load_model(uri).predict(points)`` runs anywhere torch and mlflow are installed.

No pickled Python object is stored or loaded: ``load_model`` (used by predict, AFI, distillation and
fine-tuning) downloads the two artifacts and never executes code from the model; a version in MLflow's
pickle format is refused with a clear error.

Aliases move only forward: the alias (``current``) is given to a new version only when it validated at least
as well as the version the alias points to (``afov.val_score`` tag), unless forced.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afov_ray.errors import DataError
from afov_ray.log import get_logger, redact_uri
from afov_ray.models.checkpoint import extract_state_dict
from afov_ray.models.spec import ModelSpec
from afov_ray.storage import uri as suri
from afov_ray.train.tracking import bounded_http, client_for, default_tracking_uri

log = get_logger(__name__)

FORMAT = "weights+spec/1"
FORMAT_TAG = "afov.format"
SPEC_TAG = "afov.model_spec"
SCORE_TAG = "afov.val_score"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Registration:
    name: str
    version: int
    run_id: str
    alias: str | None
    alias_moved: bool
    reason: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _requirements() -> list[str]:
    import mlflow
    import yaml

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
            f"pyyaml=={yaml.__version__}"]


def _example(spec: ModelSpec) -> np.ndarray:
    rng = np.random.default_rng(0)
    pts = np.zeros((64, 4), np.float32)
    pts[:, 0] = rng.uniform(2, 20, 64)
    pts[:, 1] = rng.uniform(-10, 10, 64)
    pts[:, 2] = rng.uniform(-2, 1, 64)
    pts[:, 3] = rng.uniform(0, 100, 64)
    return pts


def register(tracking_uri: str, run_id: str, state: dict[str, torch.Tensor], spec: ModelSpec, name: str, *,
             alias: str | None = "current", tags: dict[str, Any] | None = None, score: float | None = None,
             force_alias: bool = False) -> Registration:
    """Log the weights + contract under ``run_id`` as a new version of ``name``; move ``alias`` when the new
    version's ``score`` (validation mIoU) is at least the aliased version's, or when forced or unscored."""
    import mlflow
    from mlflow.models import infer_signature

    bounded_http()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)   # a registry URI set earlier in this process (e.g. by Tune's
    client = client_for(tracking_uri)        # MLflowLoggerCallback) would otherwise receive the model
    example = _example(spec)
    out_example = (np.zeros(len(example), np.int64) if spec.task == "segmentation"
                   else np.zeros((len(example), spec.out_channels), np.float32))
    with tempfile.TemporaryDirectory() as td:
        weights, spec_file, code = Path(td) / "weights.pt", Path(td) / "spec.json", Path(td) / "afov_model.py"
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, weights)
        spec_file.write_text(spec.to_json())
        code.write_text("import mlflow\nfrom afov_ray.serving.model import SegmentationModel\n\n"
                        "mlflow.models.set_model(SegmentationModel())\n")
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(code), artifacts={"weights": str(weights), "spec": str(spec_file)},
                code_paths=[str(PACKAGE_DIR)], pip_requirements=_requirements(),
                signature=infer_signature(example, out_example), input_example=example,
                registered_model_name=name)
    version = int(info.registered_model_version)
    all_tags = {**(tags or {}), FORMAT_TAG: FORMAT, SPEC_TAG: spec.to_json()}
    if score is not None:
        all_tags[SCORE_TAG] = f"{float(score):.10g}"
    for k, v in all_tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))
    client.set_tag(run_id, SPEC_TAG, spec.to_json())
    moved, reason = False, "no alias requested"
    if alias:
        moved, reason = _alias_decision(client, name, alias, score, force_alias)
        if moved:
            client.set_registered_model_alias(name, alias, str(version))
        else:
            client.set_model_version_tag(name, str(version), "afov.alias_not_moved", reason)
            log.warning("registry: %s v%d registered, alias %r not moved: %s", name, version, alias, reason)
    return Registration(name, version, run_id, alias, moved, reason)


def _alias_decision(client, name: str, alias: str, score: float | None, force: bool) -> tuple[bool, str]:
    if force:
        return True, "forced (loop.tracking.force_alias)"
    try:
        current = client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - no such alias yet
        return True, "first version with this alias"
    old = (current.tags or {}).get(SCORE_TAG)
    if old is None or score is None:
        return True, "no validation score to compare"
    if float(score) >= float(old):
        return True, f"validated {float(score):.4f} >= {float(old):.4f} of v{current.version}"
    return False, (f"validated {float(score):.4f} < {float(old):.4f} of v{current.version} (set "
                   f"loop.tracking.force_alias=true to move it anyway)")


# ------------------------------------------------------------------------------------------------
# loading


def load_model(uri: str, tracking_uri: str | None = None) -> tuple[dict[str, torch.Tensor], ModelSpec | None]:
    """(state dict, ModelSpec or None) from ``models:/name@alias``, ``models:/name/N``, ``runs:/...``, a checkpoint
    folder or ``.pt`` file, or ``s3://``. Never unpickles anything: weights are read with ``weights_only=True``.
    Official checkpoints have no spec (None)."""
    if uri.startswith(("models:/", "runs:/")):
        return _load_registered(uri, tracking_uri)
    if uri.startswith("s3://"):
        import pyarrow.fs as pafs

        fs, path = suri.resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(uri, "model not found")
        if info.type == pafs.FileType.Directory:
            path = path.rstrip("/") + "/state.pt"
        with tempfile.TemporaryDirectory() as td:
            local = Path(td) / "state.pt"
            with fs.open_input_stream(path) as src:
                local.write_bytes(src.read())
            return _state_and_spec(local)
    p = Path(uri)
    if p.is_dir():
        p = p / "state.pt"
    if not p.exists():
        raise DataError(uri, "model not found (no such checkpoint folder or file)")
    return _state_and_spec(p)


def load_model_state(uri: str, tracking_uri: str | None = None) -> dict[str, torch.Tensor]:
    return load_model(uri, tracking_uri)[0]


def _load_registered(uri: str, tracking_uri: str | None):
    import mlflow

    bounded_http()
    try:
        with tempfile.TemporaryDirectory() as td:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=_artifact_uri(uri, tracking_uri), dst_path=td,
                                                             tracking_uri=tracking_uri))
            weights, spec_file = local / "artifacts" / "weights.pt", local / "artifacts" / "spec.json"
            if not (weights.exists() and spec_file.exists()):
                flavour = "pickled PyTorch model" if (local / "data").exists() else "unknown format"
                raise DataError(uri, f"not a weights + contract model ({flavour}): afov_ray loads no pickled models; "
                                     f"re-register it from its checkpoint")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            spec = ModelSpec.from_dict(json.loads(spec_file.read_text()))
            return dict(state), spec
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException / missing artifacts: one line naming the URI
        raise DataError(uri, f"cannot load the model from {redact_uri(tracking_uri or 'the default tracking store')} "
                             f"({type(e).__name__}: {redact_uri(str(e).splitlines()[0])[:200]})") from None


def _artifact_uri(uri: str, tracking_uri: str | None) -> str:
    """The storage location of a ``models:/name@alias`` or ``models:/name/N`` version, resolved against this
    tracking store's registry (not a registry URI set elsewhere in the process)."""
    if not uri.startswith("models:/"):
        return uri
    client = client_for(tracking_uri) if tracking_uri else client_for(default_tracking_uri())
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, version = rest.rsplit("/", 1)
    return client.get_model_version_download_uri(name, str(version))


def _state_and_spec(path: Path):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a weights-only checkpoint: never unpickle code
        raise DataError(str(path), f"not a weights-only checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    spec = obj.get("model_spec") if isinstance(obj, dict) else None
    return dict(extract_state_dict(obj)), (ModelSpec.from_dict(spec) if spec else None)
