"""report.py: results/<run_or_group> -> report.md (Q0-Q3 + the prompting comparison). CLI: python report.py DIR...

Runs of different --method compared: report_methods.py (it imports this file).

Reads only what a run wrote (config.json, rounds.jsonl, completions_r0.jsonl; docs/CONTRACT.md), so it works
on a run in progress and needs no model; stdlib only (and runio.py), as steer_heal.py imports it after every run.
A line it cannot read is named at the top of report.md, never skipped in silence. Each section is one verdict
line (yes / no / unclear / not measurable / not measured in this run, with the numbers that decide it), then its
tables. Older runs are read through their old field names (OLD below).

Noise: a change counts only when it is outside its interval. One seed: the line's own bootstrap (vignettes
for auth_nats, statements for persona_gap; trait_fixed has none). A group of seeds: the larger of the seeds'
min-max spread and that bootstrap, because two seeds differ by more than the bootstrap says.
"""
import argparse
import json
import math
import os
import re
import runio  # the project's file reader: stdlib only, like this file; each unreadable line named
import statistics
import sys

from readers import paired_ci  # the one bootstrap rule (readers.py imports nothing of the project)

MIN_KEPT = 8        # fewer survivors than this in a round is too little to heal on
PPL_TOL = 1.25      # healed round-0 ppl_base may be 25% above the base line's (same prompts, both greedy)
PPL_CEIL = 2.0      # config ppl_ceil when a run lacks it: the loop is incoherent past this × base ppl_base
RETAIN = 0.5        # the healed model must keep half of steering's trait shift to count as carried
EPS = 0.01          # nats; the half-width used when a tinymfv line carries no eval_ci
N_FOUNDATIONS = 7   # 1/7 is a lower bound on top1_chance (the most common of 7 labels), for runs that lack it
# the trait readers of runs older than config `readers` (the seed persona's; the sign = its direction, less deferent)
OLD_READERS = [("persona_gap", 1), ("trait_fixed", 1), ("auth_nats", -1)]
SHOWN = ["sentiment", "probe_defer", "persona_gap", "trait_fixed", "auth_nats", "care_nats"]  # every trait reader
LABEL = {"persona_gap": "Δgap", "trait_fixed": "Δtrait_fixed", "auth_nats": "Δauth", "ppl_base": "Δppl_base",
         "sentiment": "Δsentiment", "probe_defer": "Δprobe_defer", "care_nats": "Δcare"}
PAIRED = ("sentiment", "probe_defer", "trait_fixed", "ppl_base", "persona_gap")  # lines carry <key>_ci: paired vs base
# new field name -> the name older runs wrote (docs/CONTRACT.md)
OLD = {"answer_mass": "coherence", "trait_self": "trait_proj", "train_ppl_base": "healed_ppl_base",
       "train_rep": "healed_rep"}
# --method of steer_heal.py (config.json `method`; older runs lack it: steer-heal). What each one's lines are:
METHODS = {"steer-heal": "the iterative loop: steer, filter, heal, bake, once per round",
           "prompt-bake": "prompt baking (Bhargava et al. 2024): the persona-prompted model is the teacher, distilled "
                          "by KL into a LoRA once per round; its `steered` lines are the teacher, not a vector",
           "online": "on-policy policy gradient per batch (GRPO-style): the unsteered student samples, reward = "
                     "its trait on the round's vector (read by the round's frozen starting model) minus incoherence; "
                     "a round is --online-steps optimizer steps"}
DEFAULT_METHOD = "steer-heal"
SECTIONS = ["Q0 can we filter?", "Q1 can we heal?", "Q2 coherent over the loop?",
            "Q3 does the trait keep moving?", "vs prompting baseline"]
MEASURED = ("yes", "no", "unclear")  # the words a reader gives when it can be read


def read_jsonl(path, problems=None):
    """The JSON objects of a JSONL file. Each line that is not one (torn by a crash, glued onto the next) is left
    out and, if a list is given, named in `problems` ("<file> line <n>: why"), never skipped in silence."""
    rows, bad = runio.read_jsonl(path)
    if problems is not None:
        problems += [f"{os.path.basename(path)} {b}" for b in bad]
    return rows


