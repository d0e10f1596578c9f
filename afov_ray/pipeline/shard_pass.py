"""The one shard-pass layer every pipeline pass is built on.

A pass turns input folders into an output folder of shards, one item (a scene) at a time::

    items() -> [PassItem]          driver: the work, cheap to list (validated up front)
    setup()                        worker: once per process / actor (load a model, a dictionary)
    run_item(item) -> ItemResult   worker: read inputs, compute, commit <out>/<key>.parquet atomically
    summarize(records) -> dict     driver: pass statistics from every finished item's record

``run_pass`` does the rest the same way for every pass:

- **resume**: an item is done when ``<out>/_done/<key>.json`` exists and its shard has the recorded size;
  re-running skips done items. The record is written by the worker right after the shard, so a killed
  driver loses nothing that finished. Records carry the pass's settings fingerprint: re-running with
  other settings into the same folder is a ``ConfigError`` instead of a silent mix.
- **execution**: ``compute = "tasks"`` (stateless CPU work: Ray tasks, one per item) or ``"actors"``
  (model-holding work: a pool of at most ``exec.max_actors`` Ray actors, spread over the nodes, fed one
  item at a time), or in this process with ``exec.use_ray=false``. Retries (``exec.max_retries``) are for
  a worker or node that died, never for a data or config error.
- **isolation**: an exception in one item fails that item only (recorded with its message); sub-items
  a pass skips (a bad keyframe, image or scan) are recorded by the pass in ``ItemResult.skipped``. An
  item that produces nothing fails ("no rows"), so nothing is ever marked done empty. A ``ConfigError``
  stops the pass at once.
- **outputs**: ``_errors.jsonl`` (every skipped sub-item and failed item), ``_summary.json`` and, last,
  ``_manifest.json`` when every selected item is done: its presence means "this folder is complete".
- **progress and exit code**: a progress bar over items; ``PassSummary.exit_code`` is 0 when everything
  was done cleanly, 1 when some item failed or a sub-item was skipped, 3 when nothing was produced.
  ``warnings()`` (facts about the inputs, e.g. labels without their table) are printed in the summary.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from afov_ray.config import ConfigError, option
from afov_ray.errors import DataError
from afov_ray.log import get_logger, progress
from afov_ray.runtime import require_resources
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import HashingStream, atomic_output, atomic_write_bytes, atomic_write_json, cleanup_stale
from afov_ray.storage.manifest import MANIFEST_NAME, ShardEntry, write_manifest

log = get_logger(__name__)

DONE_DIR = "_done"
ERRORS_NAME = "_errors.jsonl"
SUMMARY_NAME = "_summary.json"

EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG, EXIT_NOTHING = 0, 1, 2, 3


@dataclass
class ExecConfig:
    use_ray: bool = option(True, "run items as Ray tasks / actors; false: one by one in this process (debugging)")
    cpus_per_item: float = option(1.0, "CPUs reserved per item (task passes) or per actor (actor passes)", gt=0)
    max_actors: int = option(2, "actor passes: at most this many actors (each holds a model)", min=1)
    use_gpu: bool = option(False, "actor passes: one GPU share per actor (gpus_per_actor)")
    gpus_per_actor: float = option(1.0, "GPUs per actor when use_gpu", gt=0)
    max_retries: int = option(2, "re-runs of an item whose worker or node died (data errors are never retried)", min=0)
    require_manifest: bool = option(True, "input folders must be complete (have _manifest.json); false: use the "
                                          "shards present")
    progress: bool = option(True, "show a progress bar")


@dataclass
class PassItem:
    key: str                        # the item name (a scene): the output shard is <out>/<key>.parquet
    payload: dict = field(default_factory=dict)


@dataclass
class ItemResult:
    key: str
    status: Literal["written", "failed"] = "written"
    shard: dict | None = None       # ShardEntry as a dict (None for passes that write only records)
    stats: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)   # [{"item", "message"}] sub-items left out
    error: dict | None = None       # {"item", "message"} when the item failed
    seconds: float = 0.0
    node: str = ""
    fatal: bool = False             # a ConfigError: stop the whole pass


@dataclass
class PassSummary:
    name: str
    out: str
    items_total: int
    done_before: list[str]          # items already done when the run started (skipped)
    written: list[str]              # items committed by this run
    failed: list[dict]
    skipped: list[dict]
    stats: dict
    manifest_written: bool
    seconds: float
    nodes: list[str]
    exit_code: int
    warnings: list[str] = field(default_factory=list)   # facts about the inputs the user should know

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """A human summary naming every failed item and skipped sub-item."""
        out = [f"{self.name}: {self.items_total} items, {len(self.done_before)} already done, "
               f"{len(self.written)} new, {len(self.failed)} failed, {len(self.skipped)} sub-items skipped "
               f"({self.seconds:.1f} s) -> {self.out}"
               + ("" if self.manifest_written else "  [folder incomplete: no manifest]")]
        for w in self.warnings:
            out.append(f"  WARNING {w}")
        for f in self.failed:
            out.append(f"  FAILED {f['item']}: {f['message']}")
        for s in self.skipped[:50]:
            out.append(f"  skipped {s['item']}: {s['message']}")
        if len(self.skipped) > 50:
            out.append(f"  ... and {len(self.skipped) - 50} more skipped (see {U.join(self.out, ERRORS_NAME)})")
        return out


class ShardPass:
    """Base class of a pass (see the module docstring). Subclasses are plain picklable objects."""

    name = "pass"
    compute: Literal["tasks", "actors"] = "tasks"
    schema_name = ""
    schema_version = 1
    writes_shards = True

    def __init__(self, out_uri: str, exec_cfg: ExecConfig | None = None):
        self.out = str(out_uri)
        self.exec = exec_cfg or ExecConfig()

    # --- to implement --------------------------------------------------------------------------
    def items(self) -> list[PassItem]:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """Settings that change the output (stored in every record and the manifest)."""
        return {}

    def setup(self) -> None:
        """Once per worker process or actor, before the first item."""

    def run_item(self, item: PassItem) -> ItemResult:
        raise NotImplementedError

    def summarize(self, records: list[dict]) -> dict:
        return {}

    def warnings(self) -> list[str]:
        """Facts about the inputs the user should know (printed in the summary; the exit code is unchanged),
        e.g. labels that exist without their table. Called on the driver after ``items()``."""
        return []

    def manifest_info(self) -> dict:
        return {}

    # --- helpers for run_item ------------------------------------------------------------------
    def shard_uri(self, key: str) -> str:
        return U.join(self.out, f"{U.check_component(key, 'item name')}.parquet")

    def commit_table(self, key: str, table: pa.Table, **write_options) -> dict:
        """Write ``table`` to ``<out>/<key>.parquet`` atomically (``write_options`` for ``pq.write_table``;
        default zstd); returns its ShardEntry as a dict."""
        uri = self.shard_uri(key)
        with atomic_output(uri) as stream:
            pq.write_table(table, stream, **{"compression": "zstd", **write_options})
        assert isinstance(stream, HashingStream)
        return asdict(ShardEntry(name=U.basename(uri), rows=table.num_rows, bytes=stream.bytes_written,
                                 sha256=stream.sha256))

# ------------------------------------------------------------------------------------------------
# records


def _record_uri(out: str, key: str) -> str:
    return U.join(out, DONE_DIR, f"{U.check_component(key, 'item name')}.json")


def _write_record(p: ShardPass, res: ItemResult) -> None:
    rec = {"key": res.key, "shard": res.shard, "stats": res.stats, "skipped": res.skipped,
           "seconds": round(res.seconds, 3), "node": res.node, "fingerprint": p.fingerprint(),
           "schema": p.schema_name, "schema_version": p.schema_version}
    atomic_write_json(_record_uri(p.out, res.key), json.loads(json.dumps(rec, default=_jsonable)))


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_records(p: ShardPass) -> dict[str, dict]:
    """Valid done records of the output folder: {key: record}. A record whose fingerprint differs from
    the pass's settings raises ConfigError (the folder was written with other settings)."""
    import pyarrow.fs as pafs

    fs, path = U.resolve(p.out)
    sizes = {U.basename(i.path): i.size for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
             if i.type == pafs.FileType.File}
    fp = json.loads(json.dumps(p.fingerprint(), default=_jsonable))
    records: dict[str, dict] = {}
    for name in U.listdir(U.join(p.out, DONE_DIR)):
        if not name.endswith(".json"):
            continue
        try:
            rec = json.loads(U.read_bytes(U.join(p.out, DONE_DIR, name)))
            key = rec["key"]
        except (ValueError, KeyError, TypeError, OSError):
            continue  # unreadable record: the item is redone
        if rec.get("schema_version") != p.schema_version:
            continue
        if rec.get("fingerprint") != fp:
            diff = sorted(k for k in set(fp) | set(rec.get("fingerprint") or {})
                          if (rec.get("fingerprint") or {}).get(k) != fp.get(k))
            raise ConfigError(f"{p.out} was written by a {p.name} run with other settings ({', '.join(diff[:6])}); "
                              f"write to a new folder, or delete it to start over")
        shard = rec.get("shard")
        if p.writes_shards and (not shard or sizes.get(shard["name"]) != shard["bytes"]):
            continue  # shard missing or changed: redo
        records[key] = rec
    return records

