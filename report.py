"""report.py: results/<run_or_group> -> report.md (Q0-Q3 + the prompting comparison). CLI: python report.py DIR...

Reads only what a run wrote (config.json, rounds.jsonl, completions_r0.jsonl; docs/CONTRACT.md), so it works
on a run in progress and needs no model; stdlib only, as steer_heal.py imports it after every run. Each section
is one verdict line (yes / no / unclear / not measured, with the numbers that decide it), then its table.
"""
import json
import math
import os
import re
import statistics
import sys

MIN_KEPT = 8        # fewer survivors than this in a round is too little to heal on
PPL_SLACK = 1.10    # healed ppl may be 10% above the raw survivors' and still count as fluent
RETAIN = 0.5        # the healed model must keep half of steering's trait shift to count as carried
EPS = 0.01          # nats; the noise level used when a line carries no eval_ci
SECTIONS = ["Q0 can we filter?", "Q1 can we heal?", "Q2 coherent over the loop?",
            "Q3 does the trait keep moving?", "vs prompting baseline"]


def read_jsonl(path):
    """The JSON objects of a JSONL file; a half-written last line (run in progress) is skipped."""
    out = []
    with open(path if os.path.exists(path) else os.devnull) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return [x for x in out if isinstance(x, dict)]


def seed_dirs(d):
    """The seed<k>/ children that are run folders, in seed order (a group folder has some)."""
    kids = [k for k in os.listdir(d) if re.fullmatch(r"seed\d+", k)] if os.path.isdir(d) else []
    kids = [k for k in kids if os.path.exists(os.path.join(d, k, "rounds.jsonl"))]
    return [os.path.join(d, k) for k in sorted(kids, key=lambda k: int(k[4:]))]


def read_run(run_dir):
    """Everything a run wrote, by kind. Lines with the same (kind, round) merge, the later one winning."""
    merged = {}
    for ln in read_jsonl(os.path.join(run_dir, "rounds.jsonl")):
        merged.setdefault((ln.get("kind"), ln.get("round", -1)), {}).update(ln)
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            conf = json.load(f)
    except (OSError, ValueError):
        conf = {}
    last = lambda kind: next((v for (k, _), v in reversed(merged.items()) if k == kind), None)
    return {"dir": run_dir, "name": os.path.basename(os.path.normpath(run_dir)), "argv": conf.get("argv"),
            "cfg": conf["config"] if isinstance(conf.get("config"), dict) else conf,
            "rounds": sorted((v for (k, r), v in merged.items() if k == "round" and isinstance(r, int)),
                             key=lambda v: v["round"]),
            **{k: last(k) for k in ("base", "prompting", "steering_only", "lam0", "stop")}}


def get(x, *path):
    """x[path[0]][path[1]]... as a float; None when missing, non-numeric or NaN anywhere along the way."""
    for p in path:
        x = x.get(p) if isinstance(x, dict) else None
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x) else None


def shift(line, base, key):
    """line[key] - base[key], None when either is missing."""
    return None if None in (get(line, key), get(base, key)) else get(line, key) - get(base, key)


def ci_of(line, key):
    """(lo, hi) of eval_ci[key], or None when the line has no interval for it."""
    ci = ((line or {}).get("eval_ci") or {}).get(key)
    return tuple(map(get, ci)) if isinstance(ci, list) and len(ci) == 2 and None not in map(get, ci) else None


def noise(line, default=EPS):
    """Half-width of the line's auth_nats interval: steps smaller than this are not movement."""
    ci = ci_of(line, "auth_nats")
    return (ci[1] - ci[0]) / 2 if ci and ci[1] > ci[0] else default


def fmt(x, nd=4):
    if isinstance(x, tuple):
        return "[" + ", ".join(fmt(v, nd) for v in x) + "]"
    return "—" if x is None else str(x) if isinstance(x, (bool, str)) else f"{x:.{nd}g}"


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]


def evaluated(run):
    return [r for r in run["rounds"] if get(r, "auth_nats") is not None]


def floor_of(run):
    """The coherence floor: config coh_floor x base coherence."""
    cf, bc = get(run["cfg"], "coh_floor"), get(run["base"], "coherence")
    return cf * bc if None not in (cf, bc) else None


