"""cli.py: what steer_heal.py needs around the experiment but a reader of the algorithm does not: flags
(every Config field, its --help from the field's comment), their range checks (before any model loads, one
sentence naming the flag), and run folders (new, or --resume with the saved config). steer_heal.main() calls
these; nothing here changes what a run computes.
"""
import argparse, contextlib, dataclasses, importlib.util, inspect, json, math, os, re, shutil, signal, sys, time
from pathlib import Path

import torch

import eval_mfv
from models import decoder_layers
import report  # the group's report after --seeds (report reads files only)
import runio
import track
from prompts import CONTEXTS
from runio import Stop

CHOICES = dict(device=["auto", "cpu", "cuda"], dtype=["float32", "bfloat16", "float16"], kl_dir=["rev", "fwd"],
               kl_agg=["mean", "rmse", "p95", "max"], kl_ref=["base", "prev"],
               eval_backend=["auto", "fast", "tinymfv"], steer_positions=["all", "generated"],
               eval_prompts=["everyday", "authority"],
               track=["", "tensorboard", "wandb"])
RESUME_OK = {"rounds", "device", "compile", "resume", "track"}  # flags that may differ on --resume without changing the experiment
# ...and the knobs a starved round needs; a change is recorded as a "resume" line in rounds.jsonl
RESUME_RESCUE = {"alphas", "kappa_decay", "kappa_min", "min_train", "max_batches", "probe_n", "gen_pass_target",
                 "ppl_mult", "rep_max", "comp_min", "min_words", "gen_batch", "loop_max", "topic_q"}


def _help_comments(Config):
    # The trailing comment of each field is its --help text: one place to document a knob.
    src = inspect.getsource(Config)
    return {m[1]: m[2] for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.*)$", src, re.M)}


TUPLE_TYPES = dict(seeds=int, lora_targets=str, readers=str)  # each other tuple field is floats (a band, doses)


