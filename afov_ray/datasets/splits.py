"""Dataset splits: official nuScenes train/val and the pinned 1 % rules (docs/method.md "One-percent splits").

* nuScenes (scene level): iterate ``nusc.scene`` in TABLE order, count (1-based) only the scenes of
  the phase split, keep a scene when ``counter % skip_step == 0`` (skip_step = 100 -> the 100th,
  200th, ..., 700th train scene: 7 scenes, all their keyframes). Val is never skipped.
  On a small dataroot (mini, generated data) fewer than ``skip_step`` split scenes exist and the rule
  selects NOTHING. That is the rule's result and is returned as such; to get a usable tiny split set
  ``min_scenes`` explicitly: the first split scenes (table order) not already chosen are added until
  there are ``min_scenes``, and the split file records how many were added this way.
* SemanticKITTI: ``train`` = sequences 00-07, 09, 10, ``val`` = 08, ``test`` = 11-21 (the sequences present),
  and the frame-level ``train_1pct``: all ``velodyne/*.bin`` of the train sequences, full paths sorted
  lexicographically, every ``skip_step``-th from index 0 (official ``downstream/dataloader_kitti.py``).

Every split's rule records its ``level``: ``scene`` (all keyframes of its scenes) or ``frame`` (only its
``keyframes``; training selects those rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from afov_ray.errors import DataError
from afov_ray.storage import uri as suri
from afov_ray.storage.atomic import atomic_write_json

KITTI_TRAIN_SEQUENCES = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
KITTI_VAL_SEQUENCES = ("08",)
KITTI_TEST_SEQUENCES = tuple(f"{i:02d}" for i in range(11, 22))
SPLIT_FILE_FORMAT = 1


@dataclass
class Split:
    """One split: its scenes (names / sequence ids) and keyframe ids, and the rule that made it."""

    name: str
    scenes: list[str]
    keyframes: list[str]
    rule: dict[str, Any] = field(default_factory=dict)


# -- nuScenes ---------------------------------------------------------------------------------------
def resolve_nuscenes_split(split: str, version: str | None = None) -> str:
    """Name in ``create_splits_scenes()``; for a ``*-mini`` version "train"/"val" -> "mini_train"/"mini_val"."""
    if version is not None and version.endswith("mini") and split in ("train", "val"):
        return f"mini_{split}"
    return split


def nuscenes_split_scenes(split: str, version: str | None = None) -> list[str]:
    """Scene names of an official nuScenes split (devkit ``create_splits_scenes``)."""
    from nuscenes.utils.splits import create_splits_scenes

    table = create_splits_scenes()
    name = resolve_nuscenes_split(split, version)
    if name not in table:
        raise DataError(f"split {split}", f"unknown nuScenes split; known: {sorted(table)}")
    return list(table[name])


def nuscenes_skip_scenes(
    table_scenes: Sequence[str],
    split_scenes: Iterable[str],
    skip_step: int = 100,
    min_scenes: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """The 1 % scene rule (docs/method.md "One-percent splits").

    ``table_scenes``: all scene names in ``nusc.scene`` order; ``split_scenes``: the phase split.
    Returns (selected scene names in table order, rule record). ``skip_step <= 1`` keeps all.
    ``min_scenes`` > 0 tops up (explicitly, recorded in the rule) when the rule selects fewer.
    """
    wanted = set(split_scenes)
    in_split = [s for s in table_scenes if s in wanted]
    if skip_step <= 1:
        chosen = list(in_split)
    else:
        chosen = [s for counter, s in enumerate(in_split, start=1) if counter % skip_step == 0]
    by_rule = len(chosen)
    if len(chosen) < min_scenes:
        chosen_set = set(chosen)
        extra = [s for s in in_split if s not in chosen_set][: min_scenes - len(chosen)]
        keep = chosen_set | set(extra)
        chosen = [s for s in in_split if s in keep]
    rule = {
        "rule": "nuscenes table order, 1-based counter over split scenes, keep counter % skip_step == 0",
        "skip_step": skip_step,
        "split_scenes_in_table": len(in_split),
        "selected_by_rule": by_rule,
        "min_scenes": min_scenes,
        "topped_up": len(chosen) - by_rule,
    }
    return chosen, rule


def make_nuscenes_splits(
    reader: Any,
    phases: Sequence[str] = ("train", "val"),
    skip_step: int = 100,
    min_scenes: int = 0,
) -> dict[str, Split]:
    """Splits for a :class:`NuScenesReader`: the skip rule on the "train" phase, full "val" (and any
    other phase, e.g. "mini_val") never skipped. Keyframes are the reader's sample tokens."""
    table_scenes = reader.table_scenes()
    out: dict[str, Split] = {}
    for phase in phases:
        split_scenes = nuscenes_split_scenes(phase, reader.version)
        step = skip_step if resolve_nuscenes_split(phase, reader.version) in ("train", "mini_train") else 1
        scenes, rule = nuscenes_skip_scenes(table_scenes, split_scenes, step, min_scenes if step > 1 else 0)
        rule.update(dataset="nuscenes", level="scene", version=reader.version,
                    devkit_split=resolve_nuscenes_split(phase, reader.version))
        keyframes = [k for s in scenes for k in reader.keyframe_ids(s)]
        out[phase] = Split(name=phase, scenes=scenes, keyframes=keyframes, rule=rule)
    return out


