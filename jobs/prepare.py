r"""prepare job: raw nuScenes / SemanticKITTI dataroot -> sweep shards (one Parquet file per scene) + splits.json.

Examples:
    python jobs/prepare.py prepare.dataroot=/data/nuscenes prepare.version=v1.0-trainval out=s3://bucket/afov
    python jobs/prepare.py --config configs/semantickitti/prepare.yaml prepare.dataroot=/data/semantickitti \
        prepare.split=val out=outputs/kitti

Writes <out>/sweeps/<scene>.parquet, _errors.jsonl, _summary.json and, last, _manifest.json, and <out>/splits.json.
Re-running resumes: finished scenes are skipped. Exit status 0: all done; 1: some scene failed or keyframes
were skipped (named in the summary); 2: bad config; 3: nothing written. S3 endpoint / credentials come from the
environment (AFOV_S3_ENDPOINT or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
"""

from afov_ray.cli import run_job
from afov_ray.pipeline.prepare import PrepareJob, prepare_job

if __name__ == "__main__":
    raise SystemExit(run_job(PrepareJob, prepare_job, __doc__))
