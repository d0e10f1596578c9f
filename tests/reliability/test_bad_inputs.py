"""Bad inputs, as a careless or hostile user gives them, to the real jobs (``python jobs/<name>.py ...``).

One table of cases. Each case runs one job as a subprocess on the generated inputs of ``harness.build_inputs``
(or on a private copy of them that the case first damages) and asserts:

- the exit code (0 done, 1 data error or partial result, 2 bad config, 3 nothing produced);
- the message on stderr names the key, file or scene at fault (``says``; for a partial result, the summary on
  stdout may name it), and never a secret (``hides``);
- no Python traceback on stderr;
- nothing that existed before the case changed or vanished (every file of the inputs and earlier outputs is
  hashed before and after), and new files appear only in the case's own output folder (so nothing was
  written outside it, e.g. through a ``../../`` scene name);
- for cases that must give a result (a partial one included), ``check`` looks at that result.

Config errors fail before Ray starts (a few seconds each); data cases run their pass in the job's process
(``exec.use_ray=false``). One case starts a local Ray (the 4-worker preset, which must fail fast).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.harness import TALLY, TRACEBACK, Outcome, build_inputs, damage, hash_tree, new_files, run_job

# --------------------------------------------------------------------------------------------------
# damage done to a private copy of the inputs (``root``)


def _sweeps(root: Path) -> Path:
    return root / "out" / "sweeps"


def _run(root: Path) -> Path:
    return next((root / "out" / "teacher").iterdir())


def _remanifest(folder: Path) -> None:
    """Write a fresh manifest for the shards now in ``folder`` (as if the damage came with a valid manifest)."""
    from afov_ray.storage.manifest import read_manifest, write_folder_manifest

    doc = read_manifest(str(folder))
    write_folder_manifest(str(folder), schema=doc["schema"], schema_version=doc["schema_version"], extra=doc["job"])


def _rewrite_column(path: Path, column: str, value: str) -> None:
    t = pq.read_table(path)
    i = t.column_names.index(column)
    t = t.set_column(i, t.schema.field(i), pa.array([value] * t.num_rows, t.schema.field(i).type))
    pq.write_table(t, path)


def _edit_manifest(folder: Path, **entry) -> None:
    p = folder / "_manifest.json"
    doc = json.loads(p.read_text())
    doc["shards"][0].update(entry)
    p.write_text(json.dumps(doc))


def dup_scene(root: Path) -> None:
    p = root / "ns" / "v1.0-trainval" / "scene.json"
    scenes = json.loads(p.read_text())
    scenes[1]["name"] = scenes[0]["name"]
    p.write_text(json.dumps(scenes))


def no_lidarseg(root: Path) -> None:
    (root / "ns" / "v1.0-trainval" / "lidarseg.json").unlink()


def bad_table_json(root: Path) -> None:
    (root / "ns" / "v1.0-trainval" / "sample.json").write_text('[{"token": "abc", ')


def missing_table(root: Path) -> None:
    (root / "ns" / "v1.0-trainval" / "sample_data.json").unlink()


def empty_dataroot(root: Path) -> None:
    (root / "empty").mkdir()


def bad_points(root: Path) -> None:
    """The first keyframe's point file loses 3 bytes (not a multiple of 5 float32 any more)."""
    p = sorted((root / "ns" / "samples" / "LIDAR_TOP").iterdir())[0]
    p.write_bytes(p.read_bytes()[:-3])


def edit_sha(root: Path) -> None:
    _edit_manifest(_sweeps(root), sha256="0" * 64)


def swap_shards(root: Path) -> None:
    s = _sweeps(root)
    (s / "scene-0001.parquet").rename(s / "tmp.parquet")
    (s / "scene-0003.parquet").rename(s / "scene-0001.parquet")
    (s / "tmp.parquet").rename(s / "scene-0003.parquet")


def swap_shards_remanifested(root: Path) -> None:
    swap_shards(root)
    _remanifest(_sweeps(root))


def dotdot_scene_sweeps(root: Path) -> None:
    _rewrite_column(_sweeps(root) / "scene-0001.parquet", "scene", "../../../X")
    _remanifest(_sweeps(root))


def dotdot_scene_pairing(root: Path) -> None:
    _rewrite_column(root / "out" / "pairing" / "scene-0001.parquet", "scene", "../../../X")
    _remanifest(root / "out" / "pairing")


