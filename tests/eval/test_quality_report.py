"""The committed quality results (bench/results/quality_quick.*) are the rendering of their own JSON, and
the report states the orderings the JSON supports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quality_module():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_table_renders_from_committed_json():
    q = _quality_module()
    R = json.loads((ROOT / "bench/results/quality_quick.json").read_text())
    md = q.render(R)
    assert md == (ROOT / "bench/results/quality_quick.md").read_text(), (
        "bench/results/quality_quick.md is stale: re-render it from the JSON with "
        "bench/quality.py's render() (or re-run `bench/quality.py --preset quick`, which reuses cached rows)")
    t = R["q-distill-tmp"]
    vis, pseudo = t["pred"]["visible"]["miou_present"], t["pseudo"]["visible"]["miou_present"]
    ok = "holds" if vis > pseudo else "does not hold"
    assert f"- distilled > pseudo-labels on camera-visible points: **{ok}**" in md
    # the class-balance table lists every class with camera-visible ground truth in train or val
    classes = [r["class"] for r in R["class_balance"]]
    assert "bus" in classes and all(f"| {c} | " in md for c in classes)


def _zeroshot_eval() -> dict:
    cell = lambda m, a, n: {"miou": m, "miou_present": m, "accuracy": a, "points": n}  # noqa: E731
    return {"pred": {"all": cell(0.154, 0.519, 74874), "visible": cell(0.167, 0.5187, 54306),
                     "unseen": cell(0.112, 0.518, 20568)},
            "pseudo": {"visible": cell(0.655, 0.887, 54306)}}


def test_zeroshot_rows_filled_when_the_json_has_them():
    q = _quality_module()
    R = json.loads((ROOT / "bench/results/quality_quick.json").read_text())
    zs = R["zeroshot"]["pred"]["all"]   # the committed run has the zero-shot rows
    row = f"| {100 * zs['miou']:.1f} | {100 * zs['miou_present']:.1f} | {100 * zs['accuracy']:.1f} |"
    assert "| Zero-shot from TMP features (no 3D labels), all points " + row in q.render(R)
    del R["zeroshot"]                   # results computed before the row existed
    assert "| Zero-shot from TMP features (no 3D labels), all points | n/a | n/a | n/a |" in q.render(R)
    R["zeroshot"] = _zeroshot_eval()
    md = q.render(R)
    assert "| Zero-shot from TMP features (no 3D labels), all points | 15.4 | 15.4 | 51.9 |" in md
    assert "| Zero-shot from TMP features, camera-visible points | 16.7 | 16.7 | 51.9 |" in md
    assert "| Zero-shot from TMP features, camera-unseen points | 11.2 | 11.2 | 51.8 |" in md


def test_demo_report_has_the_zeroshot_rows():
    from afov_ray.demo import report_markdown, verdict

    cell = {"miou": 0.7, "miou_present": 0.7, "accuracy": 0.9, "points": 100}
    results = {"distill_eval": {s: {k: cell for k in ("all", "visible", "unseen")} for s in ("pred", "pred_afi",
                                                                                          "pseudo")},
               "zeroshot_eval": _zeroshot_eval()}
    results["verdict"] = verdict(results)
    md = report_markdown(results, {})
    for k, v in (("all", "15.4"), ("camera-visible", "16.7"), ("camera-unseen", "11.2")):
        assert f"| zero-shot from TMP features (no 3D labels), {k} points | {v} |" in md
    del results["zeroshot_eval"]
    assert "zero-shot from TMP features (no 3D labels), all" not in report_markdown(results, {})