# ---- the checks: each returns (word, reason, body lines, [(name, value)] with the deciding number first)
def q0_filter(run):
    rows = [[r["round"], get(d, "dose"), get(d, "n"), get(d, "kept"), get(d, "kept_frac"), get(d, "ppl_tail"),
             get(d, "rep"), " ".join(f"{k}:{v}" for k, v in (d.get("dropped_by") or {}).items() if v) or "—"]
            for r in run["rounds"] for d in (r.get("dose_table") or []) if isinstance(d, dict)]
    body = table(["round", "dose", "n", "kept", "kept frac", "ppl tail", "rep", "dropped by"], rows)
    r0 = (run["rounds"] or [{}])[0]
    # the borderline pair of round 0: the kept one with the highest tail ppl, the ppl-dropped one with the lowest
    comps = [c for c in read_jsonl(os.path.join(run["dir"], "completions_r0.jsonl")) if get(c, "ppl_tail")]
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
    tracks = (None not in kf and kf[1] < kf[0]) or (None not in pp and pp[1] > pp[0])
    word, note = (("no", "") if kept and min(kept) < MIN_KEPT else ("unclear", "; one dose only") if len(dt) < 2
                  else ("yes", "") if tracks else ("unclear", "; the filter does not track dose"))
    return word, why + note, body, nums


def q1_heal(run):
    r0, base, so, lam0 = (run["rounds"] or [None])[0], run["base"], run["steering_only"], run["lam0"]
    body = table(["round 0, same prompts", "ppl_base", "rep"],
                 [["raw steered survivors", get(r0, "raw_ppl_base"), get(r0, "raw_rep")],
                  ["healed model (unsteered)", get(r0, "healed_ppl_base"), get(r0, "healed_rep")]] if r0 else []) + [""]
    body += table(["line", "auth_nats", "care_nats", "trait_proj", "coherence", "ppl_base", "rep"],
                  [[name] + [get(ln, k) for k in ("auth_nats", "care_nats", "trait_proj", "coherence",
                                                  "ppl_base", "rep")] for name, ln in
                   [("base", base), ("steering only", so), ("healed round 0", r0), ("λ=0 round 0", lam0)] if ln])
    body.append("\nλ=0 ablation: " + (f"see the λ=0 row; heal kl_agg {fmt(get(lam0, 'heal', 'kl_agg'))} vs "
                f"{fmt(get(r0, 'heal', 'kl_agg'))} with the barrier" if lam0 else "not run; rerun with --ablate-lam0"))
    if not r0:
        return "not measured in this run", "no round line yet", body, []
    raw, healed = get(r0, "raw_ppl_base"), get(r0, "healed_ppl_base")
    # the trait: trait_proj where all three lines have it (up = persona), else auth_nats (down = persona)
    key, sgn = ("trait_proj", 1) if None not in [get(x, "trait_proj") for x in (base, so, r0)] else ("auth_nats", -1)
    s_so, s_h = shift(so, base, key), shift(r0, base, key)
    ratio = s_h / s_so if s_so and s_h is not None and sgn * s_so > 0 else None
    nums = [("retained", ratio), ("raw ppl_base", raw), ("healed ppl_base", healed), (f"Δ{key} healed", s_h)]
    why = (f"healed ppl_base {fmt(healed)} vs raw survivors {fmt(raw)}; Δ{key} healed {fmt(s_h)} vs "
           f"steering-only {fmt(s_so)} (retained {fmt(ratio, 3)}, need ≥{RETAIN})")
    fluent = None if raw is None or healed is None else healed <= raw * PPL_SLACK
    word = ("no" if fluent is False or (ratio is not None and ratio <= 0) else
            "yes" if fluent and ratio is not None and ratio >= RETAIN else "unclear")
    return word, why, body, nums


def q2_coherent(run):
    base, rounds, floor = run["base"], evaluated(run), floor_of(run)
    rows = [["base", get(base, "coherence"), get(base, "ppl_base"), get(base, "rep")] + [None] * 4]
    rows += [[r["round"], get(r, "coherence"), get(r, "ppl_base"), get(r, "rep"),
              get(r, "kept") / get(r, "generated") if get(r, "kept") is not None and get(r, "generated") else None,
              get(r, "heal", "kl_agg"), (r.get("heal") or {}).get("barrier_active"), r.get("status")]
             for r in run["rounds"]]
    body = [f"floor = coh_floor {fmt(get(run['cfg'], 'coh_floor'))} × base coherence "
            f"{fmt(get(base, 'coherence'))} = {fmt(floor)}", ""]
    body += table(["round", "coherence", "ppl_base", "rep", "kept frac", "kl_agg", "barrier", "status"], rows)
    stop = f"; loop stopped early: {run['stop'].get('reason')}" if run["stop"] else ""
    if not rounds:
        return "not measured in this run", "no evaluated round yet" + stop, body, []
    coh = [(r["round"], get(r, "coherence")) for r in rounds]
    worst = min(coh, key=lambda c: math.inf if c[1] is None else c[1])
    nums = [("min coherence", worst[1]), ("floor", floor), ("last ppl_base", get(rounds[-1], "ppl_base"))]
    below = [c for c in coh if None not in (floor, c[1]) and c[1] < floor]
    word, why = (("unclear", f"no floor (coh_floor or base coherence missing); min coherence {fmt(worst[1])}")
                 if floor is None or worst[1] is None else
                 ("no", f"round {below[0][0]} coherence {fmt(below[0][1])} < floor {fmt(floor)}") if below else
                 ("yes", f"min coherence {fmt(worst[1])} (round {worst[0]}) ≥ floor {fmt(floor)} "
                  f"over {len(coh)} rounds"))
    return word, why + stop, body, nums


