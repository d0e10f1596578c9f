"""A tiny generated dataset run through the real chain (generate -> prepare -> teacher -> pair), twice
teachered: two simulated teacher runs with different noise give two pairing folders (the sweep's
"teacher" axis). Built once per pytest session (cached under the session's base temp dir) and shared
by tests/tune and tests/jobs. Needs a running Ray (the teacher and pair passes are Ray jobs)."""

from __future__ import annotations

import json
from pathlib import Path

SYNTH = dict(num_scenes=3, keyframes_per_scene=2, num_val_scenes=1, image_width=160, image_height=90,
             num_beams=16, azimuth_steps=360)
# two simulated teachers: a clean one and a noisy one (more confusions, noisier mask features)
TEACHERS = {"sim_clean": dict(confusion_prob=0.05, feature_noise=0.2, boundary_px=1),
            "sim_noisy": dict(confusion_prob=0.4, feature_noise=0.8, boundary_px=3)}


def build_tiny_chain(root: Path) -> dict:
    """Build (or reuse) the chain under ``root``; returns {"root", "split_file", "teachers": {name: {...}}}."""
    done = root / "chain.json"
    if done.exists():
        return json.loads(done.read_text())
    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.shard_pass import ExecConfig
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
    from afov_ray.teachers.simulated import SimTeacherConfig

    root.mkdir(parents=True, exist_ok=True)
    synth = SynthConfig(**SYNTH)
    dataroot = root / "nuscenes"
    generate_nuscenes(dataroot, synth)
    quiet = ExecConfig(progress=False)
    run_prepare(PrepareConfig(dataroot=str(dataroot), version=synth.version, min_1pct_scenes=1,
                              exec=ExecConfig(use_ray=False, progress=False)), str(root))
    split_file = root / "splits.json"
    teachers = {}
    for name, kw in TEACHERS.items():
        tp = run_teacher_pass(str(root / "sweeps"), str(root / "teacher"),
                              TeacherPassConfig(teacher="simulated", dataroot=str(dataroot), version=synth.version,
                                                sim=SimTeacherConfig(name=name, **kw), exec=quiet))
        pairing = root / f"pairing_{name}"
        p = run_pair_pass(str(root / "sweeps"), tp.stats["run_uri"], str(pairing), PairPassConfig(exec=quiet))
        teachers[name] = {"run": tp.stats["run_uri"], "run_id": tp.stats["run_id"], "pairing": str(pairing),
                          "agreement": p.stats["agreement"]}
    out = {"root": str(root), "split_file": str(split_file), "teachers": teachers}
    done.write_text(json.dumps(out, indent=1))
    return out
