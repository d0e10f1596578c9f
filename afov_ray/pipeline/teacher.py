"""teacher: camera images of the sweep shards -> teacher shards (masks, text ids, fp16 mask features).

The second pass of the pipeline. A teacher run is one 2D open-vocabulary model with one vocabulary over
every camera image (paper section 3.1; official ``ov_segment/*/superpixel_generation.py``)::

    <out>/<run_id>/run.json              the run's identity, settings, text table shape
    <out>/<run_id>/text_embedding.npy    float32 (num_texts [+ void], D)
    <out>/<run_id>/images/<scene>.parquet  one row per (sample, camera) (afov_ray.teachers.schema)
    <out>/<run_id>/images/_manifest.json   written last (shard-pass layout)

Items are scenes; a pool of Ray actors (each holding the teacher model) labels the images of one scene
at a time. One unreadable or bad image is skipped and recorded; the rest of the scene goes on.
Backends (``teacher.teacher``, ``afov_ray.teachers.backends``): ``official`` (SAN / CAT-Seg / FC-CLIP files),
``oracle`` (the ground truth projected into the cameras: labelled data, no 2D weights), ``maskclip`` (local
CLIP weights) and ``simulated`` (generated data only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from afov_ray.cli import print_summary
from afov_ray.config import ConfigError, option
from afov_ray.datasets.sweeps import table_to_keyframes
from afov_ray.errors import DataError
from afov_ray.pipeline.shard_pass import ExecConfig, ItemResult, PassItem, PassSummary, ShardPass, run_pass
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import shards as S
from afov_ray.teachers.backends import MaskCLIPBackend, OfficialBackend, OracleBackend, SimulatedBackend
from afov_ray.teachers.maskclip import MaskCLIPConfig
from afov_ray.teachers.official import OfficialTeacherConfig
from afov_ray.teachers.oracle import OracleTeacherConfig
from afov_ray.teachers.schema import IMAGES_DIR, SCHEMA_VERSION, images_table, write_run
from afov_ray.teachers.simulated import SimTeacherConfig

CAMERA_COLUMNS = ["dataset", "scene", "sample_token", "lidar_token", "timestamp", "lidar_path", "num_points",
                  "points", "ring", "raw_labels", "labels", "cam_channel", "cam_token", "cam_image_path",
                  "cam_width", "cam_height", "cam_timestamp", "cam_K", "cam_lidar_to_cam"]


@dataclass
class TeacherPassConfig:
    teacher: Literal["simulated", "maskclip", "official", "oracle"] = option(
        "simulated", "simulated (generated data only) | maskclip (built-in MaskCLIP on local CLIP weights) | "
                     "official (SAN / CAT-Seg / FC-CLIP files, teacher.official.*) | oracle (the ground truth "
                     "projected into the cameras: labelled data, no 2D weights, teacher.oracle.*)")
    dataroot: str = option("", "dataset root holding the camera images (maskclip; the generated dataroot for "
                               "simulated; unused by official and oracle)")
    version: str = option("v1.0-trainval", "nuScenes table version of the dataroot (simulated teacher)")
    dictionary: str = option("nuscenes", "class dictionary: nuscenes | kitti | a YAML file")
    sim: SimTeacherConfig = option(SimTeacherConfig(), "simulated teacher settings")
    maskclip: MaskCLIPConfig = option(MaskCLIPConfig(), "MaskCLIP teacher settings")
    official: OfficialTeacherConfig = option(OfficialTeacherConfig(), "official teacher files (teacher=official)")
    oracle: OracleTeacherConfig = option(OracleTeacherConfig(), "oracle teacher settings (teacher=oracle)")
    exec: ExecConfig = option(ExecConfig(), "how items run (an actor pool: each actor holds the teacher)")

    def check(self) -> None:
        if self.teacher == "maskclip" and not self.maskclip.weights and not self.maskclip.allow_random_weights:
            raise ConfigError("config key 'maskclip.weights': required for the maskclip teacher (a local CLIP state "
                              "dict); set maskclip.allow_random_weights=true only for tests")

    def backend(self):
        if self.teacher == "simulated":
            return SimulatedBackend(self.sim, self.dictionary, self.dataroot, self.version)
        if self.teacher == "official":
            return OfficialBackend(self.official, self.dictionary)
        if self.teacher == "oracle":
            return OracleBackend(self.oracle, self.dictionary)
        return MaskCLIPBackend(self.maskclip, self.dictionary, self.dataroot)

    def require_keys(self) -> None:
        """The keys the chosen backend needs (one-line ConfigError; checked when the pass runs, not when the
        config is parsed, so a composed config such as the demo's may fill them in later)."""
        if self.teacher in ("simulated", "maskclip") and not self.dataroot:
            raise ConfigError(f"config key 'teacher.dataroot': required for teacher={self.teacher} (the dataset "
                              f"root holding the camera images)")
        if self.teacher == "official" and not self.official.dir:
            raise ConfigError("config key 'teacher.official.dir': required for teacher=official (the folder of "
                              "the official teacher files)")


class TeacherPass(ShardPass):
    name = "teacher"
    compute = "actors"
    schema_name = "teacher_images"
    schema_version = int(SCHEMA_VERSION)

    def __init__(self, cfg: TeacherPassConfig, sweeps: dict[str, S.Shard], run_uri: str, run, text):
        super().__init__(f"{run_uri.rstrip('/')}/{IMAGES_DIR}", cfg.exec)
        self.cfg, self.sweeps, self.run, self.text = cfg, sweeps, run, text
        self.backend = cfg.backend()

    def fingerprint(self) -> dict:
        return {"run_id": self.run.run_id, "teacher": self.cfg.teacher}

    def items(self) -> list[PassItem]:
        return [PassItem(k) for k in self.sweeps]

    def setup(self) -> None:
        self.backend.setup(self.text)

    def run_item(self, item: PassItem) -> ItemResult:
        shard = self.sweeps[item.key]
        table = S.read_table(shard, CAMERA_COLUMNS)
        S.check_key_column(table, shard)
        images, skipped, n_cams = [], [], 0
        for kf in table_to_keyframes(table):
            for cam in kf.cameras:
                n_cams += 1
                try:
                    im = self.backend.label(kf, cam)
                    im.validate(self.text.num_texts, self.run.feature_dim)
                except DataError as e:
                    skipped.append({"item": f"{kf.scene}/{kf.sample_token}/{cam.channel}",
                                    "message": f"{e.item}: {e.message}" if e.item not in e.message else e.message})
                    continue
                images.append(im)
        if n_cams == 0:
            raise DataError(item.key, "the sweep shards hold no camera (prepared with prepare.cameras=false?): a "
                                      "teacher needs camera calibration")
        if not images:
            return ItemResult(item.key, skipped=skipped)
        entry = self.commit_table(item.key, images_table(images, num_texts=self.text.num_texts,
                                                         feature_dim=self.run.feature_dim, run_id=self.run.run_id))
        return ItemResult(item.key, shard=entry, skipped=skipped, stats={"images": len(images), "cameras": n_cams})

    def summarize(self, records: list[dict]) -> dict:
        return {"images": sum(int(r["stats"].get("images", 0)) for r in records),
                "images_skipped": sum(len(r.get("skipped", [])) for r in records)}

    def manifest_info(self) -> dict:
        return {"run_id": self.run.run_id}


def run_teacher_pass(sweeps_uri: str, out_uri: str, cfg: TeacherPassConfig) -> PassSummary:
    """Label every camera image of the sweep shards; returns the pass summary, whose ``stats`` carry
    ``run_id`` and ``run_uri`` (the folder to give the pair pass)."""

    cfg.require_keys()
    sweeps = S.open_folder(sweeps_uri, require_manifest=cfg.exec.require_manifest, what="sweeps folder")
    backend = cfg.backend()
    run, text, extra = backend.run_record()     # on the driver: a bad setting or input fails here, once
    if cfg.exec.use_ray:
        init_ray()
    run_uri = write_run(out_uri, run, text, extra={"config": {"teacher": cfg.teacher, "dataroot": cfg.dataroot,
                                                             "dictionary": cfg.dictionary}, "backend": cfg.teacher,
                                                  **extra})
    summary = run_pass(TeacherPass(cfg, sweeps, run_uri, run, text))
    summary.stats.update(run_id=run.run_id, run_uri=run_uri)
    return summary


@dataclass
class TeacherJob(RayKeys):
    sweeps: str = option("outputs/demo/sweeps", "sweeps folder URI (prepare output)")
    out: str = option("outputs/demo/teacher", "teacher output root URI (a run folder <out>/<run_id> is made)")
    teacher: TeacherPassConfig = option(TeacherPassConfig(), "which teacher and how")


def teacher_job(cfg: TeacherJob) -> int:
    """The body of ``jobs/teacher.py``."""

    cfg.teacher.require_keys()
    if cfg.teacher.exec.use_ray:
        cfg.start_ray()
    summary = run_teacher_pass(cfg.sweeps, cfg.out, cfg.teacher)
    print_summary(summary)
    print(f"teacher run: {summary.stats['run_uri']} ({summary.stats.get('images', 0)} images, "
          f"{summary.stats.get('images_skipped', 0)} skipped)")
    return summary.exit_code