def parse_args(Config, PRESETS, PERSONAS, doc="", argv=None):
    """Config defaults <- --preset <- --persona <- explicit flags, for the Config of the script that runs (a copy of
    steer_heal.py passes its own, so its new fields are flags). Returns (cfg, explicit flag names)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = dict(CHOICES, persona=list(PERSONAS), preset=["", *PRESETS])

    def error(msg):  # one line naming the flag (exit 2 in main), not argparse's page of usage
        raise Stop(f"{msg} (python steer_heal.py --help lists every flag).")
    p.error = error
    helps = _help_comments(Config)
    for f in dataclasses.fields(Config):
        flag, kw = "--" + f.name.replace("_", "-"), dict(default=argparse.SUPPRESS, help=helps.get(f.name))
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.type is tuple:
            kw.update(nargs="+", type=TUPLE_TYPES.get(f.name, float))
        else:
            kw["type"] = f.type
        if f.name in choices:
            kw["choices"] = choices[f.name]
        p.add_argument(flag, **kw)
    explicit = vars(p.parse_args(argv))
    cfg = Config()
    for k, v in PRESETS.get(explicit.get("preset", ""), {}).items():
        setattr(cfg, k, v)
    cfg.persona = explicit.get("persona", cfg.persona)
    for k, v in PERSONAS[cfg.persona].items():  # pos, neg, opp, eval_prompts, readers
        setattr(cfg, k, v)
    for k, v in explicit.items():
        setattr(cfg, k, tuple(v) if isinstance(v, list) else v)
    return cfg, set(explicit)


def check_config(cfg):
    """Fail before any model loads, with the flag to fix."""
    if not cfg.pos.strip():
        raise Stop("--pos is empty: the positive persona is the system prompt we steer toward.")
    if cfg.pos.strip() == cfg.neg.strip():
        raise Stop("--pos and --neg are identical, so the steering vector would be zero. Use an empty --neg "
                   "for 'no persona', or the persona's opposite.")
    if cfg.opp.strip() == cfg.pos.strip():
        raise Stop("--opp is identical to --pos, so the readers' direction check would compare the persona with "
                   "itself. Give the persona's opposite.")
    bad = [r for r in cfg.readers if not re.fullmatch(r"\w+:[+-]", r)]
    if bad:
        raise Stop(f"--readers {' '.join(bad)}: each reader is key:+ or key:- (the persona's direction), e.g. sentiment:+.")
    for f in dataclasses.fields(cfg):  # nan passes some range tests below (every comparison is False), inf most
        xs = getattr(cfg, f.name) if f.type is tuple else (getattr(cfg, f.name),)
        if any(isinstance(x, float) and not math.isfinite(x) for x in xs):
            raise Stop(f"--{f.name.replace('_', '-')} {' '.join(map(str, xs))}: must be finite numbers, not nan or inf.")
    for flag, band in (("--layers", cfg.layers), ("--lora-layers", cfg.lora_layers)):
        if len(band) != 2 or not 0 <= band[0] < band[1] <= 1:
            raise Stop(f"{flag} {' '.join(map(str, band))}: give two fractions of depth, 0 <= lo < hi <= 1.")
    if not cfg.alphas or min(cfg.alphas) <= 0:
        raise Stop(f"--alphas {cfg.alphas}: doses must be positive (the dose controller only cools them).")
    if cfg.lora_r < 1:
        raise Stop(f"--lora-r {cfg.lora_r}: the LoRA rank must be at least 1.")
    if not cfg.lora_targets or "all-linear" in cfg.lora_targets and len(cfg.lora_targets) > 1:
        raise Stop(f"--lora-targets {' '.join(cfg.lora_targets)}: give all-linear alone, or module names (q_proj v_proj ...).")
    if any(s < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise Stop(f"--seeds {' '.join(map(str, cfg.seeds))}: must be distinct and >= 0 (one run folder seed<k> each).")
    cache = getattr(cfg, "line_cache", "")  # a copy made before line_cache.py has no such knob
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        raise Stop(f"--line-cache {cache}: a file, not a folder (the grid's measured lines go in one, made if missing).")
    if cfg.name and (Path(cfg.name).name != cfg.name or cfg.name == ".."):
        raise Stop(f"--name {cfg.name}: must be one folder name, without '/': the run lands in --out/<name>.")
    out = Path(cfg.out).absolute()
    near = next(d for d in (out, *out.parents) if d.exists())  # the folder the run folder will be made in
    if not near.is_dir() or not os.access(near, os.W_OK):
        raise Stop(f"--out {cfg.out}: {near} is not a writable folder, so no run folder can be made there.")
    for flag, v, ok, rng in (("--seed", cfg.seed, cfg.seed >= 0, ">= 0"), ("--rounds", cfg.rounds, cfg.rounds >= 1, ">= 1"),
                             ("--n-contexts", cfg.n_contexts, 1 <= cfg.n_contexts <= len(CONTEXTS),
                              f"in [1, {len(CONTEXTS)}] (the built-in extraction contexts)"),
                             ("--max-new-tokens", cfg.max_new_tokens, cfg.max_new_tokens >= 1, ">= 1"),
                             ("--temperature", cfg.temperature, cfg.temperature > 0, "> 0"),
                             ("--top-p", cfg.top_p, 0 < cfg.top_p <= 1, "in (0, 1]"),
                             ("--gen-batch", cfg.gen_batch, cfg.gen_batch >= 1, ">= 1"),
                             ("--probe-n", cfg.probe_n, cfg.probe_n >= 1, ">= 1"),
                             ("--kappa-decay", cfg.kappa_decay, 0 < cfg.kappa_decay < 1, "in (0, 1): the controller cools"),
                             ("--kappa-min", cfg.kappa_min, 0 < cfg.kappa_min <= 1, "in (0, 1] (kappa starts at 1)"),
                             ("--min-train", cfg.min_train, cfg.min_train >= 2, ">= 2"),
                             ("--epochs", cfg.epochs, cfg.epochs >= 1, ">= 1"),
                             ("--train-batch", cfg.train_batch, cfg.train_batch >= 1, ">= 1"),
                             ("--grad-accum", cfg.grad_accum, cfg.grad_accum >= 1, ">= 1"),
                             ("--lr", cfg.lr, cfg.lr > 0, "> 0"), ("--lam", cfg.lam, cfg.lam >= 0, ">= 0 (a negative "
                             "barrier rewards drift)"), ("--tau", cfg.tau, cfg.tau >= 0, ">= 0"),
                             ("--weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, ">= 0"),
                             ("--anchor-nll", cfg.anchor_nll, cfg.anchor_nll >= 0, ">= 0"),
                             ("--spectral-lam", cfg.spectral_lam, cfg.spectral_lam >= 0, ">= 0"),
                             ("--val-frac", cfg.val_frac, 0 <= cfg.val_frac < 1, "in [0, 1)"),
                             ("--tail-frac", cfg.tail_frac, 0 < cfg.tail_frac <= 1, "in (0, 1]"),
                             ("--ppl-ceil", cfg.ppl_ceil, cfg.ppl_ceil > 1, "> 1"),
                             ("--eval-n", cfg.eval_n, cfg.eval_n >= 0, ">= 0 (0 = all)"),
                             ("--sample-tokens", cfg.sample_tokens, cfg.sample_tokens >= 1, ">= 1"),
                             ("--eval-batch", cfg.eval_batch, cfg.eval_batch >= 1, ">= 1"),
                             ("--persona-n", cfg.persona_n, cfg.persona_n >= 0 and cfg.persona_n != 1, ">= 2 (0 = all)"),
                             ("--steer-decay", cfg.steer_decay, cfg.steer_decay >= 0, ">= 0 (0 = constant dose)"),
                             ("--steer-decay-t", cfg.steer_decay_t, cfg.steer_decay_t > 0, "> 0"),
                             ("--backtrack-window", cfg.backtrack_window, cfg.backtrack_window >= 1, ">= 1"),
                             ("--backtrack-scale", cfg.backtrack_scale, 0 < cfg.backtrack_scale <= 1, "in (0, 1]"),
                             ("--backtrack-retries", cfg.backtrack_retries, cfg.backtrack_retries >= 0, ">= 0"),
                             ("--ppl-mult", cfg.ppl_mult, cfg.ppl_mult > 0, "> 0"),
                             ("--rep-max", cfg.rep_max, 0 < cfg.rep_max <= 1, "in (0, 1]"),
                             ("--comp-min", cfg.comp_min, 0 <= cfg.comp_min < 1, "in [0, 1)"),
                             ("--loop-max", cfg.loop_max, 0 < cfg.loop_max <= 1, "in (0, 1]"),
                             ("--topic-q", cfg.topic_q, 0 <= cfg.topic_q < 1, "in [0, 1) (0 = off)"),
                             ("--tau-round-pow", cfg.tau_round_pow, math.isfinite(cfg.tau_round_pow), "finite"),
                             ("--min-words", cfg.min_words, cfg.min_words >= 0, ">= 0"),
                             ("--gen-pass-target", cfg.gen_pass_target, 0 < cfg.gen_pass_target <= 1, "in (0, 1]"),
                             ("--max-batches", cfg.max_batches, cfg.max_batches >= 0, ">= 0"),
                             ("--lora-alpha", cfg.lora_alpha, cfg.lora_alpha > 0, "> 0"),
                             ("--warmup", cfg.warmup, 0 <= cfg.warmup < 1, "in [0, 1)"),
                             ("--max-nonfinite", cfg.max_nonfinite, 0 <= cfg.max_nonfinite <= 1, "in [0, 1]"),
                             ("--online-batch", cfg.online_batch, cfg.online_batch >= 1, ">= 1"),
                             ("--online-group", cfg.online_group, cfg.online_group >= 2, ">= 2 (advantages compare a group)"),
                             ("--online-steps", cfg.online_steps, cfg.online_steps >= 1, ">= 1"),
                             ("--online-floor", cfg.online_floor, cfg.online_floor >= 0, ">= 0"),
                             ("--redo-from", cfg.redo_from, cfg.redo_from >= -1 and (cfg.redo_from < 0 or cfg.resume),
                              ">= 0 with --resume (-1 = keep every completed round)")):
        if not ok:
            raise Stop(f"{flag} {v}: must be {rng}.")
    if cfg.eval_frames and cfg.eval_frames not in eval_mfv.FRAME_SETS:
        raise Stop(f"--eval-frames {cfg.eval_frames}: choose one of {', '.join(sorted(eval_mfv.FRAME_SETS))}.")
    cpu = cfg.device == "cpu" or cfg.device == "auto" and not torch.cuda.is_available()
    if cfg.compile and cpu and not shutil.which(os.environ.get("CXX", "g++")):
        raise Stop("--compile on the CPU needs a C++ compiler for torch.compile's inductor backend, and none was found "
                   "($CXX or g++). Install one, or drop --compile (eager generation, the default).")
    if cfg.track and importlib.util.find_spec(cfg.track) is None:  # the tracker is imported only with --track
        raise Stop(f"--track {cfg.track}: the {cfg.track} package is not installed (pip install {cfg.track}).")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Stop("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False). "
                   "Use --device cpu or install a CUDA build of torch.")


def prepare_run_dir(cfg, explicit, script="steer_heal.py"):
    """New run: refuse to clobber another run. Resume: refuse a run that another script made (script: the file
    that runs, a copy's name), reload the saved config, refuse changed knobs. Returns (run_dir, cfg, the resume
    line for run() to append once its checks pass, or None for a new run)."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if not (run_dir / "config.json").exists():
            raise Stop(f"--resume {run_dir}: no config.json there, so it is not a steer_heal run folder.")
        runio.lock(run_dir, runio.log)  # one writer per run folder, before anything here is written (exit 2 if held)
        try:
            made, command = runio.made_by(run_dir)  # its pipeline and knobs are that file's, not necessarily this one's
            if made != script:
                raise Stop(f"--resume {run_dir}: the run was made by {made}, not {script}, so this file's stages and "
                           f"knobs may not be the ones it ran. Continue it with: python {command} --resume {run_dir}")
            saved = runio.load_config(run_dir, type(cfg))
        except (ValueError, KeyError, TypeError, OSError) as e:  # a torn or foreign config.json
            raise Stop(f"--resume {run_dir}: its config.json does not parse as a steer_heal config ({type(e).__name__}: {e}).")
        changed = [k for k in explicit - RESUME_OK - RESUME_RESCUE - {"redo_from"} if getattr(cfg, k) != getattr(saved, k)]
        if changed:
            raise Stop(f"--resume refuses flags that change the experiment: {', '.join('--' + c.replace('_', '-') for c in changed)}"
                       f". Allowed with --resume: --rounds, --device, and the dose-controller and filter flags "
                       f"({', '.join(sorted(RESUME_RESCUE))}). Start a new run (--name) to change the rest.")
        rescue = {k: getattr(cfg, k) for k in explicit & RESUME_RESCUE if getattr(cfg, k) != getattr(saved, k)}
        for k in explicit & (RESUME_OK | RESUME_RESCUE) - {"resume"}:
            setattr(saved, k, getattr(cfg, k))
        runio.LOG.update(run_dir=run_dir, file=open(run_dir / "log.txt", "a"))
        check_resume(run_dir, cfg.redo_from)
        saved.resume = str(run_dir)
        # the resume's line, which run() appends once every check has passed: it supersedes an earlier stop
        # (runio.live_lines), and says what later rounds ran with (changed) or ran again (redo_from)
        return run_dir, saved, dict(kind="resume", round=-1, run=saved.name, seed=saved.seed, changed=rescue,
                                    **{"redo_from": cfg.redo_from} if cfg.redo_from >= 0 else {})
    cfg.name = cfg.name or f"{cfg.persona}_s{cfg.seed}"
    run_dir = Path(cfg.out) / cfg.name
    runio.lock(run_dir, runio.log)  # made with the folder; released (and an empty folder removed) if the run never starts
    if any(p.name != runio.LOCK_NAME for p in run_dir.iterdir()) and not cfg.overwrite:
        raise Stop(f"{run_dir} already holds a run. Continue it with --resume {run_dir}, replace it with "
                   "--overwrite, or pick another --name.")
    return run_dir, cfg, None


