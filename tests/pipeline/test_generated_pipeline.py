"""generate -> prepare -> simulated teacher -> pairing on a tiny generated dataset (real devkit, real Ray)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1800)]   # incl. the module-wide pipeline run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import ray

    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.geometry.pairing import PairingConfig
    from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.shard_pass import ExecConfig
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
    from afov_ray.runtime import init_ray

    tmp = tmp_path_factory.mktemp("pipe")
    root = tmp / "ns"
    generate_nuscenes(root, SynthConfig(num_scenes=2, keyframes_per_scene=2, num_val_scenes=1,
                                        image_width=240, image_height=135, azimuth_steps=540))
    quiet = ExecConfig(progress=False)
    prep = run_prepare(PrepareConfig(dataroot=str(root), exec=ExecConfig(use_ray=False, progress=False)), str(tmp))
    init_ray(num_cpus=2, object_store_memory=256 * 2**20)
    try:
        tp = run_teacher_pass(str(tmp / "sweeps"), str(tmp / "teacher"), TeacherPassConfig(dataroot=str(root), exec=quiet))
        pairs = {rule: run_pair_pass(str(tmp / "sweeps"), tp.stats["run_uri"], str(tmp / f"pair_{rule}"),
                                     PairPassConfig(pairing=PairingConfig(rule=rule), exec=quiet))
                 for rule in ("zbuffer", "official")}
        again = run_teacher_pass(str(tmp / "sweeps"), str(tmp / "teacher"),
                                 TeacherPassConfig(dataroot=str(root), exec=quiet))
        yield {"tmp": tmp, "root": root, "prep": prep, "teacher": tp, "pairs": pairs, "again": again}
    finally:
        ray.shutdown()


def test_devkit_projection_of_generated_sweep_equals_ours(pipeline):
    """The devkit's map_pointcloud_to_image on a generated sweep equals ours point for point: exactly
    through the devkit-order float32 chain; with our float64 whole-chain matrix, the same pixels within
    float32 error of the devkit's chain (<= 0.5 px*m / depth) and the same kept points except those within
    that error of an image bound."""
    from nuscenes.nuscenes import NuScenes

    from afov_ray.datasets.nuscenes import NuScenesReader
    from afov_ray.geometry.projection import project_camera_points, project_points

    reader = NuScenesReader(str(pipeline["root"]), "v1.0-trainval")
    nusc = NuScenes(version="v1.0-trainval", dataroot=str(pipeline["root"]), verbose=False)
    kf = reader.read(reader.keyframe_ids(reader.scenes()[0])[1])
    for cam in kf.cameras:
        pts, depth, _ = nusc.explorer.map_pointcloud_to_image(kf.lidar_token, cam.token)
        exact = project_camera_points(reader.devkit_camera_points(kf, cam.channel), cam.K, cam.width, cam.height,
                                      bounds="devkit")
        assert len(exact) > 100 and pts.shape[1] == len(exact), cam.channel
        np.testing.assert_allclose(exact.uv, pts[:2].T, atol=1e-3, rtol=0)
        np.testing.assert_allclose(exact.depth, depth, atol=1e-6)
        ours = project_points(kf.points[:, :3], cam.lidar_to_cam, cam.K, cam.width, cam.height, bounds="devkit")
        common, ia, ib = np.intersect1d(ours.point_idx, exact.point_idx, return_indices=True)
        # the devkit rounds global coordinates to float32: its pixels carry ~1e-4 m / depth of error
        assert np.all(np.abs(ours.uv[ia] - exact.uv[ib]).max(axis=1) * ours.depth[ia] <= 0.5), cam.channel
        for p, uv in ((ours, ours.uv), (exact, exact.uv)):
            extra = np.setdiff1d(np.arange(len(p)), ia if p is ours else ib)
            near = np.minimum.reduce([uv[extra, 0] - 1, cam.width - 1 - uv[extra, 0], uv[extra, 1] - 1,
                                      cam.height - 1 - uv[extra, 1]])
            assert np.all(np.abs(near) < 0.05), cam.channel


def test_teacher_shards(pipeline):
    from afov_ray.teachers.schema import from_table

    tp = pipeline["teacher"]
    assert len(tp.written) == 2 and tp.stats["images"] == 2 * 2 * 6 and tp.manifest_written
    assert len(pipeline["again"].done_before) == 2 and pipeline["again"].written == []   # resumable
    run_id = tp.stats["run_id"]
    shards = sorted((pipeline["tmp"] / "teacher" / run_id / "images").glob("*.parquet"))
    assert len(shards) == 2
    images = from_table(pq.read_table(shards[0]))
    assert len(images) == 12
    for im in images:
        assert im.mask_map.shape == (135, 240) and im.mask_map.min() >= 1       # semantic style: all covered
        assert list(im.mask_ids) == list(range(1, len(im.mask_ids) + 1))
        assert np.all(np.diff(im.text_index) > 0)                                # ascending text order
        assert int(im.area.sum()) == 135 * 240
        f = im.features.astype(np.float32)
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=2e-3)
    run = json.loads((pipeline["tmp"] / "teacher" / run_id / "run.json").read_text())
    assert run["num_texts"] == 175 and run["void_row"] is False


def test_pairing_shards_and_pseudo_label_quality(pipeline):
    z, o = pipeline["pairs"]["zbuffer"].stats, pipeline["pairs"]["official"].stats
    for p in pipeline["pairs"].values():
        assert p.exit_code == 0 and p.skipped == [] and p.manifest_written
    for s in (z, o):
        assert s["keyframes"] == 4 and s["missing_cameras"] == 0
        assert 0.4 < s["coverage"] < 1.0
        assert s["agreement"] > 0.75
        assert "car" in s["per_class"] and "driveable_surface" in s["per_class"]
    # the occlusion test drops hidden points: fewer labelled, better agreement
    assert z["labelled"] < o["labelled"]
    assert z["agreement"] > o["agreement"]
    shard = sorted((pipeline["tmp"] / "pair_zbuffer").glob("*.parquet"))[0]
    # writer options (training reads): numeric lists LZ4 without dictionary pages, strings dictionary-encoded
    meta = pq.ParquetFile(shard).metadata.row_group(0)
    chunks = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i) for i in range(meta.num_columns)}
    assert chunks["points"].compression.startswith("LZ4")
    assert not any("DICTIONARY" in e for e in chunks["points"].encodings)
    assert any("DICTIONARY" in e for e in chunks["sample_token"].encodings)
    t = pq.read_table(shard)
    row = t.slice(0, 1).to_pylist()[0]
    n = row["num_points"]
    assert len(row["points"]) == 4 * n and len(row["pseudo"]) == n and len(row["superpoint"]) == n
    assert len(row["pair_point"]) == len(row["pair_superpixel"]) > 0
    assert max(row["pair_point"]) < n
    sp = np.asarray(row["pair_superpixel"])
    assert np.all(sp % 150 > 0) and set(sp) <= set(row["sp_id"])
    assert len(row["sp_feat"]) == 2 * len(row["sp_id"]) * row["feat_dim"]
    # pseudo-labels agree with the official id*100+class encoding
    from afov_ray.geometry.pairing import decode_official
    spid, raw = decode_official(np.asarray(row["pseudo_code"]))
    assert np.array_equal(spid, np.asarray(row["superpoint"]))
    assert np.all((np.asarray(row["pseudo"]) == 0) | (spid >= 0))


@pytest.mark.slow
def test_validation_miou_identical_with_one_or_two_workers(pipeline, tmp_path):
    """The dataset-level confusion matrix is all-reduced: splitting the val scans over 2 workers gives
    the same mIoU as 1 worker. Weights are frozen (linear probe mode, lr 0) so only evaluation differs."""
    import pyarrow.parquet as pq

    from afov_ray.config import load_config
    from afov_ray.datasets.nuscenes import NuScenesReader
    from afov_ray.datasets.splits import standard_nuscenes_splits, write_split_file
    from afov_ray.train.jobs import TrainJob, run_train_job

    tmp = pipeline["tmp"]
    splits = standard_nuscenes_splits(NuScenesReader(str(pipeline["root"]), "v1.0-trainval"))
    write_split_file(tmp_path / "splits.json", splits)
    assert (tmp / "splits.json").exists()   # prepare wrote one too
    metrics = []
    for workers in (1, 2):
        cfg = load_config(TrainJob, None, [
            f"data.pairing={tmp / 'pair_zbuffer'}", f"data.split_file={tmp_path / 'splits.json'}",
            "model.name=minkunet18", "loop.num_epochs=1", "loop.batch_size=1", "loop.linear_probe=true",
            "loop.optim.lr=0.0", "loop.optim.lr_head=null", "loop.tracking.enabled=false",
            f"scale.num_workers={workers}", "scale.cpus_per_worker=0.5", f"run.storage_path={tmp_path}",
            f"run.name=val{workers}"])
        res = run_train_job("finetune", cfg)
        assert res.error is None
        metrics.append(res.metrics)
    val_points = sum(int((np.asarray(r["labels"]) > 0).sum()) for shard in (tmp / "pair_zbuffer").glob("*.parquet")
                     for r in pq.read_table(shard).to_pylist() if r["scene"] in splits["val"].scenes)
    assert metrics[0]["val/points"] == metrics[1]["val/points"] == val_points
    assert metrics[0]["val/mIoU"] == pytest.approx(metrics[1]["val/mIoU"], abs=1e-12)
    names = [k for k in metrics[0] if k.startswith("val/iou/")]
    assert len(names) == 16 and "val/iou/car" in names        # per-class metrics named by class
    for k in names:
        assert metrics[0][k] == pytest.approx(metrics[1][k], abs=1e-12)


def test_run_describes_itself_registers_best_epoch_and_reruns(pipeline, tmp_path, capsys):
    """A distillation run via the job's own command line: every key of its resolved config is a run param,
    config.yaml / per-class IoU table are artifacts, the registered version holds the weights of the epoch with
    the best validation mIoU (the run's metric history decides), and ``--from-run`` rebuilds the same config."""
    import mlflow
    import torch
    import yaml

    from afov_ray.cli import parse_job_args
    from afov_ray.config import flatten, to_dict
    from afov_ray.datasets.nuscenes import NuScenesReader
    from afov_ray.datasets.splits import standard_nuscenes_splits, write_split_file
    from afov_ray.train.checkpoint import load_checkpoint
    from afov_ray.train.jobs import TrainJob, job_main, rerun_config
    from afov_ray.train.registry import load_model_state

    tmp = pipeline["tmp"]
    write_split_file(tmp_path / "splits.json", standard_nuscenes_splits(NuScenesReader(str(pipeline["root"]),
                                                                                       "v1.0-trainval")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [f"data.pairing={tmp / 'pair_zbuffer'}", f"data.split_file={tmp_path / 'splits.json'}",
            "model.name=minkunet18", "loop.num_epochs=3", "loop.batch_size=1", "loop.optim.lr=0.5",
            f"loop.tracking.tracking_uri={uri}", "loop.tracking.register_as=afov-test-distill",
            "scale.num_workers=1", "scale.use_gpu=false", "scale.cpus_per_worker=0.5",
            f"run.storage_path={tmp_path / 'ray'}",
            "run.name=selfdesc", "run.num_to_keep=null", "ingest.voxel_size=0.3", "model.init=null"]
    assert job_main("distill", "test", argv) == 0
    expected, _ = parse_job_args(TrainJob, "", argv, default_config="configs/nuscenes/distill.yaml")

    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(expected.loop.tracking.experiment).experiment_id])
    params = run.data.params
    missing = sorted(set(flatten(to_dict(expected))) - set(params))
    assert not missing, f"config keys not logged as params: {missing}"
    assert params["loop.optim.lr"] == "0.5" and params["ingest.voxel_size"] == "0.3"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "per_class_iou.md", "per_class_iou.json"} <= arts
    stored = yaml.safe_load(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                     artifact_path="config.yaml",
                                                                     tracking_uri=uri)))
    assert stored == to_dict(expected)
    assert run.data.tags["afov.command"].startswith("python ")   # the driver's command line (here: pytest's)

    # best epoch: from the run's own metric history, ties -> the earliest
    hist = sorted(client.get_metric_history(run.info.run_id, "val/mIoU"), key=lambda m: m.step)
    assert len(hist) == 3
    scores = [m.value for m in hist]
    best_epoch = scores.index(max(scores)) + 1
    assert int(run.data.tags["afov.best_epoch"]) == best_epoch
    ckpts = [d for d in (tmp_path / "ray" / "selfdesc").iterdir() if d.is_dir() and d.name.startswith("checkpoint_")]
    assert len(ckpts) == 3
    by_epoch = {int(json.loads((d / "meta.json").read_text())["epoch"]): d for d in ckpts}   # epochs completed
    assert sorted(by_epoch) == [1, 2, 3]
    registered = load_model_state("models:/afov-test-distill/1", tracking_uri=uri)
    best_state = load_checkpoint(by_epoch[best_epoch])["model"]
    for k, v in best_state.items():
        assert torch.equal(registered[k], v), k
    per_class = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="per_class_iou.json", tracking_uri=uri)).read())
    assert per_class["epoch"] == best_epoch and per_class["mIoU"] == pytest.approx(max(scores), abs=1e-9)
    assert set(per_class["iou"]) <= {k[len("val/iou/"):] for k in run.data.metrics if k.startswith("val/iou/")}

    # --from-run: the stored config is the base (no default preset), with a fresh Ray Train run name
    rerun, _ = parse_job_args(TrainJob, "", ["--from-run", run.info.run_id, "--tracking-uri", uri],
                              default_config="configs/nuscenes/distill.yaml", run_config=rerun_config)
    a, b = to_dict(rerun), to_dict(expected)
    assert a["run"].pop("name") == f"selfdesc-rerun-{run.info.run_id[:8]}" and b["run"].pop("name") == "selfdesc"
    assert a == b
    over, _ = parse_job_args(TrainJob, "", ["--from-run", run.info.run_id, "--tracking-uri", uri,
                                            "loop.num_epochs=5"], run_config=rerun_config)
    assert over.loop.num_epochs == 5 and over.loop.optim.lr == 0.5
