"""How much of the crux verdict is the bootstrap's own randomness? The summary draws its paired bootstrap with one
seed (sweep.boot, seed 0). This re-decides every setting against λ=0, at equal ppl_base and kl_base and at the ceiling
('further'), under 20 bootstrap seeds, from the same rows (no model), and counts the words. A word that changes
with the seed rests on an interval whose end sits at the threshold: not established either way.

    python results/crux_rounds/bootstrap_seeds.py            # writes results/crux_rounds/bootstrap_seeds.md
"""
import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import sweep  # noqa: E402
from lib import evidence, runio  # noqa: E402

SEEDS = range(20)
COSTS = ("ppl_base", "kl_base")


def main():
    groups = {n: [evidence.read_run(d) for d in evidence.seed_dirs(os.path.join(HERE, n))]
              for n in sweep.ROUND_SETTINGS if evidence.seed_dirs(os.path.join(HERE, n))}
    allruns = [r for rs in groups.values() for r in rs]
    key, sgn = next((k, s) for k, s in evidence.readers_of(allruns) if sweep.readable(allruns, k, s)[0])
    ok = sweep.readable(allruns, key, sgn)
    boot = sweep.boot
    words = collections.defaultdict(collections.Counter)
    try:
        for b in SEEDS:
            sweep.boot = lambda d, seed=0, b=b: boot(d, seed=b)
            for name, runs in groups.items():
                if name == "lam0":
                    continue
                for c in COSTS:
                    words[name, f"at equal {c}"][sweep.equal_cost(runs, groups["lam0"], key, sgn, c, ok)["word"]] += 1
                words[name, "further"][sweep.further(runs, groups["lam0"], key, sgn, ok, name)["word"]] += 1
    finally:
        sweep.boot = boot
    lines = ["# The crux verdict under 20 bootstrap seeds", "",
             f"Every setting against λ=0 on `{key}`, decided as `summary.md` decides it (sweep.equal_cost, sweep.further), "
             f"with the paired bootstrap drawn under seeds {SEEDS.start}..{SEEDS.stop - 1} instead of the summary's 0. "
             f"Runs: {', '.join(f'{n} {len(rs)}' for n, rs in groups.items())}. Command: "
             "`python results/crux_rounds/bootstrap_seeds.py` (rows only, no model).", "",
             "| setting | comparison | words over 20 bootstrap seeds |", "|---|---|---|"]
    lines += [f"| {n} | {what} | " + "; ".join(f"{w}: {k}" for w, k in cnt.most_common()) + " |"
              for (n, what), cnt in words.items()]
    shaky = [f"{n} {what}" for (n, what), cnt in words.items() if len(cnt) > 1]
    lines += ["", "Words that change with the bootstrap seed: " + ("; ".join(shaky) if shaky else "none") + "."]
    runio.write_text(os.path.join(HERE, "bootstrap_seeds.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
