"""Writes a synthetic nuScenes dataroot that the unmodified nuscenes-devkit 1.2.0 loads, with lidarseg.

Layout (the tables and files nuscenes-devkit 1.2 needs to load a dataset):
  <dataroot>/<version>/{category,attribute,visibility,instance,sensor,calibrated_sensor,ego_pose,log,
                        scene,sample,sample_data,sample_annotation,map,lidarseg}.json
  <dataroot>/samples/LIDAR_TOP/<log>__LIDAR_TOP__<ts>.pcd.bin   float32 x5 (x, y, z, intensity, ring)
  <dataroot>/samples/CAM_*/<log>__CAM_*__<ts>.jpg               6 cameras per keyframe
  <dataroot>/lidarseg/<version>/<lidar_sd_token>_lidarseg.bin   uint8 per point (32 raw classes)
  <dataroot>/maps/<map_token>.png                               tiny valid PNG
  <dataroot>/synth/<scene_name>.json                            the scene description (load_scene)

Keyframes only; every sample_data has its own ego_pose at its own timestamp (cameras fire tens of ms
off the LiDAR, offsets from the real rig), so the full chain lidar -> ego(t_lidar) -> global ->
ego(t_cam) -> cam matters (docs/method.md "Projection"). Returns on the ego body are kept and
labelled 31 vehicle.ego (``SynthConfig.ego_hits = "label"``) or dropped ("drop"); misses are dropped.
sample_annotation / instance / attribute are empty tables. Tokens are uuid5 of (seed, table, keys),
timestamps start at ``SynthConfig.base_timestamp_us``: same config -> byte-identical files.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from afov_ray.datasets.synth.classes import KIND_TO_NUSCENES, NUSCENES_LIDARSEG_NAMES
from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.lidar import simulate_sweep
from afov_ray.datasets.synth.render import render_camera
from afov_ray.datasets.synth.rig import (
    HDL32E_ELEVATIONS_DEG,
    NUSCENES_CAMERAS_RIG,
    NUSCENES_LIDAR,
    make_transform,
    nuscenes_camera_rig,
    rot_to_quat,
)
from afov_ray.datasets.synth.scene import Scene, build_scene
from afov_ray.errors import DataError

_NS = uuid.UUID("6f1c1c9e-3a53-4c39-9a77-5f0c2b1e8d10")
SCENE_GAP_US = 1_000_000_000           # scenes start 1000 s apart
LEAD_US = 100_000                      # first LiDAR keyframe 0.1 s after the scene start


def token(seed: int, *parts) -> str:
    """Deterministic 32-hex token of (seed, parts)."""
    return uuid.uuid5(_NS, "|".join(str(p) for p in (seed, *parts))).hex


def scene_names(cfg: SynthConfig) -> list[str]:
    """Real scene names so that the official split puts them in train / val (or mini_train / mini_val)."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if cfg.version == "v1.0-mini":
        tr, va = "mini_train", "mini_val"
    elif cfg.version in ("v1.0-trainval", "v1.0-test"):
        tr, va = ("train", "val") if cfg.version == "v1.0-trainval" else ("test", "test")
    else:
        raise DataError("SynthConfig.version", f"unsupported version {cfg.version!r}")
    n_tr = cfg.num_scenes - cfg.num_val_scenes
    if tr == va:
        names = splits[tr][:cfg.num_scenes]
    else:
        names = splits[tr][:n_tr] + splits[va][:cfg.num_val_scenes]
    if len(names) != cfg.num_scenes:
        raise DataError("SynthConfig.num_scenes", f"split {tr}/{va} has too few scenes for {cfg.num_scenes}")
    return list(names)


def lidar_to_ego() -> np.ndarray:
    return make_transform(NUSCENES_LIDAR["rotation"], NUSCENES_LIDAR["translation"])


def keyframe_timestamps(scene: Scene, k: int, cfg: SynthConfig) -> dict[str, int]:
    """channel -> timestamp (us) of keyframe k: LIDAR_TOP and the 6 cameras with the rig's offsets."""
    ts = scene.start_us + LEAD_US + k * cfg.keyframe_interval_us
    out = {"LIDAR_TOP": ts}
    for ch, (_, _, _, off) in NUSCENES_CAMERAS_RIG.items():
        out[ch] = ts + off
    return out


def make_scene(cfg: SynthConfig, index: int, name: str) -> Scene:
    rng = np.random.default_rng([cfg.seed, index, 7919])
    duration = (LEAD_US + (cfg.keyframes_per_scene - 1) * cfg.keyframe_interval_us) / 1e6 + 0.2
    return build_scene(rng, name=name, duration_s=duration, ego_speed=cfg.ego_speed_mps, seed=cfg.seed,
                       start_us=cfg.base_timestamp_us + index * SCENE_GAP_US,
                       cover_all_classes=cfg.cover_all_classes)


