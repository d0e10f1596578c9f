"""A self-contained ViT CLIP with the exact ``open_clip`` state-dict layout, plus MaskCLIP dense features.

Why not ``import open_clip``: open_clip imports torchvision, and the PyPI torchvision wheels fail to
import beside the torch build used here (``operator torchvision::nms does not exist``). The model is
small, so it is re-implemented with the same parameter names, shapes and semantics as
``open_clip.model.CLIP`` (VisionTransformer image tower, text Transformer) for the standard ViT
models, so a user's local open_clip or OpenAI CLIP state dict loads with ``load_state_dict(strict=True)``:

    visual.conv1.weight                   (width, 3, p, p), no bias
    visual.class_embedding                (width,)
    visual.positional_embedding           (grid*grid + 1, width)
    visual.ln_pre.{weight,bias}
    visual.transformer.resblocks.N.ln_1.{weight,bias}
    visual.transformer.resblocks.N.attn.in_proj_weight / in_proj_bias   (3*width, width) / (3*width,)
    visual.transformer.resblocks.N.attn.out_proj.{weight,bias}
    visual.transformer.resblocks.N.ln_2.{weight,bias}
    visual.transformer.resblocks.N.mlp.c_fc.{weight,bias} / mlp.c_proj.{weight,bias}   (mlp ratio 4)
    visual.ln_post.{weight,bias}
    visual.proj                           (width, embed_dim)
    token_embedding.weight                (vocab_size, text width)
    positional_embedding                  (context_length, text width)
    transformer.resblocks.N.*             (same block layout as the image tower)
    ln_final.{weight,bias}
    text_projection                       (text width, embed_dim)
    logit_scale                           ()

Semantics as open_clip: pre-LN residual blocks ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, the
MLP activation is ``QuickGELU`` (``x * sigmoid(1.702 x)``, OpenAI weights) or exact ``GELU`` (LAION /
DataComp weights), selected by :attr:`CLIPConfig.quick_gelu`; LayerNorm eps 1e-5 computed in float32;
the text tower is causal (upper-triangular -inf mask) and pools the token at ``argmax(token id)``
(the end-of-text token has the largest id); the image tower pools the class token after ``ln_post``.

**MaskCLIP dense features** (Zhou et al., ECCV 2022; official ``mmseg`` implementation, class
``TransformerEncoderLayer.forward(return_qkv=True)`` and ``VisionTransformer.forward`` with
``skip_last_attn``): all blocks but the last run unchanged. For the last block, with input ``x``::

    v = out_proj(W_v ln_1(x) + b_v)        # the value path only: no query-key attention mixing
    v = v + x                              # residual
    v = v + mlp(ln_2(v))                   # the block's MLP with its residual
    F = ln_post(v) @ proj                  # per token, class token dropped -> (B, h, w, embed_dim)

This is exactly what :meth:`CLIP.dense_features` computes. Inputs of another size than the training
resolution (non-square, larger) use the positional embedding's patch grid resized with **bicubic**
interpolation (``align_corners=False``, no antialiasing: MaskCLIP's ``resize_pos_embed``), the class
token's position kept as is.

This module imports torch when imported: import it lazily (``afov_ray.teachers`` does not import it).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from afov_ray.errors import DataError

# OpenAI CLIP image normalisation (open_clip OPENAI_DATASET_MEAN / STD), RGB in [0, 1]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# keys OpenAI's own checkpoints carry beside the weights (dropped by its ``build_model``)
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class CLIPConfig:
    """Shape of a ViT CLIP (the fields of open_clip's ``model_configs/*.json``, flattened)."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_size: int
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    quick_gelu: bool = False
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Numbers from open_clip ``model_configs/ViT-B-16.json`` / ``ViT-L-14-336.json`` (vision heads =
# width // 64, open_clip's default head width). open_clip's configs use nn.GELU; OpenAI's weights
# were trained with QuickGELU (open_clip forces it when loading ``pretrained="openai"``), hence
# the ``-quickgelu`` variants, named like open_clip's.
PRESETS: dict[str, CLIPConfig] = {
    "ViT-B-16": CLIPConfig(embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12, patch_size=16,
                           image_size=224, context_length=77, vocab_size=49408, text_width=512, text_layers=12,
                           text_heads=8),
    "ViT-L-14-336": CLIPConfig(embed_dim=768, vision_width=1024, vision_layers=24, vision_heads=16, patch_size=14,
                               image_size=336, context_length=77, vocab_size=49408, text_width=768,
                               text_layers=12, text_heads=12),
    # random-init test model: 2 layers per tower, 8x8 grid of 4-pixel patches, 16-token context
    "tiny": CLIPConfig(embed_dim=16, vision_width=32, vision_layers=2, vision_heads=2, patch_size=4,
                       image_size=32, context_length=16, vocab_size=1024, text_width=24, text_layers=2,
                       text_heads=2),
}


def clip_config(name: str, **overrides: Any) -> CLIPConfig:
    """Preset by name (``ViT-B-16``, ``ViT-L-14-336``, ``tiny``); a ``-quickgelu`` suffix sets
    ``quick_gelu=True``; keyword overrides replace fields."""
    base, quick = (name[: -len("-quickgelu")], True) if name.endswith("-quickgelu") else (name, None)
    if base not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; known: {sorted(PRESETS)} (optionally with -quickgelu)")
    cfg = PRESETS[base]
    if quick is not None:
        cfg = replace(cfg, quick_gelu=True)
    return replace(cfg, **overrides) if overrides else cfg


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, cast back (open_clip ``LayerNorm``)."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float() if self.weight is not None else None,
                            self.bias.float() if self.bias is not None else None, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, causal: bool = False):
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, c))

    def value_path(self, x):
        """``out_proj(W_v x + b_v)``: the attention output if every token attended only to itself."""
        c = x.shape[-1]
        v = F.linear(x, self.in_proj_weight[2 * c:], self.in_proj_bias[2 * c:])
        return self.out_proj(v)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x, causal: bool = False):
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))

    def forward_value_path(self, x):
        """MaskCLIP's last-block variant (module docstring)."""
        v = x + self.attn.value_path(self.ln_1(x))
        return v + self.mlp(self.ln_2(v))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)])

    def forward(self, x, causal: bool = False):
        for blk in self.resblocks:
            x = blk(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        w = cfg.vision_width
        self.patch_size = cfg.patch_size
        self.grid = cfg.grid_size
        scale = w ** -0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid * self.grid + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio, cfg.quick_gelu)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))
        self._pos_cache: dict[tuple, Any] = {}

    def pos_embed(self, gh: int, gw: int):
        """(1 + gh*gw, width) positional embedding for a gh x gw patch grid (bicubic resize)."""
        pe = self.positional_embedding
        if (gh, gw) == (self.grid, self.grid):
            return pe
        key = (gh, gw, pe.device, pe.dtype, pe._version)
        hit = self._pos_cache.get(key)
        if hit is not None:
            return hit
        cls, grid = pe[:1], pe[1:]
        g = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2).float()
        g = F.interpolate(g, size=(gh, gw), mode="bicubic", align_corners=False)
        out = torch.cat([cls, g.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pe.dtype)], dim=0)
        self._pos_cache = {key: out}
        return out

    def tokens(self, images):
        """Images (B, 3, H, W) -> (tokens (B, 1 + gh*gw, width) after ln_pre, gh, gw)."""
        x = self.conv1(images.to(self.conv1.weight.dtype))
        b, c, gh, gw = x.shape
        x = x.reshape(b, c, gh * gw).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(b, 1, c)
        x = torch.cat([cls, x], dim=1) + self.pos_embed(gh, gw).to(x.dtype)
        return self.ln_pre(x), gh, gw

    def forward(self, images):
        x, _, _ = self.tokens(images)
        x = self.ln_post(self.transformer(x))
        return x[:, 0] @ self.proj

    def dense(self, images):
        """MaskCLIP dense features (B, gh, gw, embed_dim) (module docstring)."""
        x, gh, gw = self.tokens(images)
        blocks = self.transformer.resblocks
        for blk in blocks[:-1]:
            x = blk(x)
        x = blocks[-1].forward_value_path(x)
        x = self.ln_post(x[:, 1:]) @ self.proj
        return x.reshape(x.shape[0], gh, gw, -1)


