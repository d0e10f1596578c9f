"""Leave no Ray process behind when a driver that started a local Ray is killed.

When the driver process that started a local Ray (``init_ray``) dies without shutting Ray down (SIGKILL, OOM
killer), Ray's GCS and raylet follow it, but its dashboard and runtime-env agents stay alive, holding ports and
memory. ``afov_ray.runtime.init_ray`` therefore starts this watcher for a local Ray: a small separate process
(``python -m afov_ray.reaper <driver pid> <session dir>``) that polls the driver and, once it is gone, ends
every process that still has the session's folder on its command line or open (the agents rename themselves,
e.g. ``ray::DashboardAgent``, but keep their logs under the session folder open). Only that session's processes
are touched; a driver that shuts Ray down normally leaves nothing for the watcher to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def session_pids(session_dir: str, exclude: set[int] | None = None) -> list[int]:
    """Processes whose command line or open files mention ``session_dir`` (Linux /proc)."""
    exclude = exclude or set()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            hit = session_dir in cmd
            if not hit:
                for fd in os.listdir(f"/proc/{d}/fd"):
                    try:
                        if session_dir in os.readlink(f"/proc/{d}/fd/{fd}"):
                            hit = True
                            break
                    except OSError:
                        continue
        except OSError:
            continue
        if hit:
            out.append(int(d))
    return out


def reap(session_dir: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process of the session; returns the pids found."""
    me = {os.getpid()}
    pids = session_pids(session_dir, me)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(session_dir, me):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and session_pids(session_dir, me):
            time.sleep(0.2)
    return pids


def watch(driver_pid: int, session_dir: str, poll_s: float = 1.0) -> None:
    while _alive(driver_pid):
        time.sleep(poll_s)
    time.sleep(2.0)   # let Ray's own fate-sharing finish first
    reap(session_dir)


def start_watcher(session_dir: str) -> subprocess.Popen | None:
    """Start the watcher for this process's local Ray (Linux only; a no-op elsewhere)."""
    if not os.path.isdir("/proc") or not session_dir:
        return None
    return subprocess.Popen([sys.executable, "-m", "afov_ray.reaper", str(os.getpid()), session_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
