"""AFI and evaluation benchmarks (figures are printed, never asserted).

  PYTHONPATH=. python bench/afi_bench.py --speed [--official-repo PATH] [--repeats 5]
  PYTHONPATH=. python bench/afi_bench.py --quality          # gamma sweep on a synthetic scene
  PYTHONPATH=. python bench/afi_bench.py --eval             # confusion-matrix throughput
With no flag, all three run.

--speed times ``afi_refine`` on the two real scans of tests/data (a nuScenes keyframe, 34,560
points, and SemanticKITTI 000000, 123,389 points; labels as in tests/afi/real_scans.py, 25 %
corrupted) at 1 and at 2 torch threads in the same run, and prints ms per scan and scans/s.
With ``--official-repo PATH`` (a checkout of github.com/sbysbysbys/AFOV), the official AFI
(``afi/afi.py: post_process`` with ``afi/pointwidth_features.py``) runs on the same inputs in the
same process, interleaved with the product, and the bench prints the speed ratio and the fraction
of equal labels. Nothing of the official code is part of this repository: its ``afi`` folder is
put on sys.path at run time, with two stand-in modules written here:

* ``pointnet2_ops.pointnet2_utils.furthest_point_sample``: the CUDA op as a plain CPU loop
  (numpy float32, vectorised over the points per iteration; start at index 0, points with
  |p|^2 <= 1e-3 never picked, the kernel's tie rule), so the official code runs on CPU;
* ``nuscenes_tools`` (imported by ``afi/afi.py`` for an unused text-embedding helper; the real one
  needs detectron2): an empty ``CategoryProcessor``.

To get a checkout from a local mirror: ``git -C MIRROR worktree add /tmp/afov_official HEAD``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from afov_ray.afi import AFIConfig, afi_refine
from afov_ray.eval import ConfusionAccumulator, confusion_matrix, iou_per_class, micro_iou, miou, point_accuracy
from tests.afi.real_scans import afi_config_for, load_nuscenes, load_semantickitti
from tests.afi.scene import flip_labels, lidar_scene

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


# ----------------------------------------------------------------------------- official code
def _fps_cpu_standin(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Stand-in for the pointnet2 CUDA ``furthest_point_sample``: (B, N, 3) float32 -> (B, npoint)
    int32, same semantics (float32 distances, start at 0, |p|^2 <= 1e-3 never picked, among equal
    maxima the smallest (k mod threads, k) wins, threads = 2^floor(log2 N) capped at 512)."""
    B, N, _ = xyz.shape
    out = np.zeros((B, npoint), dtype=np.int32)
    threads = max(min(1 << int(math.log(N) / math.log(2.0)), 512), 1) if N > 0 else 1
    for b in range(B):
        p = xyz[b].detach().cpu().float().numpy()
        x, y, z = (np.ascontiguousarray(p[:, i]) for i in range(3))
        valid = ((x * x + y * y) + z * z).astype(np.float64) > 1e-3
        temp = np.where(valid, np.float32(1e10), np.float32(-1.0)).astype(np.float32)
        d = np.empty(N, np.float32)
        t = np.empty(N, np.float32)
        old = 0
        for j in range(1, npoint):
            np.subtract(x, x[old], out=d)
            np.multiply(d, d, out=d)
            np.subtract(y, y[old], out=t)
            np.multiply(t, t, out=t)
            np.add(d, t, out=d)
            np.subtract(z, z[old], out=t)
            np.multiply(t, t, out=t)
            np.add(d, t, out=d)
            np.minimum(temp, d, out=temp)
            best = temp.max()
            if best < 0:
                old = 0
            else:
                cand = np.flatnonzero(temp == best)
                old = int(cand[np.lexsort((cand, cand % threads))[0]]) if cand.size > 1 else int(cand[0])
            out[b, j] = old
    return torch.from_numpy(out).to(xyz.device)


