"""Benchmark the sparse engines on Res16UNet34C: forward+backward time, peak memory, voxels/s.

Each (engine, batch) runs in its own subprocess so the peak RSS (CPU) / peak CUDA memory is its own.
Scans are generated LiDAR-like (ground + walls + boxes on 32 beam rings, ~30k points, cylindrical
0.1 m / 1 deg / 0.1 m voxels, intensity feature). Usage:
    PYTHONPATH=. python bench/engines_bench.py [--engines torch,minkowski,spconv] [--batches 1,4] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def make_batch(batch: int, points: int):
    from afov_ray.geometry.voxelize import voxelize_batch
    from afov_ray.models.synthetic_scan import lidar_like_scan

    scans = [lidar_like_scan(points, seed=100 + b) for b in range(batch)]
    v = voxelize_batch(scans)
    return v.coords, v.feats, sum(s.shape[0] for s in scans)


def run_one(engine: str, batch: int, points: int, reps: int, device: str) -> dict:
    from afov_ray.models.res16unet import build_model

    coords, feats, n_points = make_batch(batch, points)
    model = build_model("res16unet34c", 1, 17, engine=engine).to(device).train()
    coords, feats = coords.to(device), feats.to(device)
    times = []
    for i in range(reps + 1):  # first iteration is warm-up (kernel maps, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = model(coords, feats)
        out.square().mean().backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    sec = sorted(times)[len(times) // 2]
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"engine": engine, "batch": batch, "points": n_points, "voxels": int(coords.shape[0]),
            "fwd_bwd_s": sec, "voxels_per_s": coords.shape[0] / sec, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="torch,minkowski,spconv")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--points", type=int, default=40000, help="rays per scan (~75%% hit: ~30k points)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_one(a.engines, int(a.batches), a.points, a.reps, a.device)))
        return
    dev = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; torch {torch.__version__}; Res16UNet34C train mode, float32, loss=mean(out^2)")
    print(f"{'engine':10} {'batch':>5} {'points':>8} {'voxels':>8} {'fwd+bwd s':>10} {'voxels/s':>10} {'peak MiB':>9}")
    for engine in a.engines.split(","):
        for batch in a.batches.split(","):
            cmd = [sys.executable, __file__, "--child", "--engines", engine, "--batches", batch,
                   "--points", str(a.points), "--reps", str(a.reps), "--device", a.device]
            r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode or not lines:
                err = (r.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{engine:10} {batch:>5}  failed: {err}")
                continue
            d = json.loads(lines[-1])
            print(f"{engine:10} {d['batch']:>5} {d['points']:>8} {d['voxels']:>8} {d['fwd_bwd_s']:>10.2f} "
                  f"{d['voxels_per_s']:>10.0f} {d['peak_mib']:>9.0f}")


if __name__ == "__main__":
    main()
