"""Self-contained offline HTML viewer of one LiDAR scan (plotly.js inlined, no network access).

One page per scan: a 3D scatter (rotate, zoom, pan) coloured by one of several layers, with a
button per layer (keys 1..9 too):

- categorical layers (prediction, ground truth, pseudo-labels): class colours of
  :mod:`afov_ray.viz.palette`, a legend with per-class point counts (click a class to isolate it);
- an error layer (ignored / correct / wrong, with the accuracy);
- continuous layers (query score, similarity): a colour scale with a colour bar.

Example::

    from afov_ray.viz.viewer import LayerSpec, write_scan_html
    write_scan_html("scan.html", xyz, {"prediction": LayerSpec.categorical(pred),
                                       "ground truth": LayerSpec.categorical(gt),
                                       "error": LayerSpec.error(pred, gt),
                                       "query: car": LayerSpec.continuous(score, 0, 1, label="cosine")},
                    dataset="nuscenes", title="scene-0916 #3")

Point data travel as base64 typed arrays in a JSON block; above ``max_points`` a deterministic random
subset (:func:`subsample_indices`) is drawn, and the page says how many (title, ``data-points`` of
``<body>``, ``window.afovViewer.numDrawn``).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from afov_ray.storage.atomic import atomic_write_bytes
from afov_ray.viz import palette as P

KINDS = ("categorical", "error", "continuous")


@dataclass(frozen=True)
class LayerSpec:
    """One colouring of the points. Build with :meth:`categorical`, :meth:`error`, :meth:`continuous`.

    ``values``: (N,) class ids (categorical), error codes 0 ignored / 1 correct / 2 wrong (error) or
    floats (continuous, NaN = no value). ``class_names`` / ``palette`` override the page's for this
    layer. ``vmin`` / ``vmax`` / ``cmap`` / ``label``: the colour scale of a continuous layer.
    """

    kind: str
    values: np.ndarray
    class_names: tuple[str, ...] | None = None
    palette: np.ndarray | None = field(default=None, repr=False)
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "viridis"
    label: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"layer kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def categorical(cls, labels: np.ndarray, class_names: Sequence[str] | None = None,
                    palette: np.ndarray | None = None, label: str = "") -> "LayerSpec":
        """Class ids per point (0 = ignore), e.g. a prediction, the ground truth or pseudo-labels."""
        v = np.asarray(labels)
        if v.dtype.kind not in "iub":
            raise TypeError(f"categorical labels must be integers, got {v.dtype}")
        return cls("categorical", v.astype(np.int64).reshape(-1),
                   tuple(class_names) if class_names is not None else None,
                   None if palette is None else np.asarray(palette, dtype=np.float64), label=label)

    @classmethod
    def error(cls, pred: np.ndarray, gt: np.ndarray, ignore_index: int = 0, label: str = "") -> "LayerSpec":
        """Correct / wrong per point from a prediction and the ground truth (GT ``ignore_index`` = ignored)."""
        return cls("error", error_codes(pred, gt, ignore_index), label=label)

    @classmethod
    def continuous(cls, values: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                   cmap: str = "viridis", label: str = "") -> "LayerSpec":
        """A score per point on a colour scale (``vmin``/``vmax`` default to the finite min/max)."""
        return cls("continuous", np.asarray(values, dtype=np.float32).reshape(-1),
                   vmin=None if vmin is None else float(vmin), vmax=None if vmax is None else float(vmax),
                   cmap=cmap, label=label)


@dataclass(frozen=True)
class ViewerPage:
    """What :func:`write_scan_html` wrote."""

    path: str
    title: str
    num_points: int
    num_drawn: int
    layers: tuple[str, ...]
    size_bytes: int


def error_codes(pred: np.ndarray, gt: np.ndarray, ignore_index: int = 0) -> np.ndarray:
    """uint8 per point: 0 where ``gt == ignore_index``, else 1 if ``pred == gt`` and 2 if not."""
    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    return np.where(gt == ignore_index, 0, np.where(pred == gt, 1, 2)).astype(np.uint8)


def subsample_indices(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of the points drawn: all when ``n <= max_points`` (or None), else a random
    subset of ``max_points`` drawn with ``numpy.random.default_rng(seed)``."""
    if max_points is None or n <= int(max_points):
        return np.arange(n, dtype=np.int64)
    if int(max_points) < 1:
        raise ValueError("max_points must be >= 1")
    idx = np.random.default_rng(seed).choice(n, size=int(max_points), replace=False)
    return np.sort(idx).astype(np.int64)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _classes_payload(names: Sequence[str], colors: np.ndarray, counts: np.ndarray) -> list[dict]:
    hexes = P.to_hex(colors)
    return [{"id": i, "name": str(names[i]), "color": hexes[i], "count": int(counts[i])}
            for i in range(len(names))]


