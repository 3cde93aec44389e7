"""sweep.py: the seed's crux. Does the KL barrier remove incoherence before it removes the trait?

The bet: steering's incoherence drift is large and erratic, the persona shift small and systematic, so a
barrier on the KL to the base model should remove the first preferentially. Measured here:
  1. generate and filter round 0 ONCE (cached in OUT/survivors.jsonl), plus as many unsteered
     survivors (the control: what fine-tuning on the model's own text does to every reader);
  2. heal the same survivors under a grid of regularisers x seeds (LoRA init and data order);
  3. read every healed model with every reader: persona_gap (statement likelihood, paired CI vs base),
     trait_fixed (the original model reading the greedy held-out answers), auth_nats (tinymfv), and
     incoherence: ppl of those answers under the base model, repetition.
Per setting, against λ=0 of the same seed, two separate claims, each with its own noise (evidence.py's rule:
the seeds' spread or the rows' paired bootstrap, whichever is larger): incoherence removed (ppl of the answers
lower than λ=0's) and trait kept (the reader not lower than λ=0's). A gain in trait is not removed incoherence.
A reader decides only when it passes evidence.py's checks and λ=0 moved it beyond noise the persona's way.

    python sweep.py                       # the committed sweep: results/crux/ (resumes; rows already there are kept)
    python sweep.py --settings lam0 rmse_lam1 --seeds 0    # a slice
    python sweep.py --summarize           # summary.md, summary.json + frontier.png from sweep.jsonl, no model

The crux over rounds: whole steer_heal runs (warmth persona), one per (setting, seed), into
results/crux_rounds/<setting>/seed<k>/ through grid.py's launchers (one at a time by default; --launcher local
--jobs N; --launcher slurm ...); resumable (done runs are skipped, unfinished ones --resume'd):

    python sweep.py --over-rounds [--settings lam0 rmse ...] [--seeds 0 1 2] [--rounds 4] [-- steer_heal flags]
    python sweep.py --over-rounds --launcher slurm --partition gpu --time 60 --mem 32 -- --device cuda
    python sweep.py --over-rounds --summarize    # summary.md, summary.json, frontier.png from the runs, no model
"""
import argparse, json, math, statistics, sys, time
from pathlib import Path

import torch

import cli
import eval_mfv
import evidence  # the one rule for noise, chance and direction (issue 22: it lives once)
import report  # LABEL, and each setting's group report
import runio
import readers
import models
import grid  # the one driver of grids of whole runs (--over-rounds)
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
SEED = dict(sh.PERSONAS["seed"], persona="seed")  # the single-round sweep's persona: its readers read deference


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
    log(runio.format_dose_table(sh.dose_table(ref + items)))
    log(f"steered: kept {len(kept)}/{len(items)} at kappa {kappa:.3f} in {time.time() - t:.0f}s")
    # the control: as many unsteered survivors of the same prompts, through the same filters
    ctl, _ = sh.calibrate_gate(model, tok, cfg, cfg.seed + 7, round(len(kept) * 1.2))
    ctl = sh.judge(ctl, cfg, gate)
    ctl = [x for x in ctl if x["kept"]][:len(kept)]
    log(f"unsteered control: {len(ctl)} survivors")
    models.save_vector(v0, out / "vector_r0.pt")
    save_items(out / "unsteered.jsonl", ctl)
    save_items(out / "survivors.jsonl", items)  # last: its presence means the data stage completed
    return items, ctl, v0


