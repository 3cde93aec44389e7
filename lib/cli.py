"""lib/cli.py: what steer_heal.py needs around the experiment but a reader of the algorithm does not: flags
(every Config field: its type, its --help and its rule read from the field's line), their checks (before any model
loads, one sentence naming the flag), and run folders (new, or --resume with the saved config). It knows no knob's
rules by name: a copy's Config brings its own. steer_heal.main() calls these; nothing here changes what a run
computes.
"""
import argparse, contextlib, dataclasses, importlib.util, inspect, json, math, operator, os, re, shutil, signal, sys, time
import typing
from pathlib import Path

import torch

import eval_mfv
from lib import models
from lib.models import check_vector, decoder_layers
from lib import readers  # probe_defer's probe (statement_readers)
import report  # the group's report after --seeds (report reads files only)
from lib import runio
from lib import track
from lib.runio import Stop

RESUME_OK = {"rounds", "device", "compile", "resume", "track"}  # flags that may differ on --resume without changing the experiment
# (and the script's `rescue`: the knobs a starved round needs; a change is recorded as a "resume" line in rounds.jsonl)


# --- a knob's rules are its line in Config: its type (bool, int, float, str, tuple[T, ...], Literal[...]) and a
# rule at the end of its comment ([> 0], [>= 1], [0, 1), (0, 1], ...; on each element of a tuple). One walk reads
# them for every field, so a copy's new knob of any type parses and is checked like the script's own.

def field_notes(Config):
    """{field: its trailing comment}, for Config and every dataclass it extends (rivals.py's adds its knobs to the
    script's): the comment is the flag's --help, and ends with the field's rule, if it has one."""
    notes = {}
    for cls in reversed(Config.__mro__):
        if dataclasses.is_dataclass(cls):
            notes.update({m[1]: m[2] for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M)})
    return notes


NUM = r"-?\d+(?:\.\d*)?(?:e-?\d+)?"
RULE = re.compile(rf"\[(>=|>|<=|<) ?({NUM})\]$|([\[(])({NUM}), ?({NUM})([\])])$")  # [> 0] | [0, 1) and kin, at the end
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def rule(note):
    """(test, words) of the rule that ends a field's comment, or None."""
    m = RULE.search(note.rstrip())
    if m is None:
        return None
    if m[1]:
        return (lambda x: OPS[m[1]](x, float(m[2]))), f"{m[1]} {m[2]}"
    lo, hi = OPS[">=" if m[3] == "[" else ">"], OPS["<=" if m[6] == "]" else "<"]
    return (lambda x: lo(x, float(m[4])) and hi(x, float(m[5]))), f"in {m[3]}{m[4]}, {m[5]}{m[6]}"


def flag_kind(t):
    """argparse's keywords for a field of type t: a bool is --x / --no-x, tuple[T, ...] one or more T, Literal[...]
    one of its values."""
    if t is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if typing.get_origin(t) is tuple:
        return dict(flag_kind(typing.get_args(t)[0]), nargs="+")
    if typing.get_origin(t) is typing.Literal:
        return dict(type=type(typing.get_args(t)[0]), choices=typing.get_args(t))
    return dict(type=t)


