"""open_clip-compatible CLIP, MaskCLIP dense features and the MaskCLIP teacher (tiny random model)."""

from __future__ import annotations

import gzip
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afov_ray.config import ConfigError
from afov_ray.errors import DataError
from afov_ray.teachers.clip_model import build_clip, clip_config, load_clip, read_state_dict
from afov_ray.teachers.maskclip import (
    IMAGENET_TEMPLATES,
    VILD_TEMPLATES,
    MaskCLIPConfig,
    MaskCLIPTeacher,
    bilinear_taps,
    label_and_pool,
)

TINY = clip_config("tiny")


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "tiny_bpe.txt.gz"
    merges = ["c a", "ca r</w>", "r o", "ro a", "roa d</w>", "t r", "e e", "tr ee</w>", "p h", "o t", "ph ot"]
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    return build_clip(TINY, seed=0)


def _block_keys(prefix: str) -> set[str]:
    names = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    return {f"{prefix}.resblocks.{i}.{n}" for i in range(2) for n in names}


def test_state_dict_layout_and_strict_round_trip(tiny):
    sd = tiny.state_dict()
    expected = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
                "visual.proj", "token_embedding.weight", "positional_embedding", "ln_final.weight",
                "ln_final.bias", "text_projection", "logit_scale"}
    expected |= _block_keys("visual.transformer") | _block_keys("transformer")
    assert set(sd) == expected
    w, d, p = TINY.vision_width, TINY.embed_dim, TINY.patch_size
    assert tuple(sd["visual.conv1.weight"].shape) == (w, 3, p, p)
    assert tuple(sd["visual.positional_embedding"].shape) == (TINY.grid_size ** 2 + 1, w)
    assert tuple(sd["visual.proj"].shape) == (w, d)
    assert tuple(sd["visual.transformer.resblocks.1.attn.in_proj_weight"].shape) == (3 * w, w)
    assert tuple(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape) == (4 * w, w)
    assert tuple(sd["text_projection"].shape) == (TINY.text_width, d)
    assert tuple(sd["positional_embedding"].shape) == (TINY.context_length, TINY.text_width)
    assert sd["logit_scale"].shape == () and math.isclose(float(sd["logit_scale"]), math.log(1 / 0.07), rel_tol=1e-6)

    other = build_clip(TINY, seed=1)
    assert not torch.equal(other.state_dict()["visual.proj"], sd["visual.proj"])
    other.load_state_dict(sd, strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # presets: ViT-L-14-336 is 768-d with a 24x24 grid of 14-px patches
    big = clip_config("ViT-L-14-336-quickgelu")
    assert (big.embed_dim, big.grid_size, big.vision_heads, big.quick_gelu) == (768, 24, 16, True)


def test_checkpoint_file_loads(tmp_path, tiny):
    sd = tiny.state_dict()
    path = tmp_path / "tiny.pt"
    torch.save(sd, path)
    m = load_clip(path, TINY)
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.encode_image(img), tiny.encode_image(img))
    # wrapped {"state_dict": {"module.<key>": ...}} with OpenAI's extra non-weight keys, in fp16
    wrapped = {"state_dict": {f"module.{k}": v.half() for k, v in sd.items()} | {"input_resolution": 32}}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    m2 = load_clip(tmp_path / "wrapped.pt", TINY)
    assert torch.allclose(m2.state_dict()["visual.proj"], sd["visual.proj"].half().float())
    # OpenAI's original checkpoints are TorchScript archives: refused (they run code) unless trusted explicitly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace_module(tiny, {"encode_image": img})
        scripted.save(str(tmp_path / "openai_style.pt"))
        with pytest.raises(DataError, match="openai_style.pt: not a weights-only state dict.*allow_torchscript"):
            load_clip(tmp_path / "openai_style.pt", TINY)
        m3 = load_clip(read_state_dict(tmp_path / "openai_style.pt", allow_torchscript=True), TINY)
    for k, v in sd.items():
        assert torch.equal(m3.state_dict()[k], v), k
    # a checkpoint of another shape names the file and the key
    with pytest.raises(DataError, match=r"tiny\.pt.*visual\.conv1\.weight"):
        load_clip(path, clip_config("tiny", patch_size=8))
    with pytest.raises(DataError, match="missing.pt"):
        load_clip(tmp_path / "missing.pt", TINY)


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)


def _gelu(x):
    return F.gelu(x)  # tiny preset: quick_gelu=False


