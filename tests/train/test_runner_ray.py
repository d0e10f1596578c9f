"""Ray Train plumbing: 1 vs 2 gloo workers, checkpoints, fault tolerance (real local Ray)."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from afov_ray.train.optim import OptimConfig
from afov_ray.train.runner import LoopConfig, RunSettings, ScaleConfig, Stage, run_stage
from afov_ray.train.tracking import TrackingConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.final = nn.Linear(8, 1)

    def forward(self, x):
        return self.final(torch.tanh(self.body(x)))


class RegressionStage(Stage):
    name = "toy"

    def build_model(self):
        torch.manual_seed(123)
        return Net()

    def loss(self, model, batch, device):
        x = torch.as_tensor(np.stack(batch["x"]), dtype=torch.float32)
        y = torch.as_tensor(batch["y"], dtype=torch.float32)
        return ((model(x).squeeze(1) - y) ** 2).mean(), {}


class DiesOnceStage(RegressionStage):
    """Its worker process dies once, at its 5th step, unless ``marker`` exists (a restarted worker is a new
    process, so the count starts again and the marker stops a second death)."""

    name = "toy-dies"
    steps = 0

    def __init__(self, marker: str):
        self.marker = marker

    def loss(self, model, batch, device):
        type(self).steps += 1
        if type(self).steps == 5 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().loss(model, batch, device)


class ValRegressionStage(RegressionStage):
    name = "toy-val"

    def validate(self, model, shard, device):
        err = [float(((model(torch.as_tensor(np.stack(b["x"]))).squeeze(1) - torch.as_tensor(b["y"])) ** 2).sum())
               for b in shard.iter_batches(batch_size=4, batch_format="numpy")]
        return {"sse": sum(err)}


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import sys

    import ray
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


def _data(n=8):
    import ray
    rng = np.random.default_rng(0)
    rows = [{"x": rng.standard_normal(4).astype(np.float32), "y": float(rng.standard_normal())} for _ in range(n)]
    return ray.data.from_items(rows)


def _loop(**kw):
    return LoopConfig(num_epochs=kw.pop("epochs", 3), batch_size=kw.pop("batch_size", 8),
                      optim=OptimConfig(lr=0.1, lr_head=0.2),
                      tracking=TrackingConfig(enabled=False), **kw)


def test_two_workers_reproduce_one_worker_trajectory(ray_session, tmp_path):
    r1 = run_stage(RegressionStage(), _loop(batch_size=8), ScaleConfig(num_workers=1, torch_threads=3),
                   RunSettings(name="one", storage_path=str(tmp_path), num_to_keep=None), {"train": _data()})
    r2 = run_stage(RegressionStage(), _loop(batch_size=4), ScaleConfig(num_workers=2),
                   RunSettings(name="two", storage_path=str(tmp_path), num_to_keep=None), {"train": _data()})
    assert r1.error is None and r2.error is None
    l1 = [m["train/loss_epoch"] for m in r1.metrics_dataframe.to_dict("records")]
    l2 = [m["train/loss_epoch"] for m in r2.metrics_dataframe.to_dict("records")]
    assert len(l1) == len(l2) == 3
    # scale.torch_threads overrides Ray's OMP_NUM_THREADS (= CPUs reserved, 1 here) inside the worker
    assert r1.metrics["train/torch_threads"] == 3
    assert r2.metrics["train/torch_threads"] == int(os.environ.get("OMP_NUM_THREADS", 1))
    assert l1[-1] < l1[0]                           # it learns
    np.testing.assert_allclose(l1, l2, rtol=1e-5)  # same global batch -> same trajectory
    from afov_ray.train.checkpoint import load_checkpoint
    with r1.checkpoint.as_directory() as d1, r2.checkpoint.as_directory() as d2:
        s1, s2 = load_checkpoint(d1)["model"], load_checkpoint(d2)["model"]
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], rtol=1e-5, atol=1e-6)


def test_worker_killed_mid_epoch_resumes_and_finishes(ray_session, tmp_path):
    marker = tmp_path / "failed_once"
    loop = _loop(epochs=3, batch_size=2)
    res = run_stage(DiesOnceStage(str(marker)), loop, ScaleConfig(num_workers=1),
                    RunSettings(name="ft", storage_path=str(tmp_path), max_failures=2, checkpoint_every_steps=2),
                    {"train": _data(8)})
    assert res.error is None
    assert marker.exists(), "the worker never failed: the test did not exercise recovery"
    with res.checkpoint.as_directory() as d:
        meta = json.loads(open(os.path.join(d, "meta.json")).read())
    assert meta["epoch"] == 3 and meta["step"] == 12
    # no half-written checkpoint files anywhere in the run folder
    leftovers = [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".tmp")]
    assert leftovers == []


def test_val_every_epochs_skips_validation_but_not_training(ray_session, tmp_path):
    runs = {}
    for every in (1, 2):
        res = run_stage(ValRegressionStage(), _loop(epochs=3, batch_size=4, val_every_epochs=every),
                        ScaleConfig(num_workers=1),
                        RunSettings(name=f"v{every}", storage_path=str(tmp_path), num_to_keep=None),
                        {"train": _data(8), "val": _data(4)})
        assert res.error is None
        runs[every] = res.metrics_dataframe.to_dict("records")
    has_val = lambda rows: [r.get("val/sse") is not None and r["val/sse"] == r["val/sse"] for r in rows]  # noqa: E731
    assert has_val(runs[1]) == [True, True, True]
    assert has_val(runs[2]) == [False, True, True]          # epochs 2 and 3 (the last always validates)
    np.testing.assert_allclose([r["train/loss_epoch"] for r in runs[1]], [r["train/loss_epoch"] for r in runs[2]],
                               rtol=1e-6)
    assert runs[1][-1]["val/sse"] == pytest.approx(runs[2][-1]["val/sse"], rel=1e-6)


@pytest.mark.parametrize("field,scale_kw,loop_kw", [("scale.torch_threads", {"torch_threads": 0}, {}),
                                                    ("loop.val_every_epochs", {}, {"val_every_epochs": 0})])
def test_bad_thread_or_val_interval_is_refused_naming_the_key(tmp_path, field, scale_kw, loop_kw):
    from afov_ray.config import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        run_stage(RegressionStage(), _loop(**loop_kw), ScaleConfig(**scale_kw),
                  RunSettings(name="bad", storage_path=str(tmp_path)), {"train": None})
    assert not (tmp_path / "bad").exists()


def test_rerun_with_other_settings_is_refused_same_settings_resume(ray_session, tmp_path):
    from afov_ray.config import ConfigError

    run = RunSettings(name="guard", storage_path=str(tmp_path), num_to_keep=None)
    first = run_stage(RegressionStage(), _loop(epochs=2, batch_size=4), ScaleConfig(num_workers=1), run,
                      {"train": _data(8)})
    assert first.error is None
    with first.checkpoint.as_directory() as d:
        meta = json.loads(open(os.path.join(d, "meta.json")).read())
    assert meta["settings"]["stage"] == "toy" and meta["settings"]["loop.num_epochs"] == 2
    assert not any(k.startswith("loop.tracking.") for k in meta["settings"])
    trained = sorted(p.name for p in (tmp_path / "guard").glob("checkpoint_*") if p.is_dir())
    assert len(trained) == 2
    # other epochs and learning rate: refused before anything runs, naming both changes
    with pytest.raises(ConfigError, match=r"loop\.num_epochs: 2 -> 3.*loop\.optim\.lr: 0\.1 -> 0\.05"):
        run_stage(RegressionStage(), replace(_loop(epochs=3, batch_size=4), optim=OptimConfig(lr=0.05, lr_head=0.2)),
                  ScaleConfig(num_workers=1), run, {"train": _data(8)})
    # the same settings (validation cadence and logging may change): the finished fit is resumed, not redone
    again = run_stage(RegressionStage(), _loop(epochs=2, batch_size=4, val_every_epochs=2, log_every_steps=3),
                      ScaleConfig(num_workers=1), run, {"train": _data(8)})
    assert again.error is None
    with again.checkpoint.as_directory() as d:
        assert json.loads(open(os.path.join(d, "meta.json")).read())["epoch"] == 2
    # no epoch was trained again
    assert sorted(p.name for p in (tmp_path / "guard").glob("checkpoint_*") if p.is_dir()) == trained