def read_all(model, tok, cfg, ctx, stash, v0):
    """Every reader on `model` (a PeftModel or the base): one flat dict."""
    t = time.time()
    per = sh.persona_reading(model, tok, cfg, ctx)
    per.pop("_ll", None)
    ans, met = sh.answer_metrics(model, tok, cfg, stash, v0, sh.EVAL_PROMPTS)
    ev = sh.mfv(model, tok, cfg)
    return dict(**per, **met, auth_nats=ev["auth_nats"], care_nats=ev["care_nats"], answer_mass=ev["answer_mass"],
                top1=ev["top1"], top1_chance=ev["top1_chance"], eval_ci=ev["eval_ci"],
                sample=ans[0]["text"][:200], read_seconds=round(time.time() - t, 1))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # --over-rounds: flags for every new steer_heal run
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="default: results/crux, or results/crux_rounds with --over-rounds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", help=f"single round: {', '.join(SETTINGS)} (default all); over "
                                                  f"rounds: {', '.join(ROUND_SETTINGS)} (default all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--summarize", action="store_true", help="only write summary.md, summary.json and frontier.png")
    ap.add_argument("--over-rounds", action="store_true", help="the crux over rounds: whole steer_heal runs into "
                                                               "OUT/<setting>/seed<k>/, through grid.py's --launcher")
    ap.add_argument("--rounds", type=int, default=4, help="--over-rounds: rounds per run (fewer if the ppl ceiling "
                                                          "stops it)")
    ap.add_argument("--dry-run", action="store_true", help="--over-rounds: print the commands, run nothing")
    grid.add_launcher_args(ap)  # --over-rounds: --launcher serial|local|slurm|submitit-local, --jobs, SLURM's flags
    a = ap.parse_args(argv)
    known = ROUND_SETTINGS if a.over_rounds else SETTINGS
    a.settings = a.settings or list(known)
    if set(a.settings) - set(known):
        ap.error(f"--settings {' '.join(sorted(set(a.settings) - set(known)))}: choose from {', '.join(known)}")
    out = Path(a.out or ("results/crux_rounds" if a.over_rounds else "results/crux"))
    if not a.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    if a.over_rounds:
        return summarize_rounds(out, a.rounds) if a.summarize else run_rounds(a, out, extra)
    if a.summarize:
        return summarize(out)
    if a.threads:
        torch.set_num_threads(a.threads)
    sh.LOG["file"] = open(out / "log.txt", "a")
    cfg = sh.Config(**SIZES, **SEED, name="crux", seed=0)  # the seed persona reads tinymfv too
    cfg.vignettes_path, cfg.run_dir = cli.find_vignettes(cfg), out
    cfg.statement_rows = eval_mfv.load_statements(cli.find_statements(cfg))
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
        runio.append_jsonl(rows_path, [runio.finite(row)], log)

    if ("base", -1) not in done:  # the base model, and the survivors the heal trains on, read the same way
        with sh.fixed_reader(model, stash):
            tr = readers.mean(sh.projection(model, tok, [x["prompt"] for x in kept], [x["ids"] for x in kept], v0))
            cf = readers.mean(sh.projection(model, tok, [x["prompt"] for x in ctl], [x["ids"] for x in ctl], v0))
        append(dict(name="base", seed=-1, setting={}, survivors=len(kept), generated=len(items), control=len(ctl),
                    survivors_trait_fixed=tr, control_trait_fixed=cf, **read_all(model, tok, cfg, ctx, stash, v0)))
    for name in a.settings:
        for seed in a.seeds:
            if (name, seed) in done:
                continue
            t = time.time()
            c = sh.Config(**{**SIZES, **SEED, **SETTINGS[name]}, name="crux", seed=seed)
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


# ---- the bet as two claims, each against λ=0 of the same seed, with evidence.py's noise rule ---------------
# "Removes incoherence" and "keeps the trait" are separate claims, each decided by its own interval (evidence.delta:
# the larger of the seeds' spread and the lines' paired bootstrap); a gain in trait is not removed incoherence.
# A pair is one seed: its base line, the setting's line `s` and λ=0's `z` (the same round, over rounds), plus what
# evidence.py's checks read (name, cfg, steered, prompting), so its functions take a list of pairs as runs.
B, S, Z = (lambda p: p["base"]), (lambda p: p["s"]), (lambda p: p["z"])
BET = ("preferential", "not preferential", "not distinguishable", "no incoherence removed", "no effect beyond noise",
       "not measurable")  # the words bet() answers with


def pair(base, s, z, name, run=None):
    run = run or {}
    return dict(name=name, base=base, s=s, z=z, cfg=run.get("cfg") or {}, steered=run.get("steered") or {},
                prompting=run.get("prompting"), rounds=run.get("rounds") or [])


def readable(runs, key, sgn):
    """(ok, why): evidence.py's rule (tinymfv or the probe at chance, the direction check). Lines that carry no
    direction check at all (the single-round sweep's rows: no steered line) cannot run its direction part: then
    the reader is read and `why` says the direction was not checked."""
    bad, why = evidence.at_chance(runs, key)
    checked = any(isinstance(((ln or {}).get("direction") or {}).get(key), dict)
                  for r in runs for ln in [r.get("prompting"), *(r.get("steered") or {}).values()])
    if bad and not checked and why == evidence.direction(runs, key, sgn)[1]:  # failed only for want of a check
        return True, "direction not checked (these lines carry no direction check)"
    return not bad, why


def gate(ok_why, pairs, key, sgn):
    """(ok, why): the reader may decide the bet here: it is readable and λ=0 moved it beyond noise the persona's way
    (a reader λ=0 did not move, or moved against the persona, has no trait to keep)."""
    if not ok_why[0]:
        return False, ok_why[1]
    iv = evidence.delta(pairs, Z, B, key)
    s = evidence.side(iv, sgn)
    if s != 1:
        return False, (f"λ=0 moved it {evidence.fiv(iv)}: " + ("no noise estimate" if s is None else "within noise"
                                                             if s == 0 else "AGAINST the persona"))
    return True, f"{ok_why[1]}; λ=0 moved it {evidence.fiv(iv)}, the persona's way beyond noise"


def frac(num, den):
    """num / den's mean as a fraction ± its half-width: (Δ S−Z, lo, hi) over λ=0's own shift (Δ Z−base)."""
    if not num or not den or not den[0]:
        return None
    return num[0] / den[0], (None if num[1] is None else (num[2] - num[1]) / 2 / abs(den[0]))


