"""Benchmark: prepare on a real nuScenes dataroot with Ray workers: keyframes/s and the memory of each worker.

    PYTHONPATH=. python bench/prepare_bench.py [--scenes 4 --pad 200000 --num-cpus 2]

The dataroot is the vendored real scene-0916 (5 keyframes, 6 cameras; tests/data), copied ``--scenes`` times
under new tokens (same sample files) and with its tables padded by ``--pad`` records of the kinds a full
v1.0-trainval set is made of (non-keyframe sweeps with their ego poses, annotations, instances), so the
tables weigh what real ones do while the keyframes stay real. prepare then runs with Ray tasks (one per
scene). A background thread samples the resident memory (RSS, /proc) of every Ray worker process
(``ray::*``) and of the driver; the report gives each worker's peak RSS over its RSS when idle, i.e. what
holding the work (and, before the planning / reading split, a copy of the tables) costs per worker.
The same script measures any version of the code that has ``PrepareConfig`` / ``run_prepare``: run it with
``PYTHONPATH`` pointing at that checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def ray_workers() -> dict[int, str]:
    """pid -> process title of the Ray worker processes ('ray::...') of THIS process's Ray (its descendants;
    other Ray clusters on the machine are left out)."""
    me, out = os.getpid(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if not cmd.startswith("ray::"):
            continue
        pid, hops = int(d), 0
        while pid > 1 and pid != me and hops < 10:
            pid, hops = _ppid(pid), hops + 1
        if pid == me:
            out[int(d)] = cmd.split()[0]
    return out


class Sampler(threading.Thread):
    """Peak RSS per Ray worker pid and of the driver, sampled every ``period`` s."""

    def __init__(self, period: float = 0.1):
        super().__init__(daemon=True)
        self.period, self.stop, self.peak, self.first, self.driver = period, threading.Event(), {}, {}, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in ray_workers():
                r = rss_mb(pid)
                self.first.setdefault(pid, r)
                self.peak[pid] = max(self.peak.get(pid, 0.0), r)
            self.driver = max(self.driver, rss_mb(os.getpid()))
            time.sleep(self.period)


def _copy_scene(data: dict, k: int) -> None:
    """Append a copy of the scene under new tokens (same files, calibration and poses)."""
    t = lambda tok: f"{tok[:-4]}{k:04d}"  # noqa: E731 - same length, new token
    sc = dict(data["scene"][0], token=t(data["scene"][0]["token"]), name=f"scene-{9000 + k}")
    samples = [s for s in data["sample"] if s["scene_token"] == data["scene"][0]["token"]]
    sc["first_sample_token"], sc["last_sample_token"] = t(sc["first_sample_token"]), t(sc["last_sample_token"])
    data["scene"].append(sc)
    keep = {s["token"] for s in samples}
    data["sample"] += [dict(s, token=t(s["token"]), scene_token=sc["token"], prev=t(s["prev"]) if s["prev"] else "",
                            next=t(s["next"]) if s["next"] else "") for s in samples]
    data["sample_data"] += [dict(d, token=t(d["token"]), sample_token=t(d["sample_token"]), prev="", next="")
                            for d in data["sample_data"] if d["sample_token"] in keep and d["is_key_frame"]]


def _pad(data: dict, n: int) -> None:
    """n filler records per big table (non-keyframe sweeps + their ego poses, annotations, instances)."""
    sd0, pose0 = data["sample_data"][0], data["ego_pose"][0]
    ann0, inst0 = data["sample_annotation"][0], data["instance"][0]
    data["ego_pose"] += [dict(pose0, token=f"pad-pose-{i:08d}") for i in range(n)]
    data["sample_data"] += [dict(sd0, token=f"pad-sd-{i:08d}", ego_pose_token=f"pad-pose-{i:08d}", is_key_frame=False,
                                 filename=f"sweeps/LIDAR_TOP/pad{i}.pcd.bin") for i in range(n)]
    data["instance"] += [dict(inst0, token=f"pad-inst-{i:08d}") for i in range(n)]
    data["sample_annotation"] += [dict(ann0, token=f"pad-ann-{i:08d}", instance_token=f"pad-inst-{i:08d}")
                                  for i in range(n)]


def build_root(dst: Path, scenes: int, pad: int) -> tuple[Path, float]:
    sys.path.append(str(REPO))   # after PYTHONPATH: the measured code comes from there
    from tests.conftest import build_nuscenes_root

    root = build_nuscenes_root(REPO / "tests" / "data" / "nuscenes_scene0916", dst, VERSION)
    tables = root / VERSION
    data = {p.stem: json.loads(p.read_text()) for p in tables.glob("*.json")}
    for k in range(1, scenes):
        _copy_scene(data, k)
    _pad(data, pad)
    size = 0
    for name, rows in data.items():
        (tables / f"{name}.json").write_text(json.dumps(rows))
        size += (tables / f"{name}.json").stat().st_size
    return root, size / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4, help="copies of scene-0916 (= Ray tasks)")
    ap.add_argument("--pad", type=int, default=200_000, help="filler records per big table")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (= concurrent workers)")
    ap.add_argument("--label", default="this checkout", help="name of the code version in the report")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.shard_pass import ExecConfig
    from afov_ray.runtime import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    try:
        root, mb = build_root(tmp / "root", args.scenes, args.pad)
        print(f"dataroot: {args.scenes} scenes x 5 real keyframes, tables {mb:.0f} MB ({args.pad} filler records "
              f"per big table)")
        init_ray(num_cpus=args.num_cpus, include_dashboard=False, object_store_memory=256 * 2**20)
        time.sleep(3.0)
        idle = {pid: rss_mb(pid) for pid in ray_workers()}
        sampler = Sampler()
        sampler.start()
        driver0 = rss_mb(os.getpid())
        t0 = time.perf_counter()
        s = run_prepare(PrepareConfig(dataroot=str(root), version=VERSION, write_splits=False,
                                      exec=ExecConfig(progress=False)), str(tmp / "out"))
        dt = time.perf_counter() - t0
        time.sleep(0.5)
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
        n = s.stats.get("keyframes", 0)
        print(f"[{args.label}] {n} keyframes in {dt:.1f} s = {n / dt:.2f} keyframes/s (exit {s.exit_code}); "
              f"driver RSS {driver0:.0f} -> peak {sampler.driver:.0f} MB")
        grew = sorted(((sampler.peak[p] - idle.get(p, sampler.first[p]), p) for p in sampler.peak), reverse=True)
        used = [(g, p) for g, p in grew if g > 5.0][: max(args.num_cpus, 1)]
        for g, p in used:
            base = idle.get(p, sampler.first[p])
            print(f"  worker pid {p}: RSS {base:.0f} MB idle -> {sampler.peak[p]:.0f} MB peak (+{g:.0f} MB)")
        if used:
            print(f"[{args.label}] mean growth per busy worker: +{sum(g for g, _ in used) / len(used):.0f} MB "
                  f"({len(used)} workers)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