def load_official(repo: str) -> types.ModuleType:
    """Import the official ``afi/afi.py`` from a checkout, with the stand-ins of the module doc."""
    root = Path(repo).resolve()
    if not (root / "afi" / "afi.py").is_file():
        raise SystemExit(f"--official-repo: {root} has no afi/afi.py (need a checkout of sbysbysbys/AFOV)")
    pkg = types.ModuleType("pointnet2_ops")
    utils = types.ModuleType("pointnet2_ops.pointnet2_utils")
    utils.furthest_point_sample = _fps_cpu_standin
    pkg.pointnet2_utils = utils
    tools = types.ModuleType("nuscenes_tools")
    tools.CategoryProcessor = type("CategoryProcessor", (), {})
    sys.modules.update({"pointnet2_ops": pkg, "pointnet2_ops.pointnet2_utils": utils,
                        "nuscenes_tools": tools})
    sys.path[:0] = [str(root / "afi"), str(root)]
    import afi as official  # the official afi/afi.py

    return official


def official_refine(official: types.ModuleType, xyz: np.ndarray, labels: np.ndarray, nuscenes: bool,
                    num_classes: int) -> np.ndarray:
    """One scan through the official ``post_process`` with its yaml settings."""
    cfg = {"points": 4096, "stages": 4, "dim": num_classes, "k": 20, "de_k": 6, "alpha": 0, "beta2": 20,
           "gamma": 0.995, "delta": 3, "dataset": "nuscenes" if nuscenes else "kitti",
           "del_max_distance": 5}
    net = official.get_point_nn(cfg, "cpu")
    pc = torch.from_numpy(np.asarray(xyz, np.float32))[None]
    seg = torch.from_numpy(np.asarray(labels, np.int64))[None]
    out, _ = official.post_process(net, cfg, pc, seg)
    return out[0].numpy()


# ----------------------------------------------------------------------------- speed
def speed(device: str, repeats: int, official_repo: str | None, official_repeats: int, dtype: str,
          threads: list[int]) -> None:
    scans = [load_nuscenes(DATA), load_semantickitti(DATA)]
    official = load_official(official_repo) if official_repo else None
    from afov_ray.afi import native

    print(f"AFI speed on real scans: product on {device} ({dtype}, kernels: {native.status()}), "
          f"median of {repeats} runs"
          + (f"; official code (CPU, FPS stand-in) from {official_repo}, median of {official_repeats}"
             if official else ""))
    print("ms/scan and scans/s are wall time; cpu ms is the process CPU time per scan (load-independent"
          " at 1 thread); the official runs interleaved with the product, so both see the same load")
    print(f"{'scan':<28} {'points':>7} {'threads':>7} {'ms/scan':>9} {'scans/s':>8} {'cpu ms':>8}"
          + (f" {'official ms':>12} {'ratio':>7} {'equal labels':>13}" if official else ""))
    for scan in scans:
        cfg = afi_config_for(scan, dtype=dtype)
        xyz = torch.from_numpy(scan.xyz).to(device)
        lab = torch.from_numpy(scan.labels).to(device)
        afi_refine(xyz, lab, cfg)                                   # warm-up
        for t in threads:
            torch.set_num_threads(t)
            times, cpu, o_times, o_out = [], [], [], None
            # product and official runs alternate, so both see the same machine load
            for i in range(max(repeats, official_repeats if official is not None else 0)):
                if i < repeats:
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t0, c0 = time.perf_counter(), time.process_time()
                    out, _ = afi_refine(xyz, lab, cfg)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                if official is not None and i < official_repeats:
                    t0 = time.perf_counter()
                    o_out = official_refine(official, scan.xyz, scan.labels, scan.nuscenes, scan.num_classes)
                    o_times.append(time.perf_counter() - t0)
            ms = 1e3 * statistics.median(times)
            line = (f"{scan.name:<28} {len(scan.xyz):>7} {t:>7} {ms:>9.1f} {1e3 / ms:>8.2f}"
                    f" {1e3 * statistics.median(cpu):>8.1f}")
            if official is not None:
                o_ms = 1e3 * statistics.median(o_times)
                agree = float((out.cpu().numpy() == o_out).mean())
                line += f" {o_ms:>12.0f} {o_ms / ms:>6.1f}x {100 * agree:>12.4f}%"
            print(line, flush=True)
    torch.set_num_threads(threads[0])