KINDS = {"base", "prompting", "steering_only", "steered", "round", "lam0", "stop", "resume"}  # docs/CONTRACT.md
SHAPES = {dict: ("eval_ci", "nats", "p", "heal", "dropped_by", "vector_norms", "seconds", "changed", "adapter_sha256",
                 "direction", "items", "opposite"),
          list: ("dose_table", "doses", "persona_gap_ci", "opposite_persona_gap_ci", "fingerprint", "probes",
                 *(f"{k}_ci" for k in ("sentiment", "probe_defer", "trait_fixed", "ppl_base"))),
          str: ("status", "reason", "method", "run", "time", "eval_backend", "eval_frames")}
RANGES = {**dict.fromkeys(("top1", "top1_chance", "answer_mass", "coherence", "persona_yes_frac",
                           "persona_yesno_match", "kept_frac"), (0, 1)),  # fractions
          **dict.fromkeys(("ppl_base", "raw_ppl_base", "train_ppl_base", "healed_ppl_base", "opposite_ppl_base",
                           "ppl_gate", "ppl_tail"), (1e-300, math.inf)),  # perplexities (a ratio's denominator)
          **dict.fromkeys(("eval_n", "persona_n", "generated", "kept", "generated_tokens", "n"), (0, math.inf))}
SCALARS = ("nats", "p", "heal", "dropped_by", "vector_norms", "seconds")  # objects of numbers (or words)


def wrong(key, v):
    """Why v cannot be the value of field `key` (a sentence), or None. null is fine: it is how NaN is written."""
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    if v is None:
        return None
    if num and not math.isfinite(v):
        return f"is {v} (a run writes null)"
    shape = next((t for t, keys in SHAPES.items() if key in keys), None)
    if shape and not isinstance(v, shape):
        return f"is a {type(v).__name__}, not a {shape.__name__}"
    if key in RANGES and not (num and RANGES[key][0] <= v <= RANGES[key][1]):
        return f"is {v!r}, not a number in [{RANGES[key][0]:g}, {RANGES[key][1]:g}]"
    if key in SCALARS and any(isinstance(x, (list, dict)) or isinstance(x, float) and not math.isfinite(x)
                              for x in v.values()):
        return "holds a list, an object or a non-finite number where numbers belong"
    return None


def clean_line(ln):
    """(the line as the report can read it, or None to leave it out; problems). A line without a kind or an
    integer round, or of an unknown kind, is left out; a field of the wrong shape or range is read as missing."""
    kind, rnd = ln.get("kind"), ln.get("round", -1 if ln.get("kind") in ("base", "prompting", "steering_only",
                                                                          "resume") else None)
    where = f"a {kind!r} line" if isinstance(kind, str) else "a line"
    if not isinstance(kind, str) or kind not in KINDS:
        return None, [f"{where} of no known kind (kinds: {', '.join(sorted(KINDS))}): left out"]
    if not isinstance(rnd, int) or isinstance(rnd, bool):
        return None, [f"{where} whose round is {rnd!r}, not an integer: left out"]
    out, bad = dict(ln, round=rnd), []
    for k, v in ln.items():
        if (why := wrong(k, v)):
            bad.append(f"{where} (round {rnd}): {k} {why}: read as missing")
            out.pop(k)
    rows = out.get("dose_table") or []
    keep = [r for r in rows if isinstance(r, dict) and not any(wrong(k, v) for k, v in r.items())
            and (get(r, "kept") or 0) <= (get(r, "n") or 0)]
    if len(keep) < len(rows):
        out["dose_table"] = keep
        bad.append(f"{where} (round {rnd}): {len(rows) - len(keep)} dose_table row(s) malformed: left out")
    return out, bad


def seed_dirs(d):
    """The seed<k>/ children that are run folders, in seed order (a group folder has some)."""
    kids = [k for k in os.listdir(d) if re.fullmatch(r"seed\d+", k)] if os.path.isdir(d) else []
    kids = [k for k in kids if os.path.exists(os.path.join(d, k, "rounds.jsonl"))]
    return [os.path.join(d, k) for k in sorted(kids, key=lambda k: int(k[4:]))]


