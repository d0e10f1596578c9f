"""The whole AFOV pipeline on a generated dataset, on local Ray, with a local MLflow store.

generate -> prepare -> simulated teacher -> pairing / pseudo-labels -> TMP (+ its zero-shot segmentation from
the text features, docs/query.md) -> distillation (initialised from the registry) -> predict -> AFI -> evaluate
-> 1 % fine-tuning and linear probing -> report (markdown + plots). Every stage is resumable: re-running skips
what is done.

The demo is composed from the job presets: ``configs/demo.yaml`` gives each training stage its preset
(``defaults: [nuscenes/distill.yaml]``) plus the few settings a 2-core laptop needs; the settings that
differ from the official ones are listed in the report with the reason. ``bench/quality.py`` composes the
same steps (``build_data``, ``teacher_and_pairing``, ``train``, ``evaluate_model``) into the paper's
ablation table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from afov_ray.config import flatten, option, section, to_dict
from afov_ray.datasets.splits import read_split_file
from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
from afov_ray.eval.metrics import miou
from afov_ray.log import format_duration, get_logger
from afov_ray.pipeline.evaluate import EvaluateConfig, run_evaluate
from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
from afov_ray.pipeline.predict import PredictConfig, run_predict
from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
from afov_ray.pipeline.refine import AFIPassConfig, run_afi_pass
from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
from afov_ray.runtime import RayKeys
from afov_ray.train.jobs import TrainJob, run_train_job
from afov_ray.train.tracking import TrackingConfig, default_tracking_uri

log = get_logger(__name__)

STAGES = ("tmp", "distill", "finetune", "probe")


@dataclass
class DemoConfig(RayKeys):
    out: str = option("outputs/demo", "output folder (everything goes here)")
    synth: SynthConfig = section(SynthConfig, "generated dataset", num_scenes=4, keyframes_per_scene=3,
                                 num_val_scenes=1, image_width=320, image_height=180, azimuth_steps=720)
    teacher: TeacherPassConfig = section(TeacherPassConfig, "teacher pass (the simulated teacher)")
    pair: PairPassConfig = section(PairPassConfig, "pairing pass")
    tmp: TrainJob = section(TrainJob, "TMP pre-training job (preset nuscenes/tmp.yaml in demo.yaml)")
    distill: TrainJob = section(TrainJob, "annotation-free distillation job (preset nuscenes/distill.yaml)")
    finetune: TrainJob = section(TrainJob, "1 % fine-tuning job (preset nuscenes/finetune.yaml)")
    probe: TrainJob = section(TrainJob, "linear probing job (preset nuscenes/linear_probe.yaml)")
    predict: PredictConfig = section(PredictConfig, "prediction of the distilled model on the val scenes")
    afi: AFIPassConfig = section(AFIPassConfig, "AFI on the predictions")
    evaluate: EvaluateConfig = section(EvaluateConfig, "evaluation report")
    min_1pct_scenes: int = option(1, "top the 1 % split up to this many scenes (the rule selects none on 4 "
                                     "generated scenes)", min=0)
    experiment: str = option("afov_demo", "MLflow experiment of the training runs")
    differences: dict[str, str] = option({}, "settings that differ from the official ones -> why (shown in the "
                                            "report)")


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.stages[name] = round(t - self.t0, 1)
        self.t0 = t
        log.info("[demo] %s done in %.1f s", name, self.stages[name])


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
        return default_tracking_uri(self.out)


def build_data(ws: Workspace, synth: SynthConfig, min_1pct_scenes: int, timer: Timer | None = None) -> dict:
    """generate (skipped when present) -> prepare (resumable) -> splits.json."""

    if not (ws.dataroot / ws.version / "scene.json").exists():
        generate_nuscenes(ws.dataroot, synth)
    timer and timer.lap("generate")
    summary = run_prepare(PrepareConfig(dataset="nuscenes", dataroot=str(ws.dataroot), version=ws.version,
                                        min_1pct_scenes=min_1pct_scenes), str(ws.out))
    _require_complete(summary)
    timer and timer.lap("prepare")
    splits = read_split_file(ws.split_file)
    return {"keyframes": summary.stats["keyframes"], "splits": {k: v.scenes for k, v in splits.items()}}


def _require_complete(summary) -> None:
    if summary.exit_code != 0:
        raise RuntimeError("\n".join(summary.lines()))


def teacher_and_pairing(ws: Workspace, teacher: TeacherPassConfig, pair: PairPassConfig, tag: str = "",
                        timer: Timer | None = None) -> dict:
    """Simulated teacher pass + pairing pass; returns the teacher run URI, pairing URI and statistics."""
    t = run_teacher_pass(ws.sweeps, str(ws.out / "teacher"),
                         replace(teacher, teacher="simulated", dataroot=str(ws.dataroot), version=ws.version))
    _require_complete(t)
    timer and timer.lap(f"teacher{tag}")
    pairing_uri = str(ws.out / f"pairing{tag}")
    p = run_pair_pass(ws.sweeps, t.stats["run_uri"], pairing_uri, pair)
    _require_complete(p)
    timer and timer.lap(f"pair{tag}")
    return {"teacher_run": t.stats["run_uri"], "pairing": pairing_uri, "pair_stats": p.stats}


def stage_job(ws: Workspace, kind: str, name: str, job: TrainJob, *, pairing: str, teacher_run: str,
              experiment: str, init: str | None = "preset", train_split: str | None = None) -> TrainJob:
    """A stage's job with the workspace's paths filled in (data, teacher run, registry, checkpoints)."""
    tracking = replace(job.loop.tracking, tracking_uri=ws.tracking_uri, experiment=experiment, run_name=name,
                       register_as=name, alias="current")
    data = replace(job.data, pairing=pairing, split_file=ws.split_file,
                   train_split=train_split or job.data.train_split,
                   val_split=None if kind == "tmp" else (job.data.val_split or "val"))
    model = replace(job.model, init=job.model.init if init == "preset" else init, tracking_uri=ws.tracking_uri)
    return replace(job, data=data, model=model, loop=replace(job.loop, tracking=tracking),
                   run=replace(job.run, name=name, storage_path=str(ws.out / "ray_results")),
                   tmp=replace(job.tmp, teacher_run=teacher_run))


def train(ws: Workspace, kind: str, job: TrainJob, timer: Timer | None = None) -> dict:
    """One Ray Train fit of a filled-in job; the model is registered as the job's ``register_as``."""
    res = run_train_job(kind, job)
    if res.error is not None:
        raise RuntimeError(f"{job.run.name} failed: {res.error}")
    timer and timer.lap(job.run.name)
    return {k: v for k, v in dict(res.metrics or {}).items() if not isinstance(v, list)}


