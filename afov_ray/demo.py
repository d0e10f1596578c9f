"""The whole AFOV pipeline on a generated dataset, on local Ray, with a local MLflow store.

generate -> prepare -> simulated teacher -> pairing / pseudo-labels -> TMP -> distillation
(initialised from the registry) -> predict -> AFI -> evaluate -> 1 % fine-tuning and linear probing
-> report (markdown + plots). Every stage is resumable: re-running skips what is done.
The preset in ``configs/demo.yaml`` is sized for a 2-core laptop; ``bench/quality.py`` runs the
larger version of the same chain.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.geometry.pairing import PairingConfig
from afov_ray.teachers.simulated import SimTeacherConfig
from afov_ray.train.data import IngestConfig
from afov_ray.train.optim import OptimConfig
from afov_ray.train.runner import LoopConfig, RunSettings, ScaleConfig
from afov_ray.train.stages import ModelConfig, SegConfig, TMPConfig
from afov_ray.train.tracking import TrackingConfig


@dataclass
class StageBudget:
    epochs: int = 2
    batch_size: int = 2
    lr: float = 0.02
    lr_head: float | None = 2.0


@dataclass
class DemoConfig:
    out: str = field(default="outputs/demo", metadata={"help": "output folder (everything goes here)"})
    num_cpus: int | None = None
    address: str | None = None
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(
        num_scenes=4, keyframes_per_scene=3, num_val_scenes=1, image_width=320, image_height=180,
        azimuth_steps=720))
    teacher: SimTeacherConfig = field(default_factory=SimTeacherConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="res16unet34c"))
    ingest: IngestConfig = field(default_factory=lambda: IngestConfig(label_mode="majority"))
    tmp: TMPConfig = field(default_factory=TMPConfig)
    tmp_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=2, batch_size=2, lr=0.1,
                                                                           lr_head=None))
    distill_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=2, batch_size=2))
    finetune_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=2, batch_size=2))
    probe_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=1, batch_size=2, lr=0.05,
                                                                             lr_head=None))
    min_1pct_scenes: int = 1
    experiment: str = "afov_demo"


def _loop(b: StageBudget, tracking_uri: str, experiment: str, register_as: str, linear_probe: bool = False,
          seed: int = 0) -> LoopConfig:
    return LoopConfig(num_epochs=b.epochs, batch_size=b.batch_size, linear_probe=linear_probe, seed=seed,
                      optim=OptimConfig(lr=b.lr, lr_head=b.lr_head),
                      tracking=TrackingConfig(tracking_uri=tracking_uri, experiment=experiment,
                                              run_name=register_as, register_as=register_as, alias="current"))


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.stages[name] = t - self.t0
        self.t0 = t
        print(f"[demo] {name} done in {self.stages[name]:.1f} s", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    from afov_ray.cli import init_ray
    from afov_ray.datasets.nuscenes import NuScenesReader
    from afov_ray.datasets.prepare import prepare_dataset
    from afov_ray.datasets.splits import standard_nuscenes_splits, write_split_file
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.geometry.pair_pass import PairPassConfig, run_pair_pass
    from afov_ray.teachers.teacher_pass import TeacherPassConfig, run_teacher_pass
    from afov_ray.train.jobs import DataConfig, TrainJob, run_train_job
    from afov_ray.train.tracking import default_tracking_uri

    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    dataroot = out / "nuscenes"
    version = cfg.synth.version
    if not (dataroot / version / "scene.json").exists():
        generate_nuscenes(dataroot, cfg.synth)
    timer.lap("generate")

    init_ray(cfg.address, cfg.num_cpus)
    prep = prepare_dataset("nuscenes", str(dataroot), str(out), version=version)
    split_file = out / "splits.json"
    splits = standard_nuscenes_splits(NuScenesReader(str(dataroot), version), min_1pct_scenes=cfg.min_1pct_scenes)
    write_split_file(split_file, splits)
    timer.lap("prepare")

    tp = run_teacher_pass(str(out / "sweeps"), str(out / "teacher"),
                          TeacherPassConfig(teacher="simulated", dataroot=str(dataroot), version=version,
                                            sim=cfg.teacher))
    timer.lap("teacher")
    pairing_uri = str(out / "pairing")
    pair = run_pair_pass(str(out / "sweeps"), tp["run_uri"], pairing_uri, PairPassConfig(pairing=cfg.pairing))
    if not pair.get("scenes_new") and (Path(pairing_uri) / "_stats.json").exists():
        pair = json.loads((Path(pairing_uri) / "_stats.json").read_text())
    timer.lap("pair")

    tracking_uri = default_tracking_uri(out)
    storage = str(out / "ray_results")
    data = DataConfig(pairing=pairing_uri, split_file=str(split_file), train_split="train", val_split="val")
    results: dict = {"prepare": prep.to_dict() if hasattr(prep, "to_dict") else str(prep),
                     "teacher": tp, "pairing": pair, "tracking_uri": tracking_uri}

    def train(kind: str, name: str, budget: StageBudget, init: str | None, train_split: str = "train",
              linear_probe: bool = False):
        job = TrainJob(data=replace(data, train_split=train_split, val_split=None if kind == "tmp" else "val"),
                       model=replace(cfg.model, init=init, tracking_uri=tracking_uri), ingest=cfg.ingest,
                       loop=_loop(budget, tracking_uri, cfg.experiment, name, linear_probe),
                       scale=ScaleConfig(num_workers=1), run=RunSettings(name=name, storage_path=storage),
                       tmp=replace(cfg.tmp, teacher_run=tp["run_uri"]), seg=SegConfig())
        res = run_train_job(kind, job)
        if res.error is not None:
            raise RuntimeError(f"{name} failed: {res.error}")
        timer.lap(name)
        return dict(res.metrics or {})

    results["tmp"] = train("tmp", "afov-tmp", cfg.tmp_budget, None)
    results["distill"] = train("distill", "afov-distill", cfg.distill_budget, "models:/afov-tmp@current")
    results["finetune_1pct"] = train("finetune", "afov-ft", cfg.finetune_budget, "models:/afov-tmp@current",
                                     train_split="train_1pct")
    results["linear_probe"] = train("finetune", "afov-lp", cfg.probe_budget, "models:/afov-tmp@current",
                                    linear_probe=True)
    results["timings_s"] = timer.stages
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
