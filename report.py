"""report.py: results/<run_or_group> -> report.md (Q0-Q3 + the prompting comparison). CLI: python report.py DIR...

Runs of different --method compared: report_methods.py (it imports this file).

Reads only what a run wrote (config.json, rounds.jsonl, completions_r0.jsonl; docs/CONTRACT.md), so it works
on a run in progress and needs no model; stdlib only (and lib/runio.py, lib/evidence.py), as steer_heal.py imports it
after every run. A line it cannot read is named at the top of report.md, never skipped in silence. Each section
is one verdict line (yes / no / unclear / not measurable / not measured in this run, with the numbers that decide
it), then its tables. What a line says and how sure (reading the files, old field names, noise intervals, chance,
the direction rule): lib/evidence.py; this file holds the checks that read it (Q0-Q3, vs prompting) and the report.
"""
import argparse
import dataclasses
import json
import math
import os
from lib import runio  # the project's file reader: stdlib only, like this file; each unreadable line named
import statistics
import sys

from lib.readers import COHERENCE, READERS, TRAIT  # the one readers table (lib/readers.py is stdlib-only at import)
from lib.evidence import (YES, at_chance, base_of, ceiling, cell, chance, ci_of, decide, delta, evaluated, fiv, fmt, get, has,
                      last_of, mean, method_of, no_noise, pair, read_jsonl, read_run, readers_of, readers_text,
                      round_at, seed_dirs, side, unreadable)

MIN_KEPT = 8        # fewer survivors than this in a round is too little to heal on
PPL_TOL = 1.25      # healed round-0 ppl_base may be 25% above the base line's (same prompts, both greedy)
RETAIN = 0.5        # the healed model must keep half of steering's trait shift to count as carried
SHOWN = TRAIT  # every trait reader (readers.READERS)
LABEL = type("Labels", (dict,), {"__missing__": lambda self, k: f"Δ{k}"})(
    {k: r["label"] for k, r in READERS.items()})  # a copy's reader without a READERS row reads as Δ<key>
TOPIC_AUC_MIN = 0.75  # on_topic decides only where answers are told from answers to other prompts this well (base line)
# --method of steer_heal.py (config.json `method`; older runs lack it: steer-heal). What each one's lines are:
METHODS = {"steer-heal": "the iterative loop: steer, filter, heal, bake, once per round",
           "prompt-bake": "prompt baking (Bhargava et al. 2024): the persona-prompted model is the teacher, distilled "
                          "by KL into a LoRA once per round; its `steered` lines are the teacher, not a vector",
           "online": "on-policy policy gradient per batch (GRPO-style): the unsteered student samples, reward = "
                     "its trait on the round's vector (read by the round's frozen starting model) minus incoherence; "
                     "a round is --online-steps optimizer steps"}
SECTIONS = ["Q0 can we filter?", "Q1 can we heal?", "Q2 coherent over the loop?",
            "Q3 does the trait keep moving?", "vs prompting baseline"]
MEASURED = ("yes", "no", "unclear", "keeps moving", "moved, then stopped")  # the words of a reader that can be read


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]


def methods_of(runs):
    """The methods of these runs, in first-seen order, as one string ("prompt-bake", or "a, b" if mixed)."""
    return ", ".join(dict.fromkeys(map(method_of, runs)))


def ref_word(runs):
    """What the `steered` reference line is for these runs: the teacher for prompt baking, else steering."""
    return "the teacher" if methods_of(runs) == "prompt-bake" else "steering"


def yesno(line):
    """The yes/no persona form's reading, flagged when its answers are constant (then it is at chance)."""
    v = get(line, "persona_yesno")
    if v is None:
        return None
    return (f"{fmt(v, 3)} (constant answer: at chance)" if line.get("persona_yesno_constant") is True else
            f"{fmt(v, 3)} (match {fmt(get(line, 'persona_yesno_match'), 3)})")


def combine(runs, one):
    """A group verdict from per-seed checks that have no cross-seed noise to use (Q0, Q2)."""
    res = [one(r) for r in runs]
    if len(res) == 1:
        return res[0]
    words = [x[0] for x in res]
    word = words[0] if len(set(words)) == 1 else "no" if "no" in words else "unclear"
    why = "; ".join(f"{r['name']}: {w}" for r, w in zip(runs, words)) + " (seeds disagree)" * (len(set(words)) > 1)
    key = next((x[3][0][0] for x in res if x[3]), None)  # each check puts its deciding number first
    vals = [dict(x[3]).get(key) for x in res]
    return word, why + (f"; {key} {' / '.join(fmt(v) for v in vals)}" if key else ""), [], []


# ---- the checks: each takes the runs (one, or a group's seeds) and returns (word, reason, body lines,
# [(name, value)] per-seed numbers for the group table)
def kept_falls(lo, hi):
    """The kept fraction at the top dose is below the lowest dose's by more than 2 binomial standard errors
    (a drop of 0.75 -> 0.66 over 8 and 32 completions is noise, not a filter that tracks dose)."""
    (n0, k0), (n1, k1) = (get(lo, "n"), get(lo, "kept")), (get(hi, "n"), get(hi, "kept"))
    if None in (n0, k0, n1, k1) or not n0 or not n1:
        return False
    p0, p1 = (k0 + 1) / (n0 + 2), (k1 + 1) / (n1 + 2)  # smoothed for the variance: 20/20 is not certainty
    return k0 / n0 - k1 / n1 > 2 * math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)


