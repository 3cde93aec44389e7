"""lib/evidence.py: what a run's lines say and how sure: reading the files, noise intervals, chance and the direction
rule — the one "is this reader measurable?" rule that report.py, report_methods.py and sweep.py all use.

Reads only what a run wrote (config.json, rounds.jsonl; docs/CONTRACT.md), so it works on a run in progress and
needs no model; stdlib only (and lib/runio.py, lib/readers.py: it imports nothing else of the project). A line it cannot
read is named in the run's `problems`, never skipped in silence; a field of the wrong shape or range is read as
missing. Older runs are read through their old field names (OLD below).

Noise: a change counts only when it is outside its interval. One seed: the line's own bootstrap (vignettes
for auth_nats, statements for persona_gap; trait_fixed has none). A group of seeds: the larger of the seeds'
min-max spread and that bootstrap, because two seeds differ by more than the bootstrap says.
"""
import json
import math
import os
import re
from lib import runio  # the project's file reader: stdlib only, like this file; each unreadable line named
import statistics

from lib.readers import PAIRED, paired_ci  # the readers table and the one bootstrap rule (lib/readers.py imports nothing of the project)

PPL_CEIL = 2.0      # config ppl_ceil when a run lacks it: the loop is incoherent past this × base ppl_base
EPS = 0.01          # nats; the half-width used when a tinymfv line carries no eval_ci
N_FOUNDATIONS = 7   # 1/7 is a lower bound on top1_chance (the most common of 7 labels), for runs that lack it
# the trait readers of runs older than config `readers` (the seed persona's; the sign = its direction, less deferent)
OLD_READERS = [("persona_gap", 1), ("trait_fixed", 1), ("auth_nats", -1)]
# new field name -> the name older runs wrote (docs/CONTRACT.md)
OLD = {"answer_mass": "coherence", "trait_self": "trait_proj", "train_ppl_base": "healed_ppl_base",
       "train_rep": "healed_rep"}
# --method of steer_heal.py (config.json `method`): older runs lack it, and read as this one
DEFAULT_METHOD = "steer-heal"


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
          list: ("dose_table", "doses", "opposite_persona_gap_ci", "fingerprint", "probes", "answers",
                 "opposite_answers", *(f"{k}_ci" for k in PAIRED)),
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
    lines = []
    for i, ln in rows:
        ln, bad = clean_line(ln)
        problems += [f"rounds.jsonl line {i}: {b}" for b in bad]
        lines += [ln] if ln else []
    for ln in runio.live_lines(lines):  # what a resume superseded (a stop; with --redo-from j, rounds >= j) is gone
        merged.setdefault((ln["kind"], ln["round"]), {}).update(ln)
    again = os.path.join(run_dir, "reread.jsonl")  # report.py --reread: the text readers again, from the stored answers
    reread = [x for x in runio.read_jsonl(again)[0] if (x.get("kind"), x.get("round")) in merged] \
        if os.path.exists(again) else []
    for x in reread:
        ln = merged[(x["kind"], x["round"])]
        ln.update({k: v for k, v in x.items() if k not in ("items", "direction")})
        ln["items"] = dict(ln.get("items") or {}, **x.get("items", {}))
        ln["direction"] = dict(ln.get("direction") or {}, **x.get("direction", {}))
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
            "rounds": by_round("round"), "steered": steered, "reread": bool(reread),
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


def method_of(run):
    return run.get("method") or DEFAULT_METHOD


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
        why_none = (f" ({key} is the vector's own ruler: only the persona prompt vs its opposite can check it, and "
                    "this run has no prompting line)" if key in ON_THE_VECTOR and not r.get("prompting") else "")
        if not checks:
            out.append(f"{r['name']}: no direction check{why_none}")
        for n, d, w in checks:
            out.append(f"{n} {w} (persona {fmt(get(d, 'persona'), 3)} vs opposite {fmt(get(d, 'opposite'), 3)}, "
                       f"difference CI {fmt(pair(d.get('diff_ci')), 3)})")
        if not any(w == "pass" for _, _, w in checks) or any(w == "blind" for _, _, w in checks):
            return False, (f"no direction check in this run{why_none}" if not seen and len(runs) == 1 else
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
    words = {x[1] for x in ok}
    return "unclear" if "no" in words and words & set(YES) else ok[0][1]


YES = ("yes", "keeps moving", "moved, then stopped")  # the positive words: one reader saying one and another "no" = unclear


def readers_text(results):
    """Which reader decided (the first of this persona's readers that passes its checks) and what each said."""
    ok = [x for x in results if x[3]]
    lead = f"decided by {ok[0][0]}" if ok else "no reader of this persona passes its checks"
    if len({x[1] for x in ok}) > 1:  # the readers that may decide disagree: say so, and why the first one decides
        lead += (f" (the readers disagree: {', '.join(f'{x[0]} {x[1]}' for x in ok)}; the first readable one in this "
                 "persona's order decides, and a yes against a no is unclear)")
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
