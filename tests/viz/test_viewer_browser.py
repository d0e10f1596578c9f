"""The scan page in a real headless Chromium (Debian package ``chromium``), driven over the DevTools
protocol (``--remote-debugging-pipe``, see ``tests/viz/cdp.py``).

Checks: no console error / exception, no request other than the file itself (works offline), the
plotted point count, the per-point marker colours of each layer against the Python palette after a
real click / key press on the layer toggles, and pixels of the rendered WebGL canvas.

Chromium missing: a failure when ``$CI`` is set, else a skip. ``$AFOV_CHROMIUM`` names the binary.
Screenshots go to pytest's tmp dir, and also to ``outputs/test-artifacts/viewer/`` when
``$AFOV_TEST_ARTIFACTS`` is set (``1``/``true``/``yes``; any other value is taken as the folder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from afov_ray.viz import palette as P
from afov_ray.viz.viewer import LayerSpec, subsample_indices, write_scan_html
from tests.viz.cdp import HeadlessChromium, find_chromium

REPO_ROOT = Path(__file__).resolve().parents[2]
PANEL_PX = 260  # the HTML side panel (legend swatches) is left of this; the WebGL canvas right of it


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        msg = "Chromium not found: apt-get install -y chromium (or set AFOV_CHROMIUM=/path/to/chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _keep(path: Path) -> None:
    value = os.environ.get("AFOV_TEST_ARTIFACTS", "")
    if not value:
        return
    out = REPO_ROOT / "outputs" / "test-artifacts" / "viewer" if value.lower() in ("1", "true", "yes") \
        else Path(value)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, out / path.name)


def _pixels_near(png: Path, rgb, tol: int = 12) -> int:
    """Pixels of the plot area (right of the panel) within ``tol`` of ``rgb`` (0..255) per channel."""
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)[:, PANEL_PX:]
    return int((np.abs(img - np.asarray(rgb, dtype=np.int16)).max(-1) <= tol).sum())


def _u8(rgb) -> tuple[int, int, int]:
    return tuple(int(v) for v in P.to_uint8(np.asarray(rgb)))


def _assert_offline(urls: list[str], page: str) -> None:
    """The page itself was loaded and nothing but local / inline resources (no http, https, ws...)."""
    assert Path(page).resolve().as_uri() in urls
    assert {u.split(":", 1)[0] for u in urls} <= {"file", "data", "blob"}, urls


def _browser(chromium: str, tmp_path: Path) -> HeadlessChromium:
    b = HeadlessChromium(chromium, tmp_path / "profile", window=(1200, 800), log_path=tmp_path / "chromium.log")
    b.open_page()
    return b


def _load(b: HeadlessChromium, page: Path) -> None:
    b.navigate(page.resolve().as_uri(), timeout=120)
    b.wait_for("window.afovViewer && (afovViewer.ready || afovViewer.error !== null)", timeout=120)
    assert b.evaluate("afovViewer.error") is None


def _synthetic_scene(n=3000, seed=0):
    """A 40 m x 40 m patch: four bands along x (car, driveable_surface, manmade, vegetation);
    the GT differs from the prediction on ~20% of the points and is ignore on ~10%."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-20, 20, n)
    y = rng.uniform(-20, 20, n)
    z = 0.5 * np.sin(x / 3.0) + rng.normal(0, 0.05, n)
    xyz = np.stack([x, y, z], 1).astype(np.float32)
    bands = np.array([4, 11, 15, 16])  # car, driveable_surface, manmade, vegetation
    pred = bands[np.clip(((x + 20) // 10).astype(int), 0, 3)]
    gt = pred.copy()
    flip = rng.random(n) < 0.2
    gt[flip] = rng.integers(1, 17, flip.sum())
    gt[rng.random(n) < 0.1] = 0
    score = ((x + 20) / 40).astype(np.float32)
    return xyz, pred, gt, score


def test_viewer_page_in_headless_chromium(chromium, tmp_path):
    xyz, pred, gt, score = _synthetic_scene()
    page = write_scan_html(tmp_path / "scan.html", xyz, {
        "prediction": LayerSpec.categorical(pred), "ground truth": LayerSpec.categorical(gt),
        "error": LayerSpec.error(pred, gt), "query score": LayerSpec.continuous(score, 0, 1, label="score")},
        dataset="nuscenes", title="synthetic", max_points=2000, seed=0, point_size=3)
    idx = subsample_indices(3000, 2000, seed=0)
    pal = P.class_colors("nuscenes")
    car_rgb = _u8(pal[4])  # (255, 158, 0)
    with _browser(chromium, tmp_path) as b:
        _load(b, Path(page.path))
        drawn = b.evaluate("[document.getElementById('afov-plot').data[0].x.length, afovViewer.numDrawn,"
                           " afovViewer.numPoints, Number(document.body.dataset.points), afovViewer.current]")
        assert drawn == [2000, 2000, 3000, 2000, "prediction"]
        assert b.evaluate("Array.from(afovViewer.colors())") == P.to_hex(pal[pred[idx]])
        shot1 = Path(b.screenshot(tmp_path / "viewer_prediction.png"))

        b.click('button.afov-layer[data-layer="error"]')  # a real mouse click on the toggle
        b.wait_for("afovViewer.current === 'error'", timeout=60)
        codes = np.where(gt == 0, 0, np.where(pred == gt, 1, 2))
        assert b.evaluate("Array.from(afovViewer.colors())") == P.to_hex(P.error_colors()[codes[idx]])
        assert b.evaluate("document.querySelector('button.afov-layer.active').dataset.layer") == "error"
        assert b.evaluate("document.querySelectorAll('#afov-legend .afov-row').length") == 3
        shot2 = Path(b.screenshot(tmp_path / "viewer_error.png"))

        b.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "4", "text": "4", "code": "Digit4"})
        b.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "4", "code": "Digit4"})
        b.wait_for("afovViewer.current === 'query score'", timeout=60)
        assert b.evaluate("Array.from(afovViewer.colors())") == P.to_hex(P.score_colors(score[idx], 0, 1))
        shot3 = Path(b.screenshot(tmp_path / "viewer_score.png"))

        b.click('button.afov-layer[data-layer="prediction"]')
        b.wait_for("afovViewer.current === 'prediction'", timeout=60)
        b.click('#afov-legend .afov-row[data-class-id="4"]')  # isolate "car"
        b.wait_for("afovViewer.isolate === 4", timeout=60)
        cols = np.array(b.evaluate("Array.from(afovViewer.colors())"))
        assert set(cols[pred[idx] == 4]) == {P.to_hex(pal[4])[0]}
        assert len(set(cols[pred[idx] != 4])) == 1 and P.to_hex(pal[4])[0] not in set(cols[pred[idx] != 4])

        b.click("#afov-bg")  # dark -> light background; the isolated colours follow
        b.wait_for("document.body.classList.contains('afov-light')", timeout=60)
        assert b.evaluate("document.getElementById('afov-plot')._fullLayout.paper_bgcolor") == "#ffffff"
        light_cols = np.array(b.evaluate("Array.from(afovViewer.colors())"))
        assert np.array_equal(light_cols, np.where(pred[idx] == 4, P.to_hex(pal[4])[0], "#e6e6e6"))

        assert b.console_errors() == []
        _assert_offline(b.requested_urls(), page.path)
    for shot in (shot1, shot2, shot3):
        _keep(shot)
    # the WebGL canvas really shows the layers: car orange only in the prediction view, the
    # error layer's red only in the error view, viridis yellow only in the score view
    wrong_rgb = _u8(P.error_colors()[2])
    yellow = _u8(P.colorscale("viridis", 256)[255])
    assert _pixels_near(shot1, car_rgb) > 200 and _pixels_near(shot2, car_rgb) == 0
    assert _pixels_near(shot2, wrong_rgb) > 50 and _pixels_near(shot1, wrong_rgb) == 0
    assert _pixels_near(shot3, yellow, tol=20) > 20 and _pixels_near(shot1, yellow, tol=20) == 0


