"""sweep.py: the seed's crux. Does the KL barrier remove incoherence before it removes the trait?

The bet: steering's incoherence drift is large and erratic, the persona shift small and systematic, so a
barrier on the KL to the base model should remove the first preferentially. Measured here:
  1. generate and filter round 0 ONCE (cached in OUT/survivors.jsonl), plus as many unsteered
     survivors (the control: what fine-tuning on the model's own text does to every reader);
  2. heal the same survivors under a grid of regularisers x seeds (LoRA init and data order);
  3. read every healed model with every reader: persona_gap (statement likelihood, paired CI vs base),
     trait_fixed (the original model reading the greedy held-out answers), auth_nats (tinymfv), and
     incoherence: ppl of those answers under the base model, repetition.
Per setting, against λ=0 of the same seed, two separate claims, each with its own noise (lib/evidence.py's rule:
the seeds' spread or the rows' paired bootstrap, whichever is larger): incoherence removed (ppl of the answers
lower than λ=0's) and trait kept (the reader not lower than λ=0's). A gain in trait is not removed incoherence.
A reader decides only when it passes lib/evidence.py's checks and λ=0 moved it beyond noise the persona's way.

    python sweep.py                       # the committed sweep: results/crux/ (resumes; rows already there are kept)
    python sweep.py --settings lam0 rmse_lam1 --seeds 0    # a slice
    python sweep.py --summarize           # summary.md, summary.json + frontier.png from sweep.jsonl, no model

The crux over rounds: whole steer_heal runs (warmth persona), one per (setting, seed), into
results/crux_rounds/<setting>/seed<k>/ through grid.py's launchers (one at a time by default; --launcher local
--jobs N; --launcher slurm ...); resumable (done runs are skipped, unfinished ones --resume'd):

    python sweep.py --over-rounds [--settings lam0 rmse ...] [--seeds 0 1 2] [--rounds 8] [-- steer_heal flags]
    python sweep.py --over-rounds --launcher slurm --partition gpu --time 60 --mem 32 -- --device cuda
    python sweep.py --over-rounds --summarize    # summary.md, summary.json, frontier.png from the runs, no model
"""
import argparse, json, math, statistics, sys, time
from pathlib import Path

import torch

from lib import cli
import eval_mfv
from lib import evidence  # the one rule for noise, chance and direction (issue 22: it lives once)
import report  # LABEL, and each setting's group report
from lib import runio
from lib import readers
from lib import models
import grid  # the one driver of grids of whole runs (--over-rounds)
import steer_heal as sh  # the default experiment file; --script loads another (a copy)

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
    keys = ("ids", *sh.COMPLETION_KEYS)  # what the heal trains on, and what the round's completions file keeps
    runio.write_text(path, "".join(json.dumps({k: x.get(k) for k in keys}) + "\n" for x in items))


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
    ev = sh.mfv(model, tok, cfg, ctx)
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
    ap.add_argument("--script", help="the experiment file the sweep runs (a copy of steer_heal.py, e.g. my_idea.py): its "
                                     "Config and stages for the single-round sweep, its runs for --over-rounds; default "
                                     "steer_heal.py")
    ap.add_argument("--summarize", action="store_true", help="only write summary.md, summary.json and frontier.png")
    ap.add_argument("--over-rounds", action="store_true", help="the crux over rounds: whole steer_heal runs into "
                                                               "OUT/<setting>/seed<k>/, through grid.py's --launcher")
    ap.add_argument("--rounds", type=int, default=8, help="--over-rounds: rounds per run (fewer if the ppl ceiling "
                                                          "stops it)")
    ap.add_argument("--dry-run", action="store_true", help="--over-rounds: print the commands, run nothing")
    grid.add_launcher_args(ap)  # --over-rounds: --launcher serial|local|slurm|submitit-local, --jobs, SLURM's flags
    a = ap.parse_args(argv)
    global sh, SEED
    if a.script:  # a copy's own Config, stages and PERSONAS (runio.load_script: the door rivals and export use)
        sh = runio.load_script(a.script)
        SEED = dict(sh.PERSONAS["seed"], persona="seed")
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
    vignettes, stmts = cli.find_vignettes(cfg), eval_mfv.load_statements(cli.find_statements(cfg))
    torch.set_grad_enabled(False)
    model, tok = sh.load_model(cfg.model, cfg.device, cfg.dtype)
    stash = sh.stash_base(model, cfg)
    log(f"== sweep.py {' '.join(sys.argv[1:])} | {time.strftime('%Y-%m-%d %H:%M')} | threads {torch.get_num_threads()}")
    items, ctl, v0 = data(model, tok, cfg, out)
    kept = [x for x in items if x["kept"]]
    ctx = dict(stash=stash, v0=v0, stmts=stmts, vignettes=vignettes)
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


# ---- the bet as two claims, each against λ=0 of the same seed, with lib/evidence.py's noise rule ---------------
# "Removes incoherence" and "keeps the trait" are separate claims, each decided by its own interval (evidence.delta:
# the larger of the seeds' spread and the lines' paired bootstrap); a gain in trait is not removed incoherence.
# A pair is one seed: its base line, the setting's line `s` and λ=0's `z` (the same round, over rounds), plus what
# lib/evidence.py's checks read (name, cfg, steered, prompting), so its functions take a list of pairs as runs.
B, S, Z = (lambda p: p["base"]), (lambda p: p["s"]), (lambda p: p["z"])
BET = ("preferential", "not preferential", "not distinguishable", "no incoherence removed", "no effect beyond noise",
       "not measurable")  # the words bet() answers with


def pair(base, s, z, name, run=None):
    run = run or {}
    return dict(name=name, base=base, s=s, z=z, cfg=run.get("cfg") or {}, steered=run.get("steered") or {},
                prompting=run.get("prompting"), rounds=run.get("rounds") or [])


