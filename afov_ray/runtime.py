"""Ray start-up, in one place for every job, pass and benchmark.

``init_ray(address)`` joins ``address`` (or ``$RAY_ADDRESS``, which ``ray job submit`` sets) or starts a
local Ray on this machine. A local Ray starts WITH the dashboard on 127.0.0.1: Ray Train V2's detached
``PlacementGroupCleaner`` asks the State API (served by the dashboard) whether a finished run's controller
is gone; without it, the cleaner of an earlier fit in the same session can remove the placement group
of a later fit and kill its workers (seen when several fits run in one process: demo, quality benchmark,
sweeps).

A local Ray also gets a watcher process (``afov_ray.reaper``): if this driver is killed, the Ray processes it
started (Ray's agents survive a killed driver) are ended too.

``require_resources`` checks a request (e.g. 4 Train workers x 1 CPU) against what the cluster has, so
an infeasible request is a one-line ``ConfigError`` naming the keys instead of a job that waits forever.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from afov_ray.config import ConfigError, option
from afov_ray.log import get_logger, redact_uri
from afov_ray.reaper import start_watcher

log = get_logger(__name__)
_pinned: str | None = None   # the RAY_API_SERVER_ADDRESS that pin_state_api set, if any


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any):
    """Join ``address`` / ``$RAY_ADDRESS`` or start a local Ray; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs.setdefault("log_to_driver", True)
    if address:
        log.info("joining Ray cluster at %s", redact_uri(address))
        ray.init(address=address, **kwargs)
    else:
        kwargs.setdefault("include_dashboard", True)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
        pin_state_api(kwargs)
        ray.init(num_cpus=num_cpus, **kwargs)
        log.info("started a local Ray (%s CPUs)", int(ray.cluster_resources().get("CPU", 0)))
        start_watcher(_session_dir())   # a killed driver leaves no Ray process behind (afov_ray.reaper)
    return ray


def pin_state_api(kwargs: dict[str, Any]) -> None:
    """Give a local Ray's dashboard a known port and name it in ``RAY_API_SERVER_ADDRESS`` before Ray starts.

    Ray's State API client (Ray Train's PlacementGroupCleaner uses it to free a finished run's placement group)
    finds "its" cluster by looking for running GCS processes; with another Ray on the machine it finds two and
    fails, the placement group stays reserved and the next run waits forever for its CPUs. Ray's processes
    inherit the variable from the driver, so they all reach the right dashboard. A variable the user set is kept;
    one this process set for an earlier local Ray (now shut down) is replaced, or the new Ray's cleaner would ask
    a dead dashboard and leak the placement group of every finished fit."""
    global _pinned
    current = os.environ.get("RAY_API_SERVER_ADDRESS")
    if (current and current != _pinned) or not kwargs.get("include_dashboard", True):
        return
    if not kwargs.get("dashboard_port"):
        with socket.socket() as s:
            s.bind((kwargs.get("dashboard_host", "127.0.0.1"), 0))
            kwargs["dashboard_port"] = s.getsockname()[1]
    host = kwargs.get("dashboard_host", "127.0.0.1")
    _pinned = f"http://{host}:{kwargs['dashboard_port']}"
    os.environ["RAY_API_SERVER_ADDRESS"] = _pinned


def _session_dir() -> str:
    try:
        import ray._private.worker as w

        return str(w._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - private API moved: no watcher
        return ""


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def require_resources(per_unit: dict[str, float], units: int, what: str, wait: bool = False) -> None:
    """Raise ConfigError if ``units`` x ``per_unit`` exceeds the cluster's total resources.

    ``what`` names the config keys in the message (e.g. ``"scale.num_workers=4 x scale.cpus_per_worker=1"``).
    ``wait=True`` (a cluster that autoscales) skips the check."""
    if wait:
        return
    have = cluster_resources()
    for res, amount in per_unit.items():
        need = amount * units
        if need > 0 and have.get(res, 0.0) + 1e-9 < need:
            raise ConfigError(f"{what} needs {need:g} {res} but the Ray cluster has {have.get(res, 0.0):g}; "
                              f"lower the request (or set scale.wait_for_resources=true on an autoscaling cluster)")


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@dataclass
class RayKeys:
    """The Ray keys every job has (a base class of the job configs)."""

    address: str | None = option(None, "Ray cluster to join (e.g. auto, or ray://head:10001); None: "
                                       "$RAY_ADDRESS as `ray job submit` sets it, else a local Ray")
    num_cpus: int | None = option(None, "CPUs of a local Ray started by this job (None: all)", min=1)

    def start_ray(self):
        return init_ray(self.address, self.num_cpus)