def parse_args(Config, PRESETS, PERSONAS, doc="", argv=None, script="steer_heal.py"):
    """Config defaults <- --preset <- --persona <- explicit flags, for the Config of the script that runs (a copy of
    steer_heal.py passes its own, so its new fields are flags). script: the command, for the error's way out.
    Returns (cfg, explicit flag names)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(msg):  # one line naming the flag (exit 2 in main), not argparse's page of usage
        raise Stop(f"{msg} (python {script} --help lists every flag).")
    p.error = error
    notes, layers = field_notes(Config), dict(persona=list(PERSONAS), preset=["", *PRESETS])  # this parser's own layers
    for f in dataclasses.fields(Config):
        kw = dict(flag_kind(f.type), default=argparse.SUPPRESS, help=notes.get(f.name))
        if f.name in layers:
            kw["choices"] = layers[f.name]
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
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


def check_config(cfg, check=None):
    """Fail before any model loads, with the flag to fix: every field against its line in Config (finite, one of its
    choices, its rule), then the script's check(cfg) (the rules that tie knobs together), then this machine."""
    notes = field_notes(type(cfg))
    for f in dataclasses.fields(cfg):
        v, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        xs, t = (v, typing.get_args(f.type)[0]) if typing.get_origin(f.type) is tuple else ((v,), f.type)
        said = " ".join(map(str, xs))
        if any(isinstance(x, float) and not math.isfinite(x) for x in xs):  # nan passes every rule (each comparison is False)
            raise Stop(f"{flag} {said}: must be finite numbers, not nan or inf.")
        if typing.get_origin(t) is typing.Literal and not set(xs) <= set(typing.get_args(t)):
            raise Stop(f"{flag} {said}: choose from {', '.join(map(repr, typing.get_args(t)))}.")
        test = rule(notes.get(f.name, ""))
        if test and not all(test[0](x) for x in xs):
            raise Stop(f"{flag} {said}: {'each ' if len(xs) > 1 else ''}must be {test[1]}.")
    if check:
        check(cfg)
    cache = getattr(cfg, "line_cache", "")  # a copy made before lib/line_cache.py has no such knob
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        raise Stop(f"--line-cache {cache}: a file, not a folder (the grid's measured lines go in one, made if missing).")
    if cfg.name and (Path(cfg.name).name != cfg.name or cfg.name == ".."):
        raise Stop(f"--name {cfg.name}: must be one folder name, without '/': the run lands in --out/<name>.")
    out = Path(cfg.out).absolute()
    near = next(d for d in (out, *out.parents) if d.exists())  # the folder the run folder will be made in
    if not near.is_dir() or not os.access(near, os.W_OK):
        raise Stop(f"--out {cfg.out}: {near} is not a writable folder, so no run folder can be made there.")
    cpu = cfg.device == "cpu" or cfg.device == "auto" and not torch.cuda.is_available()
    if cfg.compile and cpu and not shutil.which(os.environ.get("CXX", "g++")):
        raise Stop("--compile on the CPU needs a C++ compiler for torch.compile's inductor backend, and none was found "
                   "($CXX or g++). Install one, or drop --compile (eager generation, the default).")
    if cfg.track and importlib.util.find_spec(cfg.track) is None:  # the tracker is imported only with --track
        raise Stop(f"--track {cfg.track}: the {cfg.track} package is not installed (pip install {cfg.track}).")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Stop("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False). "
                   "Use --device cpu or install a CUDA build of torch.")


