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

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class TrackingConfig:
    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db"})
    experiment: str = field(default="afov_ray", metadata={"help": "MLflow experiment name"})
    run_name: str | None = field(default=None, metadata={"help": "MLflow run name"})
    register_as: str | None = field(default=None, metadata={
        "help": "registered model name (e.g. afov-tmp); None: do not register"})
    alias: str | None = field(default="current", metadata={
        "help": "alias moved to each newly registered version ('latest' is reserved by MLflow)"})
    enabled: bool = field(default=True, metadata={"help": "track at all (rank 0 only)"})
    tags: dict[str, str] = field(default_factory=dict, metadata={"help": "extra tags set on the MLflow run"})


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


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
                       tags: dict | None = None) -> int | None:
        """Log ``model`` under this run and register it; returns the new version number."""
        if not self.active:
            return None
        name = name or self.cfg.register_as
        if not name:
            return None
        return register_model(self.tracking_uri, self.run_id, model, name,
                              alias if alias is not None else self.cfg.alias, tags)

    def end(self, status: str = "FINISHED") -> None:
        if self.active and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.end("FAILED" if exc_type else "FINISHED")
        return False


def register_model(tracking_uri: str, run_id: str, model: torch.nn.Module, name: str,
                   alias: str | None = None, tags: dict | None = None) -> int:
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
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, str(version), k, str(v))
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return version


def load_model_state(uri: str, tracking_uri: str | None = None) -> dict[str, torch.Tensor]:
    """A plain model state dict from a registry URI, run URI, checkpoint directory/file or s3:// URI."""
    if uri.startswith(("models:/", "runs:/")):
        import mlflow
        import mlflow.pytorch

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    if uri.startswith("s3://"):
        from afov_ray.storage import uri as suri

        with tempfile.TemporaryDirectory() as td:
            fs, path = suri.resolve(uri)
            info = fs.get_file_info(path)
            import pyarrow.fs as pafs

            if info.type == pafs.FileType.Directory:
                path = path.rstrip("/") + "/state.pt"
            local = Path(td) / "state.pt"
            with fs.open_input_stream(path) as src:
                local.write_bytes(src.read())
            return _state_from_file(local)
    p = Path(uri)
    if p.is_dir():
        p = p / "state.pt"
    if not p.exists():
        raise FileNotFoundError(f"model not found: {uri}")
    return _state_from_file(p)


def _state_from_file(path: Path) -> dict[str, torch.Tensor]:
    from afov_ray.models.checkpoint import extract_state_dict

    return dict(extract_state_dict(torch.load(path, map_location="cpu", weights_only=True)))



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

    from afov_ray.storage import uri as suri

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

    from afov_ray.storage import uri as suri

    out = {"teacher.run": run_uri}
    meta = suri.join(run_uri, "run.json")
    if suri.exists(meta):
        d = json.loads(suri.read_bytes(meta))
        out["teacher.run_id"] = str(d.get("run_id", ""))
        out["teacher.name"] = str(d.get("name", d.get("teacher", "")))
    return out
