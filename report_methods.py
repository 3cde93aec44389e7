"""report_methods.py: runs of different --method side by side -> report_methods.md. CLI:

    python report_methods.py results/a results/b ... [--out DIR]

Each folder gets its report.md (report.py); then DIR/report_methods.md (default DIR: their common parent): each
method's report (a group folder's seeds, or single run folders of one method, pool as that method's seeds), then
steer-heal against each rival ("vs prompt baking", "iterative vs online") at the last round all of them evaluated,
with the generation each spent to get there. Noise and chance are lib/evidence.py's rules; this file only pairs methods.
"""
import argparse
import math
import os
import sys

import report
from lib.evidence import (DEFAULT_METHOD, at_chance, base_of, ceiling, cell, chance, delta, evaluated, fiv, fmt, get, has,
                      mean, method_of, read_run, readers_of, readers_text, round_at, seed_dirs, side,
                      unreadable)
from report import LABEL, METHODS, render, table, validity
from lib import runio

# the method comparisons, each the reference first: steer-heal against each rival
PAIR_TITLES = {("steer-heal", "prompt-bake"): "vs prompt baking", ("steer-heal", "online"): "iterative vs online"}
TOKEN_TOL = 0.1     # two methods' generated tokens within 10% of each other count as matched generation


def by_method(run_dirs, label_from=None):
    """{method: [run]} over run or group folders: a group's seeds count as its method's seeds, and run folders of one
    method given separately form one group. label_from: name each run by its path from there (seed41 is in
    every group). A folder given twice, or inside another given one, counts once."""
    out, seen = {}, set()
    for d in run_dirs:
        for rd in seed_dirs(d) or [d]:
            if os.path.realpath(rd) in seen:
                continue
            seen.add(os.path.realpath(rd))
            run = read_run(rd)
            if label_from is not None:
                run["name"] = os.path.relpath(rd, label_from)
            out.setdefault(method_of(run), []).append(run)
    return out


def common_parent(run_dirs):
    """The folder the given folders share (results/ for results/a results/b): where a comparison is written."""
    ps = [os.path.normpath(str(d)) for d in run_dirs]
    try:
        return os.path.commonpath(ps) or "."
    except ValueError:  # absolute and relative paths mixed
        return os.path.commonpath([os.path.abspath(p) for p in ps])


def pairs(methods):
    """The comparisons to make: steer-heal (or the first method) against each other method, titled."""
    ref = DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]
    return [(ref, m, PAIR_TITLES.get((ref, m), f"{ref} vs {m}")) for m in methods if m != ref]


def common_rounds(runs):
    """The rounds every one of these runs evaluated (a round line with a trait reader on it)."""
    sets = [{r["round"] for r in run["rounds"] if any(get(r, k) is not None for k, _ in readers_of(runs))} for run in runs]
    return sorted(set.intersection(*sets)) if sets else []


def noise_of(runs, pick, key):
    """(mean Δ vs base, half-width) of one method's Δ at pick over its seeds, or None: evidence.delta's rule (one
    seed: its own interval; several: the largest of the seeds' spread of Δ and of either level, and the mean bootstrap
    half-width). Half-width None without a noise estimate."""
    d = delta(runs, pick, base_of, key)
    return None if not d else (d[0], None if d[1] is None else (d[2] - d[1]) / 2)


def cross(runs_a, runs_b, pick, key):
    """Method a's Δ vs base minus method b's, both at pick (each run against its own base line): (Δ, lo, hi), or
    None when a method lacks the reader there; lo/hi None without a noise estimate. The two methods' half-widths
    (noise_of) add in quadrature: they are different runs."""
    a, b = noise_of(runs_a, pick, key), noise_of(runs_b, pick, key)
    if not a or not b:
        return None
    d, h = a[0] - b[0], (None if None in (a[1], b[1]) else math.hypot(a[1], b[1]))
    return (d, d - h, d + h) if h else (d, None, None)


