"""Why AFI helps or hurts on a set of predictions: mIoU of the raw predictions against AFI with the
official constants and with one constant changed at a time, per class, on the same scans.

    python bench/afi_sensitivity.py --pred outputs/quality/eval/q-distill-tmp/pred [--classes nuscenes]

Input: prediction shards (``jobs/predict.py`` / the quality benchmark's ``eval/<run>/pred``) with xyz, pred
and gt. Every variant refines the same ``pred`` labels (no 2D assist); mIoU over the classes with ground
truth in these scans (class 0 ignored), point accuracy, the fraction of labels AFI changed, and per class
the IoU of the raw predictions and of each variant. The variants probe the constants that assume real
nuScenes scans: the cosine threshold gamma (which directions count as "the same line"), the near-ego
ground step (a ring 2-5 m around the sensor below z = -1.4 m, the nuScenes LiDAR height), the FPS level
sizes (4096 points at the first level, for 34k-point scans) and the neighbourhood size k.

``--baseline-rev REV`` also refines the same scans with the AFI of git revision REV (its ``afov_ray`` package,
``git archive``d into a temporary folder, in a subprocess; official constants), e.g. ``--baseline-rev 3445169``,
the AFI before the parity fix of issue 16 (mirrored direction bins, no 1e-8 decoder self-term).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "official": {},
    "gamma 0.98": {"gamma": 0.98},
    "gamma 0.999": {"gamma": 0.999},
    "no ground step": {"ground_step": False},
    "points 2048": {"points": 2048},
    "points 8192": {"points": 8192},
    "k 10": {"k": 10},
    "k 40": {"k": 40},
}


def load_scans(pred_dir: str) -> list[dict]:
    import numpy as np
    import pyarrow.parquet as pq

    from afov_ray.train.arrow_lists import list_view

    files = sorted(glob.glob(os.path.join(pred_dir, "*.parquet")))
    if not files:
        raise SystemExit(f"no prediction shards (*.parquet) in {pred_dir}")
    scans = []
    for f in files:
        t = pq.read_table(f, columns=["sample_token", "xyz", "pred", "gt"])
        views = {c: list_view(t.column(c)) for c in ("xyz", "pred", "gt")}
        for i, tok in enumerate(t.column("sample_token").to_pylist()):
            gt = views["gt"].row(i)
            if gt is None or len(gt) == 0:
                raise SystemExit(f"{f}: scan {tok} has no ground truth (gt)")
            scans.append({"name": tok, "xyz": np.asarray(views["xyz"].row(i), np.float32).reshape(-1, 3),
                          "pred": np.asarray(views["pred"].row(i), np.int64), "gt": np.asarray(gt, np.int64)})
    return scans


_BASELINE = """
import sys
import numpy as np, torch
from afov_ray.afi.config import AFIConfig
from afov_ray.afi.refine import afi_refine
d = np.load(sys.argv[1])
n = int(d["n"])
out = {}
for i in range(n):
    cfg = AFIConfig(num_classes=int(d["nc"]))
    lab, _ = afi_refine(torch.from_numpy(d[f"xyz{i}"]), torch.from_numpy(d[f"pred{i}"]), cfg)
    out[f"out{i}"] = lab.numpy()
np.savez(sys.argv[2], **out)
"""


def baseline_labels(rev: str, scans: list[dict], nc: int) -> list:
    """AFI labels of every scan computed by the ``afov_ray`` of git revision ``rev`` (official constants)."""
    import numpy as np
    from revision import extract

    with tempfile.TemporaryDirectory() as td:
        extract(rev, td, "afov_ray")
        src, dst = os.path.join(td, "scans.npz"), os.path.join(td, "out.npz")
        np.savez(src, n=len(scans), nc=nc, **{f"xyz{i}": s["xyz"] for i, s in enumerate(scans)},
                 **{f"pred{i}": s["pred"] for i, s in enumerate(scans)})
        proc = subprocess.run([sys.executable, "-c", _BASELINE, src, dst], cwd=td, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": td})
        if proc.returncode:
            raise SystemExit(f"AFI at {rev} failed:\n{proc.stderr[-3000:]}")
        out = np.load(dst)
        return [out[f"out{i}"] for i in range(len(scans))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", required=True, help="folder of prediction shards")
    ap.add_argument("--classes", default="nuscenes", choices=["nuscenes"])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--baseline-rev", default=None, help="also refine with the AFI of this git revision")
    args = ap.parse_args()
    import numpy as np
    import torch

    from afov_ray.afi.config import AFIConfig
    from afov_ray.afi.refine import afi_refine
    from afov_ray.datasets.labels import NUSCENES_EVAL_NAMES
    from afov_ray.eval.metrics import confusion_matrix, iou_per_class, point_accuracy

    names = list(NUSCENES_EVAL_NAMES)
    nc = len(names)
    scans = load_scans(args.pred)
    base = AFIConfig(num_classes=nc)
    H_raw = sum(confusion_matrix(s["gt"], s["pred"], nc) for s in scans)
    present = [c for c in range(1, nc) if np.asarray(H_raw)[c].sum() > 0]
    print(f"{len(scans)} scans, {sum(len(s['gt']) for s in scans) / len(scans):.0f} points per scan; classes with "
          f"ground truth: {len(present)}")

    def row(H):
        iou = iou_per_class(H)
        return 100 * float(np.mean([iou[c] for c in present])), 100 * point_accuracy(H), iou

    results = {"raw predictions": (*row(H_raw), 0.0, 0.0)}
    if args.baseline_rev:
        t0 = time.process_time()
        outs = baseline_labels(args.baseline_rev, scans, nc)
        H = sum(confusion_matrix(s["gt"], o.astype(np.int64), nc) for s, o in zip(scans, outs))
        changed = float(np.mean([(o != s["pred"]).mean() for s, o in zip(scans, outs)]))
        results[f"AFI official at {args.baseline_rev}"] = (*row(H), 100 * changed, float("nan"))
        print(f"  AFI at {args.baseline_rev}: done ({time.process_time() - t0:.1f} s of this process)", flush=True)
    for name in args.variants.split(","):
        cfg = replace(base, **VARIANTS[name])
        H, changed, t0 = 0, [], time.process_time()
        for s in scans:
            out, st = afi_refine(torch.from_numpy(s["xyz"].copy()), torch.from_numpy(s["pred"]), cfg, name=s["name"])
            H = H + confusion_matrix(s["gt"], out.numpy(), nc)
            changed.append(st["changed_fraction"])
        results[f"AFI {name}"] = (*row(H), 100 * float(np.mean(changed)),
                                  (time.process_time() - t0) / len(scans))
        print(f"  {name}: done", flush=True)
    print("\n| labels | mean IoU (classes with ground truth) | accuracy | changed by AFI | CPU s/scan |")
    print("|---|---:|---:|---:|---:|")
    for k, (m, a, _, ch, sec) in results.items():
        print(f"| {k} | {m:.1f} | {a:.1f} | {ch:.1f} % | {sec:.2f} |")
    keys = list(results)
    print("\nPer-class IoU:\n\n| class | points | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for c in present:
        print(f"| {names[c]} | {int(np.asarray(H_raw)[c].sum())} | "
              + " | ".join(f"{100 * results[k][2][c]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
