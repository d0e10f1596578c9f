"""Sparse-convolution engines behind one small interface (:class:`SparseEngine`).

Names: ``"torch"`` (pure PyTorch, default, always available), ``"minkowski"`` (MinkowskiEngine 0.5.4),
``"spconv"`` (spconv 2.x). Requesting an engine that is not installed raises
:class:`afov_ray.errors.EngineNotInstalled`; there is never a silent fallback.
"""

from __future__ import annotations

from afov_ray.models.engines.base import SparseEngine

ENGINE_NAMES = ("torch", "minkowski", "spconv")


def get_engine(name: str) -> SparseEngine:
    """Engine instance by name; imports optional dependencies lazily."""
    if name == "torch":
        from afov_ray.models.engines.torch_engine import TorchEngine

        return TorchEngine()
    if name == "minkowski":
        from afov_ray.models.engines.minkowski_engine import MinkowskiEngineAdapter

        return MinkowskiEngineAdapter()
    if name == "spconv":
        from afov_ray.models.engines.spconv_engine import SpconvEngine

        return SpconvEngine()
    raise ValueError(f"engine: unknown {name!r}; expected one of {ENGINE_NAMES}")


def engine_available(name: str) -> bool:
    """True when ``get_engine(name)`` would succeed."""
    from afov_ray.errors import EngineNotInstalled

    try:
        get_engine(name)
    except EngineNotInstalled:
        return False
    return True


__all__ = ["ENGINE_NAMES", "SparseEngine", "get_engine", "engine_available"]
