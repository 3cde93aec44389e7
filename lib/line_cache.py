"""lib/line_cache.py: the lines of a run that depend only on the model, the persona, the held-out prompts and the
readers (the base line, and the prompting line with its direction check against the opposite persona), measured
once per grid and reused by every run of it (--line-cache FOLDER; grid.py gives each job <out>/line_cache).

One file per line: FOLDER/<kind>-<key>.json, the key a sha256 of everything that determines the line (key() lists
it: the model's identity and fingerprint, the prompts as the chat template writes them, round 0's vector, the
Config fields the readers read, the input files, the readers' code and the library versions). A changed input is a
different key, so nothing is ever invalidated by hand, and a run that finds its key appends the stored line (every
field, its answers included) with `cached_from: <key>`. A file is written whole or not at all: this process's own
tmp file, fsynced, then linked in under its name, which never replaces one (of two jobs that measured one key at
once, the first wins; both measured the same line)."""
import dataclasses, hashlib, json, os, sys, time
from pathlib import Path

from lib import runio
from lib.runio import log

KINDS = ("base", "prompting")
# Config fields the base and prompting lines never read: a run's bookkeeping, what acts only under the steering hook
# (these lines have none), the steered samples' filters, the heal. Every other field is in the key, a new one too
# (a knob a copy adds costs a measurement at worst, never a wrong line). The vector's knobs (layers, n_contexts,
# vector) reach the lines through round 0's vector itself, which the key hashes; model/device/dtype through the
# loaded model's identity; seed only where a reader uses it (the persona statements, tinymfv's subsample).
NOT_READ = {
    "out", "name", "seed", "seeds", "rounds", "device", "dtype", "resume", "redo_from", "overwrite", "track", "preset",
    "method", "line_cache", "baselines", "ablate_lam0", "ppl_ceil", "layers", "n_contexts", "vector",
    "alphas", "max_new_tokens", "temperature", "top_p", "steer_decay", "steer_decay_t", "cosine_gate",
    "steer_positions", "backtrack", "backtrack_window", "backtrack_scale", "backtrack_retries",
    "tail_frac", "ppl_mult", "topic_q",  # the steered samples' model-read filters (degenerate reads the words-alone ones)
    "probe_n", "gen_pass_target", "kappa_decay", "kappa_min", "min_train", "max_batches",
    "lora_r", "lora_alpha", "lora_targets", "lora_layers", "lr", "weight_decay", "epochs", "train_batch", "grad_accum",
    "warmup", "val_frac", "lam", "tau", "tau_round_pow", "kl_dir", "kl_agg", "kl_ref", "lam_round_pow", "anchor_nll",
    "spectral_lam", "max_nonfinite",
    "online_batch", "online_group", "online_steps", "online_floor",  # rivals.py's online method
}
CODE = ("lib.readers", "eval_mfv", "lib.models", "lib.fast", "lib.prompts")  # the modules the readers run, beside the script itself


