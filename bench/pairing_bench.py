"""Pairing throughput (keyframes/s) and stored bytes per keyframe (teacher and pairing shards).

    python bench/pairing_bench.py [--scenes 2 --keyframes 3 --width 800 --height 450]

Generates a nuScenes-format dataset, prepares it, runs the simulated teacher, then times the pairing
pass in one process (``pair_scene`` per scene, no Ray) for both rules, and prints the on-disk size per
keyframe of each shard kind. The official rule is the baseline of the printed ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--keyframes", type=int, default=3)
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--height", type=int, default=450)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.geometry.pairing import PairingConfig
    from afov_ray.pipeline.pair import PairPassConfig, pair_scene
    from afov_ray.pipeline.prepare import prepare_dataset
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = SynthConfig(num_scenes=args.scenes, keyframes_per_scene=args.keyframes, num_val_scenes=0,
                          image_width=args.width, image_height=args.height)
        generate_nuscenes(tmp / "ns", cfg)
        prepare_dataset("nuscenes", str(tmp / "ns"), str(tmp), version=cfg.version, use_ray=False, progress=False)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
        tp = run_teacher_pass(str(tmp / "sweeps"), str(tmp / "teacher"), TeacherPassConfig(dataroot=str(tmp / "ns")),
                              progress=False)
        ray.shutdown()
        images = Path(tp["run_uri"]) / "images"
        n_kf = args.scenes * args.keyframes
        rates = {}
        for rule in ("official", "zbuffer"):
            best = float("inf")
            for r in range(args.repeats):
                out = tmp / f"pair_{rule}_{r}"
                t0 = time.perf_counter()
                for shard in sorted((tmp / "sweeps").glob("*.parquet")):
                    pair_scene(str(shard), str(images / shard.name), str(out), PairPassConfig(pairing=PairingConfig(rule=rule)))
                best = min(best, time.perf_counter() - t0)
            rates[rule] = n_kf / best
            print(f"pairing rule={rule:8s}: {rates[rule]:.2f} keyframes/s ({best / n_kf * 1000:.0f} ms/keyframe, "
                  f"includes shard read/write)")
        print(f"ratio zbuffer/official throughput: {rates['zbuffer'] / rates['official']:.2f}")
        print(f"bytes per keyframe ({args.width}x{args.height} images, ~{n_kf} keyframes):")
        for name, folder in (("sweeps", tmp / "sweeps"), ("teacher", images), ("pairing", tmp / "pair_zbuffer_0")):
            print(f"  {name:8s} {_size(folder) / n_kf / 1e3:8.1f} kB")


if __name__ == "__main__":
    main()
