r"""inspect job: statistics and sanity pictures of prepared sweep shards.

Example:
    python jobs/inspect_data.py sweeps=outputs/demo/sweeps dataroot=outputs/demo/nuscenes out=outputs/demo/inspect

Prints keyframes, scenes, points per sweep and the label histogram; with out=... writes, for the first
num_keyframes keyframes, one PNG per camera (LiDAR points projected onto the image, coloured by depth) and a
bird's-eye-view PNG coloured by label, plus stats.json.
"""

from afov_ray.cli import run_job
from afov_ray.datasets.inspect import InspectJob, inspect_job

if __name__ == "__main__":
    raise SystemExit(run_job(InspectJob, inspect_job, __doc__))
