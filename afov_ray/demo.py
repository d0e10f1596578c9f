"""The whole AFOV pipeline on a generated dataset, on local Ray, with a local MLflow store.

generate -> prepare -> simulated teacher -> pairing / pseudo-labels -> TMP -> distillation
(initialised from the registry) -> predict -> AFI -> evaluate -> 1 % fine-tuning and linear probing
-> report (markdown + plots). Every stage is resumable: re-running skips what is done.
The preset in ``configs/demo.yaml`` is sized for a 2-core laptop; ``bench/quality.py`` composes the
same steps (``build_data``, ``train``, ``evaluate_model``) into the paper's ablation table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from afov_ray.afi.config import AFIConfig
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
    optimizer: str = "sgd"
    torch_threads: int | None = None      # scale.torch_threads of the fit
    val_every_epochs: int = 1             # loop.val_every_epochs of the fit


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
    afi: AFIConfig = field(default_factory=AFIConfig)
    tmp_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=2, batch_size=2, lr=0.1,
                                                                           lr_head=None))
    distill_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=2, batch_size=2))
    finetune_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=2, batch_size=2))
    probe_budget: StageBudget = field(default_factory=lambda: StageBudget(epochs=1, batch_size=2, lr=0.05,
                                                                             lr_head=None))
    min_1pct_scenes: int = 1
    experiment: str = "afov_demo"


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.stages[name] = round(t - self.t0, 1)
        self.t0 = t
        print(f"[demo] {name} done in {self.stages[name]:.1f} s", flush=True)


@dataclass
class Workspace:
    """Where one pipeline run keeps its data (all local paths here; any stage also takes s3:// URIs)."""

    out: Path
    version: str = "v1.0-trainval"

    @property
    def dataroot(self) -> Path:
        return self.out / "nuscenes"

    @property
    def sweeps(self) -> str:
        return str(self.out / "sweeps")

    @property
    def split_file(self) -> str:
        return str(self.out / "splits.json")

    @property
    def tracking_uri(self) -> str:
        from afov_ray.train.tracking import default_tracking_uri

        return default_tracking_uri(self.out)


def build_data(ws: Workspace, synth: SynthConfig, min_1pct_scenes: int, timer: Timer | None = None) -> dict:
    """generate (skipped when present) -> prepare -> split file."""
    from afov_ray.datasets.nuscenes import NuScenesReader
    from afov_ray.datasets.prepare import prepare_dataset
    from afov_ray.datasets.splits import standard_nuscenes_splits, write_split_file
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes

    if not (ws.dataroot / ws.version / "scene.json").exists():
        generate_nuscenes(ws.dataroot, synth)
    timer and timer.lap("generate")
    prep = prepare_dataset("nuscenes", str(ws.dataroot), str(ws.out), version=ws.version)
    splits = standard_nuscenes_splits(NuScenesReader(str(ws.dataroot), ws.version), min_1pct_scenes=min_1pct_scenes)
    write_split_file(ws.split_file, splits)
    timer and timer.lap("prepare")
    return {"keyframes": prep.keyframes_total, "splits": {k: v.scenes for k, v in splits.items()}}


def teacher_and_pairing(ws: Workspace, teacher: SimTeacherConfig, pairing: PairingConfig, tag: str = "",
                        timer: Timer | None = None) -> dict:
    """Simulated teacher pass + pairing pass; returns the teacher run URI, pairing URI and statistics."""
    from afov_ray.geometry.pair_pass import PairPassConfig, run_pair_pass
    from afov_ray.teachers.teacher_pass import TeacherPassConfig, run_teacher_pass

    tp = run_teacher_pass(ws.sweeps, str(ws.out / "teacher"), TeacherPassConfig(
        teacher="simulated", dataroot=str(ws.dataroot), version=ws.version, sim=teacher))
    timer and timer.lap(f"teacher{tag}")
    pairing_uri = str(ws.out / f"pairing{tag}")
    stats = run_pair_pass(ws.sweeps, tp["run_uri"], pairing_uri, PairPassConfig(pairing=pairing))
    stats_file = Path(pairing_uri) / "_stats.json"
    if not stats.get("scenes_new") and stats_file.exists():
        stats = json.loads(stats_file.read_text())
    timer and timer.lap(f"pair{tag}")
    return {"teacher_run": tp["run_uri"], "pairing": pairing_uri, "pair_stats": stats}


def train(ws: Workspace, kind: str, name: str, budget: StageBudget, *, pairing: str, teacher_run: str,
          model: ModelConfig, ingest: IngestConfig, tmp: TMPConfig, init: str | None, experiment: str,
          train_split: str = "train", linear_probe: bool = False, timer: Timer | None = None) -> dict:
    """One Ray Train fit; the model is registered as ``name`` with alias ``current``."""
    from afov_ray.train.jobs import DataConfig, TrainJob, run_train_job

    tracking = TrackingConfig(tracking_uri=ws.tracking_uri, experiment=experiment, run_name=name,
                              register_as=name, alias="current")
    job = TrainJob(
        data=DataConfig(pairing=pairing, split_file=ws.split_file, train_split=train_split,
                        val_split=None if kind == "tmp" else "val"),
        model=replace(model, init=init, tracking_uri=ws.tracking_uri), ingest=ingest,
        loop=LoopConfig(num_epochs=budget.epochs, batch_size=budget.batch_size, linear_probe=linear_probe,
                        val_every_epochs=budget.val_every_epochs,
                        optim=OptimConfig(optimizer=budget.optimizer, lr=budget.lr, lr_head=budget.lr_head),
                        tracking=tracking),
        scale=ScaleConfig(num_workers=1, torch_threads=budget.torch_threads),
        run=RunSettings(name=name, storage_path=str(ws.out / "ray_results")),
        tmp=replace(tmp, teacher_run=teacher_run), seg=SegConfig())
    res = run_train_job(kind, job)
    if res.error is not None:
        raise RuntimeError(f"{name} failed: {res.error}")
    timer and timer.lap(name)
    return {k: v for k, v in dict(res.metrics or {}).items() if not isinstance(v, list)}


def evaluate_model(ws: Workspace, name: str, model: ModelConfig, pairing: str, afi: AFIConfig | None,
                   afi_assist: bool = False, timer: Timer | None = None, plots: bool = True,
                   ingest: IngestConfig | None = None) -> dict:
    """predict (val split) -> AFI (optionally with the 2D assist) -> evaluate; returns mIoU figures."""
    from afov_ray.eval.afi_pass import AFIPassConfig, run_afi_pass
    from afov_ray.eval.evaluate import EvaluateConfig, run_evaluate
    from afov_ray.eval.predict import PredictConfig, run_predict

    base = ws.out / "eval" / name
    pred = str(base / "pred")
    ing = ingest or IngestConfig()
    run_predict(pairing, pred, PredictConfig(
        model=f"models:/{name}@current", tracking_uri=ws.tracking_uri, model_name=model.name, engine=model.engine,
        sweeps=ws.sweeps, split_file=ws.split_file, split="val",
        grid=ing.grid, voxel_size=ing.voxel_size), progress=False)
    src = pred
    variants = {}
    if afi is not None:
        for tag, assist in (("afi", False), ("afi_assist", True)) if afi_assist else (("afi", False),):
            out = str(base / tag)
            run_afi_pass(pred, out, AFIPassConfig(afi=replace(afi, use_assist=assist)), progress=False)
            variants[tag] = out
        src = variants["afi"]
    doc = run_evaluate(src, str(base / "report"), EvaluateConfig(
        sweeps=ws.sweeps, dataroot=str(ws.dataroot), plots=plots,
        tracking=TrackingConfig(tracking_uri=ws.tracking_uri, experiment="afov_demo_eval", run_name=f"eval-{name}")))
    out = summarize_eval(doc)
    if "afi_assist" in variants:
        d2 = run_evaluate(variants["afi_assist"], str(base / "report_assist"), EvaluateConfig(
            sources=["pred_afi"], plots=False))
        out["pred_afi_assist"] = summarize_eval(d2)["pred_afi"]
    out["report_dir"] = str(base / "report")
    timer and timer.lap(f"evaluate {name}")
    return out


def summarize_eval(doc: dict) -> dict:
    """mIoU per source and subset: official (empty union = 1) and over GT-present classes only."""
    from afov_ray.eval.metrics import miou

    out: dict = {}
    for s, subsets in doc["sources"].items():
        out[s] = {}
        for k, rep in subsets.items():
            H = np.asarray(rep["confusion"])
            out[s][k] = {"miou": float(rep["miou"]), "miou_present": float(miou(H, empty_union="nan")),
                         "accuracy": float(rep["accuracy"]), "points": int(rep["n_points"])}
    return out


def report_markdown(results: dict) -> str:
    """The demo's final table."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    ev = results["distill_eval"]
    rows = [("pseudo-labels (camera-visible points)", ev["pseudo"]["visible"]),
            ("annotation-free (TMP init), all points", ev["pred"]["all"]),
            ("annotation-free + AFI, all points", ev["pred_afi"]["all"]),
            ("annotation-free, camera-visible points", ev["pred"]["visible"]),
            ("annotation-free, camera-unseen points", ev["pred"]["unseen"])]
    lines = ["| model / labels (val scenes) | mIoU official | mIoU present classes | accuracy | points |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {pct(r['miou'])} | {pct(r['miou_present'])} | {pct(r['accuracy'])} | {r['points']} |")
    for key, label in (("finetune_1pct", "1 % fine-tuning (TMP init)"), ("linear_probe", "linear probe (TMP init)")):
        m = results.get(key, {})
        if "val/mIoU" in m:
            lines.append(f"| {label} | {pct(m['val/mIoU'])} | – | – | {m.get('val/points', '')} |")
    lines += ["", "mIoU official: afov-reference.md 6.4 (GT-0 row ignored, empty-union classes count 1.0, mean over "
              "16 classes); 'present classes' averages only classes with ground truth or predictions (devkit style). "
              "Fine-tuning / probe rows come from the training validation (same rules, class 0 suppressed)."]
    return "\n".join(lines) + "\n"


def run_demo(cfg: DemoConfig) -> dict:
    from afov_ray.cli import init_ray

    ws = Workspace(Path(cfg.out).absolute(), cfg.synth.version)
    ws.out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    init_ray(cfg.address, cfg.num_cpus)
    results: dict = {"data": build_data(ws, cfg.synth, cfg.min_1pct_scenes, timer)}
    tp = teacher_and_pairing(ws, cfg.teacher, cfg.pairing, timer=timer)
    results["pairing"] = {k: v for k, v in tp["pair_stats"].items() if k != "errors"}
    common = dict(pairing=tp["pairing"], teacher_run=tp["teacher_run"], model=cfg.model, ingest=cfg.ingest,
                  tmp=cfg.tmp, experiment=cfg.experiment, timer=timer)
    results["tmp"] = train(ws, "tmp", "afov-tmp", cfg.tmp_budget, init=None, **common)
    results["distill"] = train(ws, "distill", "afov-distill", cfg.distill_budget, init="models:/afov-tmp@current",
                               **common)
    results["distill_eval"] = evaluate_model(ws, "afov-distill", cfg.model, tp["pairing"], cfg.afi, timer=timer,
                                             ingest=cfg.ingest)
    results["finetune_1pct"] = train(ws, "finetune", "afov-ft", cfg.finetune_budget, init="models:/afov-tmp@current",
                                     train_split="train_1pct", **common)
    results["linear_probe"] = train(ws, "finetune", "afov-lp", cfg.probe_budget, init="models:/afov-tmp@current",
                                    linear_probe=True, **common)
    results["timings_s"] = timer.stages
    table = report_markdown(results)
    (ws.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (ws.out / "report.md").write_text("# afov_ray demo report\n\n" + table + "\nPlots: "
                                      + results["distill_eval"]["report_dir"] + "\n")
    total = sum(timer.stages.values())
    print("\n" + table)
    print(f"[demo] finished in {total / 60:.1f} min. Report: {ws.out / 'report.md'}; plots: "
          f"{results['distill_eval']['report_dir']}")
    print(f"[demo] MLflow UI: mlflow ui --backend-store-uri {ws.tracking_uri}")
    return results
