"""bench.py: how fast is steer_heal, and where does a round's time go? One run, one model, one prompt set.

    python bench.py --quick                          # embedded SmolLM2-135M, reduced sizes, CPU
    python bench.py --arch qwen2.5-1.5b --device cuda --gen-batch 128   # GPU: random-weight Qwen2.5-1.5B shape, bf16
    python bench.py --gpu-check                      # GPU: every GPU target, PASS/FAIL each, in under 5 minutes
    python bench.py --quick --script my_idea.py      # your copy of steer_heal.py's functions, timed the same way

Medians over --repeats after a warm-up, at the default generation length (Config.max_new_tokens) unless
--new-tokens: steered generation tokens/s batched vs one prompt at a time (eager, dynamic cache); static cache +
compiled decode step (--compile) vs eager, steered and unsteered, with the compilation time of the first calls and
the graphs compiled during the timed calls (recompiles: should be 0); hook overhead on each path; one heal optimizer
step (time, peak memory) for NLL + KL barrier as heal() runs it (on the filter's states at round 0 and with
kl_ref=prev; kl_ref=base after round 0 adds one reference pass per heal, spread over the default 3 epochs), the
barrier re-running the reference every step (heal before), the unchunked barrier, heal_loss at lam=0 and pure NLL,
and full-sequence vs completion-only log-softmax; fast-eval vignettes/s; a whole round by stage (at --preset gpu
sizes on a GPU, or with --round gpu). Every ratio with a target prints PASS/FAIL. Writes results/bench_<device>.json.
"""
import argparse, contextlib, dataclasses, datetime, json, math, os, platform, re, shlex, statistics, sys, time, traceback
from pathlib import Path
if __name__ == "__main__":  # before steer_heal imports tqdm: no progress bars around the table
    os.environ.setdefault("TQDM_DISABLE", "1")
import torch
import eval_mfv
from lib import fast
from lib import models
from lib import runio
import steer_heal as sh  # the default --script; main() rebinds it to the one given

VIGNETTES = Path(__file__).resolve().parent.parent / "shared" / "tinymfv" / "vignettes_classic_other_violate.jsonl"
ARCHS = {  # random-weight models of a real shape (GPU timing without downloading weights)
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1e6),
    "tiny-qwen2": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=49152, tie_word_embeddings=True,  # --gpu-check's CPU dry run
                       max_position_embeddings=2048, rope_theta=1e6,
                       initializer_range=0.1),  # 0.02 at width 64 writes one token over and over, steered or not
}
RATIOS = {  # name -> (section, numerator, denominator, field, comparison, target, what it compares)
    "gen_batched_vs_serial": ("generation", "batched_steered", "serial_steered", "tokens_per_s", ">=", 6.0,
                              "steered tok/s: batched / one at a time"),
    "hook_overhead": ("generation", "batched_steered", "batched_unsteered", "seconds", "<=", 1.1,
                      "eager gen time: steered / unsteered"),
    "hook_overhead_compiled": ("generation", "compiled_steered", "compiled_unsteered", "seconds", "<=", 1.05,
                               "compiled gen time: steered / unsteered"),
    "gen_compiled_vs_eager": ("generation", "compiled_steered", "batched_steered", "tokens_per_s", None, None,
                              "steered tok/s: static compiled / eager"),
    "heal_kl_vs_nll_time": ("heal", "kl_barrier", "nll", "seconds", "<=", 1.15,
                            "heal step time: NLL+KL / NLL (round 0, kl_ref=prev: the filter's states)"),
    "heal_kl_vs_nll_mem": ("heal", "kl_barrier", "nll", "peak_mb", "<=", 1.05, "heal step peak mem: NLL+KL / NLL"),
    "heal_kl_ref_pass_vs_nll_time": ("heal", "kl_barrier_ref_pass", "nll", "seconds", "<=", 1.25,  # CPU; GPU 1.15
                                     "heal step time: NLL+KL / NLL (kl_ref=base after round 0: + reference pass)"),
    "heal_ref_pass_floor_vs_nll_time": ("heal", "nll_ref_pass", "nll", "seconds", None, None,
                                        "kl_ref=base after round 0, a barrier costing nothing: NLL + ref pass / NLL"),
    "heal_kl_cached_prompts_vs_nll_time": ("heal", "kl_barrier_cached_prompts", "nll", "seconds", None, None,
                                           "kl_ref=base after round 0, every prompt's KV cached (best case) / NLL"),
    "heal_ref_every_step_vs_nll_time": ("heal", "kl_ref_every_step", "nll", "seconds", None, None,
                                        "heal step time: reference every step / NLL"),
    "heal_unchunked_vs_nll_time": ("heal", "kl_unchunked", "nll", "seconds", None, None,
                                   "heal step time: unchunked KL / NLL"),
    "heal_unchunked_vs_nll_mem": ("heal", "kl_unchunked", "nll", "peak_mb", None, None,
                                  "heal step peak mem: unchunked KL / NLL"),
    "heal_lam0_vs_nll_time": ("heal", "heal_loss_lam0", "nll", "seconds", None, None, "heal step time: lam=0 / NLL"),
    "heal_lam0_vs_nll_mem": ("heal", "heal_loss_lam0", "nll", "peak_mb", None, None, "heal step peak mem: lam=0 / NLL"),
    "full_vs_completion_mem": ("heal", "nll_full_logsoftmax", "nll", "peak_mb", None, None,
                               "NLL step peak mem: full-seq / completion"),
    "reader_cached_vs_plain_time": ("reader", "cached", "plain", "seconds", None, None,
                                    "fixed reader pass: prompt KV cached / plain"),
}
LIMITS = {  # name -> (section, entry, field, comparison, target, when it applies, what)
    "recompiles_timed": ("generation", "compiled", "recompiles_timed", "<=", 0, lambda r: True,
                         "graphs compiled during the timed calls"),
    "compiled_steered_tok_s": ("generation", "compiled_steered", "tokens_per_s", ">=", 20000,
                               lambda r: r["machine"]["device"] == "cuda" and r["settings"]["model"] == "qwen2.5-1.5b",
                               "steered tok/s compiled (GPU, 1.5B shape)"),
}
MEM_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() minus memory_allocated() at the step's start (tensor bytes)",
    "cpu": "torch.profiler(profile_memory=True): running sum of every CPU tensor allocation and free during "
           "the step, peak above the step's start (exact tensor bytes; not malloc retention, not Python objects)",
}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_times(fns, repeats, dev):
    """{name: median wall seconds of fn()} over `repeats` rounds, the fns interleaved within each round so drift
    in machine load hits every variant alike (the caller warms up)."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(dev)
            t = time.perf_counter()
            fn()
            sync(dev)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_bytes(fn, dev):
    """Peak tensor bytes allocated by fn() above what was live when it started (see MEM_METHOD)."""
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(dev)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    mem = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = torch.tensor([0] + [n for _, n in mem]).cumsum(0)  # live bytes after each allocation or free
    return int(live.max())


def build_arch(arch, dtype="auto", device="auto", **over):
    """A randomly initialised model of a real shape (config fields in `over` replace the shape's), with the embedded
    model's tokenizer (its ids all fit the larger vocab; sampled ids above the tokenizer's range decode to nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config
    dev = models.pick_device(device)
    dt = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32}.get(dtype) or getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(models.embedded_model_path())
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    cfg = Qwen2Config(**(ARCHS[arch] | over), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    assert len(tok) <= cfg.vocab_size, "the tokenizer's ids must fit the model's vocab"
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dt)
    model.generation_config.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model.eval(), tok


