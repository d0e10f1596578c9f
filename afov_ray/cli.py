"""Command-line plumbing shared by the jobs: ``--config FILE`` plus dotted ``key=value`` overrides.

Every job is ``python jobs/<name>.py [--config configs/x.yaml] [key.sub=value ...]``; ``--help``
prints the job's description and every config key with its type and default (help texts come
from the ``help`` metadata of dataclass fields where given), ``--print-config`` prints the resolved
config and exits. Jobs start or join Ray through ``init_ray`` (``address`` in the config, else
``RAY_ADDRESS`` as set by ``ray job submit``, else a local Ray).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from typing import Any

from afov_ray.config import load_config, to_dict


def _type_name(tp) -> str:
    s = getattr(tp, "__name__", None) or str(tp)
    return s.replace("typing.", "")


def describe_config(cls, prefix: str = "") -> list[str]:
    """One line per leaf key: ``key (type, default): help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        val = getattr(inst, f.name)
        if dataclasses.is_dataclass(tp):
            lines += describe_config(tp, prefix + f.name + ".")
            continue
        text = f.metadata.get("help", "")
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {val!r}){': ' + text if text else ''}")
    return lines


def parse_job_args(cls, description: str, argv: list[str] | None = None, default_config: str | None = None):
    """Parse ``--config`` / overrides into an instance of ``cls``; returns (cfg, argparse namespace)."""
    epilog = "config keys (override with key=value; nested keys with dots):\n" + "\n".join(describe_config(cls))
    p = argparse.ArgumentParser(description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. loop.num_epochs=2")
    ns = p.parse_args(argv)
    config = ns.config
    if config and config == default_config and not os.path.exists(config):
        # the presets live in the repository's configs/: find them from any working directory
        repo_default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), config)
        if os.path.exists(repo_default):
            config = repo_default
    cfg = load_config(cls, config, ns.overrides)
    if ns.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        raise SystemExit(0)
    return cfg, ns


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any):
    """Join ``address`` (or ``RAY_ADDRESS``, set by ``ray job submit``) or start a local Ray.

    A local Ray starts WITH the dashboard (on 127.0.0.1): Ray Train V2's detached
    ``PlacementGroupCleaner`` asks the State API, which the dashboard serves, whether a finished run's
    controller is gone; without it the cleaner of an earlier fit in the same session can remove the
    placement group of a later fit and kill its workers ("Destroying worker since its placement group
    was removed"), seen when several fits run in one session (demo, quality benchmark, sweeps)."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs.setdefault("include_dashboard", True)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
        ray.init(num_cpus=num_cpus, **kwargs)
    return ray