def read_run(run_dir):
    """Everything a run wrote, by kind. Lines with the same (kind, round) merge, the later one winning.
    steer_ref is the steering reference: round 0's `steered` line, or `steering_only` in older runs."""
    merged, problems = {}, []
    rows, bad = runio.read_jsonl(os.path.join(run_dir, "rounds.jsonl"), numbered=True)
    problems += [f"rounds.jsonl {b}: left out" for b in bad]
    for i, ln in rows:
        ln, bad = clean_line(ln)
        problems += [f"rounds.jsonl line {i}: {b}" for b in bad]
        if not ln:
            continue
        if ln["kind"] == "resume" and isinstance(ln.get("redo_from"), int):  # --redo-from j: rounds >= j run again
            merged = {key: v for key, v in merged.items() if key[1] < ln["redo_from"]}
        merged.setdefault((ln["kind"], ln["round"]), {}).update(ln)
    torn = runio.count_lines(os.path.join(run_dir, "rounds.torn.jsonl"))
    problems += [f"rounds.torn.jsonl: {torn} torn line(s) a resume moved out of rounds.jsonl (a write cut short), "
                 "kept there, read by nothing"] * bool(torn)
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            conf = json.load(f)
    except (OSError, ValueError):
        conf = {}
    last = lambda kind: next((v for (k, _), v in reversed(merged.items()) if k == kind), None)
    by_round = lambda kind: sorted((v for (k, r), v in merged.items() if k == kind and isinstance(r, int)),
                                   key=lambda v: v["round"])
    steered = {v["round"]: v for v in by_round("steered")}
    cfg = conf["config"] if isinstance(conf.get("config"), dict) else conf
    method = cfg.get("method") or next((v["method"] for v in merged.values() if v.get("method")), DEFAULT_METHOD)
    return {"dir": run_dir, "name": os.path.basename(os.path.normpath(run_dir)), "argv": conf.get("argv"),
            "cfg": cfg, "method": str(method), "problems": problems,
            "rounds": by_round("round"), "steered": steered,
            "steer_ref": steered.get(0) or last("steering_only"),
            **{k: last(k) for k in ("base", "prompting", "steering_only", "lam0", "stop")}}


def get(x, *path):
    """x[path[0]][path[1]]... as a float; None when missing, non-numeric or NaN anywhere along the way.
    A top-level field missing under its new name is read under its old one (OLD)."""
    y = x
    for p in path:
        y = y.get(p) if isinstance(y, dict) else None
    if y is None and len(path) == 1 and path[0] in OLD:
        return get(x, OLD[path[0]])
    return float(y) if isinstance(y, (int, float)) and not isinstance(y, bool) and not math.isnan(y) else None


def shift(line, base, key):
    """line[key] - base[key], None when either is missing."""
    return None if None in (get(line, key), get(base, key)) else get(line, key) - get(base, key)


def pair(x):
    """(lo, hi) of a two-number list, else None."""
    return tuple(map(get, x)) if isinstance(x, list) and len(x) == 2 and None not in map(get, x) else None


def ci_of(line, key):
    """(lo, hi) of eval_ci[key], or None when the line has no interval for it."""
    return pair(((line or {}).get("eval_ci") or {}).get(key))


def fmt(x, nd=4):
    if isinstance(x, tuple):
        return "[" + ", ".join(fmt(v, nd) for v in x) + "]"
    return "—" if x is None else str(x) if isinstance(x, (bool, str)) else f"{x:.{nd}g}"


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]


def method_of(run):
    return run.get("method") or DEFAULT_METHOD


def methods_of(runs):
    """The methods of these runs, in first-seen order, as one string ("prompt-bake", or "a, b" if mixed)."""
    return ", ".join(dict.fromkeys(map(method_of, runs)))


def ref_word(runs):
    """What the `steered` reference line is for these runs: the teacher for prompt baking, else steering."""
    return "the teacher" if methods_of(runs) == "prompt-bake" else "steering"


def evaluated(run):
    """The round lines that were measured (tinymfv's numbers, or the greedy answers' for runs that skip tinymfv)."""
    return [r for r in run["rounds"] if get(r, "auth_nats") is not None or get(r, "ppl_base") is not None]


def rng(xs):
    return max(xs) - min(xs) if xs else 0.0


def mean(xs):
    return statistics.fmean(xs) if xs else None


# ---- lines, noise and chance
def base_of(run):
    return run["base"]


def round_at(k):
    """fn(run) -> that run's round-k line (None if it has none)."""
    return lambda run: next((r for r in run["rounds"] if r["round"] == k), None)


def last_of(run):
    return (evaluated(run) or [None])[-1]


def is_base(line):
    return (line or {}).get("kind") == "base"


