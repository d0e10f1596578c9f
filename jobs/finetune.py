r"""Downstream 1 % fine-tuning (data.train_split=train_1pct) or linear probing (--config configs/nuscenes/linear_probe.yaml)
on ground-truth labels, initialised from TMP or distillation (model.init).

Example:
    python jobs/finetune.py --config configs/nuscenes/finetune.yaml data.split_file=splits.json model.init=models:/afov-tmp@current
"""

from __future__ import annotations

from afov_ray.train.jobs import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("finetune", __doc__))
