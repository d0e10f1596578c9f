"""Built-in MaskCLIP teacher: dense CLIP features -> semantic masks -> mask features.

A training-free open-vocabulary teacher that produces outputs of the same kind as the official SAN /
CAT-Seg teachers (docs/method.md "Teacher models", "semantic" mask style), from a plain CLIP checkpoint:

1. **Text embeddings** (docs/method.md "Teacher models"): each vocabulary text is put into every prompt
   template (``IMAGENET_TEMPLATES``, the 80 OpenAI ImageNet templates CAT-Seg averages over, or
   ``VILD_TEMPLATES``, the 14 "vild" templates of SAN / FC-CLIP), each prompt is encoded and
   L2-normalised, the mean over templates is L2-normalised again. Each distinct text is encoded once,
   so identical texts get bit-identical rows.
2. **Dense features**: the image (RGB, short side resized to ``image_short_side``, both sides
   rounded to a multiple of the patch size, OpenAI mean/std) goes through
   :meth:`afov_ray.teachers.clip_model.CLIP.dense_features` (MaskCLIP's value-path last block):
   F (h, w, D).
3. **Masks** (SAN / CAT-Seg "semantic"): the cosine of each normalised F cell with each text
   embedding gives (h, w, T) logits, up-sampled bilinearly (``align_corners=False``) to the original
   image size; the per-pixel argmax over texts labels every pixel; one mask per present text, mask ids
   1..n in ascending text order.
4. **Mask features** (CAT-Seg): ``normalise(sum_{p in mask} F_up(p))`` with F_up the bilinearly
   up-sampled F (not normalised per cell), stored as float16.

Full-resolution (H, W, D) tensors are never materialised: bilinear up-sampling is separable and each
output pixel mixes at most 2x2 cells, so (a) the logits are up-sampled along x once at feature-row
resolution (h, W, T) and then along y in chunks of ``row_chunk`` output rows for the argmax, and
(b) the mask sums are exact re-weightings of the low-resolution cells:
``sum_{p in m} F_up(p) = sum_{ij} W_m[i, j] F[i, j]`` with ``W_m = Ry^T 1_m Rx`` (Ry, Rx the 1-D
bilinear matrices); per chunk, ``1_m Rx`` is a weighted bincount over (row, mask, j) and the Ry rows
of the chunk are applied with a small matmul. Memory is O(row_chunk * W * T + T * h * w); the result
equals pooling the explicitly up-sampled features (tested against ``F.interpolate``).

Weights come from a local file (``weights``); nothing is downloaded. ``weights=""`` builds a
seeded random model (tests). The BPE merges file is local too (``bpe_path``, see
:mod:`afov_ray.teachers.clip_tokenizer`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from afov_ray.config import ConfigError, option
from afov_ray.errors import DataError
from afov_ray.teachers.clip_model import OPENAI_MEAN, OPENAI_STD, clip_config, load_clip, read_state_dict
from afov_ray.teachers.clip_tokenizer import CLIPTokenizer
from afov_ray.teachers.schema import TeacherImage

# 80 OpenAI ImageNet prompt templates (CLIP's zero-shot notebook; CAT-Seg's ensemble)
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

# 14 ViLD templates (SAN "vild", FC-CLIP VILD_PROMPT)
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene", "There is the {} in the scene",
    "a photo of a {} in the scene", "a photo of a small {}.", "a photo of a medium {}.", "a photo of a large {}.",
    "This is a photo of a small {}.", "This is a photo of a medium {}.", "This is a photo of a large {}.",
    "There is a small {} in the scene.", "There is a medium {} in the scene.", "There is a large {} in the scene.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"imagenet": IMAGENET_TEMPLATES, "vild": VILD_TEMPLATES, "plain": ("{}",)}


@dataclass
class MaskCLIPConfig:
    name: str = option("maskclip", "teacher name (the run id is derived from it and the settings)")
    model: Literal["ViT-B-16", "ViT-L-14-336", "tiny"] = option("ViT-L-14-336", "CLIP architecture preset")
    quick_gelu: bool = option(True, "QuickGELU activations (OpenAI weights); false for LAION / DataComp weights")
    weights: str = option("", "local CLIP weights (.pt / .pth / .bin / .safetensors state dict); required unless "
                              "allow_random_weights")
    bpe_path: str = option("", "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); empty: the copy shipped in the "
                               "package")
    templates: Literal["imagenet", "vild", "plain"] = option(
        "imagenet", "prompt templates: imagenet (80, CAT-Seg) | vild (14, SAN / FC-CLIP) | plain ('{}')")
    custom_templates: list[str] = option([], "prompt templates replacing `templates` when non-empty")
    image_short_side: int = option(336, "CLIP input short side (336 -> 24 rows of 14-px patches)", min=16)
    device: str = option("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    amp: bool = option(True, "float16 autocast for the image tower on CUDA")
    row_chunk: int = option(0, "output rows per chunk for the argmax / pooling; 0 = auto (CUDA 64, CPU 8)", min=0)
    text_batch: int = option(256, "prompts per text-encoder batch", min=1)
    seed: int = option(0, "random-init seed (only with allow_random_weights)")
    allow_random_weights: bool = option(False, "run without weights (random init; tests only): the run record says so")
    allow_torchscript: bool = option(False, "accept an OpenAI TorchScript weights archive (it runs code when loaded: "
                                            "only for a file you trust; better convert it once to a state dict)")

    def template_list(self) -> tuple[str, ...]:
        if self.custom_templates:
            return tuple(self.custom_templates)
        if self.templates not in TEMPLATE_SETS:
            raise ValueError(f"maskclip.templates must be one of {sorted(TEMPLATE_SETS)}, got {self.templates!r}")
        return TEMPLATE_SETS[self.templates]

    def clip_config(self):
        return clip_config(self.model, quick_gelu=self.quick_gelu)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


BUNDLED_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bpe_simple_vocab_16e6.txt.gz")


def weights_sha256(path: str) -> str:
    """Full sha256 of the weights file (for the run record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weights_id(path: str) -> str:
    """``sha256-<16 hex>`` of the weights file (cached by path, size, mtime), or ``random-init``."""
    if not path:
        return "random-init"
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(path, f"CLIP weights file not found: {exc}") from exc
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = f"sha256-{h.hexdigest()[:16]}"
    return _SHA_CACHE[key]


def model_id(cfg: MaskCLIPConfig) -> str:
    """Identity of the teacher for the run record: preset, activation, weights hash, input size, templates."""
    tpl = hashlib.sha256(json.dumps(list(cfg.template_list())).encode()).hexdigest()[:8]
    wid = weights_id(cfg.weights)
    if wid == "random-init":
        wid += f"-s{cfg.seed}"
    act = "quickgelu" if cfg.quick_gelu else "gelu"
    return f"maskclip:{cfg.model}:{act}:{wid}:short{cfg.image_short_side}:tpl-{tpl}"


def bilinear_taps(n_out: int, n_in: int):
    """Source indices and weights of 1-D bilinear up-sampling with ``align_corners=False``
    (torch ``F.interpolate`` convention): out[k] = (1 - lam[k]) * in[i0[k]] + lam[k] * in[i1[k]]."""
    import torch

    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    lam = (src - i0.double()).float()
    return i0, i1, lam


def label_and_pool(feats, text_emb, out_hw: tuple[int, int], row_chunk: int = 0):
    """Per-pixel text labels at ``out_hw`` and per-text feature sums, without full-resolution tensors.

    ``feats`` (h, w, D) dense features, ``text_emb`` (T, D) unit rows (same device). Returns
    (labels (H, W) int64 text index, sums (T, D) float32 = sum over each text's pixels of the
    bilinearly up-sampled ``feats``, area (T,) int64 pixel counts). See the module docstring.
    """
    import torch
    import torch.nn.functional as F

    H, W = out_hw
    h, w, D = feats.shape
    T = text_emb.shape[0]
    dev = feats.device
    feats = feats.float()
    logits = F.normalize(feats, dim=-1) @ text_emb.float().T                      # (h, w, T)
    x0, x1, lx = (t.to(dev) for t in bilinear_taps(W, w))
    y0, y1, ly = (t.to(dev) for t in bilinear_taps(H, h))
    along_x = torch.lerp(logits[:, x0], logits[:, x1], lx[None, :, None])          # (h, W, T)
    labels = torch.empty(H, W, dtype=torch.long, device=dev)
    weight = torch.zeros(h, T * w, dtype=torch.float64, device=dev)                 # W_m[i, j] at [i, m*w + j]
    step = max(1, int(row_chunk)) if row_chunk else (64 if dev.type == "cuda" else 8)
    wx01 = torch.stack([(1 - lx).double(), lx.double()])[None]                     # (1, 2, W)
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        if r1 - r0 == 1:   # one row: lerp two views with a scalar weight, no gather copies
            lab = torch.lerp(along_x[y0[r0]], along_x[y1[r0]], float(ly[r0])).argmax(dim=-1)[None]
        else:
            lab = torch.lerp(along_x[y0[r0:r1]], along_x[y1[r0:r1]], ly[r0:r1, None, None]).argmax(dim=-1)
        labels[r0:r1] = lab                                                         # (c, W)
        # g[r, m*w + j] = sum_x [label(r, x) = m] Rx[x, j]; then W[i] += Ry[r, i] g[r]
        c = r1 - r0
        base = torch.arange(c, device=dev)[:, None] * (T * w) + lab * w
        idx = torch.cat([(base + x0[None, :]).reshape(-1), (base + x1[None, :]).reshape(-1)])
        g = torch.bincount(idx, weights=wx01.expand(c, 2, W).transpose(0, 1).reshape(-1), minlength=c * T * w)
        ry = torch.zeros(c, h, dtype=torch.float64, device=dev)                    # Ry rows of the chunk
        rows = torch.arange(c, device=dev)
        ry[rows, y0[r0:r1]] += 1 - ly[r0:r1].double()
        ry[rows, y1[r0:r1]] += ly[r0:r1].double()
        weight += ry.T @ g.view(c, T * w)
    weight = weight.view(h, T, w).permute(1, 0, 2).reshape(T, h * w)
    sums = weight.float() @ feats.reshape(h * w, D)                # (T, D)
    area = torch.bincount(labels.reshape(-1), minlength=T)
    return labels, sums, area


class MaskCLIPTeacher:
    """MaskCLIP teacher over a fixed vocabulary (module docstring). Loads the model once.

    ``text_embeddings`` (T, D): precomputed rows for ``texts`` (e.g. from the run record); when None
    they are computed with :meth:`encode_texts`.
    """

    def __init__(self, cfg: MaskCLIPConfig, texts: Sequence[str], text_embeddings: np.ndarray | None = None):
        import torch

        self.cfg = cfg
        self.device = torch.device(resolve_device(cfg.device))
        self.clip_cfg = cfg.clip_config()
        if not cfg.weights and not cfg.allow_random_weights:
            raise ConfigError("config key 'teacher.maskclip.weights': required (a local CLIP state dict); a MaskCLIP "
                              "teacher with random weights labels nothing meaningful (set "
                              "teacher.maskclip.allow_random_weights=true only for tests; the run records it)")
        bpe = cfg.bpe_path or BUNDLED_BPE
        self.tokenizer = CLIPTokenizer(bpe, context_length=self.clip_cfg.context_length)
        if self.tokenizer.vocab_size > self.clip_cfg.vocab_size:
            raise DataError(bpe, f"tokenizer has {self.tokenizer.vocab_size} ids but the model "
                                 f"{cfg.model} embeds {self.clip_cfg.vocab_size}")
        weights = read_state_dict(cfg.weights, cfg.allow_torchscript) if cfg.weights else None
        self.model = load_clip(weights, self.clip_cfg, seed=cfg.seed).to(self.device).eval()
        self.texts = list(texts)
        if text_embeddings is None:
            emb = self.encode_texts(self.texts)
        else:
            emb = torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32))
            if emb.shape != (len(self.texts), self.clip_cfg.embed_dim):
                raise DataError("text_embeddings", f"expected ({len(self.texts)}, {self.clip_cfg.embed_dim}), "
                                                   f"got {tuple(emb.shape)}")
        self.text_embeddings = emb.to(self.device)

    @property
    def feature_dim(self) -> int:
        return int(self.clip_cfg.embed_dim)

    def encode_texts(self, texts: Sequence[str]):
        """(T, D) float32 unit rows: per text, the normalised mean of its normalised template prompts."""
        import torch
        import torch.nn.functional as F

        templates = self.cfg.template_list()
        unique = sorted(set(texts))
        prompts = [t.format(text) for text in unique for t in templates]
        tokens = self.tokenizer(prompts)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)   # similar lengths share a batch
        per_prompt = torch.empty(len(prompts), self.feature_dim, dtype=torch.float32, device=self.device)
        step = max(1, self.cfg.text_batch)
        with torch.inference_mode():
            for s in range(0, len(prompts), step):
                idx = order[s:s + step].to(self.device)
                emb = self.model.encode_text(tokens[order[s:s + step]].to(self.device)).float()
                per_prompt[idx] = F.normalize(emb, dim=-1)
            per_prompt = per_prompt.view(len(unique), len(templates), -1)
            per_text = F.normalize(per_prompt.mean(dim=1), dim=-1)
        row = {text: i for i, text in enumerate(unique)}
        return per_text[[row[t] for t in texts]].cpu()

    def preprocess(self, image: np.ndarray):
        """(H, W, 3) uint8 RGB -> (1, 3, h*p, w*p) normalised float32 on the device."""
        import torch
        import torch.nn.functional as F

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.dtype} {img.shape}")
        H, W = img.shape[:2]
        p = self.clip_cfg.patch_size
        s = self.cfg.image_short_side / min(H, W)
        th, tw = (max(p, int(round(H * s / p)) * p), max(p, int(round(W * s / p)) * p))
        x = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if (th, tw) != (H, W):
            x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        mean = torch.tensor(OPENAI_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def dense(self, image: np.ndarray):
        """(h, w, D) float32 MaskCLIP features of one image."""
        import torch

        x = self.preprocess(image)
        with torch.inference_mode():
            if self.device.type == "cuda" and self.cfg.amp:
                with torch.autocast("cuda", dtype=torch.float16):
                    f = self.model.dense_features(x)
            else:
                f = self.model.dense_features(x)
        return f[0].float()

    def segment(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One image -> mask_map, mask_ids, text_index, area, features (fp16), as numpy."""
        import torch
        import torch.nn.functional as F

        H, W = np.asarray(image).shape[:2]
        feats = self.dense(image)
        with torch.inference_mode():
            labels, sums, area = label_and_pool(feats, self.text_embeddings, (H, W), self.cfg.row_chunk)
            present = torch.nonzero(area > 0).flatten()
            lut = torch.zeros(self.text_embeddings.shape[0], dtype=torch.long, device=labels.device)
            lut[present] = torch.arange(1, present.numel() + 1, device=labels.device)
            mask_map = lut[labels]
            feats_out = F.normalize(sums[present], dim=-1)
        n = int(present.numel())
        return {
            "mask_map": mask_map.cpu().numpy().astype(np.uint8 if n <= 255 else np.uint16),
            "mask_ids": np.arange(1, n + 1, dtype=np.int64),
            "text_index": present.cpu().numpy().astype(np.int64),
            "area": area[present].cpu().numpy().astype(np.int64),
            "features": feats_out.cpu().numpy().astype(np.float16),
        }

    def __call__(self, image: np.ndarray, sample_token: str = "", camera: str = "", camera_token: str = "",
                 scene_token: str = ""):
        """One (sample, camera) image -> :class:`afov_ray.teachers.schema.TeacherImage`."""

        out = self.segment(image)
        H, W = out["mask_map"].shape
        return TeacherImage(sample_token=sample_token, camera=camera, image_size=(int(H), int(W)),
                            mask_map=out["mask_map"], mask_ids=out["mask_ids"], text_index=out["text_index"],
                            area=out["area"], features=out["features"], is_thing=None,
                            camera_token=camera_token, scene_token=scene_token)


def decode_image(data: bytes, item: str) -> np.ndarray:
    """Encoded image bytes (JPEG / PNG ...) -> (H, W, 3) uint8 RGB; DataError naming ``item``."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(item, f"unreadable camera image: {exc}") from exc


def config_record(cfg: MaskCLIPConfig) -> dict[str, Any]:
    """Plain-data view of the config for run records."""
    from dataclasses import asdict

    return asdict(cfg)
