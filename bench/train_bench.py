"""Training throughput (scans/s per worker) and the fraction of step time spent waiting for data.

    python bench/train_bench.py --pairing outputs/demo/pairing --split-file outputs/demo/splits.json \
        [--kind distill|tmp] [--workers 1] [--batch-size 2] [--epochs 1] [--model res16unet34c] [--engine torch]
        [--voxel-size 0.1] [--threads none,2]

Runs one real Ray Train fit (the same code as jobs/distill.py / jobs/tmp.py) per ``--threads`` value
(scale.torch_threads; "none" = Ray's default, one torch thread per reserved CPU) on existing pairing
shards (run the demo first) and prints, per fit: scans/s per worker over the epochs' own time (the loop's
``train/epoch_s``, without Ray Train start-up) and over the whole fit, steps, and the data-wait fraction
reported by the training loop (time blocked on the Ray Data iterator / epoch time). Fits after the first
also print their speed ratio against the first (the baseline), run in the same process.
Device: CPU here unless --gpu is given.

``--baseline-rev REV`` first runs this benchmark on the code of git revision REV (``git archive``d into a
temporary folder, in a subprocess with the same arguments) on the same shards, so the data-wait fraction
and scans/s before and after a change are measured in one invocation on the same machine, e.g.
``--baseline-rev e52e765`` (the ingest before issue 22). Every epoch is reported (all checkpoints kept).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_baseline(rev: str, argv: list[str]) -> None:
    """Run this benchmark with ``argv`` on the code of git revision ``rev`` (``git archive`` into a temporary
    folder first on PYTHONPATH, for the driver and the Ray workers it starts); output prefixed."""
    from revision import extract

    with tempfile.TemporaryDirectory() as td:
        extract(rev, td)
        env = {**os.environ, "PYTHONPATH": td}
        abs_argv = [str(Path(a).absolute()) if os.path.exists(a) else a for a in argv]
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *abs_argv], cwd=td,
                              env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        print(f"[baseline {rev}] {line}", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"baseline run at {rev} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairing", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--teacher-run", default="", help="needed for --kind tmp")
    ap.add_argument("--kind", default="distill", choices=["distill", "tmp"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="res16unet34c")
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--voxel-size", type=float, default=0.1)
    ap.add_argument("--threads", default="none", help="comma-separated scale.torch_threads values; first = baseline")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--baseline-rev", default=None, help="also run this benchmark at that git revision first")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.baseline_rev:
        argv, skip = [], False
        for a in sys.argv[1:]:
            if skip or a.startswith("--baseline-rev"):
                skip = a == "--baseline-rev"
                continue
            argv.append(a)
        run_baseline(args.baseline_rev, argv)

    import afov_ray
    from afov_ray.config import load_config
    from afov_ray.train.jobs import TrainJob, run_train_job

    print(f"code: {Path(afov_ray.__file__).parent}")
    print(f"device: {'GPU' if args.gpu else 'CPU'} ({os.cpu_count()} cores); kind {args.kind}; model {args.model} "
          f"on engine {args.engine}; voxel {args.voxel_size} m; {args.workers} worker(s), batch {args.batch_size}")
    base = None
    for threads in args.threads.split(","):
        with tempfile.TemporaryDirectory() as td:
            cfg = load_config(TrainJob, None, [
                f"data.pairing={args.pairing}", f"data.split_file={args.split_file}", "data.val_split=null",
                f"model.name={args.model}", f"model.engine={args.engine}", f"loop.num_epochs={args.epochs}",
                f"loop.batch_size={args.batch_size}", "loop.tracking.enabled=false",
                f"scale.num_workers={args.workers}", f"scale.use_gpu={str(args.gpu).lower()}",
                f"scale.torch_threads={'null' if threads == 'none' else threads}", f"ingest.voxel_size={args.voxel_size}",
                f"run.storage_path={td}", "run.name=bench", f"tmp.teacher_run={args.teacher_run}",
                "loop.optim.lr_head=null", "run.num_to_keep=null"])
            t0 = time.perf_counter()
            res = run_train_job(args.kind, cfg)
            wall = time.perf_counter() - t0
        if res.error is not None:
            raise SystemExit(f"fit with torch_threads={threads} failed: {res.error}")
        rows = res.metrics_dataframe.to_dict("records") if res.metrics_dataframe is not None else [res.metrics]
        rows = [r for r in rows if r.get("train/steps") is not None]
        steps = sum(int(r["train/steps"]) for r in rows)
        epoch_s = sum(float(r.get("train/epoch_s", 0.0)) for r in rows)
        wait = [float(r["train/data_wait_fraction"]) for r in rows if r.get("train/data_wait_fraction") is not None]
        scans = steps * args.batch_size
        rate = scans / max(epoch_s, 1e-9)
        ratio = "" if base is None else f"; x{rate / base:.2f} vs torch_threads={args.threads.split(',')[0]}"
        base = rate if base is None else base
        print(f"torch_threads={threads} (worker used {rows[-1].get('train/torch_threads', '?')}): {steps} steps, "
              f"scans/s per worker {rate:.3f} over epochs ({epoch_s:.1f} s), {scans / wall:.3f} over the fit "
              f"({wall:.1f} s with start-up); data-wait fraction {', '.join(f'{w:.3f}' for w in wait)}"
              f"{f' (mean after the first epoch {sum(wait[1:]) / len(wait[1:]):.3f})' if len(wait) > 1 else ''}{ratio}",
              flush=True)


if __name__ == "__main__":
    main()
