"""Tests for report.py and plot.py on synthetic, contract-exact run folders (docs/CONTRACT.md).

No model and no results/ folder needed: every run is written into tmp_path by make_run().
"""
import json
import os
import re
import subprocess
import sys

import pytest

from lib import evidence
import plot
import report
import report_methods
from lib import runio

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
FOUNDATIONS = ["Care", "Fairness", "Loyalty", "Authority", "Sanctity", "Liberty", "SocialNorms"]
SECTION_HEADINGS = ["## " + s for s in report.SECTIONS]
VERDICT = re.compile(r"\*\*Verdict: (yes|no|unclear|not measurable|not measured in this run|keeps moving|"
                     r"moved, then stopped)\*\*")


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


def passing(sgn=1):
    """A direction check that passes: persona and opposite move the reader apart, beyond the paired noise."""
    return dict(persona=0.1 * sgn, opposite=-0.1 * sgn, diff_ci=sorted([0.1 * sgn, 0.3 * sgn]),
                opposite_ci=sorted([-0.2 * sgn, -0.02 * sgn]))


def make_run(path, auths=(-1.0, -1.1, -1.2, -1.3), cares=(-1.5, -1.45, -1.4, -1.35), coh=0.6,
             seed=41, n_rounds=3, prompting_auth=-1.02, completions=True, ci=0.02):
    """A run folder: config.json, rounds.jsonl (base, prompting, steering_only, round 0..n-1), completions_r0."""
    os.makedirs(path, exist_ok=True)
    run = os.path.basename(path)
    cfg = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "coh_floor": 0.8, "seed": seed, "rounds": n_rounds,
           "persona": "seed", "pos": "you do not defer to authority and instead stick to principle", "neg": ""}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"config": cfg, "argv": ["steer_heal.py", "--rounds", str(n_rounds)], "versions": {},
                   "started": "2025-01-01T00:00:00"}, f)
    head = {"round": -1, "run": run, "seed": seed, "time": "2025-01-01T00:00:00"}
    lines = [{"kind": "base", **head, **eval_fields(auths[0], cares[0], coh, ci=ci), "trait_proj": 0.2,
              "ppl_base": 7.5, "rep": 0.04},
             {"kind": "prompting", **head, **eval_fields(prompting_auth, cares[0] + 0.01, coh * 0.98, ci=ci),
              "direction": {k: passing(sgn) for k, sgn in evidence.OLD_READERS}},
             {"kind": "steering_only", **head, **eval_fields(auths[0] - 0.05, cares[0], coh * 0.9, ci=ci),
              "trait_proj": 1.0}]
    lines += [{**round_line(k, auths[k + 1], cares[k + 1], coh * 0.97, run, seed, loyalty=-2.0 + 0.1 * k),
               **{k2: v for k2, v in eval_fields(auths[k + 1], cares[k + 1], coh * 0.97, ci=ci).items()
                  if k2 == "eval_ci"}} for k in range(n_rounds)]
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


def patch_run(d, fn):
    """Rewrite a run's rounds.jsonl with fn(line) applied to each line (fn edits in place; returning False drops
    the line)."""
    path = os.path.join(d, "rounds.jsonl")
    lines = [json.loads(x) for x in open(path)]
    out = [ln for ln in lines if fn(ln) is not False]
    with open(path, "w") as f:
        f.write("".join(json.dumps(ln) + "\n" for ln in out))
    return d


def make_new_run(path, gaps=(0.0, 0.05, 0.10, 0.15), gap_ci=0.01, steer_gap=0.06, prompting_gap=0.02,
                 traits=(1.0, 2.0, 3.0, 4.0), steer_trait=2.5, prompting_trait=1.5, top1_chance=0.2,
                 yesno_constant=False, ppl_ceil=2.0, **kw):
    """A run in today's format (docs/CONTRACT.md): answer_mass, top1_chance, persona_gap(_ci), persona_yesno*,
    trait_fixed / trait_self, a `steered` line per round (round 0's is the steering-only reference),
    train_* / raw_trait_fixed, config ppl_ceil. gaps / traits: base, round 0, 1, ...; gap_ci: CI half-width."""
    d = make_run(path, **kw)
    with open(os.path.join(d, "config.json")) as f:
        conf = json.load(f)
    del conf["config"]["coh_floor"]
    conf["config"]["ppl_ceil"] = ppl_ceil
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f)
    extra = []

    def persona(ln, gap, trait):
        ln.update(answer_mass=ln.pop("coherence"), top1_chance=top1_chance, trait_fixed=trait,
                  persona_gap=0.3 + gap, persona_n=200, persona_yesno=0.1 + gap, persona_yes_frac=0.5,
                  persona_yesno_match=0.5, persona_yesno_constant=yesno_constant,
                  persona_gap_ci=None if ln["kind"] == "base" else [gap - gaps[0] - gap_ci, gap - gaps[0] + gap_ci])
        ln["trait_self"] = ln.pop("trait_proj", trait)
        for old, new in (("healed_ppl_base", "train_ppl_base"), ("healed_rep", "train_rep")):
            if old in ln:
                ln[new] = ln.pop(old)

    def fn(ln):
        kind, k = ln["kind"], ln["round"]
        if kind == "base":
            persona(ln, gaps[0], traits[0])
        elif kind == "prompting":
            persona(ln, gaps[0] + prompting_gap, traits[0] + prompting_trait)
            ln["ppl_base"] = 8.0
        elif kind == "steering_only":  # today: round 0's steered line
            persona(ln, gaps[0] + steer_gap, steer_trait)
            ln.update(kind="steered", round=0, dose=0.6, ppl_base=9.0)
        elif kind == "round":
            persona(ln, gaps[k + 1], traits[k + 1])
            ln.update(raw_trait_fixed=traits[k + 1] + 1.0, train_trait_fixed=traits[k + 1] + 0.5)
            if k > 0:  # round k's model under round k's vector
                extra.append({**ln, "kind": "steered", "dose": 0.6, "persona_gap": ln["persona_gap"] + 0.02,
                              "persona_gap_ci": [x + 0.02 for x in ln["persona_gap_ci"]]})
    patch_run(d, fn)
    with open(os.path.join(d, "rounds.jsonl"), "a") as f:
        f.write("".join(json.dumps(ln) + "\n" for ln in extra))
    return d


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
    # Q1: healed round-0 ppl_base 8 vs base 7.5 (×1.07 ≤ 1.25: fluent); an old run has no persona_gap or
    # trait_fixed, so auth_nats reads the trait: steering Δ -0.05, healed Δ -0.1 (CI ±0.02 each) → retained 2.
    # (It used to read trait_proj, which the line's own model reads, and compared sampled with greedy ppl.)
    assert verdict(text, report.SECTIONS[1]) == "yes" and "retained 2 " in text and "×1.07" in text
    assert "not run; rerun with --ablate-lam0" in text
    # Q2: max ppl_base 10 ≤ ceiling 2 (default: no ppl_ceil in an old config) × base 7.5 = 15
    q2 = secs["## " + report.SECTIONS[2]]
    assert verdict(text, report.SECTIONS[2]) == "yes" and "ceiling 15" in q2 and "| answer_mass |" in q2
    assert "single seed: each reader's own paired bootstrap" in text
    # prompting moved auth by -0.02, the loop by -0.3 → loop beats prompting
    assert verdict(text, report.SECTIONS[4]) == "yes"


