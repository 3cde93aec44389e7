"""Real computations on a tiny random Llama (built here, with the embedded model's tokenizer) and, where
behaviour needs a real model, on the embedded SmolLM2-135M-Instruct. Run: python -m pytest -q"""
import contextlib, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from lib import fast
from lib import readers
from lib import runio
from lib import cli
import eval_mfv
from lib import models
import steer_heal as sh
from conftest import needs_eval_data, skip_without_eval_data

HERE = Path(__file__).resolve().parent
# A tiny-model run: every stage, small sizes, loose filters (a random model's text is noise).
TINY_FLAGS = ["--rounds", "1", "--n-contexts", "4", "--alphas", "0.5", "1.0", "--max-new-tokens", "12",
              "--probe-n", "6", "--gen-batch", "6", "--min-train", "4", "--max-batches", "2", "--epochs", "1",
              "--train-batch", "4", "--eval-n", "6", "--sample-tokens", "8", "--ppl-mult", "100", "--min-words", "1",
              "--rep-max", "1.0", "--loop-max", "1.0", "--comp-min", "0", "--persona-n", "16"]
# the love persona skips the deference statements by default; the tests read them too, where the shared data is
TINY_FLAGS += ["--statements", str(eval_mfv.STATEMENTS)] if eval_mfv.STATEMENTS.exists() else []


def logits(model, tok, text):
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits[0].float()


def n_hooks(model):
    return sum(len(b._forward_hooks) for b in sh.decoder_layers(model))


# --- vector and hook ---------------------------------------------------------------------------------

def test_vector_nonzero_and_flips_sign(tiny):
    model, tok = tiny
    v = sh.extract_vector(model, tok, "You are a pirate.", "", sh.CONTEXTS[:6], [1, 2])
    w = sh.extract_vector(model, tok, "", "You are a pirate.", sh.CONTEXTS[:6], [1, 2])
    for l in (1, 2):
        assert v[l].norm() > 1e-3
        torch.testing.assert_close(v[l], -w[l], atol=1e-5, rtol=1e-4)


def test_states_upto_are_the_forwards_hidden_states_and_skip_the_blocks_above(tiny):
    """The vector and trait_self read the steered band from a forward stopped at its top block: the same tensors,
    bit for bit, as the full forward's hidden_states; the block above never runs; no hook is left behind."""
    model, tok = tiny
    enc = tok([sh.chat(tok, "Hello there"), sh.chat(tok, "Tell me about the sea, please.")], return_tensors="pt",
              padding=True, add_special_tokens=False)
    with torch.no_grad():
        full = model(**enc, output_hidden_states=True).hidden_states
        hooks = [dict(b._forward_hooks) for b in sh.decoder_layers(model)]  # transformers' own, installed above
        ran = []
        above = sh.decoder_layers(model)[3].register_forward_hook(lambda *a: ran.append(1))
        got = fast.states_upto(model, sh.decoder_layers(model), [1, 2], enc.input_ids, enc.attention_mask)
        above.remove()
    assert sorted(got) == [2, 3] and not ran
    for i in (2, 3):
        assert torch.equal(got[i], full[i])
    assert [dict(b._forward_hooks) for b in sh.decoder_layers(model)] == hooks

def test_hook_changes_output_and_is_always_removed(tiny):
    model, tok = tiny
    text = sh.chat(tok, "Hello there")
    vec = {1: torch.randn(model.config.hidden_size)}
    plain = logits(model, tok, text)
    with sh.steer(model, vec, 2.0):
        assert n_hooks(model) == 1
        steered = logits(model, tok, text)
    assert (steered - plain).abs().max() > 1e-2
    assert n_hooks(model) == 0
    torch.testing.assert_close(logits(model, tok, text), plain)
    with pytest.raises(RuntimeError):
        with sh.steer(model, vec, 2.0):
            raise RuntimeError("boom")
    assert n_hooks(model) == 0


def test_per_row_coefficients_steer_rows_independently(tiny):
    model, tok = tiny
    enc = tok([sh.chat(tok, "Hi"), sh.chat(tok, "Hi")], return_tensors="pt", add_special_tokens=False)
    vec = {2: torch.randn(model.config.hidden_size)}
    with torch.no_grad():
        plain = model(**enc).logits
        with sh.steer(model, vec, torch.tensor([0.0, 3.0])):
            mixed = model(**enc).logits
    torch.testing.assert_close(mixed[0], plain[0])  # dose 0 row untouched
    assert (mixed[1] - plain[1]).abs().max() > 1e-2


def test_length_decay_follows_its_schedule(tiny):
    model, tok = tiny
    block, v = sh.decoder_layers(model)[1], torch.ones(model.config.hidden_size)
    before, after = [], []
    rec = lambda store: lambda m, a, o: store.append((o[0] if isinstance(o, tuple) else o)[:, -1].clone())
    h1 = block.register_forward_hook(rec(before))  # runs before the steering hook: sees the plain output
    try:
        with sh.steer(model, {1: v}, 2.0, decay=1.0, decay_t=2.0):
            h2 = block.register_forward_hook(rec(after))  # runs after it: sees the steered output
            sh.generate(model, tok, [sh.chat(tok, "Hi")], sh.Config(max_new_tokens=5), greedy=True)
            h2.remove()
    finally:
        h1.remove()
    added = [(a - b).mean().item() for a, b in zip(after, before)]
    want = [2.0 * (1 + t / 2.0) ** -1 for t in range(len(added))]  # prefill t=0, then one step per token
    assert len(added) == 5 and added == pytest.approx(want, abs=1e-4)