def q3_trait(run):
    base, rounds = run["base"], evaluated(run)
    pts = ([base] if get(base, "auth_nats") is not None else []) + rounds
    rows = [["base" if ln is base else ln["round"], get(ln, "auth_nats"), ci_of(ln, "auth_nats"),
             shift(ln, base, "auth_nats"), get(ln, "care_nats"), ci_of(ln, "care_nats"),
             shift(ln, base, "care_nats"), get(ln, "trait_proj")] for ln in pts]
    body = table(["round", "auth_nats", "auth CI", "Δauth", "care_nats", "care CI", "Δcare", "trait_proj"], rows)
    if get(base, "auth_nats") is None or not rounds:
        return "not measured in this run", "needs the base line and ≥1 evaluated round", body, []
    h, a = noise(base), [get(ln, "auth_nats") for ln in pts]
    steps = [y - x for x, y in zip(a, a[1:])]
    d, dc, dp = a[-1] - a[0], shift(rounds[-1], base, "care_nats"), shift(rounds[-1], base, "trait_proj")
    nums = [("Δauth final", d), ("Δcare final", dc), ("Δtrait_proj final", dp), ("rounds", len(rounds))]
    i = len(steps)
    while i > 0 and abs(steps[i - 1]) <= noise(pts[i], h):
        i -= 1  # walk back over the trailing steps that are within that round's interval
    sat = ("still moving at the last round" if i == len(steps) else
           f"saturates after round {pts[i]['round']}" if i else "no step exceeds noise")
    why = (f"Δauth {fmt(d)} after round {rounds[-1]['round']} vs base CI ±{fmt(h)}; Δcare {fmt(dc)}; "
           f"Δtrait_proj {fmt(dp)}; steps {', '.join(fmt(s, 2) for s in steps)}; {sat}")
    mono = all(s <= 0 for s in steps)
    word, note = (("no", " — inside the base's interval") if abs(d) <= h else
                  ("no", " — moved the wrong way (up)") if d > 0 else ("unclear", " — one round only")
                  if len(rounds) < 2 else ("yes", "; monotone") if mono else ("unclear", "; not monotone"))
    return word, why + note, body, nums


def vs_prompting(run):
    base, pr, floor, last = run["base"], run["prompting"], floor_of(run), (evaluated(run) or [None])[-1]
    rows = [[name, get(ln, "auth_nats"), shift(ln, base, "auth_nats"), get(ln, "care_nats"),
             shift(ln, base, "care_nats"), get(ln, "coherence")]
            for name, ln in [("base", base), ("prompting", pr), (f"healed round {(last or {}).get('round')}", last)]]
    body = table(["line", "auth_nats", "Δauth", "care_nats", "Δcare", "coherence"],
                 [r for r in rows if r[1] is not None])
    if None in (rows[0][1], rows[1][1], rows[2][1]):
        return "not measured in this run", "needs base, prompting and an evaluated round", body, []
    (_, _, P, _, Pc, pcoh), (_, _, L, _, Lc, coh), h = rows[1], rows[2], noise(base)
    nums = [("Δauth loop", L), ("Δauth prompting", P), ("Δcare loop", Lc), ("Δcare prompting", Pc),
            ("coherence loop", coh), ("coherence prompting", pcoh)]
    why = (f"Δauth loop {fmt(L)} (coh {fmt(coh)}) vs prompting {fmt(P)} (coh {fmt(pcoh)}); "
           f"Δcare {fmt(Lc)} vs {fmt(Pc)}; noise ±{fmt(h)}; floor {fmt(floor)}")
    low = None not in (floor, coh) and coh < floor
    word = "no" if low or L > P + h else "yes" if L < P - h else "unclear"
    return word, why + " — the loop is below the coherence floor" * low, body, nums


CHECKS = [q0_filter, q1_heal, q2_coherent, q3_trait, vs_prompting]


