"""--compile (static KV cache + compiled decode step) against the eager dynamic-cache path, and the chunked KL
barrier (also on the reference states a heal keeps) against the unchunked one, on a tiny random Llama. The compiled
tests use dynamo's "aot_eager" backend: the same capture, guards and recompiles as inductor, without a C++ build
(inductor is the bench's business)."""
import contextlib, dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from lib import fast
from lib import runio
import steer_heal as sh


@pytest.fixture(scope="module")
def tiny(tiny_dir):  # conftest's tiny model, loaded once here: the compiled tests share its compile cache
    return sh.load_model(tiny_dir)


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()  # a fresh cache, and counters: graph counts below are this test's own
    counters.clear()
    yield
    torch._dynamo.reset()


def graphs():
    return counters["stats"]["unique_graphs"]


def ids(items):
    return [x["ids"] for x in items]


PROMPTS = [sh.GEN_PROMPTS[i] for i in (0, 3, 7, 11, 19)]  # different lengths: left padding is exercised
DOSES = [0.0, 1.5, 3.0, 4.5, 6.0]


def test_static_compiled_greedy_matches_dynamic_eager(tiny, compiled):
    """Same greedy tokens both ways: unsteered, per-row doses, length decay, the cosine gate, and unsteered again
    once the persistent steering hooks exist (a stale compiled step would still steer or never have)."""
    model, tok = tiny
    prompts = [sh.chat(tok, u) for u in PROMPTS]
    torch.manual_seed(0)
    vec = {1: 2.0 * torch.randn(model.config.hidden_size), 2: 2.0 * torch.randn(model.config.hidden_size)}
    base = sh.Config(max_new_tokens=10, gen_batch=8, steer_decay=0.0)  # 5 prompts: padded to a batch of 8
    runs = [("unsteered", base, None), ("per-row doses", base, DOSES),
            ("length decay", dataclasses.replace(base, steer_decay=1.0, steer_decay_t=2.0), DOSES),
            ("cosine gate", dataclasses.replace(base, cosine_gate=True), DOSES), ("unsteered again", base, None)]
    eager = {}
    for name, cfg, doses in runs:
        eager[name] = ids(sh.generate(model, tok, prompts, cfg, doses and vec, doses, greedy=True))
        before = graphs()
        static = ids(sh.generate(model, tok, prompts, dataclasses.replace(cfg, compile=True), doses and vec, doses,
                                 greedy=True))
        assert static == eager[name], name
        assert graphs() == before + 1, name  # really compiled, once: each run changes a guarded constant or hooks
    # ...the last one because the persistent hooks now exist (switched off): hook guards caught the change
    # the comparisons are not vacuous: the hook changes decode-step tokens, and the decay changes them again
    assert any(a[1:] != b[1:] for a, b in zip(eager["per-row doses"], eager["unsteered"]))
    assert eager["per-row doses"][0] == eager["unsteered"][0]  # dose 0 row untouched
    assert eager["length decay"] != eager["per-row doses"]


def test_new_doses_change_compiled_output_without_recompiling(tiny, compiled):
    model, tok = tiny
    prompts = [sh.chat(tok, u) for u in PROMPTS]
    torch.manual_seed(1)
    vec = {1: 2.0 * torch.randn(model.config.hidden_size)}
    cfg = sh.Config(max_new_tokens=10, gen_batch=8, compile=True)  # default length decay on: t lives on the device
    first = ids(sh.generate(model, tok, prompts, cfg, vec, DOSES, greedy=True))
    n = graphs()
    assert n >= 1
    second = ids(sh.generate(model, tok, prompts, cfg, vec, DOSES[::-1], greedy=True))
    assert graphs() == n  # doses written in place: the same graph ran
    assert second != first and second[2] == first[2]  # the middle row kept its dose
    eager = ids(sh.generate(model, tok, prompts, dataclasses.replace(cfg, compile=False), vec, DOSES[::-1],
                            greedy=True))
    assert second == eager


def test_backtrack_under_compile_falls_back_to_eager_with_one_line(tiny, compiled, capsys):
    model, tok = tiny
    prompts = [sh.chat(tok, u) for u in PROMPTS[:2]]
    vec = {1: torch.randn(model.config.hidden_size)}
    cfg = sh.Config(backtrack=True, backtrack_window=4, rep_max=1.0, max_new_tokens=8)
    runio.SAID.clear()
    plain = sh.generate(model, tok, prompts, cfg, vec, [1.0, 1.0], greedy=True, gate=1e6)
    for _ in range(2):
        comp = sh.generate(model, tok, prompts, dataclasses.replace(cfg, compile=True), vec, [1.0, 1.0], greedy=True,
                           gate=1e6)
    assert ids(comp) == ids(plain) and graphs() == 0
    assert capsys.readouterr().out.count("--backtrack generates eager") == 1