def test_backtrack_rewinds_only_the_row_whose_signal_crosses(tiny, monkeypatch):
    model, tok = tiny
    cfg = sh.Config(backtrack=True, backtrack_window=4, backtrack_retries=2, backtrack_scale=0.5, rep_max=1.0)
    prompts = [sh.chat(tok, "Tell me about cats"), sh.chat(tok, "Tell me about dogs")]  # same length: no padding
    assert len(tok(prompts[0]).input_ids) == len(tok(prompts[1]).input_ids)
    vec = {1: torch.randn(model.config.hidden_size)}
    real = sh.token_nll

    def forced(model, tok, ps, comps, batch_size=16, states=None):  # row 0's text is always "incoherent"
        return [n + (1e3 if p == prompts[0] else 0.0) for p, n in zip(ps, real(model, tok, ps, comps, batch_size, states))]

    calm = sh.generate(model, tok, prompts, cfg, vec, [1.0, 1.0], greedy=True, max_new_tokens=8, gate=1e6)
    monkeypatch.setattr(sh, "token_nll", forced)
    hot = sh.generate(model, tok, prompts, cfg, vec, [1.0, 1.0], greedy=True, max_new_tokens=8, gate=1e6)
    assert calm[0]["rewinds"] == [] and calm[1]["rewinds"] == []
    assert hot[0]["rewinds"] == [0, 0]  # rewound twice at the first segment, then the last try stands
    assert hot[1]["ids"] == calm[1]["ids"] and hot[1]["rewinds"] == []  # the other row is untouched
    assert hot[0]["ids"] != calm[0]["ids"]  # the retry at a quarter of the dose wrote something else


# --- filters --------------------------------------------------------------------------------------------

def test_filters_catch_loops_narration_and_refusals():
    prose = ("Talk to your manager first, and write down exactly what you were asked to do. If the numbers are "
             "wrong, say so plainly and offer to help correct them before anything is signed.")
    assert sh.repetition(prose) < 0.15
    assert sh.repetition("GLUTE GLUTE GLUTE GLUTE GLUTE GLUTE GLUTE") > 0.9
    assert sh.repetition("TTTTTTTTTTTTTTTTTTTTTTTT") > 0.9
    assert sh.compress_ratio(prose) > 0.6
    assert sh.compress_ratio("the cat sat on the mat. " * 12) < 0.2
    assert sh.narrates("As someone who sticks to principle, I would say no.", sh.SEED_POS)
    assert sh.narrates("I am someone who never bows to pressure.", sh.SEED_POS)
    assert sh.narrates("You should not defer to authority here.", sh.SEED_POS)  # persona phrase
    assert not sh.narrates(prose, sh.SEED_POS)
    assert sh.narrates("I am warm, loving and kind to everyone I meet.", sh.WARM)  # quotes the persona
    # enacts it: words of the persona that any warm answer uses are not narration
    assert not sh.narrates("It's hard when someone you care about is ill, and it shows in every word you say.", sh.WARM)
    assert sh.refuses("I'm sorry, but I can't help with that.")
    assert sh.refuses("As an AI language model, I have no opinions.")
    assert not sh.refuses(prose)


def test_score_uses_unsteered_tail_perplexity(tiny):
    model, tok = tiny
    cfg = sh.Config(min_words=1, rep_max=1.0, comp_min=0.0)
    ids = tok("one two three four five six seven eight", add_special_tokens=False).input_ids
    items = [dict(prompt=sh.chat(tok, "Count"), ids=ids, text="one two three four five six seven eight")]
    sh.score(model, tok, items, cfg, ppl_gate=1.0)  # any real text has ppl > 1: dropped by ppl
    assert items[0]["why_dropped"] == "ppl" and items[0]["ppl_tail"] > 1
    nll = sh.token_nll(model, tok, [items[0]["prompt"]], [ids])[0]
    assert items[0]["ppl_tail"] == pytest.approx(float(torch.exp(nll[-2:].mean())), rel=1e-5)  # last 25% of 8


# --- heal ----------------------------------------------------------------------------------------------------

def test_rmse_sees_a_spike_the_mean_hides():
    kl = torch.full((60,), 0.05)
    kl[30:34] = 3.0  # four looping tokens in sixty
    tau = 0.5
    assert sh.aggregate(kl, "mean") < tau < sh.aggregate(kl, "rmse")
    assert sh.aggregate(kl, "max") == 3.0 and sh.aggregate(kl, "p95") > tau


def test_completion_only_logits_match_full_log_softmax(tiny):
    model, tok = tiny
    p, c = [sh.chat(tok, "Hi"), sh.chat(tok, "Tell me a long story")], [[100, 200, 300], [5, 6]]
    b = sh.make_batch(tok, p, c, model.device)
    with torch.no_grad():
        full = model(input_ids=b["ids"], attention_mask=b["attn"]).logits.float().log_softmax(-1)[b["pred"]]
        part = sh.completion_logits(model, b).float().log_softmax(-1)
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
    assert part.shape[0] == 5 and b["tgt"][b["pred"]].tolist() == [100, 200, 300, 5, 6]


