r"""Hyper-parameter sweep (Ray Tune + Ray Train V2) over teacher runs, TMP loss weights / temperature and
learning rates; ASHA early stopping; the best trial's model is registered in MLflow with alias sweep.alias.

Each trial is a training job (same keys as jobs/distill.py / jobs/tmp.py) initialised from sweep.init
(e.g. models:/afov-tmp@current). Re-running the same command (same sweep.name and sweep.storage_path)
after the driver died resumes the sweep: finished trials are kept, unfinished ones continue from their
last epoch checkpoint.

Examples:
    python jobs/sweep.py --config configs/nuscenes/sweep.yaml data.split_file=outputs/demo/splits.json \
        'sweep.teachers=[{name: san, run: s3://b/afov/teacher/san-1a2b, pairing: s3://b/afov/pairing_san}, {name: fcclip, run: s3://b/afov/teacher/fcclip-3c4d, pairing: s3://b/afov/pairing_fcclip}]'
    python jobs/sweep.py --config configs/nuscenes/sweep_tmp.yaml sweep.space.tmp.tau=[0.05,0.07,0.1]
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/sweep.py --config configs/nuscenes/sweep.yaml
"""

from __future__ import annotations

from afov_ray.cli import run_job
from afov_ray.tune.sweep import SweepJob, sweep_job

if __name__ == "__main__":
    raise SystemExit(run_job(SweepJob, sweep_job, __doc__, default_config="configs/nuscenes/sweep.yaml"))
