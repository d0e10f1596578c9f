"""The text side of a TMP model: its teacher run's text table and prompt embeddings (docs/query.md).

A TMP model (``ModelSpec.task == "features"``) maps points into the text-image space of the teacher run it
learnt from. Zero-shot segmentation (``predict.teacher_run``) and queries (``jobs/query.py``) compare its
features with text embeddings of that same space:

- ``load_text_space``: the teacher run's ``text_embedding.npy`` rows of the class dictionary's texts, checked
  against the dictionary (text count, vocabulary hash) and the model (the run it learnt from, feature width);
- ``encode_prompts``: free prompts through the teacher's own text encoder when its weights are given (the
  CLIP text tower of ``afov_ray.teachers.clip_model``, with the teacher run's MaskCLIP settings: architecture,
  prompt templates), checked to reproduce the stored rows; without weights, only the dictionary's texts (the
  rows the run stored) can be queried, and an unknown prompt is a one-line error naming the closest texts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace

import numpy as np

from afov_ray.config import ConfigError
from afov_ray.errors import DataError
from afov_ray.log import get_logger
from afov_ray.models.spec import ModelSpec
from afov_ray.storage import uri as U
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.teachers.maskclip import MaskCLIPConfig, MaskCLIPTeacher
from afov_ray.teachers.schema import read_run, read_run_record

log = get_logger(__name__)

CLIP_CHECK_MIN_COSINE = 0.98   # re-encoded dictionary texts vs the run's stored rows


@dataclass
class TextSpace:
    """The dictionary and the teacher run's (T, D) unit text rows, in text-index order."""

    dictionary: ClassDictionary
    texts: np.ndarray
    run_uri: str
    record: dict

    @property
    def simulated(self) -> bool:
        return str(self.record.get("model_id", "")).startswith("simulated:")


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def load_text_space(teacher_run: str, spec: ModelSpec, key: str, dictionary: str | None = None) -> TextSpace:
    """The text table of ``teacher_run`` for a TMP model ``spec`` (ConfigError naming ``key`` on a mismatch)."""
    if not teacher_run:
        raise ConfigError(f"config key {key!r}: required for a TMP (features) model: the teacher run folder "
                          f"whose text embeddings the model learnt (teacher/<run_id>)")
    if spec.task != "features":
        raise ConfigError(f"the model is a {spec.task} model, not a TMP features model (zero-shot / queries need "
                          f"features in the teacher's text space, e.g. models:/afov-tmp@current)")
    run_id = U.basename(teacher_run.rstrip("/"))
    if spec.teacher_run and spec.teacher_run != run_id:
        raise ConfigError(f"config key {key!r}: the model learnt from teacher run {spec.teacher_run!r}, not "
                          f"{run_id!r}; its features live in that run's text space")
    d = ClassDictionary.load(dictionary or spec.dictionary)
    run, table = read_run(teacher_run)
    if table.num_texts != d.num_texts or run.vocabulary_hash != d.vocabulary_hash():
        raise ConfigError(f"config key {key!r}: the teacher run's {table.num_texts} texts (vocabulary "
                          f"{run.vocabulary_hash[:12]}) are not the {d.name!r} dictionary's {d.num_texts} "
                          f"({d.vocabulary_hash()[:12]})")
    if table.feature_dim != spec.out_channels:
        raise ConfigError(f"config key {key!r}: text embeddings are {table.feature_dim}-d, the model's features "
                          f"{spec.out_channels}-d")
    return TextSpace(d, _unit(table.vocabulary_rows), teacher_run, read_run_record(teacher_run))


def close_texts(prompt: str, texts: tuple[str, ...], n: int = 5) -> list[str]:
    """Dictionary texts close to ``prompt``: spelling neighbours, then texts sharing a word with it."""
    low = {t.strip().lower(): t for t in texts}
    out = [low[m] for m in difflib.get_close_matches(prompt.strip().lower(), list(low), n=n, cutoff=0.6)]
    words = set(prompt.lower().split())
    out += [t for t in texts if words & set(t.lower().replace("-", " ").split()) and t not in out]
    return list(dict.fromkeys(out))[:n]


