"""prepare: raw dataroot -> sweep shards, one Parquet file per scene (the first pass of the pipeline).

Output layout under ``<out>/sweeps/`` (the shard-pass layout, ``afov_ray.pipeline.shard_pass``)::

    <scene>.parquet      one shard per scene (sweeps schema, afov_ray.datasets.sweeps), atomic commit
    _done/<scene>.json   per-scene record: shard rows/bytes/sha256 and the keyframes skipped as bad
    _errors.jsonl        every skipped keyframe / failed scene, named
    _manifest.json       written LAST, only when every selected scene is done

and ``<out>/splits.json`` (``afov_ray.datasets.splits``: nuScenes train / val / pinned 1 % rule;
SemanticKITTI official sequence split and its frame-level 1 % rule).

A scene whose every keyframe is bad is never marked done: it fails with the reasons, and a rerun after
the data is fixed redoes it.

Plan on the driver, read in the workers: the reader (its tables, listings and calibration files read once,
on the driver) describes every keyframe of a scene as a small JSON-able descriptor
(``afov_ray.datasets.descriptors``); a scene's task gets its descriptors and reads the files (local or
s3://) with no tables. A keyframe that cannot be planned is recorded as skipped like one that cannot be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from afov_ray.cli import print_summary
from afov_ray.config import ConfigError, option
from afov_ray.datasets.reader import Reader, ReaderSpec
from afov_ray.datasets.splits import make_kitti_splits, standard_nuscenes_splits, write_split_file
from afov_ray.datasets.sweeps import (
    SWEEPS_SCHEMA_NAME,
    SWEEPS_SCHEMA_VERSION,
    check_keyframe,
    keyframes_to_table,
    sweeps_schema,
)
from afov_ray.errors import DataError
from afov_ray.log import get_logger
from afov_ray.pipeline.shard_pass import ExecConfig, ItemResult, PassItem, PassSummary, ShardPass, run_pass
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import AtomicParquetWriter

log = get_logger(__name__)

SWEEPS_DIR = "sweeps"
SPLITS_NAME = "splits.json"


@dataclass
class PrepareConfig:
    dataset: Literal["nuscenes", "semantickitti"] = option("nuscenes", "which reader to use")
    dataroot: str = option("", "raw dataset root, local or s3:// (nuScenes: the folder holding samples/ and the "
                               "version tables; SemanticKITTI: the folder holding sequences/)")
    version: str = option("v1.0-trainval", "nuScenes table version (v1.0-trainval, v1.0-mini, ...); unused for "
                                           "SemanticKITTI")
    split: str | None = option(None, "nuScenes split name (train, val, mini_train, ...) or SemanticKITTI "
                                     "train / val / test / train_1pct (only the scans of the 1 % rule) or "
                                     "comma-separated sequence ids; None: all scenes")
    scenes: list[str] | None = option(None, "restrict to these scene names (after split)")
    cameras: bool = option(True, "read camera images and calibration (false: LiDAR-only keyframes, e.g. "
                                 "SemanticKITTI without image_2 / calib.txt, for fine-tuning and evaluation)")
    rows_per_group: int = option(32, "keyframes per Parquet row group (bounds a scene task's memory)", min=1)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = option("zstd", "Parquet compression codec")
    write_splits: bool = option(True, "write <out>/splits.json")
    min_1pct_scenes: int = option(0, "top the 1 % split up to this many scenes when the rule selects fewer (small "
                                     "data); recorded in the split file", min=0)
    exec: ExecConfig = option(ExecConfig(), "how items run")

    def reader_spec(self) -> ReaderSpec:
        return ReaderSpec(self.dataset, self.dataroot, self.version, self.split, cameras=self.cameras)


class PreparePass(ShardPass):
    name = "prepare"
    compute = "tasks"
    schema_name = SWEEPS_SCHEMA_NAME
    schema_version = SWEEPS_SCHEMA_VERSION

    def __init__(self, cfg: PrepareConfig, out_uri: str, reader: Reader | None = None):
        super().__init__(U.join(out_uri, SWEEPS_DIR), cfg.exec)
        self.cfg = cfg
        self._reader = reader

    @property
    def reader(self) -> Reader:
        """The reader. It is shipped to the workers without its tables (they only read descriptors)."""
        if self._reader is None:
            self._reader = self.cfg.reader_spec()()
        return self._reader

    def fingerprint(self) -> dict:
        c = self.cfg
        return {"dataset": c.dataset, "dataroot": c.dataroot, "version": c.version if c.dataset == "nuscenes" else None,
                "cameras": c.cameras}

    def items(self) -> list[PassItem]:
        selected = list(self.reader.scenes())
        if len(set(selected)) != len(selected):
            dup = sorted({s for s in selected if selected.count(s) > 1})
            raise DataError(self.cfg.dataroot, f"duplicate scene names {dup[:5]}: scene names must be unique")
        if self.cfg.scenes is not None:
            unknown = sorted(set(self.cfg.scenes) - set(selected))
            if unknown:
                raise DataError(self.cfg.dataroot, f"unknown scenes {unknown[:10]} (config key 'scenes')")
            selected = [s for s in selected if s in set(self.cfg.scenes)]
        if not selected:
            raise DataError(self.cfg.dataroot, "no scenes to prepare"
                            + (f" in split {self.cfg.split!r}" if self.cfg.split else ""))
        return [PassItem(s, self._plan(s)) for s in selected]

    def _plan(self, scene: str) -> dict:
        """The descriptors of a scene's keyframes (a keyframe that cannot be planned carries its error)."""
        try:
            ids = self.reader.keyframe_ids(scene)
        except DataError as e:
            return {"error": {"item": e.item, "message": e.message}}
        descs = []
        for kid in ids:
            try:
                descs.append(self.reader.describe(kid))
            except DataError as e:
                descs.append({"id": kid, "error": {"item": e.item, "message": e.message}})
        return {"keyframes": descs}

    def warnings(self) -> list[str]:
        return list(self.reader.warnings())

    def run_item(self, item: PassItem) -> ItemResult:
        scene, skipped, unlabelled = item.key, [], 0
        if "error" in item.payload:
            raise DataError(item.payload["error"]["item"], item.payload["error"]["message"])
        descs = item.payload["keyframes"]
        if not descs:
            raise DataError(scene, "no keyframes (no point files / samples for this scene)")
        writer = AtomicParquetWriter(self.shard_uri(scene), sweeps_schema(),
                                     compression=None if self.cfg.compression == "none" else self.cfg.compression)
        try:
            with writer:
                buffer = []
                for desc in descs:
                    try:
                        if "error" in desc:
                            raise DataError(desc["error"]["item"], desc["error"]["message"])
                        kf = self.reader.load(desc)
                        check_keyframe(kf)
                        if kf.scene != scene:
                            raise DataError(desc["id"], f"keyframe belongs to scene {kf.scene!r}, not {scene!r}")
                    except DataError as e:
                        item_name = e.item if str(e.item).startswith(scene) else f"{scene}/{e.item}"
                        skipped.append({"item": item_name, "message": e.message})
                        continue
                    unlabelled += kf.labels is None
                    buffer.append(kf)
                    if len(buffer) >= self.cfg.rows_per_group:
                        writer.write_table(keyframes_to_table(buffer))
                        buffer = []
                if buffer:
                    writer.write_table(keyframes_to_table(buffer))
                if writer.rows == 0:
                    raise _NoRows()
        except _NoRows:
            return ItemResult(scene, "written", shard=None, skipped=skipped)
        entry = {"name": U.basename(writer.final_uri), "rows": writer.rows,
                 "bytes": writer.stream.bytes_written, "sha256": writer.stream.sha256}
        return ItemResult(scene, "written", shard=entry, skipped=skipped,
                          stats={"keyframes": writer.rows, "unlabelled": unlabelled})

    def summarize(self, records: list[dict]) -> dict:
        return {"keyframes": sum(int(r["stats"].get("keyframes", 0)) for r in records),
                "keyframes_skipped": sum(len(r.get("skipped", [])) for r in records),
                "keyframes_unlabelled": sum(int(r["stats"].get("unlabelled", 0)) for r in records)}

    def manifest_info(self) -> dict:
        return {"dataset": self.cfg.dataset, "dataroot": self.cfg.dataroot, "version": self.cfg.version,
                "split": self.cfg.split}