def test_q3_flips_between_moving_and_flat_run(tmp_path):
    moving = report.write_report(make_run(tmp_path / "moving"))
    flat = report.write_report(make_run(tmp_path / "flat", auths=(-1.0, -1.005, -0.998, -1.003)))
    assert verdict(moving, report.SECTIONS[3]) == "keeps moving"  # Q3's three answers: keeps moving / moved, then stopped / no
    assert "Δauth -0.3" in moving and "the last round's step is beyond noise" in moving and "not monotone" not in moving
    assert verdict(flat, report.SECTIONS[3]) == "no"
    assert "inside the noise" in flat
    # a step back beyond the CI, then a last step forward beyond it → keeps moving, and says it is not monotone
    zig = report.write_report(make_run(tmp_path / "zig", auths=(-1.0, -1.3, -1.1, -1.4)))
    assert verdict(zig, report.SECTIONS[3]) == "keeps moving" and "not monotone" in zig
    # saturation: steps -0.2, -0.005, -0.002 with CI ±0.02 → moved, then stopped (after round 0)
    sat = report.write_report(make_run(tmp_path / "sat", auths=(-1.0, -1.2, -1.205, -1.207)))
    assert verdict(sat, report.SECTIONS[3]) == "moved, then stopped" and "saturates after round 0" in sat
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
    assert re.search(r"^\| λ=0 round 0 \| — \| — \| — \| — \| -1.15 \|", text, flags=re.M) and "not run; rerun" not in text
    # what the barrier removed: λ=0 minus round 0 with the barrier, per reader and ppl_base (25 - 8)
    assert "| auth_nats | -1.15 | -1.1 | -0.05 [" in text and "| ppl_base | 25 | 8 | 17 (no interval) |" in text
    assert "loop stopped early: coherence 0.300 < floor" in sections(text)["## " + report.SECTIONS[2]]


def test_a_resume_supersedes_the_stop_before_it(tmp_path):
    """A stop line (round 2 aborted) then a resume that ran round 2 again: the report no longer says the loop
    stopped; a stop written after the resume still counts. runio.live_lines is the one rule (the run's own kinds
    and completed rounds read it too): a --redo-from 0 resume also discards round 0's lam0 line."""
    d = make_run(tmp_path / "r", auths=(-1.0, -1.1, -1.2, -1.3))
    stop = {"kind": "stop", "round": 2, "run": "r", "seed": 41, "time": "t", "reason": "aborted: 9 non-finite steps"}
    with open(os.path.join(d, "rounds.jsonl"), "a") as f:
        f.write(json.dumps(stop) + "\n" + json.dumps({"kind": "resume", "round": -1, "run": "r"}) + "\n")
    assert "loop stopped early" not in sections(report.write_report(d))["## " + report.SECTIONS[2]]
    with open(os.path.join(d, "rounds.jsonl"), "a") as f:
        f.write(json.dumps(dict(stop, reason="aborted again")) + "\n")
    assert "loop stopped early: aborted again" in sections(report.write_report(d))["## " + report.SECTIONS[2]]
    lines = [{"kind": "base", "round": -1}, {"kind": "lam0", "round": 0}, {"kind": "round", "round": 0, "status": "ok"},
             {"kind": "round", "round": 1, "status": "ok"}, {"kind": "resume", "round": -1, "redo_from": 1}]
    assert [x["kind"] for x in runio.live_lines(lines)] == ["base", "lam0", "round", "resume"]
    lines[-1]["redo_from"] = 0
    assert [x["kind"] for x in runio.live_lines(lines)] == ["base", "resume"] and runio.round_lines(lines) == {}


