"""Prints generator figures: points per sweep and seconds per keyframe (nuScenes) at given image sizes.

Usage: PYTHONPATH=. python bench/synth_bench.py [--full]   (--full adds 1600x900, a few minutes on 2 cores)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.kitti_writer import generate_semantickitti
from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes


def bench_nuscenes(width: int, height: int, num_scenes: int = 2, keyframes: int = 4) -> None:
    cfg = SynthConfig(num_scenes=num_scenes, num_val_scenes=1, keyframes_per_scene=keyframes,
                      image_width=width, image_height=height)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        root = generate_nuscenes(d, cfg)
        dt = time.perf_counter() - t0
        n = [p.stat().st_size // 20 for p in sorted(Path(root, "samples", "LIDAR_TOP").glob("*.bin"))]
        size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
    kf = num_scenes * keyframes
    print(f"nuScenes {width}x{height}: {kf} keyframes in {dt:.1f} s = {dt / kf:.2f} s/keyframe; "
          f"points/sweep min {min(n)} mean {np.mean(n):.0f} max {max(n)}; {size / 2**20:.1f} MiB")


def bench_kitti(frames: int = 4) -> None:
    cfg = SynthConfig()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        seq = generate_semantickitti(d, cfg, num_frames=frames)
        dt = time.perf_counter() - t0
        n = [p.stat().st_size // 16 for p in sorted((seq / "velodyne").glob("*.bin"))]
    print(f"SemanticKITTI 64x2048 beams, 1241x376: {dt / frames:.2f} s/frame; points/scan mean {np.mean(n):.0f}")


if __name__ == "__main__":
    bench_nuscenes(320, 180)
    bench_kitti()
    if "--full" in sys.argv:
        bench_nuscenes(1600, 900, num_scenes=1, keyframes=1)