def readable(runs, key, sgn):
    """(ok, why): lib/evidence.py's rule (tinymfv or the probe at chance, the direction check). Lines that carry no
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
    """num / den's mean as a fraction ± its half-width: (Δ S−Z, lo, hi) over λ=0's own shift (Δ Z−base, lo, hi). The
    denominator is uncertain too (λ=0's shift, by ~20% in results/crux_rounds4): its noise is in the half-width (delta
    method, the two taken as independent): h = sqrt(h_num² + r² h_den²) / |den|. None without an interval on either."""
    if not num or not den or not den[0]:
        return None
    r = num[0] / den[0]
    if num[1] is None or den[1] is None:
        return r, None
    return r, math.hypot((num[2] - num[1]) / 2, r * (den[2] - den[1]) / 2) / abs(den[0])


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
             "Which readers may decide (lib/evidence.py's rule: not at chance, direction check where the lines carry one; "
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
    "loosen1": ["--kl-agg", "rmse", "--lam", "1", "--tau-round-pow", "1"],  # tau_r = tau * (1 + r): loosened each round
    "topic": ["--kl-agg", "rmse", "--lam", "1", "--topic-q", "0.1"],  # the default barrier + the on-topic gate
}
# prev (--kl-ref prev) was dropped after the 4-round grid: it walked like lam0 (results/crux_rounds4)
# every run: the warmth persona (readers outside the model can see it); no prompting line (the steered line's ± dose
# direction check stays, and the summary does not need prompting)
ROUND_FLAGS = ["--persona", "love", "--no-baselines"]
STEER_HEAL = Path(__file__).resolve().parent / "steer_heal.py"
SAME = {"seed", "seeds", "name", "out", "resume", "overwrite", "rounds", "lam", "kl_agg", "spectral_lam",
        "anchor_nll", "kl_ref", "device", "compile", "line_cache"}  # config keys runs of one grid may differ in


run_state = grid.run_state  # 'new', 'resume' or 'done': the driver's rule, one place


def round_grid(a, out, extra):
    """The crux over rounds as grid.py's data: one job per (setting, seed), seed-major (a grid stopped early still
    has every setting at its first seeds); `extra` flags go to new runs only (--resume refuses flags that change a
    run)."""
    return dict(out=str(out), seeds=a.seeds, rounds=a.rounds, flags=ROUND_FLAGS,
                settings={name: dict(script=str(Path(a.script).resolve() if a.script else STEER_HEAL), flags=[*ROUND_SETTINGS[name], *extra])
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


def setting_flags(name, runs):
    """A setting's steer_heal flags: sweep.py's own, or for one it no longer has (prev, in results/crux_rounds4) what
    its first run was given between the grid's flags and its --seed (the sweep's extra flags, if any, among them)."""
    if name in ROUND_SETTINGS:
        return ROUND_SETTINGS[name]
    argv, n = [str(x) for x in runs[0].get("argv") or []], len(ROUND_FLAGS)
    i = next((j + n for j in range(len(argv)) if argv[j:j + n] == ROUND_FLAGS), None)
    k = next((j for j in range(i or 0, len(argv)) if argv[j] == "--seed"), None)
    return argv[i:k] if i is not None and k is not None and k > i else ["?"]


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


# ---- the crux over rounds: the trait at equal cost, and how far each setting gets before it breaks (issue 34) ------
# Compared round by round, a setting that is merely slower than λ=0 walks λ=0's own curve and looks as if it removed
# incoherence first (λ=0's trait flattens while its ppl jumps). So a setting is compared with λ=0 of the same seed at
# equal COST: the trait interpolated along each run's path base → r0 → r1 ..., on every cost reader below, only where
# both paths reach the cost (no extrapolation); and by how much trait (and KL) each holds before the ceiling stops it.
COSTS = {  # cost reader -> what its axis is (higher = costlier); per point of a path: cost_of()
    "ppl_base": "ppl_base: perplexity of the greedy held-out answers under the base model",
    "degenerate": "degenerate: share of the greedy answers the training filters would drop, or that loop",
    "on_topic": "on-topic drop: the base's mean MiniLM cosine of answer to prompt minus the line's",
    "kl_base": "kl_base: mean per-token KL(model ‖ base) over the greedy answers, nats",
    "cum_kl": "cumulative KL: kl_base summed over rounds 0..k, nats (shown, decides nothing: a sum of each round's "
              "distance to the base grows with the rounds taken along the same curve, so λ=0 slowed down 'travels' "
              "twice the KL: it fails that null)",
}
DECIDE = ("ppl_base", "degenerate", "on_topic", "kl_base")  # the cost readers the verdict reads (not cum_kl)
NOT_MEASURED = "not measured in these runs"
SKIP = ("not measured", "not comparable", "not measurable", NOT_MEASURED)  # words that are not a verdict
BETS = ("more trait than λ=0 at equal cost", "less trait than λ=0 at equal cost", "mixed across cost readers",
        "the same trait as λ=0 at equal cost within noise", "not comparable", NOT_MEASURED, "not measurable",
        "not measured")  # a setting's one word over the cost readers (summary.json settings.<name>.bet)
N_BOOT = 2000
RES = 1e-4  # the precision rounds.jsonl keeps the per-prompt readings at: a difference inside ±RES is no difference
            # (two runs of one model differ by ~1e-9 in their costs, and the interpolation turns that into a CI at 1e-9)


def cost_of(run, name):
    """The cost of each point of the run's path (its base line, then each round line; None where not measured).
    kl_base is 0 on the base line by definition; cum_kl is kl_base summed over rounds 0..k."""
    b, rs = run["base"], run["rounds"]
    g = evidence.get
    if name == "on_topic":
        ob = g(b, "on_topic")
        return [None if ob is None or g(x, "on_topic") is None else ob - g(x, "on_topic") for x in [b] + rs]
    if name in ("kl_base", "cum_kl"):
        ks = [g(r, "kl_base") for r in rs]
        zero = 0.0 if any(k is not None for k in ks) else g(b, "kl_base")
        if name == "kl_base":
            return [zero] + ks
        out, tot = [zero], zero
        for k in ks:
            tot = None if tot is None or k is None else tot + k
            out.append(tot)
        return out
    return [g(x, name) for x in [b] + rs]


def cost_items(run, name):
    """The per-prompt costs at each point of the run's path, as cost_of() (None where a line carries no items)."""
    b, rs = run["base"], run["rounds"]
    it = evidence.items_of
    if name == "on_topic":
        ib = it(b, "on_topic")
        return [None if not ib or not it(x, "on_topic") or len(it(x, "on_topic")) != len(ib) else
                [u - v for u, v in zip(ib, it(x, "on_topic"))] for x in [b] + rs]
    if name in ("kl_base", "cum_kl"):
        ks = [it(r, "kl_base") for r in rs]
        n = next((len(k) for k in ks if k), None)
        zero = it(b, "kl_base") or (None if n is None else [0.0] * n)
        if name == "kl_base":
            return [zero] + ks
        out, tot = [zero], zero
        for k in ks:
            tot = None if tot is None or k is None or len(k) != len(tot) else [u + v for u, v in zip(tot, k)]
            out.append(tot)
        return out
    return [it(x, name) for x in [b] + rs]


def trait_of(run, key):
    """[(Δkey vs base, the per-prompt Δ or None)] for each point of the run's path (the base line: 0); for a cost
    reader (COSTS), its cost and per-prompt costs instead."""
    if key in COSTS:
        return list(zip(cost_of(run, key), cost_items(run, key)))
    b = run["base"]
    ib = evidence.items_of(b, key)
    out = []
    for x in [b] + run["rounds"]:
        ix = evidence.items_of(x, key)
        out.append((evidence.shift(x, b, key),
                    [u - v for u, v in zip(ix, ib)] if ix and ib and len(ix) == len(ib) else None))
    return out


def path(run, key, cost="ppl_base"):
    """The run's path through (cost, Δkey vs base): [(cost, Δ, per-prompt Δ or None, round)] from the base line
    (round -1) through every measured round, past the ceiling too (at equal cost the ceiling does not matter)."""
    rounds = [-1] + [r["round"] for r in run["rounds"]]
    return [(c, d, its, k) for c, (d, its), k in zip(cost_of(run, cost), trait_of(run, key), rounds)
            if c is not None and d is not None]


def path_of(run, key):
    """The run's path through (ppl_base, Δreader vs base), from the base model through each round."""
    return [(c, d) for c, d, *_ in path(run, key)]


def frontier_at(pts, level, sgn=1, top=False):
    """The most trait (sgn: the persona's way) a path held at a cost of at most `level`: its points at or under it,
    and its segments crossing it, interpolated. (Δ, {point index: weight}) or None when no point is that cheap.
    The weights say how to interpolate anything read at the points (the per-prompt readings) the same way.
    top=True: a crossing segment gives its endpoint with more trait instead, the most the path can have held there
    if between two measured rounds the trait lies between their readings. A straight line under-reads a saturating
    (concave) curve, the more so the longer the segment: a run with fewer rounds across a bend looks behind one with
    more on the same curve (tests/test_sweep.py's null), so a difference is decided against the other path's top."""
    tol = RES * abs(level)  # a point this near the level is at it (two runs of one model differ by ~1e-9 to 1e-5)
    got = [(p[1], {j: 1.0}) for j, p in enumerate(pts) if p[0] <= level + tol]
    for j in range(len(pts) - 1):
        (x0, y0), (x1, y1) = pts[j][:2], pts[j + 1][:2]
        if min(x0, x1) < level < max(x0, x1) and min(abs(x0 - level), abs(x1 - level)) > tol:
            w = (level - x0) / (x1 - x0)
            e = j + (sgn * y1 > sgn * y0)  # the top: the endpoint with more trait (the persona's way)
            got.append((pts[e][1], {e: 1.0}) if top else (y0 + (y1 - y0) * w, {j: 1 - w, j + 1: w}))
    return max(got, key=lambda g: sgn * g[0]) if got else None


