"""AFI improves noisy labels on a synthetic LiDAR-like scene (ground, walls, cars; 20 % of the labels
flipped), the toy check of docs/afi.md."""

from __future__ import annotations

import torch

from afov_ray.afi import AFIConfig, afi_refine
from afov_ray.eval import confusion_matrix, miou, point_accuracy
from tests.afi.scene import flip_labels, lidar_scene


def test_afi_improves_accuracy_and_miou_at_gamma_0995():
    xyz, gt = lidar_scene(n_azimuth=360, seed=4)                 # ~8.7k points
    noisy = flip_labels(gt, 0.2, seed=5)
    refined, stats = afi_refine(torch.from_numpy(xyz), torch.from_numpy(noisy), AFIConfig(gamma=0.995))
    H0 = confusion_matrix(gt, noisy, 17)
    H1 = confusion_matrix(gt, refined.numpy(), 17)
    assert stats["ground_status"] == "ok" and stats["n_ground_inliers"] > 100
    assert point_accuracy(H0) < 0.81
    assert point_accuracy(H1) > point_accuracy(H0) + 0.08
    assert miou(H1, empty_union="nan") > miou(H0, empty_union="nan") + 0.05
