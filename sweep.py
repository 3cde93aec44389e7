"""sweep.py: the seed's crux. Does the KL barrier remove incoherence before it removes the trait?

The bet: steering's incoherence drift is large and erratic, the persona shift small and systematic, so a
barrier on the KL to the base model should remove the first preferentially. Measured here:
  1. generate and filter round 0 ONCE (cached in OUT/survivors.jsonl), plus as many unsteered
     survivors (the control: what fine-tuning on the model's own text does to every reader);
  2. heal the same survivors under a grid of regularisers x seeds (LoRA init and data order);
  3. read every healed model with every reader: persona_gap (statement likelihood, paired CI vs base),
     trait_fixed (the original model reading the greedy held-out answers), auth_nats (tinymfv), and
     incoherence: ppl of those answers under the base model, repetition.
Per (setting, seed): trait kept = Δreader / Δreader at λ=0 (same seed), incoherence removed =
1 - excess ppl / excess ppl at λ=0; preference = incoherence removed / trait removed (> 1: the barrier
removes incoherence preferentially). A ratio is only computed where the λ=0 shift is outside its noise.

    python sweep.py                       # the committed sweep: results/crux/ (resumes; rows already there are kept)
    python sweep.py --settings lam0 rmse_lam1 --seeds 0    # a slice
    python sweep.py --summarize           # summary.md, summary.json + frontier.png from sweep.jsonl, no model
"""
import argparse, json, math, statistics, sys, time
from pathlib import Path

import torch

import eval_mfv
import runio
import steer_heal as sh

# name -> heal overrides. Every regulariser the seed names, each alone, at two or more strengths.
SETTINGS = {  # in the order they run: the λ=0 reference and the control first, then the barrier, then the rest
    "lam0": dict(lam=0.0),
    "control_unsteered": dict(lam=0.0),  # λ=0 on the model's own unsteered survivors: the readers' null
    **{f"rmse_lam{x:g}": dict(lam=x, kl_agg="rmse") for x in (1, 10, 0.3, 3, 0.1)},
    **{f"mean_lam{x:g}": dict(lam=x, kl_agg="mean") for x in (0.3, 3)},
    **{f"anchor{x:g}": dict(lam=0.0, anchor_nll=x) for x in (0.3, 1)},
    **{f"wd{x:g}": dict(lam=0.0, weight_decay=x) for x in (3, 30)},
    **{f"spectral{x:g}": dict(lam=0.0, spectral_lam=x) for x in (0.3, 3)},
}
# The run's sizes: more survivors than a default round (the λ=0 shift of 26 survivors was noise).
SIZES = dict(min_train=144, max_batches=12, gen_batch=16, probe_n=16, max_new_tokens=48, sample_tokens=48,
             eval_n=48, eval_frames="rot")


def log(msg):
    sh.log(msg)


def save_items(path, items):  # whole or not at all: its presence is trusted
    runio.write_text(path, "".join(json.dumps({k: x[k] for k in ("user", "prompt", "ids", "text", "dose", "ppl_tail",
                                                                 "rep", "kept", "why_dropped")}) + "\n" for x in items))


def load_items(path):
    """The rows of a JSONL file; each unreadable line is logged (named), not skipped in silence."""
    rows, bad = runio.read_jsonl(path)
    for b in bad:
        log(f"{path} {b}: left out")
    return rows


def data(model, tok, cfg, out):
    """Round-0 steered survivors, the unsteered control survivors and v0: made once, then read back."""
    steered = sh.steer_layers(model, cfg.layers)
    if (out / "survivors.jsonl").exists():
        v0 = torch.load(out / "vector_r0.pt")
        return load_items(out / "survivors.jsonl"), load_items(out / "unsteered.jsonl"), v0
    t = time.time()
    v0 = sh.extract_vector(model, tok, cfg.pos, cfg.neg, sh.CONTEXTS[:cfg.n_contexts], steered)
    ref, gate = sh.calibrate_gate(model, tok, cfg, cfg.seed + 3, cfg.probe_n)
    kept, items, kappa, _ = sh.collect(model, tok, v0, cfg, gate, cfg.seed + 5, lambda _: None)
    log(sh.format_dose_table(sh.dose_table(ref + items)))
    log(f"steered: kept {len(kept)}/{len(items)} at kappa {kappa:.3f} in {time.time() - t:.0f}s")
    # the control: as many unsteered survivors of the same prompts, through the same filters
    ctl, _ = sh.calibrate_gate(model, tok, cfg, cfg.seed + 7, round(len(kept) * 1.2))
    ctl = sh.judge(ctl, cfg, gate)
    ctl = [x for x in ctl if x["kept"]][:len(kept)]
    log(f"unsteered control: {len(ctl)} survivors")
    sh.save_vector(v0, out / "vector_r0.pt")
    save_items(out / "unsteered.jsonl", ctl)
    save_items(out / "survivors.jsonl", items)  # last: its presence means the data stage completed
    return items, ctl, v0


