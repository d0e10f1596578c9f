"""Annotation-free training: distil the pseudo-labels into the 3D network (CE + Lovasz) on Ray Train.

Example:
    python jobs/distill.py --config configs/distill.yaml data.pairing=outputs/demo/pairing \\
        data.split_file=outputs/demo/splits.json model.init=models:/afov-tmp@current
model.init takes models:/name@alias, models:/name/version, runs:/..., a checkpoint folder/file or s3:// URI.
"""

from __future__ import annotations

from afov_ray.cli import parse_job_args
from afov_ray.train.jobs import TrainJob, run_train_job


def main(argv=None) -> int:
    cfg, _ = parse_job_args(TrainJob, __doc__, argv, default_config="configs/distill.yaml")
    result = run_train_job("distill", cfg)
    if result.error is not None:
        print(f"distill failed: {result.error}")
        return 1
    print(f"distill finished; checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    print(f"metrics: {result.metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
