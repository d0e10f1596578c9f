"""prepare job: raw nuScenes / SemanticKITTI dataroot -> sweep shards (one Parquet file per scene).

Example:
    PYTHONPATH=. python jobs/prepare.py --dataset nuscenes --dataroot /data/nuscenes \\
        --version v1.0-trainval --split train --out s3://bucket/afov --num-cpus 8

Writes <out>/sweeps/<scene>.parquet, _errors.jsonl and, last, _manifest.json. Re-running resumes:
finished scenes are skipped. Exit status 1 if some scene failed (see _errors.jsonl); rerun to retry.
S3 endpoint / credentials come from the environment (AFOV_S3_ENDPOINT or AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", required=True,
                   help="raw dataset root (nuScenes: the folder holding samples/ and the version tables; "
                        "SemanticKITTI: the folder holding sequences/)")
    p.add_argument("--dataset", required=True, choices=["nuscenes", "semantickitti"],
                   help="which reader to use")
    p.add_argument("--version", default=None,
                   help="nuScenes table version, e.g. v1.0-trainval or v1.0-mini (default v1.0-trainval); "
                        "ignored for SemanticKITTI")
    p.add_argument("--out", required=True,
                   help="output URI, local folder or s3://bucket/prefix; shards go to <out>/sweeps/")
    p.add_argument("--split", default=None,
                   help="nuScenes split name passed to the reader (train, val, mini_train, ...); "
                        "SemanticKITTI: train / val / test or comma-separated sequence ids. Default: all scenes")
    p.add_argument("--scenes", default=None,
                   help="comma-separated scene names to restrict to (after --split)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray started by this job (default: all); ignored with --address")
    p.add_argument("--no-splits", action="store_true",
                   help="do not write <out>/splits.json (nuScenes: train, val and the pinned 1%% rule train_1pct)")
    p.add_argument("--min-1pct-scenes", type=int, default=0,
                   help="top the 1%% split up to this many scenes when the rule selects fewer (small data); "
                        "recorded in the split file")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (e.g. 'auto' or ray://head:10001); default: start a local Ray")
    p.add_argument("--no-ray", action="store_true",
                   help="process the scenes one by one in this process (debugging)")
    p.add_argument("--rows-per-group", type=int, default=32,
                   help="keyframes per Parquet row group (bounds the memory of a scene task)")
    p.add_argument("--compression", default="zstd",
                   help="Parquet compression codec (zstd, snappy, none, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from afov_ray.datasets.prepare import prepare_dataset

    summary = prepare_dataset(
        args.dataset, args.dataroot, args.out, version=args.version, split=args.split,
        scenes=args.scenes.split(",") if args.scenes else None,
        use_ray=not args.no_ray, num_cpus=args.num_cpus, address=args.address,
        rows_per_group=args.rows_per_group, compression=args.compression, progress=not args.no_progress,
    )
    if args.dataset == "nuscenes" and not args.no_splits:
        from afov_ray.datasets.nuscenes import NuScenesReader
        from afov_ray.datasets.splits import standard_nuscenes_splits, write_split_file
        from afov_ray.storage import uri as suri

        reader = NuScenesReader(args.dataroot, args.version or "v1.0-trainval")
        splits = standard_nuscenes_splits(reader, min_1pct_scenes=args.min_1pct_scenes)
        write_split_file(suri.join(args.out, "splits.json"), splits)
        print("splits: " + ", ".join(f"{k}={len(v.scenes)} scenes" for k, v in splits.items()))
    d = summary.to_dict()
    d["errors"] = len(d["errors"])
    print(json.dumps(d, indent=2))
    return 1 if summary.scenes_failed else 0


if __name__ == "__main__":
    sys.exit(main())
