"""Shared pieces of the reliability suite: the tiny generated inputs, running a job as a real subprocess,
hashing folders, and the tally of outcomes that ``conftest.py`` prints at the end of the session.

``build_inputs(root)`` makes, under ``root``::

    ns/                   a generated nuScenes dataroot (2 scenes x 2 keyframes, 6 cameras, lidarseg)
    out/sweeps/           prepare output (manifest, records, summary) and out/splits.json
    out/teacher/<run_id>/ simulated teacher run (run.json, text_embedding.npy, images/)
    out/pairing/          pair output
    out/pred/             predictions of an untrained minkunet18 (for evaluate cases)
    model/                that model as a checkpoint folder (state.pt + contract)
    reg/mlflow.db         a registry: afov-distill v1 (weights + contract) with alias "current", and
                          evil v1 in MLflow's pickled PyTorch format
    evil/                 a pickled module whose loading would run code, and a TorchScript archive

Every pass runs in this process without Ray (``exec.use_ray=false``): a few seconds of CPU.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback (most recent call last)"
SYNTH = dict(num_scenes=2, keyframes_per_scene=2, num_val_scenes=1, image_width=240, image_height=135,
             azimuth_steps=540)


# --------------------------------------------------------------------------------------------------
# the tally (printed by conftest.pytest_terminal_summary, written to outputs/reliability_tally.json)

@dataclass
class Outcome:
    suite: str
    case: str
    expected: int | None
    code: int | None
    kind: str                    # "error" (a clear error is expected) | "result" (a correct result is expected)
    clear: bool = False          # exit code as expected, message names the key / file, no traceback
    correct: bool = False        # a "result" case: exit code and outputs as expected
    damaged: bool = False        # a file that existed before the case changed or vanished
    traceback: bool = False
    seconds: float = 0.0
    note: str = ""


TALLY: list[Outcome] = []


def tally_summary() -> dict:
    cases = [o for o in TALLY]
    return {"cases": len(cases),
            "clear_errors": sum(o.kind == "error" and o.clear for o in cases),
            "correct_results": sum(o.kind == "result" and o.correct for o in cases),
            "tracebacks": sum(o.traceback for o in cases),
            "damaged": sum(o.damaged for o in cases),
            "not_as_expected": sorted(o.case for o in cases
                                      if not (o.clear if o.kind == "error" else o.correct) or o.damaged),
            "seconds": round(sum(o.seconds for o in cases), 1)}


# --------------------------------------------------------------------------------------------------
# files

def hash_tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (symlinks by their target's content)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError as e:   # a dangling symlink etc.: recorded as such
                out[str(p.relative_to(root))] = f"unreadable: {e.__class__.__name__}"
    return out


def damage(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files present before that changed or vanished."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


def new_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(set(after) - set(before))


# --------------------------------------------------------------------------------------------------
# running a job

def job_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AFOV_LOG_LEVEL"):
        env.pop(k, None)
    env.update(PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", AFOV_PROGRESS="0", PYTHONUNBUFFERED="1",
               TQDM_DISABLE="1")
    env.update(extra or {})
    return env


def run_job(job: str, args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    """``python jobs/<job>.py ARGS`` as a subprocess (this repository's package first on the path)."""
    cmd = [sys.executable, str(REPO / "jobs" / f"{job}.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=job_env(env), capture_output=True, text=True, timeout=timeout,
                          check=False)


# --------------------------------------------------------------------------------------------------
# the inputs

@dataclass
class Inputs:
    root: Path
    run_id: str
    info: dict = field(default_factory=dict)


def _registry(root: Path) -> None:
    """reg/mlflow.db: afov-distill v1 @current (weights + contract, as ``register`` lays it out) and evil v1
    (MLflow's pickled PyTorch flavour: a data/ folder)."""
    import mlflow

    from afov_ray.train.registry import FORMAT, FORMAT_TAG

    uri = f"sqlite:///{root / 'reg' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    good = root / "reg" / "versions" / "distill1"
    (good / "artifacts").mkdir(parents=True)
    (good / "artifacts" / "weights.pt").write_bytes((root / "model" / "weights.pt").read_bytes())
    (good / "artifacts" / "spec.json").write_text((root / "model" / "spec.json").read_text())
    client.create_registered_model("afov-distill")
    v = client.create_model_version("afov-distill", good.as_uri(), tags={FORMAT_TAG: FORMAT})
    client.set_registered_model_alias("afov-distill", "current", v.version)
    evil = root / "reg" / "versions" / "evil1"
    (evil / "data").mkdir(parents=True)
    (evil / "data" / "model.pth").write_bytes((root / "evil" / "pickled.pt").read_bytes())
    (evil / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
    client.create_registered_model("evil")
    client.create_model_version("evil", evil.as_uri())


class _RunsCode:
    """Unpickling this object would run code: it creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(root: Path) -> None:
    import torch

    (root / "evil").mkdir()
    marker = root / "new" / "PWNED"
    torch.save({"model": _RunsCode(str(marker))}, root / "evil" / "pickled.pt")
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(root / "evil" / "scripted.pt"))


def build_inputs(root: Path, synth: dict | None = None, extras: bool = True) -> Inputs:
    """The inputs (see the module docstring); ``extras=False`` stops after the pairing folder."""
    import torch

    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.models.res16unet import build_model
    from afov_ray.models.spec import ModelSpec
    from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
    from afov_ray.pipeline.predict import PredictConfig, run_predict
    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.shard_pass import ExecConfig
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
    from afov_ray.teachers.dictionary import ClassDictionary
    from afov_ray.train.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    local = ExecConfig(use_ray=False, progress=False)
    root.mkdir(parents=True, exist_ok=True)
    ns, out = root / "ns", root / "out"
    generate_nuscenes(ns, SynthConfig(**(synth or SYNTH)))
    prep = run_prepare(PrepareConfig(dataroot=str(ns), min_1pct_scenes=1, exec=local), str(out))
    assert prep.exit_code == 0, prep.lines()
    tp = run_teacher_pass(str(out / "sweeps"), str(out / "teacher"), TeacherPassConfig(dataroot=str(ns), exec=local))
    assert tp.exit_code == 0, tp.lines()
    pp = run_pair_pass(str(out / "sweeps"), tp.stats["run_uri"], str(out / "pairing"), PairPassConfig(exec=local))
    assert pp.exit_code == 0, pp.lines()
    if not extras:
        return Inputs(root, tp.stats["run_id"], {"seconds": time.perf_counter() - t0})

    torch.manual_seed(0)
    names = tuple(ClassDictionary.load("nuscenes").eval_class_names)
    spec = ModelSpec(name="minkunet18", out_channels=17, voxel_size=0.2, class_names=names)
    state = build_model("minkunet18", 1, 17, "torch").state_dict()
    save_checkpoint(root / "model", model_state=state, epoch=1, step=1, model_spec=spec.to_dict())
    torch.save(state, root / "model" / "weights.pt")
    (root / "model" / "spec.json").write_text(spec.to_json())
    pr = run_predict(str(out / "pairing"), str(out / "pred"), PredictConfig(model=str(root / "model"), exec=local))
    assert pr.exit_code == 0, pr.lines()

    _evil_files(root)
    _registry(root)
    return Inputs(root, tp.stats["run_id"], {"seconds": time.perf_counter() - t0})