def tokens(runs, k):
    """(samples, completion tokens) generated in round k, and the tokens through round k, mean over seeds; None
    where a run did not record them (generated_tokens is new)."""
    def one(run, key, upto):
        vals = [get(r, key) for r in run["rounds"] if (r["round"] <= k if upto else r["round"] == k)]
        return None if not vals or None in vals else sum(vals)
    m = lambda key, upto: (lambda v: None if None in v else mean(v))([one(r, key, upto) for r in runs])
    return m("generated", False), m("generated_tokens", False), m("generated_tokens", True)


def steps(runs, k, upto=False):
    """Optimizer steps of round k's heal (heal.steps; upto: summed through round k) over seeds, as 'n' when the seeds
    agree, else 'mean [min–max]'; '—' where a run did not record them. A round's steps follow its survivors (a
    steer-heal round takes epochs x micro-batches: 9 or 12 on the default sizes), so they are read, not assumed."""
    def one(run):
        vals = [get(r, "heal", "steps") for r in run["rounds"] if (r["round"] <= k if upto else r["round"] == k)]
        return None if not vals or None in vals else sum(vals)
    vals = [one(r) for r in runs]
    if not vals or None in vals:
        return "—"
    m = mean(vals)
    return count(m) if min(vals) == max(vals) else f"{count(m)} [{count(min(vals))}–{count(max(vals))}]"


def steps_text(runs):
    """'r0 10 [9–12], r1 12; Σ 22 [21–24]': each round's optimizer steps over seeds, and their sum through the last
    round every run has."""
    ks = sorted(set.intersection(*[{r["round"] for r in run["rounds"]} for run in runs])) if runs else []
    if not ks or steps(runs, ks[-1], True) == "—":
        return "optimizer steps not recorded"
    return (", ".join(f"r{k} {steps(runs, k)}" for k in ks) + f"; Σ through r{ks[-1]} {steps(runs, ks[-1], True)}")


def count(x):
    """A sample or token count as a whole number (a mean over seeds may not be one: one decimal then)."""
    return "—" if x is None else f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def matched(a, b, runs_a, runs_b, k):
    """Whether the two methods reached round k on the same generation budget, as one sentence."""
    (sa, _, ta), (sb, _, tb) = tokens(runs_a, k), tokens(runs_b, k)
    if None in (ta, tb) or not ta:
        return (f"generated_tokens not recorded ({a}: {count(ta)}, {b}: {count(tb)} tokens through round {k}); samples "
                f"in round {k}: {a} {count(sa)}, {b} {count(sb)}: matched generation cannot be checked")
    r = tb / ta
    return (f"completion tokens generated through round {k}: {a} {count(ta)}, {b} {count(tb)} (×{fmt(r, 3)}): "
            + (f"matched generation (within {TOKEN_TOL:.0%})" if abs(r - 1) <= TOKEN_TOL else
               f"NOT matched generation: {b if r > 1 else a} generated more; the comparison is not at equal budget"))


def vs_method_reader(runs_a, runs_b, a, b, pick, key, sgn):
    """One reader's answer to "which method is ahead at this round?": (key, word, text, readable), or None if absent.
    Ahead = the difference of the two Δ vs base lies beyond its noise on the persona's side."""
    both = runs_a + runs_b
    if not has(both, [base_of, pick], key):
        return None
    A, B, D = delta(runs_a, pick, base_of, key), delta(runs_b, pick, base_of, key), cross(runs_a, runs_b, pick, key)
    text = f"{a} {LABEL[key]} {fiv(A)} vs {b} {fiv(B)}; {a} − {b} {fiv(D)}"
    if (no := unreadable(both, key, text)):
        return no
    s = side(D, sgn)
    if s is None:
        why = (f"{key} has no interval with one seed per method (no bootstrap for it): run ≥ 2 seeds each"
               if len(runs_a) == len(runs_b) == 1 else f"{key}: no noise estimate (the seeds agree exactly)")
        return key, "not measurable", f"{why}; {text}", False
    word = f"{a} ahead" if s > 0 else f"{b} ahead" if s < 0 else "not distinguishable from noise"
    return key, word, text, True


def decide_methods(results):
    """Like decide(): the first readable reader decides; two readable ones naming different leaders: unclear."""
    ok = [x for x in results if x[3]]
    if not results:
        return "not measured in these runs"
    if not ok:
        return "not measurable"
    leaders = {x[1] for x in ok if x[1].endswith(" ahead")}
    return "unclear (the readers disagree on the leader)" if len(leaders) > 1 else ok[0][1]


