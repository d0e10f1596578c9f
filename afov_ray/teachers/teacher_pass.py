"""The teacher pass: camera images of the sweep shards -> teacher shards (one per scene).

design.md "Data flow": ``camera images --teacher pass (actor pool)--> teacher shards``. Work items are
(scene, sample, camera) rows built from the sweep shards; a Ray Data ``map_batches`` actor pool
(``ActorPoolStrategy(min_size=1, max_size=N)``: a fixed pool as large as the CPU count deadlocks
on small clusters, install-notes.md "Ray Data actor-pool deadlock") runs the teacher on each image and
returns rows of the teacher schema (``afov_ray.teachers.schema``); the driver groups them per scene
and commits each scene shard atomically, skipping scenes already done.

Teachers available here:

- ``simulated`` (``afov_ray.teachers.simulated``): generated datasets only; re-renders each camera's
  ground truth from the generator's saved scene and corrupts it like a real teacher.
- ``maskclip`` (``afov_ray.teachers.maskclip``): a built-in MaskCLIP teacher on local CLIP weights;
  reads each camera image (``cam_image_path`` of the sweep shards, relative to ``dataroot``, local or
  S3). Text embeddings are computed once (a GPU task when GPU actors are used) and handed to the
  actors. Actors take ``actor_gpus`` GPUs each when ``use_gpu`` is true, or when it is None (auto)
  and the Ray cluster has GPUs; CPU actors otherwise.

Official SAN / CAT-Seg / FC-CLIP outputs are brought in with ``afov_ray.teachers.official``.
Layout: ``<out>/<run_id>/run.json``, ``text_embedding.npy``, ``images/<scene>.parquet``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from afov_ray.errors import DataError
from afov_ray.teachers.maskclip import MaskCLIPConfig
from afov_ray.teachers.simulated import SimTeacherConfig


@dataclass
class TeacherPassConfig:
    teacher: str = "simulated"
    dataroot: str = ""                 # dataset root (the generated dataroot for "simulated")
    version: str = "v1.0-trainval"
    dictionary: str = "nuscenes"
    sim: SimTeacherConfig = field(default_factory=SimTeacherConfig)
    maskclip: MaskCLIPConfig = field(default_factory=MaskCLIPConfig)
    max_actors: int = 2
    actor_cpus: float = 0.5
    batch_size: int = 6
    use_gpu: bool | None = None        # maskclip actors: None = GPUs iff the Ray cluster has some
    actor_gpus: float = 1.0            # GPUs per actor when GPU actors are used


def teacher_run(cfg: TeacherPassConfig):
    """The versioned run record and its text-embedding table."""
    from afov_ray.teachers.dictionary import ClassDictionary
    from afov_ray.teachers.schema import TeacherRun, TextEmbeddingTable
    from afov_ray.teachers.simulated import simulated_text_embeddings

    if cfg.teacher == "maskclip":
        return _maskclip_run(cfg)
    if cfg.teacher != "simulated":
        raise ValueError(f"teacher {cfg.teacher!r} is not available in this build; use 'simulated' for "
                         "generated data, 'maskclip' for the built-in MaskCLIP teacher, or import official "
                         "outputs with afov_ray.teachers.official")
    d = ClassDictionary.load(cfg.dictionary)
    emb = simulated_text_embeddings(list(d.texts), d.text_to_category, dim=cfg.sim.feature_dim, seed=cfg.sim.seed)
    sim = cfg.sim
    model_id = (f"simulated:{sim.mask_style}:b{sim.boundary_px}:c{sim.confusion_prob}:a{sim.min_area_px}:"
                f"d{sim.max_depth_m}:f{sim.feature_noise}:t{sim.random_text_prob}:s{sim.seed}")
    run = TeacherRun(name=sim.name, vocabulary_hash=d.vocabulary_hash(), model_id=model_id,
                     feature_dim=sim.feature_dim, created="")
    return run, TextEmbeddingTable(embeddings=emb, void_row=False, num_texts=d.num_texts)


def _maskclip_run(cfg: TeacherPassConfig):
    """MaskCLIP run record: text embeddings of the dictionary from the configured CLIP (loaded here)."""
    from afov_ray.teachers.dictionary import ClassDictionary
    from afov_ray.teachers.maskclip import MaskCLIPTeacher, model_id
    from afov_ray.teachers.schema import TeacherRun, TextEmbeddingTable

    d = ClassDictionary.load(cfg.dictionary)
    teacher = MaskCLIPTeacher(cfg.maskclip, list(d.texts))
    emb = teacher.text_embeddings.cpu().numpy().astype(np.float32)
    run = TeacherRun(name=cfg.maskclip.name, vocabulary_hash=d.vocabulary_hash(), model_id=model_id(cfg.maskclip),
                     feature_dim=teacher.feature_dim, created="")
    return run, TextEmbeddingTable(embeddings=emb, void_row=False, num_texts=d.num_texts)


class MaskCLIPTeacherActor:
    """Callable class for ``map_batches``: loads the MaskCLIP model once, then labels camera images."""

    def __init__(self, cfg: TeacherPassConfig, text_embeddings: np.ndarray):
        from afov_ray.teachers.dictionary import ClassDictionary
        from afov_ray.teachers.maskclip import MaskCLIPTeacher

        self.cfg = cfg
        d = ClassDictionary.load(cfg.dictionary)
        self.teacher = MaskCLIPTeacher(cfg.maskclip, list(d.texts), text_embeddings=text_embeddings)

    def __call__(self, batch: dict[str, np.ndarray]):
        from afov_ray.storage import uri as suri
        from afov_ray.teachers.maskclip import decode_image
        from afov_ray.teachers.schema import to_table

        images = []
        for i in range(len(batch["camera_token"])):
            rel = str(batch["cam_image_path"][i])
            path = suri.join(self.cfg.dataroot, rel) if self.cfg.dataroot else rel
            try:
                data = suri.read_bytes(path)
            except (OSError, FileNotFoundError) as exc:
                raise DataError(path, f"cannot read camera image: {exc}") from exc
            image = decode_image(data, path)
            images.append(self.teacher(image, sample_token=str(batch["sample_token"][i]),
                                       camera=str(batch["camera"][i]), camera_token=str(batch["camera_token"][i]),
                                       scene_token=str(batch["scene"][i])))
        return to_table(images)


class SimulatedTeacherActor:
    """Callable class for ``map_batches``: one actor renders and corrupts camera images."""

    def __init__(self, cfg: TeacherPassConfig):
        from afov_ray.teachers.dictionary import ClassDictionary

        self.cfg = cfg
        self.d = ClassDictionary.load(cfg.dictionary)
        self.emb = teacher_run(cfg)[1].embeddings

    def __call__(self, batch: dict[str, np.ndarray]):

        from afov_ray.datasets.synth.nuscenes_writer import render_sample_data
        from afov_ray.teachers.schema import TeacherImage, to_table
        from afov_ray.teachers.simulated import simulate_image

        images = []
        for i in range(len(batch["camera_token"])):
            tok = str(batch["camera_token"][i])
            r = render_sample_data(self.cfg.dataroot, tok, version=self.cfg.version)
            mm, mt, feats, thing = simulate_image(
                r["semantic"], r["instance"], r["depth"], list(self.d.texts), self.d.text_to_category,
                self.d.category_to_raw, self.emb, self.cfg.sim, key=tok)
            ids = np.array(sorted(mt), dtype=np.int64)
            area = np.bincount(mm.ravel(), minlength=int(ids.max(initial=0)) + 1)[ids] if ids.size else ids
            images.append(TeacherImage(
                sample_token=str(batch["sample_token"][i]), camera=str(batch["camera"][i]),
                image_size=(int(mm.shape[0]), int(mm.shape[1])), mask_map=mm, mask_ids=ids,
                text_index=np.array([mt[j] for j in ids], dtype=np.int64), area=area.astype(np.int64),
                features=feats, is_thing=thing, camera_token=tok, scene_token=str(batch["scene"][i])))
        return to_table(images)


def camera_items(sweeps_uri: str, scenes: list[str] | None = None) -> list[dict]:
    """(scene, sample_token, camera, camera_token, cam_image_path) for every camera of every keyframe
    in the shards (``cam_image_path`` relative to the dataroot)."""
    import pyarrow.parquet as pq

    from afov_ray.storage import uri as suri

    items = []
    for name in sorted(suri.listdir(sweeps_uri)):
        if not name.endswith(".parquet"):
            continue
        scene = name[: -len(".parquet")]
        if scenes is not None and scene not in scenes:
            continue
        fs, path = suri.resolve(suri.join(sweeps_uri, name))
        t = pq.read_table(path, filesystem=fs,
                          columns=["scene", "sample_token", "cam_channel", "cam_token", "cam_image_path"])
        for row in t.to_pylist():
            for ch, tok, img in zip(row["cam_channel"], row["cam_token"], row["cam_image_path"]):
                items.append({"scene": row["scene"], "sample_token": row["sample_token"], "camera": ch,
                              "camera_token": tok, "cam_image_path": img})
    return items


def _actor_gpus(cfg: TeacherPassConfig) -> float:
    """GPUs per teacher actor: 0 for the simulated teacher; for maskclip ``actor_gpus`` when
    ``use_gpu`` is true, or when it is None and the Ray cluster reports GPUs."""
    if cfg.teacher != "maskclip" or cfg.use_gpu is False:
        return 0.0
    if cfg.use_gpu is None:
        import ray

        if ray.cluster_resources().get("GPU", 0) <= 0:
            return 0.0
    return float(cfg.actor_gpus)


def run_teacher_pass(sweeps_uri: str, out_uri: str, cfg: TeacherPassConfig, progress: bool = True) -> dict:
    """Run the teacher over every camera image of the sweep shards; returns a summary."""
    import pyarrow as pa
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json, atomic_write_parquet
    from afov_ray.teachers.schema import from_table

    gpus = _actor_gpus(cfg)
    if gpus > 0:   # text embeddings where the actors will run: one GPU task
        run, text = ray.get(ray.remote(num_gpus=gpus, num_cpus=cfg.actor_cpus)(teacher_run).remote(cfg))
    else:
        run, text = teacher_run(cfg)
    run_uri = suri.join(out_uri, run.run_id)
    images_uri = suri.join(run_uri, "images")
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(text.embeddings, dtype=np.float32))
    atomic_write_bytes(suri.join(run_uri, "text_embedding.npy"), buf.getvalue())
    atomic_write_json(suri.join(run_uri, "run.json"), run.to_dict() | {
        "void_row": bool(text.void_row), "num_texts": int(text.num_texts), "config": {
            "teacher": cfg.teacher, "dataroot": cfg.dataroot, "version": cfg.version}
        | ({"maskclip": asdict(cfg.maskclip), "actor_gpus": gpus} if cfg.teacher == "maskclip" else {})})
    done = {n[: -len(".parquet")] for n in suri.listdir(images_uri) if n.endswith(".parquet")} \
        if suri.exists(images_uri) else set()
    items = [it for it in camera_items(sweeps_uri) if it["scene"] not in done]
    scenes = sorted({it["scene"] for it in items})
    summary = {"run_id": run.run_id, "run_uri": run_uri, "scenes_done": len(done), "scenes_new": len(scenes),
               "images": len(items), "errors": []}
    if not items:
        return summary
    if cfg.teacher == "maskclip":
        actor, kwargs = MaskCLIPTeacherActor, {"cfg": cfg, "text_embeddings": text.vocabulary_rows}
    else:
        actor, kwargs = SimulatedTeacherActor, {"cfg": cfg}
    ds = ray.data.from_items(items).map_batches(
        actor, fn_constructor_kwargs=kwargs, batch_size=cfg.batch_size,
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, cfg.max_actors)), num_cpus=cfg.actor_cpus,
        batch_format="numpy", **({"num_gpus": gpus} if gpus > 0 else {}))
    per_scene: dict[str, list[pa.Table]] = {}
    remaining = {s: sum(it["scene"] == s for it in items) for s in scenes}
    bar = tqdm(total=len(items), unit="img", desc="teacher", disable=not progress)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for scene in set(batch.column("scene_token").to_pylist()):
            part = batch.filter(pa.compute.equal(batch.column("scene_token"), scene))
            per_scene.setdefault(scene, []).append(part)
            remaining[scene] -= part.num_rows
            if remaining[scene] == 0:
                table = pa.concat_tables(per_scene.pop(scene))
                from_table(table)  # validates decoding before commit
                atomic_write_parquet(suri.join(images_uri, f"{scene}.parquet"), table)
        bar.update(batch.num_rows)
    bar.close()
    atomic_write_json(suri.join(run_uri, "_summary.json"), json.loads(json.dumps(summary)))
    return summary