def bet(pairs, key, sgn):
    """One reader's answer to "does the setting remove incoherence before the trait?" against λ=0, as a dict:
    word (BET), why, and the intervals. Incoherence = ppl_base of the greedy held-out answers under the base model.
    Claim 1, incoherence removed: ppl lower than λ=0's beyond noise; without it the setting cannot be preferential.
    Claim 2, before the trait: the fraction of λ=0's excess ppl removed exceeds the fraction of λ=0's trait shift
    removed by more than the noise of the two fractions; a trait above λ=0's counts as none removed (a gain in trait
    is not removed incoherence), and a trait loss within its noise is not evidence that the trait was kept."""
    ex, zt = evidence.delta(pairs, Z, B, "ppl_base"), evidence.delta(pairs, Z, B, key)
    inc, tr = evidence.delta(pairs, S, Z, "ppl_base"), evidence.delta(pairs, S, Z, key)
    neg = lambda iv: iv and (-iv[0], None if iv[1] is None else -iv[2], None if iv[1] is None else -iv[1])
    removed, lost = frac(neg(inc), ex), frac(neg(tr), zt)  # fractions of λ=0's own shifts from base, ± noise
    out = dict(key=key, zero_ppl=ex, zero_trait=zt, d_ppl=inc, d_trait=tr, removed=removed,
               kept=lost and (1 - lost[0], lost[1]))
    say = lambda w, why: dict(out, word=w, why=why)
    nums = f"Δppl_base vs λ=0 {evidence.fiv(inc)}, {report.LABEL.get(key, key)} vs λ=0 {evidence.fiv(tr)}"
    if evidence.side(ex, 1) != 1:
        return say("not measurable", f"λ=0 adds no incoherence beyond noise (Δppl_base vs base {evidence.fiv(ex)}): "
                                     "nothing to remove")
    si, st = evidence.side(inc, -1), evidence.side(tr, sgn)  # si +1: ppl lower (incoherence removed); st -1: trait lost
    if None in (si, st, removed, lost) or None in (removed[1], lost[1]):
        return say("not measurable", f"no noise estimate (one seed, no paired interval); {nums}")
    if si < 0:
        return say("not preferential", f"raises incoherence beyond noise; {nums}")
    if si == 0:  # no incoherence removed: whatever the trait did, the barrier did not do its job
        w, why = (("no effect beyond noise", "neither moves beyond noise") if st == 0 else
                  ("no incoherence removed", "the trait rose, the incoherence did not fall beyond noise: a gain in "
                                             "trait is not removed incoherence") if st > 0 else
                  ("not preferential", "removes the trait, not the incoherence"))
        return say(w, f"{why}; {nums}")
    ri, rt, band = removed[0], max(lost[0], 0.0), math.hypot(removed[1], lost[1])
    d = (f"fraction of λ=0's shift removed: incoherence {pm(removed)}, trait {pm(lost)}"
         + " (counted as 0: the trait rose)" * (lost[0] < 0) + f"; difference {ri - rt:+.2f} ± {band:.2f}; {nums}")
    return say(*(("preferential", "removes incoherence beyond noise, and more of it than of the trait: " + d)
                 if ri - rt > band else
                 ("not preferential", "removes incoherence, but more of the trait: " + d) if ri - rt < -band else
                 ("not distinguishable", "removes incoherence beyond noise, but whether before the trait is within "
                                         "noise: " + d)))


def decide_bet(pairs, gates, readers):
    """The verdict on the bet from the readers that pass (gates), in the persona's order: the first decides; a second
    that passes and says the opposite makes it unclear. None passes: not measurable."""
    res = [bet(pairs, k, s) for k, s in readers if gates[k][0]]
    if not res:
        return dict(word="not measurable", why="no reader of this persona passes its checks: " + "; ".join(
            f"{k}: {gates[k][1]}" for k, _ in readers), by={})
    words = {r["word"] for r in res if r["word"] != "not measurable"}
    word = ("unclear (the readers disagree)" if {"preferential", "not preferential"} <= words else res[0]["word"])
    return dict(word=word, why=f"decided by {res[0]['key']}: {res[0]['why']}", by={r["key"]: r for r in res})


CLAIMS = ("Two claims per setting, each against λ=0 of the same seed (and round), each with its own noise (evidence.delta: "
          "the larger of the seeds' min–max spread of the difference, of either side's level, and the lines' paired "
          "bootstrap where they carry one). **1. Incoherence removed**: ppl_base (greedy held-out answers under the base "
          "model) lower than λ=0's beyond noise. **2. Before the trait**: the fraction of λ=0's excess ppl removed "
          "exceeds the fraction of λ=0's trait shift removed by more than the two fractions' noise (a trait above "
          "λ=0's counts as none removed: a gain in trait is not removed incoherence). Verdicts: *preferential* = 1 "
          "and 2; *not distinguishable* = 1, but 2 is within noise; *not preferential* = raises incoherence, removes "
          "only the trait, or more of the trait than of the incoherence; *no incoherence removed* = only the trait "
          "moved (up); *no effect beyond noise*; *not measurable* = no reader passes, or λ=0 adds no incoherence "
          "beyond noise. Columns: incoh. removed = −Δppl / λ=0's excess ppl, trait kept = 1 + Δtrait / λ=0's trait "
          "shift (means over seeds, ± the noise over λ=0's mean shift).")


def pm(t, nd=2):
    """'m ± h' of a (fraction, half-width)."""
    return "—" if not t else f"{t[0]:.{nd}f}" + ("" if t[1] is None else f" ± {t[1]:.{nd}f}")


