"""The reliability tally: after the session, one summary of every bad-input / fault case that ran (cases tried,
clear errors, correct results, tracebacks, outputs damaged), printed and written to
``outputs/reliability_tally.json``."""

from __future__ import annotations

import json

from tests.reliability.harness import REPO, TALLY, tally_summary


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    s = tally_summary()
    tr = terminalreporter
    tr.section("reliability tally")
    tr.write_line(f"cases tried: {s['cases']}   clear errors: {s['clear_errors']}   correct results: "
                  f"{s['correct_results']}   tracebacks: {s['tracebacks']}   outputs damaged: {s['damaged']}   "
                  f"({s['seconds']:.0f} s in the jobs)")
    for o in TALLY:
        ok = (o.clear if o.kind == "error" else o.correct) and not o.damaged
        if not ok:
            tr.write_line(f"  NOT AS EXPECTED {o.suite}/{o.case}: exit {o.code} (expected {o.expected})"
                          + (", traceback" if o.traceback else "") + (", damaged" if o.damaged else "")
                          + (f", {o.note}" if o.note else ""))
    try:
        out = REPO / "outputs" / "reliability_tally.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"summary": s, "cases": [o.__dict__ for o in TALLY]}, indent=1))
        tr.write_line(f"written to {out}")
    except OSError as e:
        tr.write_line(f"(tally not written: {e})")