def standard_nuscenes_splits(reader: Any, skip_step: int = 100, min_1pct_scenes: int = 0) -> dict[str, Split]:
    """The splits every job uses: "train" (all train scenes), "val", and "train_1pct" (the pinned
    1 % rule (docs/method.md "One-percent splits"); on small data it selects nothing unless ``min_1pct_scenes`` is
    set, and the rule record says how many scenes were added)."""
    full = make_nuscenes_splits(reader, ("train", "val"), skip_step=1)
    one = make_nuscenes_splits(reader, ("train",), skip_step=skip_step, min_scenes=min_1pct_scenes)["train"]
    full["train_1pct"] = Split(name="train_1pct", scenes=one.scenes, keyframes=one.keyframes, rule=one.rule)
    return full


# -- SemanticKITTI ----------------------------------------------------------------------------------
def make_kitti_splits(
    frames: Mapping[str, Sequence[str]],
    skip_step: int = 100,
    train_sequences: Sequence[str] = KITTI_TRAIN_SEQUENCES,
    val_sequences: Sequence[str] = KITTI_VAL_SEQUENCES,
    test_sequences: Sequence[str] = KITTI_TEST_SEQUENCES,
) -> dict[str, Split]:
    """SemanticKITTI splits from ``frames`` = {sequence: frame names} (every scan of the dataroot): the
    official sequence split (``train``, ``val``, ``test``; only sequences present) and the frame-level
    ``train_1pct``: every ``skip_step``-th of the train scans sorted by full path, from index 0."""

    def seq_split(name: str, seqs: Sequence[str], rule: str) -> Split:
        present = [s for s in sorted(frames) if s in set(seqs)]
        return Split(name=name, scenes=present, keyframes=[f"{s}/{f}" for s in present for f in sorted(frames[s])],
                     rule={"dataset": "semantickitti", "level": "scene", "rule": rule, "sequences": list(seqs)})

    step = max(int(skip_step), 1)
    paths = sorted(f"sequences/{s}/velodyne/{f}.bin" for s in frames if s in set(train_sequences) for f in frames[s])
    chosen = [f"{p.split('/')[1]}/{p.rsplit('/', 1)[1][:-4]}" for p in paths[::step]]
    out = {"train": seq_split("train", train_sequences, "official train sequences, every scan"),
           "val": seq_split("val", val_sequences, "official val sequence, every scan"),
           "train_1pct": Split(name="train_1pct", scenes=sorted({k.split("/")[0] for k in chosen}), keyframes=chosen,
                               rule={"dataset": "semantickitti", "level": "frame",
                                     "rule": "full velodyne paths of the train sequences sorted, [::skip_step] "
                                             "from index 0", "skip_step": step, "sequences": list(train_sequences),
                                     "frames_total": len(paths)})}
    if any(s in frames for s in test_sequences):
        out["test"] = seq_split("test", test_sequences, "official test sequences (no labels)")
    return out


# -- files ------------------------------------------------------------------------------------------
def write_split_file(path: str | os.PathLike, splits: dict[str, Split]) -> None:
    """Write splits as JSON: {"format": 1, "splits": {name: {scenes, keyframes, rule}}}, atomically,
    to a local path or an ``s3://`` URI."""

    doc = {"format": SPLIT_FILE_FORMAT, "splits": {k: asdict(v) for k, v in splits.items()}}
    atomic_write_json(str(path), doc, indent=1)


def read_split_file(path: str | os.PathLike) -> dict[str, Split]:
    """Read a file written by :func:`write_split_file`. DataError naming the file if malformed."""

    try:
        doc = json.loads(suri.read_bytes(str(path)))
        if doc.get("format") != SPLIT_FILE_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        return {
            k: Split(name=v["name"], scenes=list(v["scenes"]), keyframes=list(v["keyframes"]), rule=dict(v["rule"]))
            for k, v in doc["splits"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(str(path), f"bad split file: {exc}") from None
