"""The crux sweep's verdicts on hand-made settings built from the committed λ=0 rows (no model; seconds).
Run: python -m pytest -q test_sweep.py"""
import json
from pathlib import Path

import sweep

ROWS = Path(__file__).resolve().parent / "results" / "crux" / "sweep.jsonl"


def test_verdicts_follow_incoherence_minus_trait_removed(tmp_path):
    rows = [json.loads(x) for x in ROWS.read_text().splitlines()]
    base = next(r for r in rows if r["name"] == "base")
    zero = [r for r in rows if r["name"] == "lam0"]
    made = []
    for r in zero:
        mid_ppl = (r["ppl_base"] + base["ppl_base"]) / 2
        half_trait = (r["trait_fixed"] + base["trait_fixed"]) / 2
        made += [dict(r, name="clean", ppl_base=mid_ppl),  # half the incoherence gone, all the trait kept
                 dict(r, name="costly", trait_fixed=half_trait),  # half the trait gone, no incoherence removed
                 dict(r, name="both", ppl_base=mid_ppl, trait_fixed=half_trait)]  # the same fraction of each
    (tmp_path / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [base, *zero, *made]))
    sweep.summarize(tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    s = s.get("settings", s)
    assert s["clean"]["verdict"] == "preferential"  # kept exactly 1: no ratio, but the difference decides
    assert s["clean"]["removed"][0] == s["clean"]["diff"][0] > 0.45
    assert s["costly"]["verdict"] == "not preferential"
    assert abs(s["both"]["diff"][0]) < 1e-9 and s["both"]["verdict"] == "mixed across seeds"
    assert (tmp_path / "frontier.png").stat().st_size > 0
