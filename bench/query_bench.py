"""Text queries and zero-shot segmentation on the demo's TMP model (figures are printed, never asserted).

    PYTHONPATH=. python bench/query_bench.py --demo outputs/demo          # after `python jobs/demo.py`
    PYTHONPATH=. python bench/query_bench.py --demo outputs/demo --prompts car road tree person --zeroshot

For each prompt (a class-dictionary text: the demo's simulated teacher has no text encoder), the query job
(``afov_ray.pipeline.query``) scores every point of the demo's val scans with the TMP model
(``models:/afov-tmp@current``) and reports, against the ground truth: the mean cosine score of the points of the
prompt's class (the class of its dictionary text) vs the other labelled points, and the ROC AUC (0.5 = chance,
1 = every point of the class scores above every other point). ``--zeroshot`` also scores the zero-shot
segmentation of the same model (each point: class of its most similar dictionary text) on all / camera-visible /
camera-unseen val points, as the demo report does. Writes ``<demo>/query_bench/{query.md, query.json}``; with
``--out`` also copies them there (the committed ``bench/results/query_demo.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_PROMPTS = ["car", "road", "tree", "building", "sidewalk", "person", "truck", "bus"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="outputs/demo", help="the demo's output folder (jobs/demo.py out=...)")
    ap.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    ap.add_argument("--model", default="models:/afov-tmp@current")
    ap.add_argument("--zeroshot", action="store_true", help="also evaluate zero-shot segmentation")
    ap.add_argument("--out", default="", help="also write query.md / query.json here")
    ap.add_argument("--ray", action="store_true", help="run the query pass on a local Ray actor pool (default: in "
                                                       "this process; the figures are the same)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from afov_ray.demo import Workspace, zeroshot_eval
    from afov_ray.pipeline.evaluate import EvaluateConfig
    from afov_ray.pipeline.predict import PredictConfig
    from afov_ray.pipeline.query import QueryConfig, report_lines, run_query
    from afov_ray.pipeline.shard_pass import ExecConfig

    if not args.ray:   # as a Ray actor does (1 CPU, OMP_NUM_THREADS=1): on a busy small machine, OpenMP
        import torch  # spin-waits make 2+ intra-op threads many times slower

        torch.set_num_threads(1)
    ws = Workspace(Path(args.demo).absolute())
    runs = sorted(p for p in (ws.out / "teacher").iterdir() if (p / "run.json").exists())
    if len(runs) != 1:
        raise SystemExit(f"expected one teacher run under {ws.out / 'teacher'}, found {[r.name for r in runs]}")
    bench = ws.out / "query_bench"
    cfg = QueryConfig(model=args.model, tracking_uri=ws.tracking_uri, teacher_run=str(runs[0]),
                      prompts=list(args.prompts), sweeps=ws.sweeps, dataroot=str(ws.dataroot),
                      split_file=ws.split_file, split="val", pictures=2, viewer_scans=2,
                      exec=ExecConfig(use_ray=args.ray, max_actors=1))
    t0 = time.perf_counter()
    shards = bench / "shards"
    shutil.rmtree(shards, ignore_errors=True)    # the bench's own folder: always a fresh measurement
    summary = run_query(str(ws.out / "pairing"), str(shards), cfg, str(bench / "view"))
    wall = time.perf_counter() - t0
    names = summary.stats["class_names"]
    doc = {"model": args.model, "teacher_run": runs[0].name, "scans": summary.stats["scans"],
           "points": summary.stats["points"], "seconds": round(wall, 1), "per_prompt": summary.stats["per_prompt"],
           "prompt_encoding": summary.stats["prompt_encoding"], "view": summary.stats.get("view", {})}
    lines = ["# Text queries on the demo's TMP model", "",
             f"Model {args.model} of the demo (`jobs/demo.py`, configs/demo.yaml: TMP 3 epochs on the generated train "
             f"scans), teacher run {runs[0].name}; {doc['scans']} val scans, {doc['points']} points "
             f"(`python bench/query_bench.py --demo <demo out>{' --zeroshot' if args.zeroshot else ''}`). "
             "Scores are cosine similarities of the point features with the prompt's embedding; 'class points' are "
             "the points whose ground truth is the prompt's class, 'other' every other labelled point; AUC 0.5 = "
             "chance. 'mask points': points where the prompt beats every dictionary text of another category "
             "(no threshold).", ""]
    table = report_lines(summary.stats, names)
    lines += [table[0], ""] + table[1:]
    if args.zeroshot:
        local = ExecConfig(use_ray=args.ray)
        zs = zeroshot_eval(ws, "afov-tmp", str(ws.out / "pairing"), str(runs[0]), PredictConfig(exec=local),
                           EvaluateConfig(exec=replace(local, cpus_per_item=0.5)))
        doc["zeroshot"] = zs
        lines += ["", "Zero-shot segmentation (each point: class of its most similar dictionary text):", "",
                  "| val points | mIoU (official) | mIoU (present classes) | accuracy | points |",
                  "|---|---:|---:|---:|---:|"]
        for k in ("all", "visible", "unseen"):
            r = zs["pred"][k]
            lines.append(f"| {k} | {100 * r['miou']:.1f} | {100 * r['miou_present']:.1f} | "
                         f"{100 * r['accuracy']:.1f} | {r['points']} |")
        r = zs["pseudo"]["visible"]
        lines.append(f"| pseudo-labels, visible (reference) | {100 * r['miou']:.1f} | {100 * r['miou_present']:.1f} | "
                     f"{100 * r['accuracy']:.1f} | {r['points']} |")
    lines += ["", f"Query pass + pictures: {wall:.1f} s (this machine, this run; not a benchmark of speed)."]
    md = "\n".join(lines) + "\n"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "query.md").write_text(md)
    (bench / "query.json").write_text(json.dumps(doc, indent=1, default=str))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "query_demo.md").write_text(md)
        (out / "query_demo.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "view"}, indent=1,
                                                        default=str))
    print(md)
    if doc["view"].get("index"):
        print(f"viewer: {doc['view']['index']}")


if __name__ == "__main__":
    main()
