"""Fixtures of the multi-node tests (``tests/cluster/test_user_path.py``, ``test_failures.py``).

- ``local_cluster`` (session): ``cluster/local/up.sh`` in a fresh short folder under /tmp (a Ray head, worker
  nodes a and b, moto S3, an MLflow server; all on 127.0.0.1), with a fresh empty HOME for every cluster
  process; ``cluster/local/down.sh`` at the end (the logs stay in ``<folder>/logs``, printed on failure).
- ``cluster_data`` (session): the data part of the documented user path (docs/cluster.md, the block the user
  path test runs): the generated raw dataset, then prepare, the simulated teacher and pairing as submitted jobs
  writing to ``s3://``. Returns the variables the later commands use and the job runs.

Both are shared by the two test modules; each module checks at its end that nothing appeared on local disks.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster.harness import REPO, ClusterData, LocalCluster, build_data, git_status, tree

_running: list = []   # the session's cluster while it is up


def pytest_runtest_teardown(item, nextitem):
    """Stop the cluster after the last test of this folder, not at the end of the session: its dozen processes
    (three raylets, dashboards, S3, MLflow) would slow down every later test."""
    if _running and (nextitem is None or Path(nextitem.path).parent != Path(__file__).parent):
        print(_running.pop().down())


@pytest.fixture(scope="session")
def local_cluster():
    root = Path(tempfile.mkdtemp(prefix="afovc", dir="/tmp"))   # short: Ray's socket paths must stay < 108 chars
    home = root / "home"
    home.mkdir()
    cluster = None
    try:
        status = git_status()
        cluster = LocalCluster.up(root, home=home)
        cluster.home_before, cluster.status_before = tree(home), status
        _running.append(cluster)
        yield cluster
    finally:
        if cluster is not None and cluster in _running:
            _running.remove(cluster)
            print(cluster.down())
        else:
            subprocess.run([str(REPO / "cluster" / "local" / "down.sh")], env={"AFOV_CLUSTER_DIR": str(root),
                           "PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent)}, timeout=300)
        print(f"local cluster logs: {root / 'logs'}")


@pytest.fixture(scope="session")
def cluster_data(local_cluster, tmp_path_factory) -> ClusterData:
    """The documented commands up to the pairing job (raw data in a fresh folder: a shared mount on a cluster)."""
    return build_data(local_cluster, tmp_path_factory.mktemp("raw"))