def evaluate_model(ws: Workspace, name: str, pairing: str, predict: PredictConfig, afi: AFIPassConfig | None,
                   evaluate: EvaluateConfig, afi_assist: bool = False, timer: Timer | None = None,
                   plots: bool = True) -> dict:
    """predict (val split) -> AFI (optionally with the 2D assist) -> evaluate; returns mIoU figures."""
    base = ws.out / "eval" / name
    pred = str(base / "pred")
    _require_complete(run_predict(pairing, pred, replace(
        predict, model=f"models:/{name}@current", tracking_uri=ws.tracking_uri, sweeps=ws.sweeps,
        split_file=ws.split_file, split="val")))
    src = pred
    variants = {}
    if afi is not None:
        for tag, assist in (("afi", False), ("afi_assist", True)) if afi_assist else (("afi", False),):
            out = str(base / tag)
            _require_complete(run_afi_pass(pred, out, replace(afi, afi=replace(afi.afi, use_assist=assist))))
            variants[tag] = out
        src = variants["afi"]

    doc = run_evaluate(src, str(base / "report"), replace(
        evaluate, sweeps=ws.sweeps, dataroot=str(ws.dataroot), plots=plots,
        viewer_scans=evaluate.viewer_scans if plots else 0,
        tracking=TrackingConfig(tracking_uri=ws.tracking_uri, experiment="afov_demo_eval", run_name=f"eval-{name}")))
    out = summarize_eval(doc)
    if "afi_assist" in variants:
        d2 = run_evaluate(variants["afi_assist"], str(base / "report_assist"),
                          replace(evaluate, sources=["pred_afi"], plots=False))
        out["pred_afi_assist"] = summarize_eval(d2)["pred_afi"]
    out["report_dir"] = str(base / "report")
    timer and timer.lap(f"evaluate {name}")
    return out