def ppl_rises(comps, d_lo, d_hi):
    """Mean log tail ppl of round 0's completions at the top dose exceeds the lowest dose's by > 2 standard errors."""
    xs = [[math.log(get(c, "ppl_tail")) for c in comps if get(c, "dose") == d and (get(c, "ppl_tail") or 0) > 0
           and math.isfinite(get(c, "ppl_tail"))] for d in (d_lo, d_hi)]
    if min(map(len, xs)) < 2:
        return False
    se = math.sqrt(sum(statistics.variance(x) / len(x) for x in xs))
    return statistics.fmean(xs[1]) - statistics.fmean(xs[0]) > 2 * se


def q0_one(run):
    rows = [[r["round"], get(d, "dose"), get(d, "n"), get(d, "kept"), get(d, "kept_frac"), get(d, "ppl_tail"),
             get(d, "rep"), get(d, "topic"), " ".join(f"{k}:{v}" for k, v in (d.get("dropped_by") or {}).items() if v)
             or "—"] for r in run["rounds"] for d in (r.get("dose_table") or []) if isinstance(d, dict)]
    body = table(["round", "dose", "n", "kept", "kept frac", "ppl tail", "rep", "on topic", "dropped by"], rows)
    r0 = (run["rounds"] or [{}])[0]
    # the borderline pair of round 0: the kept one with the highest tail ppl, the ppl-dropped one with the lowest
    comps = [c for c in read_jsonl(os.path.join(run["dir"], "completions_r0.jsonl")) if get(c, "ppl_tail")]
    comps_all = comps
    comps = [c for c in comps if (get(c, "dose") or 0) > 0] or comps  # steered ones; dose 0 is the reference
    body += ["", f"Borderline examples (round 0, ppl gate {fmt(get(r0, 'ppl_gate'))}):"]
    for label, pool, pick in [("just kept", [c for c in comps if c.get("kept") is True], max),
                              ("just dropped (ppl)", [c for c in comps if c.get("why_dropped") == "ppl"], min)]:
        c = pick(pool, key=lambda c: get(c, "ppl_tail")) if pool else {}
        text = " ".join(str(c.get("text", "")).split())  # one line, so it stays inside the quote
        body.append(f"- {label}: ppl_tail {fmt(get(c, 'ppl_tail'))}, dose {fmt(get(c, 'dose'))}\n  > {text[:300]}"
                    + "…" * (len(text) > 300) if c else f"- {label}: none in completions_r0.jsonl")
    dt = sorted((d for d in r0.get("dose_table") or [] if get(d, "n")), key=lambda d: get(d, "dose") or 0)
    if not dt:
        return "not measured in this run", "no dose_table in rounds.jsonl", body, []
    kept = [get(r, "kept") for r in run["rounds"] if get(r, "kept") is not None]
    gen0, kept0, lo, hi = get(r0, "generated"), get(r0, "kept"), dt[0], dt[-1]
    kf, pp = (get(lo, "kept_frac"), get(hi, "kept_frac")), (get(lo, "ppl_tail"), get(hi, "ppl_tail"))
    nums = [("kept frac r0", kept0 / gen0 if kept0 is not None and gen0 else None), ("min kept/round", min(kept)
            if kept else None), ("kept frac at top dose", kf[1]), ("tail ppl at top dose", pp[1])]
    why = (f"round 0 dose {fmt(get(lo, 'dose'))}→{fmt(get(hi, 'dose'))}: kept frac {fmt(kf[0])}→{fmt(kf[1])}, "
           f"tail ppl {fmt(pp[0])}→{fmt(pp[1])}; kept {fmt(kept0)}/{fmt(gen0)} in round 0, "
           f"min {fmt(nums[1][1])} per round (need ≥{MIN_KEPT})")
    tracks = kept_falls(lo, hi) or ppl_rises(comps_all, get(lo, "dose"), get(hi, "dose"))
    word, note = (("no", "") if kept and min(kept) < MIN_KEPT else ("unclear", "; one dose only") if len(dt) < 2
                  else ("yes", "") if tracks else
                  ("unclear", "; neither the kept fraction nor the tail ppl changes with dose beyond 2 standard errors"))
    return word, why + note, body, nums


def q0_filter(runs):
    return combine(runs, q0_one)


def retention(runs, key, sgn, r0):
    """One reader's answer to "does the healed model keep steering's shift?": (key, word, text, readable), or None if
    the reader is absent. The ratio healed Δ / steering Δ only means something when steering moved."""
    if not has(runs, [base_of, lambda r: r["steer_ref"], r0], key):
        return None
    s, h = delta(runs, lambda r: r["steer_ref"], base_of, key), delta(runs, r0, base_of, key)
    ref = ref_word(runs)
    nums = f"{ref.split()[-1]} {LABEL[key]} {fiv(s)}, healed {fiv(h)}"
    if (no := unreadable(runs, key, nums)):
        return no
    if side(s, sgn) is None:
        return key, "not measurable", f"{no_noise(runs, key)}; {nums}", False
    if side(s, sgn) < 1:  # read, and what it reads is that steering did not move: this decides
        return key, "not measurable", (f"{ref}'s shift is {'within noise' if side(s, sgn) == 0 else 'the wrong way'}"
                                       f", so there is nothing to retain; {nums}"), True
    ratio = h[0] / s[0]
    word = "no" if ratio < RETAIN else "yes" if side(h, sgn) == 1 else "unclear"
    return key, word, (f"retained {fmt(ratio, 3)} (need ≥{RETAIN}"
                       + (", and the healed Δ outside noise" if word == "unclear" else "") + f"); {nums}"), True