def best_at(pts, p):
    """The most trait a path reached while its cost was at most p (the frontier at p); None if no point is that
    coherent."""
    got = frontier_at(pts, p)
    return None if got is None else got[0]


def per_prompt(pts, weights):
    """The per-prompt Δ at a frontier point: the points' per-prompt readings with the weights of the means."""
    its = [pts[j][2] for j in weights]
    if any(x is None for x in its) or len({len(x) for x in its}) != 1:
        return None
    return [sum(w * pts[j][2][i] for j, w in weights.items()) for i in range(len(its[0]))]


def boot(d, seed=0):
    """95% bootstrap CI of mean(d), resampling the prompts (numpy: this is called some hundreds of times)."""
    import numpy as np
    a = np.asarray(d, dtype=float)
    m = a[np.random.default_rng(seed).integers(0, len(a), (N_BOOT, len(a)))].mean(axis=1)
    return float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def paired(per_seed):
    """One difference over seeds from [(seed, Δ, per-prompt Δ or None)]: d (the mean over seeds), ci (the paired 95%
    bootstrap over prompts of the seeds' mean, each prompt resampled in every seed at once; None without per-prompt
    readings), per seed its Δ and sign (+ / − when its own paired CI excludes ±RES, 0 when not, ? without
    per-prompt readings), spread (the seeds' min–max), and the noise the verdict reads: the paired CI widened to at
    least the mean ± the seeds' spread (lib/evidence.py's rule for groups: seeds differ by more than the bootstrap says);
    side +1 / -1 when that lies above / below 0 by more than RES, 0 when it does not, None without a noise estimate."""
    if not per_seed:
        return None
    ds, its = [d for _, d, _ in per_seed], [i for _, _, i in per_seed]
    m, sp = statistics.fmean(ds), evidence.rng(ds)
    ok = all(i is not None for i in its) and len({len(i) for i in its}) == 1
    ci = boot([statistics.fmean(col) for col in zip(*its)]) if ok else None
    signs = []
    for d, i in zip(ds, its):
        c = boot(i) if i else None
        signs.append("?" if c is None else "+" if c[0] > RES else "−" if c[1] < -RES else "0")
    noise = ((min(ci[0], m - sp), max(ci[1], m + sp)) if ci else (m - sp, m + sp) if len(ds) > 1 and sp > 0 else None)
    side = None if noise is None else 1 if noise[0] > RES else -1 if noise[1] < -RES else 0
    return dict(d=m, ci=ci, noise=noise, side=side, spread=sp, seeds=[s for s, _, _ in per_seed], per_seed=ds,
                signs=signs)


def diff_text(p, nd=3):
    """'Δ, paired CI [lo, hi], per seed a (+), b (0) ..., spread s' of a paired() result."""
    if not p:
        return "—"
    ci = f", paired CI [{p['ci'][0]:+.{nd}f}, {p['ci'][1]:+.{nd}f}]" if p["ci"] else ", no per-prompt readings"
    sp = f", spread {p['spread']:.{nd}f}" if len(p["per_seed"]) > 1 else ""
    seeds = ", ".join(f"{d:+.{nd}f} ({s})" for d, s in zip(p["per_seed"], p["signs"]))
    return f"{p['d']:+.{nd}f}{ci}, per seed {seeds}{sp}"


def rises(run, cost):
    """{round: (Δcost vs the base line, its paired 95% CI by prompt or None)} along the run's path: where the cost
    reader rose beyond its own noise. A cost that moves less than its noise cannot say which rounds cost the same
    (a share of 64 answers moves by 1/64 at random), so a level there compares nothing."""
    cs, its, rounds = cost_of(run, cost), cost_items(run, cost), [r["round"] for r in run["rounds"]]
    return {k: (c - cs[0], paired_ci(i, its[0])) for k, c, i in zip(rounds, cs[1:], its[1:])
            if c is not None and cs[0] is not None}


def paired_ci(a, b):
    """95% bootstrap CI of the per-prompt difference a - b (one point against another on the same prompts), None
    without matching per-prompt readings."""
    return boot([u - v for u, v in zip(a, b)]) if a and b and len(a) == len(b) else None


def beyond_noise(level, pz, rise):
    """Is a cost level (not one of λ=0's own rounds) told from the base's cost? It must lie above the base's cost by
    more than the noise of a rise on this axis: half the paired CI's width at λ=0's cheapest round that rose beyond
    noise (none rose: no). Unknown noise (no per-prompt costs) does not block."""
    up = [(c, rise[k]) for c, _, _, k in pz if k in rise and risen(rise[k]) is not False]
    if not up:
        return False
    c, (_, ci) = min(up, key=lambda x: x[0])
    return ci is None or level - pz[0][0] > (ci[1] - ci[0]) / 2


def risen(rise):
    """Above the base's cost beyond the paired noise (True), within it (False); None without per-prompt costs."""
    return None if rise[1] is None else rise[1][0] > RES


def compare_at(paths, levels, sgn, label, cost, unrisen=()):
    """Setting vs λ=0 at one cost level per seed ({seed: level}): the frontier of each path there, per prompt with the
    same weights as the means, paired by seed and prompt. A seed whose paths do not both reach its level (no
    extrapolation), or whose level is λ=0 at the base's cost within noise (`unrisen`), makes the level not
    comparable."""
    if any(k in paths for k in unrisen):
        return dict(label=label, level=None, of=len(paths), n=0, word="not comparable",
                    why=f"λ=0 there is at the base's {cost} within noise in seed(s) "
                        + ", ".join(str(k) for k in sorted(unrisen)))
    per, short = dict(line=[], lo=[], hi=[]), []
    for seed, (ps, pz) in paths.items():
        lv = levels.get(seed)
        flat = any(max(p[0] for p in q) <= q[0][0] for q in (ps, pz))  # this cost never rose: it saw nothing
        if lv is None or flat or max(p[0] for p in ps) < lv or max(p[0] for p in pz) < lv:
            short.append(seed)
            continue
        at = {(q, top): frontier_at(pts, lv, sgn, top) for q, pts in (("s", ps), ("z", pz)) for top in (False, True)}
        if None in at.values():
            short.append(seed)
            continue
        for tag, a, b in (("line", at["s", False], at["z", False]), ("lo", at["s", False], at["z", True]),
                          ("hi", at["s", True], at["z", False])):
            per[tag].append(signed_diff(seed, a[0], b[0], per_prompt(ps, a[1]), per_prompt(pz, b[1]), sgn))
    lvs = [v for k, v in levels.items() if k in paths and v is not None]
    out = dict(label=label, level=statistics.fmean(lvs) if lvs else None, of=len(paths), n=len(per["line"]))
    if short:
        return dict(out, word="not comparable", why=f"{out['n']} of {len(paths)} seeds' paths both reach it (and rise "
                                                     "above the base's cost)")
    side, p, why, br = bracketed(*(paired(per[t]) for t in ("line", "lo", "hi")))
    word = ("not measurable" if side is None else f"more trait at equal {cost}" if side > 0 else
            f"less trait at equal {cost}" if side < 0 else f"the same trait at equal {cost} within noise")
    return dict(out, word=word, why=why, bracket=br, **{k: p[k] for k in ("d", "ci", "noise", "signs", "per_seed",
                                                                          "spread", "seeds")})