def graphs_compiled():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def bench_generation(model, tok, vec, cfg, n_prompts, repeats, dev, n_serial=8):
    """Same prompts, same per-row doses, exactly cfg.max_new_tokens per row: min_new_tokens = max_new_tokens
    masks EOS until the end, so every path generates len(prompts) * max_new_tokens tokens. One at a time runs
    the first n_serial prompts (tok/s is per token; all of them would take most of the bench on a CPU). Compiled
    = --compile (static cache, compiled decode step, batch padded to its bucket): its first steered and unsteered
    calls compile and are timed apart; graphs compiled during the timed calls are recompiles (should be 0)."""
    prompts = [sh.chat(tok, sh.GEN_PROMPTS[i % len(sh.GEN_PROMPTS)]) for i in range(n_prompts)]
    coeffs = [cfg.alphas[i % len(cfg.alphas)] for i in range(n_prompts)]
    gc, old = model.generation_config, model.generation_config.min_new_tokens
    gc.min_new_tokens = cfg.max_new_tokens

    def gen(batch, steered, ps=prompts, compiled=False):
        torch.manual_seed(0)
        c = dataclasses.replace(cfg, gen_batch=batch, compile=compiled)
        return sh.generate(model, tok, ps, c, vec if steered else None, coeffs[:len(ps)] if steered else None)

    def timed(fn):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        return time.perf_counter() - t
    try:
        full = gen(n_prompts, True)  # warm-up, and the check that the token count is fixed
        gen(1, True, prompts[:2])
        g0 = graphs_compiled()
        first = dict(steered=timed(lambda: gen(n_prompts, True, compiled=True)),
                     unsteered=timed(lambda: gen(n_prompts, False, compiled=True)))
        g1 = graphs_compiled()
        fns = dict(batched_steered=lambda: gen(n_prompts, True), batched_unsteered=lambda: gen(n_prompts, False),
                   serial_steered=lambda: gen(1, True, prompts[:n_serial]),
                   compiled_steered=lambda: gen(n_prompts, True, compiled=True),
                   compiled_unsteered=lambda: gen(n_prompts, False, compiled=True))
        secs = median_times(fns, repeats, dev)
        g2 = graphs_compiled()
    finally:
        gc.min_new_tokens = old
    out = {}
    for k, sec in secs.items():
        tokens = min(n_serial, n_prompts) * cfg.max_new_tokens if k == "serial_steered" else n_prompts * cfg.max_new_tokens
        out[k] = dict(seconds=sec, tokens=tokens, tokens_per_s=tokens / sec)
    out["compiled"] = dict(backend=fast.COMPILE_BACKEND, bucket=fast.gen_bucket(n_prompts, n_prompts),
                           first_call_seconds=first, graphs_warmup=g1 - g0, recompiles_timed=g2 - g1)
    out["new_tokens"] = cfg.max_new_tokens
    out["rows_full_length"] = all(len(x["ids"]) == cfg.max_new_tokens for x in full)
    out["prompt_tokens"] = sum(len(tok(p, add_special_tokens=False).input_ids) for p in prompts)  # prefill work
    return out, [(x["prompt"], x["ids"]) for x in full]


