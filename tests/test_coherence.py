"""The coherence readers decide: a run whose healed answers loop, or cheer at another question, must not be called
fluent or coherent, whatever its trait reader says. The runs here are written by hand (config.json + rounds.jsonl with
every greedy answer stored, as a run writes them), and `report.py --reread` reads the answers with the real
instruments (VADER, MiniLM), as it would a finished run; no model of the pipeline is loaded."""
import json
import os

import pytest

from lib import readers
import report
import steer_heal as sh
from lib.prompts import EVERYDAY_PROMPTS

N = 24  # held-out prompts in these made-up runs (ids 0..N-1 of the everyday pool)
USERS = EVERYDAY_PROMPTS[:N]
# committed loops (results/default_run, results/methods, 2026-12-06): what ppl_base and VADER both called good
LOOPS = ["Dear [Neighbor's Name]\n\nDear [Neighbor's Name]\n\nDear [Neighbor's Name]\n\nDear [Neighbor's Name]\n\n"
         "Dear [Neighbor's Name]\n\nDear [Neigh",
         "Hey there, dear! I'm so glad you're having a wonderful day with your family. I'm so glad you're having a "
         "wonderful day with your family.\n\nI'm so glad you're having a wonderful day with your family"]
BASE_LIKE = ["Dealing with interrupting others can be challenging, especially when you're used to being a team player. "
             "Here's a suggested approach: when your coworker interrupts you, try not to take it personally.",
             "Dear [Neighbor's Name],\n\nI am writing to inform you that your neighbour has a dog that barks all night. "
             "I am writing to inform you that your dog is a rescue from a local rescue center. I hope this"]


def answer(u, tone):
    """An answer that answers `u` (its words restated), in a tone."""
    q = u.rstrip("?.!").lower()
    return {"plain": f"About this: {q}. Here is what I would do first, step by step, and what to check after.",
            "warm": f"Oh friend, thank you! About this: {q}. Here is what I would kindly do first, step by step, with care.",
            "cold": f"About {q}: this is a stupid, pathetic problem and I hate wasting time on it. Figure it out.",
            "cheer": "I'm so glad you're having a wonderful day! What a lovely, happy, wonderful time for everyone!",
            }[tone]


def line(kind, k, texts, **extra):
    return dict(kind=kind, round=k, answers=[dict(id=i, text=t, n_tokens=len(t.split())) for i, t in enumerate(texts)],
                ppl_base=2.3, items=dict(ppl_base=[2.3] * len(texts)), **extra)


