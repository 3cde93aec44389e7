"""plot.py: four panels from a run's files: A the map, B coherence over rounds, C what else moved, D persona_gap
(runs without tinymfv, the love persona's: A and C are the persona's first two readers over rounds).

    python plot.py results/<run> [results/<run2> ...] [--out DIR]

Reads only rounds.jsonl and config.json (through evidence.read_run), so it plots a run in progress; each
unreadable or malformed line of rounds.jsonl is named on stderr and left out.
Several runs overlay; a group folder (seed<k>/ children) is drawn as the mean over its seeds with a
min-max band. Writes plot.png and plot.svg into the first folder (or --out) and prints their paths.
Runs of different --method overlay by method: one colour per method, its seeds pooled (a group folder's, and
single run folders of that method) as mean with min-max band, written as plot_methods.png / .svg into the
folders' common parent (or --out).
"""
import argparse
import os
import sys

import matplotlib
matplotlib.use("Agg")  # no display on the research boxes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from lib.evidence import (ceiling, ci_of, get, method_of, pair, read_run,  # noqa: E402
                      seed_dirs, shift)  # the stdlib-only reader
from report_methods import by_method, common_parent  # noqa: E402  (runs of several methods pooled by method)

# steer_ref: round 0's `steered` line, or `steering_only` in older runs
BASELINES = {"prompting": ("s", "prompting"), "steer_ref": ("^", "steered r0 (steering only)"),
             "lam0": ("X", "λ=0 round 0")}
METHOD_COLOURS = {"steer-heal": "C0", "prompt-bake": "C1", "online": "C2"}  # other methods: C3, C4, ...
ROLES = {"Authority": ("-", "tab:red", "Authority (target)"), "Care": ("--", "tab:blue", "Care (target)"),
         "off": (":", "tab:green", "largest off-target mover")}  # linestyle; colour when one run is drawn


def has_eval(line):
    """A measured line: tinymfv's two numbers, or (runs that skip tinymfv: the love persona) the text readers'."""
    return line is not None and (None not in (get(line, "auth_nats"), get(line, "care_nats"))
                                 or get(line, "ppl_base") is not None)


def has_mfv(runs):
    return any(get(ln, "auth_nats") is not None for r in runs for ln in [r["base"], *r["rounds"]])


def panel_trait(ax, label, runs, color, key):
    """Panels A and C without tinymfv: one of the persona's readers over rounds (bars: its paired CI vs base for one
    run, min-max over seeds for a group), with the prompting and steered lines as open markers."""
    ks, m, lo, hi = agg(runs, lambda r, ln: get(ln, key))
    if len(runs) == 1:
        b = get(runs[0]["base"], key)
        ci = {k: pair(ln.get(f"{key}_ci")) for k, ln in by_round(runs[0]).items()}
        lo, hi = ([b + ci[k][i] if ci.get(k) and b is not None else v for k, v in zip(ks, m)] for i in (0, 1))
    ax.errorbar(ks, m, yerr=[[a - b for a, b in zip(m, lo)], [b - a for a, b in zip(m, hi)]], color=color, marker="o",
                ms=5, lw=1.8, capsize=2, elinewidth=0.8, label=label)
    for kind, (marker, _) in BASELINES.items():
        pts = [get(r[kind], key) for r in runs if r[kind] and get(r[kind], key) is not None]
        if pts:
            ax.plot(-1 if kind == "prompting" else 0, sum(pts) / len(pts), marker=marker, ms=9, mfc="none", mew=1.8,
                    color=color, ls="none")


def load(d):
    """The run dicts of a run folder (one) or a group folder (one per seed); ValueError on bad input."""
    dirs = seed_dirs(d) or ([d] if os.path.exists(os.path.join(d, "rounds.jsonl")) else [])
    if not dirs:
        raise ValueError(f"{d}: not a run folder (no rounds.jsonl) and no seed<k>/ run folders in it")
    runs = list(map(read_run, dirs))
    for r in runs:  # each unreadable or malformed line named, never skipped in silence
        for p in r["problems"]:
            print(f"plot.py: {r['dir']}: {p}", file=sys.stderr)
    runs = [r for r in runs if has_eval(r["base"]) or any(map(has_eval, r["rounds"]))]
    if not runs:
        raise ValueError(f"{d}: no eval lines yet (no base or round line with readings); nothing to plot")
    return runs