def test_q3_does_not_count_a_round_past_the_ppl_ceiling(tmp_path):
    """Q3 on a run whose last round broke the model (ppl_base over the ceiling): that round's trait step is no
    evidence of the trait moving, as for the prompting comparison; the text says which round was left out."""
    wreck = lambda ln: ln.update(ppl_base=40.0) if ln["kind"] == "round" and ln["round"] == 2 else None
    text = report.write_report(patch_run(make_new_run(tmp_path / "w", traits=(1.0, 1.0, 1.0, 4.0),
                                                  gaps=(0.0, 0.0, 0.0, 0.3)), wreck))
    q3 = sections(text)["## " + report.SECTIONS[3]]
    assert "round 2 past the ppl ceiling: not counted" in q3 and "after round 1" in q3
    assert verdict(text, report.SECTIONS[3]) in ("no", "unclear")  # counted, round 2's jump (+3): keeps moving


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
    # the group's verdict uses the seeds together: Δauth -0.1495 ± the spread 0.301 holds 0 → no (it was
    # "unclear (seeds disagree)" from the per-seed words); each seed's own verdict is still listed
    assert "**Verdict: no**: decided by auth_nats. auth_nats: no — Δauth -0.1495 [-0.4505, 0.1515]" in q3
    assert re.search(r"- seed41: (keeps moving|moved, then stopped):", q3) and "- seed42: no:" in q3
    assert "2 seeds: a change counts only beyond the larger of the seeds' min–max spread" in text
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


def upto_seeds(section):
    """A group section without its 'Each seed alone' list (each seed's own, single-seed reading)."""
    return section.split("Each seed alone")[0]


def test_vs_prompting_must_beat_zero_and_prompting(tmp_path):
    # issue: rounds all equal to base and prompting +0.022 (the wrong way) → old code said "yes" (L < P - h)
    still = make_run(tmp_path / "still", auths=(-1.0,) * 4, prompting_auth=-1.0 + 0.022, ci=0.003)
    text = report.write_report(still)
    assert verdict(text, report.SECTIONS[4]) == "no" and "the loop did not move beyond noise" in text
    # the same on persona_gap (higher = less deferent), today's format: loop flat, prompting -0.022
    flat = make_new_run(tmp_path / "flatgap", gaps=(0.0,) * 4, prompting_gap=-0.022, gap_ci=0.003,
                        auths=(-1.0,) * 4, prompting_auth=-1.0 + 0.022, ci=0.003)
    text = report.write_report(flat)
    assert verdict(text, report.SECTIONS[4]) == "no" and "persona_gap: no — loop Δgap 0 [-0.003, 0.003]" in text
    # the loop moved but only as far as prompting (within noise) → a tie, not a win
    tie = make_new_run(tmp_path / "tie", gaps=(0.0, 0.05, 0.08, 0.1), prompting_gap=0.095, gap_ci=0.01,
                       auths=(-1.0, -1.1, -1.2, -1.3), prompting_auth=-1.29)
    text = report.write_report(tie)
    assert verdict(text, report.SECTIONS[4]) == "unclear" and "a tie with prompting within noise" in text
    # and it can still say yes: gap and auth both beyond zero and beyond prompting
    assert verdict(report.write_report(make_new_run(tmp_path / "win")), report.SECTIONS[4]) == "yes"


def test_q1_fluency_compares_greedy_with_greedy(tmp_path):
    # healed round-0 ppl_base 10.5 = 1.4 × base 7.5 → not fluent; the old test compared the healed model's
    # greedy answers (healed_ppl_base 8.5) with the sampled survivors (11) and could not fail
    d = patch_run(make_run(tmp_path / "r"), lambda ln: ln.update(ppl_base=10.5) if ln["kind"] == "round" and
                  ln["round"] == 0 else None)
    text = report.write_report(d)
    q1 = sections(text)["## " + report.SECTIONS[1]]
    assert verdict(text, report.SECTIONS[1]) == "no" and "×1.4 of base" in q1 and "NOT fluent" in q1
    assert "(≤ ×1.25)" in q1 and "ppl_base ≤ 1.25 × base" in text
    # the survivors' pair is still shown, as context
    assert "| raw steered survivors | 11 | 0.09 |" in q1 and "| healed model (greedy) | 8.5 | 0.06 |" in q1


def test_q1_retention_not_measurable_when_steering_within_noise(tmp_path):
    # steering Δ +0.001 and healed Δ +0.002 must not read as "retained 2 … yes": old code took trait_proj
    # (0.2 → 0.201 → 0.202) and said yes; today auth_nats moves -0.001 / -0.002 inside its ±0.004
    def tiny(ln):
        ln["trait_proj"] = {"base": 0.2, "steering_only": 0.201, "round": 0.202}.get(ln["kind"], ln.get("trait_proj"))
        if ln["kind"] in ("steering_only", "round") and ln["round"] in (-1, 0):
            ln["auth_nats"] = -1.0 - (0.001 if ln["kind"] == "steering_only" else 0.002)
    d = patch_run(make_run(tmp_path / "old", ci=0.003), tiny)
    text = report.write_report(d)
    assert verdict(text, report.SECTIONS[1]) == "not measurable"
    assert "steering's shift is within noise, so there is nothing to retain" in text
    # today's format: persona_gap decides, with its paired CI (steering +0.001 ± 0.005)
    new = make_new_run(tmp_path / "new", gaps=(0.0, 0.002, 0.003, 0.004), steer_gap=0.001, gap_ci=0.005,
                       traits=(1.0,) * 4, steer_trait=1.0)
    text = report.write_report(new)
    q1 = sections(text)["## " + report.SECTIONS[1]]
    assert verdict(text, report.SECTIONS[1]) != "yes"
    assert "persona_gap: not measurable — steering's shift is within noise" in q1