@pytest.mark.slow
def test_real_semantickitti_scan_page(chromium, real_data, tmp_path):
    from afov_ray.datasets.labels import kitti_raw_to_eval

    d = real_data / "semantickitti_000000"
    pts = np.fromfile(d / "000000.bin", dtype=np.float32).reshape(-1, 4)
    gt = kitti_raw_to_eval(np.fromfile(d / "000000.label", dtype=np.uint32)).astype(np.int64)
    page = write_scan_html(tmp_path / "semantickitti_000000.html", pts[:, :3], {
        "ground truth": LayerSpec.categorical(gt),
        "intensity": LayerSpec.continuous(pts[:, 3], label="reflectance")},
        dataset="semantickitti", title="SemanticKITTI 000000")
    assert page.num_drawn == len(pts) == 123_389
    with _browser(chromium, tmp_path) as b:
        _load(b, Path(page.path))
        assert b.evaluate("document.getElementById('afov-plot').data[0].x.length") == 123_389
        assert b.evaluate("Number(document.body.dataset.points)") == 123_389
        sample = [0, 1000, 50_000, 123_388]
        assert b.evaluate(f"{sample}.map(i => afovViewer.colors()[i])") == \
            P.to_hex(P.class_colors("semantickitti")[gt[sample]])
        shot = Path(b.screenshot(tmp_path / "viewer_semantickitti_000000.png"))
        assert b.console_errors() == []
        _assert_offline(b.requested_urls(), page.path)
    _keep(shot)
    road = _u8(P.class_colors("semantickitti")[9])  # magenta
    vegetation = _u8(P.class_colors("semantickitti")[15])
    assert _pixels_near(shot, road) > 500 and _pixels_near(shot, vegetation) > 500