def _peft(model):
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))


def _randomise_lora(pm, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_heal_loss_is_nll_at_lam0_and_the_barrier_bites(tiny):
    model, tok = tiny
    cfg = sh.Config(tau=0.0, kl_agg="rmse")
    pm = _peft(model)
    _randomise_lora(pm, 0, 0.3)
    b = sh.make_batch(tok, [sh.chat(tok, "Hi")] * 2, [[100, 200, 300, 400], [7, 8, 9]], model.device)
    nll = torch.nn.functional.cross_entropy(pm(input_ids=b["ids"], attention_mask=b["attn"]).logits[b["pred"]].float(),
                                            b["tgt"][b["pred"]])
    ref = pm.disable_adapter
    loss0, st = sh.heal_loss(pm, b, cfg, 0.0, ref)
    assert loss0.item() == pytest.approx(nll.item(), rel=1e-5)
    assert st["kl_agg"] > 0  # the adapter moved the model, and the KL is still measured at lam = 0
    loss1, _ = sh.heal_loss(pm, b, cfg, 1.0, ref)
    assert loss1.item() == pytest.approx(nll.item() + st["kl_agg"], rel=1e-4)  # tau = 0: barrier = mean D


def test_bake_equals_unmerged_stack_and_base_stays_reachable(tiny, tmp_path):
    from peft import PeftModel
    model, tok = tiny
    text = sh.chat(tok, "What is fair?")
    cfg = sh.Config(lora_targets=("q_proj", "v_proj", "down_proj"))
    base = logits(model, tok, text)
    stash = sh.stash_base(model, cfg)
    for k in (0, 1):  # write two rounds' adapters, each trained "on top of" the previous merge
        pm = _peft(model)
        _randomise_lora(pm, k)
        pm.save_pretrained(tmp_path / f"a{k}")
        model = pm.unload()
    merged = model
    for k in (0, 1):
        merged = sh.merge_adapter(merged, tmp_path / f"a{k}")
    baked = logits(merged, tok, text)
    # the same two adapters stacked unmerged on a fresh base
    fresh, _ = sh.load_model(str(Path(tok.name_or_path)))
    st = PeftModel.from_pretrained(fresh, str(tmp_path / "a0"), adapter_name="a0")
    st.load_adapter(str(tmp_path / "a1"), adapter_name="a1")
    st.base_model.set_adapter(["a0", "a1"])
    torch.testing.assert_close(baked, logits(st, tok, text), atol=1e-4, rtol=1e-4)
    assert (baked - base).abs().max() > 1e-2
    with sh.base_weights(stash):  # original weights, exactly, after two merges
        torch.testing.assert_close(logits(merged, tok, text), base, atol=0, rtol=0)
    torch.testing.assert_close(logits(merged, tok, text), baked)


# --- readers and regularisers ---------------------------------------------------------------------------------

def test_fixed_reader_reads_the_same_ids_the_same_whichever_model_made_them(tiny, tmp_path):
    model, tok = tiny
    cfg = sh.Config(lora_targets=("q_proj", "v_proj", "down_proj"))
    stash = sh.stash_base(model, cfg)
    v0 = {1: torch.randn(64, generator=torch.Generator().manual_seed(0)), 2: torch.randn(64)}
    users = ["Should I obey?", "Write a haiku."]
    prompts = [sh.chat(tok, u) for u in users]
    before = sh.generate(model, tok, prompts, cfg, greedy=True, max_new_tokens=6)
    ids = [a["ids"] for a in before]
    want = sh.projection(model, tok, prompts, ids, v0)  # the base model reading
    pm = _peft(model)
    _randomise_lora(pm, 3, 0.3)
    healed = pm.merge_and_unload()  # a different model now, weights changed in place
    assert sh.projection(healed, tok, prompts, ids, v0) != pytest.approx(want, abs=1e-3)  # its own reading moves
    with sh.fixed_reader(healed, stash):
        assert sh.projection(healed, tok, prompts, ids, v0) == pytest.approx(want, abs=1e-6)
    # and answer_metrics reads the healed model's own answers with that same fixed ruler
    _, met = sh.answer_metrics(healed, tok, dataclasses_replace(cfg, sample_tokens=6), stash, v0, users)
    other = sh.generate(healed, tok, prompts, cfg, greedy=True, max_new_tokens=6)
    with sh.fixed_reader(healed, stash):
        assert met["items"]["trait_fixed"] == pytest.approx(sh.projection(healed, tok, prompts, [a["ids"] for a in other], v0))
    assert met["trait_self"] == pytest.approx(readers.mean(sh.projection(healed, tok, prompts, [a["ids"] for a in other], v0)))



def test_kl_base_is_the_lines_model_against_the_original_and_shares_its_passes(tiny, monkeypatch):
    """kl_base per answer = mean over the answer's tokens of KL(line's model after its prompt, under its hook ||
    original weights after the plain prompt), computed here from full-sequence logits; the original's side comes from
    the fixed reader's pass (read_text's states, with the prompt KV cache) and, unsteered, trait_self from the line's
    own pass: the same values as the separate passes give."""
    model, tok = tiny
    cfg = dataclasses_replace(sh.Config(lora_targets=("q_proj", "v_proj", "down_proj")), sample_tokens=6)
    stash = sh.stash_base(model, cfg)
    v0 = {1: torch.randn(64, generator=torch.Generator().manual_seed(2)), 2: torch.randn(64)}
    users = ["Should I obey?", "Write a haiku.", "Tell me a story."]
    prompts = [sh.chat(tok, u) for u in users]

    def direct(m, ids, vectors=None, coeff=0.0):  # full logits, no shared pass, no cache
        out = []
        for p, a in zip(prompts, ids):
            b = sh.make_batch(tok, [p], [a], m.device)
            with sh.steer(m, vectors, coeff) if vectors is not None else contextlib.nullcontext():
                lp = m(input_ids=b["ids"], attention_mask=b["attn"]).logits[b["pred"]].float().log_softmax(-1)
            with sh.fixed_reader(m, stash):
                lq = m(input_ids=b["ids"], attention_mask=b["attn"]).logits[b["pred"]].float().log_softmax(-1)
            out.append(torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1).mean().item())
        return out
    _, orig = sh.answer_metrics(model, tok, cfg, stash, v0, users, read_kl=True)
    assert orig["items"]["kl_base"] == pytest.approx([0.0] * 3, abs=1e-5)  # the original model against itself
    pm = _peft(model)
    _randomise_lora(pm, 5, 0.3)
    healed = pm.merge_and_unload()
    seconds = []  # a second forward for trait_self: projection() called
    monkeypatch.setattr(sh, "projection", lambda *a, _p=sh.projection: seconds.append(1) or _p(*a))
    ans, met = sh.answer_metrics(healed, tok, cfg, stash, v0, users, read_kl=True, prompt_kv=fast.PromptKV())
    monkeypatch.undo()
    assert not seconds  # unsteered, trait_self came from kl_to_base's pass
    ids = [a["ids"] for a in ans]
    want = direct(healed, ids)
    assert met["items"]["kl_base"] == pytest.approx(want, rel=1e-3, abs=1e-6) and min(want) > 1e-3
    assert met["trait_self"] == pytest.approx(readers.mean(sh.projection(healed, tok, prompts, ids, v0)), abs=1e-5)
    ans, met = sh.answer_metrics(healed, tok, cfg, stash, v0, users, vectors=v0, coeff=2.0, read_kl=True)
    ids = [a["ids"] for a in ans]
    assert met["items"]["kl_base"] == pytest.approx(direct(healed, ids, v0, 2.0), rel=1e-3, abs=1e-6)
    # under the hook trait_self is still the model's own unsteered states, not the steered pass's
    assert met["trait_self"] == pytest.approx(readers.mean(sh.projection(healed, tok, prompts, ids, v0)), abs=1e-5)