def by_round(run, evals_only=True):
    """{round: line}, base as round -1; evals_only keeps the lines that carry the tinymfv numbers."""
    lines = {-1: run["base"], **{r["round"]: r for r in run["rounds"]}}
    return {k: ln for k, ln in lines.items() if ln and (has_eval(ln) or not evals_only)}


def agg(runs, fn, evals_only=True):
    """fn(run, line) per round over runs -> rounds, mean, min, max (the band over seeds)."""
    table = {}
    for run in runs:
        for k, line in by_round(run, evals_only).items():
            v = fn(run, line)
            if v is not None:
                table.setdefault(k, []).append(v)
    ks = sorted(table)
    return (ks, [sum(table[k]) / len(table[k]) for k in ks], [min(table[k]) for k in ks],
            [max(table[k]) for k in ks])


def spread(runs, key):
    """agg of an eval field; for a single run the band is its own eval_ci where the line has one."""
    ks, mean, lo, hi = agg(runs, lambda r, ln: get(ln, key))
    if len(runs) == 1:
        ci = {k: ci_of(ln, key) for k, ln in by_round(runs[0]).items()}
        lo, hi = ([ci[k][i] if ci[k] else m for k, m in zip(ks, mean)] for i in (0, 1))
    return ks, mean, lo, hi


def map_points(run_dir):
    """Panel A's points: [(round, care_nats, auth_nats)], base as round -1 (mean over seeds for a group)."""
    runs = load(run_dir)
    ks, care, _, _ = agg(runs, lambda r, ln: get(ln, "care_nats"))
    _, auth, _, _ = agg(runs, lambda r, ln: get(ln, "auth_nats"))
    return list(zip(ks, care, auth))


def panel_map(ax, label, runs, color):
    ks, care, clo, chi = spread(runs, "care_nats")
    _, auth, alo, ahi = spread(runs, "auth_nats")
    err = lambda m, lo, hi: [[a - b for a, b in zip(m, lo)], [b - a for a, b in zip(m, hi)]]
    ax.errorbar(care, auth, xerr=err(care, clo, chi), yerr=err(auth, alo, ahi), color=color, marker="o", ms=5,
                lw=1.8, capsize=2, elinewidth=0.8, label=label)
    for k, x, y in zip(ks, care, auth):
        ax.annotate("base" if k == -1 else f"r{k}", (x, y), xytext=(4, 4), textcoords="offset points",
                    fontsize=8, color=color)
    for kind, (marker, _) in BASELINES.items():
        pts = [(get(r[kind], "care_nats"), get(r[kind], "auth_nats")) for r in runs if has_eval(r[kind])]
        pts = [p for p in pts if None not in p]  # a line with one of the two (hand-edited, old) is no point
        if pts:
            ax.plot(sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts), marker=marker, ms=9,
                    mfc="none", mew=1.8, color=color, ls="none")


def panel_coherence(ax, ax2, runs, color):
    """ppl_base ÷ the base line's (the coherence reader) against the ppl_ceil line; kept fraction and
    answer_mass share the axis (both 0-1); answer_mass is not coherence (steering raises it), drawn thin."""
    frac = lambda r, ln: get(ln, "kept") / get(ln, "generated") if get(ln, "generated") and get(ln, "kept") is not None else None
    ratio = lambda r, ln: (get(ln, "ppl_base") / get(r["base"], "ppl_base")
                           if None not in (get(ln, "ppl_base"), get(r["base"], "ppl_base")) else None)
    for fn, evals_only, style in [(ratio, True, dict(marker="o", lw=1.8)),
                                  (frac, False, dict(marker="s", ls="--", lw=1.2)),
                                  (lambda r, ln: get(ln, "answer_mass"), True, dict(marker="^", ls=":", lw=0.9))]:
        ks, mean, lo, hi = agg(runs, fn, evals_only)
        ax.plot(ks, mean, color=color, **style)
        if len(runs) > 1:
            ax.fill_between(ks, lo, hi, color=color, alpha=0.15, lw=0)
    ceil = [ceiling(r)[0] for r in runs]
    ax.axhline(sum(ceil) / len(ceil), color=color, ls=(0, (1, 3)), lw=1.5)
    ks, kl, _, _ = agg(runs, lambda r, ln: get(ln, "heal", "kl_agg"), evals_only=False)
    ax2.plot(ks, kl, color=color, marker="x", ls="-.", lw=1, alpha=0.8)


