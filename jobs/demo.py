r"""demo: the whole AFOV pipeline end to end on a generated nuScenes-format dataset.

    python jobs/demo.py                 # preset configs/demo.yaml, everything under outputs/demo
    python jobs/demo.py out=/tmp/demo synth.num_scenes=6 distill.loop.num_epochs=5

generate -> prepare -> simulated teacher -> pairing / pseudo-labels -> TMP -> distillation (init from the MLflow
registry) -> predict -> AFI -> evaluate -> 1 % fine-tuning and linear probing -> report (outputs/demo/report.md).
Local Ray, local storage, local MLflow (sqlite under <out>). Re-running resumes.
"""

from afov_ray.cli import run_job
from afov_ray.demo import DemoConfig, demo_job

if __name__ == "__main__":
    raise SystemExit(run_job(DemoConfig, demo_job, __doc__, default_config="configs/demo.yaml"))
