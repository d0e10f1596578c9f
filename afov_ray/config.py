"""Typed configs: dataclasses loaded from YAML presets and overridden from the command line.

One rule for every job: ``cfg = load_config(MyConfig, yaml_path, overrides)`` where overrides are
``["loop.optim.lr=0.1", "model.engine=minkowski"]`` (dotted paths, values parsed as YAML scalars).

- **Every key is declared** with ``option(default, "help text", choices / min / max / gt)``. The help
  text is what ``--help`` prints; ``choices`` (or a ``Literal`` type) and the bounds are checked when the
  config is parsed, so ``model.engine=mink`` or ``loop.batch_size=0`` is a one-line ``ConfigError``
  naming the key before any work starts. Cross-field rules live in a dataclass's ``check()`` method.
- **Unknown keys are errors** that name the key and the closest valid keys, so a typo never silently
  does nothing.
- **Presets inherit**: a YAML file may start with ``defaults: [base.yaml, other.yaml]`` (paths relative
  to the file); those are merged in order (deep merge), then the file's own keys on top.
- ``to_dict`` gives the resolved config as plain data (for MLflow params, ``config.yaml`` artifacts and
  run records), ``flatten`` its dotted form, ``config_hash`` a stable short hash of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import yaml

from afov_ray.errors import AfovError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


class ConfigError(AfovError, ValueError):
    """A config key or value is wrong; the message names the key (one line, no traceback needed)."""


def option(default: Any = _MISSING, help: str = "", *, choices: Sequence[Any] | None = None,
           min: float | None = None, max: float | None = None, gt: float | None = None,
           factory: Any = None) -> Any:
    """A config field: ``option(0.02, "base learning rate", gt=0)``.

    ``choices``: allowed values; ``min`` / ``max``: inclusive bounds; ``gt``: exclusive lower bound
    (checked for numbers, and for every element of a list of numbers). ``factory`` builds mutable
    defaults (``option(factory=list, help=...)``)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    for k, v in (("min", min), ("max", max), ("gt", gt)):
        if v is not None:
            meta[k] = v
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        value = default
        return dataclasses.field(default_factory=lambda: dataclasses.replace(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, help: str = "", **values: Any) -> Any:
    """A nested config section with a default instance: ``section(OptimConfig, "optimiser", lr=1e-3)``."""
    return dataclasses.field(default_factory=lambda: cls(**values), metadata={"help": help})


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_union(tp) -> bool:
    origin = typing.get_origin(tp)
    return origin is typing.Union or origin is types.UnionType


def _type_label(tp) -> str:
    s = getattr(tp, "__name__", None) or str(tp)
    return s.replace("typing.", "")


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if tp is type(None) or (_is_union(tp) and type(None) in args) or tp is Any:
            return None
        raise ConfigError(f"config key {key!r}: null is not allowed (expected {_type_label(tp)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if _is_union(tp):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, key)
        for a in non_none:
            try:
                return _coerce(a, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a {' or '.join(map(_type_label, non_none))}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(args)}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected an int, got {value!r}")
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


def _check_meta(value, meta: dict, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        bad = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v not in choices]
        if bad:
            raise ConfigError(f"config key {key!r}: {bad[0]!r} is not one of {list(choices)}")
    nums = value if isinstance(value, (list, tuple)) else [value]
    for v in nums:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if "min" in meta and v < meta["min"]:
            raise ConfigError(f"config key {key!r}: must be >= {meta['min']}, got {v!r}")
        if "max" in meta and v > meta["max"]:
            raise ConfigError(f"config key {key!r}: must be <= {meta['max']}, got {v!r}")
        if "gt" in meta and not v > meta["gt"]:
            raise ConfigError(f"config key {key!r}: must be > {meta['gt']}, got {v!r}")


def all_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of a config class (sections and leaves)."""
    out = []
    for name, tp in _field_types(cls).items():
        out.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            out += all_keys(tp, prefix + name + ".")
    return out


def _unknown_key_error(cls, key: str, prefix: str) -> ConfigError:
    root_keys = all_keys(cls, prefix)
    close = difflib.get_close_matches(key, root_keys, n=3, cutoff=0.5)
    if not close:  # a right leaf under a wrong section: match on the last component
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in root_keys if k.rsplit(".", 1)[-1] == leaf][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; valid keys here: {', '.join(sorted(prefix + k for k in _field_types(cls)))}")
    return ConfigError(f"unknown config key {key!r}{hint}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys and bad values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
    types_ = _field_types(cls)
    for k in data:
        if k not in types_:
            raise _unknown_key_error(cls, prefix + str(k), prefix)
    metas = {f.name: f.metadata for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(types_[k], v, prefix + k)
        _check_meta(kwargs[k], metas[k], prefix + k)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check_prefix(obj, prefix)
    return obj


def check_prefix(obj, prefix: str) -> None:
    """Run ``obj.check()``, re-raising its ConfigError with the section prefix on the key."""
    try:
        obj.check()
    except ConfigError as e:
        msg = str(e)
        if prefix and msg.startswith("config key '"):
            msg = "config key '" + prefix + msg[len("config key '"):]
        raise ConfigError(msg) from None


def validate(cfg: Any, prefix: str = "") -> None:
    """Re-check an already built config (after code changed fields): metadata bounds and ``check()``."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, prefix + f.name + ".")
        else:
            _check_meta(v, f.metadata, prefix + f.name)
    if callable(getattr(cfg, "check", None)):
        check_prefix(cfg, prefix)


def to_dict(cfg) -> dict:
    """The resolved config as plain data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (every leaf key of a resolved config)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(cfg) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def _set_dotted(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override {dotted!r}: empty key component")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> dict:
    out: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
        _set_dotted(out, key.strip(), value)
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


DEFAULTS_KEY = "defaults"


def _load_yaml(p: Path) -> dict:
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p}: not a text (YAML) file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return loaded


def _resolve(node: dict, base_dir: Path, seen: tuple) -> dict:
    """Resolve ``defaults:`` lists at any mapping level (paths relative to ``base_dir``)."""
    node = dict(node)
    bases = node.pop(DEFAULTS_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise ConfigError(f"'{DEFAULTS_KEY}' must be a list of preset files, got {bases!r}")
    data: dict = {}
    for b in bases:
        data = deep_merge(data, read_preset(base_dir / str(b), seen))
    own = {k: (_resolve(v, base_dir, seen) if isinstance(v, dict) else v) for k, v in node.items()}
    return deep_merge(data, own)


def read_preset(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML preset with its ``defaults:`` lists resolved: at the top level or inside any section
    (``distill: {defaults: [nuscenes/distill.yaml], loop: {num_epochs: 2}}``), relative to the file,
    merged in order, then the mapping's own keys on top. A cycle or a missing base is a ConfigError."""
    p = Path(path).resolve()
    if p in _seen:
        raise ConfigError(f"config file {p}: 'defaults' cycle ({' -> '.join(str(s) for s in _seen + (p,))})")
    return _resolve(_load_yaml(p), p.parent, _seen + (p,))


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                base: dict | None = None) -> T:
    """Defaults of ``cls`` <- ``base`` <- YAML preset ``path`` (with its defaults) <- ``overrides``."""
    data: dict = to_dict(cls())
    if base:
        data = deep_merge(data, base)
    if path:
        data = deep_merge(data, read_preset(path))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def describe(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(key, type, default, help)`` for every leaf key of a config class."""
    rows = []
    hints = typing.get_type_hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        val = getattr(inst, f.name)
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
            continue
        text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            text += f" [one of {', '.join(map(str, f.metadata['choices']))}]"
        if typing.get_origin(tp) is typing.Literal:
            text += f" [one of {', '.join(map(str, typing.get_args(tp)))}]"
        rows.append((prefix + f.name, _type_label(tp), val, text.strip()))
    return rows
