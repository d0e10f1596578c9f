"""One command-line style for every job, and documentation that cannot drift from the code.

- every config key of every job has a help text, and enum-like keys are checked when parsed;
- a bad key or value is one line on stderr naming the key (and the closest valid keys), exit code 2, no traceback;
- every ``python jobs/<job>.py ...`` command line quoted in README.md, docs/*.md, cluster/ and the jobs' own
  ``--help`` examples parses (``--print-config``) with the keys the job has.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from afov_ray.cli import parse_job_args
from afov_ray.config import ConfigError, describe, load_config
from tests.jobs.job_classes import JOBS

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = {"tmp.py": "configs/nuscenes/tmp.yaml", "distill.py": "configs/nuscenes/distill.yaml",
                  "finetune.py": "configs/nuscenes/finetune.yaml", "sweep.py": "configs/nuscenes/sweep.yaml",
                  "demo.py": "configs/demo.yaml"}
FROM_RUN_JOBS = {"tmp.py", "distill.py", "finetune.py"}   # jobs that take --from-run RUN_ID


def test_every_key_has_help():
    missing = sorted({f"{job}: {key}" for job, cls in JOBS.items() for key, _, _, text in describe(cls)
                      if not text.strip()})
    assert not missing, "config keys without a help text:\n" + "\n".join(missing)


@pytest.mark.parametrize("override,key", [("model.engine=mink", "model.engine"), ("loop.batch_size=0", "loop.batch_size"),
                                          ("ingest.grid=polar", "ingest.grid"), ("ingest.voxel_size=0", "ingest.voxel_size"),
                                          ("loop.num_epochs=-1", "loop.num_epochs"), ("model.name=unet", "model.name")])
def test_bad_values_are_refused_when_parsed(override, key):
    from afov_ray.train.jobs import TrainJob

    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(TrainJob, None, [override])


def test_unknown_key_names_the_closest_keys():
    from afov_ray.train.jobs import TrainJob

    with pytest.raises(ConfigError, match=r"unknown config key 'loop.batchsize'.*loop\.batch_size"):
        load_config(TrainJob, None, ["loop.batchsize=2"])
    with pytest.raises(ConfigError, match=r"run\.storage_path"):   # a right leaf under the wrong section
        load_config(TrainJob, None, ["storage_path=s3://b/x"])


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/distill.py", "loop.batchsize=2"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "loop.batch_size" in proc.stderr


def _commands(text: str) -> list[str]:
    """``python jobs/<x>.py ...`` command lines in a text, with backslash continuations joined."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        for m in re.finditer(r"(?:python3?|\$\(PY\)|\.venv/bin/python) (jobs/\w+\.py)([^`#\n|;&]*)", line):
            cmd = f"{m.group(1)}{m.group(2)}".strip()
            if not cmd.endswith("..."):   # "python jobs/tmp.py ..." is an elision, not a command
                out.append(cmd)
    return out


def _documented_commands() -> list[tuple[str, str]]:
    sources = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "jobs").glob("*.py")),
               *sorted((REPO / "cluster").rglob("*.yaml")), *sorted((REPO / "cluster").rglob("Dockerfile*"))]
    return [(str(p.relative_to(REPO)), c) for p in sources if p.exists() for c in _commands(p.read_text())]


def test_the_docs_quote_job_commands():
    files = {f for f, _ in _documented_commands()}
    assert "README.md" in files and "docs/cluster.md" in files and len(_documented_commands()) >= 15


@pytest.mark.parametrize("where,command", _documented_commands())
def test_documented_command_parses(where, command):
    words = shlex.split(command.replace("<", "_").replace(">", "_"))
    script = Path(words[0]).name
    assert script in JOBS, f"{where}: unknown job {words[0]}"
    args = [w for w in words[1:] if not w.startswith("$")]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            parse_job_args(JOBS[script], "", args + ["--print-config"], default_config=DEFAULT_CONFIG.get(script),
                           run_config=(lambda run_id, uri: {}) if script in FROM_RUN_JOBS else None)
        except ConfigError as e:
            pytest.fail(f"{where}: `{command}` does not parse: {e}")
        except SystemExit as e:
            assert e.code == 0, f"{where}: `{command}` exited {e.code}"


@pytest.mark.parametrize("script", sorted(JOBS))
def test_job_help_runs(script):
    proc = subprocess.run([sys.executable, f"jobs/{script}", "--help"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "config keys" in proc.stdout and "Example" in proc.stdout or "python jobs/" in proc.stdout
