from dataclasses import dataclass, field

import pytest

from afov_ray.config import ConfigError, config_hash, load_config, to_dict


@dataclass
class Inner:
    lr: float = 0.02
    groups: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 5
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 7\ninner:\n  lr: 1\n")
    cfg = load_config(Outer, p, ["inner.groups=[3]", "path=s3://b/x"])
    assert cfg.epochs == 7 and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.groups == [3] and cfg.path == "s3://b/x" and cfg.name == "x"
    assert to_dict(cfg)["inner"]["groups"] == [3]
    assert config_hash(cfg) == config_hash(load_config(Outer, p, ["inner.groups=[3]", "path=s3://b/x"]))
    assert config_hash(cfg) != config_hash(Outer())


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="inner.lrr"):
        load_config(Outer, None, ["inner.lrr=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="epochs"):
        load_config(Outer, None, ["epochs=abc"])
