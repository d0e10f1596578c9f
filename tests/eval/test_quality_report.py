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
