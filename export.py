"""export.py: a run's baked model as a plain transformers folder, and its steering vectors for other tools.

    python export.py results/<run> OUT [--round k] [--overwrite] [--script my_idea.py]

OUT/           base + rounds <= k merged (default: every completed round under the ppl ceiling; a round past it
               is merged only when --round names it): safetensors weights, tokenizer,
               generation config, and README.md (a model card: command, persona, rounds, last metrics).
               AutoModelForCausalLM.from_pretrained(OUT) gives the logits of steer_heal.load_run(run, k).
OUT/vectors/   every round's vector: vector_r<j>.safetensors (tensors direction.<l>), vector_r<j>.json (its
               metadata) and vector_r<j>.gguf (a llama.cpp control vector). Seed another run with one:
               python steer_heal.py --vector OUT/vectors/vector_r0.safetensors
Exit codes: 0 done, 2 bad input (nothing half-made left behind; an adapter that fails its sha256 is bad input).
"""
import argparse, json, os, shlex, shutil, sys
from pathlib import Path

import torch

from lib import models
from lib import runio
import steer_heal as sh  # the default --script
from lib.runio import live_lines, rounds_to_load

HOOK_POINT = ("output of the decoder blocks in `layers` (0-based; transformers hidden_states[l + 1]; "
              "llama.cpp direction.<l>)")
CARD_READERS = ["auth_nats", "care_nats", "persona_gap", "trait_fixed", "ppl_base", "rep", "answer_mass"]


# -------------------------------------------------------------------------------------------------
# Vectors. llama.cpp's control-vector convention, read from its source (common.cpp,
# llama_control_vector_load_one; llama-adapter.cpp, llama_adapter_cvec::apply / apply_to; the graph of each
# architecture): a tensor `direction.<il>` (F32, 1-D, n_embd long) is copied into the slot of layer il and
# added, times the strength, to the OUTPUT of decoder block il, 0-based (`cur = cvec.apply_to(ctx, cur, il)`
# is the last op of block il, right before the tensor is named l_out-il). The loader refuses direction.0
# (its buffer has no slot for block 0, which is never steered). Our vectors[l] is added to the output of
# block l (hidden_states[l + 1]), so block l is written as direction.<l>, the number unchanged, and a vector
# on block 0 cannot go into the GGUF (the .json says so). controlvector.layer_count = the number of
# direction tensors written, as repeng's writer counts them (llama.cpp's loader reads only the tensors).

