"""pair job: sweep shards + teacher shards -> pairing shards (pairings, superpoints, pseudo-labels).

Example:
    python jobs/pair.py sweeps=outputs/demo/sweeps teacher_run=outputs/demo/teacher/<run_id> \\
        out=outputs/demo/pairing pair.pairing.rule=zbuffer

pair.pairing.rule: "zbuffer" (default: occlusion test + nearest-image-centre camera) or "official"
(last camera wins, no occlusion test). Prints coverage and agreement with ground truth per class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from afov_ray.cli import init_ray, parse_job_args
from afov_ray.geometry.pair_pass import PairPassConfig, run_pair_pass


@dataclass
class PairJob:
    sweeps: str = field(default="outputs/demo/sweeps", metadata={"help": "sweeps folder URI"})
    teacher_run: str = field(default="", metadata={"help": "teacher run folder URI (<teacher out>/<run_id>)"})
    out: str = field(default="outputs/demo/pairing", metadata={"help": "pairing output folder URI"})
    address: str | None = None
    num_cpus: int | None = None
    pair: PairPassConfig = field(default_factory=PairPassConfig)


def main(argv=None) -> int:
    cfg, _ = parse_job_args(PairJob, __doc__, argv)
    if not cfg.teacher_run:
        raise SystemExit("teacher_run=<teacher output>/<run_id> is required")
    init_ray(cfg.address, cfg.num_cpus)
    summary = run_pair_pass(cfg.sweeps, cfg.teacher_run, cfg.out, cfg.pair)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_class"}, indent=1))
    for name, s in summary.get("per_class", {}).items():
        print(f"  {name:22s} points {s['points']:8d}  coverage {s['coverage']:.3f}  agreement {s['agreement']:.3f}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