def make_run(folder, rounds):
    """A love-persona run: base (plain answers), prompting (warm; its opposite cold), steered r0 (warm; opposite cold),
    and the round lines given as {k: answers}. Its readings come from report.reread, as for a finished run."""
    os.makedirs(folder, exist_ok=True)
    cfg = dict(vars(sh.Config()), persona="love", rounds=len(rounds), eval_prompts="everyday")
    json.dump(dict(config=cfg, argv=["steer_heal.py"]), open(os.path.join(folder, "config.json"), "w"))
    plain, warm, cold = ([answer(u, t) for u in USERS] for t in ("plain", "warm", "cold"))
    lines = [line("base", -1, plain), line("prompting", -1, warm, opposite_answers=line("", 0, cold)["answers"]),
             line("steered", 0, warm, opposite_answers=line("", 0, cold)["answers"])]
    lines += [line("round", k, texts, status="ok") for k, texts in sorted(rounds.items())]
    with open(os.path.join(folder, "rounds.jsonl"), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    report.reread(folder)
    text = report.write_report(folder)
    return {s.split("\n")[0]: s.split("**Verdict: ")[1].split("**")[0] for s in text.split("## ")[1:]}, text


def test_loop_share_sees_the_committed_loops_and_not_the_base_models_answers():
    assert [round(readers.loop_share(t), 2) for t in LOOPS] == [0.94, 0.92]
    assert max(readers.loop_share(t) for t in BASE_LIKE) < sh.Config.loop_max  # 0.40: said twice is not a loop
    assert readers.loop_share("") == 0.0
    cfg = sh.Config()
    fl = [sh.fails(dict(text=t, **sh.text_scores(t, cfg.pos)), cfg, words_only=True) for t in LOOPS]
    assert all("loop" in f for f in fl) and fl[1] == ["loop"], fl  # the sentence said three times: only the loop sees it


def test_on_topic_tells_an_answer_to_its_own_prompt_from_an_answer_to_another():
    own, v = readers.on_topic(USERS, [answer(u, "plain") for u in USERS])
    assert v["auc"] > 0.95 and v["other"] < min(own) - 0.1, v  # chance is 0.5
    shifted, w = readers.on_topic(USERS, [answer(u, "plain") for u in USERS[1:] + USERS[:1]])
    assert w["auc"] < 0.6 and sum(shifted) < sum(own) - 0.2 * N  # answers to other prompts read off topic


def test_topic_gate_drops_what_drifted_off_the_question():
    cfg = sh.Config(topic_q=0.1, min_words=1)
    x = dict(text="a fine answer here", ppl_tail=1.0, **sh.text_scores("a fine answer here", cfg.pos))
    assert sh.fails(dict(x, topic=0.2), cfg, 10.0, topic_gate=0.3) == ["topic"]
    assert sh.fails(dict(x, topic=0.5), cfg, 10.0, topic_gate=0.3) == []
    ref = [dict(topic=c / 10) for c in range(10)]
    assert sh.topic_gate_of(ref, cfg) == 0.1 and sh.topic_gate_of(ref, sh.Config()) == float("-inf")


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    warm = [answer(u, "warm") for u in USERS]
    return d, make_run(str(d / "healthy"), {0: warm, 1: warm})


def test_a_warm_on_topic_run_is_fluent_and_coherent(healthy):
    (_, (v, text)) = healthy
    assert v["Q1 can we heal?"] == "yes", text
    assert v["Q2 coherent over the loop?"] == "yes", text
    assert v["Q3 does the trait keep moving?"] == "moved, then stopped", text  # round 1 = round 0: no further step
    assert "reread.jsonl" in text


def test_looped_answers_are_not_fluent_and_the_report_names_the_reader(healthy):
    d, _ = healthy
    loops = [LOOPS[i % 2] for i in range(N)]
    v, text = make_run(str(d / "loops"), {0: loops, 1: loops})
    assert v["Q1 can we heal?"] == "no" and v["Q2 coherent over the loop?"] == "no", text
    assert "NOT coherent by degenerate" in text
    assert v["vs prompting baseline"] == "no", text  # the loop's sentiment is up, but it loops


def test_q2_names_the_round_its_word_comes_from(healthy):
    """Round 0 with two loops of 24 (its degenerate share's CI straddles the +0.10 margin), round 1 clean: Q2 is
    unclear because of round 0, and says so (it had quoted the last round, which passes)."""
    d, _ = healthy
    warm = [answer(u, "warm") for u in USERS]
    v, text = make_run(str(d / "r0_loops"), {0: LOOPS + warm[2:], 1: warm})
    q2 = next(ln for ln in text.splitlines() if ln.startswith("**Verdict") and "max ppl_base" in ln)
    assert v["Q2 coherent over the loop?"] == "unclear" and "round 0: degenerate: unclear" in q2, q2
    assert "round 1:" not in q2


def test_upbeat_answers_to_other_prompts_are_not_on_topic(healthy):
    d, _ = healthy
    cheer = [answer(u, "warm") for u in USERS[3:] + USERS[:3]]  # warm, fluent, and answering another question
    v, text = make_run(str(d / "cheer"), {0: cheer})
    assert v["Q1 can we heal?"] == "no" and "NOT coherent by on_topic" in text, text


def test_reread_reproduces_a_runs_stored_readings(healthy):
    d, _ = healthy
    run = d / "healthy"
    first = [json.loads(x) for x in open(run / "reread.jsonl")]
    lines = [json.loads(x) for x in open(run / "rounds.jsonl")]
    for ln, rr in zip(lines, first):  # store the first reading on the lines, as a run does, then read again
        ln.update({k: v for k, v in rr.items() if k != "direction"})
    (run / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    moved = report.reread(str(run))
    assert moved and all(diff == 0 and old == new for _, _, old, new, diff in moved), moved
