"""MLflow tracking and the model registry: runs, params, bounded outages, weights + contract models, aliases
that only move forward, and the serving model loaded in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from afov_ray.config import ConfigError, flatten
from afov_ray.errors import DataError
from afov_ray.models.res16unet import build_model
from afov_ray.models.spec import ModelSpec
from afov_ray.train.registry import load_model, load_model_state, register
from afov_ray.train.tracking import Tracker, TrackingConfig, check_connection

REPO = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(name="minkunet18", out_channels=17, voxel_size=0.2, class_names=tuple(f"c{i}" for i in range(17)))


def _state(seed=0):
    torch.manual_seed(seed)
    return build_model("minkunet18", 1, 17, "torch").state_dict()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_run_params_metrics_and_credentials_stripped(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrackingConfig(tracking_uri=uri, experiment="t", run_name="r")
    with Tracker(cfg) as tr:
        run_id = tr.start(params={"loop": {"optim": {"lr": 0.5}}, "epochs": 2,
                                  "loop.tracking.tracking_uri": "http://user:s3cret@mlflow:5000/x?token=abc"})
        assert tr.log_metrics({"loss": 1.5}, step=0) and tr.log_metrics({"loss": 0.5}, step=1)
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri)
    run = c.get_run(run_id)
    assert run.data.params["loop.optim.lr"] == "0.5" and run.info.status == "FINISHED"
    assert "s3cret" not in json.dumps(run.data.params) and "abc" not in json.dumps(run.data.params)
    assert [m.value for m in sorted(c.get_metric_history(run_id, "loss"), key=lambda m: m.step)] == [1.5, 0.5]


def test_tracker_status_on_exception_and_non_zero_rank(tmp_path):
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(RuntimeError):
        with Tracker(TrackingConfig(tracking_uri=uri, experiment="e")) as tr:
            rid = tr.start()
            raise RuntimeError("boom")
    import mlflow

    assert mlflow.MlflowClient(tracking_uri=uri).get_run(rid).info.status == "FAILED"
    tr = Tracker(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'y.db'}"), rank=1)
    assert tr.start(params={"a": 1}) is None
    tr.log_metrics({"x": 1.0})
    tr.end()
    assert not (tmp_path / "y.db").exists()


def test_unreachable_server_is_a_quick_clear_error():
    import time

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"loop.tracking.tracking_uri.*http://\*\*\*@127.0.0.1:9.*not reachable"):
        check_connection("http://user:pw@127.0.0.1:9")   # nothing listens on port 9
    assert time.monotonic() - t0 < 60


def test_metrics_kept_while_the_server_is_down(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tr = Tracker(TrackingConfig(tracking_uri=uri, experiment="e"))
    rid = tr.start()
    real = tr.client.log_batch
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("server down")
        return real(*a, **kw)

    monkeypatch.setattr(tr.client, "log_batch", flaky)
    assert not tr.log_metrics({"loss": 3.0}, step=1)      # down: kept, training goes on
    assert not tr.log_metrics({"loss": 2.0}, step=2)
    assert tr.log_metrics({"loss": 1.0}, step=3)          # back: everything pending is sent
    tr.end()
    import mlflow

    hist = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(rid, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 3.0), (2, 2.0), (3, 1.0)] and tr.lost_metrics == 0
    # after a restore, steps already in the history are not logged twice
    tr2 = Tracker(TrackingConfig(tracking_uri=uri, experiment="e"))
    tr2.attach(rid)
    tr2.log_metrics({"train/loss": 9.0}, step=3, step_metric=True)


def test_weights_and_contract_registry_and_forward_only_alias(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(TrackingConfig(tracking_uri=uri, experiment="reg"))
    rid = tr.start()
    s1, s2, s3 = _state(0), _state(1), _state(2)
    r1 = register(uri, rid, s1, SPEC, "afov-test", alias="current", tags={"config_hash": "abc"}, score=0.5)
    r2 = register(uri, rid, s2, SPEC, "afov-test", alias="current", score=0.4)    # worse: alias stays
    r3 = register(uri, rid, s3, SPEC, "afov-test", alias="current", score=0.6)    # better: alias moves
    r4 = register(uri, rid, s2, SPEC, "afov-test", alias="current", score=0.1, force_alias=True)
    tr.end()
    assert (r1.alias_moved, r2.alias_moved, r3.alias_moved, r4.alias_moved) == (True, False, True, True)
    assert "0.4000 < 0.5000" in r2.reason and "force_alias" in r2.reason
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri)
    assert c.get_model_version("afov-test", "1").tags["config_hash"] == "abc"
    assert "afov.alias_not_moved" in c.get_model_version("afov-test", "2").tags
    st, spec = load_model("models:/afov-test/1", tracking_uri=uri)
    assert spec == SPEC and all(torch.equal(st[k], s1[k]) for k in s1)
    assert all(torch.equal(load_model_state("models:/afov-test@current", tracking_uri=uri)[k], s2[k]) for k in s2)
    # no pickle anywhere in the model: the weights load weights-only, the package source travels as code
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/afov-test/1", tracking_uri=uri,
                                                         dst_path=str(tmp_path / "m")))
    assert (model_dir / "artifacts" / "weights.pt").exists() and (model_dir / "artifacts" / "spec.json").exists()
    assert not list(model_dir.rglob("*.pkl")) and (model_dir / "code" / "afov_ray" / "serving" / "model.py").exists()
    torch.load(model_dir / "artifacts" / "weights.pt", weights_only=True)
    with pytest.raises(DataError, match="not found"):
        load_model(str(tmp_path / "no-such-checkpoint"))


def test_pickled_models_are_refused(tmp_path):
    import mlflow
    import mlflow.pytorch

    uri = f"sqlite:///{tmp_path / 'old.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run():
        mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"], registered_model_name="old")
    with pytest.raises(DataError, match="loads no pickled models"):
        load_model("models:/old/1", tracking_uri=uri)


@pytest.mark.slow
def test_serving_model_in_a_fresh_process_without_the_repository(tmp_path):
    """``mlflow.pyfunc.load_model(models:/...@alias).predict(points)`` in a new interpreter that cannot import
    this checkout (the editable install is switched off): the model's own copy of the package serves it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(TrackingConfig(tracking_uri=uri, experiment="serve"))
    rid = tr.start()
    state = _state(3)
    register(uri, rid, state, SPEC, "afov-distill", alias="current", score=0.5)
    tr.end()
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-20, 20, (500, 2)), rng.uniform(-2, 1, 500), rng.uniform(0, 100, 500)].astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    script = textwrap.dedent(f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
        sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
        try:
            import afov_ray  # noqa: F401
            print("REPO_IMPORTABLE")
        except ImportError:
            pass
        sys.modules.pop("afov_ray", None)
        import numpy as np, mlflow
        m = mlflow.pyfunc.load_model("models:/afov-distill@current")
        out = m.predict(np.load({str(tmp_path / 'pts.npy')!r}))
        import afov_ray
        print("FROM", afov_ray.__file__)
        np.save({str(tmp_path / 'out.npy')!r}, out)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = uri
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPO_IMPORTABLE" not in proc.stdout and str(REPO) not in proc.stdout.split("FROM")[-1]
    out = np.load(tmp_path / "out.npy")
    # the same labels as the product's own inference path
    from afov_ray.pipeline.predict import build_segmentation_model, predict_scans

    model = build_segmentation_model(SPEC, state)
    row = {"sample_token": "t", "num_points": len(pts), "points": pts.ravel(), "labels": None}
    ref = predict_scans(model, [row], SPEC)[0]["pred"]
    assert out.shape == (len(pts),) and out.min() >= 1 and np.array_equal(out, ref.astype(np.int64))