def stored_rows(space: TextSpace, prompts: list[str], key: str) -> np.ndarray:
    """Rows of the dictionary texts named by ``prompts`` (exact text, else ignoring case and outer spaces);
    an unknown prompt is a ConfigError naming the closest texts."""
    exact = {}
    loose = {}
    for i, t in enumerate(space.dictionary.texts):
        exact.setdefault(t, i)
        loose.setdefault(t.strip().lower(), i)
    rows = []
    for p in prompts:
        i = exact.get(p, loose.get(p.strip().lower()))
        if i is None:
            near = close_texts(p, space.dictionary.texts)
            raise ConfigError(f"config key {key!r}: {p!r} is not a text of the {space.dictionary.name!r} dictionary, "
                              f"and without the teacher's text encoder (query.clip_weights) only the "
                              f"{space.dictionary.num_texts} texts whose embeddings the teacher run stored can be "
                              f"queried; close texts: " + (", ".join(repr(t) for t in near) or "none"))
        rows.append(space.texts[i])
    return np.stack(rows).astype(np.float32)


def clip_config(space: TextSpace, weights: str, model: str | None, templates: str | None, device: str,
                key: str) -> MaskCLIPConfig:
    """The teacher's CLIP settings (the run record's MaskCLIP section), with ``weights``; ``model`` /
    ``templates`` set them for a run without one (imported official teachers)."""
    if space.simulated:
        raise ConfigError(f"config key {key!r}: teacher run {U.basename(space.run_uri)} is the simulated teacher: "
                          f"its text embeddings are synthetic and no text encoder reproduces them; leave it empty "
                          f"and query the dictionary's texts")
    rec = space.record.get("maskclip") or {}
    known = {f.name for f in fields(MaskCLIPConfig)}
    cfg = MaskCLIPConfig(**{k: v for k, v in rec.items() if k in known})
    if not rec and not model:
        raise ConfigError(f"config key {key!r}: teacher run {U.basename(space.run_uri)} records no CLIP settings "
                          f"(not a MaskCLIP run): set query.clip_model (and query.templates)")
    over = {"weights": weights, "allow_random_weights": False, "device": device}
    if model:
        over["model"] = model
    if templates:
        over.update(templates=templates, custom_templates=[])
    return replace(cfg, **over)


def encode_prompts(space: TextSpace, prompts: list[str], key: str, clip_weights: str = "",
                   clip_model: str | None = None, templates: str | None = None, device: str = "cpu",
                   check: bool = True) -> tuple[np.ndarray, str]:
    """(P, D) unit prompt embeddings in the run's text space and a sentence saying how they were made."""
    if not prompts:
        raise ConfigError(f"config key {key!r}: give at least one text prompt")
    if not clip_weights:
        how = (f"prompts taken from the teacher run's stored text embeddings ({space.dictionary.num_texts} "
               f"{space.dictionary.name} dictionary texts; set query.clip_weights to encode free prompts with "
               f"the teacher's CLIP text tower)")
        return stored_rows(space, prompts, key), how
    cfg = clip_config(space, clip_weights, clip_model, templates, device, "query.clip_weights")
    probe = list(dict.fromkeys(space.dictionary.texts))[:4]
    teacher = MaskCLIPTeacher(cfg, list(prompts) + probe)
    emb = _unit(teacher.text_embeddings.cpu().numpy())
    if check:
        idx = [space.dictionary.texts.index(t) for t in probe]
        cos = float(np.mean(np.sum(emb[len(prompts):] * space.texts[idx], axis=1)))
        if cos < CLIP_CHECK_MIN_COSINE:
            raise ConfigError(f"config key 'query.clip_weights': {cfg.model} with these weights and templates "
                              f"({cfg.templates}) does not reproduce the teacher run's text embeddings (mean cosine "
                              f"{cos:.3f} with the stored rows of {probe}); use the teacher's weights, or "
                              f"query.clip_check=false to go on anyway")
    how = f"prompts encoded with the teacher's CLIP text tower ({cfg.model}, {len(cfg.template_list())} templates)"
    return emb[: len(prompts)], how


def require_features_model(spec: ModelSpec | None, source: str) -> ModelSpec:
    if spec is None:
        raise DataError(source, "no model contract (ModelSpec) with the weights: a TMP features model registered "
                                "by jobs/tmp.py is needed")
    return spec