def topic_margin(runs):
    """(margin, why) for on_topic: TOPIC margin x the base line's gap between answers to their own prompt and to other
    prompts (what an answer to another question reads), or (None, why it cannot decide)."""
    b = [r["base"] or {} for r in runs]
    auc, own, other = ([get(x, k) for x in b] for k in ("on_topic_auc", "on_topic", "on_topic_other"))
    if None in auc + own + other:
        return None, "on_topic not measured in this run"
    if min(auc) < TOPIC_AUC_MIN:
        return None, (f"on_topic not measurable: on the base line an answer is nearer its own prompt than another's "
                      f"with AUC {fmt(min(auc), 3)} < {TOPIC_AUC_MIN} (chance 0.5)")
    gap = mean([o - x for o, x in zip(own, other)])
    return READERS["on_topic"]["margin"] * gap, (f"validity AUC {fmt(min(auc), 3)} (chance 0.5); margin "
                                                 f"{READERS['on_topic']['margin']:g} × the base's own−other gap {fmt(gap, 3)}")


def coherent(runs, pick, ppl_tol):
    """Each coherence reader's answer to "are `pick`'s greedy answers as coherent as the base model's?", as
    [(key, word, text)]: ppl_base as a ratio to base (≤ ppl_tol, worst seed); degenerate and on_topic as paired
    changes vs base with their noise (evidence.delta), 'yes' when the whole interval is within the reader's margin
    (readers.READERS), 'no' when all of it is past the margin, else 'unclear'. A reader the run lacks is left out."""
    out = []
    ratios = [get(pick(r), "ppl_base") / get(r["base"], "ppl_base") for r in runs
              if pick(r) and get(pick(r), "ppl_base") and get(r["base"], "ppl_base")]
    if ratios:
        w = max(ratios)
        out.append(("ppl_base", "yes" if w <= ppl_tol else "no", f"×{fmt(w, 3)} of base (≤ ×{fmt(ppl_tol)}"
                    + ", worst seed" * (len(runs) > 1) + ")"))
    for key in (k for k in COHERENCE if k != "ppl_base"):
        iv = delta(runs, pick, base_of, key) if has(runs, [pick, base_of], key) else None
        if iv is None:
            continue
        m, why = topic_margin(runs) if key == "on_topic" else (READERS[key]["margin"], f"margin {READERS[key]['margin']:g}")
        if m is None:
            out.append((key, "not measurable", f"{LABEL[key]} {fiv(iv)}; {why}"))
            continue
        w = READERS[key]["worse"]
        lo, hi = sorted((w * iv[1], w * iv[2])) if iv[1] is not None else (None, None)
        word = "unclear" if lo is None else "yes" if hi <= m else "no" if lo > m else "unclear"
        out.append((key, word, f"{LABEL[key]} {fiv(iv)} (worse is {'up' if w > 0 else 'down'}; tolerated "
                               f"{'+' if w > 0 else '−'}{fmt(m, 3)}: {why})"))
    return out


def coherence_word(res):
    """One word from coherent()'s readers: no if any says no (naming it), yes if every measured one says yes."""
    words = [w for _, w, _ in res if w != "not measurable"]
    return "no" if "no" in words else "yes" if words and all(w == "yes" for w in words) else "unclear"


def coherence_text(res):
    bad = [k for k, w, _ in res if w == "no"]
    return (f"NOT coherent by {', '.join(bad)}" if bad else "") + ("; " if bad else "") + "; ".join(
        f"{k}: {w} — {t}" for k, w, t in res)