def test_q1_reads_persona_gap_first_and_shows_lam0_and_training_pair(tmp_path):
    d = make_new_run(tmp_path / "r")
    with open(os.path.join(d, "rounds.jsonl")) as f:
        r0 = next(ln for ln in map(json.loads, f) if ln["kind"] == "round" and ln["round"] == 0)
    lam0 = {**r0, "kind": "lam0", "ppl_base": 12.0, "persona_gap": 0.4, "persona_gap_ci": [0.09, 0.11],
            "trait_fixed": 2.6, "auth_nats": -1.15}
    with open(os.path.join(d, "rounds.jsonl"), "a") as f:
        f.write(json.dumps(lam0) + "\n")
    text = report.write_report(d)
    q1 = sections(text)["## " + report.SECTIONS[1]]
    # steering Δgap 0.06 [0.05, 0.07], healed 0.05 → retained 0.833; persona_gap is named first and decides
    assert verdict(text, report.SECTIONS[1]) == "yes" and "Retention: yes — decided by persona_gap. persona_gap: yes — retained 0.833" in q1
    assert "| steered r0 (steering only) | — | — | 0.36 | 2.5 |" in q1
    assert "| raw steered survivors | 11 | 0.09 | 3 |" in q1 and "| healed model (greedy) | 8.5 | 0.06 | 2.5 |" in q1
    # what the barrier removed: λ=0 minus barrier, per reader (gap 0.4 - 0.35) and ppl_base (12 - 8)
    assert "| persona_gap | 0.4 | 0.35 | 0.05 [" in q1 and "| trait_fixed | 2.6 | 2 | 0.6 (no interval) |" in q1
    assert "| ppl_base | 12 | 8 | 4 (no interval) |" in q1


def test_q2_uses_ppl_ceiling_not_answer_mass(tmp_path):
    # answer_mass (old: coherence) stays at 0.58 ≥ the old floor, but ppl_base triples in round 1 → no
    triple = lambda ln: ln.update(ppl_base=22.5) if ln["kind"] == "round" and ln["round"] == 1 else None
    text = report.write_report(patch_run(make_run(tmp_path / "old"), triple))
    q2 = sections(text)["## " + report.SECTIONS[2]]
    assert verdict(text, report.SECTIONS[2]) == "no" and "round 1 ppl_base 22.5 > ceiling 15" in q2
    assert "ppl_ceil 2 (default; not in config)" in q2
    # the same today, and the ceiling comes from config: ppl_ceil 4 → 30 → yes
    assert verdict(report.write_report(patch_run(make_new_run(tmp_path / "new"), triple)), report.SECTIONS[2]) == "no"
    text = report.write_report(patch_run(make_new_run(tmp_path / "lenient", ppl_ceil=4.0), triple))
    assert verdict(text, report.SECTIONS[2]) == "yes" and "ceiling 30 (ppl_ceil 4 × base 7.5)" in text
    # a loop past the ceiling does not beat prompting whatever its trait says
    assert verdict(report.write_report(patch_run(make_new_run(tmp_path / "over"), lambda ln: ln.update(
        ppl_base=40.0) if ln["kind"] == "round" else None)), report.SECTIONS[4]) == "no"


def test_group_noise_is_the_seed_spread(tmp_path):
    # two seeds whose rounds differ by 0.016 with late steps of 0.005: each seed alone (bootstrap ±0.0028 on a
    # step) is "still moving"; together the step is inside the seeds' spread → saturates
    g = tmp_path / "grp"
    make_run(g / "seed41", seed=41, auths=(-1.0, -1.2, -1.25, -1.255), ci=0.002)
    make_run(g / "seed42", seed=42, auths=(-1.0, -1.216, -1.266, -1.271), ci=0.002)
    text = report.write_report(str(g))
    q3 = upto_seeds(sections(text)["## " + report.SECTIONS[3]])
    assert "still moving" not in q3 and "saturates after round 1" in q3
    assert verdict(text, report.SECTIONS[3]) == "moved, then stopped"
    assert "still moving at the last round" in open(g / "seed41" / "report.md").read()  # one seed alone
    assert "single seed: each reader's own paired bootstrap" in open(g / "seed41" / "report.md").read()