# ----------------------------------------------------------------------------- quality
def quality(n_azimuth: int, flip: float, gammas: list[float]) -> None:
    xyz, gt = lidar_scene(n_azimuth=n_azimuth, seed=0)
    noisy = flip_labels(gt, flip, seed=1)
    H0 = confusion_matrix(gt, noisy, 17)
    present = sorted(set(gt.tolist()) - {0})

    def miou_gt(H):  # mean IoU over the classes present in the ground truth
        return float(np.mean(iou_per_class(H)[present]))

    print(f"quality: synthetic 32-beam scene, {len(gt)} points, {flip:.0%} labels flipped")
    print(f"{'input':>12}: acc {point_accuracy(H0):.4f}  mIoU(GT classes) {miou_gt(H0):.4f}"
          f"  mIoU16(official) {miou(H0):.4f}  fwIoU {micro_iou(H0):.4f}")
    for g in gammas:
        t = time.perf_counter()
        out, st = afi_refine(torch.from_numpy(xyz), torch.from_numpy(noisy), AFIConfig(gamma=g))
        dt = time.perf_counter() - t
        H = confusion_matrix(gt, out.numpy(), 17)
        acc_c = {c: H[c, c] / max(1, H[c].sum()) for c in present}
        print(f"gamma {g:>6}: acc {point_accuracy(H):.4f}  mIoU(GT classes) {miou_gt(H):.4f}"
              f"  mIoU16(official) {miou(H):.4f}  fwIoU {micro_iou(H):.4f}  changed {st['changed_fraction']:.3f}"
              f"  ({dt:.2f} s)  per-class acc " + " ".join(f"{c}:{acc_c[c]:.2f}" for c in present))


# ----------------------------------------------------------------------------- eval
def eval_speed(device: str, n_points: int, n_scans: int) -> None:
    g = torch.Generator().manual_seed(0)
    gts = [torch.randint(0, 17, (n_points,), generator=g).to(device) for _ in range(n_scans)]
    preds = [torch.randint(0, 17, (n_points,), generator=g).to(device) for _ in range(n_scans)]
    acc = ConfusionAccumulator(17, device=device)
    acc.update(gts[0], preds[0])
    t = time.perf_counter()
    for i, (a, b) in enumerate(zip(gts, preds)):
        acc.update(a, b, scan=str(i))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(f"eval: confusion-matrix accumulation on {device}: {n_scans} scans x {n_points} points in "
          f"{dt:.3f} s -> {n_scans * n_points / dt / 1e6:.1f} M points/s (mIoU {miou(acc.matrix):.4f})")
    a_np, b_np = gts[0].cpu().numpy(), preds[0].cpu().numpy()
    t = time.perf_counter()
    for _ in range(n_scans):
        confusion_matrix(a_np, b_np, 17)
    dt = time.perf_counter() - t
    print(f"eval: numpy inputs: {n_scans * n_points / dt / 1e6:.1f} M points/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="product runs per scan and thread count")
    ap.add_argument("--official-repo", default=None,
                    help="checkout of sbysbysbys/AFOV: also time the official AFI and compare labels")
    ap.add_argument("--official-repeats", type=int, default=1)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to time, e.g. 1,2")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--n-azimuth", type=int, default=1200, help="quality scene: 1200 -> ~30k points")
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--gammas", default="0.9,0.97,0.995,0.999")
    args = ap.parse_args()
    run_all = not (args.quality or args.speed or args.eval)
    if args.speed or run_all:
        speed(args.device, args.repeats, args.official_repo, args.official_repeats, args.dtype,
              [int(x) for x in args.threads.split(",")])
    if args.quality or run_all:
        quality(args.n_azimuth, args.flip, [float(x) for x in args.gammas.split(",")])
    if args.eval or run_all:
        eval_speed(args.device, 34000, 200)


if __name__ == "__main__":
    main()