def q1_heal(runs):
    r0, steer = round_at(0), lambda r: r["steer_ref"]
    steer_name = ("teacher r0 (persona as system prompt)" if ref_word(runs) == "the teacher" else
                  "steered r0 (steering only)")
    lines = [("base", base_of), (steer_name, steer), ("healed round 0", r0),
             ("λ=0 round 0", lambda r: r["lam0"])]
    cols = ["sentiment", "probe_defer", "persona_gap", "trait_fixed", "auth_nats", "care_nats", "ppl_base", "degenerate",
            "on_topic", "kl_base", "answer_mass", "rep", "trait_self"]
    body = table(["line"] + cols, [[name] + [cell(runs, pick, k) for k in cols] for name, pick in lines
                                   if any(pick(r) for r in runs)])
    # context only: the survivors were SAMPLED under steering, the healed answers are greedy, and the prompts
    # are the training prompts (not held out), so this pair is shown but decides nothing
    body += ["", "Round 0 on the survivors' training prompts (sampled steered survivors vs the healed model's "
                 "greedy answers; not held out, so context only, not part of the verdict):", ""]
    body += table(["round 0, training prompts", "ppl_base", "rep", "trait_fixed"],
                  [["raw steered survivors"] + [cell(runs, r0, k) for k in ("raw_ppl_base", "raw_rep",
                                                                            "raw_trait_fixed")],
                   ["healed model (greedy)"] + [cell(runs, r0, k) for k in ("train_ppl_base", "train_rep",
                                                                            "train_trait_fixed")]])
    lam0 = lambda r: r["lam0"]
    if any(lam0(r) for r in runs):
        rows = [[k, cell(runs, lam0, k), cell(runs, r0, k), fiv(delta(runs, lam0, r0, k))]
                for k in [k for k, _ in readers_of(runs)] + ["ppl_base"] if has(runs, [lam0, r0], k)]
        body += ["", "What the barrier removed (λ=0 round 0 minus round 0 with the barrier; persona direction: "
                     "gap and trait_fixed up, auth_nats down):", ""]
        body += table(["reader", "λ=0", "barrier", "λ=0 − barrier"], rows)
        body.append(f"\nheal kl_agg {fmt(get(lam0(runs[0]), 'heal', 'kl_agg'))} at λ=0 vs "
                    f"{fmt(get(r0(runs[0]), 'heal', 'kl_agg'))} with the barrier")
    else:
        body.append("\nλ=0 ablation: not run; rerun with --ablate-lam0")
    if not any(r0(r) for r in runs):
        return "not measured in this run", "no round line yet", body, []
    # fluency, like with like: greedy answers to the same held-out prompts, healed round 0 vs the base line, read by
    # every coherence reader (ppl_base alone calls a loop fluent: a loop is more probable under the base model)
    ratios = [x for x in (get(r0(r), "ppl_base") / get(r["base"], "ppl_base") if r0(r) and get(r0(r), "ppl_base")
                          and get(r["base"], "ppl_base") else None for r in runs) if x is not None]
    worst = max(ratios) if ratios else None
    coh = coherent(runs, r0, PPL_TOL)
    cw = coherence_word(coh) if coh else None
    fluent = None if cw is None or cw == "unclear" else cw == "yes"
    res = [x for x in (retention(runs, k, s, r0) for k, s in readers_of(runs)) if x]
    ret = decide(res)
    nums = [("healed/base ppl_base", worst), ("base ppl_base", get(runs[0]["base"], "ppl_base")),
            ("healed ppl_base", get(r0(runs[0]), "ppl_base"))]
    for k, s in readers_of(runs):
        sh, hh = delta(runs, steer, base_of, k), delta(runs, r0, base_of, k)
        if sh and hh:
            nums += [(f"{LABEL[k]} steering", sh[0]), (f"{LABEL[k]} healed", hh[0])]
    flu = ("ppl_base missing on the base or round-0 line" if cw is None else
           ("fluent" if fluent else "NOT fluent" if fluent is False else "unclear") + " (healed round 0 vs base, greedy "
           "answers to the same held-out prompts; fluent needs every coherence reader within its margin): "
           + coherence_text(coh))
    why = f"fluency: {flu}. Retention: {ret}" + (f" — {readers_text(res)}" if res else " — no trait reader")
    word = ("no" if fluent is False or ret == "no" else "unclear" if fluent is None else
            "yes" if ret == "yes" else "not measurable" if ret in ("not measurable", "not measured in this run")
            else "unclear")
    return word, why, body, nums


def q2_one(run):
    base, (cmult, ceil) = run["base"], ceiling(run)
    rows = [["base", get(base, "ppl_base"), 1.0 if get(base, "ppl_base") else None, get(base, "degenerate"),
             get(base, "on_topic"), get(base, "kl_base"), get(base, "answer_mass"), get(base, "rep")] + [None] * 4]
    rows += [[r["round"], get(r, "ppl_base"), get(r, "ppl_base") / get(base, "ppl_base")
              if None not in (get(r, "ppl_base"), get(base, "ppl_base")) else None, get(r, "degenerate"),
              get(r, "on_topic"), get(r, "kl_base"), get(r, "answer_mass"), get(r, "rep"),
              get(r, "kept") / get(r, "generated") if get(r, "kept") is not None and get(r, "generated") else None,
              get(r, "heal", "kl_agg"), (r.get("heal") or {}).get("barrier_active"), r.get("status")]
             for r in run["rounds"]]
    body = [f"ceiling = ppl_ceil {fmt(cmult)}" + " (default; not in config)" * (get(run["cfg"], "ppl_ceil") is None)
            + f" × base ppl_base {fmt(get(base, 'ppl_base'))} = {fmt(ceil)}. ppl_base: perplexity under the base "
            "model of each line's greedy answers to the held-out prompts. answer_mass (probability on the seven "
            "answer digits; older runs call it coherence) is shown but decides nothing: steering raises it. "
            "Coherent over the loop = every round under the ceiling AND its degenerate share and on_topic within their "
            "margins vs base (as Q1's fluency); kl_base (mean per-token KL to the base model over the answers) is a "
            "cost, shown.", ""]
    body += table(["round", "ppl_base", "× base", "degenerate", "on_topic", "kl_base", "answer_mass", "rep",
                   "kept frac", "kl_agg", "barrier", "status"], rows)
    stop = f"; loop stopped early: {run['stop'].get('reason')}" if run["stop"] else ""
    ppl = [(r["round"], get(r, "ppl_base")) for r in run["rounds"] if get(r, "ppl_base") is not None]
    if not ppl:
        return "not measured in this run", "no round with ppl_base yet" + stop, body, []
    worst = max(ppl, key=lambda c: c[1])
    nums = [("max ppl_base", worst[1]), ("ceiling", ceil), ("last ppl_base", ppl[-1][1]),
            ("min answer_mass", min((get(r, "answer_mass") for r in run["rounds"]
                                     if get(r, "answer_mass") is not None), default=None))]
    over = [c for c in ppl if ceil is not None and c[1] > ceil]
    word, why = (("unclear", f"no ceiling (base ppl_base missing); max ppl_base {fmt(worst[1])}") if ceil is None else
                 ("no", f"round {over[0][0]} ppl_base {fmt(over[0][1])} > ceiling {fmt(ceil)} "
                        f"(ppl_ceil {fmt(cmult)} × base {fmt(get(base, 'ppl_base'))})") if over else
                 ("yes", f"max ppl_base {fmt(worst[1])} (round {worst[0]}) ≤ ceiling {fmt(ceil)} "
                         f"(ppl_ceil {fmt(cmult)} × base {fmt(get(base, 'ppl_base'))}) over {len(ppl)} rounds"))
    # the text readers of coherence, every round (the ceiling is ppl_base's; theirs are their margins)
    per = [(r["round"], [x for x in coherent([run], round_at(r["round"]), cmult) if x[0] != "ppl_base"])
           for r in evaluated(run)]
    per = [(k, res) for k, res in per if res]
    bad = [(k, res) for k, res in per if coherence_word(res) == "no"]
    if per:
        short = [(k, res) for k, res in per if coherence_word(res) != "yes"]  # the rounds the word comes from
        why += "; " + "; ".join(f"round {k}: {coherence_text(res)}" for k, res in (bad or short or per[-1:]))
        words = [coherence_word(res) for _, res in per]
        word = "no" if bad else word if word != "yes" else "yes" if all(w == "yes" for w in words) else "unclear"
    return word, why + stop, body, nums