def nll_completion(pm, b):  # plain NLL: one forward, logits only where a completion token is predicted
    logp = sh.completion_logits(pm, b).float().log_softmax(-1)
    return -logp.gather(1, b["tgt"][b["pred"]][:, None]).mean()


def nll_full(pm, b):  # the same NLL through the full [B, L, V] logits and log-softmax (completion_logits avoids it)
    logp = pm(input_ids=b["ids"], attention_mask=b["attn"]).logits.float().log_softmax(-1)
    return -logp[b["pred"]].gather(1, b["tgt"][b["pred"]][:, None]).mean()


def kl_unchunked(pm, b, cfg, ref_ctx):  # heal_loss's barrier as it was before barrier_kl: the full [N, V] reference
    logp = sh.completion_logits(pm, b).float().log_softmax(-1)
    nll = -logp.gather(1, b["tgt"][b["pred"]][:, None]).mean()
    with torch.no_grad(), ref_ctx():
        ref_logp = sh.completion_logits(pm, b).float().log_softmax(-1)
    kl = sh.kl_per_position(logp, ref_logp, cfg.kl_dir)
    D = torch.stack([sh.aggregate(s, cfg.kl_agg) for s in kl.split(b["lengths"])])
    return nll + cfg.lam * torch.relu(D - cfg.tau).mean()


def cached_prompt_reference(pm, tok, rows, dev):
    """The reference pass as a per-run cache of the original model's prompt KV would leave it: the decoder over the
    completion tokens only, after each row's prompt KV (computed here once, outside the timing) left-padded into one
    cache. Its best case (every prompt seen before in the run): steer_heal does not build it (README, Performance)."""
    from transformers import DynamicCache
    dec, prompts = pm.get_decoder(), [tok(p, add_special_tokens=False).input_ids for p, _ in rows]
    P, C, B = max(map(len, prompts)), max(len(c) for _, c in rows), len(rows)
    with torch.no_grad(), pm.disable_adapter():
        kvs = [dec(input_ids=torch.tensor([p], device=dev), use_cache=True).past_key_values for p in prompts]
    ids, attn = torch.full((B, C), tok.pad_token_id), torch.zeros(B, P + C, dtype=torch.long)
    for i, (p, (_, c)) in enumerate(zip(prompts, rows)):
        ids[i, :len(c)], attn[i, P - len(p):P + len(c)] = torch.tensor(c), 1
    pos = torch.tensor([len(p) for p in prompts])[:, None] + torch.arange(C)
    ids, attn, pos = ids.to(dev), attn.to(dev), pos.to(dev)

    def run():
        pad = lambda t, p: torch.nn.functional.pad(t, (0, 0, P - len(p), 0))  # noqa: E731 (left: the prompt ends at P)
        cache = DynamicCache(ddp_cache_data=[(torch.cat([pad(kv.layers[l].keys, p) for kv, p in zip(kvs, prompts)]),
                                              torch.cat([pad(kv.layers[l].values, p) for kv, p in zip(kvs, prompts)]))
                                             for l in range(len(kvs[0].layers))], config=pm.config)
        with torch.no_grad(), pm.disable_adapter():
            return dec(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache).last_hidden_state
    b = sh.make_batch(tok, [p for p, _ in rows], [c for _, c in rows], dev)  # the plain pass, to check the cached one
    with torch.no_grad(), pm.disable_adapter():
        full, cached = dec(input_ids=b["ids"], attention_mask=b["attn"]).last_hidden_state, run()
    err = max((full[i, len(p):len(p) + len(c)] - cached[i, :len(c)]).abs().max().item()
              for i, (p, (_, c)) in enumerate(zip(prompts, rows)))
    return run, err


