r"""Annotation-free training: distil the pseudo-labels into the 3D network (CE + Lovasz) on Ray Train.

Example:
    python jobs/distill.py --config configs/nuscenes/distill.yaml data.pairing=outputs/demo/pairing \
        data.split_file=outputs/demo/splits.json model.init=models:/afov-tmp@current
model.init takes models:/name@alias, models:/name/version, runs:/..., a checkpoint folder/file or s3:// URI.
"""

from __future__ import annotations

from afov_ray.train.jobs import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("distill", __doc__))
