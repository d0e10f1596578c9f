"""prepare: raw dataroot -> sweep shards, one Parquet file per scene (design.md "Data flow").

Output layout under ``<out>/sweeps/``::

    <scene>.parquet      one shard per scene (sweeps schema, afov_ray.storage.sweeps), atomic commit
    _done/<scene>.json   per-scene record written right after its shard: shard rows/bytes/sha256,
                         the keyframes skipped as bad (DataError) with item and message
    _errors.jsonl        every skipped keyframe / failed scene: {"scene", "item", "message", ...}
    _manifest.json       written LAST, only when every selected scene is done (storage.manifest)
    _tmp/                temp objects of unfinished writes (ignored by readers, cleaned on start)

Idempotent and resumable: a scene counts as done when its ``_done`` record exists and its shard has
the recorded size; re-running skips those and does the rest. A job killed at any point leaves only
complete shards under final names (storage.atomic), and no manifest until the whole set is done.
Concurrent ``prepare`` runs on the same output are not supported (start-up deletes temp objects).

Scenes run in parallel as Ray tasks (one CPU each). Heavy readers are passed as a zero-argument
factory (``ReaderSpec``) and built once per Ray worker process, not once per scene.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence, Union

from afov_ray.datasets.reader import Reader
from afov_ray.errors import DataError
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import AtomicParquetWriter, atomic_write_bytes, atomic_write_json, cleanup_stale
from afov_ray.storage.manifest import MANIFEST_NAME, ShardEntry, write_manifest
from afov_ray.storage.sweeps import (
    SWEEPS_SCHEMA_NAME,
    SWEEPS_SCHEMA_VERSION,
    check_keyframe,
    keyframes_to_table,
    sweeps_schema,
)

SWEEPS_DIR = "sweeps"
DONE_DIR = "_done"
ERRORS_NAME = "_errors.jsonl"

# SemanticKITTI's standard split (sequences), used when ``split`` names one.
KITTI_SPLITS = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{i:02d}" for i in range(11, 22)],
}


# ------------------------------------------------------------------------------------------------
# Readers


def make_reader(dataset: str, dataroot: str, version: str | None = None, split: str | None = None) -> Reader:
    """Build the reader of a raw dataset.

    nuscenes: ``NuScenesReader(dataroot, version, split=split)`` (version e.g. "v1.0-trainval").
    semantickitti: ``SemanticKITTIReader(dataroot, sequences=...)`` where ``split`` is "train" /
    "val" / "test" or a comma-separated list of sequence ids; ``version`` is unused.
    """
    if dataset == "nuscenes":
        from afov_ray.datasets.nuscenes import NuScenesReader

        return NuScenesReader(dataroot, version or "v1.0-trainval", split=split)
    if dataset == "semantickitti":
        from afov_ray.datasets.kitti import SemanticKITTIReader

        sequences = None
        if split:
            sequences = KITTI_SPLITS.get(split) or [s.strip() for s in split.split(",") if s.strip()]
        return SemanticKITTIReader(dataroot, sequences=sequences)
    raise ValueError(f"dataset: unknown {dataset!r} (expected 'nuscenes' or 'semantickitti')")


@dataclass(frozen=True)
class ReaderSpec:
    """A picklable, hashable reader factory: ``ReaderSpec(...)()`` calls ``make_reader``."""

    dataset: str
    dataroot: str
    version: str | None = None
    split: str | None = None

    def __call__(self) -> Reader:
        return make_reader(self.dataset, self.dataroot, self.version, self.split)


ReaderSource = Union[Reader, Callable[[], Reader]]
_READER_CACHE: dict[Any, Reader] = {}


def _get_reader(source: ReaderSource) -> Reader:
    """A reader object as is; a factory built once per process when it is hashable."""
    if hasattr(source, "scenes") and hasattr(source, "read"):
        return source  # type: ignore[return-value]
    try:
        hash(source)
    except TypeError:
        return source()
    if source not in _READER_CACHE:
        _READER_CACHE[source] = source()
    return _READER_CACHE[source]


# ------------------------------------------------------------------------------------------------
# One scene


@dataclass
class SceneResult:
    scene: str
    status: str                                   # "written" | "failed"
    keyframes: int = 0                            # rows written
    errors: list[dict] = field(default_factory=list)
    shard: dict | None = None                     # ShardEntry as a dict
    seconds: float = 0.0


def _check_scene_name(scene: str) -> None:
    if not scene or "/" in scene or scene.startswith(("_", ".")):
        raise DataError(scene, "scene name cannot be used as a shard file name")


def shard_name(scene: str) -> str:
    return f"{scene}.parquet"


def prepare_scene(
    reader: Reader,
    scene: str,
    sweeps_uri: str,
    *,
    rows_per_group: int = 32,
    compression: str = "zstd",
) -> SceneResult:
    """Read one scene and commit ``<sweeps_uri>/<scene>.parquet`` and its ``_done`` record.

    Keyframes raising DataError (from the reader or from schema checks) are skipped and listed in
    ``errors``; any other exception fails the whole scene (nothing committed) and is reported as an
    error naming the scene and keyframe.
    """
    t0 = time.perf_counter()
    errors: list[dict] = []
    current = scene
    try:
        _check_scene_name(scene)
        ids = reader.keyframe_ids(scene)
        with AtomicParquetWriter(U.join(sweeps_uri, shard_name(scene)), sweeps_schema(),
                                 compression=compression) as writer:
            buffer = []
            for kid in ids:
                current = f"{scene}/{kid}"
                try:
                    kf = reader.read(kid)
                    check_keyframe(kf)
                except DataError as e:
                    errors.append({"scene": scene, "keyframe": kid, "item": e.item, "message": e.message})
                    continue
                buffer.append(kf)
                if len(buffer) >= rows_per_group:
                    writer.write_table(keyframes_to_table(buffer))
                    buffer = []
            if buffer:
                writer.write_table(keyframes_to_table(buffer))
        entry = ShardEntry(name=shard_name(scene), rows=writer.rows, bytes=writer.stream.bytes_written,
                           sha256=writer.stream.sha256)
        record = {"scene": scene, "shard": asdict(entry), "errors": errors,
                  "schema": SWEEPS_SCHEMA_NAME, "schema_version": SWEEPS_SCHEMA_VERSION}
        atomic_write_json(U.join(sweeps_uri, DONE_DIR, f"{scene}.json"), record)
        return SceneResult(scene, "written", writer.rows, errors, asdict(entry), time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - reported with the scene / keyframe it happened on
        item = e.item if isinstance(e, DataError) else current
        msg = e.message if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
        errors.append({"scene": scene, "item": item, "message": msg, "fatal": True})
        return SceneResult(scene, "failed", 0, errors, None, time.perf_counter() - t0)


def _scene_task(source: ReaderSource, scene: str, sweeps_uri: str, opts: dict) -> SceneResult:
    return prepare_scene(_get_reader(source), scene, sweeps_uri, **opts)


# ------------------------------------------------------------------------------------------------
# The job


@dataclass
class PrepareSummary:
    sweeps_uri: str
    scenes_total: int                       # scenes selected
    scenes_written: list[str]               # written by this run
    scenes_skipped: list[str]               # already done before this run
    scenes_failed: list[str]                # failed in this run (rerun to retry)
    keyframes_written: int                  # rows written by this run
    keyframes_total: int                    # rows of all shards in the manifest (0 without one)
    errors: list[dict]                      # every entry of _errors.jsonl
    manifest_written: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _done_records(sweeps_uri: str) -> dict[str, dict]:
    """Valid ``_done`` records: the shard exists with the recorded size."""
    import pyarrow.fs as pafs

    fs, path = U.resolve(sweeps_uri)
    sizes = {U.basename(i.path): i.size
             for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
             if i.type == pafs.FileType.File}
    records = {}
    for name in U.listdir(U.join(sweeps_uri, DONE_DIR)):
        if not name.endswith(".json"):
            continue
        try:
            rec = json.loads(U.read_bytes(U.join(sweeps_uri, DONE_DIR, name)))
            shard = rec["shard"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable record: the scene is redone
        if rec.get("schema_version") == SWEEPS_SCHEMA_VERSION and sizes.get(shard["name"]) == shard["bytes"]:
            records[rec["scene"]] = rec
    return records


def prepare(
    source: ReaderSource,
    out: str,
    *,
    scenes: Sequence[str] | None = None,
    use_ray: bool = True,
    num_cpus: int | None = None,
    address: str | None = None,
    rows_per_group: int = 32,
    compression: str = "zstd",
    progress: bool = True,
    job_info: dict | None = None,
) -> PrepareSummary:
    """Write ``<out>/sweeps/<scene>.parquet`` for every scene of ``source`` (see the module doc).

    source: a Reader, or a zero-argument factory returning one (``ReaderSpec``; built once per
      worker). scenes: restrict to these scene names. use_ray: False runs scenes one by one in this
      process. num_cpus: CPUs of a local Ray started here (default: all). address: an existing Ray
      cluster (``ray.init(address=...)``); an already initialised Ray is used as is.
    """
    t0 = time.perf_counter()
    reader = _get_reader(source)
    selected = list(reader.scenes())
    if scenes is not None:
        wanted = set(scenes)
        unknown = wanted - set(selected)
        if unknown:
            raise DataError(reader.dataroot, f"unknown scenes {sorted(unknown)}")
        selected = [s for s in selected if s in wanted]
    sweeps_uri = U.join(out, SWEEPS_DIR)
    U.makedirs(sweeps_uri)
    cleanup_stale(sweeps_uri, older_than_s=0.0)
    cleanup_stale(U.join(sweeps_uri, DONE_DIR), older_than_s=0.0)

    done = _done_records(sweeps_uri)
    skipped = [s for s in selected if s in done]
    todo = [s for s in selected if s not in done]
    if todo and U.exists(U.join(sweeps_uri, MANIFEST_NAME)):
        U.delete(U.join(sweeps_uri, MANIFEST_NAME))  # "manifest present" must mean "complete"

    opts = {"rows_per_group": rows_per_group, "compression": compression}
    results = _run(source, todo, sweeps_uri, opts, use_ray, num_cpus, address, progress, len(selected),
                   len(skipped))
    failed = [r for r in results if r.status == "failed"]

    done = _done_records(sweeps_uri)
    errors = [e for rec in sorted(done.values(), key=lambda r: r["scene"]) for e in rec["errors"]]
    errors += [e for r in failed for e in r.errors]
    atomic_write_bytes(U.join(sweeps_uri, ERRORS_NAME), "".join(json.dumps(e) + "\n" for e in errors).encode())

    manifest_written = False
    keyframes_total = 0
    if not failed:
        entries = [ShardEntry(**rec["shard"]) for rec in done.values()]
        info = {"dataset": reader.dataset, "dataroot": reader.dataroot,
                "keyframes_skipped": sum(len(rec["errors"]) for rec in done.values()),
                **(job_info or {})}
        doc = write_manifest(sweeps_uri, entries, schema=SWEEPS_SCHEMA_NAME,
                             schema_version=SWEEPS_SCHEMA_VERSION, extra=info)
        manifest_written = True
        keyframes_total = doc["totals"]["rows"]
    return PrepareSummary(
        sweeps_uri=sweeps_uri,
        scenes_total=len(selected),
        scenes_written=sorted(r.scene for r in results if r.status == "written"),
        scenes_skipped=skipped,
        scenes_failed=sorted(r.scene for r in failed),
        keyframes_written=sum(r.keyframes for r in results),
        keyframes_total=keyframes_total,
        errors=errors,
        manifest_written=manifest_written,
        seconds=time.perf_counter() - t0,
    )


def _run(source, todo, sweeps_uri, opts, use_ray, num_cpus, address, progress, total, initial) -> list[SceneResult]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="scene", desc="prepare", disable=not progress)
    results: list[SceneResult] = []
    try:
        if not use_ray:
            reader = _get_reader(source)
            for scene in todo:
                results.append(prepare_scene(reader, scene, sweeps_uri, **opts))
                bar.update(1)
            return results
        if not todo:
            return results
        import ray

        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False}
            if address:
                kwargs["address"] = address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            ray.init(**kwargs)
            started = True
        try:
            task = ray.remote(num_cpus=1, max_retries=2)(_scene_task)
            src_ref = ray.put(source)
            pending = {task.remote(src_ref, s, sweeps_uri, opts): s for s in todo}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    scene = pending.pop(ref)
                    try:
                        results.append(ray.get(ref))
                    except Exception as e:  # worker died, task could not run, ...
                        results.append(SceneResult(scene, "failed", errors=[{
                            "scene": scene, "item": scene, "message": f"{type(e).__name__}: {e}", "fatal": True}]))
                    bar.update(1)
        finally:
            if started:
                ray.shutdown()
        return results
    finally:
        bar.close()


def prepare_dataset(
    dataset: str,
    dataroot: str,
    out: str,
    *,
    version: str | None = None,
    split: str | None = None,
    **kwargs: Any,
) -> PrepareSummary:
    """``prepare`` on the reader ``make_reader(dataset, dataroot, version, split)`` builds."""
    spec = ReaderSpec(dataset, dataroot, version, split)
    info = {"version": version, "split": split}
    return prepare(spec, out, job_info=info, **kwargs)
