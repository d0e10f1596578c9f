r"""evaluate job: prediction shards -> mIoU per source (raw / AFI / pseudo) on all, camera-visible and unseen
points, as JSON + markdown + plots, optionally logged to MLflow.

Examples:
    python jobs/evaluate.py pred=outputs/demo/pred_afi out=outputs/demo/eval \
        eval.sweeps=outputs/demo/sweeps eval.dataroot=outputs/demo/nuscenes \
        eval.tracking.enabled=true eval.tracking.experiment=afov_eval
    python jobs/evaluate.py --config configs/semantickitti/evaluate.yaml pred=outputs/kitti/pred out=outputs/kitti/eval

Rules (official): GT-0 row ignored, prediction-0 column kept, empty union -> IoU 1.0 (eval.empty_union=nan for
the devkit convention), mIoU over classes 1..C-1. The camera-visible mask is the shards' visible column
(pairing superpoint >= 0) when present, else pseudo > 0. Scans without ground truth are skipped and named.
The first eval.viewer_scans scans (default 2) also get a 3D viewer page each (out/viewer/index.html: prediction,
AFI, ground truth, error and pseudo-label layers; open it in a browser, docs/viewer.md) and a .ply file.
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.evaluate import EvaluateJob, evaluate_job

if __name__ == "__main__":
    raise SystemExit(run_job(EvaluateJob, evaluate_job, __doc__))
