"""The model contract: what a trained network is and what input it expects.

Every checkpoint and every registered model carries a ``ModelSpec`` beside its weights, so whoever loads
it (predict, AFI, fine-tuning, distillation, the serving model) builds exactly the network it was trained
as and feeds it the same input: architecture, output classes and their names, input channels, voxel grid
and voxel size, intensity offset, class dictionary and the teacher run it learnt from. Weights are
engine-independent (MinkowskiEngine layout, ``afov_ray.models.checkpoint``), so the engine is chosen by
whoever runs the model.

A job's own setting that contradicts the spec (``voxel_size=0.1`` for a model trained at 0.2 m) is a
one-line ``ConfigError`` naming both values (``check_overrides``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from afov_ray.config import ConfigError

SPEC_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    name: str = "res16unet34c"               # backbone: res16unet34c (official) | minkunet18 (paper)
    out_channels: int = 17                   # 17 nuScenes / 20 SemanticKITTI classes (incl. ignore 0); 768 TMP
    in_channels: int = 1                     # input feature channels (intensity)
    bn_momentum: float = 0.05
    normalize_features: bool = False         # TMP: L2-normalised per-voxel features
    task: str = "segmentation"               # segmentation | features (TMP: text-image space)
    class_names: tuple[str, ...] = ()        # per output channel (segmentation), index 0 = ignore
    grid: str = "cylindrical"                # voxel grid of the input
    voxel_size: float = 0.1                  # m (cylindrical: rho and z; phi in 1 degree bins)
    intensity_offset: float = 0.0            # added to the intensity feature (official KITTI: +1)
    dictionary: str = "nuscenes"             # class dictionary of the pseudo-labels / text table
    dataset: str = "nuscenes"
    teacher_run: str = ""                    # teacher run id the model learnt from ("" if none)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["spec_version"] = SPEC_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "class_names" in kw:
            kw["class_names"] = tuple(kw["class_names"])
        return cls(**kw)

    @property
    def num_classes(self) -> int:
        return self.out_channels


# keys a job may set that must agree with the model's spec
CONTRACT_KEYS = ("name", "out_channels", "in_channels", "grid", "voxel_size", "intensity_offset", "dictionary")


def check_overrides(spec: ModelSpec, source: str, **given: Any) -> None:
    """Raise ConfigError when a job setting (not None) contradicts the model's spec, naming both values.

    ``given`` maps config keys to (spec field, value): ``check_overrides(spec, uri, **{"ingest.voxel_size":
    ("voxel_size", 0.1)})``."""
    for key, (attr, value) in given.items():
        if value is None:
            continue
        have = getattr(spec, attr)
        same = abs(float(have) - float(value)) < 1e-9 if isinstance(have, float) else have == value
        if not same:
            raise ConfigError(f"config key {key!r} = {value!r} contradicts the model {source}, which was trained "
                              f"with {attr} = {have!r}; leave {key} unset (null) to use the model's value")