def check_resume(run_dir, redo_from=-1):
    """What a resume trusts, checked before the model loads: a torn last line of rounds.jsonl moved aside, each
    unreadable line named, the adapters it will bake back in against their sha256, vector_r0.pt loads."""
    runio.mend_tail(run_dir / "rounds.jsonl", runio.log)
    runio.read_lines(run_dir, bad := [])
    for b in bad:
        runio.log(f"  rounds.jsonl {b}: unreadable, left out (a stage it recorded runs again if the resume needs it)")
    done = runio.completed_rounds(run_dir)
    if redo_from >= 0 and redo_from not in done:
        raise Stop(f"--redo-from {redo_from}: not a completed round of {run_dir} (completed: {done or 'none'}).")
    runio.check_adapters(run_dir, done[:redo_from] if redo_from >= 0 else done)
    v0 = run_dir / "vector_r0.pt"
    try:
        v0.exists() and torch.load(v0, map_location="cpu")
    except Exception as e:
        raise Stop(f"{v0} does not load ({type(e).__name__}: {str(e)[:120]}). Way out: delete it; --resume then "
                   "extracts it again from the base model (the same vector on the same machine).")


def write_failed(e, run_dir, script="steer_heal.py"):
    """The exit-4 message for a write that failed (re-raises an OSError that is not about writing)."""
    if not isinstance(e, runio.WriteFailed) and e.errno not in runio.WRITE_ERRNOS:
        raise e
    e = e if isinstance(e, runio.WriteFailed) else runio.WriteFailed(e.filename or run_dir or ".", e)
    return (f"{Path(script.split()[0]).stem}: {e}. Nothing half-written is kept. Free some space, then "
            + (f"continue with: python {script} --resume {run_dir}"
               if run_dir and (run_dir / "config.json").exists() else "run the same command again."))


