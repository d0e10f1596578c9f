"""teacher job: camera images of the sweep shards -> teacher shards (masks, text ids, fp16 features).

Example (generated data, simulated teacher):
    python jobs/teacher.py sweeps=outputs/demo/sweeps out=outputs/demo/teacher \\
        teacher.dataroot=outputs/demo/nuscenes teacher.sim.confusion_prob=0.2

Runs a Ray Data actor pool over the images; writes <out>/<run_id>/{run.json,text_embedding.npy,
images/<scene>.parquet}. Scenes already written are skipped. Official SAN / CAT-Seg / FC-CLIP outputs
are imported with afov_ray.teachers.official instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from afov_ray.cli import init_ray, parse_job_args
from afov_ray.teachers.teacher_pass import TeacherPassConfig, run_teacher_pass


@dataclass
class TeacherJob:
    sweeps: str = field(default="outputs/demo/sweeps", metadata={"help": "sweeps folder URI (prepare output)"})
    out: str = field(default="outputs/demo/teacher", metadata={"help": "teacher output root URI"})
    address: str | None = field(default=None, metadata={"help": "Ray address; default local Ray"})
    num_cpus: int | None = None
    teacher: TeacherPassConfig = field(default_factory=TeacherPassConfig)


def main(argv=None) -> int:
    cfg, _ = parse_job_args(TeacherJob, __doc__, argv)
    init_ray(cfg.address, cfg.num_cpus)
    summary = run_teacher_pass(cfg.sweeps, cfg.out, cfg.teacher)
    print(json.dumps(summary, indent=1))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