def _ref_block(x, sd, pre, heads, value_path):
    """Hand-written residual block: full attention, or MaskCLIP's value path for the last one."""
    h = _ln(x, sd, f"{pre}.ln_1")
    W, b = sd[f"{pre}.attn.in_proj_weight"], sd[f"{pre}.attn.in_proj_bias"]
    c = x.shape[-1]
    q, k, v = (h @ W[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c] for i in range(3))
    if value_path:
        a = v
    else:
        B, N, _ = x.shape
        dh = c // heads
        qh, kh, vh = (t.view(B, N, heads, dh).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        a = (att @ vh).transpose(1, 2).reshape(B, N, c)
    a = a @ sd[f"{pre}.attn.out_proj.weight"].T + sd[f"{pre}.attn.out_proj.bias"]
    x = x + a
    m = _gelu(_ln(x, sd, f"{pre}.ln_2") @ sd[f"{pre}.mlp.c_fc.weight"].T + sd[f"{pre}.mlp.c_fc.bias"])
    return x + m @ sd[f"{pre}.mlp.c_proj.weight"].T + sd[f"{pre}.mlp.c_proj.bias"]


def _ref_dense(img, sd, cfg, pos):
    p = cfg.patch_size
    B, _, H, W = img.shape
    patches = img.unfold(2, p, p).unfold(3, p, p)                         # B, 3, gh, gw, p, p
    gh, gw = patches.shape[2], patches.shape[3]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(B, gh * gw, 3 * p * p)
    x = patches @ sd["visual.conv1.weight"].reshape(cfg.vision_width, -1).T
    x = torch.cat([sd["visual.class_embedding"].expand(B, 1, -1), x], dim=1) + pos
    x = _ln(x, sd, "visual.ln_pre")
    for i in range(cfg.vision_layers):
        x = _ref_block(x, sd, f"visual.transformer.resblocks.{i}", cfg.vision_heads,
                       value_path=i == cfg.vision_layers - 1)
    x = _ln(x[:, 1:], sd, "visual.ln_post") @ sd["visual.proj"]
    return x.reshape(B, gh, gw, -1)


def test_dense_features_equal_hand_written_value_path(tiny):
    sd = {k: v.float() for k, v in tiny.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    img = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        got = tiny.dense_features(img)
    ref = _ref_dense(img, sd, TINY, sd["visual.positional_embedding"])
    assert got.shape == (2, 8, 8, TINY.embed_dim)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # the value path differs from the normal forward (the class token output is not a patch output)
    with torch.no_grad():
        full = tiny.visual.ln_post(tiny.visual.transformer(tiny.visual.tokens(img)[0]))[:, 1:] @ tiny.visual.proj
    assert not torch.allclose(full.reshape(got.shape), got, atol=1e-3)


def test_dense_features_non_square_interpolates_pos_embed(tiny):
    sd = {k: v.float() for k, v in tiny.state_dict().items()}
    img = torch.randn(1, 3, 40, 58, generator=torch.Generator().manual_seed(4))   # 10 x 14 patches (58 // 4)
    with torch.no_grad():
        got = tiny.dense_features(img)
    assert got.shape == (1, 10, 14, TINY.embed_dim)
    pe = sd["visual.positional_embedding"]
    grid = pe[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(10, 14), mode="bicubic", align_corners=False)
    pos = torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(140, -1)])
    ref = _ref_dense(img[..., :56], sd, TINY, pos)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_text_encoder_pools_eot_and_ignores_padding(tiny):
    tok = torch.zeros(2, TINY.context_length, dtype=torch.long)
    tok[:, 0], tok[:, 1], tok[:, 2] = 1022, 7, 1023
    tok[1, 5] = 9   # after EOT: cannot change the pooled (causal) output
    with torch.no_grad():
        e = tiny.encode_text(tok)
    torch.testing.assert_close(e[0], e[1])
    assert e.shape == (2, TINY.embed_dim)


def _cfg(bpe_path, **kw) -> MaskCLIPConfig:
    base = dict(model="tiny", quick_gelu=False, bpe_path=bpe_path, templates="vild", image_short_side=32,
                device="cpu", row_chunk=7, allow_random_weights=True)
    return MaskCLIPConfig(**(base | kw))


def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert len(VILD_TEMPLATES) == 14 and all("{}" in t for t in IMAGENET_TEMPLATES + VILD_TEMPLATES)


def test_text_embeddings(bpe_path):
    texts = ["car", "road", "tree", "car", "sky"]
    t = MaskCLIPTeacher(_cfg(bpe_path), texts)
    e = t.text_embeddings
    assert e.shape == (5, TINY.embed_dim) and e.dtype == torch.float32
    assert torch.equal(e[0], e[3])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(5))
    # by hand: normalised mean of the normalised per-template embeddings
    with torch.no_grad():
        per = F.normalize(t.model.encode_text(t.tokenizer([tpl.format("road") for tpl in VILD_TEMPLATES])), dim=-1)
    torch.testing.assert_close(e[1], F.normalize(per.mean(0), dim=0))


