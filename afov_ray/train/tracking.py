"""MLflow tracking: one run per job, resilient to a flaky tracking server, with lineage tags.

Ray Train V2 has no native MLflow callback, so every job tracks by hand:

- the **driver** creates (or, when a job resumes, reopens) the run before training starts: a short
  connection check first (an unreachable server is a one-line ``ConfigError``, not a job hanging in HTTP
  retries), then the whole resolved job config as params (every key, flattened, credentials stripped),
  ``config.yaml`` and the data fingerprint as artifacts and the command line as a tag; at the end it sets
  the run's status on every exit path (FINISHED, FAILED, KILLED), so no run is left RUNNING;
- **rank 0** logs metrics into that run. Every call is bounded (short HTTP timeouts, few retries); metrics
  that could not be sent are kept and sent with the next call, and how many were finally lost is logged
  as a tag. After a restore, steps already logged before the failure are not logged twice.

The default tracking store is a local sqlite file (``sqlite:///<root>/mlflow.db``) with artifacts beside it;
any tracking URI is accepted (``MLFLOW_TRACKING_URI`` or the config). Models are registered by
``afov_ray.train.registry``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afov_ray.config import ConfigError, flatten, option
from afov_ray.log import get_logger, redact_uri
from afov_ray.storage import uri as suri

log = get_logger(__name__)

# bounded HTTP behaviour of the MLflow client (its defaults retry for minutes on a dead server)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}
MAX_PENDING_METRICS = 100_000


@dataclass
class TrackingConfig:
    tracking_uri: str | None = option(None, "MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else "
                                            "sqlite:///outputs/mlflow.db")
    experiment: str = option("afov_ray", "MLflow experiment name")
    run_name: str | None = option(None, "MLflow run name")
    register_as: str | None = option(None, "registered model name (e.g. afov-tmp); None: do not register")
    alias: str | None = option("current", "alias moved to the newly registered version when it validated at least "
                                          "as well as the version the alias points to ('latest' is reserved by MLflow)")
    force_alias: bool = option(False, "move the alias even when the new version validated worse")
    enabled: bool = option(True, "track at all")
    tags: dict[str, str] = option({}, "extra tags set on the MLflow run")


def bounded_http() -> None:
    """Short timeouts and few retries for MLflow's HTTP client (only where the user set nothing)."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


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