def zeroshot_eval(ws: Workspace, name: str, pairing: str, teacher_run: str, predict: PredictConfig,
                  evaluate: EvaluateConfig, timer: Timer | None = None) -> dict:
    """Zero-shot segmentation of the TMP model ``name`` (each point takes the class of its most similar
    dictionary text, ``predict.teacher_run``), scored like the other models; no plots."""
    return evaluate_model(ws, name, pairing, replace(predict, teacher_run=teacher_run), None, evaluate, timer=timer,
                          plots=False)


def summarize_eval(doc: dict) -> dict:
    """mIoU per source and subset: official (empty union = 1) and over GT-present classes only."""

    out: dict = {}
    for s, subsets in doc["sources"].items():
        out[s] = {}
        for k, rep in subsets.items():
            H = np.asarray(rep["confusion"])
            out[s][k] = {"miou": float(rep["miou"]), "miou_present": float(miou(H, empty_union="nan")),
                         "accuracy": float(rep["accuracy"]), "points": int(rep["n_points"])}
    return out


def verdict(results: dict) -> dict:
    """Did the distilled model visibly learn? On camera-visible val points: point accuracy >= 80 % and
    present-class mIoU >= 0.8 x the pseudo-labels'."""
    ev = results["distill_eval"]
    net, pseudo = ev["pred"]["visible"], ev["pseudo"]["visible"]
    ratio = net["miou_present"] / max(pseudo["miou_present"], 1e-9)
    return {"accuracy": net["accuracy"], "miou_present": net["miou_present"],
            "pseudo_miou_present": pseudo["miou_present"], "miou_ratio": ratio,
            "learned": bool(net["accuracy"] >= 0.80 and ratio >= 0.8)}