def signed_diff(seed, a, b, ia, ib, sgn):
    """(seed, sgn·(a − b), its per-prompt values or None): one seed's difference, the persona's way."""
    return seed, sgn * (a - b), (None if None in (ia, ib) or len(ia) != len(ib) else
                                 [sgn * (x - y) for x, y in zip(ia, ib)])


def bracketed(line, lo, hi):
    """(side, the paired() result it was read from, its text, (lo, hi, the straight lines' side) or None where no
    segment crosses) of a difference read between bounds (paired()
    results): line = both paths interpolated; lo = the setting's line minus λ=0's top (frontier_at top=True), hi = the
    setting's top minus λ=0's line. More (+1) only when the straight lines and even lo lie above 0 beyond their noise,
    less (-1) only when they and even hi lie below; else 0, shown with the straight lines' difference; None without a
    noise estimate. Where no segment crosses the level (both measured there) the three are one. The bracket assumes
    the trait between two measured rounds lies between the straight line and the endpoint with more trait (a rising,
    saturating curve, as λ=0's is), not that the curve cannot dip below the line."""
    if line is None or lo is None or hi is None or None in (line["side"], lo["side"], hi["side"]):
        return None, line, diff_text(line), None
    side = 1 if lo["side"] > 0 and line["side"] > 0 else -1 if hi["side"] < 0 and line["side"] < 0 else 0
    p = lo if side > 0 else hi if side < 0 else line
    if lo["per_seed"] == hi["per_seed"]:
        return side, p, diff_text(p), None
    br = (lo["d"], hi["d"], line["side"])
    if side:
        return side, p, (f"{diff_text(p)} against λ=0's bracket (" + ("its top" if side > 0 else "the setting's top")
                         + f"; straight lines {line['d']:+.3f})"), br
    return side, p, (diff_text(line) + f" on straight lines; against the bracket between {lo['d']:+.3f} and "
                     f"{hi['d']:+.3f}" + (", beyond noise only on straight lines" if line["side"] else "")), br


def over_rounds(word_by_round, mixed="mixed across rounds"):
    """One word over rounds (or levels): the same in every one compared, else mixed. A round that was not measured
    (or not comparable) is no verdict and does not count."""
    words = [w for w in word_by_round.values() if not str(w).startswith(SKIP)]
    if not words:
        return next(iter(word_by_round.values()), "not measured")
    return words[0] if len(set(words)) == 1 else mixed


def equal_cost(runs_s, runs_z, key, sgn, cost, ok_why):
    """The setting against λ=0 of the same seed at equal `cost`: at the cost λ=0 reached in each of its rounds, and at
    the highest cost both paths reach (per seed). Its word: the levels' beyond-noise words (more / less), one or mixed;
    none beyond noise: the same within noise."""
    zs = {seed_of(r): r for r in runs_z}
    both = {seed_of(s): (s, zs[seed_of(s)]) for s in runs_s if seed_of(s) in zs}
    if not both:
        return dict(word="not measured", why="no seed run in both", levels=[])
    paths = {k: (path(s, key, cost), path(z, key, cost)) for k, (s, z) in both.items()}
    paths = {k: v for k, v in paths.items() if len(v[0]) > 1 and len(v[1]) > 1}
    if not paths:
        return dict(word=NOT_MEASURED, why=f"the rows carry no {cost}" if cost != "cum_kl" else "the rows carry no "
                    "kl_base", levels=[])
    if not ok_why[0]:
        return dict(word="not measurable", why=ok_why[1], levels=[])
    # the cost axis itself must move: λ=0's cost rises beyond its noise in some round of every seed, else no level
    # along it is told from another (degenerate at 0-5% of 64 answers is such an axis on the embedded model)
    up = {k: rises(both[k][1], cost) for k in paths}
    flat = [k for k, rs in up.items() if rs and not any(risen(x) is not False for x in rs.values())]
    if flat:
        k = flat[0]
        top = max(up[k].items(), key=lambda kv: kv[1][0])
        return dict(word="not measurable", levels=[], why=(
            f"{cost} never rose beyond its noise along λ=0's path in seed(s) {', '.join(map(str, flat))} (seed {k}: "
            f"largest rise {top[1][0]:+.3g} at r{top[0]}, paired CI [{top[1][1][0]:+.3g}, {top[1][1][1]:+.3g}]): equal "
            "cost cannot be located on it"))
    zr = sorted({p[3] for _, pz in paths.values() for p in pz if p[3] >= 0})
    levels = [compare_at(paths, {k: next((p[0] for p in pz if p[3] == r), None) for k, (_, pz) in paths.items()}, sgn,
                         f"λ=0's r{r}", cost, unrisen=[k for k in paths if r in up[k] and risen(up[k][r]) is False])
              for r in zr]
    top = {k: min(max(p[0] for p in ps), max(p[0] for p in pz)) for k, (ps, pz) in paths.items()}
    levels.append(compare_at(paths, top, sgn, "highest both reach", cost,
                             unrisen=[k for k in paths if not beyond_noise(top[k], paths[k][1], up[k])]))
    beyond = {x["label"]: x["word"] for x in levels if x["word"].startswith(("more", "less"))}
    word = (over_rounds(beyond, "mixed across cost levels") if beyond else
            f"the same trait at equal {cost} within noise" if any(x["word"].startswith("the same") for x in levels)
            else over_rounds({x["label"]: x["word"] for x in levels}))
    return dict(word=word, levels=levels, seeds=sorted(paths))


def bet_word(eq):
    """A setting's one word over the cost readers that decide ({cost: equal_cost()}; cum_kl decides nothing)."""
    ws = [x["word"] for c, x in eq.items() if c in DECIDE]
    more, less = any(w.startswith("more") for w in ws), any(w.startswith("less") for w in ws)
    if more or less:
        return "mixed across cost readers" if more and less else BETS[0] if more else BETS[1]
    if any(w.startswith("the same") for w in ws):
        return BETS[3]
    return next((w for w in ("not measurable", "not comparable", "not measured") if w in ws), NOT_MEASURED)


def at_ceiling(run, key, sgn):
    """(value, per-prompt values or None, the same two at the top, reached): the most `key` (sgn: the persona's way)
    the run held at a ppl_base at or under its ceiling, the segment that crosses the ceiling interpolated (per prompt
    with the weights of the means), so a run on λ=0's curve that merely takes smaller steps holds the same; the top:
    that segment's endpoint with more `key` instead (frontier_at); reached False when no round passed the ceiling:
    then both are the most over its path, a lower bound."""
    pts, ceil = path(run, key, "ppl_base"), evidence.ceiling(run)[1]
    if not pts:
        return None, None, None, None, False
    hit = ceil is not None and max(p[0] for p in pts) > ceil
    most = max(((p[1], {j: 1.0}) for j, p in enumerate(pts)), key=lambda g: sgn * g[0])
    line, top = (frontier_at(pts, ceil, sgn), frontier_at(pts, ceil, sgn, True)) if hit else (most, most)
    return line[0], per_prompt(pts, line[1]), top[0], per_prompt(pts, top[1]), hit


