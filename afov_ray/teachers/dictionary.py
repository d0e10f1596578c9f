"""Class dictionary: teacher texts grouped in dataset categories.

docs/method.md "Class dictionary and label maps".

The dictionary is data (``nuscenes_dictionary.yaml``, ``kitti_dictionary.yaml``); this module loads and
validates it and derives the lookup tables used everywhere else:

    text index -> category index -> raw dataset id -> evaluation id (0 = ignore)

YAML layout::

    name: nuscenes
    ignore_index: 0
    eval_classes: [ignore, barrier, ...]          # index = eval id
    categories:
      - {name: vehicle.car, raw_id: 17, eval_id: 4, texts: [car, sedan, ...]}
      ...

The flattened ``texts`` (category order, then list order) are the vocabulary; a text's position is the
``category_id`` the 2D teachers write.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from afov_ray.errors import DataError

_BUILTIN = {
    "nuscenes": "nuscenes_dictionary.yaml",
    "kitti": "kitti_dictionary.yaml",
    "semantickitti": "kitti_dictionary.yaml",
}


@dataclass(frozen=True)
class Category:
    """One dataset category: its raw dataset id, its eval id and the texts that stand for it."""

    name: str
    raw_id: int
    eval_id: int
    texts: tuple[str, ...]


def vocabulary_hash(texts: tuple[str, ...] | list[str]) -> str:
    """sha256 hex digest of the ordered texts, serialised as a UTF-8 JSON list (exact, order-sensitive)."""
    payload = json.dumps(list(texts), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class ClassDictionary:
    """Teacher vocabulary grouped in categories, with raw and eval ids (docs/method.md "Class dictionary
    and label maps").

    Build it with :meth:`load` (``"nuscenes"``, ``"kitti"`` or a path to a YAML file) or
    :meth:`from_dict`.
    """

    name: str
    categories: tuple[Category, ...]
    eval_class_names: tuple[str, ...]
    ignore_index: int = 0
    source: str = "<dict>"

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, name_or_path: str | Path) -> "ClassDictionary":
        """Load a built-in dictionary by name (``nuscenes``, ``kitti``) or any YAML file by path."""
        import yaml

        key = str(name_or_path).lower()
        path = Path(__file__).with_name(_BUILTIN[key]) if key in _BUILTIN else Path(name_or_path)
        if not path.is_file():
            raise DataError(str(path), f"class dictionary not found (built-ins: {sorted(set(_BUILTIN))})")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DataError(str(path), f"invalid YAML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "ClassDictionary":
        """Validate a parsed dictionary mapping; errors name ``source`` and the bad field."""
        if not isinstance(data, dict):
            raise DataError(source, "top level must be a mapping")
        for key in ("name", "eval_classes", "categories"):
            if key not in data:
                raise DataError(f"{source}:{key}", "missing field")
        eval_names = data["eval_classes"]
        if not isinstance(eval_names, list) or not all(isinstance(n, str) for n in eval_names) or not eval_names:
            raise DataError(f"{source}:eval_classes", "must be a non-empty list of names")
        ignore = data.get("ignore_index", 0)
        if not isinstance(ignore, int) or not 0 <= ignore < len(eval_names):
            raise DataError(f"{source}:ignore_index", f"must be an eval id in 0..{len(eval_names) - 1}")
        raw_cats = data["categories"]
        if not isinstance(raw_cats, list) or not raw_cats:
            raise DataError(f"{source}:categories", "must be a non-empty list")
        cats = []
        for i, c in enumerate(raw_cats):
            item = f"{source}:categories[{i}]"
            if not isinstance(c, dict):
                raise DataError(item, "must be a mapping")
            for key in ("name", "raw_id", "eval_id", "texts"):
                if key not in c:
                    raise DataError(f"{item}.{key}", "missing field")
            if not isinstance(c["raw_id"], int) or c["raw_id"] < 0:
                raise DataError(f"{item}.raw_id", f"must be a non-negative int, got {c['raw_id']!r}")
            if not isinstance(c["eval_id"], int) or not 0 <= c["eval_id"] < len(eval_names):
                raise DataError(f"{item}.eval_id", f"must be in 0..{len(eval_names) - 1}, got {c['eval_id']!r}")
            texts = c["texts"]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
                raise DataError(f"{item}.texts", "must be a non-empty list of non-empty strings")
            cats.append(Category(str(c["name"]), c["raw_id"], c["eval_id"], tuple(texts)))
        return cls(str(data["name"]), tuple(cats), tuple(eval_names), ignore, source)

    # ------------------------------------------------------------------ vocabulary
    @cached_property
    def texts(self) -> tuple[str, ...]:
        """The vocabulary: all texts flattened in category order (index = teacher ``category_id``)."""
        return tuple(t for c in self.categories for t in c.texts)

    @property
    def num_texts(self) -> int:
        return len(self.texts)

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def num_eval_classes(self) -> int:
        """Number of eval ids including the ignore id 0 (= the network's output width, e.g. 17)."""
        return len(self.eval_class_names)

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Number of texts per category (the diagonal block sizes of :meth:`same_category_matrix`)."""
        return tuple(len(c.texts) for c in self.categories)

    def vocabulary_hash(self) -> str:
        """sha256 of the ordered texts (see module function :func:`vocabulary_hash`)."""
        return vocabulary_hash(self.texts)

    # ------------------------------------------------------------------ lookup tables
    @cached_property
    def text_to_category(self) -> np.ndarray:
        """(T,) int64: category index of each text."""
        return np.repeat(np.arange(self.num_categories, dtype=np.int64), self.block_sizes)

    @cached_property
    def category_to_raw(self) -> np.ndarray:
        """(NC,) int64: raw dataset id (nuScenes lidarseg 1..31, SemanticKITTI raw label) per category."""
        return np.array([c.raw_id for c in self.categories], dtype=np.int64)

    @cached_property
    def category_to_eval(self) -> np.ndarray:
        """(NC,) uint8: eval id per category (0 = ignore)."""
        return np.array([c.eval_id for c in self.categories], dtype=np.uint8)

    @cached_property
    def text_to_raw(self) -> np.ndarray:
        """(T,) int64: raw dataset id per text."""
        return self.category_to_raw[self.text_to_category]

    @cached_property
    def text_to_eval(self) -> np.ndarray:
        """(T,) uint8: eval id per text (0 = ignore)."""
        return self.category_to_eval[self.text_to_category]

    @cached_property
    def raw_to_eval(self) -> dict[int, int]:
        """raw id -> eval id for the raw ids the dictionary covers (others are not listed here)."""
        out: dict[int, int] = {}
        for c in self.categories:
            if out.setdefault(c.raw_id, c.eval_id) != c.eval_id:
                raise DataError(f"{self.source}:{c.name}", f"raw id {c.raw_id} mapped to two eval ids")
        return out

    def same_category_matrix(self, dtype: Any = np.float32) -> np.ndarray:
        """(T, T) 0/1 block-diagonal matrix: 1 where two texts belong to the same category (section 2.2)."""
        cat = self.text_to_category
        return (cat[:, None] == cat[None, :]).astype(dtype)

    def texts_of_eval_class(self, eval_id: int) -> list[int]:
        """Text indices whose eval id is ``eval_id``."""
        return np.flatnonzero(self.text_to_eval == eval_id).tolist()