def q2_coherent(runs):
    return combine(runs, q2_one)


def trajectory(runs, key, sgn):
    """One reader's answer to "does the trait keep moving?": (key, word, text, readable), or None if absent."""
    ks = sorted(set.intersection(*({r["round"] for r in run["rounds"] if get(r, key) is not None} for run in runs)))
    # a round past the ppl ceiling is no evidence of the trait moving (as for the prompting comparison)
    over = [k for k in ks if any(None not in (ceiling(run)[1], get(round_at(k)(run), "ppl_base"))
                                 and get(round_at(k)(run), "ppl_base") > ceiling(run)[1] for run in runs)]
    ks = [k for k in ks if k not in over]
    if not ks or not has(runs, [base_of], key):
        return None
    pts = [base_of] + [round_at(k) for k in ks]
    final = delta(runs, pts[-1], base_of, key)
    steps = [delta(runs, b, a, key) for a, b in zip(pts, pts[1:])]
    sides = [side(s, sgn) for s in steps]
    i = len(steps)
    while i > 0 and sides[i - 1] != 1:
        i -= 1  # walk back over the trailing steps that do not move the persona's way beyond their noise
    sat = ("steps have no interval" if None in sides else "still moving at the last round" if i == len(steps) else
           f"saturates after round {ks[i - 1]}" if i else "no single step exceeds noise")
    text = (f"{LABEL[key]} {fiv(final)} after round {ks[-1]}; steps "
            + ", ".join(f"{fmt(s[0], 2)}" + (f"±{fmt((s[2] - s[1]) / 2, 2)}" if s[1] is not None else "")
                        for s in steps) + f"; {sat}"
            + (f" (round {', '.join(map(str, over))} past the ppl ceiling: not counted)" if over else ""))
    at = at_chance(runs, key)
    fs = side(final, sgn)
    # three answers: the last round's step beyond noise the persona's way (keeps moving); beyond noise overall but
    # the last step within noise or back (moved, then stopped); not beyond noise overall (no)
    word, note = (("not measurable", f" ({at[1]})") if at[0] else
                  ("not measurable", f" ({no_noise(runs, key)})") if fs is None else
                  ("no", " — inside the noise") if fs == 0 else ("no", " — moved the wrong way") if fs < 0 else
                  ("unclear", " — one round only: moved, but whether it keeps moving needs a second") if len(ks) < 2 else
                  ("keeps moving", " — the last round's step is beyond noise"
                   + (" (not monotone: an earlier step goes back beyond noise)" if -1 in sides else "")) if sides[-1] == 1
                  else ("moved, then stopped", " — the last round's step is "
                        + ("back beyond noise" if sides[-1] == -1 else "within noise")))
    return key, word, text + note, word in MEASURED


def q3_trait(runs):
    group = len(runs) > 1
    ks = sorted({r["round"] for run in runs for r in evaluated(run)})
    picks = [("base", base_of)] + [(k, round_at(k)) for k in ks]
    pci = lambda p, k: None if group else pair((p(runs[0]) or {}).get(f"{k}_ci"))
    rows = [[name] + [cell(runs, p, "sentiment"), pci(p, "sentiment"), cell(runs, p, "probe_defer"), pci(p, "probe_defer"),
                      cell(runs, p, "auth_nats"), None if group else ci_of(p(runs[0]), "auth_nats"),
                      cell(runs, p, "care_nats"), cell(runs, p, "persona_gap"),
                      None if group else pair((p(runs[0]) or {}).get("persona_gap_ci")),
                      cell(runs, p, "trait_fixed"), cell(runs, p, "trait_self"),
                      " / ".join(fmt(yesno(p(r))) for r in runs if p(r) and yesno(p(r))) or None]
            for name, p in picks if any(p(r) for r in runs)]
    body = table(["round", "sentiment", "CI (Δ vs base)", "probe_defer", "CI (Δ vs base)", "auth_nats", "auth CI",
                  "care_nats", "persona_gap", "gap CI (Δ vs base)", "trait_fixed", "trait_self", "yes/no (log-odds)"], rows)
    body += ["", "Directions: " + ", ".join(f"{k} {'↑' if s > 0 else '↓'}" for k, s in readers_of(runs))
             + " (this persona's readers). trait_self moves with the weights as well as the text, so it decides nothing."
             + (" Group cells: mean [min, max] over seeds." if group else "")]
    if any((p(r) or {}).get("persona_yesno_constant") is True for _, p in picks for r in runs):
        body.append("The yes/no persona form is at chance on the lines marked 'constant answer' (≥95% the same "
                    "word): its mean there says nothing.")
    nums = [(f"{LABEL[k]} final", (delta(runs, last_of, base_of, k) or [None])[0]) for k in SHOWN
            if has(runs, [base_of], k)]
    nums += [("rounds", len(evaluated(runs[0])))]
    res = [x for x in (trajectory(runs, k, s) for k, s in readers_of(runs)) if x]
    if runs[0]["base"] is None or not evaluated(runs[0]):
        return "not measured in this run", "needs the base line and ≥1 evaluated round", body, []
    dc = delta(runs, last_of, base_of, "care_nats")
    return decide(res), readers_text(res) + f"; Δcare {fiv(dc)}", body, nums