def test_at_chance_readers_say_not_measurable(tmp_path):
    # tinymfv at chance: top1 0.2 vs top1_chance 0.2 (n 132) → Q3 and vs prompting rest on auth_nats alone
    atc = patch_run(make_run(tmp_path / "atc"), lambda ln: ln.update(top1=0.2, top1_chance=0.2))
    text = report.write_report(atc)
    for h in (report.SECTIONS[3], report.SECTIONS[4]):
        assert verdict(text, h) == "not measurable", h
        assert "tinymfv reads at chance: top1 0.2 vs chance 0.2" in sections(text)["## " + h], h
    # an older run without top1_chance: 1/7 is a lower bound on chance, so top1 0.13 is at chance for sure
    old = report.write_report(patch_run(make_run(tmp_path / "old"), lambda ln: ln.update(top1=0.13)))
    assert verdict(old, report.SECTIONS[3]) == "not measurable" and "1/7 is its lower bound" in old
    # top1 0.4 without top1_chance: unknown, the reader is used and the report says the chance is unknown
    assert "tinymfv chance level unknown" in report.write_report(make_run(tmp_path / "unk"))
    # today's format at chance on tinymfv: Q3 is decided by persona_gap, which is above chance
    new = make_new_run(tmp_path / "new", top1_chance=0.35)
    text = report.write_report(patch_run(new, lambda ln: ln.update(top1=0.36)))
    q3 = sections(text)["## " + report.SECTIONS[3]]
    assert q3.split("\n")[2].startswith("**Verdict: keeps moving**: decided by persona_gap. persona_gap: keeps moving")
    assert "auth_nats: not measurable" in q3 and "Δtrait_fixed 3" in q3
    # the yes/no form at chance (constant answer): said in the header and on every line it is shown
    text = report.write_report(make_new_run(tmp_path / "yn", yesno_constant=True))
    assert "yes/no persona form: at chance on the base line" in text
    assert "| 0.1 (constant answer: at chance) |" in text


def test_q3_falls_back_from_a_single_reading(tmp_path):
    # no persona_gap, trait_fixed on one seed has no interval → it is shown as a single reading and auth_nats,
    # the last resort, decides; on two seeds trait_fixed's spread gives it a noise and it decides
    def strip(ln):
        ln.pop("persona_gap", None)
        ln.pop("persona_gap_ci", None)
    text = report.write_report(patch_run(make_new_run(tmp_path / "one"), strip))
    q3 = sections(text)["## " + report.SECTIONS[3]]
    assert "trait_fixed is a single reading: no interval, one seed" in q3 and "auth_nats: keeps moving" in q3
    g = tmp_path / "grp"
    patch_run(make_new_run(g / "seed41", seed=41), strip)
    patch_run(make_new_run(g / "seed42", seed=42, traits=(1.0, 2.1, 3.1, 4.1)), strip)
    q3 = upto_seeds(sections(report.write_report(str(g)))["## " + report.SECTIONS[3]])
    assert "**Verdict: keeps moving**: decided by trait_fixed. trait_fixed: keeps moving — Δtrait_fixed 3.05 [2.95, 3.15]" in q3


def test_plot_persona_gap_panel_new_and_old(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    new, old = make_new_run(tmp_path / "new"), make_run(tmp_path / "old")
    fig, (a, b) = plt.subplots(1, 2)
    assert plot.panel_gap(a, "new", plot.load(new), "C0") and not plot.panel_gap(b, "old", plot.load(old), "C0")
    # Δ persona_gap vs base: base 0, rounds 0.05, 0.10, 0.15 with the paired CI as bars
    assert plot.gap_point(plot.load(new), lambda r: r["rounds"][-1]) == pytest.approx((0.15, 0.14, 0.16))
    plt.close(fig)
    figs = []
    monkeypatch.setattr(plot.plt, "close", figs.append)  # keep the figure to look at panel D
    plot.plot_runs([old], str(tmp_path / "o1"))
    assert [t.get_text() for t in figs[-1].axes[3].texts] == ["no persona_gap in this run"]
    paths = plot.plot_runs([new, old], str(tmp_path / "o2"))  # overlay: one run has it, one not
    assert not figs[-1].axes[3].texts and all(os.path.getsize(p) > 10_000 for p in paths)


BLIND = dict(persona=0.1, opposite=0.14, diff_ci=[-0.1, 0.02], opposite_ci=[0.06, 0.22])  # persona_gap, measured


def test_a_reader_blind_to_direction_decides_nothing(tmp_path):
    # the same run as the Q1 "yes" above, with the prompting line's direction checks set per reader
    def check(**dirs):
        def fn(ln):
            if ln["kind"] == "prompting":
                ln["direction"].update(dirs)
        return fn
    sighted = report.write_report(patch_run(make_new_run(tmp_path / "a"), check()))
    assert verdict(sighted, report.SECTIONS[1]) == "yes"
    assert "persona_gap: readable: direction check passed" in sighted
    # the opposite persona raises persona_gap as much as the persona (measured on the embedded model):
    # persona_gap reads persona-ness, so it cannot carry the verdict, and trait_fixed decides instead
    blind = report.write_report(patch_run(make_new_run(tmp_path / "b"), check(persona_gap=BLIND)))
    q1 = sections(blind)["## " + report.SECTIONS[1]]
    assert "persona_gap: not measurable — direction check not passed: prompting r-1 blind" in q1
    assert "Retention: yes — decided by auth_nats. persona_gap: not measurable" in q1  # trait_fixed: no interval
    # a check that merely fails (the opposite does not move the other way) is no pass either
    weak = dict(persona=0.1, opposite=0.01, diff_ci=[0.02, 0.16], opposite_ci=[-0.03, 0.05])
    both = report.write_report(patch_run(make_new_run(tmp_path / "c"), check(persona_gap=BLIND, trait_fixed=weak)))
    assert "trait_fixed: not measurable — direction check not passed: prompting r-1 fail" in both
    q3 = sections(both)["## " + report.SECTIONS[3]]
    assert "persona_gap: not measurable" in q3 and "auth_nats: keeps moving" in q3  # tinymfv is above chance in this run


# ---- methods given together (issue 12 item 5): steer-heal against prompt-bake and online
def make_method_run(path, method, tokens=6000, **kw):
    """A today's-format run of --method `method`: config.method and `method` on every line, generated_tokens per
    round (tokens each round; None leaves the field out, as older runs do)."""
    d = make_new_run(path, **kw)
    with open(os.path.join(d, "config.json")) as f:
        conf = json.load(f)
    conf["config"]["method"] = method
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f)

    def fn(ln):
        ln["method"] = method
        if ln["kind"] == "round" and tokens is not None:
            ln["generated_tokens"] = tokens
    return patch_run(d, fn)