def bench_heal(model, tok, pairs, cfg, repeats, dev):
    """One optimizer step (forward, backward, clip, AdamW step, zero_grad) per loss, same LoRA and batch.
    KL reference = the adapter disabled. kl_barrier is heal()'s step where the filter's pass gave the reference
    states (round 0, kl_ref=prev): the barrier on kept states, their bytes counted in the peak; kl_barrier_ref_pass
    adds the reference pass heal runs once when they are not the reference (kl_ref=base after round 0), its time
    spread over the default Config.epochs that reuse it; kl_ref_every_step runs the reference in every step, as
    heal did before. Returns (results, the model with the adapter removed)."""
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                          target_modules=[n for n, _ in sh.lora_modules(model, cfg)]))
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    rows = pairs[:cfg.train_batch]
    b = sh.make_batch(tok, [p for p, _ in rows], [c for _, c in rows], dev)
    kept = dict(b, ref_h=sh.reference_states(pm, b, pm.disable_adapter))
    losses = dict(kl_barrier=lambda: sh.heal_loss(pm, kept, cfg, cfg.lam, pm.disable_adapter)[0],
                  kl_ref_every_step=lambda: sh.heal_loss(pm, b, cfg, cfg.lam, pm.disable_adapter)[0],
                  kl_unchunked=lambda: kl_unchunked(pm, b, cfg, pm.disable_adapter),
                  heal_loss_lam0=lambda: sh.heal_loss(pm, b, cfg, 0.0, pm.disable_adapter, want_kl=False)[0],
                  nll=lambda: nll_completion(pm, b), nll_full_logsoftmax=lambda: nll_full(pm, b))
    epochs = sh.Config.epochs
    out = dict(batch=len(rows), seq_len=b["ids"].shape[1], completion_tokens=int(b["pred"].sum()),
               lora_r=cfg.lora_r, lam=cfg.lam, tau=cfg.tau, kl_dir=cfg.kl_dir, kl_agg=cfg.kl_agg,
               kl_slices=fast.KL_SLICES, epochs_amortised=epochs)

    def step(loss_fn):  # grads are freed inside the step, so the memory profile sees their whole life
        loss_fn().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    steps = {k: (lambda f=f: step(f)) for k, f in losses.items()}
    steps["reference_pass"] = lambda: sh.reference_states(pm, b, pm.disable_adapter)
    steps["reference_pass_cached_prompts"], out["cached_prompts_max_abs_diff"] = cached_prompt_reference(pm, tok, rows, dev)
    pm.train()
    with torch.enable_grad():
        for fn in steps.values():
            fn()  # warm-up (AdamW allocates its state on the first step)
        secs = median_times(steps, repeats, dev)
        out |= {k: dict(seconds=secs[k], peak_mb=peak_bytes(fn, dev) / 2 ** 20) for k, fn in steps.items()}
    k, ref = out["kl_barrier"], out["reference_pass"]
    kept_mb = kept["ref_h"].numel() * kept["ref_h"].element_size() / 2 ** 20
    out["kl_barrier_step"] = k
    # round 0 and kl_ref=prev: the filter's pass already computed the states (heal runs no reference); kl_ref=base
    # after round 0: one reference pass per heal, its time spread over the epochs that reuse it
    out["kl_barrier"] = dict(seconds=k["seconds"], peak_mb=k["peak_mb"] + kept_mb, kept_states_mb=kept_mb)
    out["kl_barrier_ref_pass"] = dict(seconds=k["seconds"] + ref["seconds"] / epochs,
                                      peak_mb=k["peak_mb"] + kept_mb, kept_states_mb=kept_mb)
    # why kl_ref=base after round 0 misses 1.15x: the floor with a barrier that cost nothing, and the best case of
    # a prompt-KV cache (README, Performance)
    out["nll_ref_pass"] = dict(seconds=out["nll"]["seconds"] + ref["seconds"] / epochs)
    out["kl_barrier_cached_prompts"] = dict(seconds=k["seconds"] + out["reference_pass_cached_prompts"]["seconds"] / epochs)
    return out, pm.unload().eval()  # drop the adapter unmerged: the model is untouched


def bench_eval(model, tok, n, repeats, dev):
    rows = eval_mfv.load_vignettes(VIGNETTES)
    n = min(n or len(rows), len(rows))
    run = lambda: eval_mfv.evaluate(model, tok, rows, backend="fast", n=n, progress=False)  # noqa: E731
    frames = run()["frames"]  # warm-up
    s = median_times(dict(eval=run), repeats, dev)["eval"]
    return dict(n=n, frames=frames, seconds=s, vignettes_per_s=n / s)


def bench_reader(model, tok, vec, n, repeats, dev):
    """The fixed reader's pass as measure() runs it on every line (steer_heal.read_text: ppl_base and trait_fixed of
    n held-out plain prompts' answers, at the greedy answers' length), plain vs with the run's prompt KV cache warm
    (every reading after the first), and the first cached call (it builds the cache and checks it on one batch)."""
    cfg = sh.Config()
    plain = [sh.chat(tok, u) for u in sh.HELD_OUT[cfg.eval_prompts][:n]]
    g = torch.Generator().manual_seed(0)
    ans = [torch.randint(0, model.config.vocab_size, (cfg.sample_tokens,), generator=g).tolist() for _ in plain]
    kv = fast.PromptKV()
    sync(dev)
    t = time.perf_counter()
    sh.read_text(model, tok, plain, ans, vec, prompt_kv=kv)
    sync(dev)
    first = time.perf_counter() - t
    sh.read_text(model, tok, plain, ans, vec)  # warm-up of the plain pass
    s = median_times(dict(plain=lambda: sh.read_text(model, tok, plain, ans, vec),
                          cached=lambda: sh.read_text(model, tok, plain, ans, vec, prompt_kv=kv)), repeats, dev)
    return dict(n=len(plain), answer_tokens=cfg.sample_tokens, plain=dict(seconds=s["plain"]),
                cached=dict(seconds=s["cached"]), first_call_seconds=first, used=kv.ok, max_abs_diff=kv.err)


