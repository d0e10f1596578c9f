r"""TMP pre-training (tri-modal contrastive: superpixel-superpoint InfoNCE + text-superpoint loss) on Ray Train.

Example:
    python jobs/tmp.py --config configs/nuscenes/tmp.yaml data.pairing=s3://bucket/afov/pairing \
        data.split_file=splits.json tmp.teacher_run=s3://bucket/afov/teacher/<run_id> scale.num_workers=4 scale.use_gpu=true
Registers the model in MLflow as loop.tracking.register_as (default afov-tmp) with alias loop.tracking.alias.
"""

from __future__ import annotations

from afov_ray.train.jobs import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("tmp", __doc__))