class _NoRows(Exception):
    """Raised inside the atomic writer to discard an empty shard."""


def write_splits(cfg: PrepareConfig, out_uri: str, reader: Reader) -> dict:
    """Write ``<out>/splits.json`` for the dataset; returns {split: number of scenes}."""

    if cfg.dataset == "nuscenes":
        splits = standard_nuscenes_splits(reader, min_1pct_scenes=cfg.min_1pct_scenes)
    else:
        splits = make_kitti_splits({s: reader.frames(s) for s in reader.all_sequences()})
    write_split_file(U.join(out_uri, SPLITS_NAME), splits)
    return {k: len(v.scenes) for k, v in splits.items()}


def empty_split_note(name: str, dataset: str) -> str:
    """Why a split of the split file is empty, in one line."""
    if name == "train_1pct" and dataset == "nuscenes":
        return (f"split {name!r} is empty: the 1 % rule keeps the 100th, 200th, ... train scene of the table and "
                f"this dataroot has fewer (set prepare.min_1pct_scenes to top it up)")
    return f"split {name!r} is empty: no scene of this dataroot is in it"


def run_prepare(cfg: PrepareConfig, out_uri: str, reader: Reader | None = None) -> PassSummary:
    """Prepare every selected scene (resuming); write splits.json; returns the pass summary
    (``stats``: keyframes, keyframes_skipped, and ``splits``)."""
    t0 = time.perf_counter()
    p = PreparePass(cfg, out_uri, reader)
    if cfg.exec.use_ray:

        init_ray()
    summary = run_pass(p)
    if summary.stats.get("keyframes_unlabelled"):
        log.warning("%d of %d keyframes have no ground-truth labels (nuScenes: no lidarseg table (lidarseg.json) in "
                    "%s; SemanticKITTI: no labels/ files): their shards hold null labels, so fine-tuning, validation "
                    "and evaluation have nothing to score", summary.stats["keyframes_unlabelled"],
                    summary.stats.get("keyframes", 0), U.join(cfg.dataroot, cfg.version) if cfg.dataset == "nuscenes"
                    else cfg.dataroot)
    if cfg.write_splits:
        summary.stats["splits"] = write_splits(cfg, out_uri, p.reader)
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass
class PrepareJob(RayKeys):
    out: str = option("outputs/demo", "output URI, local folder or s3://bucket/prefix; shards go to <out>/sweeps/")
    prepare: PrepareConfig = option(PrepareConfig(), "what to read and how")


def prepare_job(cfg: PrepareJob) -> int:
    """The body of ``jobs/prepare.py``."""

    if not cfg.prepare.dataroot:
        raise ConfigError("config key 'prepare.dataroot': required (the raw dataset root)")
    reader = cfg.prepare.reader_spec()()   # tables loaded once, here, before Ray starts
    if cfg.prepare.exec.use_ray:
        cfg.start_ray()
    summary = run_prepare(cfg.prepare, cfg.out, reader)
    print_summary(summary)
    st = summary.stats
    print(f"keyframes: {st.get('keyframes', 0)} written, {st.get('keyframes_skipped', 0)} skipped")
    if "splits" in st:
        print("splits: " + ", ".join(f"{k}={v} scenes" for k, v in st["splits"].items()))
        for k in [k for k, v in st["splits"].items() if v == 0]:
            print(f"  {empty_split_note(k, cfg.prepare.dataset)}")
    return summary.exit_code