def client_for(tracking_uri: str):
    import mlflow

    bounded_http()
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def check_connection(tracking_uri: str, what: str = "loop.tracking.tracking_uri") -> None:
    """A quick call against the tracking store; raises ConfigError naming the (redacted) URI if it fails."""
    try:
        client_for(tracking_uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - MlflowException, connection errors, bad URIs
        raise ConfigError(f"config key {what!r}: the MLflow tracking store {redact_uri(tracking_uri)} is not reachable "
                          f"({type(e).__name__}: {redact_uri(str(e).splitlines()[0])[:200]})") from None


def ensure_experiment(tracking_uri: str, name: str) -> str:
    client = client_for(tracking_uri)
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


def _safe_params(config: dict) -> dict[str, str]:
    """Flattened params, every URI-looking value stripped of credentials, values cut to MLflow's limit."""
    out = {}
    for k, v in flatten(config).items():
        s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        out[k[:250]] = (redact_uri(s) or "")[:6000]
    return out


def command_line() -> str:
    return redact_uri(" ".join([os.path.basename(sys.executable), *sys.argv])) or ""


class Tracker:
    """One MLflow run. On ranks other than 0, or with tracking disabled, every call does nothing.

    Metric logging never raises: a failed call keeps its metrics for the next one (bounded), and
    ``lost_metrics`` counts what could not be sent in the end."""

    def __init__(self, cfg: TrackingConfig, rank: int = 0, root: str | Path = "outputs"):
        self.cfg = cfg
        self.active = bool(cfg.enabled and rank == 0)
        self.tracking_uri = cfg.tracking_uri or default_tracking_uri(root)
        self.run_id: str | None = None
        self._client = None
        self._pending: list = []
        self.lost_metrics = 0
        self.skip_until_step = -1   # steps <= this were logged before a restore

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    # --- the run --------------------------------------------------------------------------------
    def start(self, params: dict | None = None, tags: dict | None = None, run_id: str | None = None) -> str | None:
        """Create the run (params flattened and redacted), or reopen ``run_id`` (set RUNNING again)."""
        if not self.active:
            return None
        exp_id = ensure_experiment(self.tracking_uri, self.cfg.experiment)
        if run_id:
            self.run_id = run_id
            try:
                self.client.update_run(run_id, status="RUNNING")
            except Exception as e:  # noqa: BLE001
                log.warning("MLflow: cannot reopen run %s (%s)", run_id, e)
            return self.run_id
        all_tags = {str(k): str(v) for k, v in {**(self.cfg.tags or {}), **(tags or {})}.items()}
        run = self.client.create_run(exp_id, run_name=self.cfg.run_name, tags=all_tags)
        self.run_id = run.info.run_id
        if params:
            self.log_params(params)
        return self.run_id

    def attach(self, run_id: str | None) -> None:
        """Log into an existing run (rank 0 of a Train job: the driver created it). After a restore, the
        steps already in the run's history are not logged again."""
        if not self.active or not run_id:
            return
        self.run_id = run_id
        try:
            hist = self.client.get_metric_history(run_id, "train/loss")
            self.skip_until_step = max((m.step for m in hist), default=-1)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: cannot read the metric history of %s (%s)", run_id, e)

    def log_params(self, params: dict) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        flat = [Param(k, v) for k, v in _safe_params(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, step_metric: bool = False) -> bool:
        """Log ``metrics`` at ``step`` (plus anything pending from failed calls); True if sent.
        ``step_metric``: a per-step metric, skipped when the step was already logged before a restore."""
        if not self.active or not self.run_id:
            return True
        from mlflow.entities import Metric

        if step_metric and step is not None and step <= self.skip_until_step:
            return True
        ts = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items()
                          if isinstance(v, (int, float)) and v == v]
        try:
            for i in range(0, len(self._pending), 1000):
                self.client.log_batch(self.run_id, metrics=self._pending[i:i + 1000])
            self._pending = []
            return True
        except Exception as e:  # noqa: BLE001 - the server is down: keep the metrics, training goes on
            if len(self._pending) > MAX_PENDING_METRICS:
                drop = len(self._pending) - MAX_PENDING_METRICS
                self._pending = self._pending[drop:]
                self.lost_metrics += drop
            log.warning("MLflow: %d metric values not sent yet (%s: %s)", len(self._pending), type(e).__name__,
                        str(e).splitlines()[0][:120])
            return False

    def flush(self) -> None:
        """Try once more to send pending metrics; what cannot be sent is counted as lost."""
        if self._pending and not self.log_metrics({}):
            self.lost_metrics += len(self._pending)
            self._pending = []
        if self.lost_metrics:
            self.set_tags({"afov.lost_metrics": self.lost_metrics})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.active or not self.run_id:
            return
        try:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: tags not set (%s)", e)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if not self.active:
            return
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if not self.active:
            return
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Set the run's final status (best effort: a server that stays down is logged, not raised)."""
        if not (self.active and self.run_id):
            return
        self.flush()
        for attempt in range(3):
            try:
                self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as e:  # noqa: BLE001
                if attempt == 2:
                    log.warning("MLflow: run %s could not be marked %s (%s)", self.run_id, status, e)
                time.sleep(1.0)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        status = "FINISHED" if exc_type is None else ("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        self.end(status)
        return False


def log_job_config(tracker: Tracker, config: dict, fingerprint: dict | None = None) -> None:
    """The run's self-description: ``config.yaml`` (the whole resolved job config) and ``data_fingerprint.json``
    as artifacts, the command line as a tag."""
    import yaml

    if not tracker.active:
        return
    tracker.log_text(yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False), "config.yaml")
    if fingerprint:
        tracker.log_dict(fingerprint, "data_fingerprint.json")
    tracker.set_tags({"afov.command": command_line()})


def run_config(run_id: str, tracking_uri: str) -> dict:
    """The resolved job config stored with an MLflow run (``config.yaml``), to re-run it (``--from-run``)."""
    import mlflow
    import yaml

    bounded_http()
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                   tracking_uri=tracking_uri)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--from-run {run_id}: no config.yaml in that run at {redact_uri(tracking_uri)} "
                          f"({type(e).__name__}: {redact_uri(str(e).splitlines()[0])[:160]})") from None
    return yaml.safe_load(Path(path).read_text()) or {}


# --- lineage tags of registered models -------------------------------------------------------------

def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package was imported from, else $AFOV_GIT_COMMIT,
    else "unknown" (e.g. a ``ray job submit`` working_dir copy has no .git)."""
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
    listing (names, sizes)."""
    manifest = suri.join(uri, "_manifest.json")
    if suri.exists(manifest):
        return {"data.uri": uri, "data.sha256": hashlib.sha256(suri.read_bytes(manifest)).hexdigest(),
                "data.sha256_of": "_manifest.json"}
    names = sorted(suri.listdir(uri))
    if not names:
        raise FileNotFoundError(f"data folder is empty or missing: {uri}")
    listing = [[n, suri.file_size(suri.join(uri, n))] for n in names if n.endswith(".parquet")]
    blob = json.dumps({"shards": listing}, sort_keys=True).encode()
    return {"data.uri": uri, "data.sha256": hashlib.sha256(blob).hexdigest(), "data.sha256_of": "listing"}


def teacher_lineage(run_uri: str) -> dict[str, str]:
    """``teacher.run`` (URI) and ``teacher.run_id`` (from its ``run.json``) of a teacher run folder."""
    out = {"teacher.run": run_uri}
    meta = suri.join(run_uri, "run.json")
    if suri.exists(meta):
        d = json.loads(suri.read_bytes(meta))
        out["teacher.run_id"] = str(d.get("run_id", ""))
        out["teacher.name"] = str(d.get("name", d.get("teacher", "")))
    return out