def reach(run, key, sgn):
    """How far a run got before it broke: the trait at the ppl ceiling (at_ceiling: a lower bound if it never got
    there), the kl_base at the ceiling the same way (the distance from the base model it reached before breaking), and,
    as measured: its rounds under the ceiling, the most trait at one of them (and which), the kl_base summed over them
    (cumulative KL) and the optimizer steps summed over them; broke: a round past the ceiling was measured."""
    n = under_ceiling(run)
    t, ti, th, thi, hit = at_ceiling(run, key, sgn)
    k, ki, kh, khi, _ = at_ceiling(run, "kl_base", 1)
    pts = [(j - 1, d) for j, (d, _) in enumerate(trait_of(run, key)[:n + 1]) if d is not None]
    j, d = max(pts, key=lambda p: sgn * p[1]) if pts else (None, None)
    steps = [evidence.get(r, "heal", "steps") for r in run["rounds"][:n]]
    return dict(rounds=n, broke=hit, trait=t, items=ti, trait_top=th, items_top=thi, kl=k, kl_items=ki, kl_top=kh,
                kl_items_top=khi, reached=d, best_round=j,
                cum_kl=cost_of(run, "cum_kl")[n], steps=None if None in steps else sum(steps),
                late=late_move(run, key, n), budget=not run["stop"])  # budget: ran every round asked, no stop line


def late_move(run, key, n):
    """How the trait moved over the second half of the rounds under the ceiling: (from round, to round, Δ, paired
    95% CI by prompt or None), None under 2 rounds. It tells a run still climbing (a rise beyond noise) from one whose
    rise is no longer detected; the latter is no proof that more rounds would not help, only that these did not."""
    tr, a = trait_of(run, key), n // 2  # tr[0] is the base line, tr[j + 1] the j-th round line
    if n < 2 or tr[n][0] is None or tr[a][0] is None:
        return None
    return (run["rounds"][a - 1]["round"], run["rounds"][n - 1]["round"], tr[n][0] - tr[a][0],
            paired_ci(tr[n][1], tr[a][1]))


def rose(move, sgn):
    """A late_move() that rose the persona's way (sgn) beyond its paired noise; unknown (None, no CI) counts as rising,
    so that nothing unmeasured is called a stall."""
    return move is None or move[3] is None or min(sgn * move[3][0], sgn * move[3][1]) > RES


def far_word(side, sb, zb, name, more="further", less="not as far", same="as far within noise", stalled=None):
    """further / not as far / as far from the paired side, where both broke; a run that had not broken holds a lower
    bound, so only the difference that bound cannot undo is decided, or (`stalled`: the setting's unbroken runs used
    the walk's whole budget and their trait's rise over the last rounds is not detected, its text) the budget's
    answer: not as far within it (a run still climbing stays undecided)."""
    who = f"{name} had not broken" if not sb else "λ=0 had not broken"
    if side is not None and side < 0 and not sb and zb and stalled:
        return (f"{less} within the walk's rounds", f"{who} in any of the walk's rounds, and it held less than λ=0 "
                f"held before breaking ({stalled})")
    if side is None:
        return "not measurable", "no noise estimate (one seed, no per-prompt readings)"
    if sb and zb:
        return (more if side > 0 else less if side < 0 else same), "both broke (passed the ppl ceiling) in every seed"
    if not sb and not zb:
        return "not decided", "no run broke: run more rounds"
    if not sb and side > 0:
        return more, f"{who} in every seed: a lower bound, already beyond λ=0's"
    if not zb and side < 0:
        return less, f"{who} in every seed: a lower bound, already beyond {name}'s"
    return "not decided", f"{who} in every seed and the bound does not settle it: run more rounds"


def further(runs_s, runs_z, key, sgn, ok_why, name="the setting"):
    """Does the setting get further than λ=0 before it breaks? Further = more trait held up to the ppl ceiling
    (at_ceiling: the crossing interpolated, so taking smaller steps along λ=0's curve is not 'further'), paired per seed
    and per prompt, decided over the seeds with the noise (a seed alone is not 'further': it shows in the per-seed
    signs) and against λ=0's bracket at the ceiling (bracketed: its straight line under-reads a saturating curve, so a
    setting on that curve with a round nearer the ceiling is not 'further'); beside it the KL from the base reached up to the ceiling, the same way. Rounds under the ceiling are
    shown, never the verdict: λ=0 slowed down has twice the rounds and the same trait."""
    zs = {seed_of(r): r for r in runs_z}
    both = [(seed_of(s), s, zs[seed_of(s)]) for s in runs_s if seed_of(s) in zs]
    if not both:
        return dict(word="not measured", why="no seed run in both")
    ra = {k: (reach(s, key, sgn), reach(z, key, sgn)) for k, s, z in both}
    out = dict(under_ceiling=[[a["rounds"] for a, _ in ra.values()], [b["rounds"] for _, b in ra.values()]],
               broke=[[a["broke"] for a, _ in ra.values()], [b["broke"] for _, b in ra.values()]], seeds=list(ra))
    sb, zb = all(a["broke"] for a, _ in ra.values()), all(b["broke"] for _, b in ra.values())

    def diff(v, its, s):  # (side, the paired result read, its text) against λ=0's bracket at the ceiling (bracketed)
        def one(va, ia, vb, ib):
            return paired([signed_diff(k, a[va], b[vb], a[ia], b[ib], s) for k, (a, b) in ra.items()
                           if None not in (a[va], b[vb])])
        return bracketed(one(v, its, v, its), one(v, its, v + "_top", its + "_top"),
                         one(v + "_top", its + "_top", v, its))[:3]
    (tr_side, tr, tr_why), (kl_side, kl, kl_why) = diff("trait", "items", sgn), diff("kl", "kl_items", 1)
    # the setting's runs that never broke: did the trait still rise over their last rounds (per seed, its paired CI)?
    # Only runs that used the walk's whole budget count (a starved or aborted run stopped early: it says nothing).
    late = {k: a["late"] for k, (a, _) in ra.items() if not a["broke"]}
    spent = all(a["budget"] for a, _ in ra.values() if not a["broke"])
    moving = {k: rose(m, sgn) for k, m in late.items()}
    said = "; ".join(f"seed {k}: r{m[0]} → r{m[1]} Δ{key} {m[2]:+.3f}" + (f" [{m[3][0]:+.3f}, {m[3][1]:+.3f}]" if m[3]
                                                                          else "") for k, m in late.items() if m)
    stalled = f"no rise detected over its last rounds: {said}" if late and spent and not any(moving.values()) else None
    if not ok_why[0]:
        word, why = "not measurable", ok_why[1]
    elif not tr:
        word, why = "not measured", f"no {key} on these rows"
    else:
        word, why = far_word(tr_side, sb, zb, name, stalled=stalled)
        if word == "not decided" and late and any(moving.values()):
            why += f" (still moving: {said})"
    kw = ((NOT_MEASURED, "the rows carry no kl_base") if not kl else
          far_word(kl_side, sb, zb, name, "more KL travelled", "less KL travelled", "as much KL within noise"))
    return dict(out, word=word, why=why, trait=tr, trait_text=tr_why, kl=kl, kl_text=kl_why, kl_word=kw[0],
                kl_why=kw[1], key=key)


def finished_runs(groups, want):
    """({setting: [finished runs]}, [(setting, run) in progress]): the summary is built from runs that have finished
    (stopped, or all `want` rounds done); a run in progress is listed, never half-counted."""
    done = {n: [r for r in rs if finished(r, want) != "in progress"] for n, rs in groups.items()}
    going = [(n, r) for n, rs in groups.items() for r in rs if finished(r, want) == "in progress"]
    return {n: rs for n, rs in done.items() if rs}, going