def vs_reader(runs, key, sgn):
    """One reader's answer to "does the loop beat prompting?": the loop must move the persona's way beyond noise
    AND beyond prompting's move by more than the noise of that difference."""
    pr = lambda r: r["prompting"]
    if not has(runs, [base_of, pr, last_of], key):
        return None
    L, P, D = delta(runs, last_of, base_of, key), delta(runs, pr, base_of, key), delta(runs, last_of, pr, key)
    text = f"loop {LABEL[key]} {fiv(L)} vs prompting {fiv(P)}; loop − prompting {fiv(D)}"
    if (no := unreadable(runs, key, text)):
        return no
    sl, sd = side(L, sgn), side(D, sgn)
    if None in (sl, sd):
        return key, "not measurable", f"{no_noise(runs, key)}; {text}", False
    word, note = (("no", "the loop did not move beyond noise") if sl == 0 else
                  ("no", "the loop moved the wrong way") if sl < 0 else ("no", "prompting is ahead") if sd < 0 else
                  ("unclear", "a tie with prompting within noise") if sd == 0 else ("yes", "the loop beats both"))
    return key, word, f"{text} — {note}", True


def vs_prompting(runs):
    group, pr = len(runs) > 1, lambda r: r["prompting"]
    lines = [("base", base_of), ("prompting", pr), ("healed, last round", last_of)]
    cols = ["sentiment", "probe_defer", "auth_nats", "care_nats", "persona_gap", "trait_fixed", "ppl_base", "degenerate",
            "on_topic", "kl_base"]
    body = table(["line"] + cols, [[name] + [cell(runs, p, k) for k in cols] for name, p in lines
                                   if any(p(r) for r in runs)])
    body += ["", "Δ vs base (this persona's directions: " + ", ".join(f"{k} {'↑' if s > 0 else '↓'}" for k, s in readers_of(runs)) + ")"
             + (", noise: the seeds' spread or the bootstrap, whichever is larger" if group else "") + ":", ""]
    body += table(["reader", "loop", "prompting", "loop − prompting"],
                  [[k, fiv(delta(runs, last_of, base_of, k)), fiv(delta(runs, pr, base_of, k)),
                    fiv(delta(runs, last_of, pr, k))] for k in SHOWN
                   if has(runs, [base_of, pr, last_of], k)])
    if any(None in (r["base"], r["prompting"], last_of(r)) for r in runs):
        return "not measured in this run", "needs base, prompting and an evaluated round", body, []
    nums = [(f"{LABEL[k]} {who}", (delta(runs, p, base_of, k) or [None])[0]) for k, _ in readers_of(runs)
            for who, p in (("loop", last_of), ("prompting", pr)) if has(runs, [base_of, p], k)]
    nums += [("ppl_base loop", get(last_of(runs[0]), "ppl_base")), ("ppl_base prompting",
                                                                   get(runs[0]["prompting"], "ppl_base"))]
    res = [x for x in (vs_reader(runs, k, s) for k, s in readers_of(runs)) if x]
    # a loop past the coherence ceiling does not win whatever its trait says
    over = [r["name"] for r in runs if None not in (ceiling(r)[1], get(last_of(r), "ppl_base"))
            and get(last_of(r), "ppl_base") > ceiling(r)[1]]
    # nor does one whose answers loop or stopped answering the question, whatever its trait says
    coh = [x for x in coherent(runs, last_of, ceiling(runs[0])[0]) if x[0] != "ppl_base"]
    broken = [k for k, w, _ in coh if w == "no"]
    word = "no" if over or broken else decide(res)
    return word, readers_text(res) + (f" — the loop's last round is past the ppl ceiling ({', '.join(over)})"
                                      if over else "") + (f" — the loop's last round is not coherent: "
                                                          f"{coherence_text(coh)}" if broken else ""), body, nums


CHECKS = [q0_filter, q1_heal, q2_coherent, q3_trait, vs_prompting]


def generator(cfg):
    on = [f"length decay p={cfg.get('steer_decay')} T={cfg.get('steer_decay_t')}"] * bool(cfg.get("steer_decay")) + \
         [f"backtrack (window {cfg.get('backtrack_window')}, scale {cfg.get('backtrack_scale')})"] * bool(cfg.get("backtrack")) + \
         ["cosine gate"] * bool(cfg.get("cosine_gate"))
    return " + ".join(on) or "constant dose"


