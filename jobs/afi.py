r"""afi job: prediction shards -> AFI-refined prediction shards (Approximate Flat Interaction, docs/afi.md).

Examples:
    python jobs/afi.py pred=outputs/demo/pred out=outputs/demo/pred_afi afi_pass.exec.max_actors=4 \
        afi_pass.afi.use_assist=true afi_pass.afi.assist_seed=0
    python jobs/afi.py --config configs/semantickitti/afi.yaml pred=outputs/kitti/pred out=outputs/kitti/pred_afi

The output folder holds the input rows plus pred_afi and afi_changed per scan, _summary.json (per-scan changed
fractions, scans/s) and _errors.jsonl (bad scans, named).
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.refine import AFIJob, afi_job

if __name__ == "__main__":
    raise SystemExit(run_job(AFIJob, afi_job, __doc__))