def prepare_run_dir(cfg, explicit, script="steer_heal.py", rescue=frozenset()):
    """New run: refuse to clobber another run. Resume: refuse a run that another script made (script: the file
    that runs, a copy's name), reload the saved config, refuse changed knobs but RESUME_OK and `rescue` (the
    script's: what a starved round needs). Returns (run_dir, cfg, the resume line for run() to append once its
    checks pass, or None for a new run)."""
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
        changed = [k for k in explicit - RESUME_OK - rescue - {"redo_from"} if getattr(cfg, k) != getattr(saved, k)]
        if changed:
            raise Stop(f"--resume refuses flags that change the experiment: {', '.join('--' + c.replace('_', '-') for c in changed)}"
                       f". Allowed with --resume: --rounds, --device, and the dose-controller and filter flags "
                       f"({', '.join(sorted(rescue))}). Start a new run (--name) to change the rest.")
        changes = {k: getattr(cfg, k) for k in explicit & rescue if getattr(cfg, k) != getattr(saved, k)}
        for k in explicit & (RESUME_OK | rescue) - {"resume"}:
            setattr(saved, k, getattr(cfg, k))
        runio.LOG.update(run_dir=run_dir, file=open(run_dir / "log.txt", "a"))
        check_resume(run_dir, cfg.redo_from)
        saved.resume = str(run_dir)
        # the resume's line, which run() appends once every check has passed: it supersedes an earlier stop
        # (runio.live_lines), and says what later rounds ran with (changed) or ran again (redo_from)
        return run_dir, saved, dict(kind="resume", round=-1, run=saved.name, seed=saved.seed, changed=changes,
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


def start_run_dir(run_dir, cfg, script="steer_heal.py", inputs=None):
    """Called once the model has loaded, so a typo in --model leaves no half-made run folder. script: the file whose
    pipeline runs (a copy's name; a resume checks it); argv: the command, as main() was given it (rivals.py
    --script my_idea.py ...); inputs: read_inputs', the files the run found."""
    inputs = inputs or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    runio.clear_run_dir(run_dir)  # only reached for a new run (empty, or --overwrite); the lock stays
    import peft, transformers
    command = (runio.LOG.get("command") or script).split()
    meta = dict(config=dataclasses.asdict(cfg), script=script, argv=[*command, *runio.LOG["argv"]], started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                versions=dict(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                              python=sys.version.split()[0]),
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                inputs=dict(vignettes=inputs.get("vignettes") or "tinymfv package", statements=inputs.get("statements"),
                            statements_n=len(inputs.get("stmts") or [])))  # decided at run time: on the record
    runio.write_text(run_dir / "config.json", json.dumps(meta, indent=2))  # whole or not at all: resume reads it


# --- input files: found and read before the model loads ------------------------------------------------------

def find_vignettes(cfg):
    if cfg.vignettes == "none":  # skip tinymfv (it reads another trait than warmth, and costs a third of a line)
        return "none"
    if cfg.vignettes or cfg.eval_backend == "tinymfv":
        return cfg.vignettes or None
    if cfg.eval_backend == "auto" and eval_mfv.import_tinymfv():
        return None
    local = Path(__file__).resolve().parent.parent.parent / "shared" / "tinymfv" / "vignettes_classic_other_violate.jsonl"
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
    """The run's input files, found and read: {vignettes: the tinymfv file (None = the package, "none" = skipped),
    statements: the persona-statements file or None, statement_all: every statement (the probe trains on them),
    stmts: a seeded balanced subsample of them (persona_gap)}. A file that does not parse names its flag."""
    def parse(flag, read, file):
        try:
            return read(file)
        except (ValueError, OSError) as e:
            raise Stop(f"{flag} {file}: {e}")
    vignettes, path = find_vignettes(cfg), find_statements(cfg)
    every = parse("--statements", eval_mfv.load_statements, path) if path else None
    if vignettes and vignettes != "none":
        parse("--vignettes", eval_mfv.load_vignettes, vignettes)
    return dict(vignettes=vignettes, statements=path, statement_all=every,
                stmts=balanced_subsample(every, cfg.persona_n, cfg.seed) if every and cfg.persona_n else every)


# --- once the model has loaded: what round 0 and the readers start from ----------------------------------------

def round0_vector(run_dir, cfg, seed_vector, device, extract):
    """Round 0's vector: the run's saved vector_r0.pt (a resume), else --vector's (seed_vector, read before the model
    loaded; later rounds re-extract on its layers), else extract() (the base model's); saved, its norms logged."""
    path, t = run_dir / "vector_r0.pt", time.time()
    if path.exists():
        return {l: v.to(device) for l, v in torch.load(path, map_location="cpu").items()}
    v0 = {l: v.to(device) for l, v in seed_vector[0].items()} if seed_vector else extract()
    models.save_vector(v0, path)
    made = seed_vector and seed_vector[1].get("model")
    runio.log((f"round-0 vector read from {cfg.vector}" + (f" (made on {made})" if made else "") if seed_vector else
               f"round-0 vector from {cfg.n_contexts} contexts in {time.time() - t:.0f}s")
              + f": layer norms { {l: round(v.norm().item(), 2) for l, v in v0.items()} }")
    return v0


def statement_readers(model, tok, cfg, state, every, fixed_reader):
    """With persona statements (state["stmts"]): the base model's per-statement likelihoods (under fixed_reader, the
    script's), which every later line's persona_gap is paired to, and probe_defer's probe, trained on `every`
    statement (a reader is only as good as its held-out accuracy: logged, and kept on the base line)."""
    if not state["stmts"]:
        runio.log("  no persona statements (--statements): persona_gap and probe_defer are not measured")
        return
    with fixed_reader(model, state["stash"]):
        state["base_ll"] = eval_mfv.statement_loglik(model, tok, state["stmts"])
    state["base_gap"] = float(eval_mfv._gap(state["base_ll"], eval_mfv.statement_signs(state["stmts"])))
    t, probe = time.time(), readers.DeferProbe(every, seed=cfg.seed)
    state["probe"] = probe
    runio.log(f"  probe_defer: MiniLM + logistic probe on {probe.n} statements, {probe.folds}-fold accuracy "
              f"{probe.accuracy:.3f} (chance {probe.chance:.3f}), {time.time() - t:.0f}s")


# --- the script's main(): flags -> run(), every failure an exit code and one sentence -------------------------

def main(run, Config, PRESETS, PERSONAS, doc, argv=None, METHODS=None, script="steer_heal.py", check=None):
    """run(cfg, explicit) once, or once per --seeds seed (sibling folders) and then the group's report. Exit codes:
    2 bad input (Stop), 3 starved, 4 a failed write (full disk), 130 interrupted (SIGTERM too). METHODS: the rows
    run() may run (the script's, plus rivals.py's when it calls); script: the command, for hints and config.json;
    check: the script's check(cfg), the rules that tie its knobs together."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # kill = Ctrl-C
    runio.LOG.update(argv=list(sys.argv[1:] if argv is None else argv), command=script)
    grad = torch.is_grad_enabled()
    runio.LOG.update(run_dir=None, file=None)  # a previous call's run (tests call main repeatedly)
    code = msg = None
    try:
        cfg, explicit = parse_args(Config, PRESETS, PERSONAS, doc, argv, script)  # the running script's Config: a copy's own
        check_config(cfg, check)  # here too: --seeds is checked before the first seed's run starts
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


def before_model(cfg, explicit, script, check, rescue, methods):
    """What run() checks and reads before the model loads (exit 2 with the flag to fix, nothing written): the flags,
    the run folder (a resume: its config, files and method), the input files and --vector's file (on a resume the
    run's own copy, in case the file moved). Returns (run_dir, cfg, resume line, inputs, (vectors, meta) or None)."""
    check_config(cfg, check)
    run_dir, cfg, resumed = prepare_run_dir(cfg, explicit, script, rescue)
    check_method(cfg, methods, script)  # a resumed run's method comes from its config.json
    inputs = read_inputs(cfg)
    saved = run_dir / "vector_r0.pt"
    seed_vector = models.read_vector(saved if cfg.resume and saved.exists() else cfg.vector) if cfg.vector else None
    return run_dir, cfg, resumed, inputs, seed_vector


def start(run_dir, cfg, script, inputs, resumed, model, seed_vector):
    """Once the model has loaded: --lora-targets and --vector against it (a bad one leaves no run folder), then the
    run folder (config.json: this file, the command, the inputs), or, on a resume, its resume line (only now: a
    resume refused by a check leaves the run's lines and its stop as they were); the tracker; the log's first line."""
    check_targets(model, cfg)
    if seed_vector:
        check_vector(seed_vector[0], model, cfg.vector)
    if resumed is None:
        start_run_dir(run_dir, cfg, script, inputs)
        runio.LOG.update(run_dir=run_dir, file=open(run_dir / "log.txt", "a"))
    else:
        runio.append_line(run_dir, resumed)
    track.start(cfg.track, run_dir, dataclasses.asdict(cfg))
    runio.log(f"== {Path(script).stem} {run_dir} | {' '.join(runio.LOG['argv']) or '(defaults)'}")


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