def header(runs, title):
    r, cfg = runs[0], runs[0]["cfg"]
    ev = next((ln for ln in [r["base"]] + r["rounds"] if ln and ln.get("eval_backend")), {})
    cmult = ceiling(r)[0]
    yn = [x["name"] for x in runs if (x["base"] or {}).get("persona_yesno_constant") is True]
    method = methods_of(runs)
    return [f"# {method} report: {title}", "",
            f"- method: {method}: " + "; ".join(METHODS.get(m, "(not a method this report knows)")
                                                for m in method.split(", ")),
            f"- model: {cfg.get('model') or 'embedded SmolLM2-135M-Instruct'}",
            f"- persona {cfg.get('persona')}: + \"{cfg.get('pos')}\" / − {cfg.get('neg') or '(default prompt)'}",
            f"- seed(s): {', '.join(str((x['base'] or {}).get('seed', x['cfg'].get('seed', '—'))) for x in runs)}; "
            f"rounds completed: {', '.join(str(len(evaluated(x))) for x in runs)}"
            + "".join(f" ({x['name']} stopped: {x['stop'].get('reason')})" for x in runs if x["stop"]),
            f"- eval: {ev.get('eval_backend')}, frames {ev.get('eval_frames')}, n {ev.get('eval_n')}",
            f"- generator: {generator(cfg)}; doses kappa x {cfg.get('alphas')}; heal: lam {cfg.get('lam')}, "
            f"tau {cfg.get('tau')}, KL {cfg.get('kl_dir')}/{cfg.get('kl_agg')}/ref {cfg.get('kl_ref')}",
            "- command: `python " + (" ".join(map(str, r["argv"])) if isinstance(r["argv"], list)
                                      else str(r["argv"] or "—")) + "`",
            ("- noise: " + (f"{len(runs)} seeds: a change counts only beyond the larger of the seeds' min–max "
                            "spread and the bootstrap" if len(runs) > 1 else
                            "single seed: each reader's own paired bootstrap (the per-prompt readers by "
                            "prompt, persona_gap by statement, tinymfv by vignette; lines from before per-prompt "
                            "readings: trait_fixed has none)")),
            f"- tinymfv reader (auth_nats): {chance(runs)[1]}"
            + "; verdicts resting on it alone are not measurable" * bool(chance(runs)[0]),
            *validity(runs),
            *(["- re-read: the text readers' numbers come from reread.jsonl (report.py --reread: the stored answers "
               "read again, no model), over the stored lines'"] * any(r.get("reread") for r in runs)),
            "- yes/no persona form: " + (f"at chance on the base line (a constant answer in: {', '.join(yn)})" if yn else
                                          "not at chance on the base line" if any(get(x["base"], "persona_yesno")
                                                                                   is not None for x in runs)
                                          else "not in this run"),
            f"- fluency (Q1): healed round 0 vs base, every coherence reader: ppl_base ≤ {PPL_TOL} × base, the "
            f"degenerate share up by less than {READERS['degenerate']['margin']:g}, on_topic down by less than "
            f"{READERS['on_topic']['margin']:g} × the base's own−other gap, each with its paired noise; coherence (Q2): "
            f"every round's ppl_base ≤ ppl_ceil {fmt(cmult)} × base and the same two margins"
            + " (ppl_ceil not in config: default)" * (get(cfg, "ppl_ceil") is None) + "; " + topic_margin(runs)[1],
            ""]


def validity(runs):
    """The header's lines on the readers: which read this persona (in the order they may decide) and whether each
    passes its chance and direction checks here; the rest are shown and never decide."""
    mine = readers_of(runs)
    out = ["- readers of this persona, in the order they may decide (+/− = the persona's direction): "
           + ", ".join(f"{k} {'+' if s > 0 else '−'}" for k, s in mine)]
    for k, _ in mine:
        bad, why = at_chance(runs, k)
        out.append(f"  - {k}: {'NOT readable' if bad else 'readable'}: {why}")
    b = runs[0]["base"] or {}
    if get(b, "probe_defer_acc") is not None:
        out.append(f"- probe_defer validity: {fmt(get(b, 'probe_defer_acc'), 3)} k-fold accuracy on "
                   f"{fmt(get(b, 'probe_defer_n'))} persona statements (chance {fmt(get(b, 'probe_defer_chance'), 3)})")
    others = [k for k in SHOWN if k not in dict(mine) and any(get(r["base"], k) is not None for r in runs)]
    return out + [f"- shown, never decide here (they read another trait): {', '.join(others)}"] * bool(others)


def render(runs, name, group, link_from=None):
    """Per section: the verdict (for a group, from the seeds together) and its tables; for a group, also each
    number per seed with mean and min–max, and each seed's own verdict. link_from: the folder the per-seed
    report links are relative to (default: the group folder)."""
    out = header(runs, f"{name} (group of {len(runs)} seeds)" if group else name)
    link = lambda r: (os.path.relpath(os.path.join(r["dir"], "report.md"), link_from) if link_from else
                      f"{r['name']}/report.md")
    out += ["Per-seed reports: " + ", ".join(f"[{r['name']}]({link(r)})" for r in runs), ""] * group
    for title, check in zip(SECTIONS, CHECKS):
        word, why, body, _ = check(runs)
        out += [f"## {title}", "", f"**Verdict: {word}**: {why}", ""] + body + [""] * bool(body)
        if not group:
            continue
        res = [check([r]) for r in runs]
        names = list(dict.fromkeys(k for x in res for k, _ in x[3]))
        vals = {k: [dict(x[3]).get(k) for x in res] for k in names}
        ok = {k: [v for v in vs if v is not None] for k, vs in vals.items()}
        rows = [[k] + vs + ([mean(ok[k]), f"[{fmt(min(ok[k]))}, {fmt(max(ok[k]))}]"] if ok[k]
                            else [None, "—"]) for k, vs in vals.items()]
        out += table(["metric"] + [r["name"] for r in runs] + ["mean", "min–max"], rows) if rows else []
        out += ["", "Each seed alone (its own bootstrap noise only):"]
        out += [f"- {r['name']}: {x[0]}: {x[1]}" for r, x in zip(runs, res)] + [""]
    return "\n".join(out)