def unchunked_kl(model, b, logp, ref_ctx, direction):  # heal_loss's reference KL before barrier_kl
    with torch.no_grad(), ref_ctx():
        ref_logp = sh.completion_logits(model, b).float().log_softmax(-1)
    return sh.kl_per_position(logp, ref_logp, direction)


@pytest.mark.parametrize("direction", ["rev", "fwd"])
def test_chunked_kl_equals_unchunked_values_and_gradients(tiny, direction):
    from peft import LoraConfig, get_peft_model
    model, tok = tiny
    cfg = sh.Config()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[n for n, _ in sh.lora_modules(model, cfg)]))
    try:
        torch.manual_seed(2)
        with torch.no_grad():  # a non-zero adapter: the student is not the reference (adapter off)
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
        comps = [tok(t, add_special_tokens=False).input_ids for t in
                 ["Sure, I can help with that today.", "No.", "Well, it depends on many things, really."]]
        prompts = [sh.chat(tok, u) for u in PROMPTS[:3]]
        batch = lambda idx: sh.make_batch(tok, [prompts[j] for j in idx], [comps[j] for j in idx], pm.device)  # noqa
        b = batch([0, 1, 2])
        # the states heal() keeps: computed in other micro-batches (other padding), fetched in b's order; the last
        # barrier below gets no ref_ctx: it never runs the reference again
        kept = fast.kept_states(batch, lambda mb: sh.reference_states(pm, mb, pm.disable_adapter), 3, 2, pm.device)
        out = []
        for kl_fn in (lambda lp: unchunked_kl(pm, b, lp, pm.disable_adapter, direction),
                      lambda lp: sh.barrier_kl(pm, b, lp, pm.disable_adapter, direction, plain=True),  # the formula
                      lambda lp: sh.barrier_kl(pm, b, lp, pm.disable_adapter, direction, chunk=5),  # ragged slices
                      lambda lp: sh.barrier_kl(pm, b, lp, pm.disable_adapter, direction),  # heal_loss's default
                      lambda lp: sh.barrier_kl(pm, dict(b, ref_h=kept([0, 1, 2])), lp, None, direction)):  # kept
            pm.zero_grad()
            with torch.enable_grad():
                logp = sh.completion_logits(pm, b).float().log_softmax(-1)
                kl = kl_fn(logp)
                kl.pow(2).mean().backward()  # an rmse-like weighting: per-position grads differ
            out.append((kl.detach(), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}))
        (kl0, g0), *chunked = out
        assert len(kl0) == int(b["pred"].sum()) > 2 * 5 and kl0.min() > 1e-3
        assert [len(kept([j])) for j in (2, 0, 1)] == [b["lengths"][j] for j in (2, 0, 1)]  # rows follow idx
        assert max(g.abs().max() for g in g0.values()) > 1e-3
        for kl1, g1 in chunked:
            torch.testing.assert_close(kl1, kl0, rtol=1e-5, atol=1e-6)
            for n in g0:
                torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    finally:
        pm.unload()


def test_chunked_kl_never_holds_the_reference_log_softmax(tiny):
    """Peak tensor bytes of KL forward + backward (bench.peak_bytes): the chunked barrier stays below the unchunked
    one by more than the [N, V] fp32 reference log-softmax and the copies autograd saves of it."""
    import bench
    model, tok = tiny
    comps = [tok(t, add_special_tokens=False).input_ids * 8 for t in ["Sure, I can help with that today.", "No way."]]
    b = sh.make_batch(tok, [sh.chat(tok, u) for u in PROMPTS[:2]], comps, model.device)
    with torch.no_grad():
        logits = sh.completion_logits(model, b).float()
    N, V = logits.shape
    ref_ctx = contextlib.nullcontext  # the reference's size is what matters here, not its weights

    def step(kl_fn):
        with torch.enable_grad():
            logp = logits.clone().requires_grad_().log_softmax(-1)
            kl_fn(logp).pow(2).mean().backward()
    peak = {name: bench.peak_bytes(lambda f=f: step(f), model.device) for name, f in
            dict(unchunked=lambda lp: unchunked_kl(model, b, lp, ref_ctx, "rev"),
                 chunked=lambda lp: sh.barrier_kl(model, b, lp, ref_ctx, "rev", chunk=8)).items()}
    assert N >= 64 and peak["chunked"] < peak["unchunked"] - 1.5 * N * V * 4, (N, V, peak)


