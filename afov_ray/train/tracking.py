"""MLflow tracking on rank 0 and the model registry (anchors.md section 3 (d)).

Ray Train V2 has no native MLflow callback, so every job tracks by hand on rank 0 through this thin
module: start a run, log the resolved config as params, metrics per step / epoch, checkpoint URIs
as tags, and register models with versions, aliases and lineage tags. On other ranks ``Tracker``
is a no-op with the same methods.

The default tracking store is a local sqlite file (``sqlite:///<root>/mlflow.db``) with artifacts
beside it; any tracking URI is accepted (``MLFLOW_TRACKING_URI`` or the config). ``load_model_state``
resolves ``models:/name@alias``, ``models:/name/version``, ``runs:/...``, checkpoint directories,
``.pt`` files, and ``s3://`` URIs to a plain state dict.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from afov_ray.config import flatten, option
from afov_ray.errors import DataError
from afov_ray.models.checkpoint import extract_state_dict
from afov_ray.models.spec import ModelSpec
from afov_ray.storage import uri as suri

if TYPE_CHECKING:  # pragma: no cover
    from afov_ray.models.spec import ModelSpec

@dataclass
class TrackingConfig:
    tracking_uri: str | None = option(None, "MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else "
                                            "sqlite:///outputs/mlflow.db")
    experiment: str = option("afov_ray", "MLflow experiment name")
    run_name: str | None = option(None, "MLflow run name")
    register_as: str | None = option(None, "registered model name (e.g. afov-tmp); None: do not register")
    alias: str | None = option("current", "alias moved to each newly registered version ('latest' is reserved "
                                          "by MLflow)")
    enabled: bool = option(True, "track at all (rank 0 only)")
    tags: dict[str, str] = option({}, "extra tags set on the MLflow run")

def default_tracking_uri(root: str | Path = "outputs") -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"

def _artifact_root(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").absolute().as_uri()
    return None

def ensure_experiment(tracking_uri: str, name: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(tracking_uri))
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id

class Tracker:
    """Rank-0 MLflow run. Use as a context manager; on other ranks every call does nothing."""

    def __init__(self, cfg: TrackingConfig, rank: int = 0, root: str | Path = "outputs"):
        self.cfg = cfg
        self.active = bool(cfg.enabled and rank == 0)
        self.tracking_uri = cfg.tracking_uri or default_tracking_uri(root)
        self.run_id: str | None = None
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def start(self, params: dict | None = None, tags: dict | None = None, run_id: str | None = None) -> str | None:
        """Start (or, given ``run_id``, resume) the run; logs flattened params."""
        if not self.active:
            return None
        exp_id = ensure_experiment(self.tracking_uri, self.cfg.experiment)
        if run_id:
            self.run_id = run_id
        else:
            all_tags = {str(k): str(v) for k, v in {**(self.cfg.tags or {}), **(tags or {})}.items()}
            run = self.client.create_run(exp_id, run_name=self.cfg.run_name, tags=all_tags)
            self.run_id = run.info.run_id
            if params:
                self.log_params(params)
        return self.run_id

    def log_params(self, params: dict) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active or not metrics:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=ms)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.active:
            return
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if not self.active:
            return
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def register_model(self, model: torch.nn.Module, name: str | None = None, alias: str | None = None,
                       tags: dict | None = None, spec: "ModelSpec | None" = None) -> int | None:
        """Log ``model`` (with its contract ``spec``) under this run and register it; returns the version."""
        if not self.active:
            return None
        name = name or self.cfg.register_as
        if not name:
            return None
        return register_model(self.tracking_uri, self.run_id, model, name,
                              alias if alias is not None else self.cfg.alias, tags, spec=spec)

    def end(self, status: str = "FINISHED") -> None:
        if self.active and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.end("FAILED" if exc_type else "FINISHED")
        return False

def register_model(tracking_uri: str, run_id: str, model: torch.nn.Module, name: str,
                   alias: str | None = None, tags: dict | None = None, spec: "ModelSpec | None" = None) -> int:
    """``mlflow.pytorch.log_model`` (pickle format: torch.export cannot trace sparse engines) + alias."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)   # a registry URI set earlier in this process (e.g. by Tune's
    with mlflow.start_run(run_id=run_id):   # MLflowLoggerCallback) would otherwise receive the model
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=name,
        )
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = int(info.registered_model_version)
    if spec is not None:
        tags = {**(tags or {}), SPEC_TAG: spec.to_json()}
        client.set_tag(run_id, SPEC_TAG, spec.to_json())
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, str(version), k, str(v))
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return version

