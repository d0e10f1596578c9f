"""A driver killed with SIGKILL after starting a local Ray leaves no Ray process behind (afov_ray.reaper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from afov_ray.reaper import session_pids

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]   # incl. module fixtures
REPO = Path(__file__).resolve().parents[2]


def test_killed_driver_leaves_no_ray_process():
    temp = tempfile.mkdtemp(prefix="afovkd", dir="/tmp")   # short: Ray's socket paths must stay < 108 chars
    ready = Path(temp) / "ready"
    script = textwrap.dedent(f"""
        import time, ray
        from afov_ray.runtime import init_ray
        init_ray(num_cpus=1, _temp_dir={temp!r}, object_store_memory=128 * 2**20)
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        open({str(ready)!r}, "w").close()
        time.sleep(3600)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert p.poll() is None, p.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the driver did not start Ray in time"
            time.sleep(1)
        assert len(session_pids(temp)) >= 3        # gcs, raylet, agents, workers, the watcher
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 120
    while session_pids(temp) and time.monotonic() < deadline:
        time.sleep(1)
    left = session_pids(temp)
    names = [Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in left if Path(f"/proc/{pid}").exists()]
    assert not left, f"Ray processes left behind: {names}"
