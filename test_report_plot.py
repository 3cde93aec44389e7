"""Tests for report.py and plot.py on synthetic, contract-exact run folders (docs/CONTRACT.md).

No model and no results/ folder needed: every run is written into tmp_path by make_run().
"""
import json
import os
import re
import subprocess
import sys

import pytest

import plot
import report

HERE = os.path.dirname(os.path.abspath(__file__))
FOUNDATIONS = ["Care", "Fairness", "Loyalty", "Authority", "Sanctity", "Liberty", "SocialNorms"]
SECTION_HEADINGS = ["## " + s for s in report.SECTIONS]
VERDICT = re.compile(r"\*\*Verdict: (yes|no|unclear|not measured in this run)\*\*")


def eval_fields(auth, care, coherence, ci=0.02, loyalty=-2.0, drift=0.0):
    nats = {f: -2.0 + drift for f in FOUNDATIONS}
    nats.update(Authority=auth, Care=care, Loyalty=loyalty)
    return {"auth_nats": auth, "care_nats": care, "coherence": coherence, "top1": 0.4,
            "nats": nats, "p": {f: 2.718 ** v for f, v in nats.items()},
            "eval_backend": "fast", "eval_frames": "fwd+rot3", "eval_n": 132,
            "eval_ci": {"auth_nats": [auth - ci, auth + ci], "care_nats": [care - ci, care + ci]} if ci else {}}


def round_line(k, auth, care, coherence, run, seed, kept=40, loyalty=-2.0):
    doses = [0.5, 1.0, 2.0]  # the dose table also has the unsteered reference at dose 0, as steer_heal writes it
    table = [{"dose": d, "n": 20, "kept": n, "kept_frac": n / 20, "ppl_tail": p, "rep": r,
              "dropped_by": {"ppl": 20 - n} if n < 20 else {}}
             for d, n, p, r in zip([0.0] + doses, [20, 18, 14, 8], [5.0, 6.0, 9.0, 30.0], [0.04, 0.05, 0.08, 0.2])]
    return {"kind": "round", "round": k, "run": run, "seed": seed, "time": "2025-01-01T00:00:00",
            **eval_fields(auth, care, coherence, loyalty=loyalty, drift=0.03 * (k + 1)), "trait_proj": 0.5 + 0.3 * k,
            "ppl_base": 8.0 + k, "rep": 0.05, "kappa": 1.0, "doses": doses, "generated": 60, "kept": kept,
            "dropped_by": {"ppl": 20, "rep": 0}, "ppl_gate": 12.0, "dose_table": table,
            "raw_ppl_base": 11.0, "raw_rep": 0.09, "healed_ppl_base": 8.5, "healed_rep": 0.06,
            "vector_norms": {"12": 3.2}, "status": "ok",
            "heal": {"steps": 50, "nll": 2.1, "val_nll": 2.3, "val_nll_before": 2.9, "kl_agg": 0.05 + 0.01 * k,
                     "kl_mean": 0.04, "barrier_active": 0.1 * k, "lam": 1.0, "tau": 0.05, "nonfinite": 0}}


def make_run(path, auths=(-1.0, -1.1, -1.2, -1.3), cares=(-1.5, -1.45, -1.4, -1.35), coh=0.6,
             seed=41, n_rounds=3, prompting_auth=-1.02, completions=True):
    """A run folder: config.json, rounds.jsonl (base, prompting, steering_only, round 0..n-1), completions_r0."""
    os.makedirs(path, exist_ok=True)
    run = os.path.basename(path)
    cfg = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "coh_floor": 0.8, "seed": seed, "rounds": n_rounds,
           "persona": "seed", "pos": "you do not defer to authority and instead stick to principle", "neg": ""}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"config": cfg, "argv": ["steer_heal.py", "--rounds", str(n_rounds)], "versions": {},
                   "started": "2025-01-01T00:00:00"}, f)
    head = {"round": -1, "run": run, "seed": seed, "time": "2025-01-01T00:00:00"}
    lines = [{"kind": "base", **head, **eval_fields(auths[0], cares[0], coh), "trait_proj": 0.2,
              "ppl_base": 7.5, "rep": 0.04},
             {"kind": "prompting", **head, **eval_fields(prompting_auth, cares[0] + 0.01, coh * 0.98)},
             {"kind": "steering_only", **head, **eval_fields(auths[0] - 0.05, cares[0], coh * 0.9),
              "trait_proj": 1.0}]
    lines += [round_line(k, auths[k + 1], cares[k + 1], coh * 0.97, run, seed, loyalty=-2.0 + 0.1 * k)
              for k in range(n_rounds)]
    with open(os.path.join(path, "rounds.jsonl"), "w") as f:
        f.write("".join(json.dumps(ln) + "\n" for ln in lines))
    if completions:
        with open(os.path.join(path, "completions_r0.jsonl"), "w") as f:
            # the dose-0 reference kept at ppl 11.9 must not count as the steered "just kept" example
            for i, (ppl, kept, dose) in enumerate([(5.0, True, 1.0), (11.5, True, 1.0), (12.5, False, 2.0),
                                                   (40.0, False, 2.0), (11.9, True, 0.0)]):
                f.write(json.dumps({"round": 0, "prompt": f"p{i}", "text": f"completion {i} " + "word " * 100,
                                    "dose": dose, "n_tokens": 100, "ppl_tail": ppl, "ppl": ppl, "rep": 0.05,
                                    "comp": 0.4, "narr": False, "refuse": False, "kept": kept,
                                    "why_dropped": "" if kept else "ppl"}) + "\n")
    return str(path)