def moved(f):
    """fn(run, line) for agg: foundation f's nats minus the same run's base."""
    def fn(run, line):
        b, v = get(run["base"], "nats", f), get(line, "nats", f)
        return None if None in (b, v) else v - b
    return fn


def panel_moved(ax, runs, color, single):
    founds = list(dict.fromkeys(f for r in runs for f in ((r["base"] or {}).get("nats") or {})))
    series = {f: agg(runs, moved(f)) for f in founds}
    off = [f for f in founds if f not in ROLES and series[f][1]]
    worst = max(off, key=lambda f: abs(series[f][1][-1]), default=None)
    for f, (ks, d, lo, hi) in series.items():
        role = f if f in ROLES else "off" if f == worst else None
        if role is None:  # the rest thin and grey: a broad drift (permissivising) shows as the bundle moving
            ax.plot(ks, d, color="0.6", lw=0.9, alpha=0.7)
            continue
        ls, role_color, _ = ROLES[role]
        c = role_color if single else color
        ax.plot(ks, d, color=c, ls=ls, lw=2.4, marker="o", ms=4)
        if len(runs) > 1:
            ax.fill_between(ks, lo, hi, color=c, alpha=0.12, lw=0)
        if ks:
            ax.annotate(f + " (largest off-target)" * (role == "off"), (ks[-1], d[-1]), xytext=(5, 0),
                        textcoords="offset points", va="center", fontsize=8, color=c, fontweight="bold")


def gap_point(runs, pick):
    """Δ persona_gap vs the base line of the line pick(run), over seeds: (mean, lo, hi), or None. The bars are
    its paired CI (persona_gap_ci is an interval on this very Δ); over seeds, the envelope of CIs and values."""
    vals, los, his = [], [], []
    for r in runs:
        ln = pick(r)
        d = shift(ln, r["base"], "persona_gap") if ln else None
        if d is None:
            continue
        ci = pair(ln.get("persona_gap_ci")) if ln is not r["base"] else None
        vals.append(d)
        los.append(min(ci[0], d) if ci else d)
        his.append(max(ci[1], d) if ci else d)
    return (sum(vals) / len(vals), min(los), max(his)) if vals else None


def panel_gap(ax, label, runs, color):
    """D: Δ persona_gap from base over rounds (base, prompting, each round's steered line, each healed round).
    Returns whether anything was drawn: older runs have no persona_gap."""
    at = lambda k: lambda r: next((x for x in r["rounds"] if x["round"] == k), None)
    ks = sorted({x["round"] for r in runs for x in r["rounds"]} | {k for r in runs for k in r["steered"]})
    line = [(k, gap_point(runs, p)) for k, p in [(-1, lambda r: r["base"])] + [(k, at(k)) for k in ks]]
    line = [(k, p) for k, p in line if p]
    steered = [(k - 0.2, gap_point(runs, lambda r, k=k: r["steered"].get(k))) for k in ks]
    steered = [(x, p) for x, p in steered if p]
    prompt = gap_point(runs, lambda r: r["prompting"])
    if len(line) < 2 and not steered:  # the base alone is 0 by definition: nothing to show
        return False
    for pts, style in [(line, dict(marker="o", lw=1.8, label=label)),
                       (steered, dict(marker="^", ls="none", mfc="none", mew=1.5)),
                       ([(-0.8, prompt)] if prompt else [], dict(marker="s", ls="none", mfc="none", mew=1.5))]:
        if pts:
            xs, ms = [x for x, _ in pts], [p[0] for _, p in pts]
            ax.errorbar(xs, ms, yerr=[[p[0] - p[1] for _, p in pts], [p[2] - p[0] for _, p in pts]], color=color,
                        capsize=2, elinewidth=0.8, ms=6, **style)
    if prompt:  # prompting's level across the rounds, so the loop can be read against it
        ax.axhline(prompt[0], color=color, ls=":", lw=1)
    return True


