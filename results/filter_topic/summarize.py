"""The on-topic gate among the filters, measured (issue 33): the default love run with and without --topic-q 0.1,
seeds 0 1 2 (without = results/methods/steer-heal/seed<k>: the same command less the flag, from the methods grid). For each seed and
round, the healed model's readings with the gate minus without, paired by held-out prompt (evidence.interval), and
over the seeds (evidence.delta: the seeds' spread or the bootstrap, whichever is larger). Rows only, no model:

    python results/filter_topic/summarize.py --out results/filter_topic/summary.md   (or to stdout without --out)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from lib.evidence import delta, fiv, fmt, get, read_run, round_at  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GATE, NONE = os.path.join(HERE, "gate"), os.path.join(HERE, "..", "methods", "steer-heal")
KEYS = ["sentiment", "on_topic", "degenerate", "ppl_base", "kl_base", "trait_fixed"]


def main():
    pairs = [dict(seed=s, gate=read_run(os.path.join(GATE, s)), none=read_run(os.path.join(NONE, s)))
             for s in sorted(os.listdir(GATE)) if os.path.exists(os.path.join(GATE, s, "rounds.jsonl"))
             and os.path.exists(os.path.join(NONE, s, "rounds.jsonl"))]
    print("# The on-topic gate (--topic-q 0.1) vs none: healed model, gate − none\n")
    print(f"{len(pairs)} seed(s): {', '.join(p['seed'] for p in pairs)}. Positive Δon_topic = the gate's answers answer "
          "their prompt more; Δsentiment = warmth (the love persona's reader). Intervals: 95%, paired by prompt "
          "(one seed) or the seeds' spread / mean bootstrap (all seeds).\n")
    print("| round | " + " | ".join(f"Δ{k}" for k in KEYS) + " | kept (gate / none) | dropped by topic |")
    print("|---|" + "---|" * (len(KEYS) + 2))
    for k in (0, 1):
        both = [p for p in pairs if round_at(k)(p["gate"]) and round_at(k)(p["none"])]
        if not both:
            continue
        a, b = (lambda p: round_at(k)(p["gate"])), (lambda p: round_at(k)(p["none"]))
        kept = " / ".join(f"{fmt(get(a(p), 'kept'))}/{fmt(get(b(p), 'kept'))}" for p in both)
        topic = " / ".join(fmt((a(p).get("dropped_by") or {}).get("topic", 0)) for p in both)
        print(f"| {k} (all seeds) | " + " | ".join(fiv(delta(both, a, b, key)) for key in KEYS) + f" | {kept} | {topic} |")
        for p in both:
            print(f"| {k} ({p['seed']}) | " + " | ".join(fiv(delta([p], a, b, key)) for key in KEYS) + " | | |")
    for p in pairs:
        g = round_at(0)(p["gate"]) or {}
        ref = [r for r in g.get("dose_table") or [] if get(r, "dose") == 0]
        print(f"\n{p['seed']}: round 0 unsteered samples dropped by the gate "
              f"{fmt((ref[0].get('dropped_by') or {}).get('topic', 0)) if ref else '—'} of {fmt(get(ref[0], 'n')) if ref else '—'}")


if __name__ == "__main__":
    if "--out" in sys.argv:  # grid.py's "after" step writes the file itself
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            sys.stdout = f
            main()
    else:
        main()