def sections(text):
    """{heading: body} of a report."""
    parts = re.split(r"^(## .*)$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def verdict(text, heading):
    return VERDICT.search(sections(text)["## " + heading]).group(1)


def test_report_has_sections_numbers_and_verdicts(tmp_path):
    d = make_run(tmp_path / "run")
    text = report.write_report(d)
    assert open(os.path.join(d, "report.md")).read() == text
    secs = sections(text)
    assert list(secs) == SECTION_HEADINGS
    for h, body in secs.items():
        m = VERDICT.search(body)
        assert m, h
        assert re.search(r"\d", body[m.end():].split("\n")[0]), h  # the verdict line carries its numbers
        assert re.search(r"^\|.*\d", body, flags=re.M), h  # and so does its table
    assert "SmolLM2-135M" in text and "`python steer_heal.py --rounds 3`" in text and "fwd+rot3" in text
    assert '+ "you do not defer to authority and instead stick to principle" / − (default prompt)' in text
    # Q0: kept fraction falls 1 → 0.4 from dose 0 to 2, ppl rises → yes; borderline examples are the right ones
    assert verdict(text, report.SECTIONS[0]) == "yes" and "kept frac 1→0.4" in text
    assert "just kept: ppl_tail 11.5" in text and "just dropped (ppl): ppl_tail 12.5" in text
    assert "completion 1 word" in text and "…" in text and "word " * 80 not in text  # truncated to ~300 chars
    # Q1: healed ppl 8.5 < raw 11; trait_proj healed 0.5-0.2=0.3 vs steering 0.8 → retained 0.375 < 0.5
    assert verdict(text, report.SECTIONS[1]) == "unclear" and "0.375" in text
    assert "not run; rerun with --ablate-lam0" in text
    # Q2: coherence 0.582 ≥ floor 0.8 × 0.6 = 0.48
    assert verdict(text, report.SECTIONS[2]) == "yes" and "0.48" in secs["## " + report.SECTIONS[2]]
    # prompting moved auth by -0.02, the loop by -0.3 → loop beats prompting
    assert verdict(text, report.SECTIONS[4]) == "yes"


def test_q3_flips_between_moving_and_flat_run(tmp_path):
    moving = report.write_report(make_run(tmp_path / "moving"))
    flat = report.write_report(make_run(tmp_path / "flat", auths=(-1.0, -1.005, -0.998, -1.003)))
    assert verdict(moving, report.SECTIONS[3]) == "yes"
    assert "Δauth -0.3" in moving and "monotone" in moving
    assert verdict(flat, report.SECTIONS[3]) == "no"
    assert "inside the base's interval" in flat
    # not monotone beyond the CI → unclear; one round only → unclear
    zig = report.write_report(make_run(tmp_path / "zig", auths=(-1.0, -1.3, -1.1, -1.4)))
    assert verdict(zig, report.SECTIONS[3]) == "unclear" and "not monotone" in zig
    # saturation: steps -0.2, -0.005, -0.002 with CI ±0.02 → saturates after round 0
    sat = report.write_report(make_run(tmp_path / "sat", auths=(-1.0, -1.2, -1.205, -1.207)))
    assert verdict(sat, report.SECTIONS[3]) == "yes" and "saturates after round 0" in sat
    # prompting beats a flat loop
    assert verdict(report.write_report(make_run(tmp_path / "p", auths=(-1.0, -1.0, -1.0, -1.01),
                                                prompting_auth=-1.3)), report.SECTIONS[4]) == "no"


def test_lam0_stop_and_path_argument(tmp_path):
    d = make_run(tmp_path / "abl", auths=(-1.0, -1.1, -1.2, -1.3))
    with open(os.path.join(d, "rounds.jsonl"), "a") as f:
        lam0 = {**round_line(0, -1.15, -1.5, 0.3, "abl", 41), "kind": "lam0", "ppl_base": 25.0}
        f.write(json.dumps(lam0) + "\n")
        f.write(json.dumps({"kind": "stop", "round": 2, "run": "abl", "seed": 41, "time": "t",
                            "reason": "coherence 0.300 < floor"}) + "\n")
    text = report.write_report(tmp_path / "abl")  # steer_heal.py passes a pathlib.Path
    assert "| λ=0 round 0 | -1.15 |" in text and "not run; rerun" not in text
    assert "loop stopped early: coherence 0.300 < floor" in sections(text)["## " + report.SECTIONS[2]]


def test_missing_data_says_not_measured(tmp_path):
    d = make_run(tmp_path / "bare", completions=False)
    lines = [json.loads(x) for x in open(os.path.join(d, "rounds.jsonl"))][:1]  # base only
    with open(os.path.join(d, "rounds.jsonl"), "w") as f:
        f.write(json.dumps(lines[0]) + "\n" + '{"kind": "round", "rou')  # half-written line
    text = report.write_report(d)
    assert list(sections(text)) == SECTION_HEADINGS
    for h in report.SECTIONS:
        assert verdict(text, h) == "not measured in this run", h


def test_group_report_aggregates_seeds(tmp_path):
    g = tmp_path / "grp"
    make_run(g / "seed41", seed=41)
    make_run(g / "seed42", seed=42, auths=(-1.0, -1.0, -1.002, -0.999))
    text = report.write_report(str(g))
    assert os.path.exists(g / "report.md") and os.path.exists(g / "seed42" / "report.md")
    assert "group of 2 seeds" in text and "seed(s): 41, 42" in text
    q3 = sections(text)["## " + report.SECTIONS[3]]
    assert "**Verdict: unclear** (seeds disagree)" in q3 and "seed41: yes" in q3 and "seed42: no" in q3
    # Δauth final: -0.3 and +0.001 → mean -0.1495, min–max -0.3–0.001
    row = next(ln for ln in q3.splitlines() if ln.startswith("| Δauth final"))
    assert "-0.1495" in row and "[-0.3, 0.001]" in row


def test_plot_writes_png_svg_and_map_points(tmp_path):
    d = make_run(tmp_path / "run")
    pts = plot.map_points(d)
    assert [p[0] for p in pts] == [-1, 0, 1, 2]  # base + one per evaluated round
    assert pts[0][1:] == (-1.5, -1.0) and pts[-1][1:] == (-1.35, -1.3)
    paths = plot.plot_runs([d], None)
    assert [os.path.basename(p) for p in paths] == ["plot.png", "plot.svg"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    assert open(paths[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_overlay_group_and_in_progress(tmp_path):
    g = tmp_path / "grp"
    make_run(g / "seed41", seed=41)
    make_run(g / "seed42", seed=42, auths=(-1.0, -1.2, -1.3, -1.4))
    assert [round(p[2], 4) for p in plot.map_points(str(g))] == [-1.0, -1.15, -1.25, -1.35]
    prog = make_run(tmp_path / "prog", n_rounds=1)  # base + round 0 only
    assert len(plot.map_points(prog)) == 2
    out = tmp_path / "figs"
    paths = plot.plot_runs([str(g), prog], str(out))
    assert all(os.path.exists(p) and str(out) in p for p in paths)


def test_bad_input_exits_2(tmp_path):
    empty = tmp_path / "notarun"
    empty.mkdir()
    noeval = make_run(tmp_path / "noeval")
    with open(os.path.join(noeval, "rounds.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "stop", "round": -1, "run": "noeval", "seed": 1, "time": "t",
                            "reason": "oom"}) + "\n")
    for d, msg in [(empty, "not a run folder"), (noeval, "no eval lines")]:
        p = subprocess.run([sys.executable, os.path.join(HERE, "plot.py"), str(d)], capture_output=True, text=True)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), str(empty)], capture_output=True, text=True)
    assert p.returncode == 2 and "not a run folder" in p.stderr and "Traceback" not in p.stderr
    good = make_run(tmp_path / "good", n_rounds=1)
    p = subprocess.run([sys.executable, os.path.join(HERE, "plot.py"), good, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.split() == [str(tmp_path / "o" / f"plot.{x}") for x in ("png", "svg")]
    with pytest.raises(ValueError):
        plot.map_points(str(empty))