def sha(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha(path):
    return runio.sha256(path) if path and Path(path).is_file() else None


def key(kind, cfg, model, tok, state, system, users, script):
    """{kind, sha, inputs, path}: what determines `kind`'s line on this model (inputs, readable, kept in the file)
    and its sha256. script: the file whose measure() runs (a copy's own)."""
    from lib import cli
    import torch, transformers  # noqa: E401 (loaded already: the script imports them)
    from lib.models import EMBEDDED, chat, fingerprint
    vig, stm = cli.find_vignettes(cfg), cli.find_statements(cfg)  # the files the run read (cli.read_inputs)
    read_seed = bool(state.get("stmts")) or vig != "none"
    inputs = dict(
        kind=kind, model=cfg.model or EMBEDDED, fingerprint=fingerprint(model, tok), dtype=str(model.dtype),
        device=model.device.type,
        prompts=[chat(tok, u, system) for u in users],  # the texts, as the chat template writes them
        plain=sha([chat(tok, u) for u in users]),  # what the fixed reader reads them after
        opposite=sha([chat(tok, u, cfg.opp) for u in users]) if kind == "prompting" else None,
        v0={str(l): hashlib.sha256(v.detach().float().cpu().numpy().tobytes()).hexdigest()
            for l, v in sorted(state["v0"].items())} if state.get("v0") else None,
        config={f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NOT_READ},
        seed=cfg.seed if read_seed else None,
        vignettes=(dict(path=vig, sha=file_sha(vig)) if vig else dict(package=package_version("tinymfv")))
        if vig != "none" else None,
        statements=dict(path=stm, sha=file_sha(stm), subsample=sha(state.get("stmts"))) if stm else None,
        code={Path(p).name: file_sha(p) for p in [script, *(sys.modules[m].__file__ for m in CODE if m in sys.modules)]},
        versions=dict(torch=torch.__version__, transformers=transformers.__version__))
    h = sha(inputs)
    return dict(kind=kind, sha=h, inputs=inputs, path=Path(cfg.line_cache) / f"{kind}-{h}.json")


def package_version(name):
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read(spec):
    """The stored entry for spec, or None (not there; one that does not read back is said and measured anew)."""
    p = spec["path"]
    if not p.exists():
        log(f"{spec['kind']} line: not in the grid's cache yet ({p.name}): measuring it")
        return None
    try:
        entry = json.loads(p.read_text())
        assert entry["key"] == spec["sha"] and entry["line"]["kind"] == spec["kind"], "another line's file"
        return entry
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        log(f"{spec['kind']} line: the grid's cache {p} does not read back ({type(e).__name__}: {e}): measuring it")
        spec["replace"] = True
        return None


def reuse(spec, cfg, state, run_dir, title, users, t):
    """On a hit: the stored line appended as this run's (its run, seed and method; cached_from), the state filled as
    steer_heal.measure() fills it, samples.md and the log written. Returns the line, or None on a miss."""
    entry = read(spec)
    if entry is None:
        return None
    line = dict(entry["line"], run=cfg.name, seed=cfg.seed, method=cfg.method, cached_from=spec["sha"])
    line.pop("time", None)
    fresh = entry["line"].get("seconds", {}).get("measure", 0.0)
    line["seconds"] = dict(measure=time.time() - t, measured_fresh=fresh)
    items = line["items"]
    state.setdefault("base_items", items)  # as measure(): the base line is the one later lines pair with
    if spec["kind"] == "base":
        state["model_items"] = items  # and the model the first steered line's direction check is against
    log(f"{spec['kind']} line: from the grid's cache {spec['path']} (measured by {entry.get('measured_by')} at "
        f"{entry.get('time')}), saved {fresh - line['seconds']['measure']:.0f}s")
    log(runio.format_line(line, line["seconds"]["measure"]))
    runio.append_line(run_dir, line)
    runio.write_samples(run_dir, title, line["answers"][:6], users[:6])
    return line


def store(spec, line, run_dir):
    """A measured line into the cache, whole or not at all; a failed write is said and the run goes on (its line is
    on its own record). Never replaces a stored file (first writer wins) unless that one did not read back."""
    p = spec["path"]
    entry = dict(key=spec["sha"], inputs=spec["inputs"], measured_by=str(run_dir), time=line.get("time"), line=line)
    tmp = p.with_name(f".{p.name}.{os.uname().nodename}.{os.getpid()}.tmp")  # this process's own
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb", buffering=0) as f:
            runio.write_all(f, json.dumps(entry).encode())  # NaN kept as NaN: the state a hit fills is the fresh one
        if spec.get("replace"):
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)  # fails if p exists: the first writer's file stays
            except FileExistsError:
                return log(f"{spec['kind']} line: the grid's cache already has it ({p.name}, another run's)")
            except OSError:  # a file system without hard links
                if p.exists():
                    return
                os.replace(tmp, p)
        runio.fsync(p.parent)
        log(f"{spec['kind']} line: stored in the grid's cache {p}")
    except Exception as e:  # noqa: BLE001 (a full disk, a read-only folder: the cache is a saving, not the record)
        log(f"{spec['kind']} line: not stored in the grid's cache {p} ({type(e).__name__}: {e}); the run goes on")
    finally:
        tmp.unlink(missing_ok=True)