def generator(cfg):
    on = [f"length decay p={cfg.get('steer_decay')} T={cfg.get('steer_decay_t')}"] * bool(cfg.get("steer_decay")) + \
         [f"backtrack (window {cfg.get('backtrack_window')}, scale {cfg.get('backtrack_scale')})"] * bool(cfg.get("backtrack")) + \
         ["cosine gate"] * bool(cfg.get("cosine_gate"))
    return " + ".join(on) or "constant dose"


def header(runs, title):
    r, cfg = runs[0], runs[0]["cfg"]
    ev = next((ln for ln in [r["base"]] + r["rounds"] if ln and ln.get("eval_backend")), {})
    return [f"# steer-heal report: {title}", "",
            f"- model: {cfg.get('model') or 'embedded SmolLM2-135M-Instruct'}",
            f"- persona {cfg.get('persona')}: + \"{cfg.get('pos')}\" / − {cfg.get('neg') or '(default prompt)'}",
            f"- seed(s): {', '.join(str((x['base'] or {}).get('seed', x['cfg'].get('seed', '—'))) for x in runs)}; "
            f"rounds completed: {', '.join(str(len(evaluated(x))) for x in runs)}"
            + "".join(f" ({x['name']} stopped: {x['stop'].get('reason')})" for x in runs if x["stop"]),
            f"- eval: {ev.get('eval_backend')}, frames {ev.get('eval_frames')}, n {ev.get('eval_n')}",
            f"- generator: {generator(cfg)}; doses kappa x {cfg.get('alphas')}; heal: lam {cfg.get('lam')}, "
            f"tau {cfg.get('tau')}, KL {cfg.get('kl_dir')}/{cfg.get('kl_agg')}/ref {cfg.get('kl_ref')}",
            "- command: `python " + (" ".join(map(str, r["argv"])) if isinstance(r["argv"], list)
                                      else str(r["argv"] or "—")) + "`", ""]


def render(runs, name, group):
    """Per section: verdict + table; for a group, the seeds' verdicts and each number per seed, mean, min–max."""
    out = header(runs, f"{name} (group of {len(runs)} seeds)" if group else name)
    out += ["Per-seed reports: " + ", ".join(f"[{r['name']}]({r['name']}/report.md)" for r in runs), ""] * group
    for title, check in zip(SECTIONS, CHECKS):
        res = [check(r) for r in runs]
        if not group:
            out += [f"## {title}", "", f"**Verdict: {res[0][0]}**: {res[0][1]}", ""] + res[0][2] + [""]
            continue
        words = [x[0] for x in res]
        verdict = f"**Verdict: {words[0]}**" if len(set(words)) == 1 else "**Verdict: unclear** (seeds disagree)"
        vals = {k: [dict(x[3]).get(k) for x in res] for k, _ in max((x[3] for x in res), key=len)}
        ok = {k: [v for v in vs if v is not None] for k, vs in vals.items()}
        rows = [[k] + vs + ([statistics.fmean(ok[k]), f"[{fmt(min(ok[k]))}, {fmt(max(ok[k]))}]"] if ok[k]
                            else [None, "—"]) for k, vs in vals.items()]
        key = f"; {rows[0][0]} mean {fmt(rows[0][-2])}, min–max {rows[0][-1]}" if rows else ""
        out += [f"## {title}", "", verdict + ": " + "; ".join(f"{r['name']}: {w}" for r, w in zip(runs, words))
                + key, ""] + table(["metric"] + [r["name"] for r in runs] + ["mean", "min–max"], rows)
        out += [""] + [f"- {r['name']}: {x[1]}" for r, x in zip(runs, res)] + [""]
    return "\n".join(out)


def write_report(run_dir):
    """Write <run_dir>/report.md (for a group folder: the aggregate, plus each seed's) and return its text."""
    seeds = seed_dirs(run_dir)
    if not seeds and not os.path.exists(os.path.join(run_dir, "rounds.jsonl")):
        raise ValueError(f"{run_dir}: not a run folder (no rounds.jsonl) and no seed<k>/ run folders in it")
    for s in seeds:  # each seed's own report too
        write_report(s)
    name = os.path.basename(os.path.normpath(run_dir))
    text = render([read_run(d) for d in seeds or [run_dir]], name, bool(seeds))
    with open(os.path.join(run_dir, "report.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":  # exit 2 with a message (no traceback) for a folder that is not a run
    code = 0
    for d in sys.argv[1:] or sys.exit("usage: python report.py results/<run_or_group> [...]"):
        try:
            write_report(d)
            print(os.path.join(d, "report.md"))
        except ValueError as e:
            print(f"report.py: {e}", file=sys.stderr)
            code = 2
    sys.exit(code)