def methods_section(text, title):
    """The body of one comparison section ('vs prompt baking', 'iterative vs online') of report_methods.md."""
    return next(body for h, body in sections(text).items() if h.startswith("## " + title + " ("))


def method_verdict(text, title):
    return re.search(r"\*\*Verdict: ([^*]+)\*\*", methods_section(text, title)).group(1)


def test_runs_group_by_method(tmp_path):
    # a steer-heal group of two seeds, two single prompt-bake run folders, an old run without `method`
    g = tmp_path / "sh"
    make_method_run(g / "seed41", "steer-heal", seed=41)
    make_method_run(g / "seed42", "steer-heal", seed=42)
    pb1 = make_method_run(tmp_path / "pb41", "prompt-bake", seed=41)
    pb2 = make_method_run(tmp_path / "pb42", "prompt-bake", seed=42)
    old = make_run(tmp_path / "old")  # no method anywhere → steer-heal
    on = make_new_run(tmp_path / "on")  # method only on the lines, not in config.json
    patch_run(on, lambda ln: ln.update(method="online"))
    groups = report_methods.by_method([str(g), pb1, pb2, old, on, pb1], label_from=str(tmp_path))  # pb1 twice: once
    assert {m: sorted(r["name"] for r in rs) for m, rs in groups.items()} == {
        "steer-heal": ["old", os.path.join("sh", "seed41"), os.path.join("sh", "seed42")],
        "prompt-bake": ["pb41", "pb42"], "online": ["on"]}
    assert report_methods.common_parent([str(g), pb1]) == str(tmp_path)
    assert [t for _, _, t in report_methods.pairs(list(groups))] == ["vs prompt baking", "iterative vs online"]
    # one method only: no comparison
    assert report_methods.write_methods_report([pb1, pb2]) is None and not os.path.exists(tmp_path / "report_methods.md")


def test_prompt_bake_report_names_its_method(tmp_path):
    text = report.write_report(make_method_run(tmp_path / "pb", "prompt-bake"))
    first = text.split("\n")[0]
    assert first == "# prompt-bake report: pb" and "steer-heal" not in first
    assert "- method: prompt-bake: prompt baking" in text
    # its `steered` lines are the teacher, and Q1 says so
    q1 = sections(text)["## " + report.SECTIONS[1]]
    assert "| teacher r0 (persona as system prompt) |" in q1 and "steered r0" not in q1
    assert "teacher Δgap" in q1
    assert report.write_report(make_run(tmp_path / "old")).startswith("# steer-heal report: old")