def half(line, key):
    """Half-width of the line's own 95% interval for key; None when it has none (trait_fixed, ppl_base).
    persona_gap_ci is an interval on the line's change vs the base line, so the base's own is 0."""
    if key in PAIRED:
        ci = pair((line or {}).get(f"{key}_ci"))
        return 0.0 if is_base(line) else (ci[1] - ci[0]) / 2 if ci else None
    if key in ("auth_nats", "care_nats"):
        ci = ci_of(line, key)
        return (ci[1] - ci[0]) / 2 if ci and ci[1] > ci[0] else EPS
    return None


def interval(a, b, key):
    """(Δ, lo, hi) of a[key] - b[key] in one run; lo/hi None when there is no interval to put on it.
    Against the base, persona_gap has its own paired interval; otherwise the two lines' half-widths add in
    quadrature (treated as unpaired: conservative, the lines share vignettes / statements)."""
    d = shift(a, b, key)
    if d is None:
        return None
    ci = pair(a.get(f"{key}_ci")) if key in PAIRED and is_base(b) and not is_base(a) else None
    if ci:
        return d, ci[0], ci[1]
    ia, ib = (items_of(x, key) for x in (a, b))
    if ia and ib and len(ia) == len(ib) and not is_base(a) and not is_base(b):  # same prompts: pair them
        ci = paired_ci(ia, ib)
        return d, ci[0], ci[1]
    ha, hb = half(a, key), half(b, key)
    return (d, None, None) if None in (ha, hb) else (d, d - math.hypot(ha, hb), d + math.hypot(ha, hb))


def delta(runs, a_of, b_of, key):
    """Δ = a - b over the seeds: (Δ, lo, hi), or None when no seed has both. One seed: its own interval.
    Several: the mean ± the largest of the seeds' min-max spread of Δ, of either end's level, and the mean
    bootstrap half-width; the levels count because with two seeds the spread of a step can be 0 by luck."""
    per = []
    for r in runs:
        a, b = a_of(r), b_of(r)
        iv = interval(a, b, key) if a and b else None
        if iv:
            per.append((iv, get(a, key), get(b, key)))
    if len(per) < 2:
        return per[0][0] if per else None
    ds = [p[0][0] for p in per]
    m, boot = mean(ds), [(p[0][2] - p[0][1]) / 2 for p in per if p[0][1] is not None]
    h = max(rng(ds), rng([p[1] for p in per]), rng([p[2] for p in per]), mean(boot) or 0.0)
    return (m, m - h, m + h) if h > 0 else (m, None, None)


def items_of(line, key):
    """The line's per-prompt readings of key (a list of numbers), or None."""
    xs = ((line or {}).get("items") or {}).get(key)
    ok = isinstance(xs, list) and xs and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                            for x in xs)
    return xs if ok else None


def side(iv, sgn):
    """+1: the interval lies on the persona side of 0; -1: on the other side; 0: it holds 0; None: no interval."""
    if not iv or iv[1] is None:
        return None
    lo, hi = sorted((sgn * iv[1], sgn * iv[2]))
    return 1 if lo > 0 else -1 if hi < 0 else 0


def fiv(iv):
    """'Δ [lo, hi]' for the verdict lines."""
    return "—" if not iv else fmt(iv[0]) + (f" {fmt((iv[1], iv[2]))}" if iv[1] is not None else " (no interval)")


def no_noise(runs, key):
    """Why a reader has no interval here."""
    return (f"{key} is a single reading: no interval, one seed" if len(runs) == 1 else
            f"{key}: the seeds agree exactly and there is no bootstrap, so no noise estimate")


def chance(runs):
    """(at_chance, text) for the tinymfv reader on the base line: True, False, or None when unknown.
    At chance: top1 <= c + 2 sqrt(c(1-c)/n), c = top1_chance. Without top1_chance, c >= 1/7, and the bound
    grows with c, so top1 at or under 1/7's bound is at chance for any c; above it we cannot tell."""
    out = []
    for r in runs:
        b = r["base"] or {}
        t, c, n = get(b, "top1"), get(b, "top1_chance"), get(b, "eval_n")
        if t is None or not n:
            out.append((None, "tinymfv chance level unknown: top1 or eval_n not recorded"))
            continue
        bound = c is None
        c = 1 / N_FOUNDATIONS if bound else c
        thr = c + 2 * math.sqrt(c * (1 - c) / n)
        cs = f"≥ {fmt(c, 3)} (top1_chance not recorded; 1/7 is its lower bound)" if bound else fmt(c, 3)
        out.append((True, f"tinymfv reads at chance: top1 {fmt(t, 3)} vs chance {cs}; chance + 2σ = "
                          f"{fmt(thr, 3)} at n {n:g}") if t <= thr else
                   (None, f"tinymfv chance level unknown: top1 {fmt(t, 3)} > 1/7 + 2σ = {fmt(thr, 3)}, but the "
                          "run did not record top1_chance") if bound else
                   (False, f"tinymfv above chance: top1 {fmt(t, 3)} > chance {cs} + 2σ = {fmt(thr, 3)}"))
    return next((x for x in out if x[0]), out[0] if out else (None, "no base line"))


