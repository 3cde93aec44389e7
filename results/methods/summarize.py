"""The methods grid's table from its rows (no model): per method, at the last round (round 1), each reader's change
vs the base line over the seeds (evidence.delta: the mean ± the larger of the seeds' spread and the paired bootstrap),
the tokens generated and the optimizer steps, and each group report's verdicts (report.py writes them). Runs that
have not finished are listed, never half-counted.

    python results/methods/summarize.py --out results/methods/summary.md   (or to stdout without --out)
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from lib.evidence import base_of, delta, fiv, fmt, get, mean, read_run, round_at, seed_dirs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["steer-heal", "prompt-bake", "online-2steps", "online-12steps"]
KEYS = ["sentiment", "degenerate", "on_topic", "kl_base", "ppl_base"]  # the trait reader, then the cost readers
LAST = 1  # default sizes: 2 rounds


def verdicts(group):
    """The group report's verdict words, Q0-Q3 and vs prompting (report.py's '**Verdict: ...**' lines)."""
    p = os.path.join(group, "report.md")
    if not os.path.exists(p):
        return {}
    out, q = {}, None
    for line in open(p):
        if line.startswith("#"):
            q = (re.match(r"#+ (Q\d)", line) or [None, line.strip("# \n")[:24]])[1]
        v = re.match(r"\*\*Verdict: ([^*]+)\*\*", line)
        if v and q and q not in out:
            out[q] = v[1].strip().rstrip(":")
    return out


def tokens(run):
    """Completion tokens generated through the last round (each round's collect line, summed)."""
    vals = [get(r, "generated_tokens") for r in run["rounds"] if r["round"] <= LAST]
    return sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None


def steps(run):
    return [get(r, "heal", "steps") for r in run["rounds"] if r["round"] <= LAST]


def main():
    print("# Methods on warmth: the table, rebuilt from the rows\n")
    print(f"At round {LAST} (the last), vs the base line, over seeds: mean [lo, hi] (evidence.delta). Cost readers: "
          "degenerate (share of answers a words-alone filter drops, up is worse), on_topic (MiniLM cosine of answer "
          "to its prompt, down is worse), kl_base (mean per-token KL to the base model over the answers, nats), "
          "ppl_base (the base model's perplexity of the answers). The persona prompt is the steer-heal runs' "
          "prompting line.\n")
    print("| method | seeds | " + " | ".join(f"Δ{k}" for k in KEYS) + " | tokens r0–1 | steps r0, r1 |")
    print("|---|---|" + "---|" * (len(KEYS) + 2))
    missing, verdict_rows = [], []
    for name in METHODS:
        runs, dirs = [], seed_dirs(os.path.join(HERE, name))
        for d in dirs:
            run = read_run(d)
            (runs if round_at(LAST)(run) else missing).append(run if round_at(LAST)(run) else d)
        if not runs:
            continue
        cells = [fiv(delta(runs, round_at(LAST), base_of, k)) for k in KEYS]
        tok = [t for t in map(tokens, runs) if t is not None]
        st = [steps(r) for r in runs]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {fmt(mean(tok)) if tok else '—'} | "
              + "; ".join("/".join(fmt(s) for s in x) for x in st) + " |")
        if name == "steer-heal":
            prompting = lambda r: r.get("prompting")  # noqa: E731
            if all(prompting(r) for r in runs):
                cells = [fiv(delta(runs, prompting, base_of, k)) for k in KEYS]
                print(f"| persona prompt | {len(runs)} | " + " | ".join(cells) + " | 0 | — |")
        verdict_rows.append((name, verdicts(os.path.join(HERE, name))))
    print("\nEach method's group report (`report.py results/methods/<method>`), verdict words:\n")
    qs = sorted({q for _, v in verdict_rows for q in v})
    print("| method | " + " | ".join(qs) + " |")
    print("|---|" + "---|" * len(qs))
    for name, v in verdict_rows:
        print(f"| {name} | " + " | ".join(v.get(q, "—") for q in qs) + " |")
    if missing:
        print("\nNot finished (not counted): " + ", ".join(os.path.relpath(d, HERE) for d in missing))


if __name__ == "__main__":
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            sys.stdout = f
            main()
    else:
        main()