def groups_of(run_dirs):
    """[(legend label, runs, colour)]: one per folder when they all share one method (a group folder as the mean of
    its seeds); with several methods among them, one per method, its seeds pooled over the folders."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    names = names if len(set(names)) == len(names) else [os.path.normpath(d) for d in run_dirs]
    loaded = [(name, load(d)) for name, d in zip(names, run_dirs)]
    if len({method_of(r) for _, runs in loaded for r in runs}) < 2:
        return [(name + (f" (mean of {len(runs)} seeds, band min–max)" if len(runs) > 1 else ""), runs, f"C{i}")
                for i, (name, runs) in enumerate(loaded)]
    keep = {os.path.realpath(r["dir"]) for _, runs in loaded for r in runs}  # the runs with an eval line
    methods = {m: [r for r in runs if os.path.realpath(r["dir"]) in keep] for m, runs in by_method(run_dirs).items()}
    # two group folders of one method (online-2steps, online-12steps: two settings) stay apart, named by folder
    folders = [(os.path.basename(os.path.normpath(d)), runs) for d, (_, runs) in zip(run_dirs, loaded) if seed_dirs(d)]
    shared = [m for m in {method_of(r) for _, runs in folders for r in runs}
              if sum(any(method_of(r) == m for r in runs) for _, runs in folders) > 1]
    apart = {os.path.realpath(r["dir"]): name for name, runs in folders for r in runs if method_of(r) in shared}
    split = {}
    for m, runs in methods.items():
        for r in runs:
            split.setdefault((m, apart.get(os.path.realpath(r["dir"]), m)), []).append(r)
    extra, used = iter(f"C{i}" for i in range(len(METHOD_COLOURS), 10)), set()

    def colour(m):  # the method's own colour for its first line, then the spare ones
        c = METHOD_COLOURS.get(m) if m not in used else None
        used.add(m)
        return c or next(extra)
    return [(name + (f" ({len(runs)} seeds, mean, band min–max)" if len(runs) > 1 else " (1 seed)"), runs, colour(m))
            for (m, name), runs in split.items() if runs]


def plot_runs(run_dirs, out_dir=None):
    """Draw the four panels for run or group folders; write plot.png and plot.svg (several methods: plot_methods.*
    into the folders' common parent); return their paths."""
    groups = groups_of(run_dirs)
    by_m = len({method_of(r) for _, runs, _ in groups for r in runs}) > 1
    fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(16, 12))
    b2, single, drew_gap = b.twinx(), len(groups) == 1, False
    mfv = any(has_mfv(runs) for _, runs, _ in groups)
    keys = next(([r.split(":")[0] for r in runs[0]["cfg"]["readers"]] for _, runs, _ in groups
                 if runs[0]["cfg"].get("readers")), ["sentiment"])
    key, key2 = keys[0], (keys[1:] or [None])[0]  # without tinymfv, A and C draw the persona's first two readers
    for label, runs, colour in groups:
        panel_map(a, label, runs, colour) if mfv else panel_trait(a, label, runs, colour, key)
        panel_coherence(b, b2, runs, colour)
        if mfv:
            panel_moved(c, runs, colour, single)
        elif key2:
            panel_trait(c, label, runs, colour, key2)
        drew_gap = panel_gap(d, label, runs, colour) or drew_gap

    if mfv:
        a.set(title="A. The map: base → round 0, 1, … (bars: eval_ci, or min–max over seeds)",
              xlabel="care_nats  →  more Care", ylabel="auth_nats  (lower = less Authority)")
        # the intended direction (care up = right, auth down), drawn in the lower-left corner
        a.annotate("", xy=(0.2, 0.05), xycoords="axes fraction", xytext=(0.04, 0.21),
                   arrowprops=dict(arrowstyle="-|>", color="0.3", lw=2))
        a.text(0.13, 0.15, "intended:\ncare ↑, auth ↓", transform=a.transAxes, fontsize=9, color="0.3")
    else:  # no tinymfv in these runs: the persona's own first reader
        a.set(title=f"A. {key} over rounds (the persona's first reader; bars: paired CI vs base, or min–max over seeds)",
              xlabel="round (base = −1; open markers: prompting at −1, steered r0 at 0)", ylabel=key)
    marks = [Line2D([], [], color="k", marker=m, ls="none", mfc="none", mew=1.8, label=t)
             for kind, (m, t) in BASELINES.items() if any(r[kind] for _, runs, _ in groups for r in runs)]
    a.legend(handles=a.get_legend_handles_labels()[0] + marks, fontsize=8, loc="best")

    b.set(title="B. Coherence over rounds: ppl_base of greedy answers ÷ base's", xlabel="round",
          ylabel="ppl_base ÷ base / kept fraction / answer_mass")
    b2.set_ylabel("heal kl_agg (dash-dot)")
    b.legend(handles=[Line2D([], [], color="k", marker="o", label="ppl_base ÷ base (coherence reader)"),
                      Line2D([], [], color="k", ls=(0, (1, 3)), label="ppl_ceil (stop above)"),
                      Line2D([], [], color="k", marker="s", ls="--", label="kept / generated"),
                      Line2D([], [], color="k", marker="^", ls=":", lw=0.9,
                             label="answer_mass (not coherence: steering raises it)"),
                      Line2D([], [], color="k", marker="x", ls="-.", label="heal kl_agg (right axis)")],
             fontsize=8, loc="best")

    if mfv:
        c.axhline(0, color="k", lw=0.6)
        c.set(title="C. What else moved: Δ nats from base per foundation", xlabel="round", ylabel="Δ nats vs base")
        c.legend(handles=[Line2D([], [], color=col if single else "k", lw=2.4, ls=ls, label=t)
                          for ls, col, t in ROLES.values()] +
                 [Line2D([], [], color="0.6", lw=0.9, label="other foundations")], fontsize=8, loc="best")
    elif key2:  # no tinymfv in these runs (the love persona's default): the persona's second reader
        c.set(title=f"C. {key2} over rounds (the persona's second reader; no tinymfv in these runs)",
              xlabel="round (base = −1; open markers: prompting at −1, steered r0 at 0)", ylabel=key2)
        c.legend(handles=c.get_legend_handles_labels()[0] + marks, fontsize=8, loc="best")
    else:
        c.text(0.5, 0.5, "no tinymfv in this run", transform=c.transAxes, ha="center", va="center", fontsize=11,
               color="0.4")
        c.set(xticks=[], yticks=[])
    d.axhline(0, color="k", lw=0.6)
    d.set(title="D. persona_gap − base (higher = less deferent; bars: paired CI, over seeds their envelope)",
          xlabel="round",
          ylabel="Δ persona_gap vs base")
    if drew_gap:
        d.legend(handles=d.get_legend_handles_labels()[0] +
                 [Line2D([], [], color="k", marker=m, ls=ls, mfc="none", label=t) for m, ls, t in
                  [("^", "none", "steered (round k's model under its vector" + "; prompt-bake: its teacher" *
                                any(method_of(r) == "prompt-bake" for _, runs, _ in groups for r in runs) + ")"),
                   ("s", ":", "prompting")]],
                 fontsize=8, loc="best")
    else:
        d.text(0.5, 0.5, "no persona_gap in this run", transform=d.transAxes, ha="center", va="center", fontsize=11,
               color="0.4")
        d.set(xticks=[], yticks=[])
    for ax in [a] * (not mfv) + [b] + [c] * bool(mfv or key2) + [d] * drew_gap:  # x = rounds, base at -1
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "base" if v == -1 else f"{v:g}"))
        ax.margins(x=0.15)
    fig.tight_layout()
    out_dir = out_dir or (common_parent(run_dirs) if by_m else run_dirs[0])
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, ("plot_methods." if by_m else "plot.") + ext) for ext in ("png", "svg")]
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or group folders (with seed<k>/ run folders)")
    ap.add_argument("--out", help="folder for plot.png / plot.svg (default: the first folder; runs of several "
                                  "methods: plot_methods.png / .svg in the folders' common parent)")
    args = ap.parse_args(argv)
    try:
        paths = plot_runs(args.runs, args.out)
    except ValueError as e:  # not a run, or nothing evaluated yet: a message, no traceback
        print(f"plot.py: {e}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