SPEC_TAG = "afov.model_spec"

def load_model(uri: str, tracking_uri: str | None = None) -> tuple[dict[str, torch.Tensor], "ModelSpec | None"]:
    """(state dict, ModelSpec or None) from a registry URI, run URI, checkpoint directory/file or s3:// URI.
    The spec is the model's contract (``afov_ray.models.spec``); official checkpoints have none."""

    if uri.startswith(("models:/", "runs:/")):
        import mlflow
        import mlflow.pytorch

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        try:
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - MlflowException / missing artifacts: one line naming the URI
            raise DataError(uri, f"cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        spec_json = _registry_spec(uri, tracking_uri)
        return state, (ModelSpec.from_dict(json.loads(spec_json)) if spec_json else None)
    if uri.startswith("s3://"):

        with tempfile.TemporaryDirectory() as td:
            fs, path = suri.resolve(uri)
            info = fs.get_file_info(path)
            import pyarrow.fs as pafs

            if info.type == pafs.FileType.NotFound:
                raise DataError(uri, "model not found")
            if info.type == pafs.FileType.Directory:
                path = path.rstrip("/") + "/state.pt"
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
    """A plain model state dict (see ``load_model``)."""
    return load_model(uri, tracking_uri)[0]

def _registry_spec(uri: str, tracking_uri: str | None) -> str | None:
    """The ``afov.model_spec`` tag of a registered model version (models:/name@alias, models:/name/N)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    rest = uri[len("models:/"):] if uri.startswith("models:/") else None
    try:
        if rest is None:
            run_id = uri[len("runs:/"):].split("/")[0]
            return client.get_run(run_id).data.tags.get(SPEC_TAG)
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = rest.rsplit("/", 1)
            mv = client.get_model_version(name, version)
        return (mv.tags or {}).get(SPEC_TAG) or client.get_run(mv.run_id).data.tags.get(SPEC_TAG)
    except Exception:  # noqa: BLE001 - no spec: the caller falls back to its own settings
        return None

def _state_and_spec(path: Path):

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a weights-only checkpoint: never unpickle code
        raise DataError(str(path), f"not a weights-only checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    spec = obj.get("model_spec") if isinstance(obj, dict) else None
    if spec is None and isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        spec = obj["config"].get("model_spec")
    return dict(extract_state_dict(obj)), (ModelSpec.from_dict(spec) if spec else None)

# --- lineage tags of registered models -------------------------------------------------------------

def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package was imported from, else $AFOV_GIT_COMMIT,
    else "unknown" (e.g. a ``ray job submit`` working_dir copy has no .git)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("AFOV_GIT_COMMIT", "unknown")

def data_fingerprint(uri: str) -> dict[str, str]:
    """Identity of a shard folder: sha256 of its ``_manifest.json`` when there is one, else of its
    listing (names, sizes) plus ``_stats.json`` (the pair pass writes statistics, not a manifest)."""
    import hashlib
    import json

    manifest = suri.join(uri, "_manifest.json")
    if suri.exists(manifest):
        return {"data.uri": uri, "data.sha256": hashlib.sha256(suri.read_bytes(manifest)).hexdigest(),
                "data.sha256_of": "_manifest.json"}
    names = sorted(suri.listdir(uri))
    if not names:
        raise FileNotFoundError(f"data folder is empty or missing: {uri}")
    listing = [[n, suri.file_size(suri.join(uri, n))] for n in names if n.endswith(".parquet")]
    stats = suri.join(uri, "_stats.json")
    stats_sha = hashlib.sha256(suri.read_bytes(stats)).hexdigest() if suri.exists(stats) else None
    blob = json.dumps({"shards": listing, "_stats.json": stats_sha}, sort_keys=True).encode()
    return {"data.uri": uri, "data.sha256": hashlib.sha256(blob).hexdigest(),
            "data.sha256_of": "listing+_stats.json" if stats_sha else "listing"}

def teacher_lineage(run_uri: str) -> dict[str, str]:
    """``teacher.run`` (URI) and ``teacher.run_id`` (from its ``run.json``) of a teacher run folder."""
    import json

    out = {"teacher.run": run_uri}
    meta = suri.join(run_uri, "run.json")
    if suri.exists(meta):
        d = json.loads(suri.read_bytes(meta))
        out["teacher.run_id"] = str(d.get("run_id", ""))
        out["teacher.name"] = str(d.get("name", d.get("teacher", "")))
    return out
