"""Which steered generator saves the most usable completions? Constant dose vs length decay vs
backtrack-and-replay vs cosine gate, at the same nominal doses, prompts and seed, in one run.

    python compare_generators.py                  # embedded model, writes results/generators_<device>.json
    python compare_generators.py --model ID --n 64 --doses 0.4 0.8

Per option: kept fraction after the filters, mean tail ppl and mean ppl under the (base) model of the
survivors, the survivors' trait projection on the unit vector read by the base model (trait_fixed), rewinds, and generation tokens/s.
"""
import argparse, dataclasses, json, math, os, platform, time
from pathlib import Path

import torch

import readers
import steer_heal as sh

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


def compare(model, tok, cfg, doses, n, seed=0):
    torch.set_grad_enabled(False)
    layers = sh.steer_layers(model, cfg.layers)
    v = sh.extract_vector(model, tok, cfg.pos, cfg.neg, sh.CONTEXTS[:cfg.n_contexts], layers)
    users = [sh.GEN_PROMPTS[i % len(sh.GEN_PROMPTS)] for i in range(n)]
    prompts = [sh.chat(tok, u) for u in users]
    torch.manual_seed(seed)
    ref = sh.score(model, tok, sh.generate(model, tok, prompts, cfg, desc="unsteered"), cfg)
    tails = sorted(x["ppl_tail"] for x in ref)
    gate = cfg.ppl_mult * tails[len(tails) // 2]
    rows = []
    for name, over in OPTIONS.items():
        c = dataclasses.replace(cfg, **over)
        for d in doses:
            torch.manual_seed(seed)  # same sampling noise for every option
            t = time.time()
            items = sh.generate(model, tok, prompts, c, v, [d] * n, desc=f"{name} dose {d}", gate=gate)
            dt = time.time() - t
            sh.score(model, tok, items, c, gate)
            kept = [x for x in items if x["kept"]]
            proj = readers.mean(sh.projection(model, tok, [x["prompt"] for x in kept], [x["ids"] for x in kept], v)) if kept else None
            rows.append(dict(option=name, dose=d, n=n, kept_frac=len(kept) / n,
                             ppl_tail_kept=sum(x["ppl_tail"] for x in kept) / max(1, len(kept)),
                             ppl_kept=sum(x["ppl"] for x in kept) / max(1, len(kept)),
                             trait_fixed_kept=proj, rewinds=sum(len(x["rewinds"]) for x in items),
                             tokens_per_s=sum(x["n_tokens"] for x in items) / dt))
            r = rows[-1]
            print(f"{name:12s} dose {d:5.2f}: kept {r['kept_frac']:4.0%}  ppl(kept) {r['ppl_kept']:6.2f}  "
                  f"trait_fixed(kept) {r['trait_fixed_kept'] if proj is not None else float('nan'):7.3f}  "
                  f"rewinds {r['rewinds']:3d}  {r['tokens_per_s']:6.1f} tok/s", flush=True)
    return dict(gate=gate, rows=rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="")
    p.add_argument("--n", type=int, default=32, help="prompts per (option, dose)")
    p.add_argument("--doses", type=float, nargs="+", default=[0.4, 0.8])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results")
    a = p.parse_args()
    model, tok = sh.load_model(a.model)
    cfg = sh.Config(max_new_tokens=a.max_new_tokens)
    t = time.time()
    res = compare(model, tok, cfg, a.doses, a.n, a.seed)
    dev = torch.cuda.get_device_name().replace(" ", "_") if torch.cuda.is_available() else "cpu"
    res.update(model=a.model or sh.EMBEDDED, device=dev, cpu=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), seconds=time.time() - t, date=time.strftime("%Y-%m-%d"),
               command="python compare_generators.py " + " ".join(os.sys.argv[1:]))
    Path(a.out).mkdir(exist_ok=True)
    path = Path(a.out) / f"generators_{dev}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
