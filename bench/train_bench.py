"""Training throughput (scans/s per worker) and the fraction of step time spent waiting for data.

    python bench/train_bench.py --pairing outputs/demo/pairing --split-file outputs/demo/splits.json \
        [--kind distill|tmp] [--workers 1] [--batch-size 2] [--epochs 1] [--model res16unet34c] [--engine torch]

Runs one real Ray Train fit (the same code as jobs/distill.py / jobs/tmp.py) on existing pairing shards
(run the demo first) and prints scans/s per worker, steps, and the data-wait fraction reported by the
training loop (time blocked on the Ray Data iterator / step wall time). Device: CPU here unless
--gpu is given.
"""

from __future__ import annotations

import argparse
import os
import time


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
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import tempfile

    from afov_ray.config import load_config
    from afov_ray.train.jobs import TrainJob, run_train_job

    with tempfile.TemporaryDirectory() as td:
        cfg = load_config(TrainJob, None, [
            f"data.pairing={args.pairing}", f"data.split_file={args.split_file}", "data.val_split=null",
            f"model.name={args.model}", f"model.engine={args.engine}", f"loop.num_epochs={args.epochs}",
            f"loop.batch_size={args.batch_size}", "loop.tracking.enabled=false", f"scale.num_workers={args.workers}",
            f"scale.use_gpu={str(args.gpu).lower()}", f"run.storage_path={td}", "run.name=bench",
            f"tmp.teacher_run={args.teacher_run}", "loop.optim.lr_head=null"])
        t0 = time.perf_counter()
        res = run_train_job(args.kind, cfg)
        wall = time.perf_counter() - t0
    rows = res.metrics_dataframe.to_dict("records") if res.metrics_dataframe is not None else [res.metrics]
    steps = sum(int(r.get("train/steps", 0)) for r in rows)
    wait = [r.get("train/data_wait_fraction") for r in rows if r.get("train/data_wait_fraction") is not None]
    scans = steps * args.batch_size
    print(f"device: {'GPU' if args.gpu else 'CPU'}; kind {args.kind}; model {args.model} on engine {args.engine}")
    print(f"{args.workers} worker(s), {steps} steps x batch {args.batch_size} per worker, fit wall {wall:.1f} s "
          f"(includes Ray Train start-up)")
    print(f"scans/s per worker (fit wall): {scans / wall:.3f}")
    print(f"data-wait fraction of epoch time: {', '.join(f'{w:.3f}' for w in wait)}")


if __name__ == "__main__":
    main()
