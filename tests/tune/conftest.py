"""Fixtures of the sweep tests: a module-wide local Ray and the tiny generated chain (tiny_chain.py)."""

from __future__ import annotations

import os

import pytest

from afov_ray.runtime import pin_state_api


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per module (2 CPUs, small object store); yields the GCS address for subprocess drivers."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # the dashboard serves the State API, which Train V2's PlacementGroupCleaner needs to free the
    # placement group of a finished trial (afov_ray.tune.sweep._init_ray_with_state_api)
    kwargs = dict(include_dashboard=True, dashboard_host="127.0.0.1", object_store_memory=256 * 2**20)
    pin_state_api(kwargs)   # another Ray on the machine (the cluster tests') must not confuse the State API
    ctx = ray.init(num_cpus=2, **kwargs)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def chain(ray_local, tmp_path_factory):
    from tests.tune.tiny_chain import build_tiny_chain

    return build_tiny_chain(tmp_path_factory.getbasetemp() / "tiny_chain")
