"""Benchmark: prepare throughput (keyframes/s) on generated nuScenes-sized keyframes, local output.

    PYTHONPATH=. python bench/prepare_bench.py [--scenes 4 --keyframes 40 --points 34000 --ray --num-cpus 2]

The reader serves pre-generated keyframes (so the figure is the prepare cost: schema checks, Arrow
conversion, Parquet encoding + compression, atomic commit, manifest), not the cost of decoding a
real dataroot. A nuScenes keyframe: ~34k points, 6 cameras.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np

from afov_ray.datasets.types import NUSCENES_CAMERAS, CameraFrame, Keyframe


def _pool(n: int, points: int, seed: int = 0) -> list[Keyframe]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(points * rng.uniform(0.9, 1.1))
        pts = np.concatenate([rng.normal(0, 15, (m, 3)), rng.uniform(0, 100, (m, 1))], 1).astype(np.float32)
        cams = [CameraFrame(ch, f"tok{i}{ch}", f"samples/{ch}/{i}.jpg", 1600, 900, np.eye(3), np.eye(4), i)
                for ch in NUSCENES_CAMERAS]
        out.append(Keyframe("nuscenes", f"s{i}", f"l{i}", "x", i, pts,
                            raw_labels=rng.integers(0, 32, m).astype(np.uint8),
                            labels=rng.integers(0, 17, m).astype(np.uint8), cameras=cams,
                            ring=rng.integers(0, 32, m).astype(np.uint8)))
    return out


@dataclass(frozen=True)
class PoolReader:
    num_scenes: int
    keyframes: int
    points: int
    dataset: str = "nuscenes"
    dataroot: str = "generated"

    def _kfs(self):
        global _POOL
        if _POOL is None:
            _POOL = _pool(8, self.points)
        return _POOL

    def scenes(self):
        return [f"scene-{i:04d}" for i in range(self.num_scenes)]

    def keyframe_ids(self, scene):
        return [f"{scene}/{j}" for j in range(self.keyframes)]

    def read(self, kid):
        scene, _, j = kid.partition("/")
        base = self._kfs()[int(j) % 8]
        return replace(base, sample_token=kid, lidar_token=kid + "/lidar", scene=scene)


_POOL = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4, help="number of scenes (= shards)")
    ap.add_argument("--keyframes", type=int, default=40, help="keyframes per scene (nuScenes: ~40)")
    ap.add_argument("--points", type=int, default=34000, help="points per keyframe (nuScenes: ~34k)")
    ap.add_argument("--compression", default="zstd", help="Parquet codec")
    ap.add_argument("--ray", action="store_true", help="also run with Ray tasks")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    args = ap.parse_args()
    from afov_ray.pipeline.prepare import prepare

    reader = PoolReader(args.scenes, args.keyframes, args.points)
    reader._kfs()
    modes = [("local (1 process)", False)] + ([(f"ray (num_cpus={args.num_cpus})", True)] if args.ray else [])
    for label, use_ray in modes:
        out = tempfile.mkdtemp(prefix="prepare_bench_")
        try:
            if use_ray:
                import ray

                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                ray.init(num_cpus=args.num_cpus, include_dashboard=False, object_store_memory=256 * 2**20)
            t0 = time.perf_counter()
            s = prepare(reader, out, use_ray=use_ray, progress=False, compression=args.compression)
            dt = time.perf_counter() - t0
            if use_ray:
                ray.shutdown()
            size = sum(os.path.getsize(os.path.join(s.sweeps_uri, f)) for f in os.listdir(s.sweeps_uri)
                       if f.endswith(".parquet"))
            n = s.keyframes_total
            print(f"{label:<22} {n} keyframes in {dt:6.2f} s = {n / dt:7.1f} keyframes/s, "
                  f"{size / dt / 2**20:6.1f} MB/s written ({size / n / 2**20:.2f} MB/keyframe, {args.compression})")
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
