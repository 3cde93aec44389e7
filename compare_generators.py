"""Which steered generator saves the most usable completions? Constant dose vs length decay vs
backtrack-and-replay vs cosine gate, at the same nominal doses, prompts and seed, in one run.

    python compare_generators.py                  # embedded model, writes results/generators_<device>.json
    python compare_generators.py --model ID --n 64 --doses 0.4 0.8
    python compare_generators.py --script my_idea.py   # the generators of your copy of steer_heal.py

    python compare_generators.py --options decay --n 64 --doses 0.6 1.2 1.8 2.4 3.0 --out results/filter_q0   # Q0

Per option: kept fraction after the filters (and what dropped the rest), mean tail ppl and mean ppl under the (base)
model of the survivors, the survivors' trait projection on the unit vector read by the base model (trait_fixed),
rewinds, and generation tokens/s. And Q0's evidence from two fixed instruments outside the model, for the kept and
the dropped apart: VADER sentiment (the default persona's trait, warmth) and the MiniLM cosine of each completion
to its user prompt ("on topic"; "off topic" = below the 10th percentile of the unsteered model's own answers). A
filter worth having drops what these call off topic and keeps what carries the trait.
"""
import argparse, dataclasses, json, math, os, platform, time
from collections import Counter
from pathlib import Path

import torch

from lib import readers
from lib import runio
import steer_heal as sh  # the default --script; main() rebinds it to the one given

# Every option sets every generator knob: Config()'s defaults change over time and must not leak in.
PLAIN = dict(steer_decay=0.0, steer_decay_t=16.0, backtrack=False, backtrack_window=16, backtrack_scale=0.5,
             backtrack_retries=2, cosine_gate=False, steer_positions="all")  # every generator knob, pinned
OPTIONS = {  # name -> Config overrides
    "constant": PLAIN,
    "decay": dict(PLAIN, steer_decay=1.0),
    "backtrack": dict(PLAIN, backtrack=True),
    "cosine_gate": dict(PLAIN, cosine_gate=True),
    "constant_generated": dict(PLAIN, steer_positions="generated"),  # the prompt's KV cache unsteered
    "decay_generated": dict(PLAIN, steer_decay=1.0, steer_positions="generated"),
}


def on_topic(users, texts):
    """[N] MiniLM cosine of each completion to its user prompt: broken or runaway text drifts off the question."""
    return (readers.embed(users) * readers.embed(texts)).sum(1).tolist() if texts else []


def text_readings(items, users, off_below):
    """The fixed instruments on a set of scored completions: n, mean VADER sentiment with its 95% CI, mean on-topic
    cosine, and the share off topic (cosine below `off_below`)."""
    s, cos = readers.sentiment([x["text"] for x in items]), on_topic([users[x["prompt"]] for x in items],
                                                                    [x["text"] for x in items])
    return dict(n=len(items), sentiment=readers.mean(s), sentiment_ci=readers.paired_ci(s), on_topic=readers.mean(cos),
                off_topic=sum(c < off_below for c in cos) / len(cos) if cos else None)