def _resolve_classes(layer: LayerSpec, names: Sequence[str] | None, pal: np.ndarray | None,
                     dataset: str | None) -> tuple[list[str], np.ndarray]:
    """Class names and colours of a categorical layer: the layer's, else the page's, else the
    dataset's, else ``class i`` with the fallback palette, grown to cover the largest id."""
    names = list(layer.class_names) if layer.class_names is not None else (
        list(names) if names is not None else None)
    pal = layer.palette if layer.palette is not None else pal
    top = int(layer.values.max()) + 1 if layer.values.size else 1
    if names is None and dataset is not None:
        names = P.class_names(dataset)
    if names is None:
        n = max(top, len(pal) if pal is not None else 0, 1)
        names = ["ignore"] + [f"class {i}" for i in range(1, n)]
    if pal is None:
        pal = P.class_colors(dataset, len(names))
    pal = np.asarray(pal, dtype=np.float64)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) < len(names):
        raise ValueError(f"palette must be (>= {len(names)}, 3), got {pal.shape}")
    if layer.values.size and (layer.values.min() < 0 or top > len(names)):
        raise ValueError(f"class ids must be in [0, {len(names)}), got "
                         f"[{int(layer.values.min())}, {top - 1}]")
    return names, pal[: len(names)]


def _layer_payload(name: str, layer: LayerSpec, idx: np.ndarray, names, pal, dataset) -> dict:
    out = {"name": name, "kind": layer.kind, "label": layer.label}
    v = layer.values
    if layer.kind == "continuous":
        finite = np.isfinite(v)
        lo = layer.vmin if layer.vmin is not None else (float(v[finite].min()) if finite.any() else 0.0)
        hi = layer.vmax if layer.vmax is not None else (float(v[finite].max()) if finite.any() else 1.0)
        if not hi > lo:
            hi = lo + 1.0
        lut = P.colorscale(layer.cmap, 256)
        out.update(dtype="f4", data=_b64(v[idx].astype("<f4")), vmin=lo, vmax=hi, cmap=layer.cmap,
                   lut=P.to_hex(lut), nanColor=P.to_hex(np.asarray(P.IGNORE_RGB))[0],
                   stats={"min": float(v[finite].min()) if finite.any() else None,
                          "max": float(v[finite].max()) if finite.any() else None,
                          "mean": float(v[finite].mean()) if finite.any() else None,
                          "missing": int((~finite).sum())})
        return out
    if layer.kind == "error":
        cnames, colors = list(P.ERROR_NAMES), P.error_colors()
        if v.size and (v.min() < 0 or v.max() > 2):
            raise ValueError("error codes must be 0 ignored, 1 correct, 2 wrong")
        scored = int((v > 0).sum())
        out["accuracy"] = float((v == 1).sum() / scored) if scored else None
    else:
        cnames, colors = _resolve_classes(layer, names, pal, dataset)
    counts = np.bincount(v.astype(np.int64), minlength=len(cnames))
    dtype = "u1" if len(cnames) <= 256 else "u2"
    out.update(dtype=dtype, data=_b64(v[idx].astype(np.uint8 if dtype == "u1" else "<u2")),
               classes=_classes_payload(cnames, colors, counts))
    return out


def _asset(name: str) -> str:
    return resources.files("afov_ray.viz").joinpath(name).read_text(encoding="utf-8")