def how_far_text(name, runs, key, sgn):
    """'Δkey ... reached in [rounds] under the ceiling (... at the ceiling), cumulative KL ...' for one setting."""
    rs = [reach(r, key, sgn) for r in runs]
    val = lambda f: [x[f] for x in rs if x[f] is not None]  # noqa: E731
    lb = [r["name"] for r, x in zip(runs, rs) if not x["broke"]]
    return (f"{name}: Δ{key} {spread(val('reached'))} at its best round under the ceiling, after "
            f"{[x['rounds'] for x in rs]} rounds under it"
            + (f" ({spread(val('trait'))} at the ceiling, interpolated)" if not lb else
               f" ({', '.join(lb)} had not broken: a lower bound)")
            + f", cumulative KL {spread(val('cum_kl')) if val('cum_kl') else NOT_MEASURED}"
            + (f", kl_base at the ceiling {spread(val('kl'))}" if val("kl") and not lb else ""))


def unusable_costs(res):
    """{cost: why} for each cost reader measured but too noisy to locate equal cost in every setting (it never rose
    beyond its noise along λ=0's path): the verdict names them, the figure marks their panels."""
    eqs = [x["equal_cost"] for x in res.values() if x.get("equal_cost")]
    return {c: next(e[c].get("why", "") for e in eqs) for c in DECIDE
            if eqs and all(e.get(c, {}).get("word") == "not measurable" for e in eqs)}


def verdict_text(res, groups, key, sgn):
    """The plain verdict: does any setting hold more trait than λ=0 at equal cost, on which cost reader, beyond the
    paired noise; and how far (trait, rounds, cumulative KL) each gets before it breaks."""
    if "lam0" not in groups:
        return "Not measured: no finished λ=0 runs (the reference) yet."
    cmp = {n: x for n, x in res.items() if x.get("equal_cost")}
    measured = [c for c in DECIDE if any(x["equal_cost"][c]["word"] not in (NOT_MEASURED, "not measured")
                                         for x in cmp.values())]
    unmeasured = [c for c in COSTS if c not in measured and not (c == "cum_kl" and "kl_base" in measured)]
    flat = unusable_costs(res)  # measured, but too noisy to locate equal cost (each of these is in `measured`)
    measured = [c for c in measured if c not in flat]

    def best(x, c, s):
        v = max((v for v in x["equal_cost"][c]["levels"] if v["word"].startswith(s)), key=lambda v: abs(v["d"]))
        return f"Δ{key} {v['why']}, at {v['label']} {c} ({v['level']:.3g})"

    def say(s):
        return [f"{n} holds {s} trait than λ=0 at equal {c} ({best(x, c, s)})" for n, x in cmp.items() for c in measured
                if any(v["word"].startswith(s) for v in x["equal_cost"][c]["levels"])
                and x["equal_cost"][c]["word"].startswith((s, "mixed"))]
    more, less = say("more"), say("less")
    text = ["**Does any setting hold more trait than λ=0 at equal cost?** "
            + ("Yes: " + "; ".join(more) + "." if more else
               f"No: no setting holds more {key} than λ=0 at equal cost beyond the paired noise, on any cost reader "
               f"measured here ({', '.join(measured) or 'none'}).")
            + (" " + "; ".join(less) + "." if less else "")
            + (f" Not measured in these runs: {', '.join(unmeasured)}." if unmeasured else "")
            + "".join(f" Not measurable on {c}: {w}." for c, w in flat.items())]
    text += ["**How far each gets before it breaks** (the ppl ceiling): "
             + "; ".join(how_far_text(n, rs, key, sgn) for n, rs in groups.items()) + "."]
    fw = [f"{n}: {x['further']['word']} ({x['further']['why']}; Δ{key} at the ceiling vs λ=0 "
          f"{x['further'].get('trait_text', '—')})" for n, x in res.items() if x.get("further")]
    text += ["**Further than λ=0** (more trait held up to the ppl ceiling, beyond the paired noise over seeds and "
             "beyond λ=0's bracket at the ceiling; each seed's own sign in brackets): "
             + "; ".join(fw) + "."] * bool(fw)
    return "\n\n".join(text)


def level_cell(v):
    if v["word"] == "not comparable":
        return f"not comparable ({v['why']})"
    if v.get("d") is None:
        return v["word"]
    ci = f" [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" if v.get("ci") else ""
    br = v.get("bracket")  # a segment crossed the level: the bounds, † where only the straight lines were beyond noise
    br = f" ⟨{br[0]:+.3f}, {br[1]:+.3f}⟩{'†' * bool(br[2] and v['word'].startswith('the same'))}" if br else ""
    return f"{v['d']:+.3f}{ci} {''.join(v['signs'])}{br} @ {v['level']:.3g}"


def steps_cell(runs, k):
    """Optimizer steps in round k (mean [min, max] over seeds) and summed through round k."""
    one = [evidence.get(evidence.round_at(k)(r), "heal", "steps") for r in runs if evidence.round_at(k)(r)]
    tot = [sum(evidence.get(x, "heal", "steps") for x in r["rounds"] if x["round"] <= k) for r in runs
           if evidence.round_at(k)(r) and None not in [evidence.get(x, "heal", "steps") for x in r["rounds"]
                                                        if x["round"] <= k]]
    return f"{spread(one, 0)} (Σ {spread(tot, 0)})" if one and None not in one else "—"