def dotdot_lidar_token(root: Path) -> None:
    _rewrite_column(_sweeps(root) / "scene-0003.parquet", "lidar_token", "../../../../X")
    _remanifest(_sweeps(root))


def dotdot_manifest_name(root: Path) -> None:
    _edit_manifest(_sweeps(root), name="../../../etc/x.parquet")


def corrupt_parquet(root: Path) -> None:
    p = _sweeps(root) / "scene-0001.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2:] = b"\x00" * (len(data) - len(data) // 2)     # the footer is gone
    p.write_bytes(bytes(data))
    import hashlib
    _edit_manifest(_sweeps(root), sha256=hashlib.sha256(bytes(data)).hexdigest())


def corrupt_parquet_no_manifest(root: Path) -> None:
    (_sweeps(root) / "_manifest.json").unlink()
    (_sweeps(root) / "scene-0001.parquet").write_bytes(b"PAR1 this is not parquet")


def no_sweeps_manifest(root: Path) -> None:
    (_sweeps(root) / "_manifest.json").unlink()


def no_pairing_manifest(root: Path) -> None:
    (root / "out" / "pairing" / "_manifest.json").unlink()


def missing_image(root: Path) -> None:
    """One camera image of scene-0001's first keyframe is gone (and a tiny BPE vocabulary for the tiny CLIP)."""
    merges = ["c a", "ca r</w>", "r o", "ro a", "roa d</w>", "t r", "e e", "tr ee</w>"]
    (root / "bpe.txt.gz").write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
    t = pq.read_table(_sweeps(root) / "scene-0001.parquet", columns=["cam_image_path"])
    (root / "ns" / t.column("cam_image_path")[0].as_py()[0]).unlink()


def text100(root: Path) -> None:
    """The teacher run's text table has 100 rows instead of 175."""
    p = _run(root) / "text_embedding.npy"
    buf = io.BytesIO()
    np.save(buf, np.load(p)[:100])
    p.write_bytes(buf.getvalue())


def bad_run_json(root: Path) -> None:
    (_run(root) / "run.json").write_text("{not json")


def png_config(root: Path) -> None:
    shutil.copyfile(next((root / "ns" / "maps").iterdir()), root / "preset.yaml")


# --------------------------------------------------------------------------------------------------
# checks of cases that must give a (partial) result


def _summary(folder: Path) -> dict:
    return json.loads((folder / "_summary.json").read_text())


def check_no_labels(root: Path, new: Path, proc) -> None:
    sweeps = new / "o" / "sweeps"
    assert (sweeps / "_manifest.json").exists()
    for shard in sweeps.glob("*.parquet"):
        assert pq.read_table(shard, columns=["labels"]).column("labels").null_count > 0
    assert _summary(sweeps)["stats"]["keyframes_unlabelled"] == 4


def check_bad_points(root: Path, new: Path, proc) -> None:
    sweeps = new / "o" / "sweeps"
    s = _summary(sweeps)
    assert s["stats"]["keyframes"] == 3 and len(s["skipped"]) == 1, s
    assert ".pcd.bin" in s["skipped"][0]["message"] or ".pcd.bin" in s["skipped"][0]["item"]
    assert (sweeps / "_manifest.json").exists()          # the scene is done, with one keyframe left out
    assert "skipped" in proc.stdout


