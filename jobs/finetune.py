"""Downstream 1 % fine-tuning (data.train_split=train_1pct) or linear probing (--config configs/linear_probe.yaml)
on ground-truth labels, initialised from TMP or distillation (model.init).

Example:
    python jobs/finetune.py --config configs/finetune.yaml data.split_file=splits.json model.init=models:/afov-tmp@current
"""

from __future__ import annotations

from afov_ray.cli import parse_job_args
from afov_ray.train.jobs import TrainJob, run_train_job


def main(argv=None) -> int:
    cfg, _ = parse_job_args(TrainJob, __doc__, argv, default_config="configs/finetune.yaml")
    result = run_train_job("finetune", cfg)
    if result.error is not None:
        print(f"finetune failed: {result.error}")
        return 1
    print(f"finetune finished; checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    print(f"metrics: {result.metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