def test_bilinear_taps_match_interpolate():
    x = torch.randn(1, 1, 5, 7, generator=torch.Generator().manual_seed(5))
    ref = F.interpolate(x, size=(23, 31), mode="bilinear", align_corners=False)[0, 0]
    y0, y1, ly = bilinear_taps(23, 5)
    x0, x1, lx = bilinear_taps(31, 7)
    a = x[0, 0]
    rows = (1 - ly)[:, None] * a[y0] + ly[:, None] * a[y1]
    got = (1 - lx)[None] * rows[:, x0] + lx[None] * rows[:, x1]
    torch.testing.assert_close(got, ref)


def test_label_and_pool_equals_full_resolution_brute_force():
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(5, 7, 8, generator=g)
    text = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    H, W = 37, 45
    labels, sums, area = label_and_pool(feats, text, (H, W), row_chunk=6)
    up = F.interpolate(feats.permute(2, 0, 1)[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    up_logits = F.interpolate((F.normalize(feats, dim=-1) @ text.T).permute(2, 0, 1)[None], size=(H, W),
                              mode="bilinear", align_corners=False)[0]
    assert torch.equal(labels, up_logits.argmax(0))
    for t in range(4):
        m = labels == t
        assert int(area[t]) == int(m.sum())
        torch.testing.assert_close(sums[t], up[:, m].sum(dim=1), rtol=1e-4, atol=1e-4)
    assert int(area.sum()) == H * W


def test_teacher_on_synthetic_image(bpe_path):
    texts = ["car", "road", "tree", "sky", "photo", "roadway"]
    t = MaskCLIPTeacher(_cfg(bpe_path), texts)
    rng = np.random.default_rng(0)
    img = np.zeros((37, 53, 3), np.uint8)
    img[:18] = (200, 40, 40)
    img[18:, :25] = (30, 200, 60)
    img[18:, 25:] = rng.integers(0, 255, (19, 28, 3))
    im = t(img, sample_token="s0", camera="CAM_FRONT", camera_token="c0", scene_token="scene-0")
    im.validate(num_texts=len(texts), feature_dim=TINY.embed_dim)
    assert im.image_size == (37, 53) and im.mask_map.dtype == np.uint8
    n = im.num_masks
    assert n >= 3 and (im.mask_map > 0).all()                      # several masks, every pixel labelled
    assert im.mask_ids.tolist() == list(range(1, n + 1))
    assert (np.diff(im.text_index) > 0).all()                       # ascending text order
    assert int(im.area.sum()) == 37 * 53
    for j, mid in enumerate(im.mask_ids):
        assert int((im.mask_map == mid).sum()) == int(im.area[j])
    assert im.features.dtype == np.float16 and im.features.shape == (n, TINY.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(im.features.astype(np.float32), axis=1), 1.0, atol=2e-3)
    # the mask features are the normalised mean of the up-sampled dense features over the mask
    dense = t.dense(img)
    up = F.interpolate(dense.permute(2, 0, 1)[None], size=(37, 53), mode="bilinear", align_corners=False)[0]
    for j, mid in enumerate(im.mask_ids):
        ref = F.normalize(up[:, torch.from_numpy(im.mask_map == mid)].mean(dim=1), dim=0).numpy()
        np.testing.assert_allclose(im.features[j].astype(np.float32), ref, atol=2e-3)


def test_no_weights_is_refused_unless_allowed_and_bpe_ships_with_the_package(tmp_path, bpe_path):
    from afov_ray.config import ConfigError
    from afov_ray.teachers.maskclip import BUNDLED_BPE

    with pytest.raises(ConfigError, match="teacher.maskclip.weights.*allow_random_weights"):
        MaskCLIPTeacher(MaskCLIPConfig(model="tiny", device="cpu"), ["car"])
    from afov_ray.teachers.clip_tokenizer import CLIPTokenizer

    tok = CLIPTokenizer(BUNDLED_BPE, context_length=77)   # the bundled BPE vocabulary (the real CLIP one)
    assert tok.vocab_size == 49408 and len(tok(["a photo of a car"])[0]) == 77
    with pytest.raises(DataError, match="49408 ids but the model tiny embeds"):   # used when bpe_path is empty
        MaskCLIPTeacher(MaskCLIPConfig(model="tiny", device="cpu", allow_random_weights=True), ["car"])
    bad = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(bad))
    with pytest.raises(DataError, match="runs code when loaded"):
        MaskCLIPTeacher(MaskCLIPConfig(model="tiny", device="cpu", weights=str(bad), bpe_path=bpe_path), ["car"])


def test_missing_bpe_is_named(tmp_path):
    missing = tmp_path / "no_vocab.txt.gz"
    with pytest.raises(DataError) as e:
        MaskCLIPTeacher(MaskCLIPConfig(model="tiny", bpe_path=str(missing), device="cpu", allow_random_weights=True),
                        ["car"])
    assert str(missing) in str(e.value)


def test_random_weights_are_refused_unless_allowed(bpe_path):
    with pytest.raises(ConfigError, match="teacher.maskclip.weights.*allow_random_weights"):
        MaskCLIPTeacher(MaskCLIPConfig(model="tiny", bpe_path=bpe_path, device="cpu"), ["car"])


# ------------------------------------------------------------------ end to end through Ray Data
@pytest.mark.ray
def test_teacher_pass_maskclip_with_ray(tmp_path, bpe_path, monkeypatch):
    import pyarrow.parquet as pq
    import ray
    from PIL import Image

    from afov_ray.datasets.sweeps import keyframes_to_table
    from afov_ray.datasets.types import CameraFrame, Keyframe
    from afov_ray.pipeline.shard_pass import ExecConfig
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
    from afov_ray.runtime import init_ray
    from afov_ray.storage.atomic import atomic_write_parquet
    from afov_ray.storage.manifest import write_folder_manifest
    from afov_ray.teachers.dictionary import ClassDictionary
    from afov_ray.teachers.schema import from_table, read_run

    dataroot = tmp_path / "data"
    rng = np.random.default_rng(1)
    sizes = {"CAM_FRONT": (30, 44), "CAM_BACK": (26, 40)}
    kfs = []
    for s in range(2):
        cams = []
        for ch, (h, w) in sizes.items():
            rel = f"samples/{ch}/s{s}_{ch}.jpg"
            (dataroot / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(dataroot / rel, quality=90)
            cams.append(CameraFrame(channel=ch, token=f"cam-{s}-{ch}", image_path=rel, width=w, height=h,
                                    K=np.eye(3), lidar_to_cam=np.eye(4)))
        kfs.append(Keyframe(dataset="nuscenes", sample_token=f"sample-{s}", lidar_token=f"lidar-{s}",
                            scene="scene-0001", timestamp=s, points=np.zeros((4, 4), np.float32), cameras=cams))
    sweeps = tmp_path / "sweeps"
    atomic_write_parquet(str(sweeps / "scene-0001.parquet"), keyframes_to_table(kfs))
    write_folder_manifest(str(sweeps), schema="sweeps", schema_version=1)

    mc = _cfg(bpe_path, templates="plain")
    cfg = TeacherPassConfig(teacher="maskclip", dataroot=str(dataroot), dictionary="nuscenes", maskclip=mc,
                            exec=ExecConfig(max_actors=1, cpus_per_item=1.0, progress=False))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    init_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        summary = run_teacher_pass(str(sweeps), str(tmp_path / "teacher"), cfg)
    finally:
        ray.shutdown()
    assert summary.stats["images"] == 4 and summary.written == ["scene-0001"] and summary.exit_code == 0

    run_dir = tmp_path / "teacher" / summary.stats["run_id"]
    run, text = read_run(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    d = ClassDictionary.load("nuscenes")
    assert run.model_id.startswith("maskclip:tiny:gelu:random-init-s0:short32:tpl-")
    assert run.feature_dim == TINY.embed_dim and run.vocabulary_hash == d.vocabulary_hash()
    assert meta["maskclip"]["model"] == "tiny" and meta["config"]["teacher"] == "maskclip"
    assert text.embeddings.shape == (d.num_texts, TINY.embed_dim) and not text.void_row

    images = from_table(pq.read_table(run_dir / "images" / "scene-0001.parquet"))
    assert sorted(im.camera_token for im in images) == sorted(c.token for kf in kfs for c in kf.cameras)
    local = MaskCLIPTeacher(mc, list(d.texts))
    np.testing.assert_allclose(local.text_embeddings.numpy(), text.embeddings, atol=1e-6)
    for im in images:
        im.validate(num_texts=d.num_texts, feature_dim=TINY.embed_dim)
        h, w = sizes[im.camera]
        assert im.image_size == (h, w) and (im.mask_map > 0).all() and int(im.area.sum()) == h * w
        rel = next(c.image_path for kf in kfs for c in kf.cameras if c.token == im.camera_token)
        again = local(np.array(Image.open(dataroot / rel).convert("RGB")))
        assert np.array_equal(again.mask_map, im.mask_map) and np.array_equal(again.text_index, im.text_index)
        np.testing.assert_allclose(again.features.astype(np.float32), im.features.astype(np.float32), atol=1e-3)