def report_markdown(results: dict, differences: dict[str, str]) -> str:
    """The demo's final table, the verdict and the settings that differ from the official ones."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    ev = results["distill_eval"]
    rows = [("pseudo-labels (camera-visible points)", ev["pseudo"]["visible"]),
            ("annotation-free (TMP init), camera-visible points", ev["pred"]["visible"]),
            ("annotation-free (TMP init), all points", ev["pred"]["all"]),
            ("annotation-free + AFI, all points", ev["pred_afi"]["all"]),
            ("annotation-free, camera-unseen points", ev["pred"]["unseen"])]
    lines = ["| model / labels (val scenes) | mIoU official | mIoU present classes | accuracy | points |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {pct(r['miou'])} | {pct(r['miou_present'])} | {pct(r['accuracy'])} | {r['points']} |")
    zs = results.get("zeroshot_eval")
    if zs:
        rows = [(f"zero-shot from TMP features (no 3D labels), {k} points", zs["pred"][s])
                for s, k in (("all", "all"), ("visible", "camera-visible"), ("unseen", "camera-unseen"))]
        for name, r in rows:
            lines.append(f"| {name} | {pct(r['miou'])} | {pct(r['miou_present'])} | {pct(r['accuracy'])} | "
                         f"{r['points']} |")
    for key, label in (("finetune_1pct", "1 % fine-tuning (TMP init)"), ("linear_probe", "linear probe (TMP init)")):
        m = results.get(key, {})
        if "val/mIoU" in m:
            lines.append(f"| {label} | {pct(m['val/mIoU'])} | – | – | {m.get('val/points', '')} |")
    v = results["verdict"]
    lines += ["", f"**Did the distilled model learn?** {'yes' if v['learned'] else 'NO'}: on camera-visible val points "
              f"it reaches {pct(v['accuracy'])} % point accuracy (target >= 80 %) and {pct(v['miou_present'])} "
              f"present-class mIoU, {v['miou_ratio']:.2f} x the pseudo-labels' {pct(v['pseudo_miou_present'])} "
              f"(target >= 0.80 x).", "",
              "mIoU official: GT-0 row ignored, empty-union classes count 1.0, mean over 16 classes (official "
              "utils/metrics.py); 'present classes' averages only classes with ground truth or predictions "
              "(devkit style). Fine-tuning / probe rows come from the training validation (same rules, class 0 "
              "suppressed). Zero-shot rows: the TMP model alone, each point labelled with the class of its most "
              "similar class-dictionary text (docs/query.md)."]
    if differences:
        lines += ["", "Settings that differ from the official ones (configs/demo.yaml), and why:", ""]
        lines += [f"- `{k}`: {why}" for k, why in differences.items()]
    return "\n".join(lines) + "\n"


def run_demo(cfg: DemoConfig) -> dict:
    ws = Workspace(Path(cfg.out).absolute(), cfg.synth.version)
    ws.out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    cfg.start_ray()
    results: dict = {"data": build_data(ws, cfg.synth, cfg.min_1pct_scenes, timer)}
    tp = teacher_and_pairing(ws, cfg.teacher, cfg.pair, timer=timer)
    results["pairing"] = {k: v for k, v in tp["pair_stats"].items() if k != "per_class"}
    common = dict(pairing=tp["pairing"], teacher_run=tp["teacher_run"], experiment=cfg.experiment)
    tmp = stage_job(ws, "tmp", "afov-tmp", cfg.tmp, init=None, **common)
    results["tmp"] = train(ws, "tmp", tmp, timer)
    results["zeroshot_eval"] = zeroshot_eval(ws, "afov-tmp", tp["pairing"], tp["teacher_run"], cfg.predict,
                                             cfg.evaluate, timer)
    distill = stage_job(ws, "distill", "afov-distill", cfg.distill, init="models:/afov-tmp@current", **common)
    results["distill"] = train(ws, "distill", distill, timer)
    results["distill_eval"] = evaluate_model(ws, "afov-distill", tp["pairing"], cfg.predict, cfg.afi, cfg.evaluate,
                                             timer=timer)
    ft = stage_job(ws, "finetune", "afov-ft", cfg.finetune, init="models:/afov-tmp@current",
                   train_split="train_1pct", **common)
    results["finetune_1pct"] = train(ws, "finetune", ft, timer)
    lp = stage_job(ws, "finetune", "afov-lp", cfg.probe, init="models:/afov-tmp@current", **common)
    results["linear_probe"] = train(ws, "finetune", lp, timer)
    results["verdict"] = verdict(results)
    results["timings_s"] = timer.stages
    results["config"] = flatten(to_dict(cfg))
    table = report_markdown(results, cfg.differences)
    (ws.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (ws.out / "report.md").write_text("# afov_ray demo report\n\n" + table + "\nPlots: "
                                      + results["distill_eval"]["report_dir"] + "\n")
    total = sum(timer.stages.values())
    print("\n" + table)
    print(f"[demo] finished in {format_duration(total)}. Report: {ws.out / 'report.md'}; plots: "
          f"{results['distill_eval']['report_dir']}")
    print(f"[demo] MLflow UI: mlflow ui --backend-store-uri {ws.tracking_uri}")
    return results


def demo_job(cfg: DemoConfig) -> int:
    """The body of ``jobs/demo.py`` (the verdict is printed; the exit code says the pipeline ran)."""
    results = run_demo(cfg)
    if not results["verdict"]["learned"]:
        log.warning("the distilled model did not reach the demo's targets (see the report)")
    return 0
