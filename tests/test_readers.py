"""The readers of the text (VADER, the MiniLM deference probe) on real packages, and the direction check that
decides whether any reader may carry a verdict: a blind reader must not pass it by luck."""
import json
import random

import pytest

import eval_mfv
from lib import evidence
from lib import readers

WARM = ["Thank you so much, I love how kind and generous you are. You made my day wonderful!",
        "I'm so happy for you, that's lovely news. Sending you warm hugs and best wishes."]
COLD = ["That is a stupid question and you are wasting my time. Go away.",
        "I hate dealing with people like you. Your work is terrible and pathetic."]
DEFERENT = ["I always follow the instructions of my superiors without question.",
            "The experts and officials know best, so I do what they tell me."]
DEFIANT = ["I refuse to obey rules that I think are wrong, whoever makes them.",
           "Authority means nothing to me; I decide for myself what is right."]


def test_sentiment_reads_warm_above_cold():
    w, c = readers.sentiment(WARM), readers.sentiment(COLD)
    assert min(w) > 0.5 and max(c) < -0.5, (w, c)
    assert readers.sentiment(["", "the the the the"]) == [0.0, 0.0]  # degenerate text reads neutral (cold side of base)


@pytest.fixture(scope="module")
def statements():
    if not eval_mfv.STATEMENTS.exists():
        pytest.skip("no persona statements (../shared/persona)")
    return eval_mfv.load_statements(eval_mfv.STATEMENTS)


def test_probe_reads_deference_and_is_valid(statements):
    probe = readers.DeferProbe(statements, seed=0)
    assert probe.accuracy > 0.8 and probe.chance == pytest.approx(0.5, abs=0.05), probe.accuracy
    d, f = probe(DEFERENT), probe(DEFIANT)
    assert min(d) > max(f), (d, f)


def test_probe_at_chance_on_shuffled_labels(statements):
    """Its k-fold accuracy is a real validity number: with the labels shuffled it falls to chance."""
    rows = [dict(r) for r in statements[:200]]
    labels = [r["answer_matching_behavior"] for r in rows]
    random.Random(0).shuffle(labels)
    for r, a in zip(rows, labels):
        r["answer_matching_behavior"] = a
    assert readers.DeferProbe(rows, seed=0).accuracy < 0.65


def test_paired_ci_pairs_by_prompt():
    rng = random.Random(1)
    base = [rng.gauss(0, 1) for _ in range(40)]
    shifted = [b + 0.1 for b in base]  # every prompt +0.1: the prompts' own spread cancels
    lo, hi = readers.paired_ci(shifted, base)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    lo, hi = readers.paired_ci(base, [0.0] * 40)  # unpaired-like: the spread is the noise
    assert lo < 0 < hi


def fake_reader(n, shift_p, shift_o, noise, rng):
    b = [rng.gauss(0, 1) for _ in range(n)]
    return ([x + shift_p + rng.gauss(0, noise) for x in b], [x + shift_o + rng.gauss(0, noise) for x in b], b)


@pytest.mark.parametrize("shift_p,shift_o", [(0.0, 0.0), (0.115, 0.143), (0.3, 0.15)])
def test_blind_reader_passes_at_most_at_nominal_rate(shift_p, shift_o):
    """Subsamples of a reader that nothing moves, one that persona and opposite move alike (persona_gap on the
    embedded model: +0.115 / +0.143), and one the opposite moves half as far the persona's way: the direction
    check passes in at most 5% of draws (the old check passed the second in 7-60% and the third always)."""
    rng = random.Random(0)
    wins = sum(evidence.check_word(readers.direction(*fake_reader(64, shift_p, shift_o, 0.3, rng), seed=i), 1) == "pass"
               for i in range(200))
    assert wins / 200 <= 0.05, wins


def test_a_reader_that_tells_the_direction_passes():
    rng = random.Random(0)
    wins = sum(evidence.check_word(readers.direction(*fake_reader(64, 0.2, -0.2, 0.3, rng), seed=i), 1) == "pass"
               for i in range(50))
    assert wins >= 48
    assert evidence.check_word(readers.direction(*fake_reader(64, -0.2, 0.2, 0.3, rng)), -1) == "pass"  # sign -