def load_scene(dataroot: str | Path, scene_name: str) -> Scene:
    """The scene description written next to the tables (enough to re-render any camera at any time)."""
    return Scene.load(Path(dataroot) / "synth" / f"{scene_name}.json")


def has_scene_record(dataroot: str | Path) -> bool:
    """True when ``dataroot`` was made by the generator (it holds the scene descriptions)."""
    d = Path(str(dataroot)) / "synth"
    return d.is_dir() and any(d.glob("*.json"))


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


def _tiny_png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(path, format="PNG")


def generate_nuscenes(dataroot: str | Path, cfg: SynthConfig | None = None) -> Path:
    """Generates the whole dataroot; returns its path."""
    from PIL import Image

    cfg = cfg or SynthConfig()
    cfg.validate()
    root = Path(dataroot)
    ver = cfg.version
    (root / ver).mkdir(parents=True, exist_ok=True)
    (root / "lidarseg" / ver).mkdir(parents=True, exist_ok=True)
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True, exist_ok=True)
    for ch in NUSCENES_CAMERAS_RIG:
        (root / "samples" / ch).mkdir(parents=True, exist_ok=True)
    s = cfg.seed
    W, H = cfg.image_width, cfg.image_height
    cam_rig = nuscenes_camera_rig(W, H)
    channels = ["LIDAR_TOP", *NUSCENES_CAMERAS_RIG]
    T_l2e = lidar_to_ego()

    sensors = [{"token": token(s, "sensor", ch), "channel": ch,
                "modality": "lidar" if ch == "LIDAR_TOP" else "camera"} for ch in channels]
    category = [{"token": token(s, "category", n), "name": n, "description": n, "index": i}
                for i, n in enumerate(NUSCENES_LIDARSEG_NAMES)]
    visibility = [{"token": str(i + 1), "level": lvl, "description": f"visibility of whole object is {lvl}"}
                  for i, lvl in enumerate(["v0-40", "v40-60", "v60-80", "v80-100"])]
    logs, scenes, samples, sample_data, ego_poses, calib, lidarseg = [], [], [], [], [], [], []

    for si, name in enumerate(scene_names(cfg)):
        scene = make_scene(cfg, si, name)
        scene.save(root / "synth" / f"{name}.json")
        log_tok = token(s, "log", name)
        logfile = f"n015-2018-08-{1 + si % 28:02d}-12-00-00+0800"
        logs.append({"token": log_tok, "logfile": logfile, "vehicle": "n015", "date_captured": logfile[5:15],
                     "location": "singapore-onenorth"})
        cs_tok = {ch: token(s, "calibrated_sensor", name, ch) for ch in channels}
        calib.append({"token": cs_tok["LIDAR_TOP"], "sensor_token": token(s, "sensor", "LIDAR_TOP"),
                      "translation": list(NUSCENES_LIDAR["translation"]),
                      "rotation": list(NUSCENES_LIDAR["rotation"]), "camera_intrinsic": []})
        for ch, c in cam_rig.items():
            calib.append({"token": cs_tok[ch], "sensor_token": token(s, "sensor", ch),
                          "translation": c["translation"], "rotation": c["rotation"],
                          "camera_intrinsic": c["K"].tolist()})
        K_ = cfg.keyframes_per_scene
        sample_toks = [token(s, "sample", name, k) for k in range(K_)]
        sd_toks = {ch: [token(s, "sample_data", name, ch, k) for k in range(K_)] for ch in channels}
        scenes.append({"token": token(s, "scene", name), "log_token": log_tok, "nbr_samples": K_,
                       "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1],
                       "name": name, "description": "synthetic street scene, moving cars, pedestrians"})
        for k in range(K_):
            stamps = keyframe_timestamps(scene, k, cfg)
            samples.append({"token": sample_toks[k], "timestamp": stamps["LIDAR_TOP"],
                            "prev": sample_toks[k - 1] if k > 0 else "",
                            "next": sample_toks[k + 1] if k + 1 < K_ else "", "scene_token": scenes[-1]["token"]})
            for ci, ch in enumerate(channels):
                ts = stamps[ch]
                t = scene.time_s(ts)
                E = scene.ego_pose(t)
                sd_tok = sd_toks[ch][k]
                ego_poses.append({"token": sd_tok, "timestamp": ts, "rotation": rot_to_quat(E[:3, :3]),
                                  "translation": E[:3, 3].tolist()})
                rng = np.random.default_rng([s, si, k, ci])
                if ch == "LIDAR_TOP":
                    fname = f"samples/LIDAR_TOP/{logfile}__LIDAR_TOP__{ts}.pcd.bin"
                    sw = simulate_sweep(scene, t, E @ T_l2e, HDL32E_ELEVATIONS_DEG
                                        if cfg.num_beams == 32 else np.linspace(-30.67, 10.67, cfg.num_beams),
                                        cfg.azimuth_steps, rng, cfg.lidar_max_range, cfg.lidar_range_noise,
                                        cfg.lidar_dropout, ego_body=True, drop_ego=cfg.ego_hits == "drop")
                    pts = np.concatenate([sw["points"], sw["intensity"][:, None],
                                          sw["ring"][:, None].astype(np.float32)], axis=1).astype(np.float32)
                    pts.tofile(root / fname)
                    seg = f"lidarseg/{ver}/{sd_tok}_lidarseg.bin"
                    KIND_TO_NUSCENES[sw["kind"]].astype(np.uint8).tofile(root / seg)
                    lidarseg.append({"token": sd_tok, "sample_data_token": sd_tok, "filename": seg})
                    fmt, w, h = "pcd", 0, 0
                else:
                    fname = f"samples/{ch}/{logfile}__{ch}__{ts}.jpg"
                    if cfg.write_images:
                        c = cam_rig[ch]
                        cam2g = E @ make_transform(c["rotation"], c["translation"])
                        out = render_camera(scene, t, cam2g, c["K"], W, H, rng=rng, noise=cfg.image_noise)
                        Image.fromarray(out["rgb"]).save(root / fname, format="JPEG", quality=cfg.jpeg_quality)
                    fmt, w, h = "jpg", W, H
                sample_data.append({
                    "token": sd_tok, "sample_token": sample_toks[k], "ego_pose_token": sd_tok,
                    "calibrated_sensor_token": cs_tok[ch], "timestamp": ts, "fileformat": fmt,
                    "is_key_frame": True, "height": h, "width": w, "filename": fname,
                    "prev": sd_toks[ch][k - 1] if k > 0 else "",
                    "next": sd_toks[ch][k + 1] if k + 1 < K_ else ""})

    map_tok = token(s, "map", "semantic_prior")
    _tiny_png(root / "maps" / f"{map_tok}.png")
    tables = {
        "category": category, "attribute": [], "visibility": visibility, "instance": [], "sensor": sensors,
        "calibrated_sensor": calib, "ego_pose": ego_poses, "log": logs, "scene": scenes, "sample": samples,
        "sample_data": sample_data, "sample_annotation": [], "lidarseg": lidarseg,
        "map": [{"token": map_tok, "log_tokens": [lg["token"] for lg in logs], "category": "semantic_prior",
                 "filename": f"maps/{map_tok}.png"}],
    }
    for tname, rows in tables.items():
        _write_json(root / ver / f"{tname}.json", rows)
    return root


