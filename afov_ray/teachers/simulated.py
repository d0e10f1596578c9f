"""Simulated open-vocabulary teacher for generated data.

Real teachers (SAN, CAT-Seg, FC-CLIP; docs/method.md "Teacher models") cannot run here, so for generated
scenes we render each camera's ground-truth semantic image and corrupt it the way real teachers err:

- **boundary noise**: pixels within ``boundary_px`` of a label boundary take the label of a random
  pixel within that radius (masks bleed over and erode at object edges);
- **confusions** between related classes (truck->car, bus->truck, sidewalk->road, terrain->vegetation,
  motorcycle<->bicycle, ...) decided per region with probability ``confusion_prob``;
- **missed objects**: thing instances smaller than ``min_area_px`` or farther than ``max_depth_m`` are
  absorbed by the surrounding label;
- **mask style**: ``"semantic"`` (SAN / CAT-Seg: one mask per text, ids in ascending text order, every
  pixel covered) or ``"instance"`` (FC-CLIP: thing instances stay separate, stuff is merged per text,
  pixels no segment covers, such as sky, get 0);
- **features**: mask feature = L2-normalise(text embedding + ``feature_noise`` * N(0, I)), fp16.

Text embeddings are synthetic but structured like CLIP's: each of the 31 dictionary categories has a
random direction and its texts are perturbations of it (identical texts get identical embeddings),
so same-category texts are close, which is what TMP's soft text targets rely on.
Everything is seeded (``seed`` plus the image's token).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from afov_ray.config import option

# raw nuScenes lidarseg class -> raw classes a teacher confuses it with (ids: docs/method.md "nuScenes dictionary")
CONFUSIONS: dict[int, tuple[int, ...]] = {
    23: (17,),          # truck -> car
    16: (23,),          # rigid bus -> truck
    15: (16,),          # bendy bus -> rigid bus
    22: (23,),          # trailer -> truck
    18: (23,),          # construction vehicle -> truck
    21: (14,),          # motorcycle -> bicycle
    14: (21,),          # bicycle -> motorcycle
    26: (24,),          # sidewalk -> road
    25: (24, 26),       # other flat -> road / sidewalk
    27: (30,),          # terrain -> vegetation
    30: (27,),          # vegetation -> terrain
    9: (28,),           # barrier -> manmade
    12: (9,),           # traffic cone -> barrier
    17: (23,),          # car -> truck
}
THING_RAW = frozenset({2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23})
SKY_TEXT = "sky"                   # category 29 static.other (text 170 of the official dictionary)
EGO_RAW = 31                       # vehicle.ego: 'bonnet under the picture' (text 174)


@dataclass
class SimTeacherConfig:
    name: str = option("simulated", "teacher name (the run id is derived from it and the settings)")
    mask_style: Literal["semantic", "instance"] = option(
        "semantic", "semantic (SAN / CAT-Seg: one mask per text) | instance (FC-CLIP: thing instances separate)")
    boundary_px: int = option(2, "masks bleed / erode this many pixels at label boundaries", min=0)
    confusion_prob: float = option(0.15, "probability a region is labelled as a related class (truck -> car, ...)",
                                   min=0, max=1)
    min_area_px: int = option(30, "thing instances smaller than this are missed (absorbed by the surroundings)", min=0)
    max_depth_m: float = option(60.0, "thing instances farther than this are missed", gt=0)
    feature_noise: float = option(0.3, "mask feature = normalise(text embedding + noise * N(0, I))", min=0)
    feature_dim: int = option(768, "mask feature / text embedding width (the official teachers: 768)", min=1)
    random_text_prob: float = option(0.3, "chance a region takes another text of its category", min=0, max=1)
    seed: int = option(0, "seed (with each image's token)")


def _rng(seed: int, *keys: str) -> np.random.Generator:
    h = hashlib.sha256(("|".join([str(seed), *keys])).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def simulated_text_embeddings(texts: list[str], text_to_category: np.ndarray, dim: int = 768,
                              seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """(T, dim) float32 unit rows: category direction + per-text perturbation (same text, same row)."""
    cats = np.asarray(text_to_category)
    rng = _rng(seed, "categories")
    centres = rng.standard_normal((int(cats.max()) + 1, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((len(texts), dim), dtype=np.float64)
    for t, text in enumerate(texts):
        eps = _rng(seed, "text", text).standard_normal(dim) / np.sqrt(dim)
        v = centres[cats[t]] + spread * eps
        out[t] = v / np.linalg.norm(v)
    return out.astype(np.float32)


def _raw_to_texts(text_to_category: np.ndarray, category_to_raw: np.ndarray) -> dict[int, np.ndarray]:
    raw_of_text = np.asarray(category_to_raw)[np.asarray(text_to_category)]
    return {int(r): np.flatnonzero(raw_of_text == r) for r in np.unique(raw_of_text)}


def boundary_noise(sem: np.ndarray, radius: int, rng: np.random.Generator,
                   others: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, ...]:
    """Pixels within ``radius`` of a label change copy the label of a random pixel in that radius;
    the same displacement is applied to the ``others`` maps (e.g. instance ids)."""
    if radius <= 0:
        return (sem, *others)
    h, w = sem.shape
    edge = np.zeros_like(sem, dtype=bool)
    edge[:, 1:] |= sem[:, 1:] != sem[:, :-1]
    edge[:, :-1] |= sem[:, 1:] != sem[:, :-1]
    edge[1:, :] |= sem[1:, :] != sem[:-1, :]
    edge[:-1, :] |= sem[1:, :] != sem[:-1, :]
    # grow the edge band to the radius
    band = edge.copy()
    for _ in range(radius - 1):
        g = band.copy()
        g[1:] |= band[:-1]; g[:-1] |= band[1:]; g[:, 1:] |= band[:, :-1]; g[:, :-1] |= band[:, 1:]
        band = g
    rr, cc = np.nonzero(band)
    dr = rng.integers(-radius, radius + 1, size=rr.size)
    dc = rng.integers(-radius, radius + 1, size=rr.size)
    sr, sc = np.clip(rr + dr, 0, h - 1), np.clip(cc + dc, 0, w - 1)
    outs = []
    for m in (sem, *others):
        o = m.copy()
        o[rr, cc] = m[sr, sc]
        outs.append(o)
    return tuple(outs)


def _surrounding_label(sem: np.ndarray, region: np.ndarray) -> int | None:
    ring = np.zeros_like(region)
    ring[1:] |= region[:-1]; ring[:-1] |= region[1:]; ring[:, 1:] |= region[:, :-1]; ring[:, :-1] |= region[:, 1:]
    ring &= ~region
    vals = sem[ring]
    if vals.size == 0:
        return None
    u, c = np.unique(vals, return_counts=True)
    return int(u[np.argmax(c)])


def simulate_image(sem_raw: np.ndarray, instance: np.ndarray, depth: np.ndarray, texts: list[str],
                   text_to_category: np.ndarray, category_to_raw: np.ndarray, text_emb: np.ndarray,
                   cfg: SimTeacherConfig, key: str):
    """One camera image -> (mask_map uint8 (H,W), mask_text {id: text}, features fp16 (n, D), isthing (n,)).

    ``sem_raw`` holds raw lidarseg classes (0 = nothing/sky), ``instance`` object ids (0 = stuff),
    ``depth`` metres (inf = sky). ``key`` (e.g. the camera token) seeds the corruption.
    """
    rng = _rng(cfg.seed, key)
    sem = np.asarray(sem_raw).astype(np.int16).copy()
    inst = np.asarray(instance).astype(np.int64)
    sky = ~np.isfinite(depth) | (sem == 0)
    # 1. missed small / distant thing instances -> surrounding label
    for obj in np.unique(inst[inst > 0]):
        region = inst == obj
        if int(sem[region][0]) not in THING_RAW:
            continue
        area = int(region.sum())
        dist = float(np.median(depth[region]))
        if area < cfg.min_area_px or dist > cfg.max_depth_m:
            lab = _surrounding_label(sem, region)
            if lab is not None:
                sem[region] = lab
                inst[region] = 0
    # 2. per-region confusions (things per instance, stuff per class)
    regions: list[np.ndarray] = [inst == o for o in np.unique(inst[inst > 0])]
    stuff = inst == 0
    regions += [stuff & (sem == c) for c in np.unique(sem[stuff])]
    for region in regions:
        c = int(sem[region][0]) if region.any() else 0
        if c in CONFUSIONS and rng.random() < cfg.confusion_prob:
            sem[region] = rng.choice(CONFUSIONS[c])
    # 3. boundary noise
    sem, inst = boundary_noise(sem, cfg.boundary_px, rng, (inst,))
    # 4. texts per region
    raw_texts = _raw_to_texts(text_to_category, category_to_raw)
    sky_text = texts.index(SKY_TEXT) if SKY_TEXT in texts else int(raw_texts[min(raw_texts)][0])
    ego_text = int(raw_texts[EGO_RAW][0]) if EGO_RAW in raw_texts else sky_text
    text_map = np.full(sem.shape, -1, dtype=np.int64)
    for c in np.unique(sem):
        sel = sem == c
        if c == 0:
            text_map[sel] = sky_text
            continue
        if c == EGO_RAW:
            text_map[sel] = ego_text
            continue
        cands = raw_texts.get(int(c))
        if cands is None or len(cands) == 0:
            text_map[sel] = sky_text
            continue
        t = int(cands[0])
        if len(cands) > 1 and rng.random() < cfg.random_text_prob:
            t = int(rng.choice(cands[1:]))
        text_map[sel] = t
    text_map[sky & (sem == 0)] = sky_text
    # 5. masks
    mask_map = np.zeros(sem.shape, dtype=np.uint8)
    mask_text: dict[int, int] = {}
    isthing: list[bool] = []
    if cfg.mask_style == "semantic":
        for i, t in enumerate(np.unique(text_map), start=1):
            mask_map[text_map == t] = i
            mask_text[i] = int(t)
            isthing.append(False)
    elif cfg.mask_style == "instance":
        nid = 0
        raw_of_text = np.asarray(category_to_raw)[np.asarray(text_to_category)]
        for t in np.unique(text_map):
            sel = text_map == t
            if t == sky_text:
                continue                      # no segment covers the sky
            thing = int(raw_of_text[t]) in THING_RAW
            groups = np.unique(inst[sel]) if thing else [None]
            for g in groups:
                part = sel if g is None else sel & (inst == g)
                if not part.any():
                    continue
                nid += 1
                if nid > 255:
                    break
                mask_map[part] = nid
                mask_text[nid] = int(t)
                isthing.append(bool(thing and g))
    else:
        raise ValueError(f"mask_style must be 'semantic' or 'instance', got {cfg.mask_style!r}")
    n = len(mask_text)
    feats = np.empty((n, text_emb.shape[1]), dtype=np.float32)
    frng = _rng(cfg.seed, key, "features")
    for i in range(1, n + 1):
        noise = frng.standard_normal(text_emb.shape[1]) / np.sqrt(text_emb.shape[1])
        v = text_emb[mask_text[i]] + cfg.feature_noise * noise
        feats[i - 1] = v / np.linalg.norm(v)
    return mask_map, mask_text, feats.astype(np.float16), np.asarray(isthing, dtype=bool)