class CLIP(nn.Module):
    """open_clip-compatible ViT CLIP (module docstring lists the state-dict keys)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio,
                                       cfg.quick_gelu)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.init_parameters()

    def init_parameters(self) -> None:
        """open_clip's initialisation (only matters for random-init models)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tr in (self.transformer, self.visual.transformer):
            proj_std = (tr.width ** -0.5) * ((2 * tr.layers) ** -0.5)
            attn_std = tr.width ** -0.5
            fc_std = (2 * tr.width) ** -0.5
            for blk in tr.resblocks:
                nn.init.normal_(blk.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, images, normalize: bool = False):
        """(B, 3, H, W) normalised images -> (B, embed_dim) (class token)."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def dense_features(self, images):
        """(B, 3, H, W) normalised images -> (B, H//p, W//p, embed_dim) MaskCLIP patch features."""
        return self.visual.dense(images)

    def encode_text(self, tokens, normalize: bool = False):
        """(B, context_length) int64 token ids -> (B, embed_dim) (end-of-text token pooled).

        Positions after the last end-of-text token are dropped before the transformer: with causal
        attention they cannot influence the pooled token, so the result is the same, only cheaper.
        """
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {self.context_length}")
        eot = tokens.argmax(dim=-1)
        n = int(eot.max()) + 1 if tokens.numel() else tokens.shape[1]
        x = self.token_embedding(tokens[:, :n]).to(self.dtype)
        x = x + self.positional_embedding[:n].to(x.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


def build_clip(cfg: CLIPConfig, seed: int | None = 0):
    """A randomly initialised :class:`CLIP` (seeded when ``seed`` is not None), in eval mode."""
    if seed is None:
        model = CLIP(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIP(cfg)
    return model.eval()


def read_state_dict(path: str | os.PathLike, allow_torchscript: bool = False) -> dict[str, Any]:
    """Load a CLIP state dict from a local file.

    Accepts ``.safetensors`` (needs the optional ``safetensors`` package) and plain ``torch.save`` state
    dicts (``.pt`` / ``.pth`` / ``.bin``; open_clip checkpoints, possibly wrapped in ``{"state_dict":
    ...}`` with ``module.`` prefixes), read with ``weights_only=True``: nothing in the file is executed.
    OpenAI's original TorchScript archives (``ViT-L-14-336px.pt``) hold code, so they are refused unless
    ``allow_torchscript`` (``teacher.maskclip.allow_torchscript``) says the file is trusted; the error says how
    to convert one into a plain state dict once. Never downloads anything.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError(p, "CLIP weights file not found (weights are read from a local path; nothing is downloaded)")
    if p.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise DataError(p, "reading .safetensors needs the 'safetensors' package; convert to .pt or install it") \
                from exc
        sd: Any = load_file(p, device="cpu")
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as first:  # noqa: BLE001 - TorchScript archives fail here
            if not allow_torchscript:
                raise DataError(p, "not a weights-only state dict (an OpenAI TorchScript archive runs code when "
                                   "loaded). Convert a file you trust once: python -c \"import torch; "
                                   "torch.save(torch.jit.load('IN.pt', map_location='cpu').state_dict(), 'OUT.pt')\" "
                                   "or set teacher.maskclip.allow_torchscript=true") from None
            try:
                sd = torch.jit.load(p, map_location="cpu").state_dict()
            except Exception as exc:  # noqa: BLE001
                raise DataError(p, f"not a readable CLIP checkpoint ({first!r}; as TorchScript: {exc!r})") from exc
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise DataError(p, f"expected a state dict, got {type(sd).__name__}")
    return dict(sd)


def clean_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Strip ``module.`` prefixes and OpenAI's non-weight keys; cast tensors to float32."""
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k in _OPENAI_EXTRA_KEYS:
            continue
        out[k] = v.float() if hasattr(v, "is_floating_point") and v.is_floating_point() else v
    return out


def load_clip(path_or_state: str | os.PathLike | Mapping[str, Any] | None, cfg: CLIPConfig, seed: int = 0):
    """Build a :class:`CLIP` for ``cfg`` and load weights strictly (``load_state_dict(strict=True)``).

    ``path_or_state``: a local checkpoint path (:func:`read_state_dict`), an in-memory state dict, or
    None / "" for a random initialisation (seeded; tests only). Mismatching keys or shapes raise
    :class:`DataError` naming the file and the first offending keys.
    """
    if path_or_state is None or (isinstance(path_or_state, (str, os.PathLike)) and not os.fspath(path_or_state)):
        return build_clip(cfg, seed=seed)
    from_file = not isinstance(path_or_state, Mapping)
    if from_file:
        item, sd = os.fspath(path_or_state), read_state_dict(path_or_state)
        with torch.device("meta"):   # no random init of weights about to be replaced by the file's
            model = CLIP(cfg)
    else:   # copy, so the model never aliases the caller's tensors
        item, sd = "<state dict>", dict(path_or_state)
        model = build_clip(cfg, seed=seed)
    sd = clean_state_dict(sd)
    own = model.state_dict()
    bad_shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if bad_shapes or missing or unexpected:
        raise DataError(item, f"checkpoint does not match the CLIP config ({cfg}): shape mismatches "
                              f"{bad_shapes[:5]}, missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    model.load_state_dict(sd, strict=True, assign=from_file)
    return model.eval()