# ------------------------------------------------------------------------------------------------
# running one item (worker side)


_SETUP_CACHE: dict[str, ShardPass] = {}


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    return "local"


def execute_item(p: ShardPass, item: PassItem) -> ItemResult:
    """Run one item with isolation; the done record is written here, right after the shard."""
    t0 = time.perf_counter()
    try:
        U.check_component(item.key, "item name")
        res = p.run_item(item)
    except ConfigError as e:
        return ItemResult(item.key, "failed", error={"item": item.key, "message": str(e)}, fatal=True)
    except DataError as e:
        res = ItemResult(item.key, "failed", error={"item": e.item, "message": e.message})
    except U.UnsafePathError as e:
        res = ItemResult(item.key, "failed", error={"item": item.key, "message": str(e)})
    except Exception as e:  # noqa: BLE001 - one item's bug or bad data must not stop the others
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        res = ItemResult(item.key, "failed", error={"item": item.key,
                                                    "message": f"{type(e).__name__}: {e}{where}"})
    res.seconds = time.perf_counter() - t0
    res.node = _node_id()
    if res.status == "written":
        if p.writes_shards and not res.shard:
            reasons = "; ".join(f"{s['item']}: {s['message']}" for s in res.skipped[:3])
            res.status = "failed"
            res.error = {"item": item.key, "message": "produced no rows" + (f" ({reasons})" if reasons else "")}
        else:
            _write_record(p, res)
    return res