def compare(model, tok, cfg, doses, n, seed=0, options=tuple(OPTIONS)):
    torch.set_grad_enabled(False)
    layers = sh.steer_layers(model, cfg.layers)
    v = sh.extract_vector(model, tok, cfg.pos, cfg.neg, sh.CONTEXTS[:cfg.n_contexts], layers)
    users = [sh.GEN_PROMPTS[i % len(sh.GEN_PROMPTS)] for i in range(n)]
    prompts = [sh.chat(tok, u) for u in users]
    torch.manual_seed(seed)
    ref = sh.score(model, tok, sh.generate(model, tok, prompts, cfg, desc="unsteered"), cfg)
    tails = sorted(x["ppl_tail"] for x in ref)
    gate = cfg.ppl_mult * tails[len(tails) // 2]
    by_prompt = dict(zip(prompts, users))
    ref_cos = sorted(on_topic(users, [x["text"] for x in ref]))
    off_below = ref_cos[len(ref_cos) // 10]  # the unsteered model's own 10th percentile
    unsteered = text_readings(ref, by_prompt, off_below)
    print(f"unsteered: sentiment {unsteered['sentiment']:+.3f}  on topic {unsteered['on_topic']:.3f} "
          f"(off topic below {off_below:.3f})  gate {gate:.2f}", flush=True)
    rows = []
    for name in options:
        c = dataclasses.replace(cfg, **OPTIONS[name])
        for d in doses:
            torch.manual_seed(seed)  # same sampling noise for every option
            t = time.time()
            items = sh.generate(model, tok, prompts, c, v, [d] * n, desc=f"{name} dose {d}", gate=gate)
            dt = time.time() - t
            sh.score(model, tok, items, c, gate)
            kept, dropped = [x for x in items if x["kept"]], [x for x in items if not x["kept"]]
            proj = readers.mean(sh.projection(model, tok, [x["prompt"] for x in kept], [x["ids"] for x in kept], v)) if kept else None
            rows.append(dict(option=name, dose=d, n=n, kept_frac=len(kept) / n,
                             dropped_by=dict(Counter(x["why_dropped"] for x in dropped)),
                             kept_text=text_readings(kept, by_prompt, off_below),
                             dropped_text=text_readings(dropped, by_prompt, off_below),
                             ppl_tail_kept=sum(x["ppl_tail"] for x in kept) / max(1, len(kept)),
                             ppl_kept=sum(x["ppl"] for x in kept) / max(1, len(kept)),
                             trait_fixed_kept=proj, rewinds=sum(len(x["rewinds"]) for x in items),
                             tokens_per_s=sum(x["n_tokens"] for x in items) / dt))
            r = rows[-1]
            print(f"{name:12s} dose {d:5.2f}: kept {r['kept_frac']:4.0%}  ppl(kept) {r['ppl_kept']:6.2f}  "
                  f"trait_fixed(kept) {r['trait_fixed_kept'] if proj is not None else float('nan'):7.3f}  "
                  f"rewinds {r['rewinds']:3d}  {r['tokens_per_s']:6.1f} tok/s", flush=True)
            for side in ("kept", "dropped"):
                t = r[f"{side}_text"]
                if t["n"]:
                    print(f"{'':12s} {side:7s} {t['n']:3d}: sentiment {t['sentiment']:+.3f}  on topic {t['on_topic']:.3f}  "
                          f"off topic {t['off_topic']:4.0%}" + (f"  dropped by {r['dropped_by']}" * (side == "dropped")),
                          flush=True)
    return dict(gate=gate, off_topic_below=off_below, unsteered=unsteered, rows=rows)


def main():
    global sh
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="")
    p.add_argument("--n", type=int, default=32, help="prompts per (option, dose)")
    p.add_argument("--doses", type=float, nargs="+", default=[0.4, 0.8])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS), help="generators to compare")
    p.add_argument("--out", default="results")
    p.add_argument("--script", default="steer_heal.py", help="the experiment file whose generators run (my_idea.py)")
    a = p.parse_args()
    sh = runio.load_script(a.script)
    model, tok = sh.load_model(a.model)
    cfg = sh.Config(max_new_tokens=a.max_new_tokens)
    t = time.time()
    res = compare(model, tok, cfg, a.doses, a.n, a.seed, a.options)
    dev = torch.cuda.get_device_name().replace(" ", "_") if torch.cuda.is_available() else "cpu"
    res.update(model=a.model or sh.EMBEDDED, persona=cfg.persona, pos=cfg.pos, neg=cfg.neg, device=dev, cpu=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), seconds=time.time() - t, date=time.strftime("%Y-%m-%d"),
               command="python compare_generators.py " + " ".join(os.sys.argv[1:]))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"generators_{dev}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
