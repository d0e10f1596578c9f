"""afi job: prediction shards -> AFI-refined prediction shards (afov-reference.md section 1).

Example:
    python jobs/afi.py pred=outputs/demo/pred out=outputs/demo/pred_afi afi_pass.max_actors=4 \\
        afi_pass.afi.use_assist=true afi_pass.afi.assist_seed=0

The output folder holds the input rows plus ``pred_afi`` and ``afi_changed`` per scan,
``_summary.json`` (per-scan changed fractions, scans/s) and ``_errors.jsonl`` (bad scans, named).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from afov_ray.cli import init_ray, parse_job_args
from afov_ray.eval.afi_pass import AFIPassConfig, run_afi_pass


@dataclass
class AFIJob:
    pred: str = field(default="outputs/demo/pred", metadata={"help": "prediction shards folder URI"})
    out: str = field(default="outputs/demo/pred_afi", metadata={"help": "refined shards folder URI"})
    address: str | None = None
    num_cpus: int | None = None
    afi_pass: AFIPassConfig = field(default_factory=AFIPassConfig)


def main(argv=None) -> int:
    cfg, _ = parse_job_args(AFIJob, __doc__, argv)
    init_ray(cfg.address, cfg.num_cpus)
    s = run_afi_pass(cfg.pred, cfg.out, cfg.afi_pass)
    print(json.dumps({k: v for k, v in s.items() if k not in ("config", "errors", "per_scan")}, indent=1))
    for e in s["errors"]:
        print(f"  ERROR {e['item']}: {e['message']}")
    return 1 if s["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