def readers_of(runs):
    """[(key, sign)]: the readers that read this run's persona, in the order they may decide (config `readers`,
    from the persona: steer_heal.PERSONAS). Other readers are shown and never decide: a reader of one trait must
    not decide a verdict about another."""
    rs = runs[0]["cfg"].get("readers") if runs else None
    return [(r.split(":")[0], -1 if r.endswith("-") else 1) for r in rs] if rs else OLD_READERS


# readers that ARE the vector's own ruler (the projection on v0): the vector at ± dose moves them by construction,
# so only an intervention that does not use the vector (the persona prompt vs its opposite) can validate them
ON_THE_VECTOR = ("trait_fixed", "trait_self")


def check_word(d, sgn):
    """One direction check (a prompting or steered line's direction[key]: the persona and its opposite, as prompts
    or as the vector at ± dose): 'pass' when they move the reader in opposite directions and the paired CI of
    their difference lies on the persona's side; 'blind' when the opposite moves it the persona's way beyond its
    noise; else 'fail'."""
    p, o, ci, oci = get(d, "persona"), get(d, "opposite"), pair(d.get("diff_ci")), pair(d.get("opposite_ci"))
    if None in (p, o) or ci is None:
        return "fail"
    if oci and sgn * min(oci, key=lambda x: sgn * x) > 0:
        return "blind"
    return "pass" if sgn * p > 0 > sgn * o and sgn * min(ci, key=lambda x: sgn * x) > 0 else "fail"


def direction(runs, key, sgn):
    """(ok, text) for a reader's direction checks over the run(s): ok when every seed has a check that passes and
    none is blind; (False, why) otherwise, including a run that has no check (--no-baselines, no steered line)."""
    out, seen = [], False
    for r in runs:
        steered = [] if key in ON_THE_VECTOR else [("steered", v) for _, v in sorted(r["steered"].items())]
        lines = [(f"{name} r{ln.get('round')}", ln) for name, ln in [("prompting", r.get("prompting"))] + steered if ln]
        checks = [(n, (ln.get("direction") or {}).get(key)) for n, ln in lines]
        checks = [(n, d, check_word(d, sgn)) for n, d in checks if isinstance(d, dict)]
        seen |= bool(checks)
        if not checks:
            out.append(f"{r['name']}: no direction check")
        for n, d, w in checks:
            out.append(f"{n} {w} (persona {fmt(get(d, 'persona'), 3)} vs opposite {fmt(get(d, 'opposite'), 3)}, "
                       f"difference CI {fmt(pair(d.get('diff_ci')), 3)})")
        if not any(w == "pass" for _, _, w in checks) or any(w == "blind" for _, _, w in checks):
            return False, ("no direction check in this run" if not seen and len(runs) == 1 else
                           "direction check not passed: " + "; ".join(out))
    return True, "direction check passed: " + "; ".join(out)


def at_chance(runs, key):
    """(True, why) when a reader cannot carry a verdict here: at chance (tinymfv; the probe at its own k-fold
    accuracy), or its direction check not passed."""
    if key == "auth_nats" and chance(runs)[0]:
        return chance(runs)
    if key == "probe_defer":
        b = runs[0]["base"] or {}
        acc, c, n = get(b, "probe_defer_acc"), get(b, "probe_defer_chance"), get(b, "probe_defer_n")
        if None in (acc, c, n) or acc <= c + 2 * math.sqrt(c * (1 - c) / n):
            return True, f"probe_defer's k-fold accuracy {fmt(acc, 3)} is not above chance {fmt(c, 3)} + 2σ"
    ok, why = direction(runs, key, dict(readers_of(runs)).get(key, 1))
    return (not ok), why


def unreadable(runs, key, text):
    """A reader's "not measurable" answer (key, word, text, readable=False) when it is at chance here, else None."""
    at = at_chance(runs, key)
    return (key, "not measurable", f"{at[1]}; {text}", False) if at[0] else None