def vs_method(runs_a, runs_b, a, b):
    """(word, why, body): method a against method b at the last round both evaluated, every reader with its chance /
    direction check, coherence, and the trajectory round by round with the generation each method spent."""
    ks = common_rounds(runs_a + runs_b)
    if not ks or any(r["base"] is None for r in runs_a + runs_b):
        got = "; ".join(f"{m}: rounds {[r['round'] for r in evaluated(x)]}" for m, rs in ((a, runs_a), (b, runs_b))
                        for x in rs[:1])
        return "not measured in these runs", f"needs a base line and a round both methods evaluated ({got})", []
    k, pick = ks[-1], round_at(ks[-1])
    seeds = lambda rs: f"{len(rs)} seed{'s' * (len(rs) > 1)}"
    body = [f"{a} ({seeds(runs_a)}) against {b} ({seeds(runs_b)}) at round {k}, the last round every run of both "
            f"evaluated; each run's Δ is against its own base line. Noise: "
            + ("one seed per method: each Δ's own interval (persona_gap: its paired CI vs base), the two added in "
               "quadrature" if len(runs_a) == len(runs_b) == 1 else
               "per method the larger of the seeds' min–max spread and the bootstrap, the two methods' added in "
               "quadrature") + ".", "", f"Generation: {matched(a, b, runs_a, runs_b, k)}.", ""]
    res = [x for x in (vs_method_reader(runs_a, runs_b, a, b, pick, key, sgn) for key, sgn in readers_of(runs_a + runs_b)) if x]
    checks = {key: at_chance(runs_a + runs_b, key)[1] for key, _ in readers_of(runs_a + runs_b)}
    rows = [[x[0], checks[x[0]], fiv(delta(runs_a, pick, base_of, x[0])), fiv(delta(runs_b, pick, base_of, x[0])),
             fiv(cross(runs_a, runs_b, pick, x[0])), x[1]] for x in res]
    if has(runs_a + runs_b, [base_of, pick], "care_nats"):
        rows.append(["care_nats", "off-target: decides nothing", fiv(delta(runs_a, pick, base_of, "care_nats")),
                     fiv(delta(runs_b, pick, base_of, "care_nats")), fiv(cross(runs_a, runs_b, pick, "care_nats")),
                     "—"])
    body += [f"Readers at round {k} (Δ vs base; persona direction: gap ↑, trait_fixed ↑, auth ↓):", ""]
    body += table(["reader", "chance / direction check", a, b, f"{a} − {b}", "verdict"], rows)
    # coherence: each method against its own ceiling; answer_mass shown, decides nothing (steering raises it)
    over = {m: [r["name"] for r in rs if None not in (ceiling(r)[1], get(pick(r), "ppl_base"))
                and get(pick(r), "ppl_base") > ceiling(r)[1]] for m, rs in ((a, runs_a), (b, runs_b))}
    body += ["", f"Coherence at round {k} (ppl_base of the greedy held-out answers under the base model; ceiling = "
                 "ppl_ceil × base ppl_base; answer_mass decides nothing):", ""]
    body += table(["", "ppl_base", "ceiling", "past ceiling", "answer_mass", "Δppl_base vs base"],
                  [[m, cell(rs, pick, "ppl_base"), cell(rs, lambda r: {"c": ceiling(r)[1]}, "c"),
                    ", ".join(over[m]) or "no", cell(rs, pick, "answer_mass"),
                    fiv(delta(rs, pick, base_of, "ppl_base"))]
                   for m, rs in ((a, runs_a), (b, runs_b))]
                  + [[f"{a} − {b}", None, None, None, None, fiv(cross(runs_a, runs_b, pick, "ppl_base"))]])
    # round by round, with the samples and tokens each method generated to get there
    body += ["", f"Round by round ({a} − {b} of Δ vs base per reader; samples / completion tokens generated in the "
                 "round, tokens cumulative in brackets; optimizer steps of the round, summed through it after Σ; over "
                 "seeds: mean [min–max]):", ""]
    rows = []
    for j in ks:
        (sa, ta, ca), (sb, tb, cb) = tokens(runs_a, j), tokens(runs_b, j)
        rows.append([j, f"{count(sa)} / {count(sb)}", f"{count(ta)} [{count(ca)}] / {count(tb)} [{count(cb)}]",
                     f"{steps(runs_a, j)} (Σ {steps(runs_a, j, True)}) / "
                     f"{steps(runs_b, j)} (Σ {steps(runs_b, j, True)})"]
                    + [fiv(cross(runs_a, runs_b, round_at(j), key)) for key, _ in readers_of(runs_a + runs_b)]
                    + [f"{fmt(cell(runs_a, round_at(j), 'ppl_base'))} / {fmt(cell(runs_b, round_at(j), 'ppl_base'))}"])
    body += table(["round", f"samples {a} / {b}", f"tokens {a} / {b}", f"optimizer steps {a} / {b}"]
                  + [LABEL[key] for key, _ in readers_of(runs_a + runs_b)]
                  + [f"ppl_base {a} / {b}"], rows)
    word = decide_methods(res)
    lead = next((m for m in (a, b) if word == f"{m} ahead"), None)
    why = readers_text(res)
    if lead and over[lead]:  # a lead bought with incoherence is no lead
        word, why = "not a win", (f"{lead} leads but is past the ppl ceiling at round {k} ({', '.join(over[lead])}); "
                                  + why)
    return word, why, body