def ivs(iv, nd=3):
    """'Δ [lo, hi]' with fixed decimals (evidence.fiv's 4 significant digits are too many for a table)."""
    if not iv:
        return "—"
    return f"{iv[0]:+.{nd}f}" + ("" if iv[1] is None else f" [{iv[1]:+.{nd}f}, {iv[2]:+.{nd}f}]")


def spread(vals, nd=3):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "—"
    m = statistics.fmean(vals)
    return f"{m:.{nd}f}" if len(vals) == 1 or max(vals) == min(vals) else f"{m:.{nd}f} [{min(vals):.{nd}f}, {max(vals):.{nd}f}]"


# ---- the single-round summary (results/crux/sweep.jsonl) -------------------------------------------------------
def summarize(out):
    rows, bad = runio.read_jsonl(out / "sweep.jsonl")
    for b in bad:
        print(f"sweep.jsonl {b}: left out of the summary", file=sys.stderr)
    base = next((r for r in rows if r["name"] == "base"), None)
    if not base:
        print("no base row yet")
        return
    base = dict(base, kind="base", eval_n=base.get("eval_n", SIZES["eval_n"]))  # the sweep ran at SIZES' eval_n
    by = {}
    for r in rows:
        if r["name"] != "base":
            by.setdefault(r["name"], {})[r["seed"]] = dict(r, kind="round")
    zero, ctl = by.get("lam0", {}), by.get("control_unsteered", {})
    pairs = {name: [pair(base, r, zero[s], f"seed{s}") for s, r in sorted(seeds.items()) if s in zero]
             for name, seeds in by.items()}
    zp = pairs.get("lam0", [])
    readers = evidence.readers_of(zp or [pair(base, None, None, "")])
    gates = {k: gate(readable(zp, k, s), zp, k, s) if zp else (False, "no λ=0 rows") for k, s in readers}
    passed = [(k, s) for k, s in readers if gates[k][0]]
    summary, table, context = {}, [], []
    for name, ps in pairs.items():
        ref = name in ("lam0", "control_unsteered")  # the reference, and the readers' null (other survivors)
        v = (dict(word="—", why="the reference" if name == "lam0" else "the readers' null: healed on other data", by={})
             if ref else decide_bet(ps, gates, readers))
        # the incoherence columns are the same whichever reader decides; shown even when none passes
        b0 = None if ref or not zp else next(iter(v["by"].values()), None) or bet(ps, *(passed or readers)[0])
        summary[name] = dict(verdict=v["word"], why=v["why"], seeds=len(ps),
                             removed=b0 and b0["removed"], d_ppl=b0 and b0["d_ppl"],
                             readers={k: dict(word=x["word"], d=x["d_trait"], kept=x["kept"]) for k, x in v["by"].items()})
        seeds = by[name]
        col = lambda key: spread([r.get(key) if "." not in key else (r.get("heal") or {}).get(key.split(".")[1])
                                  for r in seeds.values()])
        cells = [name, str(len(seeds)), col("ppl_base"), ivs(b0 and b0["d_ppl"]), pm(b0 and b0["removed"])]
        for k, _ in passed:
            x = v["by"].get(k)
            cells += [ivs(x and x["d_trait"]), pm(x and x["kept"])]
        table.append("| " + " | ".join(cells + [col("heal.barrier_active"), v["word"]]) + " |")
        context.append("| " + " | ".join([name, str(len(seeds))] + [spread([evidence.shift(r, base, k) for r in seeds.values()])
                                                                     for k, _ in readers]
                                         + [col("rep"), col("heal.kl_agg")]) + " |")
    at = evidence.chance([pair(base, None, None, "")])
    lines = ["# The crux: does the KL barrier remove incoherence before it removes the trait?", "",
             f"Base model: persona_gap {base.get('persona_gap'):.4f}, trait_fixed {base['trait_fixed']:.3f}, "
             f"ppl_base {base['ppl_base']:.3f}, rep {base['rep']:.3f}, auth_nats {base['auth_nats']:.3f} ({at[1]}). "
             f"Survivors: {base['survivors']} of {base['generated']} steered completions (their trait_fixed "
             f"{base['survivors_trait_fixed']:.3f}); unsteered control: {base['control']} (trait_fixed "
             f"{base['control_trait_fixed']:.3f}).", "",
             "Which readers may decide (evidence.py's rule: not at chance, direction check where the lines carry one; "
             "then λ=0 must move the reader beyond noise the persona's way, or there is no trait to keep):", ""]
    lines += [f"- {k} ({'+' if s > 0 else '−'}): {'PASSES' if gates[k][0] else 'does not decide'}: {gates[k][1]}"
              for k, s in readers]
    lines += ["", "These rows carry no direction check (the sweep reads no steered line), so a reader that passes here "
              "reads a shift along its own ruler (trait_fixed: the round-0 vector v0), not evidence that it tells the "
              "persona from its opposite: on this model the seed persona's readers fail that check (results/readers/, "
              "the README)."] * any(gates[k][1].startswith("direction not checked") for k, _ in passed)
    lines += ["", CLAIMS, ""]
    hdr = ["setting", "seeds", "ppl_base", "Δppl_base vs λ=0", "incoh. removed"]
    for k, _ in passed:
        hdr += [f"Δ{k} vs λ=0", f"trait kept ({k})"]
    hdr += ["barrier", "verdict"]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)] + table
    if not passed:
        lines += ["", "(no reader passes, so no trait column is shown)"]
    lines += ["", "What every reader read (Δ vs base, mean [min, max] over seeds; context only: a reader decides "
                  "nothing unless it passes above):", "",
              "| " + " | ".join(["setting", "seeds"] + [f"Δ{k}" for k, _ in readers] + ["rep", "kl_agg"]) + " |",
              "|" + "---|" * (len(readers) + 4)] + context
    lines += ["", "Verdicts, with the numbers that decide them:", ""]
    lines += [f"- {name}: **{x['verdict']}**: {x['why']}" for name, x in summary.items()]
    lines += ["", "λ=0 and the control per seed (persona_gap: paired 95% CI of the change vs base):", ""]
    for label, group in (("λ=0 on the steered survivors", zero), ("λ=0 on unsteered survivors (control)", ctl)):
        lines += [f"- {label}, seed {s}: Δpersona_gap {evidence.shift(r, base, 'persona_gap'):+.4f} CI "
                  f"[{r['persona_gap_ci'][0]:+.4f}, {r['persona_gap_ci'][1]:+.4f}], Δtrait_fixed "
                  f"{evidence.shift(r, base, 'trait_fixed'):+.3f}, ppl_base {r['ppl_base']:.3f}, Δauth_nats "
                  f"{evidence.shift(r, base, 'auth_nats'):+.3f}" for s, r in sorted(group.items())]
    lines += ["", f"{len(bad)} unreadable line(s) of sweep.jsonl left out: " + "; ".join(bad)] * bool(bad)
    runio.write_text(out / "summary.md", "\n".join(lines) + "\n")
    runio.write_text(out / "summary.json", json.dumps(runio.finite(dict(
        readers={k: dict(sign=s, passes=gates[k][0], why=gates[k][1]) for k, s in readers},
        at_chance=at[0], settings=summary)), indent=1))
    frontier(out, base, by, {k: gates[k][0] for k, _ in readers})
    print("\n".join(lines))
    return summary


