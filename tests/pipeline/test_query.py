"""Zero-shot predictions, text queries and the viewer pages of evaluate and query, on a tiny generated dataset.

Real components: the generator, prepare, the simulated teacher and the pairing pass build the shards; a
random-init TMP (features) checkpoint with its contract stands for the TMP model (the ranking of the right class
by a *trained* model is measured by ``bench/query_bench.py`` on the demo's model, and asserted on hand-built
features in ``tests/eval/test_zeroshot.py``). Passes run in this process (``exec.use_ray=false``) except the one
actor-pool test.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from afov_ray.config import ConfigError
from afov_ray.eval.zeroshot import first_occurrences, separation
from afov_ray.models.res16unet import build_model
from afov_ray.models.spec import ModelSpec
from afov_ray.pipeline.evaluate import EvaluateConfig, run_evaluate
from afov_ray.pipeline.predict import PredictConfig, build_network, forward_scans, read_scans, run_predict
from afov_ray.pipeline.predictions import read_prediction_shard
from afov_ray.pipeline.query import QueryConfig, read_query_shard, run_query
from afov_ray.pipeline.shard_pass import ExecConfig
from afov_ray.pipeline.text_space import encode_prompts, load_text_space
from afov_ray.storage import shards as S
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.viz.ply import read_ply

REPO = Path(__file__).resolve().parents[2]
LOCAL = ExecConfig(use_ray=False, progress=False)
PROMPTS = ["car", "road", "tree"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass

    base = tmp_path_factory.mktemp("querydata")
    cfg = SynthConfig(num_scenes=2, keyframes_per_scene=2, num_val_scenes=1, image_width=160, image_height=90,
                      num_beams=16, azimuth_steps=360)
    root = generate_nuscenes(base / "root", cfg)
    prep = run_prepare(PrepareConfig(dataroot=str(root), write_splits=False, exec=LOCAL), str(base / "prep"))
    t = run_teacher_pass(prep.out, str(base / "teacher"), TeacherPassConfig(dataroot=str(root), exec=LOCAL))
    pair = run_pair_pass(prep.out, t.stats["run_uri"], str(base / "pairing"), PairPassConfig(exec=LOCAL))
    assert prep.exit_code == t.exit_code == pair.exit_code == 0
    return {"root": str(root), "sweeps": prep.out, "pairing": pair.out, "run": t.stats["run_uri"], "base": base}


@pytest.fixture(scope="module")
def tmp_model(data, tmp_path_factory):
    """A random-init minkunet18 TMP (features) checkpoint with its contract, as jobs/tmp.py registers it."""
    torch.manual_seed(0)
    state = build_model("minkunet18", 1, 768, "torch", normalize_features=True).state_dict()
    spec = ModelSpec(name="minkunet18", out_channels=768, normalize_features=True, task="features", voxel_size=0.2,
                     teacher_run=Path(data["run"]).name)
    d = tmp_path_factory.mktemp("tmpmodel")
    torch.save({"model": state, "model_spec": spec.to_dict()}, d / "state.pt")
    return {"uri": str(d), "spec": spec, "state": state}


def _features(data, tmp_model) -> tuple[list[dict], list[np.ndarray]]:
    """Per scan of the pairing shards: the row and its per-point features (brute force, for comparison)."""
    model = build_network(tmp_model["spec"], tmp_model["state"])
    rows, feats = [], []
    for shard in S.open_folder(data["pairing"]).values():
        good, _ = read_scans(shard, "pairing")
        for (f, inv), r in zip(forward_scans(model, good, tmp_model["spec"]), good):
            rows.append(r)
            feats.append(f[inv[0]].numpy())
    return rows, feats


def test_zeroshot_predict_labels_each_point_with_its_nearest_text(data, tmp_model, tmp_path):
    cfg = PredictConfig(model=tmp_model["uri"], teacher_run=data["run"], with_logits=True, exec=LOCAL)
    s = run_predict(data["pairing"], str(tmp_path / "pred"), cfg)
    assert s.exit_code == 0 and s.manifest_written
    free = run_predict(data["pairing"], str(tmp_path / "pred_free"), replace(cfg, suppress_class0=False))
    assert free.exit_code == 0
    d = ClassDictionary.load("nuscenes")
    space = load_text_space(data["run"], tmp_model["spec"], "predict.teacher_run")
    keep = first_occurrences(space.texts)
    brute_rows, feats = _features(data, tmp_model)
    by_token = {str(r["sample_token"]): f for r, f in zip(brute_rows, feats)}
    n_scans = 0
    for folder, suppress in ((tmp_path / "pred", True), (tmp_path / "pred_free", False)):
        for shard in S.open_folder(str(folder)).values():
            for r in read_prediction_shard(shard):
                f = by_token[r["sample_token"]]
                allowed = keep & ((d.text_to_eval != 0) if suppress else True)
                idx = np.flatnonzero(allowed)
                sim = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ space.texts[idx].T
                want = d.text_to_eval[idx[np.argmax(sim, axis=1)]]
                agree = (r["pred"] == want).mean()
                assert agree > 0.999, agree            # float rounding may flip a near-tie
                if suppress:
                    assert (r["pred"] > 0).all() and r["logits"] is not None
                    lg = r["logits"].reshape(len(r["pred"]), 17).astype(np.float32)   # per-class best cosine
                    assert np.all(lg[np.arange(len(lg)), r["pred"]] >= lg.max(1) - 2e-3)  # float16 storage
                n_scans += 1
    assert n_scans == 8


def test_zeroshot_needs_the_models_own_teacher_run(data, tmp_model, tmp_path):
    with pytest.raises(ConfigError, match="predict.teacher_run"):
        run_predict(data["pairing"], str(tmp_path / "p1"), PredictConfig(model=tmp_model["uri"], exec=LOCAL))
    other = Path(data["run"]).parent / "simulated-000000000000"
    with pytest.raises(ConfigError, match="learnt from teacher run"):
        run_predict(data["pairing"], str(tmp_path / "p2"),
                    PredictConfig(model=tmp_model["uri"], teacher_run=str(other), exec=LOCAL))


def _page_layers(path: str) -> tuple[int, list[str]]:
    text = Path(path).read_text(encoding="utf-8")
    total = int(re.search(r'data-points-total="(\d+)"', text).group(1))
    return total, re.findall(r'class="afov-layer" data-layer="([^"]+)"', text)


def test_query_writes_scores_masks_pictures_and_pages(data, tmp_model, tmp_path):
    view = tmp_path / "view"
    cfg = QueryConfig(model=tmp_model["uri"], teacher_run=data["run"], prompts=PROMPTS, sweeps=data["sweeps"],
                      dataroot=data["root"], pictures=1, viewer_scans=2, exec=LOCAL)
    s = run_query(data["pairing"], str(tmp_path / "q"), cfg, str(view))
    assert s.exit_code == 0 and s.manifest_written and s.stats["scans"] == 4
    assert "stored text embeddings" in s.stats["prompt_encoding"]
    rows, feats = _features(data, tmp_model)
    by_token = {str(r["sample_token"]): f for r, f in zip(rows, feats)}
    space = load_text_space(data["run"], tmp_model["spec"], "query.teacher_run")
    d = space.dictionary
    emb = space.texts[[d.texts.index(p) for p in PROMPTS]]
    all_s, all_gt = [], []
    for shard in S.open_folder(str(tmp_path / "q")).values():
        prompts, qrows = read_query_shard(shard)
        assert prompts == PROMPTS
        for r in qrows:
            f = by_token[r["sample_token"]]
            f = f / np.linalg.norm(f, axis=1, keepdims=True)
            np.testing.assert_allclose(r["scores"], (f @ emb.T).T, atol=2e-3)      # float16 storage
            # no threshold: the prompt beats every text of another category
            sim = f @ space.texts.T
            for p, text in enumerate(PROMPTS):
                rivals = d.text_to_category != d.text_to_category[d.texts.index(text)]
                want = (f @ emb[p]) >= sim[:, rivals].max(1)
                assert (r["mask"][p] == want).mean() > 0.999
            all_s.append(r["scores"])
            all_gt.append(r["gt"])
    # the summary's per-prompt separation is the exact one (means) and the binned AUC (within a bin's share)
    scores, gt = np.concatenate(all_s, axis=1), np.concatenate(all_gt).astype(np.int64)
    rep = s.stats["per_prompt"]["car"]
    assert rep["class"] == 4
    exact = separation(scores[0], gt, 4)
    assert rep["n_in"] == exact["n_in"] > 0 and rep["n_out"] == exact["n_out"]
    assert rep["mean_in"] == pytest.approx(exact["mean_in"], abs=1e-3)
    assert rep["mean_out"] == pytest.approx(exact["mean_out"], abs=1e-3)
    assert rep["auc"] == pytest.approx(exact["auc"], abs=0.02)
    assert s.stats["per_prompt"]["tree"]["class"] == 16 and s.stats["per_prompt"]["road"]["class"] == 11
    # pictures: BEV + camera overlay of the first scan
    pics = s.stats["view"]["pictures"]
    assert len(pics) == 2 and all(Path(p).stat().st_size > 10_000 for p in pics)
    assert any("bev_" in p for p in pics) and any("camera_" in p for p in pics)
    # viewer pages: score and mask layers per prompt, ground truth, every point; .ply with the same values
    pages = s.stats["view"]["pages"]
    assert len(pages) == 2 and Path(s.stats["view"]["index"]).exists()
    total, layers = _page_layers(pages[0])
    assert layers == [f"score: {p}" for p in PROMPTS] + [f"mask: {p}" for p in PROMPTS] + ["ground truth"]
    ply = read_ply(s.stats["view"]["ply"][0])
    assert len(ply["x"]) == total and {"score_0", "mask_2", "gt"} <= set(ply)
    assert json.loads((view / "query_summary.json").read_text())["stats"]["scans"] == 4


def test_query_threshold_mask_and_one_scan(data, tmp_model, tmp_path):
    first = next(iter(S.open_folder(data["pairing"]).values()))
    token = S.read_table(first, ["sample_token"]).column(0).to_pylist()[1]
    cfg = QueryConfig(model=tmp_model["uri"], teacher_run=data["run"], prompts=["car"], threshold=0.05,
                      samples=[token], pictures=0, viewer_scans=0, exec=LOCAL)
    s = run_query(data["pairing"], str(tmp_path / "q"), cfg)
    assert s.stats["scans"] == 1
    (shard,) = S.open_folder(str(tmp_path / "q")).values()
    _, rows = read_query_shard(shard)
    assert [r["sample_token"] for r in rows] == [token]
    sc, m = rows[0]["scores"][0], rows[0]["mask"][0]
    clear = np.abs(sc - 0.05) > 2e-3                        # away from the float16 rounding of the threshold
    assert np.array_equal(m[clear], sc[clear] >= 0.05)
    with pytest.raises(ConfigError, match="query.samples"):
        run_query(data["pairing"], str(tmp_path / "q2"), replace(cfg, samples=["no-such-token"]))


def test_unknown_prompt_without_weights_is_a_one_line_error_naming_close_texts(data, tmp_model, tmp_path):
    cfg = QueryConfig(model=tmp_model["uri"], teacher_run=data["run"], prompts=["car", "vegetation patch"],
                      exec=LOCAL)
    with pytest.raises(ConfigError) as e:
        run_query(data["pairing"], str(tmp_path / "q"), cfg)
    msg = str(e.value)
    assert "\n" not in msg and "'vegetation patch'" in msg and "query.clip_weights" in msg
    assert "ground level horizontal vegetation" in msg
    # a simulated teacher has no text encoder to use
    with pytest.raises(ConfigError, match="simulated"):
        run_query(data["pairing"], str(tmp_path / "q"), replace(cfg, clip_weights=str(tmp_path / "w.pt")))


def test_clip_prompts_reproduce_the_runs_text_space(tmp_path):
    """A MaskCLIP teacher run (tiny random CLIP): free prompts go through its text tower; the dictionary's texts
    come out as the run stored them; other weights are refused."""
    from afov_ray.teachers.backends import MaskCLIPBackend
    from afov_ray.teachers.clip_model import build_clip, clip_config
    from afov_ray.teachers.maskclip import MaskCLIPConfig
    from afov_ray.teachers.schema import write_run

    bpe = tmp_path / "bpe.txt.gz"
    bpe.write_bytes(gzip.compress(b"#version: 0.2\nc a\nca r</w>\nr o\nro a\nroa d</w>\n"))
    cfg = MaskCLIPConfig(model="tiny", allow_random_weights=True, bpe_path=str(bpe), templates="plain", device="cpu")
    run, table, extra = MaskCLIPBackend(cfg, "nuscenes", "").run_record()
    run_uri = write_run(str(tmp_path / "teacher"), run, table, extra)
    weights = tmp_path / "tiny.pt"
    torch.save(build_clip(clip_config("tiny"), seed=0).state_dict(), weights)
    spec = ModelSpec(name="minkunet18", out_channels=table.feature_dim, normalize_features=True, task="features",
                     teacher_run=run.run_id)
    space = load_text_space(run_uri, spec, "query.teacher_run")
    emb, how = encode_prompts(space, ["a car parked on the road", "car"], "query.prompts", str(weights))
    assert "CLIP text tower" in how and emb.shape == (2, table.feature_dim)
    np.testing.assert_allclose(emb[1], space.texts[0], atol=1e-5)
    assert abs(float(emb[0] @ emb[1])) < 0.9999                        # a different prompt, a different row
    other = tmp_path / "other.pt"
    torch.save(build_clip(clip_config("tiny"), seed=1).state_dict(), other)
    with pytest.raises(ConfigError, match="does not reproduce"):
        encode_prompts(space, ["car"], "query.prompts", str(other))


def test_evaluate_writes_viewer_pages_with_the_expected_layers(data, tmp_model, tmp_path):
    pred = tmp_path / "pred"
    run_predict(data["pairing"], str(pred), PredictConfig(model=tmp_model["uri"], teacher_run=data["run"], exec=LOCAL))
    doc = run_evaluate(str(pred), str(tmp_path / "eval"), EvaluateConfig(plots=False, viewer_scans=3, exec=LOCAL))
    v = doc["viewer"]
    assert len(v["pages"]) == 3 and len(v["ply"]) == 3
    index = Path(v["index"]).read_text()
    rows = [r for shard in S.open_folder(str(pred)).values() for r in read_prediction_shard(shard)]
    for page, ply_path in zip(v["pages"], v["ply"]):
        assert Path(page).name in index
        total, layers = _page_layers(page)
        assert layers == ["prediction", "ground truth", "error", "pseudo-labels"]
        row = next(r for r in rows if Path(page).stem == f"{r['scene']}_{r['sample_token'][:8]}")
        assert total == int(row["num_points"])
        ply = read_ply(ply_path)
        assert len(ply["x"]) == total and np.array_equal(ply["pred"], row["pred"])
        assert np.array_equal(ply["gt"], row["gt"]) and np.array_equal(ply["visible"].astype(bool), row["visible"])
    quiet = run_evaluate(str(pred), str(tmp_path / "eval0"), EvaluateConfig(plots=False, viewer_scans=0, exec=LOCAL))
    assert quiet["viewer"] == {} and not (tmp_path / "eval0" / "viewer").exists()


@pytest.mark.ray
def test_query_runs_on_an_actor_pool(data, tmp_model, tmp_path):
    from afov_ray.runtime import init_ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    import ray

    init_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        cfg = QueryConfig(model=tmp_model["uri"], teacher_run=data["run"], prompts=["car"], pictures=0,
                          viewer_scans=0, exec=ExecConfig(progress=False, max_actors=2))
        local = run_query(data["pairing"], str(tmp_path / "local"), replace(cfg, exec=LOCAL))
        pooled = run_query(data["pairing"], str(tmp_path / "pool"), cfg)
    finally:
        ray.shutdown()
    assert pooled.exit_code == 0 and sorted(pooled.written) == sorted(local.written)
    for key in pooled.written:
        a = read_query_shard(str(tmp_path / "local" / f"{key}.parquet"))[1]
        b = read_query_shard(str(tmp_path / "pool" / f"{key}.parquet"))[1]
        assert all(np.array_equal(x["scores"], y["scores"]) for x, y in zip(a, b))