def write_report(run_dir):
    """Write <run_dir>/report.md (for a group folder: the aggregate, plus each seed's) and return its text."""
    seeds = seed_dirs(run_dir)
    if not seeds and not os.path.exists(os.path.join(run_dir, "rounds.jsonl")):
        raise ValueError(f"{run_dir}: not a run folder (no rounds.jsonl) and no seed<k>/ run folders in it")
    for s in seeds:  # each seed's own report too
        write_report(s)
    name = os.path.basename(os.path.normpath(run_dir))
    runs = [read_run(d) for d in seeds or [run_dir]]
    for r in runs:  # the report reads completions_r0.jsonl too (Q0)
        read_jsonl(os.path.join(r["dir"], "completions_r0.jsonl"), r["problems"])
    text = render(runs, name, bool(seeds))
    bad = [f"- {r['name'] + ': ' if seeds else ''}{p}" for r in runs for p in r["problems"]]
    if bad:  # first thing under the title: the numbers below are without these lines
        title, rest = text.split("\n", 1)
        text = "\n".join([title, "", f"**{len(bad)} problem(s) in this run's files; every number below is without "
                           "them:**", *bad, rest])
    runio.write_text(os.path.join(run_dir, "report.md"), text)
    return text


# ---- --reread: a finished run's stored answers read again by a script's text readers (no model)
def reread(run_dir, script="steer_heal.py"):
    """Every line's stored greedy answers (and its opposite's) read again by `script`'s text readers
    (text_items: sentiment, degenerate, on_topic, and any reader a copy adds there) -> <run>/reread.jsonl, one row
    per line, which the report then reads over the stored readings (evidence.read_run). Returns the rows of what
    moved: (line, reader, stored mean, re-read mean, largest per-prompt difference; None = a reader the line lacked)."""
    sh = runio.load_script(script)  # text_items(), Config and HELD_OUT; only --reread loads it (it imports torch)
    conf = json.load(open(os.path.join(run_dir, "config.json")))
    types = {f.name: f.type for f in dataclasses.fields(sh.Config)}
    cfg = sh.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in conf["config"].items() if k in types})
    users = sh.HELD_OUT[cfg.eval_prompts]
    rows, moved, prev = [], [], None
    lines = [ln for ln in runio.live_lines(runio.read_jsonl(os.path.join(run_dir, "rounds.jsonl"))[0])
             if isinstance(ln.get("answers"), list)]
    if not lines:
        raise ValueError(f"{run_dir}: no line stores its answers (runs before the coherence readers kept 6 as text, in "
                         "samples.md): rerun it to re-read it")
    base = None
    for ln in lines:
        read = lambda ans: sh.text_items(cfg, [users[a["id"]] for a in ans], [a["text"] for a in ans])
        items, validity = read(ln["answers"])
        means = {k: sum(v) / len(v) for k, v in items.items()}
        items = {k: [round(x, 4) for x in v] for k, v in items.items()}
        row = dict(kind=ln["kind"], round=ln["round"], **means, **validity, items=items)
        base = base or (items if ln["kind"] == "base" else None)
        if base and ln["kind"] != "base":
            row.update({f"{k}_ci": sh.readers.paired_ci(v, base[k]) for k, v in items.items() if k in base})
        if isinstance(ln.get("opposite_answers"), list) and ln["opposite_answers"]:
            opp = {k: [round(x, 4) for x in v] for k, v in read(ln["opposite_answers"])[0].items()}
            here = prev or base
            row["direction"] = dict(ln.get("direction") or {}, **{k: sh.readers.direction(v, opp[k], here[k])
                                                                    for k, v in items.items() if k in here})
        if ln["kind"] in ("base", "round"):
            prev = items
        for k, v in items.items():
            old = (ln.get("items") or {}).get(k)
            diff = max(abs(a - b) for a, b in zip(v, old)) if isinstance(old, list) and len(old) == len(v) else None
            moved.append((f"{ln['kind']} r{ln['round']}", k, get(ln, k), means[k], diff))
        rows.append(row)
    runio.write_text(os.path.join(run_dir, "reread.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    return moved


def main(argv=None):
    """Each folder's report.md. Exit 2 (a message, no traceback) for a folder that is not a run; methods compared:
    report_methods.py. --reread first re-reads each run's stored answers with --script's text readers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or group folders (with seed<k>/ run folders)")
    ap.add_argument("--reread", action="store_true", help="re-read every line's stored greedy answers with the "
                    "script's text readers (no model), write <run>/reread.jsonl, and say what moved")
    ap.add_argument("--script", default="steer_heal.py", help="with --reread: the experiment file whose text_items() "
                    "reads (a copy of steer_heal.py with a new text reader adds its reader to every line)")
    args = ap.parse_args(argv)
    code, good = 0, []
    for d in args.runs:
        try:
            if args.reread:
                for r in seed_dirs(d) or [d]:
                    moved = reread(r, args.script)
                    print(f"{r}: re-read {len({m[0] for m in moved})} lines with {args.script}'s text readers")
                    for line, k, old, new, diff in moved:
                        print(f"  {line:14s} {k:12s} stored {fmt(old):>8s}  re-read {fmt(new):>8s}  "
                              + ("new reader" if diff is None else f"largest per-prompt difference {diff:.2g}"))
            write_report(d)
            print(os.path.join(d, "report.md"))
            good.append(d)
        except (ValueError, runio.Stop) as e:
            print(f"report.py: {e}", file=sys.stderr)
            code = 2
        except runio.WriteFailed as e:  # a full disk: no half-written report.md
            print(f"report.py: {e}", file=sys.stderr)
            code = 4
    return code


if __name__ == "__main__":
    sys.exit(main())