def _plotly_js() -> str:
    """plotly.min.js from the plotly Python package (inlined; the page loads nothing)."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    return js.replace("</script", "<\\/script")


def _script_json(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def write_scan_html(path: str | Path, xyz: np.ndarray, layers: Mapping[str, LayerSpec], *,
                    title: str = "scan", dataset: str | None = None,
                    class_names: Sequence[str] | None = None, palette: np.ndarray | None = None,
                    max_points: int | None = 200_000, seed: int = 0, point_size: float = 1.5,
                    default_layer: str | None = None, background: str = "dark") -> ViewerPage:
    """Write one self-contained HTML page showing a scan and return a :class:`ViewerPage`.

    ``xyz`` (N, 3) metres; ``layers``: button label -> :class:`LayerSpec` (each with N values, in
    display order). Categorical layers take ``class_names`` / ``palette`` (else those of ``dataset``:
    ``"nuscenes"`` / ``"semantickitti"``, else generic names and the fallback palette). Above
    ``max_points`` points a random subset (seeded) is drawn. ``background``: ``"dark"`` or ``"light"``
    (the page has a toggle too).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"xyz must be (N, 3), got {xyz.shape}")
    xyz = xyz[:, :3]
    if not layers:
        raise ValueError("at least one layer is needed")
    n = len(xyz)
    for name, layer in layers.items():
        if not isinstance(layer, LayerSpec):
            raise TypeError(f"layer {name!r}: a LayerSpec is needed, got {type(layer).__name__}")
        if layer.values.shape != (n,):
            raise ValueError(f"layer {name!r} has {layer.values.shape} values for {n} points")
    if default_layer is not None and default_layer not in layers:
        raise ValueError(f"default_layer {default_layer!r} is not a layer")
    if background not in ("dark", "light"):
        raise ValueError("background must be 'dark' or 'light'")
    pal = None if palette is None else np.asarray(palette, dtype=np.float64)
    idx = subsample_indices(n, max_points, seed)
    pts = xyz[idx]
    finite = np.isfinite(pts).all(1)
    center = pts[finite].mean(0) if finite.any() else np.zeros(3)
    names = list(layers)
    payload = {
        "title": title,
        "numPoints": int(n),
        "numDrawn": int(len(idx)),
        "pointSize": float(point_size),
        "background": background,
        "defaultLayer": names.index(default_layer) if default_layer else 0,
        "center": [float(c) for c in center],
        "xyz": _b64(pts.astype("<f4")),
        "layers": [_layer_payload(k, layers[k], idx, class_names, pal, dataset) for k in names],
    }
    shown = f"{n:,} points" if len(idx) == n else f"{len(idx):,} of {n:,} points drawn"
    buttons = "\n".join(
        f'<button type="button" class="afov-layer" data-layer="{html.escape(k, quote=True)}" '
        f'data-index="{i}" title="key {i + 1}">{html.escape(k)}</button>' for i, k in enumerate(names))
    page = _asset("viewer_page.html").format(
        title=html.escape(f"{title} ({shown})"), heading=html.escape(title), shown=html.escape(shown),
        num_drawn=len(idx), num_points=n, background=background, buttons=buttons,
        css=_asset("viewer_page.css"), plotly_js=_plotly_js(), payload=_script_json(payload),
        viewer_js=_asset("viewer_page.js"))
    data = page.encode("utf-8")
    atomic_write_bytes(str(path), data)   # local or s3://, whole or not at all
    return ViewerPage(str(path), title, int(n), int(len(idx)), tuple(names), len(data))


def write_index_html(path: str | Path, pages: Sequence[ViewerPage | tuple[str, str]],
                     title: str = "AFOV scans") -> str:
    """A plain HTML index linking to scan pages (relative links). ``pages``: :class:`ViewerPage`
    objects or ``(label, page path)`` pairs."""
    path = Path(path)
    rows = []
    for p in pages:
        label, target = (p.title, p.path) if isinstance(p, ViewerPage) else (str(p[0]), str(p[1]))
        href = os.path.relpath(Path(target).resolve(), path.parent.resolve()).replace(os.sep, "/")
        extra = ""
        if isinstance(p, ViewerPage):
            drawn = f"{p.num_points:,}" if p.num_drawn == p.num_points else \
                f"{p.num_drawn:,} of {p.num_points:,}"
            extra = f"<td>{drawn}</td><td>{html.escape(', '.join(p.layers))}</td>"
        else:
            extra = "<td></td><td></td>"
        rows.append(f'<tr><td><a href="{html.escape(href, quote=True)}">{html.escape(label)}</a></td>{extra}</tr>')
    body = "\n".join(rows)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           "<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
           f"<h1>{html.escape(title)}</h1><table><tr><th>scan</th><th>points</th><th>layers</th></tr>\n"
           f"{body}\n</table></body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return str(path)