def has(runs, picks, key):
    """Every seed's lines picked by picks carry key."""
    return all(p(r) is not None and get(p(r), key) is not None for r in runs for p in picks)


def decide(results):
    """The verdict from per-reader results [(key, word, text, readable)] in readers_of() order: the first reader that
    can be read here (above chance, with an interval) decides, even when what it reads is "not measurable"
    (steering moved nothing): a weaker reader must not overrule it. Another readable one saying the opposite
    makes it unclear. None readable: not measurable."""
    ok = [x for x in results if x[3]]
    if not results:
        return "not measured in this run"
    if not ok:
        return "not measurable"
    return "unclear" if {"yes", "no"} <= {x[1] for x in ok} else ok[0][1]


def readers_text(results):
    """Which reader decided (the first of this persona's readers that passes its checks) and what each said."""
    ok = [x for x in results if x[3]]
    lead = f"decided by {ok[0][0]}" if ok else "no reader of this persona passes its checks"
    return f"{lead}. " + "; ".join(f"{x[0]}: {x[1]} — {x[2]}" for x in results)


def cell(runs, pick, key):
    """A table cell over seeds: the value, or 'mean [min, max]' when the seeds differ."""
    vals = [v for v in (get(pick(r), key) for r in runs if pick(r)) if v is not None]
    if len(vals) < 2 or rng(vals) == 0:
        return vals[0] if vals else None
    return f"{fmt(mean(vals))} [{fmt(min(vals))}, {fmt(max(vals))}]"


def ceiling(run):
    """(ppl_ceil, ppl_ceil × base ppl_base): past the latter a line is incoherent. ppl_ceil defaults to 2."""
    c = get(run["cfg"], "ppl_ceil") or PPL_CEIL
    b = get(run["base"], "ppl_base")
    return c, (c * b if b is not None else None)


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
             get(d, "rep"), " ".join(f"{k}:{v}" for k, v in (d.get("dropped_by") or {}).items() if v) or "—"]
            for r in run["rounds"] for d in (r.get("dose_table") or []) if isinstance(d, dict)]
    body = table(["round", "dose", "n", "kept", "kept frac", "ppl tail", "rep", "dropped by"], rows)
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


def q1_heal(runs):
    r0, steer = round_at(0), lambda r: r["steer_ref"]
    steer_name = ("teacher r0 (persona as system prompt)" if ref_word(runs) == "the teacher" else
                  "steered r0 (steering only)")
    lines = [("base", base_of), (steer_name, steer), ("healed round 0", r0),
             ("λ=0 round 0", lambda r: r["lam0"])]
    cols = ["sentiment", "probe_defer", "persona_gap", "trait_fixed", "auth_nats", "care_nats", "ppl_base", "answer_mass",
            "rep", "trait_self"]
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
    # fluency, like with like: greedy answers to the same held-out prompts, healed round 0 vs the base line
    ratios = [x for x in (get(r0(r), "ppl_base") / get(r["base"], "ppl_base") if r0(r) and get(r0(r), "ppl_base")
                          and get(r["base"], "ppl_base") else None for r in runs) if x is not None]
    worst = max(ratios) if ratios else None
    fluent = None if worst is None else worst <= PPL_TOL
    res = [x for x in (retention(runs, k, s, r0) for k, s in readers_of(runs)) if x]
    ret = decide(res)
    nums = [("healed/base ppl_base", worst), ("base ppl_base", get(runs[0]["base"], "ppl_base")),
            ("healed ppl_base", get(r0(runs[0]), "ppl_base"))]
    for k, s in readers_of(runs):
        sh, hh = delta(runs, steer, base_of, k), delta(runs, r0, base_of, k)
        if sh and hh:
            nums += [(f"{LABEL[k]} steering", sh[0]), (f"{LABEL[k]} healed", hh[0])]
    flu = ("ppl_base missing on the base or round-0 line" if fluent is None else
           f"healed round-0 ppl_base {fmt(cell(runs, r0, 'ppl_base'))} "
           f"vs base {fmt(get(runs[0]['base'], 'ppl_base'))} (×{fmt(worst, 3)}{', worst seed' * (len(runs) > 1)}; "
           f"fluent if ≤ ×{PPL_TOL}, greedy answers to the same held-out prompts): "
           + ("fluent" if fluent else "NOT fluent"))
    why = f"fluency: {flu}. Retention: {ret}" + (f" — {readers_text(res)}" if res else " — no trait reader")
    word = ("no" if fluent is False or ret == "no" else "unclear" if fluent is None else
            "yes" if ret == "yes" else "not measurable" if ret in ("not measurable", "not measured in this run")
            else "unclear")
    return word, why, body, nums