def test_the_fixed_readers_prompt_kv_cache_reads_what_the_plain_pass_reads(tiny):
    """read_text with the run's cache of the fixed reader's prompt KV (fast.PromptKV): the same NLL and projection
    per answer as the plain pass, for prompts and answers of different lengths (one empty) mixed in a batch; a second
    reading of the same prompts runs the decoder over the answers only; a cache whose first-batch check fails (here
    wrong keys and values) is never used, and the reading is the plain one."""
    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    v0 = {1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)}
    users = ["Should I obey?", "Write a haiku about the sea and the wind.", "Hi.", "Tell me a story about a dragon."]
    prompts = [sh.chat(tok, u) for u in users]
    answers = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (7, 12, 0, 3)]
    want_p, want_n = sh.read_text(model, tok, prompts, answers, v0, batch_size=3)
    kv = fast.PromptKV()
    got_p, got_n = sh.read_text(model, tok, prompts, answers, v0, batch_size=3, prompt_kv=kv)
    assert kv.ok and kv.err < 1e-4 and len(kv.kv) == 4
    assert got_p == pytest.approx(want_p, abs=1e-4) and got_p != pytest.approx([0.0] * 4)
    assert all(x.tolist() == pytest.approx(y.tolist(), abs=1e-4) for x, y in zip(got_n, want_n))
    assert [len(x) for x in got_n] == [7, 12, 0, 3]
    seen = []
    hook = model.get_decoder().register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape[1]),
                                                     with_kwargs=True)
    try:
        again = sh.read_text(model, tok, prompts, answers[::-1], v0, batch_size=3, prompt_kv=kv)
    finally:
        hook.remove()
    assert seen == [12, 7] and len(kv.kv) == 4  # the answers' lengths, no prompt token: the cache held them all
    assert again[0] == pytest.approx(sh.read_text(model, tok, prompts, answers[::-1], v0)[0], abs=1e-4)

    class Wrong(fast.PromptKV):
        def get(self, dec, ids):
            return [(k + 1.0, v) for k, v in super().get(dec, ids)]
    bad = Wrong()
    assert sh.read_text(model, tok, prompts, answers, v0, batch_size=3, prompt_kv=bad)[0] == pytest.approx(want_p, abs=0)
    assert bad.ok is False and bad.err > 1e-3 and bad.kv == {}

    class NoKV(fast.PromptKV):  # a model whose cache is no per-token KV (recurrent or shared layers): fill refuses
        def fill(self, dec, prompts, pad_id):
            raise ValueError("no per-token KV")
    none = NoKV()
    assert sh.read_text(model, tok, prompts, answers, v0, batch_size=3, prompt_kv=none)[0] == pytest.approx(want_p, abs=0)
    assert none.ok is False


