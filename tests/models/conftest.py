import pytest
import torch

from afov_ray.errors import EngineNotInstalled
from afov_ray.geometry.voxelize import voxelize
from afov_ray.models.engines import get_engine
from afov_ray.models.synthetic_scan import lidar_like_scan


def require_engine(name):
    try:
        return get_engine(name)
    except EngineNotInstalled as exc:
        pytest.skip(f"engine {name!r} not importable: {exc}")


@pytest.fixture(scope="session")
def small_scan():
    """A few thousand cylindrical voxels of a LiDAR-like scan, 2 scans batched, shuffled order."""
    vs = [voxelize(lidar_like_scan(2500, seed=s)) for s in (11, 12)]
    coords = torch.cat([torch.cat([torch.full((v.coords.shape[0], 1), b, dtype=torch.int32), v.coords], 1)
                        for b, v in enumerate(vs)])
    feats = torch.cat([v.feats for v in vs]) / 255.0
    perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))
    return coords[perm], feats[perm]
