"""The scan page without a browser: inlined plotly.js, no remote resource, the decoded payload."""

import base64
import json
import re

import numpy as np
import pytest

from afov_ray.viz import palette as P
from afov_ray.viz.viewer import LayerSpec, ViewerPage, error_codes, subsample_indices, write_index_html, write_scan_html


def _scene(n=500, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-20, 20, size=(n, 3)).astype(np.float32)
    gt = rng.integers(0, 17, size=n)
    pred = np.where(rng.random(n) < 0.7, gt, rng.integers(1, 17, size=n))
    score = rng.random(n).astype(np.float32)
    score[:7] = np.nan
    return xyz, gt, pred, score


def _payload(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="afov-data">(.*?)</script>', text, re.S)
    assert m, "no payload block"
    return json.loads(m.group(1))


def _decode(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


def test_page_is_self_contained_and_carries_the_layers(tmp_path):
    xyz, gt, pred, score = _scene()
    page = write_scan_html(tmp_path / "out" / "scan.html", xyz, {
        "prediction": LayerSpec.categorical(pred), "ground truth": LayerSpec.categorical(gt),
        "error": LayerSpec.error(pred, gt), "query: car": LayerSpec.continuous(score, 0, 1, label="cosine")},
        dataset="nuscenes", title="scene-0916 <3>")
    assert isinstance(page, ViewerPage)
    assert (page.num_points, page.num_drawn) == (500, 500)
    assert page.layers == ("prediction", "ground truth", "error", "query: car")
    text = open(page.path, encoding="utf-8").read()
    assert page.size_bytes == len(text.encode("utf-8"))
    # plotly.js is inlined and nothing is fetched from anywhere
    assert "plotly.js v" in text and len(text) > 3_000_000
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"""<(link|img|iframe)[^>]*(href|src)\s*=\s*["']?https?:""", text, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text.split("<script")[0])
    assert 'data-points="500"' in text and 'data-points-total="500"' in text
    for name in page.layers:
        assert f'data-layer="{name}"' in text
    assert "<title>scene-0916 &lt;3&gt; (500 points)</title>" in text

    data = _payload(text)
    assert (data["numPoints"], data["numDrawn"]) == (500, 500)
    assert np.array_equal(_decode(data["xyz"], "<f4").reshape(-1, 3), xyz)
    kinds = {lay["name"]: lay for lay in data["layers"]}
    assert [lay["kind"] for lay in data["layers"]] == ["categorical", "categorical", "error", "continuous"]
    pl = kinds["prediction"]
    assert np.array_equal(_decode(pl["data"], "u1"), pred)
    assert [c["name"] for c in pl["classes"]] == P.class_names("nuscenes")
    assert [c["color"] for c in pl["classes"]] == P.to_hex(P.class_colors("nuscenes"))
    assert [c["count"] for c in pl["classes"]] == np.bincount(pred, minlength=17).tolist()
    er = kinds["error"]
    codes = _decode(er["data"], "u1")
    assert np.array_equal(codes, np.where(gt == 0, 0, np.where(pred == gt, 1, 2)))
    assert [c["color"] for c in er["classes"]] == P.to_hex(P.error_colors())
    assert er["accuracy"] == pytest.approx(float((pred == gt)[gt > 0].mean()))
    sc = kinds["query: car"]
    vals = _decode(sc["data"], "<f4")
    assert np.array_equal(vals[7:], score[7:]) and np.isnan(vals[:7]).all()
    assert (sc["vmin"], sc["vmax"], sc["label"], sc["stats"]["missing"]) == (0.0, 1.0, "cosine", 7)
    assert sc["lut"][0] == P.to_hex(P.colorscale("viridis", 256)[0])[0] and len(sc["lut"]) == 256


def test_subsampling_above_max_points_is_recorded(tmp_path):
    xyz, gt, _, score = _scene(3000, seed=1)
    page = write_scan_html(tmp_path / "s.html", xyz, {"gt": LayerSpec.categorical(gt),
                                                      "score": LayerSpec.continuous(score)},
                           max_points=1000, seed=3, title="big")
    assert (page.num_points, page.num_drawn) == (3000, 1000)
    text = open(page.path, encoding="utf-8").read()
    assert 'data-points="1000"' in text and 'data-points-total="3000"' in text
    assert "1,000 of 3,000 points drawn" in text
    idx = subsample_indices(3000, 1000, seed=3)
    assert len(idx) == 1000 and len(np.unique(idx)) == 1000 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, subsample_indices(3000, 1000, seed=3))
    assert not np.array_equal(idx, subsample_indices(3000, 1000, seed=4))
    data = _payload(text)
    assert np.array_equal(_decode(data["xyz"], "<f4").reshape(-1, 3), xyz[idx])
    assert np.array_equal(_decode(data["layers"][0]["data"], "u1"), gt[idx])
    # counts in the legend are over all points; continuous range defaults to the finite min/max
    assert [c["count"] for c in data["layers"][0]["classes"]] == np.bincount(gt, minlength=17).tolist()
    assert data["layers"][1]["vmin"] == pytest.approx(float(np.nanmin(score)))
    assert np.array_equal(subsample_indices(10, None), np.arange(10))