def frontier(out, base, by, passes):
    """Each reader's shift against incoherence (ppl_base of greedy answers), one point per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in ("trait_fixed", "persona_gap") if k in passes]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 5), squeeze=False)
    for ax, key in zip(axes[0], keys):
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
        ax.set_ylabel(f"Δ {key} vs base" + ("" if passes[key] else " (does NOT pass: decides nothing)"))
    fig.suptitle("Crux sweep: each point a heal setting (mean over seeds, bars = min–max); dotted = base model")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)


# ---- the crux over rounds: whole steer_heal runs, a grid for grid.py ------------------------------------------
# name -> steer_heal flags. λ=0 (NLL only) is the reference; the barrier and the rivals at the strengths.
ROUND_SETTINGS = {
    "lam0": ["--lam", "0"],
    "rmse": ["--kl-agg", "rmse", "--lam", "1"],  # the default barrier, spelled out so the record says so
    "mean": ["--kl-agg", "mean", "--lam", "1"],  # the mean aggregate at the same λ
    "spectral3": ["--spectral-lam", "3", "--lam", "0"],  # the single-round sweep's best
    "anchor1": ["--anchor-nll", "1", "--lam", "0"],
    "prev": ["--kl-ref", "prev", "--kl-agg", "rmse", "--lam", "1"],  # the barrier to the round's starting model
}
# every run: the warmth persona (readers outside the model can see it); no prompting line (the steered line's ± dose
# direction check stays, and the summary does not need prompting)
ROUND_FLAGS = ["--persona", "love", "--no-baselines"]
STEER_HEAL = Path(__file__).resolve().parent / "steer_heal.py"
SAME = {"seed", "seeds", "name", "out", "resume", "overwrite", "rounds", "lam", "kl_agg", "spectral_lam",
        "anchor_nll", "kl_ref", "device", "compile"}  # config keys runs of one grid may differ in


run_state = grid.run_state  # 'new', 'resume' or 'done': the driver's rule, one place


def round_grid(a, out, extra):
    """The crux over rounds as grid.py's data: one job per (setting, seed), seed-major (a grid stopped early still
    has every setting at its first seeds); `extra` flags go to new runs only (--resume refuses flags that change a
    run)."""
    return dict(out=str(out), seeds=a.seeds, rounds=a.rounds, flags=ROUND_FLAGS,
                settings={name: dict(script=str(STEER_HEAL), flags=[*ROUND_SETTINGS[name], *extra])
                          for name in a.settings})


def run_rounds(a, out, extra):
    """Every (setting, seed) run not yet done, through grid.py's --launcher (serial by default: two processes on two
    cores run 5-15x slower), a subprocess each (a crash or a kill leaves the others intact) that resumes a half-done
    run; a starved run (exit 3) is a result, on the record; after a crash no new run starts (--keep-going). Then the
    summary, from whatever has finished."""
    left = grid.launch(grid.jobs_of(round_grid(a, out, extra)), a, out / "grid_logs")
    if a.dry_run or a.no_wait:
        return
    summarize_rounds(out, a.rounds)
    if left:
        raise SystemExit(f"sweep: {left} run(s) failed or did not run (listed above, each failure with its log); "
                         "rerun the same command to resume")


def seed_of(run):
    return (run["cfg"] or {}).get("seed", (run["base"] or {}).get("seed"))


def under_ceiling(run):
    """Rounds completed before the first past the ppl ceiling (evidence.ceiling: ppl_ceil x base ppl_base)."""
    ceil, n = evidence.ceiling(run)[1], 0
    for r in run["rounds"]:
        if ceil is None or evidence.get(r, "ppl_base") is None or evidence.get(r, "ppl_base") > ceil:
            break
        n += 1
    return n


def finished(run, want):
    """Why the run ended: its stop line, all `want` rounds, or 'in progress'."""
    if run["stop"]:
        return f"stopped at round {run['stop'].get('round')}: {run['stop'].get('reason')}"
    return f"ran all {len(run['rounds'])} rounds" if len(run["rounds"]) >= want else "in progress"


def path_of(run, key):
    """The run's path through (ppl_base, Δreader vs base), from the base model through each round."""
    b = run["base"]
    pts = [(evidence.get(b, "ppl_base"), 0.0)] + [(evidence.get(r, "ppl_base"), evidence.shift(r, b, key)) for r in run["rounds"]]
    return [p for p in pts if None not in p]


