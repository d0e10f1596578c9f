"""TMP pre-training (tri-modal contrastive: superpixel-superpoint InfoNCE + text-superpoint loss) on Ray Train.

Example:
    python jobs/tmp.py --config configs/tmp.yaml data.pairing=s3://bucket/afov/pairing \\
        data.split_file=splits.json tmp.teacher_run=s3://bucket/afov/teacher/<run_id> scale.num_workers=4 scale.use_gpu=true
Registers the model in MLflow as loop.tracking.register_as (default afov-tmp) with alias loop.tracking.alias.
"""

from __future__ import annotations

from afov_ray.cli import parse_job_args
from afov_ray.train.jobs import TrainJob, run_train_job


def main(argv=None) -> int:
    cfg, _ = parse_job_args(TrainJob, __doc__, argv, default_config="configs/tmp.yaml")
    result = run_train_job("tmp", cfg)
    if result.error is not None:
        print(f"tmp failed: {result.error}")
        return 1
    print(f"tmp finished; checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    print(f"metrics: {result.metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