def demote(text):
    """Every markdown heading one level down, so a whole report nests under a heading of the comparison."""
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.split("\n"))


def write_methods_report(run_dirs, out=None):
    """When the given folders hold more than one method: write OUT/report_methods.md (OUT: --out, else the folders'
    common parent) with each method's report, then steer-heal against each rival; return its path. One method:
    None (each folder's own report.md says it all)."""
    out = str(out or common_parent(run_dirs))
    groups = by_method(run_dirs, label_from=out)
    methods = list(groups)
    if len(methods) < 2:
        return None
    cmp = [(a, b, title, *vs_method(groups[a], groups[b], a, b)) for a, b, title in pairs(methods)]
    seeds = lambda rs: ", ".join(r["name"] for r in rs)
    text = [f"# methods compared: {', '.join(methods)}", ""]
    text += [f"- {m} ({len(rs)} run{'s' * (len(rs) > 1)}: {seeds(rs)}; rounds evaluated "
             f"{', '.join(str(len(evaluated(r))) for r in rs)}; optimizer steps a round {steps_text(rs)}): "
             f"{METHODS.get(m, '(not a method this report knows)')}"
             for m, rs in groups.items()]
    allruns = [r for rs in groups.values() for r in rs]
    text += [f"- tinymfv reader (auth_nats): {chance(allruns)[1]}",
             *validity(allruns),
             "- verdict words: '<method> "
             "ahead', 'not distinguishable from noise', 'not measurable' (reader at chance or blind to direction, or "
             "no interval)", "", "Verdicts:"]
    text += [f"- {title} ({a} vs {b}): **{word}**" for a, b, title, word, _, _ in cmp] + [""]
    for m, rs in groups.items():
        text += [demote(render(rs, m, len(rs) > 1, link_from=out)), ""]
    for a, b, title, word, why, body in cmp:
        text += [f"## {title} ({a} vs {b})", "", f"**Verdict: {word}**: {why}", ""] + body + [""]
    path = os.path.join(out, "report_methods.md")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(text))
    return path


def main(argv=None):
    """Each folder's report.md, then the comparison. Exit 2 for a folder that is not a run, 4 on a failed write."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or group folders (with seed<k>/ run folders)")
    ap.add_argument("--out", help="folder for report_methods.md (default: the folders' common parent)")
    args = ap.parse_args(argv)
    code, good = 0, []
    for d in args.runs:
        try:
            report.write_report(d)
            print(os.path.join(d, "report.md"))
            good.append(d)
        except ValueError as e:
            print(f"report_methods.py: {e}", file=sys.stderr)
            code = 2
        except runio.WriteFailed as e:
            print(f"report_methods.py: {e}", file=sys.stderr)
            code = 4
    path = write_methods_report(good, args.out) if good else None
    print(path or "report_methods.py: the folders hold one method; nothing to compare", file=sys.stdout if path else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