def test_trait_self_on_the_original_weights_is_the_fixed_readers_pass(tiny):
    """While the model has its original weights (base line, round 0's steered line) it IS the fixed reader:
    read_self="fixed" takes trait_self from that pass instead of a second forward, and reads the same value."""
    model, tok = tiny
    cfg = dataclasses_replace(sh.Config(lora_targets=("q_proj", "v_proj")), sample_tokens=6)
    stash = sh.stash_base(model, cfg)
    v0 = {1: torch.randn(64, generator=torch.Generator().manual_seed(1)), 2: torch.randn(64)}
    users = ["Should I obey?", "Write a haiku.", "Tell me a story."]
    _, own = sh.answer_metrics(model, tok, cfg, stash, v0, users)
    _, once = sh.answer_metrics(model, tok, cfg, stash, v0, users, read_self="fixed")
    assert once["trait_self"] == pytest.approx(own["trait_self"], abs=1e-5) and own["trait_self"] != 0
    assert once["trait_self"] == pytest.approx(once["trait_fixed"], abs=0)
    # when that holds (measure, heal): no adapter on the model and the original weights in place, compared exactly.
    # An unmerged adapter (the lam0 ablation's line) is not the original model even while its weights are.
    assert sh.is_original(model, stash)
    pm = _peft(model)
    assert not sh.is_original(pm, stash)
    assert sh.is_original(pm.unload(), stash)
    pm = _peft(model)
    _randomise_lora(pm, 3, 0.3)
    assert not sh.is_original(pm.merge_and_unload(), stash)  # a round baked in

def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_spectral_penalty_matches_the_matrix_2_norm_and_has_a_gradient(tiny):
    model, _ = tiny
    pm = _peft(model)
    _randomise_lora(pm, 1, 0.2)
    state = {}
    for _ in range(5):  # a few steps of a few iterations each, as in training
        sp = sh.spectral_penalty(pm, state)
    want = []
    for m in pm.modules():
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
            BA = m.lora_B["default"].weight @ m.lora_A["default"].weight
            want.append(torch.linalg.matrix_norm(BA.detach(), 2).item() * m.scaling["default"])
    assert sp.item() == pytest.approx(sum(want) / len(want), rel=0.05)
    with torch.enable_grad():
        sh.spectral_penalty(pm, state).backward()
    grads = [p.grad.abs().sum().item() for n, p in pm.named_parameters() if "lora_" in n]
    assert all(g > 0 for g in grads)


def test_head_applies_the_models_own_logit_softcapping(tmp_path):
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM
    tok = AutoTokenizer.from_pretrained(models.embedded_model_path())
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=5.0,
                       pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    m = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        m.get_output_embeddings().weight.normal_(0, 1.0)  # real-sized logits (~10s), where the cap matters
    b = sh.make_batch(tok, ["Hello"], [[100, 200, 300]], "cpu")
    with torch.no_grad():
        want = m(input_ids=b["ids"], attention_mask=b["attn"]).logits[b["pred"]]
        raw = m.get_output_embeddings()(m.get_decoder()(input_ids=b["ids"], attention_mask=b["attn"]).last_hidden_state[b["pred"]])
        torch.testing.assert_close(sh.completion_logits(m, b), want, atol=1e-4, rtol=1e-4)
    assert (raw - want).abs().max() > 1.0  # the old head (no cap) was wrong by this much
    sh.check_head(m, tok)  # and the load-time check passes for it


@needs_eval_data
def test_unsupported_head_exits_2_before_any_run_folder(tiny_dir, tmp_path, capsys, monkeypatch):
    real = sh.lm_head
    monkeypatch.setattr(sh, "lm_head", lambda model, h: real(model, h) * 2)  # a head we do not know how to read
    assert _run(["--model", tiny_dir, "--out", str(tmp_path), "--name", "r", *TINY_FLAGS]) == 2
    assert "this head is not supported" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_steer_band_never_includes_the_last_block(tiny):
    model, _ = tiny  # 4 blocks
    assert sh.band(model, (0.9, 0.99)) == [3]
    assert sh.steer_layers(model, (0.9, 0.99)) == [2]
    assert sh.steer_layers(model, (0.25, 1.0)) == [1, 2]
    assert sh.steer_layers(model, (0.25, 0.5)) == [1]


def test_validation_holds_out_prompts_not_completions():
    kept = [dict(user=f"u{i % 10}", prompt="", ids=[]) for i in range(40)]
    val, train = sh.split_by_prompt(kept, 0.15, 0)
    assert {x["user"] for x in val}.isdisjoint({x["user"] for x in train})
    assert 6 <= len(val) <= 12 and len(val) + len(train) == 40
    assert sh.split_by_prompt(kept, 0.0, 0)[0] == []


