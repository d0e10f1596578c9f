"""AFI and evaluation benchmarks (figures are printed, never asserted).

  PYTHONPATH=. python bench/afi_bench.py --quality          # gamma sweep on a synthetic scene
  PYTHONPATH=. python bench/afi_bench.py --speed [--device cuda] [--batch 4] [--repeats 2]
  PYTHONPATH=. python bench/afi_bench.py --eval             # confusion-matrix throughput
With no flag, all three run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from afov_ray.afi import AFIConfig, afi_refine, afi_refine_batch
from afov_ray.eval import (ConfusionAccumulator, confusion_matrix, iou_per_class, micro_iou, miou,
                           point_accuracy)
from tests.afi.scene import flip_labels, lidar_scene


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


def speed(device: str, batch: int, repeats: int, n_azimuth: int, dtype: str) -> None:
    scans = []
    for i in range(batch):
        xyz, gt = lidar_scene(n_azimuth=n_azimuth, seed=10 + i)
        noisy = flip_labels(gt, 0.2, seed=20 + i)
        scans.append((torch.from_numpy(xyz).float().to(device), torch.from_numpy(noisy).to(device)))
    n_pts = sum(len(s[1]) for s in scans)
    cfg = AFIConfig(dtype=dtype)
    afi_refine(*scans[0], cfg)                     # warm-up
    print(f"speed: device {device}, torch threads {torch.get_num_threads()}, {batch} scans, "
          f"{n_pts / batch:.0f} points/scan, dtype {dtype}")
    for mode in ("batched", "sequential"):
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            if mode == "batched":
                afi_refine_batch(scans, cfg)
            else:
                for s in scans:
                    afi_refine(*s, cfg)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        print(f"  AFI {mode:>10}: {best:.2f} s for {batch} scans -> {batch / best:.2f} scans/s, "
              f"{n_pts / best / 1e3:.0f} k points/s")


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
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-azimuth", type=int, default=1200, help="1200 -> ~30k points per scan")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch default); on an oversubscribed machine 1 is "
                         "much faster than the default")
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--gammas", default="0.9,0.97,0.995,0.999")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run_all = not (args.quality or args.speed or args.eval)
    if args.quality or run_all:
        quality(args.n_azimuth, args.flip, [float(x) for x in args.gammas.split(",")])
    if args.speed or run_all:
        speed(args.device, args.batch, args.repeats, args.n_azimuth, args.dtype)
    if args.eval or run_all:
        eval_speed(args.device, 34000, 200)


if __name__ == "__main__":
    main()
