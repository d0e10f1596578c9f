"""demo: the whole AFOV pipeline end to end on a generated nuScenes-format dataset.

    python jobs/demo.py                 # preset configs/demo.yaml, everything under outputs/demo
    python jobs/demo.py out=/tmp/demo synth.num_scenes=6

generate -> prepare -> simulated teacher -> pairing / pseudo-labels -> TMP -> distillation (init from
the MLflow registry) -> predict -> AFI -> evaluate -> 1 % fine-tuning and linear probing -> report.
Local Ray, local storage, local MLflow (sqlite under <out>). Re-running resumes.
"""

from __future__ import annotations

from afov_ray.cli import parse_job_args
from afov_ray.demo import DemoConfig, run_demo


def main(argv=None) -> int:
    cfg, _ = parse_job_args(DemoConfig, __doc__, argv, default_config="configs/demo.yaml")
    run_demo(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
