"""predict job: a trained segmentation model over pairing or sweep shards -> prediction shards
(+ optional AFI, + optional nuScenes lidarseg submission files).

Example:
    python jobs/predict.py input=outputs/demo/pairing out=outputs/demo/pred \\
        predict.model=models:/afov-distill@latest predict.tracking_uri=sqlite:///outputs/mlflow.db \\
        predict.sweeps=outputs/demo/sweeps predict.split_file=outputs/demo/splits.json predict.split=val \\
        submission=outputs/demo/submission

predict.suppress_class0 (default true) never predicts class 0; set false to reproduce the official
final evaluation (afov-reference.md 6.4). A submission needs it true (the devkit wants 1..16).
predict.afi=true also writes pred_afi (AFI on every scan, config under predict.afi_cfg).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from afov_ray.cli import init_ray, parse_job_args
from afov_ray.eval.predict import PredictConfig, run_predict
from afov_ray.eval.submission import SubmissionConfig, write_submission


@dataclass
class PredictJob:
    input: str = field(default="outputs/demo/pairing", metadata={"help": "pairing or sweeps shards folder URI"})
    out: str = field(default="outputs/demo/pred", metadata={"help": "prediction shards folder URI"})
    submission: str = field(default="", metadata={"help": "if set: write lidarseg submission files here"})
    address: str | None = None
    num_cpus: int | None = None
    predict: PredictConfig = field(default_factory=PredictConfig)
    sub: SubmissionConfig = field(default_factory=SubmissionConfig)
    sub_version: str = field(default="v1.0-trainval", metadata={"help": "nuScenes version (split names)"})


def submission_scenes(cfg: PredictJob) -> list[str] | None:
    """The scenes of the submission split: the official nuScenes split of that name (mini_* for a
    *-mini version), else every predicted scene."""
    from nuscenes.utils.splits import create_splits_scenes

    from afov_ray.datasets.splits import resolve_nuscenes_split

    table = create_splits_scenes(verbose=False)
    name = resolve_nuscenes_split(cfg.sub.split, cfg.sub_version)
    return list(table[name]) if name in table else None


def main(argv=None) -> int:
    cfg, _ = parse_job_args(PredictJob, __doc__, argv)
    if not cfg.predict.model:
        raise SystemExit("predict.model=<path | s3:// | models:/name@alias | runs:/...> is required")
    init_ray(cfg.address, cfg.num_cpus)
    summary = run_predict(cfg.input, cfg.out, cfg.predict)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "errors")}, indent=1))
    for e in summary["errors"]:
        print(f"  ERROR {e['item']}: {e['message']}")
    if cfg.submission:
        if not cfg.predict.suppress_class0 and cfg.sub.column == "pred":
            raise SystemExit("a lidarseg submission needs predict.suppress_class0=true (predictions in 1..16)")
        info = write_submission(cfg.out, cfg.submission, cfg.sub, scenes=submission_scenes(cfg))
        print(f"submission: {info['files']} files, {info['points']} points -> {cfg.submission}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