def test_steer_positions_generated_leaves_the_prompt_alone(tiny):
    model, tok = tiny
    v = sh.extract_vector(model, tok, "You are a pirate.", "", sh.CONTEXTS[:4], [1, 2])
    p = [sh.chat(tok, "Say something.")]
    base = sh.generate(model, tok, p, sh.Config(steer_decay=0), greedy=True, max_new_tokens=8)[0]["ids"]
    run = lambda pos: sh.generate(model, tok, p, sh.Config(steer_decay=0, steer_positions=pos), v, [8.0],
                                  greedy=True, max_new_tokens=8)[0]["ids"]
    alls, gen = run("all"), run("generated")
    assert alls[0] != base[0] or alls != base  # steering the prompt changes even the first token
    assert gen[0] == base[0]  # the first token comes from the (unsteered) prompt's last position
    assert gen != base  # later tokens are steered


def test_compare_generators_options_pin_every_generator_knob(tiny):
    import dataclasses
    import compare_generators as cg
    knobs = {f.name for f in dataclasses.fields(sh.Config) if f.name.startswith(("steer_", "backtrack", "cosine_"))}
    assert len(knobs) >= 7  # the generator's knobs, read from Config itself (a new one must be pinned too)
    for name, over in cg.OPTIONS.items():  # Config()'s defaults must not leak into an option
        assert knobs <= set(over), (name, knobs - set(over))
    constant = dataclasses.replace(sh.Config(), **cg.OPTIONS["constant"])
    assert constant.steer_decay == 0 and not constant.backtrack and constant.steer_positions == "all"
    model, tok = tiny
    v = sh.extract_vector(model, tok, "You are a pirate.", "", sh.CONTEXTS[:4], [1, 2])
    p = [sh.chat(tok, "Say something.")]
    out = {name: sh.generate(model, tok, p, dataclasses.replace(sh.Config(), **cg.OPTIONS[name]), v, [0.5],
                             greedy=True, max_new_tokens=24)[0]["ids"] for name in ("constant", "decay")}
    assert out["constant"] != out["decay"]  # before the fix both ran with decay and gave the same tokens

# --- the loop ----------------------------------------------------------------------------------------------

def _run(argv):
    with pytest.raises(SystemExit) as e:
        sh.main(argv)
    return e.value.code


@pytest.fixture(scope="session")
def tiny_run(tiny_dir, tmp_path_factory):
    skip_without_eval_data()
    out = tmp_path_factory.mktemp("runs")
    sh.main(["--model", tiny_dir, "--out", str(out), "--name", "r", *TINY_FLAGS])
    return out / "r"


def test_one_round_loop_writes_every_result_file(tiny_run):
    from peft import PeftConfig
    for f in ["config.json", "rounds.jsonl", "completions_r0.jsonl", "samples.md", "report.md", "log.txt",
              "vector_r0.pt", "round_0/adapter/adapter_config.json", "round_0/adapter/adapter_model.safetensors"]:
        assert (tiny_run / f).exists(), f
    lines = sh.read_lines(tiny_run)
    assert [x["kind"] for x in lines] == ["base", "prompting", "steered", "round"]
    r = lines[-1]
    for x in lines:  # every eval line carries every reader
        for key in ("sentiment", "probe_defer", "trait_fixed", "trait_self", "ppl_base", "persona_gap"):
            assert isinstance(x[key], float), (x["kind"], key)
        assert "auth_nats" not in x  # the love persona (the default) skips tinymfv; --persona seed reads it
        assert (x["persona_gap_ci"] is None) == (x["kind"] == "base")
    report = (tiny_run / "report.md").read_text()  # a run without tinymfv still has evaluated rounds for Q3
    assert "needs the base line and ≥1 evaluated round" not in report, report[report.find("needs the base") - 300:][:400]
    assert "decided by" in report or "no reader of this persona passes its checks" in report  # Q3 read its readers
    assert lines[2]["dose"] > 0 and isinstance(r["raw_trait_fixed"], float) and isinstance(r["train_trait_fixed"], float)
    assert r["kept"] >= 4 and r["generated"] >= r["kept"] and r["heal"]["steps"] >= 1
    assert r["dose_table"][0]["dose"] == 0.0 and len(r["dose_table"]) >= 2
    comps = [json.loads(x) for x in (tiny_run / "completions_r0.jsonl").read_text().splitlines()]
    assert sum(c["kept"] for c in comps if c["dose"] > 0) == r["kept"]
    assert all(c["why_dropped"] == "" for c in comps if c["kept"])
    assert PeftConfig.from_pretrained(str(tiny_run / "round_0" / "adapter")).r == 8
    assert "## base model" in (tiny_run / "samples.md").read_text()
    import re, report
    text = (tiny_run / "report.md").read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    for title in report.SECTIONS:  # each section is present and rests on numbers from this run
        body = next(p for p in parts if p.startswith(title))
        assert re.search(r"\d", body), title


def test_reloading_a_run_reproduces_its_final_model(tiny_run):
    model, tok, cfg = sh.load_run(tiny_run)
    want = sh.read_lines(tiny_run)[-1]["fingerprint"]
    assert sh.fingerprint(model, tok) == pytest.approx(want, abs=2e-4)
    base, _ = sh.load_model(cfg.model)
    assert sh.fingerprint(base, tok) != pytest.approx(want, abs=2e-4)  # the adapter did change the model