def q2_one(run):
    base, (cmult, ceil) = run["base"], ceiling(run)
    rows = [["base", get(base, "ppl_base"), 1.0 if get(base, "ppl_base") else None, get(base, "answer_mass"),
             get(base, "rep")] + [None] * 4]
    rows += [[r["round"], get(r, "ppl_base"), get(r, "ppl_base") / get(base, "ppl_base")
              if None not in (get(r, "ppl_base"), get(base, "ppl_base")) else None, get(r, "answer_mass"),
              get(r, "rep"),
              get(r, "kept") / get(r, "generated") if get(r, "kept") is not None and get(r, "generated") else None,
              get(r, "heal", "kl_agg"), (r.get("heal") or {}).get("barrier_active"), r.get("status")]
             for r in run["rounds"]]
    body = [f"ceiling = ppl_ceil {fmt(cmult)}" + " (default; not in config)" * (get(run["cfg"], "ppl_ceil") is None)
            + f" × base ppl_base {fmt(get(base, 'ppl_base'))} = {fmt(ceil)}. ppl_base: perplexity under the base "
            "model of each line's greedy answers to the held-out prompts. answer_mass (probability on the seven "
            "answer digits; older runs call it coherence) is shown but decides nothing: steering raises it.", ""]
    body += table(["round", "ppl_base", "× base", "answer_mass", "rep", "kept frac", "kl_agg", "barrier", "status"],
                  rows)
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
    return word, why + stop, body, nums


def q2_coherent(runs):
    return combine(runs, q2_one)


def trajectory(runs, key, sgn):
    """One reader's answer to "does the trait keep moving?": (key, word, text, readable), or None if absent."""
    ks = sorted(set.intersection(*({r["round"] for r in run["rounds"] if get(r, key) is not None} for run in runs)))
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
                        for s in steps) + f"; {sat}")
    at = at_chance(runs, key)
    fs = side(final, sgn)
    word, note = (("not measurable", f" ({at[1]})") if at[0] else
                  ("not measurable", f" ({no_noise(runs, key)})") if fs is None else
                  ("no", " — inside the noise") if fs == 0 else ("no", " — moved the wrong way") if fs < 0 else
                  ("unclear", " — one round only") if len(ks) < 2 else
                  ("unclear", " — not monotone (a step goes back beyond noise)") if -1 in sides else
                  ("yes", "; monotone"))
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
    cols = ["sentiment", "probe_defer", "auth_nats", "care_nats", "persona_gap", "trait_fixed", "ppl_base", "answer_mass"]
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
    word = "no" if over else decide(res)
    return word, readers_text(res) + (f" — the loop's last round is past the ppl ceiling ({', '.join(over)})"
                                      if over else ""), body, nums


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
            "- yes/no persona form: " + (f"at chance on the base line (a constant answer in: {', '.join(yn)})" if yn else
                                          "not at chance on the base line" if any(get(x["base"], "persona_yesno")
                                                                                   is not None for x in runs)
                                          else "not in this run"),
            f"- fluency (Q1): healed round-0 ppl_base ≤ {PPL_TOL} × base ppl_base; coherence (Q2): every round's "
            f"ppl_base ≤ ppl_ceil {fmt(cmult)} × base ppl_base"
            + " (ppl_ceil not in config: default)" * (get(cfg, "ppl_ceil") is None),
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


def main(argv=None):
    """Each folder's report.md. Exit 2 (a message, no traceback) for a folder that is not a run; methods compared:
    report_methods.py."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or group folders (with seed<k>/ run folders)")
    args = ap.parse_args(argv)
    code, good = 0, []
    for d in args.runs:
        try:
            write_report(d)
            print(os.path.join(d, "report.md"))
            good.append(d)
        except ValueError as e:
            print(f"report.py: {e}", file=sys.stderr)
            code = 2
        except runio.WriteFailed as e:  # a full disk: no half-written report.md
            print(f"report.py: {e}", file=sys.stderr)
            code = 4
    return code


if __name__ == "__main__":
    sys.exit(main())