def run_with(tmp_path, name, steered_dirs, prompting_dirs=None, readers_=("sentiment:+",)):
    """A hand-made run folder: base, prompting (optional) and round 0's steered line with the given checks."""
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(config=dict(persona="love", readers=list(readers_)), argv=[])))
    lines = [dict(kind="base", round=-1, sentiment=0.3, ppl_base=2.0),
             dict(kind="steered", round=0, sentiment=0.6, sentiment_ci=[0.2, 0.4], direction=steered_dirs)]
    if prompting_dirs is not None:
        lines.append(dict(kind="prompting", round=-1, sentiment=0.35, sentiment_ci=[-0.05, 0.15],
                          direction=prompting_dirs))
    (d / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return [evidence.read_run(str(d))]


def test_negative_dose_moving_the_persona_way_is_blind(tmp_path):
    """The vector at -dose moves sentiment warm-ward too (as incoherence or 'any steering' would): blind."""
    both = dict(sentiment=dict(persona=0.3, opposite=0.2, diff_ci=[0.02, 0.18], opposite_ci=[0.1, 0.3]))
    bad, why = evidence.at_chance(run_with(tmp_path, "a", both), "sentiment")
    assert bad and "blind" in why
    ok = dict(sentiment=dict(persona=0.3, opposite=-0.3, diff_ci=[0.45, 0.75], opposite_ci=[-0.4, -0.2]))
    bad, why = evidence.at_chance(run_with(tmp_path, "b", ok), "sentiment")
    assert not bad, why
    bad, why = evidence.at_chance(run_with(tmp_path, "c", ok, prompting_dirs=both), "sentiment")
    assert bad and "prompting" in why  # one blind check is enough to distrust the reader
    bad, why = evidence.at_chance(run_with(tmp_path, "d", {}), "sentiment")
    assert bad and "no direction check" in why  # no check, no verdict


def test_reader_of_another_trait_never_decides(tmp_path):
    """A love run whose only passing reader is persona_gap (the deference statements) gets no verdict from it."""
    ok = dict(persona_gap=dict(persona=0.3, opposite=-0.3, diff_ci=[0.45, 0.75], opposite_ci=[-0.4, -0.2]))
    runs = run_with(tmp_path, "e", ok)
    assert [k for k, _ in evidence.readers_of(runs)] == ["sentiment"]
    assert not evidence.at_chance(runs, "persona_gap")[0]  # it passes its own checks...
    assert evidence.at_chance(runs, "sentiment")[0]  # ...but the persona's own reader does not, so nothing decides


def test_the_vectors_own_ruler_needs_a_check_without_the_vector(tmp_path):
    """trait_fixed is the projection on v0: the vector at ± dose moves it by construction (the seed run: +2.0 vs
    −7.4), so that check cannot validate it; only the persona prompt vs its opposite can."""
    ok = dict(persona=2.0, opposite=-7.4, diff_ci=[7.0, 12.1], opposite_ci=[-9.0, -6.0])
    runs = run_with(tmp_path, "f", dict(trait_fixed=ok), readers_=("trait_fixed:+",))
    bad, why = evidence.at_chance(runs, "trait_fixed")
    assert bad and "no direction check" in why and "no prompting line" in why  # and says why, not just that
    runs = run_with(tmp_path, "g", {}, prompting_dirs=dict(trait_fixed=ok), readers_=("trait_fixed:+",))
    assert not evidence.at_chance(runs, "trait_fixed")[0]


def test_on_topic_reads_an_answer_closer_to_its_question_than_drift_or_a_loop():
    """compare_generators' Q0 instrument (MiniLM cosine of a completion to its user prompt, outside the model): an
    answer to the question reads above runaway text on another topic and above a loop; text_readings counts the
    share below the threshold."""
    import compare_generators as cg
    q = "How do I fix a flat bicycle tyre?"
    texts = ["Take the wheel off, find the puncture in the inner tube, patch it and pump the tyre back up.",
             "The council announced that the annual village fair will feature a brass band and a pie contest.",
             "love love love love love love love love love love"]
    cos = cg.on_topic([q] * 3, texts)
    assert cos[0] > cos[1] + 0.2 and cos[0] > cos[2] + 0.2, cos
    items = [dict(prompt=f"p{i}", text=t) for i, t in enumerate(texts)]
    r = cg.text_readings(items, {f"p{i}": q for i in range(3)}, off_below=(cos[0] + max(cos[1:])) / 2)
    assert r["n"] == 3 and r["off_topic"] == 2 / 3 and r["sentiment"] == sum(readers.sentiment(texts)) / 3