def test_method_clearly_ahead_on_persona_gap(tmp_path):
    # one seed each: steer-heal Δgap 0.15 ± 0.01 at round 2, prompt-bake 0.03 ± 0.01 → 0.12 ± 0.014: ahead
    sh = make_method_run(tmp_path / "sh", "steer-heal")
    pb = make_method_run(tmp_path / "pb", "prompt-bake", gaps=(0.0, 0.01, 0.02, 0.03), n_rounds=3)
    p = subprocess.run([sys.executable, os.path.join(HERE, "report_methods.py"), sh, pb], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = str(tmp_path / "report_methods.md")
    assert p.stdout.split() == [os.path.join(sh, "report.md"), os.path.join(pb, "report.md"), out]
    text = open(out).read()
    assert method_verdict(text, "vs prompt baking") == "steer-heal ahead"
    sec = methods_section(text, "vs prompt baking")
    assert ("persona_gap: steer-heal ahead — steer-heal Δgap 0.15 [0.14, 0.16] vs prompt-bake 0.03 [0.02, 0.04]; "
            "steer-heal − prompt-bake 0.12 [0.1059, 0.1341]") in sec
    assert re.search(r"\| persona_gap \| direction check passed: [^|]* \| 0.15 \[0.14, 0.16\] \| 0.03 \[0.02, 0.04\] \|", sec)
    assert "at round 2, the last round every run of both evaluated" in sec
    # each method's own report is inside, naming its method, and the per-round generation is shown
    assert "## steer-heal report: steer-heal" in text and "## prompt-bake report: prompt-bake" in text
    assert "### " + report.SECTIONS[4] in text
    assert "matched generation (within 10%)" in sec and "| 2 | 60 / 60 | 6000 [18000] / 6000 [18000] |" in sec
    # the other way round: prompt-bake ahead; and unequal budgets are called out
    pb2 = make_method_run(tmp_path / "m2" / "pb", "prompt-bake", gaps=(0.0, 0.2, 0.3, 0.4), tokens=9000)
    sh2 = make_method_run(tmp_path / "m2" / "sh", "steer-heal")
    path = report_methods.write_methods_report([sh2, pb2], out=str(tmp_path / "cmp"))
    text = open(path).read()
    assert path == str(tmp_path / "cmp" / "report_methods.md")
    assert method_verdict(text, "vs prompt baking") == "prompt-bake ahead"
    assert "NOT matched generation: prompt-bake generated more" in text


def test_methods_within_noise_not_distinguishable(tmp_path):
    # online's gap 0.145 vs steer-heal's 0.15 with CIs ± 0.01 each: 0.005 ± 0.014 holds 0
    sh = make_method_run(tmp_path / "sh", "steer-heal")
    on = make_method_run(tmp_path / "on", "online", gaps=(0.0, 0.05, 0.1, 0.145))
    text = open(report_methods.write_methods_report([sh, on])).read()
    assert method_verdict(text, "iterative vs online") == "not distinguishable from noise"
    assert "persona_gap: not distinguishable from noise" in methods_section(text, "iterative vs online")
    # a group: two seeds each, the seeds' spread (0.05) swamps a 0.03 difference that one seed would call
    g1, g2 = tmp_path / "gsh", tmp_path / "gon"
    make_method_run(g1 / "seed41", "steer-heal", seed=41, gap_ci=0.002)
    make_method_run(g1 / "seed42", "steer-heal", seed=42, gap_ci=0.002, gaps=(0.0, 0.05, 0.1, 0.2))
    make_method_run(g2 / "seed41", "online", seed=41, gap_ci=0.002, gaps=(0.0, 0.05, 0.1, 0.12))
    make_method_run(g2 / "seed42", "online", seed=42, gap_ci=0.002, gaps=(0.0, 0.05, 0.1, 0.17))
    text = open(report_methods.write_methods_report([str(g1), str(g2)])).read()
    sec = methods_section(text, "iterative vs online")
    assert "steer-heal (2 seeds) against online (2 seeds)" in sec
    assert "persona_gap: not distinguishable from noise" in sec and "steer-heal − online 0.03 [" in sec
    # the lone seed41 pair (0.15 vs 0.12, ± 0.002) is ahead: the group's noise made the difference
    one = open(report_methods.write_methods_report([str(g1 / "seed41"), str(g2 / "seed41")], out=str(tmp_path / "o"))).read()
    assert "persona_gap: steer-heal ahead" in methods_section(one, "iterative vs online")


def test_methods_report_steps_per_round_and_summed(tmp_path):
    """Optimizer steps are read per round and seed (a steer-heal round's steps follow its survivors: round 0 took 9 in
    some seeds where round 1 took 12), shown per round and summed, never as one number a round."""
    g1, g2 = tmp_path / "sh", tmp_path / "on"
    for seed in (41, 42):
        d = make_method_run(g1 / f"seed{seed}", "steer-heal", seed=seed)
        patch_run(d, lambda ln: ln["heal"].update(steps=9) if ln["kind"] == "round" and ln["round"] == 0 and
                  seed == 41 else None)
        make_method_run(g2 / f"seed{seed}", "online", seed=seed)
    text = open(report_methods.write_methods_report([str(g1), str(g2)])).read()
    assert "optimizer steps a round r0 29.5 [9–50], r1 50, r2 50; Σ through r2 129.5 [109–150]" in text
    assert "optimizer steps a round r0 50, r1 50, r2 50; Σ through r2 150" in text
    sec = methods_section(text, "iterative vs online")
    assert "| optimizer steps steer-heal / online |" in sec
    assert "| 0 | 60 / 60 | 6000 [6000] / 6000 [6000] | 29.5 [9–50] (Σ 29.5 [9–50]) / 50 (Σ 50) |" in sec
    assert "| 2 | 60 / 60 | 6000 [18000] / 6000 [18000] | 50 (Σ 129.5 [109–150]) / 50 (Σ 150) |" in sec


def test_blind_or_at_chance_reader_not_measurable_between_methods(tmp_path):
    # the same clear lead as above, but the direction check shows persona_gap reads persona-ness (the opposite
    # persona raises it too), trait_fixed has no interval on one seed, tinymfv reads at chance → not measurable
    def blind(ln):
        if ln["kind"] == "prompting":
            ln["direction"].update(persona_gap=BLIND)
        ln.update(top1=0.2, top1_chance=0.2)
    sh = patch_run(make_method_run(tmp_path / "sh", "steer-heal"), blind)
    pb = patch_run(make_method_run(tmp_path / "pb", "prompt-bake", gaps=(0.0, 0.01, 0.02, 0.03)), blind)
    text = open(report_methods.write_methods_report([sh, pb])).read()
    sec = methods_section(text, "vs prompt baking")
    assert method_verdict(text, "vs prompt baking") == "not measurable"
    assert "persona_gap: not measurable — direction check not passed" in sec and "blind" in sec
    assert "trait_fixed: not measurable — trait_fixed has no interval with one seed per method" in sec
    assert "auth_nats: not measurable — tinymfv reads at chance" in sec
    assert "steer-heal ahead" not in sec


def test_leader_past_the_ppl_ceiling_is_not_a_win(tmp_path):
    sh = patch_run(make_method_run(tmp_path / "sh", "steer-heal"),
                   lambda ln: ln.update(ppl_base=40.0) if ln["kind"] == "round" else None)
    pb = make_method_run(tmp_path / "pb", "prompt-bake", gaps=(0.0, 0.01, 0.02, 0.03))
    text = open(report_methods.write_methods_report([sh, pb])).read()
    assert method_verdict(text, "vs prompt baking") == "not a win"
    assert "steer-heal leads but is past the ppl ceiling at round 2 (sh)" in text


def test_plot_overlays_one_legend_entry_per_method(tmp_path, monkeypatch):
    g = tmp_path / "sh"
    make_method_run(g / "seed41", "steer-heal", seed=41)
    make_method_run(g / "seed42", "steer-heal", seed=42)
    pb = make_method_run(tmp_path / "pb", "prompt-bake", gaps=(0.0, 0.01, 0.02, 0.03))
    on1 = make_method_run(tmp_path / "on1", "online", seed=41)
    on2 = make_method_run(tmp_path / "on2", "online", seed=42, auths=(-1.0, -1.2, -1.3, -1.4))
    groups = plot.groups_of([str(g), pb, on1, on2])
    assert [(label, len(runs)) for label, runs, _ in groups] == [
        ("steer-heal (2 seeds, mean, band min–max)", 2), ("prompt-bake (1 seed)", 1),
        ("online (2 seeds, mean, band min–max)", 2)]
    assert len({c for _, _, c in groups}) == 3  # one colour per method
    figs = []
    monkeypatch.setattr(plot.plt, "close", figs.append)
    paths = plot.plot_runs([str(g), pb, on1, on2])
    assert paths == [str(tmp_path / f"plot_methods.{x}") for x in ("png", "svg")]  # the common parent
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    for ax in (figs[-1].axes[0], figs[-1].axes[3]):  # panel A and panel D name the methods, once each
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert [t for t in texts if t.split()[0] in report.METHODS] == [label for label, _, _ in groups]
        colours = {t.get_text(): h.get_color() for t, h in zip(ax.get_legend().get_texts(),
                                                                 ax.get_legend().legend_handles)}
        assert len({str(colours[label]) for label, _, _ in groups}) == 3
    # one method given in two folders: today's overlay, one entry per folder, plot.png in the first
    assert [x[0] for x in plot.groups_of([on1, on2])] == ["on1", "on2"]



def test_plot_keeps_two_settings_of_one_method_apart(tmp_path):
    """Group folders named other than their method (online-2steps, online-9steps) are two lines, not one pool."""
    folders = []
    for name, method in (("steer-heal", "steer-heal"), ("online-2steps", "online"), ("online-9steps", "online")):
        for s in (0, 1):
            make_method_run(tmp_path / name / f"seed{s}", method, seed=s)
        folders.append(str(tmp_path / name))
    groups = plot.groups_of(folders)
    assert [(label.split()[0], len(runs)) for label, runs, _ in groups] == [
        ("steer-heal", 2), ("online-2steps", 2), ("online-9steps", 2)]
    assert len({c for _, _, c in groups}) == 3

def test_q0_needs_a_dose_effect_beyond_noise():
    lo, hi = {"dose": 0.0, "n": 8, "kept": 6}, {"dose": 0.4, "n": 32, "kept": 21}  # 0.75 -> 0.66: noise
    assert not report.kept_falls(lo, hi)
    assert report.kept_falls({"n": 20, "kept": 20}, {"n": 20, "kept": 8})  # 1.0 -> 0.4: a real drop
    assert not report.kept_falls({"n": 20, "kept": 8}, {"n": 20, "kept": 20})  # a rise is not a drop
    flat = [{"dose": d, "ppl_tail": p} for d in (0.0, 0.9) for p in (10.0, 14.0, 12.0, 11.0)]
    assert not report.ppl_rises(flat, 0.0, 0.9)
    rising = [{"dose": 0.0, "ppl_tail": p} for p in (10.0, 14.0, 12.0, 11.0)] + \
             [{"dose": 0.9, "ppl_tail": p} for p in (60.0, 90.0, 70.0, 80.0)]
    assert report.ppl_rises(rising, 0.0, 0.9) and not report.ppl_rises(rising, 0.9, 0.0)


def test_plot_without_tinymfv_draws_the_personas_first_two_readers_in_a_and_c(tmp_path, monkeypatch):
    """A run that skips tinymfv (the love persona's default) has no map and no foundations: panel A draws its first
    reader over rounds and panel C its second, with their values by round (base at -1)."""
    trait = {-1: 0.5, 0: 0.9, 1: 1.4, 2: 1.8}

    def love(ln):
        for k in ("auth_nats", "care_nats", "nats", "p", "eval_ci", "top1"):
            ln.pop(k, None)
        if ln["kind"] in ("base", "round"):
            ln.update(ppl_base=7.5, sentiment=0.1 + 0.1 * (ln["round"] + 1), trait_fixed=trait[ln["round"]])
    d = patch_run(make_run(tmp_path / "love"), love)
    c = json.load(open(os.path.join(d, "config.json")))
    c["config"].update(persona="love", readers=["sentiment:+", "trait_fixed:+"])
    json.dump(c, open(os.path.join(d, "config.json"), "w"))
    figs = []
    monkeypatch.setattr(plot.plt, "close", figs.append)
    plot.plot_runs([d], None)
    a, _, panel_c, _, _ = figs[-1].axes  # A, B, C, D, and B's twin axis
    assert a.get_title().startswith("A. sentiment") and panel_c.get_title().startswith("C. trait_fixed")
    xs, ys = panel_c.lines[0].get_data()
    assert list(xs) == list(trait) and list(ys) == list(trait.values())

