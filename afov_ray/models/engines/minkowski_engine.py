"""MinkowskiEngine 0.5.4 adapter (the official code's engine; docs/method.md "Sparse engines and weight layout").

The ``collections.Sequence`` shim that the PyPI 0.5.4 sdist needs on Python >= 3.10 is applied here,
right before the lazy import (docs/install.md "MinkowskiEngine 0.5.4 (CPU build)"). Canonical kernels *are*
MinkowskiEngine kernels, so they are passed to ME modules unchanged (``torch.func.functional_call``).
"""

from __future__ import annotations

import torch

from afov_ray.errors import EngineNotInstalled
from afov_ray.models.engines.base import SparseEngine, check_coords
from afov_ray.models.engines.layout import kernel_size_of
from afov_ray.models.sparse import SparseContext, SparseTensor

INSTALL_HINT = (
    "MinkowskiEngine 0.5.4 is not importable. Install it with ./install.sh (section 'minkowski'), i.e. "
    "apt-get install libopenblas-dev; MAX_JOBS=2 pip install --no-build-isolation "
    "--config-settings=--global-option=--blas=openblas MinkowskiEngine==0.5.4 (torch installed first)"
)


def import_minkowski():
    """Import MinkowskiEngine with the Python 3.10+ ``collections`` shim; EngineNotInstalled if absent."""
    import collections
    import collections.abc

    if not hasattr(collections, "Sequence"):
        collections.Sequence = collections.abc.Sequence  # type: ignore[attr-defined]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import MinkowskiEngine as ME  # noqa: N814
    except ImportError as exc:
        raise EngineNotInstalled(f"{INSTALL_HINT} ({exc})") from exc
    return ME


class MinkowskiEngineAdapter(SparseEngine):
    """Runs the convolutions with ``ME.MinkowskiConvolution`` / ``MinkowskiConvolutionTranspose``."""

    name = "minkowski"

    def __init__(self):
        self.ME = import_minkowski()
        self._modules: dict[tuple, torch.nn.Module] = {}

    def _module(self, kind: str, cin: int, cout: int, k: int) -> torch.nn.Module:
        key = (kind, cin, cout, k)
        if key not in self._modules:
            ME = self.ME
            if kind == "up":
                mod = ME.MinkowskiConvolutionTranspose(cin, cout, kernel_size=k, stride=2, bias=False, dimension=3)
            else:
                mod = ME.MinkowskiConvolution(cin, cout, kernel_size=k, stride=2 if kind == "down" else 1,
                                              bias=False, dimension=3)
            self._modules[key] = mod
        return self._modules[key]

    def _me(self, x: SparseTensor):
        cache = x.context.cache
        return self.ME.SparseTensor(features=x.feats.contiguous(), coordinate_map_key=cache[("key", x.stride)],
                                    coordinate_manager=cache["manager"])

    def _wrap(self, out, stride: int, context: SparseContext) -> SparseTensor:
        context.cache[("key", stride)] = out.coordinate_map_key
        coords = out.C.clone()
        coords[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor")
        return SparseTensor(out.F, coords, stride, context)

    def _run(self, kind: str, x: SparseTensor, kernel: torch.Tensor, **kwargs):
        k = kernel_size_of(kernel)
        mod = self._module(kind, kernel.shape[1], kernel.shape[2], k)
        return torch.func.functional_call(mod, {"kernel": kernel}, (self._me(x),), kwargs)

    def begin(self, coords, feats):
        check_coords(coords, feats)
        me_in = self.ME.SparseTensor(features=feats.contiguous(), coordinates=coords.to(torch.int32).cpu())
        context = SparseContext(self, {"manager": me_in.coordinate_manager})
        x = self._wrap(me_in, 1, context)
        # ME may reorder voxels; remember how to return to the caller's order.
        context.cache["inverse"] = me_in.inverse_mapping.long()
        if x.feats.shape[0] != coords.shape[0]:
            raise ValueError("coords: duplicate voxels (voxelise first)")
        return x

    def end(self, x):
        return x.feats[x.context.cache["inverse"].to(x.feats.device)]

    def subm_conv(self, x, kernel):
        return self._wrap(self._run("subm", x, kernel), x.stride, x.context)

    def down_conv(self, x, kernel):
        return self._wrap(self._run("down", x, kernel), x.stride * 2, x.context)

    def up_conv(self, x, kernel, target):
        out = self._run("up", x, kernel, coordinates=x.context.cache[("key", target.stride)])
        return target.with_feats(out.F)