def bench_round(model, tok, cfg):
    """steer_heal.run's round 0 in sequence: vector, unsteered reference + gate + dose controller (generation and
    filters; compiled with cfg.compile), heal (LoRA, KL barrier, kl_ref per cfg) and bake, eval (fast MFV + greedy
    sample answers).
    If the filters starve the round, heal on everything generated (flagged) so the heal stage is still timed."""
    cfg = dataclasses.replace(cfg, eval_backend="fast")
    stash, steered = sh.stash_base(model, cfg), sh.steer_layers(model, cfg.layers)
    torch.manual_seed(sh.seed_of(cfg, 0, "round"))  # every seed as steer_heal.run's round 0 draws it
    g0 = graphs_compiled()
    t = [time.time()]  # stage boundaries
    vec = sh.extract_vector(model, tok, cfg.pos, cfg.neg, sh.CONTEXTS[:cfg.n_contexts], steered)
    t.append(time.time())
    ref, gate = sh.calibrate_gate(model, tok, cfg, sh.seed_of(cfg, 0, "gate"), cfg.probe_n)  # the pipeline's own
    seen, starved = [], False
    try:
        kept, items, _, _ = sh.collect(model, tok, vec, cfg, gate, sh.seed_of(cfg, 0, "samples"), seen.extend)
    except sh.Stop:
        kept, items, starved = seen, seen, True
    t.append(time.time())
    val, train = sh.split_survivors(dict(kept=kept), cfg, 0)
    with torch.enable_grad():
        pm, hs = sh.heal(model, tok, train, val, [x for x in ref if x["kept"]], cfg, 0, stash, lam=cfg.lam)
    model = pm.merge_and_unload().eval()
    t.append(time.time())
    sh.mfv(model, tok, cfg, dict(vignettes=str(VIGNETTES)))
    sh.answer_metrics(model, tok, cfg, stash, vec, sh.EVAL_PROMPTS)
    t.append(time.time())
    sec = {k: t[i + 1] - t[i] for i, k in enumerate(("vector", "generate+filter", "heal", "eval"))}
    return dict(seconds=sec, total=sum(sec.values()), bottleneck=max(sec, key=sec.get), generated=len(items),
                kept=len(kept), starved=starved, heal_steps=hs.get("steps"), heal_status=hs.get("status"),
                eval_n=cfg.eval_n, compile=cfg.compile,
                graphs_compiled=graphs_compiled() - g0)  # with --compile its compilation is inside generate+filter


GPU_CHECK = {  # --gpu-check's sizes: on a GPU, the targets' own; on the CPU, a dry run of the same code on a tiny shape
    "cuda": dict(arch="qwen2.5-1.5b", gen_batch=128, new_tokens=sh.Config.max_new_tokens, repeats=3, round=dict(
        sh.PRESETS["gpu"], gen_batch=128, probe_n=128, max_batches=2, min_train=64, eval_n=64)),  # one bucket: 128
    "cpu": dict(arch="tiny-qwen2", gen_batch=8, new_tokens=8, repeats=1, round=dict(sh.PRESETS["quick"], compile=True)),
}
GPU_BUDGET_S = 300  # the whole check: a GPU may be lent for minutes at a time


def greedy_compiled_vs_eager(arch, device, new_tokens, doses):
    """Greedy tokens of --compile's path against the eager path's, steered with per-row doses and the length decay
    (whose counter t the compiled step increments in place: under CUDA graphs, transformers' mode on a GPU, only a
    GPU can show it) and unsteered. fp32, 4 blocks of the real shape: rounding must not flip a near-tied argmax (the
    final norm is scaled up for wide logit margins), and this check compiles its own graphs, so small ones.
    Returns (equal, what differs)."""
    model, tok = build_arch(arch, "float32", device, num_hidden_layers=4)  # no TF32 either: nothing here turns it on
    with torch.no_grad():
        model.get_decoder().norm.weight.mul_(8.0)
    prompts = [sh.chat(tok, sh.GEN_PROMPTS[i]) for i in range(len(doses))]
    layers = sh.steer_layers(model, sh.Config.layers)
    scale = sh.hidden_at_last(model, tok, prompts, layers)  # doses in units of the hidden states' norm
    g = torch.Generator().manual_seed(0)
    vec = {l: (v := torch.randn(model.config.hidden_size, generator=g)) / v.norm() * h.norm(dim=-1).mean().item()
           for l, h in scale.items()}
    cfg = sh.Config(max_new_tokens=new_tokens, gen_batch=len(doses), steer_decay=1.0, steer_decay_t=2.0)
    runs = dict(unsteered=(cfg, None, None), steered_decay=(cfg, vec, doses),
                steered_no_decay=(dataclasses.replace(cfg, steer_decay=0.0), vec, doses))
    ids = lambda c, v, d: [x["ids"] for x in sh.generate(model, tok, prompts, c, v, d, greedy=True)]  # noqa: E731
    eager, diff = {k: ids(*run) for k, run in runs.items()}, []
    for k in ("unsteered", "steered_decay"):  # the compiled step's graphs: two, as in a run
        c, v, d = runs[k]
        got = ids(dataclasses.replace(c, compile=True), v, d)
        diff += [f"{k} row {i}" for i, (a, b) in enumerate(zip(got, eager[k])) if a != b]
    if eager["steered_decay"] == eager["unsteered"] or eager["steered_decay"] == eager["steered_no_decay"]:
        diff.append("vacuous: the doses or the decay change no token (eager)")
    return not diff, diff