def _cached_setup(p: ShardPass) -> ShardPass:
    key = f"{type(p).__module__}.{type(p).__name__}|{p.out}|{json.dumps(p.fingerprint(), sort_keys=True, default=str)}"
    if key not in _SETUP_CACHE:
        p.setup()
        _SETUP_CACHE.clear()
        _SETUP_CACHE[key] = p
    return _SETUP_CACHE[key]


def _task_entry(p: ShardPass, item: PassItem) -> ItemResult:
    return execute_item(_cached_setup(p), item)


class _PassActor:
    def __init__(self, p: ShardPass):
        self.p = p
        self.config_error: str | None = None
        try:
            p.setup()
        except ConfigError as e:  # a bad setting: every item would fail the same way -> stop the pass, no retries
            self.config_error = str(e)

    def run(self, item: PassItem) -> ItemResult:
        if self.config_error is not None:
            return ItemResult(item.key, "failed", error={"item": item.key, "message": self.config_error}, fatal=True)
        return execute_item(self.p, item)

    def node(self) -> str:
        return _node_id()

# ------------------------------------------------------------------------------------------------
# the driver


def _fail(key: str, message: str) -> ItemResult:
    return ItemResult(key, "failed", error={"item": key, "message": message})


def _run_local(p: ShardPass, todo: list[PassItem], bar) -> list[ItemResult]:
    p.setup()
    out = []
    for it in todo:
        res = execute_item(p, it)
        out.append(res)
        bar.update(1)
        if res.fatal:
            raise ConfigError(res.error["message"])
    return out