def read_all(model, tok, cfg, ctx, stash, v0):
    """Every reader on `model` (a PeftModel or the base): one flat dict."""
    t = time.time()
    per = sh.persona_reading(model, tok, cfg, ctx)
    ans, met = sh.answer_metrics(model, tok, cfg, stash, v0, sh.EVAL_PROMPTS)
    ev = sh.mfv(model, tok, cfg)
    return dict(**per, **met, auth_nats=ev["auth_nats"], care_nats=ev["care_nats"], answer_mass=ev["answer_mass"],
                top1=ev["top1"], top1_chance=ev["top1_chance"], eval_ci=ev["eval_ci"],
                sample=ans[0]["text"][:200], read_seconds=round(time.time() - t, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/crux")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--summarize", action="store_true", help="only write summary.md, summary.json and frontier.png")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.summarize:
        return summarize(out)
    if a.threads:
        torch.set_num_threads(a.threads)
    sh.LOG["file"] = open(out / "log.txt", "a")
    cfg = sh.Config(**SIZES, name="crux", seed=0)
    cfg.vignettes_path, cfg.run_dir = sh.find_vignettes(cfg), out
    cfg.statement_rows = eval_mfv.load_statements(sh.find_statements(cfg))
    torch.set_grad_enabled(False)
    model, tok = sh.load_model(cfg.model, cfg.device, cfg.dtype)
    stash = sh.stash_base(model, cfg)
    log(f"== sweep.py {' '.join(sys.argv[1:])} | {time.strftime('%Y-%m-%d %H:%M')} | threads {torch.get_num_threads()}")
    items, ctl, v0 = data(model, tok, cfg, out)
    kept = [x for x in items if x["kept"]]
    ctx = dict(stash=stash, v0=v0, stmts=cfg.statement_rows)
    ctx["base_ll"] = eval_mfv.statement_loglik(model, tok, ctx["stmts"])
    rows_path = out / "sweep.jsonl"
    done = {(r.get("name"), r.get("seed")) for r in load_items(rows_path)}

    def append(row):  # a torn last line (a killed sweep) is moved to sweep.torn.jsonl first
        runio.append_jsonl(rows_path, [sh.finite(row)], log)

    if ("base", -1) not in done:  # the base model, and the survivors the heal trains on, read the same way
        with sh.fixed_reader(model, stash):
            tr = sh.projection(model, tok, [x["prompt"] for x in kept], [x["ids"] for x in kept], v0)
            cf = sh.projection(model, tok, [x["prompt"] for x in ctl], [x["ids"] for x in ctl], v0)
        append(dict(name="base", seed=-1, setting={}, survivors=len(kept), generated=len(items), control=len(ctl),
                    survivors_trait_fixed=tr, control_trait_fixed=cf, **read_all(model, tok, cfg, ctx, stash, v0)))
    for name in a.settings:
        for seed in a.seeds:
            if (name, seed) in done:
                continue
            t = time.time()
            c = sh.Config(**{**SIZES, **SETTINGS[name]}, name="crux", seed=seed)
            c.vignettes_path, c.run_dir, c.statement_rows = cfg.vignettes_path, out, cfg.statement_rows
            pool = ctl if name == "control_unsteered" else kept
            val, train = sh.split_by_prompt(pool, c.val_frac, seed + 9)
            pm, hs = sh.heal(model, tok, train, val, ctl, c, 0, stash, lam=c.lam)
            r = read_all(pm, tok, c, ctx, stash, v0)
            model = pm.unload()  # drop the adapter unmerged: the next setting starts from the same base
            append(dict(name=name, seed=seed, setting=SETTINGS[name], heal=hs, train=len(train), val=len(val), **r,
                        seconds=round(time.time() - t, 1)))
            log(f"[{name} seed {seed}] persona_gap {r.get('persona_gap', math.nan):.4f} ci {r.get('persona_gap_ci')} "
                f"trait_fixed {r['trait_fixed']:.3f} ppl_base {r['ppl_base']:.3f} rep {r['rep']:.3f} auth {r['auth_nats']:.3f} "
                f"| kl_{c.kl_agg} {hs['kl_agg']:.3f} barrier {hs['barrier_active']:.0%} | {time.time() - t:.0f}s")
    summarize(out)


# ---- summary: fractions relative to λ=0 of the same seed, then across seeds -------------------------
def _m(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return (statistics.fmean(xs), min(xs), max(xs)) if xs else (None, None, None)


def _f(t, nd=3):
    m, lo, hi = t
    return "—" if m is None else f"{m:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"


def summarize(out):
    rows, bad = runio.read_jsonl(out / "sweep.jsonl")
    for b in bad:
        print(f"sweep.jsonl {b}: left out of the summary", file=sys.stderr)
    base = next((r for r in rows if r["name"] == "base"), None)
    if not base:
        print("no base row yet")
        return
    by = {}
    for r in rows:
        if r["name"] != "base":
            by.setdefault(r["name"], {})[r["seed"]] = r
    zero, ctl = by.get("lam0", {}), by.get("control_unsteered", {})
    readers = [("persona_gap", +1), ("trait_fixed", +1), ("auth_nats", -1)]  # sign: + = the persona's direction

    def shift(r, key):
        return None if r.get(key) is None or base.get(key) is None else r[key] - base[key]

    # Is the λ=0 shift of a reader measurable, and which way? persona_gap: its paired CI excludes 0 in every seed,
    # all on one side; trait_fixed / auth_nats (no per-model interval): every seed on one side, >= 2 seeds.
    # tinymfv at chance (top1 within 2σ of the best constant answer) is never measurable.
    at_chance = base["top1"] <= base["top1_chance"] + 2 * math.sqrt(base["top1_chance"] * (1 - base["top1_chance"])
                                                                      / SIZES["eval_n"])
    meas = {}
    for key, sgn in readers:
        d = [shift(r, key) for r in zero.values()]
        cis = [r.get("persona_gap_ci") for r in zero.values()] if key == "persona_gap" else []
        side = {math.copysign(1, x) for x in d if x} | {1 if ci[0] > 0 else -1 if ci[1] < 0 else 0 for ci in cis if ci}
        ok = len(d) >= (1 if cis else 2) and len(side) == 1 and 0 not in side and not (key == "auth_nats" and at_chance)
        meas[key] = (("the persona's way" if side == {sgn} else "AGAINST the persona") if ok else
                     "not measurable (tinymfv at chance)" if key == "auth_nats" and at_chance else "not measurable")
    summary, table = {}, []
    for name, seeds in by.items():
        kept, rem, pref, diff = {k: [] for k, _ in readers}, [], {k: [] for k, _ in readers}, []
        for s, r in seeds.items():
            z = zero.get(s)
            if not z:
                continue
            ex0 = z["ppl_base"] - base["ppl_base"]
            removed = 1 - (r["ppl_base"] - base["ppl_base"]) / ex0 if ex0 > 0 else None
            rem.append(removed)
            for key, _ in readers:
                d, d0 = shift(r, key), shift(z, key)
                frac = d / d0 if not meas[key].startswith("not") and d is not None and d0 else None
                kept[key].append(frac)
                ok = meas[key] == "the persona's way" and None not in (removed, frac)
                pref[key].append(removed / (1 - frac) if ok and frac != 1 else None)  # no trait removed: no ratio
                if key == "trait_fixed" and ok:  # the ratio explodes when almost no trait is removed:
                    diff.append(removed - (1 - frac))  # the difference is the stable form of the same question
        summary[name] = dict(kept={k: _m(v) for k, v in kept.items()}, removed=_m(rem),
                             pref={k: _m(v) for k, v in pref.items()}, diff=_m(diff), n=len(diff),
                             verdict=("—" if name in ("lam0", "control_unsteered") or len(diff) < 3 else
                                      "preferential" if min(diff) > 0 else "not preferential" if max(diff) < 0
                                      else "mixed across seeds"))
        col = lambda key, nd=3: _f(_m([r.get(key) if "." not in key else r["heal"].get(key.split(".")[1])
                                       for r in seeds.values()]), nd)
        table.append(f"| {name} | {len(seeds)} | " + " | ".join(_f(_m([shift(r, k) for r in seeds.values()]), 3)
                                                             for k, _ in readers)
                     + f" | {col('ppl_base')} | {col('rep')} | {col('heal.kl_agg')} | {col('heal.barrier_active', 2)}"
                     + f" | {_f(summary[name]['kept']['trait_fixed'], 2)} | {_f(summary[name]['kept']['persona_gap'], 2)}"
                     + f" | {_f(summary[name]['removed'], 2)} | {_f(summary[name]['pref']['trait_fixed'], 2)}"
                     + f" | {_f(summary[name]['diff'], 2)} | {summary[name]['verdict']} |")
    lines = ["# The crux: does the KL barrier remove incoherence before it removes the trait?", "",
             f"Base model: persona_gap {base.get('persona_gap'):.4f}, trait_fixed {base['trait_fixed']:.3f}, "
             f"ppl_base {base['ppl_base']:.3f}, rep {base['rep']:.3f}, auth_nats {base['auth_nats']:.3f} "
             f"(tinymfv top1 {base['top1']:.3f} vs chance {base['top1_chance']:.3f}: "
             f"{'AT CHANCE' if at_chance else 'above chance'}). Survivors: {base['survivors']} of "
             f"{base['generated']} steered completions (their trait_fixed {base['survivors_trait_fixed']:.3f}); "
             f"unsteered control: {base['control']} (trait_fixed {base['control_trait_fixed']:.3f}).", "",
             "The λ=0 shift of each reader (measurable = persona_gap's paired 95% CI excludes 0 in every seed, "
             "on one side; trait_fixed and auth_nats: every seed on one side, ≥ 2 seeds): "
             + "; ".join(f"{k}: {v}" for k, v in meas.items()), "",
             "Per setting: mean [min, max] over seeds. Δ = healed − base. trait kept = Δ / Δ at λ=0 (same seed; "
             "only for a measurable λ=0 shift); incoherence removed = 1 − (ppl − ppl_base) / (ppl at λ=0 − "
             "ppl_base); preference = incoherence removed / trait removed (> 1 = removes incoherence "
             "preferentially; only where λ=0 moved the reader the persona's way; it explodes when little trait is "
             "removed, so the verdict uses the difference incoherence removed − trait removed: preferential when "
             "it is > 0 in every seed). — = not computed.", "",
             "| setting | seeds | Δpersona_gap | Δtrait_fixed | Δauth_nats | ppl_base | rep | kl_agg | barrier | "
             "trait kept (fixed) | trait kept (gap) | incoh. removed | preference ratio (fixed) | "
             "incoh. − trait removed (fixed) | verdict (3 seeds) |",
             "|" + "---|" * 15] + table
    lines += ["", "λ=0 and the control per seed (persona_gap: paired 95% CI of the change vs base):", ""]
    for label, group in (("λ=0 on the steered survivors", zero), ("λ=0 on unsteered survivors (control)", ctl)):
        lines += [f"- {label}, seed {s}: Δpersona_gap {shift(r, 'persona_gap'):+.4f} CI "
                  f"[{r['persona_gap_ci'][0]:+.4f}, {r['persona_gap_ci'][1]:+.4f}], Δtrait_fixed "
                  f"{shift(r, 'trait_fixed'):+.3f}, ppl_base {r['ppl_base']:.3f}, Δauth_nats {shift(r, 'auth_nats'):+.3f}"
                  for s, r in sorted(group.items())]
    lines += ["", f"{len(bad)} unreadable line(s) of sweep.jsonl left out: " + "; ".join(bad)] * bool(bad)
    runio.write_text(out / "summary.md", "\n".join(lines) + "\n")
    runio.write_text(out / "summary.json", json.dumps(dict(measurable=meas, at_chance=at_chance, settings=summary), indent=1))
    frontier(out, base, by)
    print("\n".join(lines))


def frontier(out, base, by):
    """Trait kept (Δpersona_gap) against incoherence (ppl_base of greedy answers), one point per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], "persona_gap", "Δ persona_gap vs base (higher = less deferent)"),
                           (axes[1], "trait_fixed", "Δ trait_fixed vs base (fixed reader)")):
        for name, seeds in by.items():
            xs = [r["ppl_base"] for r in seeds.values()]
            ys = [r[key] - base[key] for r in seeds.values() if r.get(key) is not None]
            if not ys:
                continue
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            color = ("k" if name == "lam0" else "tab:gray" if name.startswith("control") else
                     "tab:blue" if name.startswith("rmse") else "tab:orange" if name.startswith("mean") else "tab:green")
            ax.errorbar(mx, my, xerr=[[mx - min(xs)], [max(xs) - mx]], yerr=[[my - min(ys)], [max(ys) - my]],
                        fmt="o", color=color, capsize=3)
            ax.annotate(name.replace("rmse_", "").replace("_lam", " λ"), (mx, my), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.axvline(base["ppl_base"], color="k", ls=":", lw=1)
        ax.axhline(0, color="k", ls=":", lw=1)
        ax.set_xlabel("ppl of greedy held-out answers under the base model (incoherence →)")
        ax.set_ylabel(label)
    fig.suptitle("Crux sweep: each point a heal setting (mean over seeds, bars = min–max); dotted = base model")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)


if __name__ == "__main__":
    main()