def gpu_check(a, command=""):
    """python bench.py --gpu-check: every GPU target once on a random-weight Qwen2.5-1.5B shape, one PASS/FAIL
    line each, in under GPU_BUDGET_S; each target runs even when another fails. --device cpu: the same code on a tiny
    shape (a dry run, tested in test_bench.py, so it is known to start; its verdicts mean nothing)."""
    dev = models.pick_device(a.device)
    size = GPU_CHECK["cuda" if dev.type == "cuda" else "cpu"]
    t0, checks = time.time(), {}
    res = dict(command=command, device=dev.type, arch=size["arch"], sizes=size, dry_run=dev.type != "cuda")
    model, tok = build_arch(size["arch"], a.dtype, a.device)
    res["machine"] = machine_info(model, dev)
    print(f"gpu-check: {size['arch']} on {res['machine']['gpu'] or dev.type} ({res['machine']['dtype']})"
          + ("  DRY RUN: a tiny shape on the CPU, the verdicts mean nothing" if res["dry_run"] else ""), flush=True)
    cfg = dataclasses.replace(sh.Config(), **(sh.PRESETS["gpu"] | dict(max_new_tokens=size["new_tokens"])))
    torch.set_grad_enabled(False)

    def verdict(name, value, op, target, what):
        ok = value <= target if op == "<=" else value >= target if op == ">=" else value == target
        checks[name] = dict(verdict="PASS" if ok else "FAIL", value=value, target=f"{op} {target}", what=what)
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {checks[name]['verdict']}  {what:<52} {shown:>12}  {op} {target}  ({time.time() - t0:.0f}s)",
              flush=True)

    def stage(name, fn, *names):  # a failing stage fails its targets and lets the others run
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (reported, not hidden: the message is the verdict)
            for n in names or (name,):
                checks[n] = dict(verdict="FAIL", value=None, error=f"{type(e).__name__}: {e}")
            print(f"  FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()

    vec = sh.extract_vector(model, tok, cfg.pos, cfg.neg, sh.CONTEXTS[:8], sh.steer_layers(model, cfg.layers))

    def generation():
        g, pairs = bench_generation(model, tok, vec, cfg, size["gen_batch"], size["repeats"], dev, n_serial=2)
        res["generation"] = g
        verdict("compiled_steered_tok_s", g["compiled_steered"]["tokens_per_s"], ">=", 20000,
                f"steered tok/s, batch {size['gen_batch']}, --compile")
        verdict("hook_overhead_compiled", g["compiled_steered"]["seconds"] / g["compiled_unsteered"]["seconds"], "<=",
                1.05, "compiled gen time: steered / unsteered")
        verdict("recompiles_timed", g["compiled"]["recompiles_timed"], "<=", 0, "graphs compiled during timed calls")
        return pairs
    pairs = stage("generation", generation, "compiled_steered_tok_s", "hook_overhead_compiled", "recompiles_timed")
    pairs = pairs or [(sh.chat(tok, u), list(range(100, 100 + size["new_tokens"]))) for u in sh.GEN_PROMPTS[:16]]

    def heal():
        nonlocal model
        res["heal"], model = bench_heal(model, tok, pairs, cfg, size["repeats"], dev)
        h = res["heal"]
        verdict("heal_kl_vs_nll_time", h["kl_barrier"]["seconds"] / h["nll"]["seconds"], "<=", 1.15,
                RATIOS["heal_kl_vs_nll_time"][-1])
        # kl_ref=base after round 0 pays one reference forward per example per heal: a floor of 1.10-1.11x on these
        # CPUs (a barrier costing nothing), so the CPU target is 1.25x with the floor beside it (issue 36); a GPU's
        # stays 1.15x until one measures it
        floor = h["nll_ref_pass"]["seconds"] / h["nll"]["seconds"] if "nll_ref_pass" in h else math.nan
        verdict("heal_kl_ref_pass_vs_nll_time", h["kl_barrier_ref_pass"]["seconds"] / h["nll"]["seconds"], "<=",
                1.15 if dev.type == "cuda" else 1.25,
                f"heal step time: NLL+KL / NLL (kl_ref=base after round 0: + reference pass / "
                f"{h['epochs_amortised']} epochs; floor {floor:.3f}x)")
        verdict("heal_kl_vs_nll_mem", h["kl_barrier"]["peak_mb"] / h["nll"]["peak_mb"], "<=", 1.05,
                "heal step peak mem: NLL+KL / NLL")
    stage("heal", heal, "heal_kl_vs_nll_time", "heal_kl_ref_pass_vs_nll_time", "heal_kl_vs_nll_mem")
    if dev.type == "cuda":
        def pinned():  # the reference states a heal keeps, when they do not fit on the GPU
            b = lambda idx: sh.make_batch(tok, *zip(*[pairs[j] for j in idx]), dev)  # noqa: E731
            ref = lambda mb: sh.reference_states(model, mb, contextlib.nullcontext)  # noqa: E731
            n = min(16, len(pairs))
            on, off = (fast.kept_states(b, ref, n, 8, dev, room=r)(list(range(n))[::-1]) for r in (None, 0))
            verdict("kept_states_pinned_equal", bool(torch.equal(on, off)), "==", True,
                    "kept reference states: pinned CPU == on the GPU")
        stage("kept_states_pinned_equal", pinned)

    def equal():
        same, diff = greedy_compiled_vs_eager(size["arch"], a.device, 16, [0.0, 0.5, 1.0, 2.0, 4.0, 1.0, 2.0, 4.0])
        res["greedy_diff"] = diff
        mode = "CUDA graphs" if dev.type == "cuda" else "no CUDA graphs"
        verdict("greedy_compiled_equals_eager", same, "==", True, f"greedy tokens: compiled ({mode}) == eager")
        if diff:
            print("        differs: " + "; ".join(diff[:8]), flush=True)
    stage("greedy_compiled_equals_eager", equal)

    def whole_round():
        rc = dataclasses.replace(sh.Config(), **size["round"])
        rc.max_new_tokens = rc.sample_tokens = size["new_tokens"]  # the generation check's graphs serve the round too
        res["round"] = r = bench_round(model, tok, rc)
        print("        round by stage: " + " | ".join(f"{k} {v:.1f}s" for k, v in r["seconds"].items())
              + f" (generated {r['generated']}, kept {r['kept']}{', starved' if r['starved'] else ''})", flush=True)
        verdict("whole_round", r["heal_status"] == "ok", "==", True, f"one whole round ({r['total']:.0f}s, by stage)")
    stage("whole_round", whole_round)
    res["wall_seconds"] = time.time() - t0
    verdict("wall_seconds", res["wall_seconds"], "<=", GPU_BUDGET_S, "the whole check, seconds")
    res["checks"] = checks
    slug = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_") if dev.type == "cuda" else "cpu"
    out = Path(a.out or f"results/gpu_check_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    fails = [k for k, v in checks.items() if v["verdict"] != "PASS"]
    print(f"gpu-check: {len(checks) - len(fails)}/{len(checks)} PASS" + (f"; FAIL: {' '.join(fails)}" if fails else "")
          + f"; wrote {out}")
    return res


def machine_info(model, dev):
    import peft, transformers
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(iter(re.findall(r"^model name\s*:\s*(.*)$", info, re.M)), platform.processor())
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                torch_threads=torch.get_num_threads(), device=dev.type,
                gpu=torch.cuda.get_device_name() if dev.type == "cuda" else None,
                torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                python=sys.version.split()[0], dtype=str(model.dtype).replace("torch.", ""),
                params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                date=datetime.datetime.now().isoformat(timespec="seconds"))


def judge(r):
    """Adds ratios and limits, and PASS/FAIL for each with a target (limits only where they apply)."""
    r["ratios"] = {k: r[sec][num][f] / r[sec][den][f] for k, (sec, num, den, f, *_) in RATIOS.items()}
    r["limits"] = {k: r[sec][entry][f] for k, (sec, entry, f, *_) in LIMITS.items()}
    passes = lambda v, op, t: v <= t if op == "<=" else v >= t  # noqa: E731
    r["checks"] = {k: "PASS" if passes(r["ratios"][k], op, t) else "FAIL" for k, (*_, op, t, _) in RATIOS.items() if op}
    r["checks"] |= {k: "PASS" if passes(r["limits"][k], op, t) else "FAIL"
                    for k, (*_, op, t, applies, _) in LIMITS.items() if applies(r)}


def table(r):
    g, h, e, rd = r["generation"], r["heal"], r["eval"], r["round"]
    rows = [(f"gen {k} tok/s", f"{g[k]['tokens_per_s']:.1f}") for k in ("batched_steered", "batched_unsteered",
                                                                          "serial_steered", "compiled_steered",
                                                                          "compiled_unsteered")]
    c = g["compiled"]
    rows += [(f"compiled ({c['backend']}) first calls s", " | ".join(f"{v:.1f}" for v in c["first_call_seconds"].values())),
             ("compiled graphs: warm-up | timed", f"{c['graphs_warmup']} | {c['recompiles_timed']}")]
    rows += [(f"heal step {k} s | peak MB", f"{h[k]['seconds']:.3f} | {h[k]['peak_mb']:.0f}")
             for k in ("kl_barrier", "kl_barrier_ref_pass", "kl_barrier_step", "reference_pass",
                       "reference_pass_cached_prompts", "kl_ref_every_step",
                       "kl_unchunked", "heal_loss_lam0", "nll", "nll_full_logsoftmax")]
    rows += [(f"eval fast vignettes/s ({e['frames']})", f"{e['vignettes_per_s']:.2f}")]
    rt = r["reader"]
    rows += [(f"fixed reader pass, {rt['n']} answers: plain | cached | first cached call s",
              f"{rt['plain']['seconds']:.2f} | {rt['cached']['seconds']:.2f} | {rt['first_call_seconds']:.2f}")]
    if rd:
        rows += [(f"round ({rd['preset']}) {k} s", f"{v:.1f}") for k, v in rd["seconds"].items()] + [
            (f"round total s (bottleneck: {rd['bottleneck']})", f"{rd['total']:.1f}")]
    w = max(len(x) for x in [m for m, _ in rows] + [v[-1] for v in RATIOS.values()] + [v[-1] for v in LIMITS.values()])
    lines = [f"{'measurement':<{w}} {'value':>16} {'ratio':>7} {'target':>7}  verdict"]
    lines += [f"{m:<{w}} {v:>16}" for m, v in rows]
    for k, (*_, op, target, what) in RATIOS.items():
        tgt = f"{op}{target}" if op else "-"
        lines.append(f"{what:<{w}} {'':>16} {r['ratios'][k]:7.2f} {tgt:>7}  {r['checks'].get(k, 'info')}")
    for k, (*_, op, target, applies, what) in LIMITS.items():
        lines.append(f"{what:<{w}} {r['limits'][k]:>16.6g} {'':>7} {op + str(target):>7}  "
                     f"{r['checks'].get(k, 'not applicable here')}")
    return "\n".join(lines + [f"memory: {r['memory_method']}"])


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="HF id or local path; '' = embedded SmolLM2-135M-Instruct")
    p.add_argument("--arch", choices=sorted(ARCHS), help="random-weight model of this shape instead of --model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--gen-batch", type=int, default=32, help="prompts per batched generate() call")
    p.add_argument("--new-tokens", type=int, help=f"tokens per completion (default {sh.Config.max_new_tokens}, "
                                                  "steer_heal's default, also with --quick)")
    p.add_argument("--repeats", type=int, help="timed repeats, median reported (default 5; --quick 2)")
    p.add_argument("--eval-n", type=int, help="vignettes for the eval throughput (default all; --quick 16)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, usually all cores)")
    p.add_argument("--quick", action="store_true", help="reduced sizes for heal, eval and the round (quick preset)")
    p.add_argument("--round", default="auto", choices=["auto", "quick", "default", "gpu", "none"],
                   help="sizes of the whole-round timing: auto = gpu on a GPU, else quick with --quick, else default")
    p.add_argument("--compile-backend", default=fast.COMPILE_BACKEND,
                   help="torch.compile backend of the compiled path (inductor; aot_eager in the tests)")
    p.add_argument("--gpu-check", action="store_true", help="every GPU target, PASS/FAIL each, in under 5 minutes on "
                   "a random-weight Qwen2.5-1.5B shape; with --device cpu a dry run on a tiny shape")
    p.add_argument("--out", default="", help="JSON path (default results/bench_<device>.json; gpu_check_<device>.json)")
    p.add_argument("--script", default="steer_heal.py", help="the experiment file timed (a copy: my_idea.py)")
    return p.parse_args(argv)