@needs_eval_data
def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_dir, tmp_path):
    flags = ["--model", tiny_dir, "--out", str(tmp_path), *TINY_FLAGS, "--rounds", "2", "--no-baselines"]
    cmd = [sys.executable, str(HERE / "steer_heal.py")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = subprocess.run(cmd + flags + ["--name", "full"], env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-2000:]
    p = subprocess.Popen(cmd + flags + ["--name", "killed"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    rounds = tmp_path / "killed" / "rounds.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if rounds.exists() and '"kind": "round"' in rounds.read_text():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # no cleanup at all: only the crash-safe writes protect us
    p.wait()
    assert '"kind": "round"' in rounds.read_text() and not (tmp_path / "killed" / "report.md").exists()
    res = subprocess.run(cmd + ["--resume", str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    a, b = sh.read_lines(tmp_path / "full"), sh.read_lines(tmp_path / "killed")
    assert [x["round"] for x in b if x["kind"] == "round"] == [0, 1]
    assert [x["kind"] for x in b if x["kind"] != "resume"] == [x["kind"] for x in a]
    assert [x["kind"] for x in b].count("resume") == 1  # the resume is on the record, once
    assert b[-1]["fingerprint"] == pytest.approx(a[-1]["fingerprint"], abs=1e-4)
    assert b[-1]["kept"] == a[-1]["kept"]


# --- bad input and starvation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--pos", ""], "--pos is empty"),
    (["--pos", "Be bold.", "--neg", "Be bold."], "identical"),
    (["--layers", "0.6", "0.4"], "--layers"),
    (["--layers", "0.2", "1.5"], "--layers"),
    (["--alphas", "1", "-2"], "--alphas 1.0 -2.0: each must be > 0"),
    (["--lora-r", "0"], "--lora-r 0: must be >= 1"),
    (["--kappa-decay", "1.5"], "--kappa-decay"),
    (["--top-p", "0"], "--top-p"),
    (["--lam", "-1"], "--lam -1.0: must be >= 0"),
    (["--tau", "-1"], "--tau"),
    (["--val-frac", "1.5"], "--val-frac"),
    (["--tail-frac", "0"], "--tail-frac"),
    (["--lr", "-1"], "--lr"),
    (["--eval-n", "-5"], "--eval-n"),
    (["--ppl-ceil", "0.5"], "--ppl-ceil"),
    (["--eval-frames", "bogus"], "--eval-frames"),
    # the statements file and the model are checked after the run finds its vignettes
    pytest.param(["--statements", "/no/such.jsonl"], "statements file not found", marks=needs_eval_data),
    pytest.param(["--model", "./no/such/model"], "does not exist", marks=needs_eval_data),
    pytest.param(["--model", "no-such-org/no-such-model-xyz"], "hub id", marks=needs_eval_data),
])
def test_bad_input_exits_2_with_a_message(argv, words, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    assert _run(argv + ["--out", str(tmp_path)]) == 2
    assert words in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # nothing half-made is left behind


def test_bad_choice_and_missing_cuda_exit_2(tmp_path, capsys):
    assert _run(["--kl-agg", "median"]) == 2  # argparse
    if not torch.cuda.is_available():
        assert _run(["--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "CUDA" in capsys.readouterr().out


def test_model_without_chat_template_and_occupied_folder(tiny_dir, tiny_run, tmp_path, capsys):
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    assert _run(["--model", str(bare), "--out", str(tmp_path)]) == 2
    assert "chat template" in capsys.readouterr().out
    assert _run(["--model", tiny_dir, "--out", str(tiny_run.parent), "--name", tiny_run.name]) == 2
    assert "--resume" in capsys.readouterr().out and (tiny_run / "report.md").exists()
    assert _run(["--resume", str(tiny_run), "--lam", "5"]) == 2
    assert "--lam" in capsys.readouterr().out


def test_a_refused_resume_leaves_the_runs_lines_and_its_stop(tiny_run, tmp_path, capsys):
    """The resume line is written only once every check has passed: a resume that exits 2 on one (here its persona
    statements file, read after the config) leaves the lines as they were, so the run's stop still stands."""
    import shutil
    d = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, d)
    sh.append_line(d, dict(kind="stop", round=1, run=d.name, seed=42, method="steer-heal", reason="test"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["config"]["statements"] = str(tmp_path / "moved.jsonl")
    (d / "config.json").write_text(json.dumps(cfg))
    before = (d / "rounds.jsonl").read_text()
    assert _run(["--resume", str(d)]) == 2
    assert "moved.jsonl" in capsys.readouterr().out
    assert (d / "rounds.jsonl").read_text() == before
    assert runio.live_lines(sh.read_lines(d))[-1]["kind"] == "stop"


@needs_eval_data
def test_starving_filter_exits_3_with_diagnosis_and_keeps_completions(tiny_dir, tmp_path, capsys):
    argv = ["--model", tiny_dir, "--out", str(tmp_path), "--name", "s", *TINY_FLAGS, "--min-words", "1000",
            "--kappa-min", "0.3", "--no-baselines"]
    assert _run(argv) == 3
    out = capsys.readouterr().out
    assert "Starved" in out and "short" in out
    comps = [json.loads(x) for x in (tmp_path / "s" / "completions_r0.jsonl").read_text().splitlines()]
    kappas = [c["kappa"] for c in comps if c["dose"] > 0]
    assert kappas[0] == 1.0 and min(kappas) == pytest.approx(0.3) and sorted(kappas, reverse=True) == kappas
    assert not any(x["kind"] == "round" for x in sh.read_lines(tmp_path / "s"))
    # the diagnosis says the filter flags may change on --resume: a starved run is rescued, on the record
    sh.main(["--resume", str(tmp_path / "s"), "--min-words", "1"])
    kinds = [x["kind"] for x in sh.read_lines(tmp_path / "s")]
    assert kinds == ["base", "resume", "steered", "round"]
    assert sh.read_lines(tmp_path / "s")[1]["changed"] == {"min_words": 1}


@needs_eval_data
def test_lam0_ablation_heals_without_the_barrier(tiny_dir, tmp_path):
    sh.main(["--model", tiny_dir, "--out", str(tmp_path), "--name", "a", *TINY_FLAGS, "--no-baselines",
             "--ablate-lam0"])
    lines = sh.read_lines(tmp_path / "a")
    assert [x["kind"] for x in lines] == ["base", "steered", "lam0", "round"]
    assert lines[2]["heal"]["lam"] == 0.0 and lines[3]["heal"]["lam"] == 1.0
    assert lines[2]["heal"]["status"] == "ok" and lines[2]["ppl_base"] > 0 and "persona_gap" in lines[2]


@needs_eval_data
def test_nonfinite_heal_aborts_the_round_and_keeps_the_model(tiny_dir, tmp_path):
    argv = ["--model", tiny_dir, "--out", str(tmp_path), "--name", "nan", *TINY_FLAGS, "--no-baselines",
            "--lr", "1e30", "--max-nonfinite", "0.0"]  # one step of this lr sends the weights to inf
    sh.main(argv + ["--epochs", "3"])
    lines = sh.read_lines(tmp_path / "nan")
    assert [x["kind"] for x in lines] == ["base", "steered", "stop"]
    assert lines[-1]["reason"].startswith("aborted") and lines[-1]["heal"]["nonfinite"] >= 1
    assert not (tmp_path / "nan" / "round_0").exists()


# --- the embedded model --------------------------------------------------------------------------------------

@needs_eval_data
def test_embedded_model_quick_run_steers_and_heals(tmp_path):
    sh.main(["--preset", "quick", "--out", str(tmp_path), "--name", "q"])
    lines = sh.read_lines(tmp_path / "q")
    r = next(x for x in lines if x["kind"] == "round")
    base = next(x for x in lines if x["kind"] == "base")
    assert r["kept"] >= 4 and r["ppl_base"] > 1 and -1 <= r["sentiment"] <= 1 and r["heal"]["status"] == "ok"
    assert "answer_mass" not in r and "persona_gap" not in r  # the default persona, love, skips tinymfv, statements
    assert r["trait_self"] != base["trait_self"] and r["trait_fixed"] != base["trait_fixed"]
    assert base["trait_self"] == base["trait_fixed"]  # the original weights: the fixed reader's own pass
    assert "Q3" in (tmp_path / "q" / "report.md").read_text()


def test_love_persona_skips_the_off_target_readers_unless_asked():
    """tinymfv and the persona statements read deference, not warmth: the love persona (the default) skips both,
    the seed persona reads both, and an explicit flag wins over the persona."""
    parse = lambda argv: cli.parse_args(sh.Config, sh.PRESETS, sh.PERSONAS, "", argv)[0]  # noqa: E731
    love, seed, asked = parse([]), parse(["--persona", "seed"]), parse(["--statements", "mine.jsonl"])
    assert (love.persona, love.statements, love.vignettes) == ("love", "none", "none")
    assert (seed.statements, seed.vignettes) == ("", "")
    assert asked.persona == "love" and asked.statements == "mine.jsonl"
    assert cli.find_statements(love) is None


def test_every_tuple_flag_parses_its_own_values():
    """Each tuple field of Config takes its values from the command line as its type says (tuple[str, ...]: --readers
    used to be parsed as floats, so no reader list could ever be passed), and check_config accepts them."""
    import dataclasses, typing
    parse = lambda argv: cli.parse_args(sh.Config, sh.PRESETS, sh.PERSONAS, "", argv)[0]  # noqa: E731
    cfg = parse(["--readers", "sentiment:+", "probe_defer:-", "--seeds", "1", "2", "--lora-targets", "q_proj",
                 "--layers", "0.3", "0.5", "--alphas", "0.2", "--lora-layers", "0.5", "1"])
    assert cfg.readers == ("sentiment:+", "probe_defer:-") and cfg.seeds == (1, 2) and cfg.lora_targets == ("q_proj",)
    assert cfg.layers == (0.3, 0.5) and cfg.alphas == (0.2,) and cfg.lora_layers == (0.5, 1.0)
    for f in dataclasses.fields(sh.Config):  # every tuple field says its element type, and its default holds it
        if typing.get_origin(f.type) is tuple:
            assert all(isinstance(x, typing.get_args(f.type)[0]) for x in f.default), f.name
        assert f.type is not tuple, f"{f.name}: give tuple[T, ...], so its flag parses as T"
    cli.check_config(cfg, sh.check)
