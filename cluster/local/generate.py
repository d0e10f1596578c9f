"""A small generated nuScenes-format dataset for the local cluster (raw files: tables, LiDAR sweeps, images).

    python cluster/local/generate.py /tmp/afov-raw        # -> /tmp/afov-raw/nuscenes

The raw files are the one input that is not on S3: ``jobs/prepare.py`` and the simulated teacher read them
from a folder that every node sees (on one machine, any folder; on a real cluster, a shared mount, or
``s3://`` for readers that support it). Everything after ``prepare`` reads and writes ``s3://`` only.
Re-running with the same folder keeps the files already there.
"""

import argparse
from pathlib import Path

from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes

# 3 train scenes x 3 keyframes (9 scans: 4 steps per epoch for 2 workers x 1 scan), 1 val scene
SIZE = dict(num_scenes=4, keyframes_per_scene=3, num_val_scenes=1, image_width=160, image_height=90, num_beams=16,
            azimuth_steps=360)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder; the dataroot is <out>/nuscenes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = Path(args.out) / "nuscenes"
    cfg = SynthConfig(seed=args.seed, **SIZE)
    if not (root / cfg.version / "scene.json").exists():
        generate_nuscenes(root, cfg)
    print(f"raw dataset: {root} (version {cfg.version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