def test_heal_runs_the_reference_once_per_example_not_per_epoch(tiny, monkeypatch):
    """The barrier's reference is fixed during a heal: 3 epochs over 6 examples in micro-batches of 2 run it on 3
    batches (6 examples), not 9, and the KL is still there (from the kept states)."""
    model, tok = tiny
    calls, states = [], sh.reference_states
    monkeypatch.setattr(sh, "reference_states", lambda m, b, ctx: calls.append(len(b["lengths"])) or states(m, b, ctx))
    train = [dict(prompt=sh.chat(tok, u), ids=[100 + j, 200, 300 + j]) for j, u in enumerate(PROMPTS + PROMPTS[:1])]
    cfg = sh.Config(epochs=3, train_batch=2, lora_targets=("q_proj", "v_proj"), tau=0.0)
    pm, st = sh.heal(model, tok, train, train[:2], [], cfg, 0, sh.stash_base(model, cfg), lam=1.0)
    assert not pm.training  # the healed model is measured next: in eval mode (dropout off), after val_nll too
    pm.unload()
    assert st["status"] == "ok" and st["steps"] == 9 and st["kl_agg"] > 0 and st["val_nll"] > 0
    assert calls == [2, 2, 2]


def test_heal_takes_the_filters_states_where_the_current_model_is_the_reference(tiny, monkeypatch):
    """score() keeps its pass's states at the completion tokens of the kept items. heal uses them instead of a
    reference pass where the scoring model IS the reference (the original weights, round 0; or kl_ref=prev) and they
    belong to the item's own prompt and ids, and heals the same to float rounding as with the pass (other
    micro-batches, other padding); after a round is baked (weights not the original) kl_ref=base runs the pass."""
    model, tok = tiny
    calls, states = [], sh.reference_states
    monkeypatch.setattr(sh, "reference_states", lambda m, b, ctx: calls.append(len(b["lengths"])) or states(m, b, ctx))
    items = [dict(prompt=sh.chat(tok, u), ids=[100 + j, 200, 300 + j, 400 + 3 * j][:2 + j % 3], text="one two three four five")
             for j, u in enumerate(PROMPTS + PROMPTS[:1])]
    cfg = sh.Config(epochs=2, train_batch=2, lora_targets=("q_proj", "v_proj"), tau=0.0)
    sh.score(model, tok, items, cfg)
    assert all(x["kept"] for x in items)  # (what is not kept keeps no states)
    assert [x["h_last"].shape for x in items] == [(len(x["ids"]), model.config.hidden_size) for x in items]
    stash = sh.stash_base(model, cfg)

    def healed(train, k, **kw):
        calls.clear()
        pm, st = sh.heal(model, tok, train, [], [], dataclasses.replace(cfg, **kw), k, stash, lam=1.0)
        pm.unload()
        assert st["status"] == "ok"
        return st, list(calls)
    reused, c_reused = healed(items, 0)
    fresh, c_fresh = healed([{key: v for key, v in x.items() if not key.startswith("h_last")} for x in items], 0)
    assert (c_reused, reused["ref_states"]) == ([], "filter") and (c_fresh, fresh["ref_states"]) == ([2, 2, 2], "pass")
    assert reused["kl_agg"] > 1e-4
    for key in ("nll", "kl_agg", "kl_mean", "val_nll"):
        assert reused[key] == pytest.approx(fresh[key], rel=1e-4, abs=1e-7, nan_ok=True), key
    other = [dict(x, prompt=sh.chat(tok, PROMPTS[0])) if j == 2 else x for j, x in enumerate(items)]
    assert healed(other, 0)[1] == [2, 2, 2]  # one item's prompt changed after scoring: its states are not its own
    q = next(m for _, m in sh.lora_modules(model, cfg))
    with torch.no_grad():
        q.weight.add_(1e-3)  # a round baked in: the scoring model is no longer the original weights
    assert healed(items, 1)[1] == [2, 2, 2]  # kl_ref=base: the reference is not the model that scored
    assert healed(items, 1, kl_ref="prev")[1] == []  # kl_ref=prev: it is
