"""Fixtures of the sweep tests: a module-wide local Ray and the tiny generated chain (tiny_chain.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per module (2 CPUs, small object store); yields the GCS address for subprocess drivers."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def chain(ray_local, tmp_path_factory):
    from tests.tune.tiny_chain import build_tiny_chain

    return build_tiny_chain(tmp_path_factory.getbasetemp() / "tiny_chain")