def test_class_names_palette_and_script_breaking_names(tmp_path):
    xyz = np.zeros((4, 3))
    lab = np.array([0, 1, 2, 2])
    pal = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1.0]])
    page = write_scan_html(tmp_path / "p.html", xyz, {'</script><b>"x"': LayerSpec.categorical(lab)},
                           class_names=["none", "a", "b"], palette=pal, title="</script>")
    text = open(page.path, encoding="utf-8").read()
    data = _payload(text)  # the payload block is not cut short by the names
    assert data["layers"][0]["name"] == '</script><b>"x"' and data["title"] == "</script>"
    assert [c["color"] for c in data["layers"][0]["classes"]] == ["#000000", "#ff0000", "#0000ff"]
    assert "<b>" not in text.split('<script type="application/json"')[0]
    # no dataset, no names: generic names, fallback palette grown to the largest id
    page2 = write_scan_html(tmp_path / "g.html", np.zeros((3, 3)), {"l": LayerSpec.categorical([0, 5, 2])})
    cl = _payload(open(page2.path, encoding="utf-8").read())["layers"][0]["classes"]
    assert [c["name"] for c in cl] == ["ignore"] + [f"class {i}" for i in range(1, 6)]
    assert [c["color"] for c in cl] == P.to_hex(P.fallback_colors(6))


def test_bad_layers_are_refused(tmp_path):
    xyz = np.zeros((5, 3))
    with pytest.raises(ValueError, match="values for 5 points"):
        write_scan_html(tmp_path / "x.html", xyz, {"a": LayerSpec.categorical(np.zeros(4, int))})
    with pytest.raises(ValueError, match="class ids"):
        write_scan_html(tmp_path / "x.html", xyz, {"a": LayerSpec.categorical(np.full(5, 17))},
                        dataset="nuscenes")
    with pytest.raises(ValueError):
        write_scan_html(tmp_path / "x.html", xyz, {"a": LayerSpec.categorical(np.zeros(5, int))},
                        default_layer="b")
    with pytest.raises(ValueError):
        write_scan_html(tmp_path / "x.html", xyz, {})
    with pytest.raises(TypeError):
        LayerSpec.categorical(np.zeros(5))
    with pytest.raises(TypeError):
        write_scan_html(tmp_path / "x.html", xyz, {"a": np.zeros(5, int)})
    assert not (tmp_path / "x.html").exists()
    assert error_codes([1, 2, 3, 4], [0, 2, 4, 0]).tolist() == [0, 1, 2, 0]


def test_index_page_links_relatively(tmp_path):
    xyz, gt, pred, _ = _scene(50)
    a = write_scan_html(tmp_path / "scans" / "a.html", xyz, {"gt": LayerSpec.categorical(gt)}, title="scan A")
    b = write_scan_html(tmp_path / "scans" / "b.html", xyz, {"gt": LayerSpec.categorical(gt),
                                                            "err": LayerSpec.error(pred, gt)}, title="scan B",
                        max_points=20)
    idx = write_index_html(tmp_path / "index.html", [a, b, ("extra & more", tmp_path / "other.html")])
    text = open(idx, encoding="utf-8").read()
    assert '<a href="scans/a.html">scan A</a>' in text and '<a href="scans/b.html">scan B</a>' in text
    assert '<a href="other.html">extra &amp; more</a>' in text
    assert "<td>20 of 50</td><td>gt, err</td>" in text