def check_missing_image(root: Path, new: Path, proc) -> None:
    images = next((new / "t").iterdir()) / "images"
    s = _summary(images)
    assert s["stats"]["images"] == 23 and len(s["skipped"]) == 1, s
    assert "CAM_" in s["skipped"][0]["item"]
    assert sorted(p.name for p in images.glob("*.parquet")) == ["scene-0001.parquet", "scene-0003.parquet"]
    assert (images / "_manifest.json").exists()
    assert "skipped scene-0001/" in proc.stdout          # the summary says what was skipped
    errors = [json.loads(x) for x in (images / "_errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1


def check_one_scene_failed(root: Path, new: Path, proc) -> None:
    """scene-0001 failed (named), scene-0003 written, no manifest (the folder is incomplete)."""
    out = next(p for p in new.rglob("_summary.json")).parent
    s = _summary(out)
    assert [f["item"] for f in s["failed"]] and "scene-0001" in json.dumps(s["failed"]), s
    assert s["written"] == ["scene-0003"], s
    assert not (out / "_manifest.json").exists()
    assert "FAILED" in proc.stdout


# --------------------------------------------------------------------------------------------------
# the table

TRAIN = ("data.pairing={root}/out/pairing", "data.split_file={root}/out/splits.json", "model.name=minkunet18",
         "model.init=null", "loop.tracking.tracking_uri={reg}", "loop.tracking.register_as=afov-distill",
         "run.storage_path={new}/ray", "scale.use_gpu=false", "loop.batch_size=1")
PREP = ("prepare.dataroot={root}/ns", "out={new}/o", "prepare.exec.use_ray=false")
TEACH = ("sweeps={root}/out/sweeps", "out={new}/t", "teacher.dataroot={root}/ns", "teacher.exec.use_ray=false")
MASKCLIP_TINY = ("teacher.teacher=maskclip", "teacher.maskclip.model=tiny", "teacher.maskclip.device=cpu",
                 "teacher.maskclip.allow_random_weights=true", "teacher.maskclip.bpe_path={root}/bpe.txt.gz",
                 "teacher.maskclip.image_short_side=32")
PAIR = ("sweeps={root}/out/sweeps", "teacher_run={run}", "out={new}/p", "pair.exec.use_ray=false")
PRED = ("input={root}/out/pairing", "out={new}/pred", "predict.model={root}/model", "predict.exec.use_ray=false")
EVAL = ("pred={root}/out/pred", "out={new}/eval", "eval.exec.use_ray=false", "eval.plots=false")


@dataclass(frozen=True)
class Case:
    id: str
    job: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...] = ()               # stderr contains each (after formatting with the case's paths)
    mutate: Callable[[Path], None] | None = None
    hides: tuple[str, ...] = ()              # neither stdout nor stderr contains any
    check: Callable | None = None            # (root, new, proc) -> None: the result is right
    timeout: float = 300


def C(id, job, args, code, says=(), **kw) -> Case:
    return Case(id, job, tuple(args), code, tuple([says] if isinstance(says, str) else says), **kw)


CASES = [
    # --- config: one line naming the key, exit 2, before any work (and the registry db untouched) ---------------
    C("batch_size_0", "distill", TRAIN + ("loop.batch_size=0",), 2, "loop.batch_size"),
    C("batch_size_negative", "distill", TRAIN + ("loop.batch_size=-1",), 2, "loop.batch_size"),
    C("num_epochs_negative", "distill", TRAIN + ("loop.num_epochs=-1",), 2, "loop.num_epochs"),
    C("num_epochs_not_a_number", "finetune", TRAIN + ("loop.num_epochs=abc",), 2, ("loop.num_epochs", "abc")),
    C("batch_size_null", "distill", TRAIN + ("loop.batch_size=null",), 2, "loop.batch_size"),
    C("model_name_misspelt", "distill", TRAIN + ("model.name=res16unet43c",), 2, ("model.name", "res16unet34c")),
    C("engine_misspelt", "finetune", TRAIN + ("model.engine=mink",), 2, "model.engine"),
    C("ingest_grid_bad", "distill", TRAIN + ("ingest.grid=spherical",), 2, "ingest.grid"),
    C("voxel_size_0", "distill", TRAIN + ("ingest.voxel_size=0",), 2, "ingest.voxel_size"),
    C("negative_lr", "distill", TRAIN + ("loop.optim.lr=-0.1",), 2, "loop.optim.lr"),
    C("optimizer_unknown", "finetune", TRAIN + ("loop.optim.optimizer=adam",), 2, "loop.optim.optimizer"),
    C("workers_0", "distill", TRAIN + ("scale.num_workers=0",), 2, "scale.num_workers"),
    C("bool_not_a_bool", "distill", TRAIN + ("scale.use_gpu=maybe",), 2, "scale.use_gpu"),
    C("unknown_section_typo", "distill", TRAIN + ("lopo.num_epochs=1",), 2, ("lopo", "loop")),
    C("unknown_leaf_typo", "distill", TRAIN + ("loop.num_epoch=1",), 2, "loop.num_epochs"),
    C("override_without_equals", "distill", TRAIN + ("loop.num_epochs",), 2, "loop.num_epochs"),
    C("override_bad_yaml", "distill", TRAIN + ("loop.optim.lr=[1",), 2, "loop.optim.lr"),
    C("config_file_missing", "distill", ("--config", "{root}/nope.yaml") + TRAIN, 2, "nope.yaml"),
    C("config_file_not_text", "distill", ("--config", "{root}/preset.yaml") + TRAIN, 2, "preset.yaml",
      mutate=png_config),
    C("from_run_unknown", "distill", ("--from-run", "0123456789abcdef", "--tracking-uri", "{reg}"), 2,
      "0123456789abcdef"),
    C("tmp_without_teacher_run", "tmp", TRAIN + ("scale.num_workers=1",), 2, "tmp.teacher_run"),
    C("preset_4_workers_too_few_scans", "tmp", TRAIN + ("tmp.teacher_run={run}",), 2, "scale.num_workers"),
    C("prepare_no_dataroot", "prepare", ("out={new}/o",), 2, "prepare.dataroot"),
    C("prepare_compression_unknown", "prepare", PREP + ("prepare.compression=brotli",), 2, "prepare.compression"),
    C("prepare_into_folder_of_other_settings", "prepare", PREP[:1] + ("out={root}/out", "prepare.cameras=false",
                                                                      "prepare.exec.use_ray=false"), 2,
      ("sweeps", "other settings")),
    C("teacher_max_actors_0", "teacher", TEACH + ("teacher.exec.max_actors=0",), 2, "teacher.exec.max_actors"),
    C("teacher_maskclip_without_weights", "teacher", TEACH + ("teacher.teacher=maskclip",), 2, "maskclip.weights"),
    C("pair_without_teacher_run", "pair", ("sweeps={root}/out/sweeps", "out={new}/p"), 2, "teacher_run"),
    C("predict_without_model", "predict", PRED + ("predict.model=",), 2, "predict.model"),
    C("predict_voxel_size_not_the_models", "predict", PRED + ("predict.voxel_size=0.5",), 2,
      "predict.voxel_size"),
    C("tracking_server_down_with_credentials", "distill",
      TRAIN + ("loop.tracking.tracking_uri=http://user:s3cret@127.0.0.1:9",), 2,
      ("loop.tracking.tracking_uri", "127.0.0.1:9"), hides=("s3cret",)),
    # --- the dataroot -------------------------------------------------------------------------------------------
    C("dataroot_missing", "prepare", ("prepare.dataroot={root}/nope",) + PREP[1:], 1, "nope"),
    C("dataroot_empty", "prepare", ("prepare.dataroot={root}/empty",) + PREP[1:], 1, ("empty", "v1.0-trainval"),
      mutate=empty_dataroot),
    C("dataroot_without_version_folder", "prepare", PREP + ("prepare.version=v1.0-mini",), 1, "v1.0-mini"),
    C("dataroot_is_a_file", "prepare", ("prepare.dataroot={root}/out/splits.json",) + PREP[1:], 1, "splits.json"),
    C("split_unknown", "prepare", PREP + ("prepare.split=nosuch",), 1, "nosuch"),
    C("scene_unknown", "prepare", PREP + ("prepare.scenes=[scene-9999]",), 1, "scene-9999"),
    C("duplicate_scene_names", "prepare", PREP, 1, ("duplicate scene", "scene-0001"), mutate=dup_scene),
    C("table_not_json", "prepare", PREP, 1, "sample.json", mutate=bad_table_json),
    C("table_missing", "prepare", PREP, 1, "sample_data.json", mutate=missing_table),
    C("no_lidarseg_table_warns", "prepare", PREP, 0, ("no ground-truth labels", "lidarseg"), mutate=no_lidarseg,
      check=check_no_labels),
    C("point_file_truncated", "prepare", PREP, 1, (".pcd.bin",), mutate=bad_points, check=check_bad_points),
    C("out_is_a_file", "prepare", PREP[:1] + ("out={root}/out/splits.json", "prepare.exec.use_ray=false"), 1,
      "splits.json"),
    C("s3_uri_with_dotdot", "prepare", PREP[:1] + ("out=s3://bucket/a/../../etc", "prepare.exec.use_ray=false"), 1,
      "s3://bucket/a/../../etc"),
    # --- shard folders: verified on read ------------------------------------------------------------------------
    C("sweeps_missing", "teacher", ("sweeps={root}/nope",) + TEACH[1:], 1, "nope"),
    C("sweeps_without_manifest", "teacher", TEACH, 1, "_manifest.json", mutate=no_sweeps_manifest),
    C("manifest_sha256_edited", "teacher", TEACH, 1, ("scene-0001.parquet", "sha256"), mutate=edit_sha,
      check=check_one_scene_failed),
    C("shards_swapped", "teacher", TEACH, 1, "scene-0001.parquet", mutate=swap_shards),
    # both scenes fail: nothing produced (exit 3)
    C("shards_swapped_with_new_manifest", "teacher", TEACH, 3, ("scene-0001", "file name"),
      mutate=swap_shards_remanifested),
    C("manifest_names_dotdot_shard", "teacher", TEACH, 1, ("_manifest.json", "../../../etc/x.parquet"),
      mutate=dotdot_manifest_name),
    C("parquet_corrupt", "teacher", TEACH, 1, ("scene-0001.parquet", "Parquet"), mutate=corrupt_parquet),
    C("parquet_corrupt_without_manifest", "teacher", TEACH + ("teacher.exec.require_manifest=false",), 1,
      ("scene-0001.parquet", "Parquet"), mutate=corrupt_parquet_no_manifest),
    C("teacher_scene_column_dotdot", "teacher", TEACH, 1, ("scene-0001", "../../../X"),
      mutate=dotdot_scene_sweeps, check=check_one_scene_failed),
    # a teacher that reads the images (the simulated one renders from the scene description): tiny MaskCLIP
    C("teacher_missing_camera_image", "teacher", TEACH + MASKCLIP_TINY, 1, ("CAM_",), mutate=missing_image,
      check=check_missing_image),
    # --- teacher runs -------------------------------------------------------------------------------------------
    C("pair_teacher_run_missing", "pair", ("sweeps={root}/out/sweeps", "teacher_run={root}/nope", "out={new}/p",
                                           "pair.exec.use_ray=false"), 1, ("nope", "run.json")),
    C("pair_teacher_run_is_a_shard_folder", "pair", ("sweeps={root}/out/sweeps", "teacher_run={root}/out/sweeps",
                                                     "out={new}/p", "pair.exec.use_ray=false"), 1, "run.json"),
    C("pair_run_json_garbage", "pair", PAIR, 1, "run.json", mutate=bad_run_json),
    C("pair_text_table_100_rows", "pair", PAIR, 1, "text_embedding.npy", mutate=text100),
    C("pair_dictionary_not_the_runs", "pair", PAIR + ("pair.dictionary=kitti",), 1, "kitti"),
    C("pair_scene_column_dotdot", "pair", PAIR, 1, ("scene-0001", "../../../X"), mutate=dotdot_scene_sweeps,
      check=check_one_scene_failed),
    C("tmp_text_table_100_rows", "tmp", TRAIN + ("tmp.teacher_run={run}", "scale.num_workers=1"), 1,
      "text_embedding.npy", mutate=text100),
    # --- training data and initial weights (all before Ray Train starts) ----------------------------------------
    C("train_on_sweeps_wrong_schema", "distill", TRAIN + ("data.pairing={root}/out/sweeps",), 1,
      ("scene-0001.parquet", "missing column")),
    C("train_pairing_without_manifest", "distill", TRAIN, 1, "_manifest.json", mutate=no_pairing_manifest),
    C("train_split_not_in_split_file", "distill", TRAIN + ("data.train_split=nosuch",), 1,
      ("nosuch", "data.train_split")),
    C("train_split_file_missing", "finetune", TRAIN + ("data.split_file={root}/nope.json",), 1, "nope.json"),
    C("init_path_missing", "distill", TRAIN + ("model.init={root}/nope.pt",), 1, "nope.pt"),
    C("init_registered_name_missing", "distill", TRAIN + ("model.init=models:/nosuch@current",), 1,
      "models:/nosuch@current"),
    C("init_pickled_file_refused", "distill", TRAIN + ("model.init={root}/evil/pickled.pt",), 1,
      ("pickled.pt", "weights-only")),
    C("init_torchscript_refused", "finetune", TRAIN + ("model.init={root}/evil/scripted.pt",), 1, "scripted.pt"),
    C("init_pickled_registered_model_refused", "distill", TRAIN + ("model.init=models:/evil/1",), 1,
      ("models:/evil/1", "pickled")),
    C("preset_4_workers_on_this_machine", "tmp",
      TRAIN + ("tmp.teacher_run={run}", "data.split_file=null", "scale.cpus_per_worker={cpus}"), 2,
      "scale.num_workers=4", timeout=400),
    # --- predict / evaluate / inspect ---------------------------------------------------------------------------
    C("predict_pickled_model_refused", "predict", PRED + ("predict.model={root}/evil/pickled.pt",), 1,
      "pickled.pt"),
    C("predict_registered_pickled_refused", "predict", PRED + ("predict.model=models:/evil/1",
                                                              "predict.tracking_uri={reg}"), 1, "pickled"),
    C("predict_folder_without_model", "predict", PRED + ("predict.model={root}/out",), 1, "model not found"),
    C("predict_input_missing", "predict", ("input={root}/nope",) + PRED[1:], 1, "nope"),
    C("predict_scene_column_dotdot", "predict", PRED, 1, ("scene-0001", "../../../X"), mutate=dotdot_scene_pairing,
      check=check_one_scene_failed),
    C("predict_submission_lidar_token_dotdot", "predict",
      PRED + ("predict.sweeps={root}/out/sweeps", "submission={new}/sub", "sub.split=val"), 1,   # scene-0003: val
      ("../../../../X", "lidar token"), mutate=dotdot_lidar_token),
    C("evaluate_pred_missing", "evaluate", ("pred={root}/nope",) + EVAL[1:], 1, "nope"),
    C("evaluate_on_sweeps_not_predictions", "evaluate", ("pred={root}/out/sweeps",) + EVAL[1:], 1,
      ("scene-0001.parquet", "prediction shard")),
    C("inspect_sweeps_missing", "inspect_data", ("sweeps={root}/nope",), 1, "nope"),
]


# --------------------------------------------------------------------------------------------------
# running the table


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    if os.environ.get("DEVBASE"):  # DEV ONLY
        from tests.reliability.harness import Inputs
        dst = tmp_path_factory.mktemp("rel") / "base"
        shutil.copytree(os.environ["DEVBASE"], dst, symlinks=True)
        return Inputs(dst, next((dst / "out" / "teacher").iterdir()).name)
    return build_inputs(tmp_path_factory.mktemp("rel") / "base")


def _fmt(s: str, root: Path, new: Path, run_id: str) -> str:
    return s.format(root=root, new=new, run=root / "out" / "teacher" / run_id, reg=f"sqlite:///{root}/reg/mlflow.db",
                    cpus=os.cpu_count() or 2)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, inputs, tmp_path):
    if case.mutate is not None:   # a private copy, damaged
        root = tmp_path / "copy"
        shutil.copytree(inputs.root, root, symlinks=True,
                        ignore=lambda d, names: ["new"] if Path(d) == inputs.root else [])
        case.mutate(root)
    else:
        root = inputs.root
    new = root / "new" / case.id
    cwd = new / "cwd"
    cwd.mkdir(parents=True)
    before = hash_tree(root)
    args = [_fmt(a, root, new, inputs.run_id) for a in case.args]
    ray_tmp = Path(f"/tmp/afovrl{os.getpid()}")   # short: Ray's socket paths must stay < 108 characters
    t0 = time.perf_counter()
    proc = run_job(case.job, args, cwd, env={"RAY_TMPDIR": str(ray_tmp)}, timeout=case.timeout)
    seconds = time.perf_counter() - t0
    after = hash_tree(root)

    out = Outcome("bad_inputs", case.id, case.code, proc.returncode, "result" if case.check else "error",
                  seconds=seconds)
    TALLY.append(out)
    out.traceback = TRACEBACK in proc.stderr
    changed = damage(before, after)
    stray = [f for f in new_files(before, after) if not f.startswith(str(new.relative_to(root)) + "/")]
    out.damaged = bool(changed)
    says = [_fmt(s, root, new, inputs.run_id) for s in case.says]
    said = proc.stderr if case.check is None else proc.stderr + proc.stdout   # a partial result's summary: stdout
    missing = [s for s in says if s not in said]
    leaked = [h for h in case.hides if h in proc.stderr or h in proc.stdout]
    out.clear = proc.returncode == case.code and not out.traceback and not missing and not leaked and not stray
    problem = None
    if case.check is not None and out.clear:
        try:
            case.check(root, new, proc)
            out.correct = True
        except AssertionError as e:
            problem = f"wrong result: {e}"
    out.note = problem or ""
    tail = proc.stderr[-3000:]
    assert not out.traceback, f"traceback on stderr:\n{tail}"
    assert proc.returncode == case.code, f"exit code {proc.returncode}, expected {case.code}\n{tail}"
    assert not missing, f"stderr does not name {missing}:\n{tail}"
    assert not leaked, f"output shows {leaked}"
    assert not changed, f"files that existed before changed or vanished: {changed[:10]}"
    assert not stray, f"files written outside the case's output folder: {stray[:10]}"
    assert not (inputs.root / "new" / "PWNED").exists(), "loading a model ran code"
    assert problem is None, problem
    if ray_tmp.exists():
        shutil.rmtree(ray_tmp, ignore_errors=True)
