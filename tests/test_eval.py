"""Tests for eval_mfv.py: real forward passes on a tiny random Llama and on the embedded model.

python -m pytest -q test_eval.py
"""
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_mfv as E
from lib import models

HERE = Path(__file__).resolve().parent.parent  # the repository root
DATA = HERE.parent / "shared" / "tinymfv" / "vignettes_classic_other_violate.jsonl"
KEYS = {"backend", "frames", "n", "p", "nats", "auth_nats", "care_nats", "coherence", "top1", "top1_chance", "eval_ci",
        "unscorable", "seconds"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: when another process holds a core, two threads spin-wait
    and a tiny forward ran 50x slower (measured); one thread keeps the file well under a minute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rows():
    if not DATA.exists():
        pytest.skip(f"vignettes not found at {DATA}")
    return E.load_vignettes(DATA)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(models.embedded_model_path())


@pytest.fixture(scope="module")
def tiny(tok):
    """Random 2-layer Llama with the embedded vocabulary. Large init so logits (and position effects)
    are far from uniform: a wrong position id or a mis-mapped digit shows up."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, initializer_range=0.3)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def smol():
    return models.load_model("", device="cpu")


class digit_bias:
    """Adds bias[d] to the logit of digit token d (a forward hook on the LM head)."""
    def __init__(self, model, tok, bias):
        self.model, self.ids, self.bias = model, E.digit_ids(tok), torch.as_tensor(bias, dtype=torch.float32)

    def __enter__(self):
        def hook(mod, args, out):
            out = out.clone()
            out[..., self.ids] += self.bias
            return out
        self.h = self.model.lm_head.register_forward_hook(hook)

    def __exit__(self, *a):
        self.h.remove()


def prof(res):
    return np.array([res["p"][f] for f in E.FOUNDATIONS])


def run(model, tok, rows, frames, n=6, **kw):
    return E.evaluate(model, tok, rows, backend="fast", frames=frames, n=n, progress=False, **kw)


def test_result_fields_profile_and_coherence(tiny, tok, rows):
    res = run(tiny, tok, rows, E.DEFAULT_FRAMES, n=6)
    assert set(res) == KEYS and set(res["p"]) == set(res["nats"]) == set(E.FOUNDATIONS)
    assert res["backend"] == "fast" and res["frames"] == E.DEFAULT_FRAMES and res["n"] == 6
    assert abs(prof(res).sum() - 1) < 1e-6
    assert 0 < res["coherence"] <= 1 and res["unscorable"] == 0 and 0 <= res["top1"] <= 1
    assert res["auth_nats"] == pytest.approx(np.log(res["p"]["Authority"]))
    lo, hi = res["eval_ci"]["auth_nats"]
    assert lo <= hi and set(res["eval_ci"]) == {"auth_nats", "care_nats"}
    json.dumps(res)
    # the definition, by hand: p = mean over vignettes of softmax(frame-mean of digit log-probs)
    lp_f, dig = torch.zeros(6, 7, dtype=torch.float64), E.digit_ids(tok)
    for frame in E.FRAME_SETS[E.DEFAULT_FRAMES]:
        prefix, tail = E.frame_prompt(tok, frame)
        pre = tok.encode(prefix, add_special_tokens=False)
        lp = torch.stack([_uncached_one(tiny, pre + tok.encode(" " + r["text"] + tail, add_special_tokens=False), dig)
                          for r in E._subsample(rows, 6, 0)]).double()
        lp_f[:, list(frame)] += lp / len(E.FRAME_SETS[E.DEFAULT_FRAMES])
    assert prof(res) == pytest.approx(torch.softmax(lp_f, 1).mean(0).numpy(), abs=1e-5)
    assert "Authority" in E.format_table(res)
    # the subsample is seeded: same seed, same rows; another seed, other rows
    assert E._subsample(rows, 10, 0) == E._subsample(rows, 10, 0) != E._subsample(rows, 10, 1)


def _uncached_one(model, ids, dig):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float(), -1)[dig]


def test_cached_prefix_equals_uncached(tiny, tok, rows):
    prefix, tail = E.frame_prompt(tok, E.REV, system="Be brief.")
    pre = tok.encode(prefix, add_special_tokens=False)
    sufs = [tok.encode(" " + r["text"] + tail, add_special_tokens=False) for r in rows[:7]]
    assert len({len(s) for s in sufs}) > 1  # rows of different lengths, so padding is exercised
    dig = E.digit_ids(tok)
    steer = tiny.model.layers[0].register_forward_hook(lambda m, a, o: o + 0.5)  # a steering-like hook
    try:
        cached = E.digit_logprobs(tiny, pre, sufs, dig, batch_size=3, cache=True)
        padded = E.digit_logprobs(tiny, pre, sufs, dig, batch_size=3, cache=False)
        single = torch.stack([_uncached_one(tiny, pre + s, dig) for s in sufs])
    finally:
        steer.remove()
    assert (cached - single).abs().max() < 1e-4 and (padded - single).abs().max() < 1e-4
    assert (cached - E.digit_logprobs(tiny, pre, sufs, dig, batch_size=3)).abs().max() > 1e-2  # hook mattered


def test_cached_prefix_equals_uncached_embedded(smol, rows):
    model, tok = smol
    prefix, tail = E.frame_prompt(tok, E.FWD)
    pre = tok.encode(prefix, add_special_tokens=False)
    sufs = [tok.encode(" " + r["text"] + tail, add_special_tokens=False) for r in rows[:3]]
    assert tok.encode(prefix + " " + rows[0]["text"] + tail, add_special_tokens=False) == pre + sufs[0]
    dig = E.digit_ids(tok)
    cached = E.digit_logprobs(model, pre, sufs, dig, batch_size=3)
    single = torch.stack([_uncached_one(model, pre + s, dig) for s in sufs])
    assert (cached - single).abs().max() < 1e-4


def test_listing_order_and_digit_bias(tiny, tok, rows):
    """cyclic: a per-digit additive bias (any shape) cancels exactly, for the forward listing and for
    the reversed one, so listing order can act only through the model's reading of the content, never
    through which digit a foundation sits on. fwdrev and rot are closed under reversal (reversing every
    frame gives the same set), so reversing the listing leaves them exactly unchanged, and they cancel
    a bias linear in the digit exactly, but not a single favourite digit (next test)."""
    rng = np.random.default_rng(0)
    arbitrary, linear = rng.normal(0, 2, 7), 0.8 * np.arange(7)
    rev = lambda fs: [f[::-1] for f in fs]  # noqa: E731
    for frames in (E.FRAME_SETS["cyclic"], rev(E.FRAME_SETS["cyclic"])):
        clean = prof(run(tiny, tok, rows, frames))
        with digit_bias(tiny, tok, arbitrary):
            assert np.abs(prof(run(tiny, tok, rows, frames)) - clean).max() < 1e-5
    for name in ("fwdrev", "rot"):
        clean = prof(run(tiny, tok, rows, name))
        assert np.abs(prof(run(tiny, tok, rows, rev(E.FRAME_SETS[name]))) - clean).max() < 1e-6
        with digit_bias(tiny, tok, linear):
            assert np.abs(prof(run(tiny, tok, rows, name)) - clean).max() < 1e-5
    clean = prof(run(tiny, tok, rows, "fwd"))  # one frame: both biases move the profile
    for b in (arbitrary, linear):
        with digit_bias(tiny, tok, b):
            assert np.abs(prof(run(tiny, tok, rows, "fwd")) - clean).max() > 0.05


def test_digit3_bias_hits_authority_unless_cyclic(tiny, tok, rows):
    A = E.FOUNDATIONS.index("Authority")
    clean = prof(run(tiny, tok, rows, "cyclic"))
    spike = np.zeros(7)
    spike[3] = 5.0  # the model loves answering "3"
    with digit_bias(tiny, tok, spike):
        p = {name: prof(run(tiny, tok, rows, name)) for name in ("fwd", "fwdrev", "rot", "cyclic")}
        rot3 = prof(run(tiny, tok, rows, [E._rot(3)]))  # digit "3" shows "social" in this frame
    assert E.FOUNDATIONS[rot3.argmax()] == "SocialNorms"  # digits map back to the right foundation
    assert p["fwd"][A] > 0.5 and p["fwd"].argmax() == A  # raw: most mass on Authority
    assert p["fwdrev"][A] > 0.5  # the pitfall: forward + reversed leaves Authority on digit 3 twice
    assert p["cyclic"][A] < 0.25 and np.abs(p["cyclic"] - clean).max() < 1e-5  # exact cancellation
    assert p["cyclic"][A] < p["rot"][A] < p["fwdrev"][A]  # rot halves the spike, no more


def test_unscorable_rows_are_skipped(tiny, tok, rows):
    def nan_first_row(mod, args, out):
        out = out.clone()
        out[0] = float("nan")
        return out
    h = tiny.lm_head.register_forward_hook(nan_first_row)
    try:
        res = run(tiny, tok, rows, "fwd", n=5, batch_size=8)  # one batch: exactly one NaN row
    finally:
        h.remove()
    assert res["unscorable"] == 1 and res["n"] == 4 and abs(prof(res).sum() - 1) < 1e-6


def test_persona_system_prompt_changes_profile(smol, rows):
    model, tok = smol
    base = E.evaluate(model, tok, rows, backend="fast", frames="fwdrev", n=8, progress=False)
    pers = E.evaluate(model, tok, rows, backend="fast", frames="fwdrev", n=8, progress=False,
                      system="You believe respecting authority and tradition is what morality is about.")
    assert base["n"] == pers["n"] == 8 and 0 < base["coherence"] <= 1
    assert np.abs(prof(base) - prof(pers)).max() > 1e-3


def test_bad_inputs(tmp_path, tok):
    bad = tmp_path / "v.jsonl"
    bad.write_text('{"id": "a", "text": "You see a man."}\n\n{"id": "b", "text": \n')
    with pytest.raises(ValueError, match=r"v\.jsonl: line 3"):
        E.load_vignettes(bad)
    if E._have_tinymfv():
        pytest.skip("tinymfv is installed: the missing-data path cannot happen")
    with pytest.raises(ValueError) as e:
        E.evaluate(torch.nn.Linear(1, 1), tok, None)
    assert E.TINYMFV_PIP in str(e.value) and "--vignettes PATH" in str(e.value)
    for args, needle in (([], E.TINYMFV_PIP), (["--vignettes", str(bad)], "line 3")):
        r = subprocess.run([sys.executable, str(HERE / "eval_mfv.py"), *args], capture_output=True, text=True,
                           cwd=HERE, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    notemplate = type(tok).from_pretrained(tok.name_or_path)
    notemplate.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        E.frame_prompt(notemplate, E.FWD)


def test_multi_token_digits_warn_once():
    class Tok:  # every digit encodes to two tokens
        def encode(self, s, add_special_tokens=False):
            return [100 + int(s), 7]
    E.digit_ids.warned = False
    with pytest.warns(UserWarning, match="first token") as w:
        assert E.digit_ids(Tok()) == list(range(100, 107))
    assert len(w) == 1


def test_tinymfv_adapter_plumbing(monkeypatch, tok, rows):
    """The library does not install here, so a stand-in with its documented signature and return
    shape checks our side: kwargs it lacks are dropped, "Social Norms" maps to SocialNorms, per-row
    vectors give the CI, and the persona reaches its chats and is removed afterwards."""
    P = np.random.default_rng(0).dirichlet(np.ones(7) * 0.5, 5)
    seen = {}

    def evaluate(model, tokenizer, name="classic", vignettes=None, *, batch_size=8, return_per_row=False,
                 verbose=1):
        seen.update(rows=vignettes, chat=tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                      tokenize=False))
        return {"profile": {"foundation": E.FOUNDATIONS[:6] + ["Social Norms"], "model": P.mean(0)},
                "mean_pmass_allowed": 0.9, "top1_acc": 0.4, "per_row": [{"p": p, "pmass_allowed": 0.9} for p in P]}
    monkeypatch.setitem(sys.modules, "tinymfv", types.SimpleNamespace(evaluate=evaluate))
    res = E.evaluate(torch.nn.Linear(1, 1), tok, rows, n=5, system="PERSONA-X")
    assert set(res) == KEYS and res["backend"] == "tinymfv" and res["n"] == 5 and res["top1"] == 0.4
    assert [r["other_violate"] for r in seen["rows"]] == [r["text"] for r in E._subsample(rows, 5, 0)]
    assert "PERSONA-X" in seen["chat"] and "PERSONA-X" not in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)
    assert prof(res) == pytest.approx(P.mean(0)) and res["coherence"] == pytest.approx(0.9)
    lo, hi = res["eval_ci"]["auth_nats"]
    assert lo < res["auth_nats"] < hi


# --- persona statements ------------------------------------------------------------------------------------

STATEMENTS = HERE.parent / "shared" / "persona" / "willingness-to-defer-to-authorities.jsonl"


@pytest.fixture(scope="module")
def stmts():
    if not STATEMENTS.exists():
        pytest.skip(f"persona statements not found at {STATEMENTS}")
    rows = E.load_statements(STATEMENTS)
    yes = [r for r in rows if r["answer_matching_behavior"].strip() == "Yes"]
    no = [r for r in rows if r["answer_matching_behavior"].strip() == "No"]
    return rows, yes[:48] + no[:48]  # all of them, and a balanced slice of 96


def _sign(rows):
    return np.array([1.0 if r["answer_matching_behavior"].strip() == "No" else -1.0 for r in rows])


def test_statement_loglik_and_yes_no_equal_plain_forwards(tiny, tok, stmts):
    rows = stmts[1][:3] + stmts[1][-3:]
    ll, lo = E.statement_loglik(tiny, tok, rows, batch_size=4), E.yes_no_logodds(tiny, tok, rows, batch_size=4)
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    pre = tok.encode(E._chat(tok, E.NEUTRAL_USER), add_special_tokens=False)
    for i, r in enumerate(rows):  # the cached, batched, left-padded path against one plain forward per row
        s = tok.encode(r["statement"].strip(), add_special_tokens=False)
        with torch.no_grad():
            lp = tiny(torch.tensor([pre + s])).logits[0].float().log_softmax(-1)
            q = tok.encode(E._chat(tok, r["question"] + "\nAnswer Yes or No."), add_special_tokens=False)
            lq = tiny(torch.tensor([q])).logits[0, -1].float().log_softmax(-1)
        assert ll[i] == pytest.approx(np.mean([lp[len(pre) - 1 + j, t].item() for j, t in enumerate(s)]), abs=1e-4)
        assert lo[i] == pytest.approx((lq[yes] - lq[no]).item(), abs=1e-4)


def test_persona_prompt_raises_the_gap_and_the_paired_ci_is_tighter(smol, stmts):
    model, tok = smol
    rows = stmts[1]
    import steer_heal as sh
    base = E.persona_eval(model, tok, rows, yes_no=False)
    pers = E.persona_eval(model, tok, rows, system=sh.SEED_POS, ref_ll=base["_ll"], yes_no=False)
    assert pers["persona_gap"] > base["persona_gap"] + 0.03  # measured on all 500: +0.116, paired CI [0.055, 0.177]
    assert pers["persona_gap_ci"][0] > 0  # and the paired interval on this slice already excludes 0
    unpaired = E.gap_ci(pers["_ll"], _sign(rows), base["_ll"], paired=False)
    paired = pers["persona_gap_ci"]
    assert paired[1] - paired[0] < 0.6 * (unpaired[1] - unpaired[0])
    assert unpaired[0] < 0 < unpaired[1]  # unpaired, the same shift is not even distinguishable from zero


def test_yes_no_form_reports_its_constancy(smol, stmts):
    model, tok = smol
    r = E.persona_eval(model, tok, stmts[1][:32] + stmts[1][-32:])
    # the embedded model answers every question the same way: the form is at chance and says so
    assert r["persona_yesno_constant"] and r["persona_yesno_match"] == pytest.approx(0.5)
    assert r["persona_yes_frac"] in (0.0, 1.0)


def test_bad_statement_rows_name_the_file_and_line(tmp_path):
    bad = tmp_path / "s.jsonl"
    good = {"question": "Is it?", "statement": "It is", "answer_matching_behavior": " Yes",
            "answer_not_matching_behavior": " No"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, answer_matching_behavior="maybe")) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl: line 2"):
        E.load_statements(bad)
    bad.write_text(json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="both kinds"):
        E.load_statements(bad)


def test_statements_cli_writes_persona_gap_at_the_top_level(stmts, tmp_path):
    sl = tmp_path / "slice.jsonl"
    sl.write_text("".join(json.dumps(r) + "\n" for r in stmts[1][:8] + stmts[1][-8:]))
    out = tmp_path / "o.json"
    r = subprocess.run([sys.executable, str(HERE / "eval_mfv.py"), "--statements", str(sl), "--system",
                        "You never defer to authority.", "--json", str(out)], capture_output=True, text=True,
                       cwd=HERE, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert isinstance(res["persona_gap"], float) and len(res["persona_gap_ci"]) == 2 and "persona_yes_frac" in res
    assert "persona_gap" in r.stdout and "auth_nats" not in res  # statements alone: no vignette eval