def summarize_rounds(out, want=8):
    """results/crux_rounds/summary.md, summary.json, frontier.png from the runs' rounds.jsonl (no model), built from
    the runs that have finished (stopped, or `want` rounds done); runs in progress are listed."""
    names = [n for n in ROUND_SETTINGS if evidence.seed_dirs(str(out / n))]
    names += sorted(n.name for n in out.iterdir() if n.is_dir() and n.name not in names and evidence.seed_dirs(str(n)))
    every = {n: [evidence.read_run(d) for d in evidence.seed_dirs(str(out / n))] for n in names}
    every = {n: [r for r in rs if r["base"]] for n, rs in every.items()}
    groups, going = finished_runs(every, want)
    allruns = [r for rs in groups.values() for r in rs]
    prog = ("Runs in progress (not in this summary until they finish): " + "; ".join(
        f"{n}/{r['name']} ({len(r['rounds'])} of {want} rounds)" for n, r in going) + ".") if going else \
        "Runs in progress: none."
    if not allruns:
        print(f"no finished runs with a base line under {out}. {prog}")
        runio.write_text(out / "summary.md", f"# The crux over rounds\n\nNo finished runs yet. {prog}\n")
        return None
    readers = evidence.readers_of(allruns)
    checks = {k: readable(allruns, k, s) for k, s in readers}  # evidence's rule: chance and the ± dose direction check
    dec = next(((k, s) for k, s in readers if checks[k][0]), readers[0])
    zero = groups.get("lam0", [])
    fixed = {f[2:].replace("-", "_") for fl in ROUND_SETTINGS.values() for f in fl if f.startswith("--")}
    cfgs = {k: {json.dumps((r["cfg"] or {}).get(k)) for r in allruns} for k in (allruns[0]["cfg"] or {})
            if k not in SAME | fixed}
    differ = sorted(k for k, v in cfgs.items() if len(v) > 1)
    seen = {c: any(len(path(r, dec[0], c)) > 1 for r in allruns) for c in COSTS}
    res = {}
    rounds = sorted({r["round"] for run in allruns for r in run["rounds"]})
    cols = [("ppl_base", "ppl_base", 3), ("degenerate", "degenerate", 2), ("on-topic", "on_topic", 3),
            ("kl_base", "kl_base", 3), ("cum. KL", "cum_kl", 3)]
    for name, runs in groups.items():
        rows = []
        for k in rounds:
            pick = evidence.round_at(k)
            rk = [r for r in runs if pick(r)]
            if not rk:
                continue
            cells = [str(k), str(len(rk))] + [ivs(evidence.delta(rk, pick, evidence.base_of, key)) for key, _ in readers]
            for _, c, nd in cols:  # on_topic: the line's own reading; the others: the cost at this point
                cells.append(spread([evidence.get(pick(r), c) if c == "on_topic" else
                                     cost_of(r, c)[1 + r["rounds"].index(pick(r))] for r in rk], nd))
            cells += [spread([evidence.get(pick(r), "kept") / evidence.get(pick(r), "generated")
                              if evidence.get(pick(r), "generated") else None for r in rk], 2),
                      spread([evidence.get(pick(r), "heal", "barrier_active") for r in rk], 2), steps_cell(rk, k)]
            rows.append(cells)
        x = dict(runs=[r["name"] for r in runs], ended=[finished(r, want) for r in runs],
                 under_ceiling=[under_ceiling(r) for r in runs], rows=rows, minutes_per_round=minutes(runs),
                 reach=[{k: v for k, v in reach(r, *dec).items() if "items" not in k} for r in runs])
        if name != "lam0" and zero:
            x["equal_cost"] = {c: equal_cost(runs, zero, *dec, c, checks[dec[0]]) for c in COSTS}
            x["bet"] = bet_word(x["equal_cost"])
            x["further"] = further(runs, zero, *dec, checks[dec[0]], name)
        res[name] = x
    base = allruns[0]["base"]
    verdict = verdict_text(res, groups, *dec)
    lines = ["# The crux over rounds: does any setting hold more trait than λ=0 at equal cost, and how far does each "
             "get before it breaks?", "",
             f"Runs: {len(allruns)} finished under `{out}` ({', '.join(f'{n}: {len(rs)}' for n, rs in groups.items())} "
             f"seeds). Settings (steer_heal flags, beside `{' '.join(ROUND_FLAGS)}`): "
             + "; ".join(f"{n} `{' '.join(setting_flags(n, rs))}`" for n, rs in groups.items()) + ". "
             f"Command: `python sweep.py --over-rounds --rounds {want} --out {out}` (resumes; `--summarize` rewrites this from the "
             f"rows of the runs that have finished). First run's command: "
             f"`python {' '.join(map(str, allruns[0]['argv'] or []))}`.", "", prog, "",
             f"Base model: ppl_base {evidence.fmt(evidence.get(base, 'ppl_base'))}, ceiling "
             f"×{evidence.fmt(evidence.ceiling(allruns[0])[0])}; "
             + ", ".join(f"{k} {evidence.fmt(evidence.get(base, k))}" for k, _ in readers) + ".", ""]
    if differ:
        lines += [f"**WARNING: the runs differ in {', '.join(differ)}** beyond their settings: they are not one grid.", ""]
    lines += ["Readers of this persona (lib/evidence.py's rule over every run: not at chance, and the steered line's "
              "vector at ± dose moves it in opposite directions beyond noise in every run):", ""]
    lines += [f"- {k} ({'+' if s > 0 else '−'}): {'readable' if checks[k][0] else 'NOT readable: decides nothing'}: "
              + short(checks[k][1], len(allruns)) for k, s in readers]
    lines += ["", f"The trait is {dec[0]} (the first readable reader), Δ vs each run's base line.", "",
              "## Verdict", "", verdict, "",
              "## How it is compared", "",
              "Round by round, a setting that is merely slower than λ=0 walks λ=0's own curve and looks as if it "
              "removed incoherence before the trait (λ=0's trait flattens while its ppl jumps): the per-round "
              "'preferential' verdict of earlier summaries fails that null (a test feeds it λ=0 one round late and "
              "λ=0 slowed down) and is gone. Instead each setting is compared with λ=0 of the same seed **at equal "
              "cost**: each run's path base → r0 → r1 ... through (cost, Δtrait), the trait at a cost level being the "
              "most the path held at that cost or under (points, and segments crossing it interpolated; the "
              "per-prompt readings interpolated with the same weights as the means), only where both paths reach "
              "the level (no extrapolation: else *not comparable*). Levels: the cost λ=0 reached in each of its "
              "rounds, "
              "and the highest cost both reach (per seed). A straight line under-reads a saturating curve across a "
              "long segment (λ=0's trait flattens between its last rounds), so where a segment crosses a level the "
              "difference is also read against a **bracket**, the segment's endpoint with more trait (between two "
              "measured rounds the trait lies between their readings): *more* needs the setting's straight line "
              "above λ=0's top beyond the noise, *less* the setting's top below λ=0's straight line; a cell so "
              "decided shows that bound's difference, the others the straight lines' (a test feeds it λ=0's own "
              "curve sampled more finely, which the straight lines alone called more and further). Noise: the paired 95% bootstrap over prompts of the "
              "seeds' mean difference, widened to at least the mean ± the seeds' spread (lib/evidence.py's rule for "
              "groups); cells: mean difference [paired CI], each seed's sign (+ / −: its own paired CI excludes 0; "
              "0: it holds 0), ⟨the bracket's two bounds, where a segment crosses the level; †: beyond noise on straight "
              "lines only⟩, @ the mean level. The cost level is taken at its mean: its own noise is not in the "
              "interval, but a cost must move beyond it to locate anything: a cost reader that never rises beyond "
              "its paired noise over the base (95% bootstrap by prompt) in any round of λ=0 is *not measurable*, "
              "and a level where λ=0 sits at the base's cost within noise is *not comparable*. Cost readers:", ""]
    lines += [f"- {v}" + ("" if seen[c] else f": {NOT_MEASURED}") for c, v in COSTS.items()]
    lines += ["", "**Further** = more trait held up to the ppl ceiling, where the loop stops (the most trait at a "
              "ppl_base at or under the ceiling, the segment that crosses it interpolated: a setting that only takes "
              "smaller steps along λ=0's curve lands nearer the ceiling and holds no more), paired per seed and "
              "prompt, decided over the seeds with the noise and the bracket above (λ=0's top at the ceiling is its "
              "reading at the round that passed it); a run that never broke holds a lower bound, which "
              "decides only when it is already beyond λ=0's, or when it is below after every round the walk allows "
              "and no rise is detected over the second half of them (the paired CI of that move holds 0, every "
              "seed): *not as far within the walk's rounds* (no claim about more rounds); still climbing, or "
              "stopped early for another reason, it is *not decided*. Rounds under the ceiling are shown, never the verdict "
              "(λ=0 slowed down has twice the rounds and the same trait); beside it, the KL from the base reached up "
              "to the ceiling (kl_base, the same way) and the cumulative KL.", ""]
    lines += ["## At equal cost, against λ=0", ""]
    nz = sorted({v["label"] for x in res.values() for c in COSTS for v in x.get("equal_cost", {}).get(c, {}).get(
        "levels", [])} - {"highest both reach"}, key=lambda s: int(s.split("r")[-1]))
    for c in COSTS:
        lines += [f"### At equal {c}", "", COSTS[c] + ".", ""]
        if not seen[c]:
            lines += [f"{c}: {NOT_MEASURED} (their rows predate it).", ""]
            continue
        hdr = ["setting"] + [f"at {lb} {c}" for lb in nz] + ["at the highest both reach", "verdict"]
        lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for name, x in res.items():
            e = x.get("equal_cost", {}).get(c)
            if not e:
                continue
            lv = {v["label"]: v for v in e["levels"]}
            lines.append("| " + " | ".join([name] + [level_cell(lv[lb]) if lb in lv else "—" for lb in nz]
                                           + [level_cell(lv["highest both reach"]) if lv else "—", e["word"]]) + " |")
        whys = {}  # one line per reason, naming the settings it holds for (one with fewer seeds reads fewer)
        for n, x in res.items():
            e = x.get("equal_cost", {}).get(c, {})
            if e.get("word") == "not measurable" and e.get("why"):
                whys.setdefault(e["why"], []).append(n)
        lines += [""] + [f"Not measurable ({', '.join(ns)}): {w}." for w, ns in sorted(whys.items())] + [""] * bool(whys)
    kl_seen = any(a["kl"] is not None for x in res.values() for a in x["reach"])
    lines += ["## How far before it breaks", "",
              f"Per setting, over seeds: the rounds under the ceiling; Δ{dec[0]} at its best round under the ceiling "
              f"(as measured) and at the ceiling (interpolated on the segment that crosses it; ≥: a lower bound, the "
              "run never broke); kl_base at the ceiling the same way; cumulative KL (kl_base summed over the rounds "
              "under the ceiling) and optimizer steps over those rounds. vs λ=0: at the ceiling, paired per seed and "
              "prompt.", "",
              "| setting | rounds under the ceiling | broke (per seed) | Δ" + dec[0] + " at best round | Δ" + dec[0]
              + " at the ceiling | kl_base at the ceiling | cum. KL | Σ steps | vs λ=0: Δ" + dec[0]
              + " at the ceiling | vs λ=0: kl_base at the ceiling | further? |", "|" + "---|" * 11]
    for name, x in res.items():
        f, rs = x.get("further") or {}, x["reach"]
        lb = "≥ " * (not all(a["broke"] for a in rs))
        nm = lambda v, nd=3: spread(v, nd) if any(a is not None for a in v) else NOT_MEASURED  # noqa: E731
        lines.append("| " + " | ".join([
            name, str(x["under_ceiling"]), " ".join("yes" if a["broke"] else "no" for a in rs),
            spread([a["reached"] for a in rs]), lb + spread([a["trait"] for a in rs]),
            (lb + nm([a["kl"] for a in rs])) if kl_seen else NOT_MEASURED, nm([a["cum_kl"] for a in rs]),
            spread([a["steps"] for a in rs], 0), f.get("trait_text", "—") if f else "(the reference)",
            (f.get("kl_text", "—") + f": {f['kl_word']}" if f.get("kl") else f.get("kl_word", "—")) if f else "—",
            f"**{f['word']}** ({f['why']})" if f else "—"]) + " |")
    lines += ["", "## Per round", "", "Δ columns: vs the run's base line (one seed: its paired 95% CI by prompt; "
              "several: mean [mean ± noise], evidence.delta). Levels: mean [min, max] over seeds. on-topic: the "
              "line's mean cosine (its drop from the base's is the cost). cum. KL: kl_base summed over rounds 0..k. "
              "steps: optimizer steps of the round's heal (Σ: through round k).", ""]
    for name, x in res.items():
        hdr = ["round", "seeds"] + [f"Δ{k}" for k, _ in readers] + [h for h, _, _ in cols]
        hdr += ["kept frac", "barrier", "steps (Σ)"]
        lines += [f"### {name} (`{' '.join(setting_flags(name, groups[name]))}`)", "",
                  "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        lines += ["| " + " | ".join(c) + " |" for c in x["rows"]]
        miss = [h for h, c, _ in cols if not any(len(path(r, dec[0], c)) > 1 for r in groups[name])]
        lines += [""] + [f"{', '.join(miss)}: {NOT_MEASURED}."] * bool(miss)
        lines += ["", "Runs: " + "; ".join(f"{r}: {e}, {n} rounds under the ceiling" for r, e, n in
                                           zip(x["runs"], x["ended"], x["under_ceiling"]))
                  + (f". About {x['minutes_per_round']:.1f} min a round (the lines' own stage times)."
                     if x["minutes_per_round"] else ""), ""]
    runio.write_text(out / "summary.md", "\n".join(lines) + "\n")
    runio.write_text(out / "summary.json", json.dumps(runio.finite(dict(
        readers={k: dict(sign=s, readable=checks[k][0], why=checks[k][1]) for k, s in readers}, trait=dec[0],
        differ=differ, verdict=verdict, in_progress=[f"{n}/{r['name']}" for n, r in going],
        costs={c: dict(axis=v, measured=seen[c]) for c, v in COSTS.items()},
        settings={n: {k: v for k, v in x.items() if k != "rows"} for n, x in res.items()})), indent=1, default=str))
    frontier_rounds(out, groups, readers, checks, set(unusable_costs(res)))  # marks the panels equal cost cannot use
    for name in groups:  # each setting's group report (report.py), beside its seeds' own, once none of its runs is
        if not any(n == name for n, _ in going):  # still going (a running run writes its own; a group report over
            report.write_report(str(out / name))  # its partial rows would read them as a finished seed)
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


def frontier_rounds(out, groups, readers, checks, flat=()):
    """Per persona reader (rows) and cost reader (columns: ppl_base, kl_base, cumulative KL, degenerate, on-topic
    drop), Δreader vs base against the cost: one line per setting through base → r0 → r1 ..., mean over seeds, seeds
    as bands (shaded: the reader's min–max; bars: the cost's); the ppl ceiling dotted. A cost the rows do not carry:
    its panel says so."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    costs = ["ppl_base", "kl_base", "cum_kl", "degenerate", "on_topic"]
    fig, axes = plt.subplots(len(readers), len(costs), figsize=(5.2 * len(costs), 4.6 * len(readers)), squeeze=False)
    colors = dict(lam0="k", rmse="tab:blue", mean="tab:orange", spectral3="tab:green", anchor1="tab:red",
                  loosen1="tab:purple", topic="tab:brown")
    for row, (key, _) in zip(axes, readers):
        for ax, cost in zip(row, costs):
            drawn = False
            for i, (name, runs) in enumerate(groups.items()):
                c = colors.get(name, f"C{i + 4}")
                pts = {}
                for r in runs:
                    for j, p in enumerate(path(r, key, cost)):
                        pts.setdefault(j, []).append(p[:2])
                js = [j for j in sorted(pts) if pts[j]]
                if len(js) < 2:
                    continue
                drawn = True
                mx = [statistics.fmean(x for x, _ in pts[j]) for j in js]
                my = [statistics.fmean(y for _, y in pts[j]) for j in js]
                ax.plot(mx, my, "o-", color=c, label=f"{name} ({len(runs)} seeds)", ms=4)
                ax.fill_between(mx, [min(y for _, y in pts[j]) for j in js], [max(y for _, y in pts[j]) for j in js],
                                color=c, alpha=0.15, lw=0)
                for j, x0, y0 in zip(js, mx, my):
                    ax.plot([min(x for x, _ in pts[j]), max(x for x, _ in pts[j])], [y0, y0], color=c, lw=0.8,
                            alpha=0.6)
                    if j:
                        ax.annotate(f"r{j - 1}", (x0, y0), fontsize=6, xytext=(3, 3), textcoords="offset points",
                                    color=c)
            ax.set_xlabel(COSTS[cost].split(": ")[0] + (" (cost →): not measurable"
                                                       if cost in flat else " (cost →)"))
            ax.set_ylabel(f"Δ {key} vs base (the trait →)" + ("" if checks[key][0] else ": NOT readable here"))
            if not drawn:
                ax.text(0.5, 0.5, f"{cost}: {NOT_MEASURED}", ha="center", va="center", transform=ax.transAxes)
                continue
            ceil = evidence.ceiling(next(iter(groups.values()))[0])[1]
            if cost == "ppl_base" and ceil:
                ax.axvline(ceil, color="k", ls=":", lw=1, label="ppl ceiling")
            ax.axhline(0, color="k", ls=":", lw=0.8)
            ax.legend(fontsize=7)
    fig.suptitle("Crux over rounds: base → round 0 → round 1 ..., mean over seeds; bands = seeds' min–max; "
                 "compare settings at equal cost (a vertical line), not at equal round")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
