"""Command-line plumbing shared by every job: ``--config FILE`` plus dotted ``key=value`` overrides.

Every job is ``python jobs/<name>.py [--config PRESET.yaml] [key.sub=value ...]``:

- ``--help`` prints the job's description and every config key with its type, default and help text;
- ``--print-config`` prints the resolved config as JSON and exits (validation included);
- a bad key or value is ONE line on stderr naming the key (and the closest valid keys), exit code 2;
  a data error names the file / scene / sample, exit code 1; no traceback for either;
- a path that would leave its folder (``UnsafePathError``) or a file-system error (``OSError``: a folder that
  is a file, an unreachable S3 endpoint) is one line too, exit code 1 (``AFOV_LOG_LEVEL=DEBUG`` logs the
  traceback);
- ``run_job`` sets up logging, parses, and runs the job body, which returns the exit code
  (0 done, 1 some items failed or were skipped, 2 bad config, 3 nothing produced).
Presets named by a job's default ``--config`` are found from any working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from afov_ray.config import ConfigError, describe, load_config, to_dict
from afov_ray.errors import AfovError, DataError
from afov_ray.log import get_logger, redact_uri, setup_logging

log = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]


def _fmt_default(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict, bool, type(None))) else repr(v)
    return s if len(s) < 60 else s[:57] + "..."


def describe_config(cls) -> list[str]:
    """One block per leaf key: ``key (type, default): help``."""
    lines = []
    for key, tp, default, text in describe(cls):
        head = f"  {key} ({tp}, default {_fmt_default(default)})"
        lines.append(head)
        if text:
            lines += textwrap.wrap(text, width=100, initial_indent="      ", subsequent_indent="      ")
    return lines


def resolve_preset(path: str | None) -> str | None:
    """A preset path as given, else relative to the repository (``configs/...`` from anywhere)."""
    if not path or os.path.exists(path):
        return path
    alt = REPO_ROOT / path
    return str(alt) if alt.exists() else path


def build_parser(cls, description: str, default_config: str | None = None,
                 from_run: bool = False) -> argparse.ArgumentParser:
    epilog = "config keys (override with key=value; nested keys with dots):\n" + "\n".join(describe_config(cls))
    p = argparse.ArgumentParser(description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"YAML preset (default: {default_config})")
    if from_run:
        p.add_argument("--from-run", metavar="RUN_ID", default=None,
                       help="start from the resolved config stored with this MLflow run (its config.yaml) instead "
                            "of the default preset; --config and key=value still apply on top")
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI holding --from-run (default: $MLFLOW_TRACKING_URI, else "
                            "outputs/mlflow.db)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. loop.num_epochs=2")
    return p


def parse_job_args(cls, description: str, argv: list[str] | None = None, default_config: str | None = None,
                   run_config: Callable[[str, str | None], dict] | None = None):
    """Parse ``--config`` / overrides into an instance of ``cls``; returns (cfg, argparse namespace).

    ``run_config(run_id, tracking_uri)``: where given, the job takes ``--from-run RUN_ID``: the config
    it returns replaces the default preset as the base (an explicit ``--config`` and overrides apply on top).
    Raises ConfigError (one line) on a bad key or value; exits after ``--print-config``."""
    ns = build_parser(cls, description, default_config, from_run=run_config is not None).parse_args(argv)
    base = None
    preset = ns.config
    if getattr(ns, "from_run", None):
        base = run_config(ns.from_run, ns.tracking_uri)
    elif preset is None:
        preset = default_config
    cfg = load_config(cls, resolve_preset(preset), ns.overrides, base=base)
    if ns.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        raise SystemExit(0)
    return cfg, ns


def _is_storage_error(e: BaseException) -> bool:
    """UnsafePathError, EngineNotInstalled (AfovError); file-system errors (OSError, pyarrow's S3 errors);
    boto3's (``botocore`` exceptions: an S3 endpoint that cannot be reached)."""
    return isinstance(e, (AfovError, OSError)) or type(e).__module__.split(".")[0] in ("botocore", "boto3")


def run_job(cls, body: Callable[[Any], int | None], description: str, argv: list[str] | None = None,
            default_config: str | None = None, run_config: Callable[[str, str | None], dict] | None = None) -> int:
    """The whole ``main()`` of a job: logging, parsing, the body, one-line errors, the exit code
    (``run_config``: see ``parse_job_args``)."""
    setup_logging()
    try:
        cfg, _ = parse_job_args(cls, description, argv, default_config, run_config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return int(body(cfg) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - only the storage errors below are one line; the rest re-raise
        if not _is_storage_error(e):
            raise
        log.debug("%s", type(e).__name__, exc_info=True)
        print(f"error: {type(e).__name__}: {redact_uri(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def print_summary(summary) -> None:
    """Print a pass summary's lines (failed items and skipped sub-items named)."""
    for line in summary.lines():
        print(line)
