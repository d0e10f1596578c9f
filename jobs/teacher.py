r"""teacher job: camera images of the sweep shards -> teacher shards (masks, text ids, fp16 mask features).

Examples (generated data, simulated teacher; real data, MaskCLIP on local CLIP weights):
    python jobs/teacher.py sweeps=outputs/demo/sweeps out=outputs/demo/teacher \
        teacher.dataroot=outputs/demo/nuscenes teacher.sim.confusion_prob=0.2
    python jobs/teacher.py sweeps=s3://bucket/afov/sweeps out=s3://bucket/afov/teacher teacher.teacher=maskclip \
        teacher.dataroot=s3://bucket/nuscenes teacher.maskclip.weights=/models/ViT-L-14-336.pt teacher.exec.use_gpu=true

Writes <out>/<run_id>/{run.json, text_embedding.npy, images/<scene>.parquet, images/_manifest.json}; prints the
run folder to give jobs/pair.py. Scenes already written are skipped; a bad image is skipped and named.
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.teacher import TeacherJob, teacher_job

if __name__ == "__main__":
    raise SystemExit(run_job(TeacherJob, teacher_job, __doc__))