def write_gguf(vec, path, model_hint):
    """vec {block: vector} -> a llama.cpp control vector. Returns the blocks written (block 0 is left out)."""
    import gguf
    layers = [l for l in sorted(vec) if l >= 1]
    w = gguf.GGUFWriter(str(path), arch="controlvector")  # general.architecture = controlvector
    w.add_string("controlvector.model_hint", model_hint)  # llama.cpp's own writer puts the model's architecture here
    w.add_int32("controlvector.layer_count", len(layers))
    for l in layers:
        w.add_tensor(f"direction.{l}", vec[l].detach().float().cpu().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return layers


def vector_meta(run_dir, cfg, lines, j, vec, model):
    """Everything needed to use vector_r<j> elsewhere: where it goes, how strong, what it came from."""
    live = live_lines(lines)[::-1]  # round j's latest lines: a --redo-from ran it again
    rnd = next((x for x in live if x["kind"] == "round" and x["round"] == j), None)
    steered = next((x for x in live if x["kind"] == "steered" and x["round"] == j), None)
    seeded = j == 0 and getattr(cfg, "vector", "")
    return dict(
        format="steer-heal vector", run=str(run_dir), round=j, model=cfg.model or sh.EMBEDDED,
        model_type=model.config.model_type, hidden_size=model.config.get_text_config().hidden_size,
        layers=sorted(vec), hook_point=HOOK_POINT, mode="add",
        norms={str(l): round(v.norm().item(), 4) for l, v in sorted(vec.items())},
        persona=dict(pos=cfg.pos, neg=cfg.neg),
        # the doses the loop steered with (kappa x --alphas; the generator decays them over generated tokens
        # by (1 + t / steer_decay_t)^-steer_decay, llama.cpp adds a constant strength)
        doses=rnd["doses"] if rnd else [steered["dose"]] if steered else None,
        kappa=rnd["kappa"] if rnd else None, steer_decay=cfg.steer_decay, steer_decay_t=cfg.steer_decay_t,
        n_contexts=None if seeded else cfg.n_contexts,  # extraction contexts averaged into the mean difference
        source=f"--vector {cfg.vector}" if seeded else "mean over contexts of h(pos) - h(neg) at the assistant tag",
        extracted_from="the base model" if j == 0 else f"base + rounds < {j} merged (the model it steers)",
    )


def write_vectors(run_dir, cfg, lines, model, out):
    """OUT/vectors/vector_r<j>.{safetensors,json,gguf} for every vector_r<j>.pt of the run."""
    from safetensors.torch import save_file
    vdir = out / "vectors"
    vdir.mkdir()
    done = []
    for p in sorted(run_dir.glob("vector_r*.pt"), key=lambda p: int(p.stem[len("vector_r"):])):
        j = int(p.stem[len("vector_r"):])
        vec = {int(l): v.float() for l, v in torch.load(p, map_location="cpu").items()}
        save_file({f"direction.{l}": v.contiguous() for l, v in vec.items()}, str(vdir / f"vector_r{j}.safetensors"))
        meta = vector_meta(run_dir, cfg, lines, j, vec, model)
        meta["gguf_layers"] = write_gguf(vec, vdir / f"vector_r{j}.gguf", model.config.model_type)
        if 0 in vec:
            meta["gguf_note"] = "block 0 is left out of the GGUF: llama.cpp never steers block 0"
        (vdir / f"vector_r{j}.json").write_text(json.dumps(meta, indent=2))
        done.append(meta)
    return done


# -------------------------------------------------------------------------------------------------
# Model card

def fmt(x):
    return "—" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def model_card(run_dir, cfg, meta, lines, merged, vectors, note=""):
    base = next((x for x in lines if x["kind"] == "base"), {})
    last = next((x for x in reversed(lines) if x["kind"] == "round" and x["round"] in merged), base)
    stop = next((x for x in reversed(live_lines(lines)) if x["kind"] == "stop"), None)
    what = f"round {last['round']} (healed, unsteered)" if last.get("kind") == "round" else "the base model"
    rows = "\n".join(f"| `{k}` | {fmt(last.get(k))} | {fmt(base.get(k))} |" for k in CARD_READERS if k in last)
    vrows = "\n".join(f"| `vectors/vector_r{m['round']}` | {m['layers']} | {', '.join(fmt(m['norms'][str(l)]) for l in m['layers'])} "
                      f"| {fmt(m['doses'])} | {m['extracted_from']} |" for m in vectors)
    return f"""---
library_name: transformers
tags: [steer-heal, steering-vector, merged-lora]
---
# {run_dir.name}: {cfg.model or sh.EMBEDDED} with steer-heal rounds {merged or 'none'} baked in

Made by steer-heal (`python export.py` on the run folder `{run_dir}`): steer the model with a persona
vector, keep the steered completions that stay coherent, heal a LoRA on them under a KL barrier to the base
model, merge it, repeat. This folder is the base model with the LoRA of rounds {merged or 'none'} merged in:
plain weights, no adapter, no hook.

- **command**: `python {shlex.join(meta.get("argv", []))}`
- **base model**: `{cfg.model or sh.EMBEDDED + " (steer-heal's embedded model)"}`, dtype {cfg.dtype}
- **persona** (steered toward): {cfg.pos}
- **baseline prompt** (steered away from): {cfg.neg or "(none: the model's default prompt)"}
- **rounds merged**: {merged or 'none'} of the completed {sh.completed_rounds(run_dir) or 'none'}{f"; the run stopped at round {stop['round']}: {stop.get('reason')}" if stop else ""}{f"; {note}" if note else ""}

## Last metrics: {what}, against the base model

| reader | this model | base |
|---|---|---|
{rows}

The readers are described in steer-heal's README; `auth_nats` falling and `persona_gap`, `trait_fixed`
rising is the persona's direction, `ppl_base` (perplexity of greedy answers under the base model) is fluency.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tok = AutoTokenizer.from_pretrained("path/to/this/folder")
```

## Steering vectors (`vectors/`)

| vector | blocks | norms | doses used | extracted from |
|---|---|---|---|---|
{vrows}

Each is added to the output of those decoder blocks (0-based), `mode = add`; `vector_r<j>.json` has the rest.
`vector_r<j>.safetensors` seeds a steer-heal run (`--vector`); `vector_r<j>.gguf` is a llama.cpp control
vector (`direction.<block>`): convert this folder with llama.cpp's `convert_hf_to_gguf.py`, then e.g.
`llama-cli -m model.gguf --control-vector-scaled vectors/vector_r0.gguf:0.6` (the strength is the dose, as
here; older llama.cpp builds take `FILE 0.6`). llama.cpp adds a constant strength at every position; the loop
decayed its doses over generated tokens, so start below them.
"""


# -------------------------------------------------------------------------------------------------

def export(run_dir, out, upto_round=None, overwrite=False, device="auto", script=None):
    """Writes OUT (see the module docstring) atomically; returns it. script: the experiment module that made the run
    (runio.load_script of --script; default steer_heal), whose load_run and Config read it."""
    from transformers import AutoTokenizer
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.json").exists() or not (run_dir / "rounds.jsonl").exists():
        raise sh.Stop(f"{run_dir} is not a steer_heal run folder (no config.json and rounds.jsonl); pass results/<run>.")
    merged, note = rounds_to_load(run_dir, upto_round)
    if upto_round is not None and upto_round not in merged:
        raise sh.Stop(f"--round {upto_round}: not a completed round of {run_dir} (completed: {merged or 'none'}).")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise sh.Stop(f"{out} already exists and is not empty; pass --overwrite to replace it, or pick another OUT.")
    if out.exists() and not out.is_dir():
        raise sh.Stop(f"{out} is a file; OUT must be a folder.")
    if device == "cuda" and not torch.cuda.is_available():
        raise sh.Stop("--device cuda, but torch sees no CUDA device; use --device cpu.")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise sh.Stop(f"OUT {out} is inside the run folder {run_dir}; write the export somewhere else.")
    meta, lines = json.loads((run_dir / "config.json").read_text()), sh.read_lines(run_dir)
    model, _, cfg = (script or sh).load_run(run_dir, upto_round, device)  # names the rounds if one is over the ceiling
    tok = AutoTokenizer.from_pretrained(cfg.model or models.embedded_model_path())  # as shipped: no padding changes
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")  # a crash never leaves a half-written OUT
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)  # safetensors weights, config.json, generation_config.json
        if not (tmp / "generation_config.json").exists():
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        vectors = write_vectors(run_dir, cfg, lines, model, tmp)
        (tmp / "README.md").write_text(model_card(run_dir, cfg, meta, lines, merged, vectors, note))
        if out.is_dir():  # --overwrite (or an empty folder)
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder, results/<run>")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--round", type=int, default=None, help="merge rounds <= this one (default: every completed round)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to merge")
    p.add_argument("--script", default="steer_heal.py", help="the experiment file that made the run (my_idea.py)")
    a = p.parse_args(argv)
    try:
        out = export(a.run, a.out, a.round, a.overwrite, a.device, runio.load_script(a.script))
    except sh.Stop as e:
        print(f"export: {e}")
        sys.exit(e.code)
    print(f"wrote {out}/ (model, tokenizer, README.md) and {out}/vectors/")


if __name__ == "__main__":
    main()
