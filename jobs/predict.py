r"""predict job: a trained segmentation model over pairing or sweep shards -> prediction shards
(+ optional AFI, + optional nuScenes lidarseg submission files).

Example:
    python jobs/predict.py input=outputs/demo/pairing out=outputs/demo/pred \
        predict.model=models:/afov-distill@current predict.tracking_uri=sqlite:///outputs/demo/mlflow.db \
        predict.sweeps=outputs/demo/sweeps predict.split_file=outputs/demo/splits.json predict.split=val \
        submission=outputs/demo/submission

The network is built from the model's own contract (architecture, classes, voxel grid and size); setting
predict.grid / predict.voxel_size to other values than the model's is an error. predict.suppress_class0
(default true) never predicts class 0; set false to reproduce the official final evaluation. A submission needs
it true (the devkit wants 1..16). predict.afi=true also writes pred_afi (AFI on every scan, predict.afi_cfg).
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.predict import PredictJob, predict_job

if __name__ == "__main__":
    raise SystemExit(run_job(PredictJob, predict_job, __doc__))
