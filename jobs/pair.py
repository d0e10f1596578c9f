r"""pair job: sweep shards + teacher shards -> pairing shards (pairings, superpoints, pseudo-labels).

Example:
    python jobs/pair.py sweeps=outputs/demo/sweeps teacher_run=outputs/demo/teacher/<run_id> \
        out=outputs/demo/pairing pair.pairing.rule=zbuffer

pair.pairing.rule: "zbuffer" (default: occlusion test + nearest-image-centre camera) or "official" (last camera
wins, no occlusion test). Prints coverage and agreement with ground truth per class (when the data has labels).
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.pair import PairJob, pair_job

if __name__ == "__main__":
    raise SystemExit(run_job(PairJob, pair_job, __doc__))