def _run_tasks(p: ShardPass, todo: list[PassItem], bar) -> list[ItemResult]:
    import ray

    task = ray.remote(_task_entry).options(num_cpus=p.exec.cpus_per_item, max_retries=p.exec.max_retries,
                                           retry_exceptions=False)
    ref_p = ray.put(p)
    pending = {task.remote(ref_p, it): it for it in todo}
    out = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                it = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - worker / node died beyond its retries
                    res = _fail(it.key, f"worker failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                out.append(res)
                bar.update(1)
                if res.fatal:
                    raise ConfigError(res.error["message"])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return out


def _run_actors(p: ShardPass, todo: list[PassItem], bar) -> list[ItemResult]:
    import ray

    res_opts: dict[str, Any] = {"num_cpus": p.exec.cpus_per_item}
    if p.exec.use_gpu:
        res_opts["num_gpus"] = p.exec.gpus_per_actor
    require_resources({"CPU": p.exec.cpus_per_item, "GPU": res_opts.get("num_gpus", 0.0)}, 1,
                      f"one {p.name} actor (exec.cpus_per_item={p.exec.cpus_per_item}"
                      + (f", exec.gpus_per_actor={p.exec.gpus_per_actor})" if p.exec.use_gpu else ")"))
    n = max(1, min(p.exec.max_actors, len(todo)))
    Actor = ray.remote(_PassActor).options(**res_opts, max_restarts=1, max_task_retries=p.exec.max_retries,
                                           scheduling_strategy="SPREAD")
    ref_p = ray.put(p)
    actors = [Actor.remote(ref_p) for _ in range(n)]
    queue = list(todo)
    running: dict = {}
    out = []

    def feed(actor):
        if queue:
            it = queue.pop(0)
            running[actor.run.remote(it)] = (actor, it)

    try:
        for a in actors:
            feed(a)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                actor, it = running.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the actor died beyond its restarts
                    res = _fail(it.key, f"actor failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                    actor = Actor.remote(ref_p)
                out.append(res)
                bar.update(1)
                if res.fatal:
                    raise ConfigError(res.error["message"])
                feed(actor)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        for a in actors:
            ray.kill(a, no_restart=True)
    return out


def run_pass(p: ShardPass, items: list[PassItem] | None = None) -> PassSummary:
    """Run pass ``p`` over its items (or the ``items`` given), resuming; see the module docstring."""
    t0 = time.perf_counter()
    items = p.items() if items is None else items
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise DataError(p.out, f"item names are not unique: {dup[:5]}")
    for k in keys:
        try:
            U.check_component(k, f"{p.name} item name")
        except U.UnsafePathError as e:
            raise DataError(k, str(e)) from None
    U.makedirs(p.out)
    cleanup_stale(p.out, older_than_s=0.0)
    records = load_records(p)
    before = [k for k in keys if k in records]
    todo = [it for it in items if it.key not in records]
    if todo and U.exists(U.join(p.out, MANIFEST_NAME)):
        U.delete(U.join(p.out, MANIFEST_NAME))  # "manifest present" must mean "complete"
    if todo:
        log.info("%s: %d items to do (%d already done) -> %s", p.name, len(todo), len(before), p.out)
    bar = progress(total=len(items), initial=len(before), desc=p.name, unit="item", enabled=p.exec.progress)
    try:
        if not todo:
            results = []
        elif not p.exec.use_ray:
            results = _run_local(p, todo, bar)
        elif p.compute == "actors":
            results = _run_actors(p, todo, bar)
        else:
            results = _run_tasks(p, todo, bar)
    finally:
        bar.close()
    failed = [r.error for r in results if r.status == "failed" and r.error]
    for f in failed:
        log.warning("%s: %s failed: %s", p.name, f["item"], f["message"])
    records = load_records(p)
    done = [records[k] for k in keys if k in records]
    skipped = [dict(s, key=rec["key"]) for rec in done for s in rec.get("skipped", [])]
    errors = [dict(s, stage=p.name) for s in skipped] + [dict(f, stage=p.name, fatal=True) for f in failed]
    atomic_write_bytes(U.join(p.out, ERRORS_NAME),
                       "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in errors).encode())
    stats = p.summarize(done)
    complete = all(k in records for k in keys)
    manifest_written = False
    if complete and p.writes_shards:
        entries = [ShardEntry(**rec["shard"]) for rec in records.values() if rec.get("shard")]
        write_manifest(p.out, entries, schema=p.schema_name, schema_version=p.schema_version,
                       extra={"pass": p.name, "settings": json.loads(json.dumps(p.fingerprint(), default=str)),
                              "skipped": len(skipped), **p.manifest_info()})
        manifest_written = True
    if not done:
        code = EXIT_NOTHING if keys else EXIT_OK
    elif failed or skipped:
        code = EXIT_PARTIAL
    else:
        code = EXIT_OK
    summary = PassSummary(
        name=p.name, out=p.out, items_total=len(keys), done_before=before,
        written=sorted(r.key for r in results if r.status == "written"), failed=failed, skipped=skipped, stats=stats,
        manifest_written=manifest_written, seconds=time.perf_counter() - t0,
        nodes=sorted({r.node for r in results if r.node}), exit_code=code, warnings=list(p.warnings()))
    atomic_write_json(U.join(p.out, SUMMARY_NAME), json.loads(json.dumps(summary.to_dict(), default=_jsonable)))
    return summary