def test_query_page_score_and_mask_layers(chromium, tmp_path):
    """A page of the query job (afov_ray.pipeline.query): a score layer per prompt on one shared colour scale and a
    two-class mask layer with its own names and palette, plus the ground truth."""
    from afov_ray.pipeline.query import MASK_RGB, query_layers, score_range

    xyz, pred, gt, score = _synthetic_scene(n=1500, seed=1)
    scores = np.stack([score, 1.0 - score]).astype(np.float32)
    mask = scores > 0.6
    row = {"scene": "synthetic", "sample_token": "q", "num_points": len(xyz), "xyz": xyz.ravel(), "gt": gt,
           "scores": scores, "mask": mask}
    layers = query_layers(["car", "road"])(row)
    page = write_scan_html(tmp_path / "query.html", xyz, layers, dataset="nuscenes", title="query", point_size=3)
    lo, hi = score_range(scores)
    with _browser(chromium, tmp_path) as b:
        _load(b, Path(page.path))
        assert b.evaluate("afovViewer.layers") == ["score: car", "score: road", "mask: car", "mask: road",
                                                   "ground truth"]
        assert b.evaluate("Array.from(afovViewer.colors())") == P.to_hex(P.score_colors(scores[0], lo, hi))
        b.click('button.afov-layer[data-layer="mask: road"]')
        b.wait_for("afovViewer.current === 'mask: road'", timeout=60)
        want = np.where(mask[1], P.to_hex(np.asarray(MASK_RGB))[0], P.to_hex(np.asarray(P.IGNORE_RGB))[0])
        assert b.evaluate("Array.from(afovViewer.colors())") == want.tolist()
        legend = b.evaluate("Array.from(document.querySelectorAll('#afov-legend .afov-row')).map(r => r.textContent)")
        assert len(legend) == 2 and "road" in legend[1] and str(int(mask[1].sum())) in legend[1]
        assert b.console_errors() == []
        _assert_offline(b.requested_urls(), page.path)