def best_at(path, p):
    """The most trait a path reached while its ppl was at most p (points, and segments crossing p interpolated):
    the frontier at that ppl. None if no point is that coherent."""
    got = [y for x, y in path if x <= p]
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        if min(x0, x1) < p < max(x0, x1):
            got.append(y0 + (y1 - y0) * (p - x0) / (x1 - x0))
    return max(got) if got else None


def further(runs_s, runs_z, key, sgn, ok_why, want):
    """Does the setting let the loop go further than λ=0? (a) rounds under the ppl ceiling, (b) the trait at equal
    ppl: per seed, the frontier of each at the highest ppl both reached, the difference beyond its noise (the seeds'
    spread, or the lines' paired CIs). Returns a dict: rounds word, trait word, numbers."""
    zs = {seed_of(r): r for r in runs_z}
    both = [(r, zs[seed_of(r)]) for r in runs_s if seed_of(r) in zs]
    if not both:
        return dict(rounds="not measured", trait="not measured", why="no seed run in both")
    ns, nz = [under_ceiling(s) for s, _ in both], [under_ceiling(z) for _, z in both]
    ended = [finished(r, want) for pr in both for r in pr]
    if any(e == "in progress" for e in ended):
        rw = "not yet decided (runs in progress)"
    elif all(not r["stop"] for pr in both for r in pr):
        rw = "not decided by the ceiling (every run stayed under it for all its rounds: run more rounds)"
    elif ns == nz:
        rw = "as far"
    elif min(ns) >= max(nz):
        rw = "further"
    elif max(ns) <= min(nz):
        rw = "not as far"
    else:
        rw = "mixed across seeds"
    ds, hs, level = [], [], []
    for s, z in both:
        ps, pz = path_of(s, key), path_of(z, key)
        if len(ps) < 2 or len(pz) < 2:
            continue
        p = min(max(x for x, _ in ps), max(x for x, _ in pz))
        ds.append(sgn * (best_at(ps, p) - best_at(pz, p)))
        level.append(p)
        h = [evidence.half(r, key) for r in (s["rounds"][-1], z["rounds"][-1])]
        hs.append(None if None in h else math.hypot(*h))
    band = None if not ds else max(evidence.rng(ds), statistics.fmean(hs) if hs and None not in hs else 0.0)
    if not ok_why[0]:
        tw = "not measurable"
    elif not ds:
        tw = "not measured"
    elif not band:
        tw = "not measurable"  # one seed and no paired interval
    else:
        m = statistics.fmean(ds)
        tw = ("more trait at equal ppl" if m > band else "less trait at equal ppl" if m < -band else
              "the same trait at equal ppl within noise")
    return dict(rounds=rw, trait=tw, under_ceiling=[ns, nz], ended=ended, d_trait=ds and statistics.fmean(ds),
                band=band, level=level and statistics.fmean(level), key=key)


def over_rounds(word_by_round):
    """One word for the bet over rounds: the same in every round compared, else mixed (each round's listed)."""
    words = [w for w in word_by_round.values()]
    if not words:
        return "not measured"
    return words[0] if len(set(words)) == 1 else "mixed across rounds"


