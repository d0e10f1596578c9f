import torch
from torch import nn

from afov_ray.train.tracking import Tracker, TrackingConfig, flatten, load_model_state


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_run_metrics_registry_alias_roundtrip(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrackingConfig(tracking_uri=uri, experiment="t", run_name="r", register_as="afov-test", alias="champion")
    model = nn.Sequential(nn.Linear(3, 2))
    with Tracker(cfg) as tr:
        run_id = tr.start(params={"train": {"lr": 0.5}, "epochs": 2})
        tr.log_metrics({"loss": 1.5}, step=0)
        tr.log_metrics({"loss": 0.5}, step=1)
        v = tr.register_model(model, tags={"config_hash": "abc"})
    assert v == 1
    import mlflow
    c = mlflow.MlflowClient(tracking_uri=uri)
    run = c.get_run(run_id)
    assert run.data.params["train.lr"] == "0.5" and run.info.status == "FINISHED"
    hist = c.get_metric_history(run_id, "loss")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == [1.5, 0.5]
    mv = c.get_model_version_by_alias("afov-test", "champion")
    assert str(mv.version) == "1" and mv.tags["config_hash"] == "abc"
    for u in ("models:/afov-test@champion", "models:/afov-test/1"):
        st = load_model_state(u, tracking_uri=uri)
        assert torch.equal(st["0.weight"], model[0].weight)


def test_non_zero_rank_is_noop(tmp_path):
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'x.db'}")
    tr = Tracker(cfg, rank=1)
    assert tr.start(params={"a": 1}) is None
    tr.log_metrics({"x": 1.0}); tr.end()
    assert not (tmp_path / "x.db").exists()