def main(argv=None):
    global sh
    a = parse(argv)
    sh = runio.load_script(a.script)
    repeats = a.repeats or (2 if a.quick else 5)
    if a.threads:  # on a shared, busy CPU, 1 thread avoids OpenMP threads waiting on each other
        torch.set_num_threads(a.threads)
    fast.COMPILE_BACKEND = a.compile_backend
    command = shlex.join(["python", "bench.py", *(sys.argv[1:] if argv is None else argv)])  # on the record
    if a.gpu_check:
        return gpu_check(a, command)
    cfg = dataclasses.replace(sh.Config(), model=a.model, **(sh.PRESETS["quick"] if a.quick else {}))
    cfg.max_new_tokens = a.new_tokens or sh.Config.max_new_tokens  # generation at the run's length: not prefill-bound
    model, tok = build_arch(a.arch, a.dtype, a.device) if a.arch else sh.load_model(a.model, a.device, a.dtype)
    dev = model.device
    preset = {"auto": "gpu" if dev.type == "cuda" else "quick" if a.quick else "default"}.get(a.round, a.round)
    round_cfg = dataclasses.replace(sh.Config(), model=a.model, **sh.PRESETS.get(preset, {}))  # as --preset <it>
    round_cfg.max_new_tokens = a.new_tokens or round_cfg.max_new_tokens
    torch.set_grad_enabled(False)  # as in steer_heal.run; the heal parts turn it on
    res = dict(command=command, machine=machine_info(model, dev), memory_method=MEM_METHOD[dev.type],
               settings=dict(model=a.arch or a.model or sh.EMBEDDED, quick=a.quick, gen_batch=a.gen_batch,
                             new_tokens=cfg.max_new_tokens, repeats=repeats, compile_backend=a.compile_backend,
                             round_preset=preset, round_config=dataclasses.asdict(round_cfg)))
    t0 = time.time()
    print(f"bench: {res['settings']['model']} on {dev} ({res['machine']['dtype']}), {repeats} repeats", flush=True)
    vec = sh.extract_vector(model, tok, cfg.pos, cfg.neg, sh.CONTEXTS[:8], sh.steer_layers(model, cfg.layers))
    res["generation"], pairs = bench_generation(model, tok, vec, cfg, a.gen_batch, repeats, dev)
    print(f"  generation done ({time.time() - t0:.0f}s)", flush=True)
    res["heal"], model = bench_heal(model, tok, pairs, cfg, repeats, dev)
    print(f"  heal steps done ({time.time() - t0:.0f}s)", flush=True)
    res["eval"] = bench_eval(model, tok, a.eval_n or (16 if a.quick else None), 1 if a.quick else repeats, dev)
    res["reader"] = bench_reader(model, tok, vec, 32 if a.quick else 64, repeats, dev)
    print(f"  eval done ({time.time() - t0:.0f}s)" + ("" if preset == "none" else f"; whole round ({preset}) next"),
          flush=True)
    res["round"] = None if preset == "none" else dict(bench_round(model, tok, round_cfg), preset=preset)  # last: bakes
    res["wall_seconds"] = time.time() - t0
    judge(res)
    slug = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_") if dev.type == "cuda" else "cpu"
    out = Path(a.out or f"results/bench_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(table(res))
    print(f"wrote {out} ({res['wall_seconds']:.0f}s)")
    return res


if __name__ == "__main__":
    main()