def summarize_rounds(out, want=4):
    """results/crux_rounds/summary.md, summary.json, frontier.png from every run's rounds.jsonl (no model). A run
    with fewer than `want` round lines and no stop line is in progress."""
    names = [n for n in ROUND_SETTINGS if evidence.seed_dirs(str(out / n))]
    names += sorted(n.name for n in out.iterdir() if n.is_dir() and n.name not in names and evidence.seed_dirs(str(n)))
    groups = {n: [evidence.read_run(d) for d in evidence.seed_dirs(str(out / n))] for n in names}
    groups = {n: [r for r in rs if r["base"]] for n, rs in groups.items()}
    groups = {n: rs for n, rs in groups.items() if rs}
    allruns = [r for rs in groups.values() for r in rs]
    if not allruns:
        print(f"no runs with a base line under {out}")
        return None
    readers = evidence.readers_of(allruns)
    checks = {k: readable(allruns, k, s) for k, s in readers}  # evidence's rule: chance and the ± dose direction check
    zero = groups.get("lam0", [])
    cfgs = {k: {json.dumps((r["cfg"] or {}).get(k)) for r in allruns} for k in (allruns[0]["cfg"] or {}) if k not in SAME}
    differ = sorted(k for k, v in cfgs.items() if len(v) > 1)
    res, lines = {}, []
    rounds = sorted({r["round"] for run in allruns for r in run["rounds"]})
    for name, runs in groups.items():
        rows, words = [], {}
        for k in rounds:
            pick = evidence.round_at(k)
            rk = [r for r in runs if pick(r)]
            if not rk:
                continue
            cells = [str(k), str(len(rk))] + [ivs(evidence.delta(rk, pick, evidence.base_of, key)) for key, _ in readers]
            cells += [spread([evidence.get(pick(r), x) for r in rk]) for x in ("ppl_base", "rep")]
            cells += [spread([evidence.get(pick(r), "kept") / evidence.get(pick(r), "generated")
                              if evidence.get(pick(r), "generated") else None for r in rk], 2),
                      spread([evidence.get(pick(r), "heal", "barrier_active") for r in rk], 2)]
            v = None
            if name != "lam0" and zero:
                zs = {seed_of(z): z for z in zero if pick(z)}
                ps = [pair(r["base"], pick(r), pick(zs[seed_of(r)]), r["name"], r) for r in rk if seed_of(r) in zs]
                zp = [dict(p, s=p["z"]) for p in ps]
                gates = {key: gate(checks[key], zp, key, s) for key, s in readers}
                v = decide_bet(ps, gates, readers) if ps else dict(word="not measured", why="λ=0 has no round "
                                                                    f"{k} in these seeds", by={})
                words[k] = v["word"]
                b0 = next(iter(v["by"].values()), None)
                cells += [pm(b0 and b0["removed"]), pm(b0 and b0["kept"]), v["word"]]
            rows.append((cells, v))
        dec = next(((k, s) for k, s in readers if checks[k][0]), readers[0])
        fur = further(runs, zero, *dec, checks[dec[0]], want) if name != "lam0" and zero else None
        res[name] = dict(runs=[r["name"] for r in runs], by_round={k: v for k, v in zip(
            [int(c[0]) for c, _ in rows], [v for _, v in rows]) if v}, bet=over_rounds(words), words=words,
            further=fur, ended=[finished(r, want) for r in runs], under_ceiling=[under_ceiling(r) for r in runs],
            rows=[c for c, _ in rows], minutes_per_round=minutes(runs))
    base = allruns[0]["base"]
    lines += ["# The crux over rounds: does the barrier remove incoherence before the trait, and go further?", "",
              f"Runs: {sum(len(v) for v in groups.values())} under `{out}` ({', '.join(f'{n}: {len(rs)}' for n, rs in groups.items())} seeds). "
              f"Settings (steer_heal flags, beside `{' '.join(ROUND_FLAGS)}`): "
              + "; ".join(f"{n} `{' '.join(ROUND_SETTINGS.get(n, ['?']))}`" for n in groups) + ". "
              f"Command: `python sweep.py --over-rounds` (resumes; `--summarize` rewrites this from the rows). "
              f"First run's command: `python {' '.join(map(str, allruns[0]['argv'] or []))}`.", "",
              f"Base model: ppl_base {evidence.fmt(evidence.get(base, 'ppl_base'))}, ceiling ×{evidence.fmt(evidence.ceiling(allruns[0])[0])}; "
              + ", ".join(f"{k} {evidence.fmt(evidence.get(base, k))}" for k, _ in readers) + ".", ""]
    if differ:
        lines += [f"**WARNING: the runs differ in {', '.join(differ)}** beyond their settings: they are not one grid.", ""]
    lines += ["Readers of this persona (evidence.py's rule over every run: not at chance, and the steered line's "
              "vector at ± dose moves it in opposite directions beyond noise in every run):", ""]
    lines += [f"- {k} ({'+' if s > 0 else '−'}): {'readable' if checks[k][0] else 'NOT readable: decides nothing'}: "
              + short(checks[k][1], len(allruns)) for k, s in readers]
    lines += ["", "Per round, against λ=0 of the same seed at the same round, the same two claims as the "
              "single-round summary (`results/crux/summary.md`): incoherence removed = ppl_base lower than λ=0's "
              "beyond noise; trait kept = the reader not lower beyond noise; noise = evidence.delta over the seeds "
              "(the larger of the seeds' spread and the per-prompt paired bootstrap). Δ columns: vs the run's base "
              "line (one seed: its paired 95% CI by prompt; several: mean [mean ± noise]). Cells of levels: mean "
              "[min, max] over seeds.", ""]
    for name, x in res.items():
        hdr = ["round", "seeds"] + [f"Δ{k}" for k, _ in readers] + ["ppl_base", "rep", "kept frac", "barrier"]
        hdr += ["incoh. removed", "trait kept", "vs λ=0"] * (name != "lam0" and bool(zero))
        lines += [f"## {name} (`{' '.join(ROUND_SETTINGS.get(name, ['?']))}`)", "",
                  "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        lines += ["| " + " | ".join(c) + " |" for c in x["rows"]]
        lines += ["", "Runs: " + "; ".join(f"{r}: {e}, {n} rounds under the ceiling" for r, e, n in
                                           zip(x["runs"], x["ended"], x["under_ceiling"]))
                  + (f". About {x['minutes_per_round']:.1f} min a round (the lines' own stage times)."
                     if x["minutes_per_round"] else ""), ""]
    lines += ["## Verdict on the bet over rounds", ""]
    if not zero:
        lines += ["Not measured: no λ=0 runs (the reference) yet."]
    for name, x in res.items():
        if name == "lam0" or not x["further"]:
            continue
        f = x["further"]
        lines += [f"- **{name} vs λ=0**: removes incoherence before the trait? **{x['bet']}**"
                  + (f" ({', '.join(f'r{k}: {w}' for k, w in x['words'].items())})" if x["words"] else "")
                  + f". Goes further? rounds under the ceiling: **{f['rounds']}** ({name} {f['under_ceiling'][0]} vs "
                  f"λ=0 {f['under_ceiling'][1]} per seed); trait at equal ppl ({f['key']}): **{f['trait']}**"
                  + (f" (Δ {f['d_trait']:+.3f} ± {f['band']:.3f} at ppl_base {f['level']:.2f})" if f["band"] else "")
                  + "."]
        lines += [f"  - r{k}: {v['why']}" for k, v in x["by_round"].items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(runio.finite(dict(
        readers={k: dict(sign=s, readable=checks[k][0], why=checks[k][1]) for k, s in readers}, differ=differ,
        settings={n: {k: v for k, v in x.items() if k != "rows"} for n, x in res.items()})), indent=1, default=str))
    frontier_rounds(out, groups, readers, checks)
    for name in groups:  # each setting's group report (report.py), beside its seeds' own
        report.write_report(str(out / name))
    print("\n".join(lines))
    return res


def short(why, n):
    """evidence.direction's text lists every check of every run: the first, the ones that did not pass (up to three),
    and how many runs, are enough here (summary.json keeps the whole text)."""
    parts = why.split("; ")
    if len(why) < 300:
        return why
    bad = [p for p in parts[1:] if " pass (" not in p][:3]
    return "; ".join([parts[0], *bad, f"… (over {n} runs; summary.json has every check)"])


def minutes(runs):
    """Mean minutes a round from the lines' own `seconds` (every stage of the round's lines)."""
    per = []
    for r in runs:
        lines = [ln for ln in r["rounds"] + list(r["steered"].values()) if isinstance(ln.get("seconds"), dict)]
        n = len(r["rounds"])
        if n:
            per.append(sum(sum(v for v in ln["seconds"].values() if isinstance(v, (int, float))) for ln in lines) / n / 60)
    return statistics.fmean(per) if per else None


def frontier_rounds(out, groups, readers, checks):
    """Per persona reader, Δreader vs base against ppl_base: one line per setting through base → r0 → r1 ..., mean
    over seeds, seeds as bands (shaded: the reader's min–max; bars: ppl's); the ppl ceiling dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(readers), figsize=(7 * len(readers), 5.5), squeeze=False)
    colors = dict(lam0="k", rmse="tab:blue", mean="tab:orange", spectral3="tab:green", anchor1="tab:red")
    for ax, (key, _) in zip(axes[0], readers):
        for i, (name, runs) in enumerate(groups.items()):
            c = colors.get(name, f"C{i + 4}")
            pts = {}
            for r in runs:
                for j, xy in enumerate(path_of(r, key)):
                    pts.setdefault(j, []).append(xy)
            js = sorted(pts)
            if not js:
                continue
            mx = [statistics.fmean(x for x, _ in pts[j]) for j in js]
            my = [statistics.fmean(y for _, y in pts[j]) for j in js]
            ax.plot(mx, my, "o-", color=c, label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(mx, [min(y for _, y in pts[j]) for j in js], [max(y for _, y in pts[j]) for j in js],
                            color=c, alpha=0.15, lw=0)
            for j, x0, y0 in zip(js, mx, my):
                ax.plot([min(x for x, _ in pts[j]), max(x for x, _ in pts[j])], [y0, y0], color=c, lw=0.8, alpha=0.6)
                if j:
                    ax.annotate(f"r{j - 1}", (x0, y0), fontsize=7, xytext=(3, 3), textcoords="offset points", color=c)
        ceil = evidence.ceiling(next(iter(groups.values()))[0])[1]
        if ceil:
            ax.axvline(ceil, color="k", ls=":", lw=1, label="ppl ceiling")
        ax.axhline(0, color="k", ls=":", lw=0.8)
        ax.set_xlabel("ppl_base: greedy held-out answers under the base model (incoherence →)")
        ax.set_ylabel(f"Δ {key} vs base (the trait →)" + ("" if checks[key][0] else ": NOT readable here"))
        ax.legend(fontsize=8)
    fig.suptitle("Crux over rounds: base → round 0 → round 1 ..., mean over seeds; bands = seeds' min–max")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
