"""evaluate job: prediction shards -> mIoU per source (raw / AFI / pseudo) on all, camera-visible and
unseen points, as JSON + markdown + plots, logged to MLflow (afov-reference.md 6.4).

Example:
    python jobs/evaluate.py pred=outputs/demo/pred_afi out=outputs/demo/eval \\
        eval.sweeps=outputs/demo/sweeps eval.dataroot=data/nuscenes \\
        eval.tracking.enabled=true eval.tracking.experiment=afov_eval

Rules: GT-0 row ignored, prediction-0 column kept, empty union -> IoU 1.0 (eval.empty_union=nan for
the devkit convention), mIoU over classes 1..16. The camera-visible mask is the shards' ``visible``
column (pairing superpoint >= 0) when present, else pseudo > 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afov_ray.cli import init_ray, parse_job_args
from afov_ray.eval.evaluate import EvaluateConfig, run_evaluate, summary_line


@dataclass
class EvaluateJob:
    pred: str = field(default="outputs/demo/pred", metadata={"help": "prediction shards folder URI"})
    out: str = field(default="outputs/demo/eval", metadata={"help": "local folder for metrics.json / .md / plots"})
    address: str | None = None
    num_cpus: int | None = None
    eval: EvaluateConfig = field(default_factory=EvaluateConfig)


def main(argv=None) -> int:
    cfg, _ = parse_job_args(EvaluateJob, __doc__, argv)
    init_ray(cfg.address, cfg.num_cpus)
    doc = run_evaluate(cfg.pred, cfg.out, cfg.eval)
    print(open(f"{cfg.out}/metrics.md").read())
    print(summary_line(doc))
    for e in doc["errors"]:
        print(f"  ERROR {e['item']}: {e['message']}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
