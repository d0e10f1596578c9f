"""Camera rendering by ray casting the same scene at the camera timestamp (pinhole, no distortion).

Pixel (row v, column u) looks along K^-1 [u, v, 1]: pixel centres sit at integer coordinates, the
convention of the devkit projection followed by round() (docs/method.md "Projection"). Colour =
class base colour x per-instance tint x Lambert shading (+ lane markings, building windows,
distance haze, sky gradient) + Gaussian noise. ``depth`` is the camera z-depth (inf = sky).
"""

from __future__ import annotations

import numpy as np

from afov_ray.datasets.synth.classes import KIND_COLOUR, KIND_TO_NUSCENES, Kind
from afov_ray.datasets.synth.raycast import Hits, cast
from afov_ray.datasets.synth.scene import Scene

_SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
_TINTS = np.array([(1.0, 1.0, 1.0), (2.6, 0.5, 0.5), (2.2, 2.2, 2.2), (0.45, 0.45, 0.45), (1.4, 1.4, 1.3),
                   (0.5, 1.3, 0.8), (1.8, 1.7, 1.1), (0.8, 0.9, 1.4)], dtype=np.float32)


def tile_order(width: int, height: int, tile: int = 32) -> np.ndarray:
    """Permutation of row-major pixel indices that visits the image tile by tile (tight ray bundles)."""
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    key = (v // tile) * ((width + tile - 1) // tile) + (u // tile)
    return np.argsort(key.ravel(), kind="stable")


def camera_directions(K, width: int, height: int) -> np.ndarray:
    """(H*W, 3) camera-frame directions with z = 1, row-major over pixels."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    return pix @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T


def _colourise(kind, inst, normal, p_local, d_local, depth, rng, noise):
    n = len(kind)
    col = KIND_COLOUR[kind].copy()
    tint = _TINTS[inst % len(_TINTS)]
    things = inst > 0
    col[things] *= tint[things]
    x, y, z = p_local[:, 0], p_local[:, 1], p_local[:, 2]
    with np.errstate(invalid="ignore"):
        road = kind == Kind.ROAD
        dash = (np.abs(np.abs(y) - 3.5) < 0.08) & (np.mod(x, 6.0) < 3.0)
        edge = np.abs(np.abs(y) - 6.85) < 0.08
        centre = np.abs(y) < 0.1
        col[road & (dash | edge)] = (225, 225, 220)
        col[road & centre] = (220, 190, 40)
        bld = kind == Kind.BUILDING
        along = np.where(np.abs(normal[:, 1]) > np.abs(normal[:, 0]), x, y)
        window = bld & (np.mod(z, 3.2) > 1.0) & (np.mod(z, 3.2) < 2.2) & (np.mod(along, 2.8) > 0.8)
        col[window] = (70, 85, 100)
    shade = 0.45 + 0.55 * np.clip(normal @ _SUN, 0.0, 1.0)
    col *= shade[:, None].astype(np.float32)
    sky = ~np.isfinite(depth)
    haze = np.where(sky, 0.0, 1.0 - np.exp(-np.where(sky, 0.0, depth) / 400.0))[:, None]
    col = col * (1 - haze) + np.array([200, 210, 225], np.float32) * haze
    elev = np.clip(d_local[:, 2], 0.0, 1.0)[sky, None]
    col[sky] = np.array([205, 220, 240]) * (1 - elev) + np.array([90, 140, 215]) * elev
    if noise > 0:
        col += rng.normal(0.0, noise, (n, 3)).astype(np.float32)
    return np.clip(np.round(col), 0, 255).astype(np.uint8)


def render_camera(scene: Scene, t: float, cam_to_global, K, width: int, height: int, ego_body: bool = True,
                  rng: np.random.Generator | None = None, noise: float = 4.0, max_range: float = 250.0) -> dict:
    """Renders one camera at time t. Returns dict(rgb uint8 HxWx3, semantic uint8 HxW (nuScenes raw
    lidarseg class, 0 for sky), depth float32 HxW (camera z, inf = sky), instance int32 HxW,
    kind uint8 HxW (classes.Kind))."""
    cam_to_global = np.asarray(cam_to_global, dtype=np.float64)
    dc = camera_directions(K, width, height)
    zfac = 1.0 / np.linalg.norm(dc, axis=1)             # z-depth = distance * zfac
    dg = dc @ cam_to_global[:3, :3].T
    order = tile_order(width, height)
    hits = cast(scene, t, np.broadcast_to(cam_to_global[:3, 3], dg.shape), dg[order], max_range, ego_body=ego_body)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    hits = Hits(hits.dist[inv], hits.kind[inv], hits.inst[inv], hits.normal[inv])
    depth = hits.dist * zfac
    G = scene.global_to_local()
    dl = dg @ G[:3, :3].T
    dl /= np.linalg.norm(dl, axis=1, keepdims=True)
    ol = G[:3, :3] @ cam_to_global[:3, 3] + G[:3, 3]
    p_local = ol + np.where(np.isfinite(hits.dist), hits.dist, 0.0)[:, None] * dl
    rgb = _colourise(hits.kind, hits.inst, hits.normal, p_local, dl, depth,
                     rng if rng is not None else np.random.default_rng(0), noise)
    shape = (height, width)
    return {"rgb": rgb.reshape(height, width, 3), "semantic": KIND_TO_NUSCENES[hits.kind].reshape(shape),
            "depth": depth.astype(np.float32).reshape(shape), "instance": hits.inst.reshape(shape),
            "kind": hits.kind.reshape(shape)}