def camera_pose(scene: Scene, channel: str, timestamp_us: int) -> np.ndarray:
    """4x4 camera -> global of a rig camera at a timestamp, from the generator (not from the tables)."""
    c = NUSCENES_CAMERAS_RIG[channel]
    return scene.ego_pose(scene.time_s(timestamp_us)) @ make_transform(c[1], c[0])


def render_sample_data(dataroot: str | Path, sd_token: str, version: str = "v1.0-trainval",
                       noise: float = 0.0) -> dict:
    """Re-renders a camera sample_data (no JPEG) from the saved scene at its timestamp: dict of
    render_camera outputs (semantic = nuScenes raw class), plus ``K`` and ``cam_to_global``.
    Only channel, timestamp and size are read from the tables; the pose comes from the generator."""

    root = Path(dataroot)
    tab = {n: json.loads((root / version / f"{n}.json").read_text())
           for n in ("sample_data", "sample", "scene", "calibrated_sensor", "sensor")}
    sd = next((r for r in tab["sample_data"] if r["token"] == sd_token), None)
    if sd is None:
        raise DataError(sd_token, "no such sample_data token")
    cs = next(r for r in tab["calibrated_sensor"] if r["token"] == sd["calibrated_sensor_token"])
    ch = next(r for r in tab["sensor"] if r["token"] == cs["sensor_token"])["channel"]
    if ch not in NUSCENES_CAMERAS_RIG:
        raise DataError(sd_token, f"channel {ch} is not a camera")
    smp = next(r for r in tab["sample"] if r["token"] == sd["sample_token"])
    name = next(r for r in tab["scene"] if r["token"] == smp["scene_token"])["name"]
    scene = load_scene(root, name)
    K = nuscenes_camera_rig(sd["width"], sd["height"])[ch]["K"]
    cam2g = camera_pose(scene, ch, sd["timestamp"])
    out = render_camera(scene, scene.time_s(sd["timestamp"]), cam2g, K, sd["width"], sd["height"], noise=noise)
    out.update(K=K, cam_to_global=cam2g)
    return out