def start_run_dir(run_dir, cfg, script="steer_heal.py"):
    """Called once the model has loaded, so a typo in --model leaves no half-made run folder. script: the file whose
    pipeline runs (a copy's name; a resume checks it); argv: the command, as main() was given it (rivals.py
    --script my_idea.py ...)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    runio.clear_run_dir(run_dir)  # only reached for a new run (empty, or --overwrite); the lock stays
    import peft, transformers
    command = (runio.LOG.get("command") or script).split()
    meta = dict(config=dataclasses.asdict(cfg), script=script, argv=[*command, *runio.LOG["argv"]], started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                versions=dict(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                              python=sys.version.split()[0]),
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                inputs=dict(vignettes=cfg.vignettes_path or "tinymfv package", statements=cfg.statements_path,
                            statements_n=len(cfg.statement_rows or [])))  # decided at run time: on the record
    runio.write_text(run_dir / "config.json", json.dumps(meta, indent=2))  # whole or not at all: resume reads it


# --- input files: found and read before the model loads ------------------------------------------------------

def find_vignettes(cfg):
    if cfg.vignettes == "none":  # skip tinymfv (it reads another trait than warmth, and costs a third of a line)
        return "none"
    if cfg.vignettes or cfg.eval_backend == "tinymfv":
        return cfg.vignettes or None
    if cfg.eval_backend == "auto" and eval_mfv.import_tinymfv():
        return None
    local = Path(__file__).resolve().parent.parent / "shared" / "tinymfv" / "vignettes_classic_other_violate.jsonl"
    if local.exists():
        return str(local)
    raise Stop("No tinymfv vignettes: install tinymfv (pip install "
               "git+https://github.com/wassname/tinymfv@ca76c0e05e460d56d30e5292ba1f33cbbb3fa45f) or pass "
               "--vignettes PATH to a vignette JSONL.")


def find_statements(cfg):
    """The persona-statements file for persona_gap, or None (skipped, with a log line)."""
    if cfg.statements == "none":
        return None
    if cfg.statements:
        return cfg.statements
    return str(eval_mfv.STATEMENTS) if eval_mfv.STATEMENTS.exists() else None


def balanced_subsample(rows, n, seed):
    """n statements, half of each kind (the gap compares the two kinds), seeded, in file order."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for kind in ("Yes", "No"):
        idx = [i for i, r in enumerate(rows) if r["answer_matching_behavior"].strip() == kind]
        keep += [idx[j] for j in torch.randperm(len(idx), generator=g)[:n // 2].tolist()]
    return [rows[i] for i in sorted(keep)]


def read_inputs(cfg):
    """Sets cfg.vignettes_path, cfg.statements_path, cfg.statement_all (every statement: the probe trains on them)
    and cfg.statement_rows (a seeded balanced subsample: persona_gap). A file that does not parse names its flag."""
    def parse(flag, read, file):
        try:
            return read(file)
        except (ValueError, OSError) as e:
            raise Stop(f"{flag} {file}: {e}")
    cfg.vignettes_path = find_vignettes(cfg)
    path = cfg.statements_path = find_statements(cfg)
    cfg.statement_all = cfg.statement_rows = parse("--statements", eval_mfv.load_statements, path) if path else None
    if cfg.statement_rows and cfg.persona_n:
        cfg.statement_rows = balanced_subsample(cfg.statement_rows, cfg.persona_n, cfg.seed)
    if cfg.vignettes_path and cfg.vignettes_path != "none":
        parse("--vignettes", eval_mfv.load_vignettes, cfg.vignettes_path)


# --- the script's main(): flags -> run(), every failure an exit code and one sentence -------------------------

def main(run, Config, PRESETS, PERSONAS, doc, argv=None, METHODS=None, script="steer_heal.py"):
    """run(cfg, explicit) once, or once per --seeds seed (sibling folders) and then the group's report. Exit codes:
    2 bad input (Stop), 3 starved, 4 a failed write (full disk), 130 interrupted (SIGTERM too). METHODS: the rows
    run() may run (the script's, plus rivals.py's when it calls); script: the command, for hints and config.json."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # kill = Ctrl-C
    runio.LOG.update(argv=list(sys.argv[1:] if argv is None else argv), command=script)
    grad = torch.is_grad_enabled()
    runio.LOG.update(run_dir=None, file=None)  # a previous call's run (tests call main repeatedly)
    code = msg = None
    try:
        cfg, explicit = parse_args(Config, PRESETS, PERSONAS, doc, argv)  # the running script's Config: a copy's own
        check_config(cfg)  # here too: --seeds is checked before the first seed's run starts
        if METHODS is not None:
            check_method(cfg, METHODS, script.split()[0])
        if cfg.seeds and not cfg.resume:  # one sibling run per seed, then the aggregate report
            group = Path(cfg.out) / (cfg.name or cfg.persona)
            for s in cfg.seeds:
                run(dataclasses.replace(cfg, seed=s, seeds=(), out=str(group), name=f"seed{s}"), explicit, METHODS)
                runio.LOG["file"] = None
                runio.unlock()
            report.write_report(group)
        else:
            run(cfg, explicit, METHODS)
    except Stop as e:
        code, msg = e.code, f"{Path(script.split()[0]).stem}: {e}"
    except KeyboardInterrupt:
        where = runio.LOG["run_dir"]
        code, msg = 130, ("interrupted. Everything completed so far is on disk"
                          + (f"; continue with: python {script} --resume {where}" if where else "."))
    except (runio.WriteFailed, OSError) as e:  # a full disk, anywhere: exit 4, the path and the free space
        code, msg = 4, write_failed(e, runio.LOG["run_dir"], script)
    finally:
        torch.set_grad_enabled(grad)
        track.close()
    if msg:
        with contextlib.suppress(runio.WriteFailed):  # log.txt may be on the full disk too: printed all the same
            runio.log("\n" + msg)
    runio.unlock()  # after log.txt's last line (an exit that never gets here: atexit)
    if msg:
        sys.exit(code)


def check_targets(model, cfg):
    """--lora-targets against the loaded model, before the run folder exists (fail now, not after an hour)."""
    names = {n.split(".")[-1] for n, m in decoder_layers(model).named_modules() if isinstance(m, torch.nn.Linear)}
    missing = set(cfg.lora_targets) - names - {"all-linear"}
    if missing or not names:
        raise Stop(f"--lora-targets {' '.join(sorted(missing))}: not linear modules of this model's decoder blocks; "
                   f"they hold {' '.join(sorted(names)) or 'none'} (or give all-linear, the default).")


def check_method(cfg, METHODS, script="steer_heal.py"):
    if cfg.method not in METHODS:
        mine = "" if script == "steer_heal.py" else f" --script {script}"
        raise Stop(f"--method {cfg.method}: this script runs {', '.join(METHODS)}; prompt-bake and online run through "
                   f"rivals.py (python rivals.py{mine} --method {cfg.method} ..., and --resume there too)")
