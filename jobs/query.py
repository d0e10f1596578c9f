r"""query job: text prompts against a TMP model's point features -> per-point scores and masks (Parquet), BEV and
camera pictures with a colour scale, and 3D viewer pages + .ply files.

Examples:
    python jobs/query.py input=outputs/demo/pairing out=outputs/demo/query \
        query.model=models:/afov-tmp@current query.tracking_uri=sqlite:///outputs/demo/mlflow.db \
        query.teacher_run=outputs/demo/teacher/simulated-e0d9b16a02a8 query.prompts=[car,road,tree] \
        query.sweeps=outputs/demo/sweeps query.dataroot=outputs/demo/nuscenes query.split_file=outputs/demo/splits.json
    python jobs/query.py input=outputs/real/pairing out=outputs/real/query_stroller query.teacher_run=outputs/real/teacher/maskclip-0123456789ab \
        query.clip_weights=/models/ViT-L-14-336.pt query.prompts=[stroller,"a parked bicycle"] query.threshold=0.2 \
        query.scenes=[scene-0916] query.samples=[ca9a282c9e77460f8360f564131a8af5]

A prompt is encoded with the teacher's own CLIP text tower when query.clip_weights is given (MaskCLIP teacher runs;
the weights must reproduce the run's stored text embeddings); otherwise only the class dictionary's texts can be
queried (their embeddings are in the teacher run's text_embedding.npy), and another prompt is an error naming the
closest texts. The mask is score >= query.threshold, or (no threshold) "the prompt beats every dictionary text of
another category". With ground truth, the summary gives per prompt the mean score of its class's points vs the
other points and the AUC. Pictures and viewer pages go to view= (default <out>/view; open view/viewer/index.html).
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.query import QueryJob, query_job

if __name__ == "__main__":
    raise SystemExit(run_job(QueryJob, query_job, __doc__))
